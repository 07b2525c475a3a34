//! `[http]` of `/etc/herd/aggregator.toml`: who may call the aggregator's
//! HTTP API. Credentials are bearer tokens read from files, each with a name
//! (recorded as the author of what it changes) and a role; requests without
//! credentials get `anonymous_role`, which defaults to `viewer` when the HTTP
//! listener is on a loopback address and to nothing otherwise.
//!
//! Client certificates signed by the fleet CA are credentials too, when the
//! listener serves TLS: `[[http.client_certificates]]` gives the holder of
//! a client certificate (`herd-aggregator cert issue --client NAME`) a role.
//! The listener's own settings (TLS files, request limits) are
//! [`HttpListenerConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Problems, resolve};

/// What a caller may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Every read: queries, metadata, the fleet, alerts, silences, the UI.
    Viewer,
    /// Silences, alert posts, rule reloads, remote_write.
    Editor,
    /// Configuration pushes, enrollment tokens, certificates and revocation.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// "none", "viewer", "editor" or "admin".
    pub anonymous_role: Option<String>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    #[serde(default)]
    pub client_certificates: Vec<RawClientCertificate>,
    /// Serve HTTPS with this certificate (PEM, chain first) and key; both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Largest request body read, for every route (413 past it).
    pub max_body_bytes: Option<usize>,
    /// Largest request head: request line and headers (431 past it).
    pub max_header_bytes: Option<usize>,
    /// Longest query string (414 past it).
    pub max_query_bytes: Option<usize>,
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: Option<usize>,
    /// A connection that does not send a whole request head in this time
    /// (idle ones included) is closed; also bounds the TLS handshake.
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertificate {
    /// The name in the certificate (`cert issue --client NAME`).
    pub name: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// Who holds the token: logged and recorded as the author of changes.
    pub name: Option<String>,
    pub role: Option<String>,
    /// A file holding the token (surrounding whitespace is ignored).
    pub token_file: Option<PathBuf>,
}

/// Validated `[http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The role of requests without credentials; `None`: they are refused (401).
    pub anonymous_role: Option<Role>,
    pub tokens: Vec<TokenConfig>,
    /// Client certificate names and their roles.
    pub client_certificates: Vec<(String, Role)>,
}

/// One `[[http.tokens]]` entry. The token itself is read by the
/// aggregator when it starts and on SIGHUP, never kept in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    pub token_file: PathBuf,
}

/// Shortest token accepted from a file: guessing must be hopeless.
pub const MIN_TOKEN_BYTES: usize = 16;

pub const DEFAULT_MAX_BODY_BYTES: usize = 32 << 20;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
pub const DEFAULT_MAX_QUERY_BYTES: usize = 32 << 10;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// hyper refuses request targets longer than this itself.
const MAX_QUERY_BYTES: usize = 65_000;

/// The HTTP listener: TLS and request limits (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpListenerConfig {
    /// (certificate, key) files when serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_query_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout: std::time::Duration,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            tls: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_query_bytes: DEFAULT_MAX_QUERY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

impl RawHttp {
    /// The listener's part of `[http]`.
    pub(crate) fn listener(&self, base_dir: Option<&Path>, problems: &mut Problems) -> HttpListenerConfig {
        let defaults = HttpListenerConfig::default();
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some((resolve(base_dir, cert), resolve(base_dir, key))),
            (None, None) => None,
            _ => {
                problems.push("http.tls_cert_file", "and http.tls_key_file go together: set both to serve HTTPS");
                None
            }
        };
        let mut bounded = |key: &str, value: Option<usize>, default: usize, min: usize, max: usize| {
            let value = value.unwrap_or(default);
            if !(min..=max).contains(&value) {
                problems.push(key, format!("must be between {min} and {max}"));
            }
            value
        };
        let config = HttpListenerConfig {
            tls,
            max_body_bytes: bounded("http.max_body_bytes", self.max_body_bytes, defaults.max_body_bytes, 1024, 1 << 30),
            max_header_bytes: bounded(
                "http.max_header_bytes",
                self.max_header_bytes,
                defaults.max_header_bytes,
                8192,
                16 << 20,
            ),
            max_query_bytes: bounded(
                "http.max_query_bytes",
                self.max_query_bytes,
                defaults.max_query_bytes,
                256,
                MAX_QUERY_BYTES,
            ),
            max_connections: bounded(
                "http.max_connections",
                self.max_connections,
                defaults.max_connections,
                1,
                1_000_000,
            ),
            header_read_timeout: self.header_read_timeout.unwrap_or(defaults.header_read_timeout),
        };
        if config.header_read_timeout < std::time::Duration::from_millis(100) {
            problems.push("http.header_read_timeout", "must be at least 100ms");
        }
        config
    }

    pub(crate) fn validate(
        self,
        http_listen: SocketAddr,
        base_dir: Option<&Path>,
        problems: &mut Problems,
    ) -> HttpConfig {
        let anonymous_role = match self.anonymous_role.as_deref() {
            None if http_listen.ip().is_loopback() => Some(Role::Viewer),
            None | Some("none") => None,
            Some(text) => Role::parse(text).or_else(|| {
                problems.push(
                    "http.anonymous_role",
                    format!("{text:?} is not one of \"none\", \"viewer\", \"editor\", \"admin\""),
                );
                None
            }),
        };
        let mut tokens = Vec::with_capacity(self.tokens.len());
        let mut names = std::collections::BTreeSet::new();
        for (i, raw) in self.tokens.into_iter().enumerate() {
            let key = format!("http.tokens[{i}]");
            let name = raw.name.unwrap_or_default();
            if name.trim().is_empty() {
                problems.push(&format!("{key}.name"), "is missing (it names the token's holder in logs and audit)");
            } else if !names.insert(name.clone()) {
                problems.push(&format!("{key}.name"), format!("{name:?} is used by another token"));
            }
            let role = match raw.role.as_deref().map(|text| (text, Role::parse(text))) {
                Some((_, Some(role))) => role,
                Some((text, None)) => {
                    problems.push(
                        &format!("{key}.role"),
                        format!("{text:?} is not one of \"viewer\", \"editor\", \"admin\""),
                    );
                    Role::Viewer
                }
                None => {
                    problems.push(&format!("{key}.role"), "is missing (\"viewer\", \"editor\" or \"admin\")");
                    Role::Viewer
                }
            };
            let Some(token_file) = raw.token_file else {
                problems.push(&format!("{key}.token_file"), "is missing (a file holding the token)");
                continue;
            };
            tokens.push(TokenConfig { name, role, token_file: resolve(base_dir, &token_file) });
        }
        let mut client_certificates = Vec::new();
        for (i, raw) in self.client_certificates.into_iter().enumerate() {
            let key = format!("http.client_certificates[{i}]");
            let Some(name) = raw.name.filter(|n| !n.trim().is_empty()) else {
                problems.push(&format!("{key}.name"), "is missing (the name in the client certificate)");
                continue;
            };
            match raw.role.as_deref().map(Role::parse) {
                Some(Some(role)) => client_certificates.push((name, role)),
                _ => problems.push(&format!("{key}.role"), "must be one of \"viewer\", \"editor\", \"admin\""),
            }
        }
        HttpConfig { anonymous_role, tokens, client_certificates }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, listen: &str) -> Result<HttpConfig, String> {
        let raw: RawHttp = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Problems::default();
        let config = raw.validate(listen.parse().unwrap(), Some(Path::new("/etc/herd")), &mut problems);
        problems.finish("aggregator.toml", config).map_err(|e| e.to_string())
    }

    #[test]
    fn anonymous_reads_default_to_loopback_only() {
        assert_eq!(check("", "127.0.0.1:7401").unwrap().anonymous_role, Some(Role::Viewer));
        assert_eq!(check("", "0.0.0.0:7401").unwrap().anonymous_role, None);
        assert_eq!(check("anonymous_role = \"none\"", "127.0.0.1:7401").unwrap().anonymous_role, None);
        assert_eq!(check("anonymous_role = \"viewer\"", "0.0.0.0:7401").unwrap().anonymous_role, Some(Role::Viewer));
    }

    #[test]
    fn tokens_are_checked_with_their_keys() {
        let config =
            check("[[tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken_file = \"tokens/ops\"\n", "0.0.0.0:7401")
                .unwrap();
        assert_eq!(
            config.tokens,
            [TokenConfig { name: "ops".into(), role: Role::Admin, token_file: PathBuf::from("/etc/herd/tokens/ops") }]
        );
        let err = check(
            "anonymous_role = \"root\"\n[[tokens]]\nname = \"a\"\nrole = \"boss\"\ntoken_file = \"x\"\n\
             [[tokens]]\nname = \"a\"\n",
            "0.0.0.0:7401",
        )
        .unwrap_err();
        for needle in [
            "http.anonymous_role: \"root\" is not one of",
            "http.tokens[0].role: \"boss\" is not one of",
            "http.tokens[1].name: \"a\" is used by another token",
            "http.tokens[1].role: is missing",
            "http.tokens[1].token_file: is missing",
        ] {
            assert!(err.contains(needle), "{needle:?} in:\n{err}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        assert_eq!(Role::parse("editor"), Some(Role::Editor));
        assert_eq!(Role::parse("Editor"), None);
    }
}
