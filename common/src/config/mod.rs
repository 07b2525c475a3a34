//! Configuration schemas for both binaries. Each file format has a raw form
//! that mirrors the TOML (`Raw*`, `deny_unknown_fields`) and a validated form
//! with typed values; `validate` is the one path shared by the file loader
//! and, later, configuration pushed by the aggregator. Defaults live here.

pub mod agent;
pub mod aggregator;
pub mod client_tls;
pub mod http;
pub mod identity;
pub mod pushed;
pub mod remote_write;
pub mod storage;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Everything wrong with one configuration, each problem naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the configuration came from, or where it was pushed from.
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.source_name)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A password or a connection string that may hold one: `Debug` and
/// `Display` print `***`, so it never reaches a log line or an error message.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; pass it straight to the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Collects problems while validating.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn push(&mut self, key: &str, message: impl fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    pub(crate) fn finish<T>(self, source_name: &str, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { source_name: source_name.to_owned(), problems: self.0 })
        }
    }
}

/// Parses TOML text into a raw configuration.
pub(crate) fn parse_toml<T: DeserializeOwned>(source_name: &str, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|err| ConfigError {
        source_name: source_name.to_owned(),
        problems: vec![err.to_string().trim_end().to_owned()],
    })
}

/// Reads a configuration file; a missing file is an error naming the path.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| ConfigError {
        source_name: path.display().to_string(),
        problems: vec![format!("cannot read the file: {err}")],
    })
}

/// Resolves a path from a config file relative to the file's directory.
pub(crate) fn resolve(base: Option<&Path>, path: &Path) -> PathBuf {
    match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_owned(),
    }
}

/// A `host:port` endpoint as written in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, port) =
            text.rsplit_once(':').ok_or_else(|| format!("{text:?} has no port (expected \"host:7400\")"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host (expected \"host:7400\")"));
        }
        let port = port.parse::<u16>().map_err(|_| format!("{text:?} has an invalid port"))?;
        Ok(Self { host: host.to_owned(), port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Log filter syntax check (`info`, `herd_agent=debug,warn`, ...).
pub(crate) fn check_log_level(level: &str) -> Result<(), String> {
    let valid = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !valid.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(format!("{lvl:?} is not a log level (expected one of {})", valid.join(", ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("agg:7400").unwrap(), Endpoint { host: "agg".into(), port: 7400 });
        assert_eq!(Endpoint::parse("[::1]:7400").unwrap(), Endpoint { host: "::1".into(), port: 7400 });
        assert_eq!(Endpoint::parse("[::1]:7400").unwrap().to_string(), "[::1]:7400");
        assert!(Endpoint::parse("agg").is_err());
        assert!(Endpoint::parse("agg:99999").is_err());
        assert!(Endpoint::parse(":7400").is_err());
    }

    #[test]
    fn log_levels_are_checked() {
        assert!(check_log_level("info").is_ok());
        assert!(check_log_level("herd_agent=debug,warn").is_ok());
        assert!(check_log_level("loud").is_err());
    }
}
