//! `herd-aggregator ca init` and `herd-aggregator cert issue`: the fleet CA
//! lives in a directory as `ca.pem` and `ca-key.pem` (0600); issued pairs are
//! written next to it as `NAME.pem` and `NAME-key.pem` (0600).

use std::path::{Path, PathBuf};

use herd_common::tls::{self, PemPair, Role, TlsError};

pub const DEFAULT_PKI_DIR: &str = "/var/lib/herd-aggregator/pki";
const CA_STEM: &str = "ca";

/// Creates the CA in `dir`. Refuses to replace an existing CA unless `force`.
pub fn init_ca(dir: &Path, common_name: &str, force: bool) -> Result<(PathBuf, PathBuf), TlsError> {
    let ca = tls::generate_ca(common_name)?;
    tls::write_pair(dir, CA_STEM, &ca, force)
}

fn load_ca(ca_dir: &Path) -> Result<PemPair, TlsError> {
    tls::read_pair(&ca_dir.join(format!("{CA_STEM}.pem")), &ca_dir.join(format!("{CA_STEM}-key.pem")))
}

/// Issues a certificate for `name` from the CA in `ca_dir`, written to `out_dir`.
pub fn issue(
    ca_dir: &Path,
    out_dir: &Path,
    role: Role,
    name: &str,
    extra_names: &[String],
    force: bool,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if name.is_empty() || name.contains('/') || name == CA_STEM {
        return Err(TlsError::Config(format!("{name:?} cannot be used as a certificate name")));
    }
    let ca = load_ca(ca_dir)?;
    let pair = tls::issue(&ca, role, name, extra_names)?;
    tls::write_pair(out_dir, name, &pair, force)
}

/// Issues an agent certificate for `name` with trusted `labels` from the CA
/// in `ca_dir` (the key is generated here; prefer `herd-agent enroll`, which
/// keeps the key on the agent).
pub fn issue_agent(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    labels: &[(String, String)],
    lifetime: std::time::Duration,
    force: bool,
) -> Result<(PathBuf, PathBuf), TlsError> {
    issue_with(ca_dir, out_dir, name, force, |ca| {
        herd_common::identity::issue_agent(ca, name, labels, lifetime, std::time::SystemTime::now())
    })
}

/// Issues a client certificate for the HTTP API from the CA in `ca_dir`.
pub fn issue_client(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    lifetime: std::time::Duration,
    force: bool,
) -> Result<(PathBuf, PathBuf), TlsError> {
    issue_with(ca_dir, out_dir, name, force, |ca| {
        herd_common::identity::issue_client(ca, name, lifetime, std::time::SystemTime::now())
    })
}

fn issue_with(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    force: bool,
    issue: impl FnOnce(&PemPair) -> Result<PemPair, herd_common::identity::IdentityError>,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if name == CA_STEM {
        return Err(TlsError::Config(format!("{name:?} cannot be used as a certificate name")));
    }
    let ca = load_ca(ca_dir)?;
    let pair = issue(&ca).map_err(|e| TlsError::Config(e.to_string()))?;
    tls::write_pair(out_dir, name, &pair, force)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test", false).unwrap();
        assert!(init_ca(dir.path(), "test", false).is_err(), "an existing CA is never replaced silently");
        let (cert, _) = issue(dir.path(), dir.path(), Role::Agent, "web-1", &[], false).unwrap();
        assert!(cert.ends_with("web-1.pem"));
        assert!(issue(dir.path(), dir.path(), Role::Agent, "ca", &[], true).is_err());
    }
}
