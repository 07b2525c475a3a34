//! `[identity]` of the aggregator: enrollment of agents with tokens and the
//! lifetime of the certificates it signs for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Problems, resolve};

/// Agent certificates signed at enrollment and renewal live this long.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const MIN_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(1);
const MAX_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(825 * 24 * 3600);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Accept `herd-agent enroll` connections (they still need a token).
    pub enrollment: Option<bool>,
    /// The fleet CA's key, which signs enrolled and renewed certificates.
    pub ca_key_file: Option<PathBuf>,
    /// Lifetime of the agent certificates the aggregator signs.
    #[serde(default, with = "humantime_serde")]
    pub agent_cert_lifetime: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub enrollment: bool,
    /// Without it (file absent), enrollment and renewal are refused as unavailable.
    pub ca_key_file: PathBuf,
    pub agent_cert_lifetime: Duration,
}

impl RawIdentity {
    /// `ca_file` is `[tls] ca_file`: the key defaults to `ca-key.pem` beside it,
    /// as `herd-aggregator ca init` writes them.
    pub(crate) fn validate(self, base_dir: Option<&Path>, ca_file: &Path, problems: &mut Problems) -> IdentityConfig {
        let ca_key_file = self.ca_key_file.map_or_else(
            || ca_file.parent().unwrap_or_else(|| Path::new(".")).join("ca-key.pem"),
            |p| resolve(base_dir, &p),
        );
        let agent_cert_lifetime = self.agent_cert_lifetime.unwrap_or(DEFAULT_AGENT_CERT_LIFETIME);
        if !(MIN_AGENT_CERT_LIFETIME..=MAX_AGENT_CERT_LIFETIME).contains(&agent_cert_lifetime) {
            problems.push("identity.agent_cert_lifetime", "must be between 1s and 825d");
        }
        IdentityConfig { enrollment: self.enrollment.unwrap_or(true), ca_key_file, agent_cert_lifetime }
    }
}
