//! `[http]` of `/etc/herd/aggregator.toml`: who may call the aggregator's
//! HTTP API. Credentials are bearer tokens read from files, each with a name
//! (recorded as the author of what it changes) and a role; requests without
//! credentials get `anonymous_role`, which defaults to `viewer` when the HTTP
//! listener is on a loopback address and to nothing otherwise.

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

impl RawHttp {
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
        HttpConfig { anonymous_role, tokens }
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
