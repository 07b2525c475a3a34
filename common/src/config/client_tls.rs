//! `tls = { ... }` on the agent's Redis, PostgreSQL, probe and scrape
//! entries: how the agent, as a TLS client, verifies a server and which
//! certificate it presents. Separate from the uplink's fleet PKI: these
//! servers have their own CAs.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Problems, resolve};

/// Debian's bundle of the system's trusted CAs, used when `ca_file` is absent.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    /// PEM CA certificates that verify the server; default: the system bundle.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Its PEM private key; refused when readable by others.
    pub key_file: Option<PathBuf>,
    /// Name the server's certificate must carry; default: the host connected to.
    pub server_name: Option<String>,
    /// Accepts any server certificate (still encrypted, not authenticated). Default false.
    pub insecure_skip_verify: Option<bool>,
}

/// A validated `tls` table. Files are read at each connection attempt, so
/// renewed certificates are picked up without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// `None`: [`SYSTEM_CA_FILE`].
    pub ca_file: Option<PathBuf>,
    /// Both or neither.
    pub client_cert: Option<ClientCertFiles>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ClientTls {
    /// The CA file to read: the configured one or the system bundle.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.as_deref().unwrap_or(Path::new(SYSTEM_CA_FILE))
    }
}

impl RawClientTls {
    /// `key` names the table in problems, e.g. `collect.redis[0].tls`.
    pub(crate) fn validate(self, key: &str, base_dir: Option<&Path>, problems: &mut Problems) -> ClientTls {
        let client_cert = match (self.cert_file, self.key_file) {
            (Some(cert), Some(key_file)) => {
                Some(ClientCertFiles { cert_file: resolve(base_dir, &cert), key_file: resolve(base_dir, &key_file) })
            }
            (None, None) => None,
            (Some(_), None) => {
                problems.push(&format!("{key}.key_file"), "is missing (cert_file needs its private key)");
                None
            }
            (None, Some(_)) => {
                problems.push(&format!("{key}.cert_file"), "is missing (key_file needs its certificate)");
                None
            }
        };
        if self.server_name.as_deref().is_some_and(rustls_name_invalid) {
            problems.push(&format!("{key}.server_name"), "is not a DNS name or an IP address");
        }
        ClientTls {
            ca_file: self.ca_file.map(|path| resolve(base_dir, &path)),
            client_cert,
            server_name: self.server_name,
            insecure_skip_verify: self.insecure_skip_verify.unwrap_or(false),
        }
    }
}

fn rustls_name_invalid(name: &str) -> bool {
    rustls::pki_types::ServerName::try_from(name).is_err()
}

/// Refuses private keys that others may read, as config files holding
/// passwords are: `(key, problem)` for each such `key_file`.
pub fn readable_key_problem(key: &str, tls: &ClientTls) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let files = tls.client_cert.as_ref()?;
    let mode = std::fs::metadata(&files.key_file).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{key}.key_file: {} is readable by others (mode {:o}): chmod o-r it",
            files.key_file.display(),
            mode & 0o777
        )
    })
}
