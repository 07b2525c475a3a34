//! Configuration pushed from the aggregator: a profile's *body* is a piece
//! of the agent's own TOML format holding the remotely managed part
//! (`[collect]` with its collectors, probes and scrape jobs, `[buffer]`,
//! `agent.labels`, `agent.instance`, `agent.log_level`). An agent's
//! *effective* configuration is its local file overlaid by the body: tables
//! merge key by key, and any other value, arrays of tables included (e.g.
//! `[[collect.postgres]]`), replaces the local one whole.
//!
//! The aggregator (before sending) and the agent (before applying) run the
//! same functions here, ending in the same `RawAgentConfig::validate` the
//! file loader uses: there is one validation path.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::agent::{AgentConfig, RawAgentConfig};
use super::{ConfigError, Problems, parse_toml};

/// Keys that stay in the agent's local file: a body touching them is refused.
const LOCAL_ONLY: &[(&str, &str)] = &[
    ("uplink", "stays in the agent's local file (endpoints and certificates are never pushed)"),
    ("agent.id", "stays in the agent's local file (the certificate is the identity)"),
    ("agent.state_dir", "stays in the agent's local file"),
    ("agent.metrics_listen", "stays in the agent's local file (changing a listener needs a restart)"),
];

/// A checked profile body.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    text: String,
    table: toml::Table,
    hash: String,
}

/// `sha256:` and the hex digest of `text`.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

impl Body {
    /// Parses `text`: TOML, only keys a push may set, every key known to the
    /// agent's format. Every problem names its key (or line).
    pub fn parse(source_name: &str, text: &str) -> Result<Body, ConfigError> {
        let table: toml::Table = parse_toml(source_name, text)?;
        let mut problems = Problems::default();
        for (key, why) in LOCAL_ONLY {
            if lookup(&table, key).is_some() {
                problems.push(key, why);
            }
        }
        problems.finish(source_name, ())?;
        // Unknown keys and wrong types, with their lines in the body.
        let _: RawAgentConfig = parse_toml(source_name, text)?;
        Ok(Body { text: text.to_owned(), table, hash: content_hash(text) })
    }

    /// No body: the local file alone.
    pub fn empty() -> Body {
        Body { text: String::new(), table: toml::Table::new(), hash: content_hash("") }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Merges `body` into `base`: tables key by key, everything else replaced.
pub fn overlay(base: &mut toml::Table, body: &toml::Table) {
    for (key, value) in body {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(body_table)) => overlay(base_table, body_table),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// An agent's local file overlaid by a body, validated.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: AgentConfig,
    /// The merged configuration as TOML (keys sorted): what `hash` covers and diffs show.
    pub text: String,
    pub hash: String,
}

/// The effective configuration of an agent whose local file is `local_text`
/// (named `local_name`, relative paths from `base_dir`) under `body`. A
/// problem in the merged result is reported as coming from `body_name`.
pub fn effective(
    local_name: &str,
    local_text: &str,
    body_name: &str,
    body: &Body,
    base_dir: Option<&Path>,
    hostname: &str,
) -> Result<Effective, ConfigError> {
    let mut merged: toml::Table = parse_toml(local_name, local_text)?;
    overlay(&mut merged, &body.table);
    let text = toml::to_string(&merged).map_err(|err| ConfigError {
        source_name: body_name.to_owned(),
        problems: vec![format!("cannot be written back as TOML: {err}")],
    })?;
    let source_name = if body.is_empty() { local_name } else { body_name };
    let config = AgentConfig::from_toml(source_name, &text, base_dir, hostname)?;
    let hash = content_hash(&text);
    Ok(Effective { config, text, hash })
}

/// The local file as the agent reports it to the aggregator: passwords in
/// `collect.postgres[].dsn` and `collect.redis[].password` replaced by
/// `***` (still valid, so the aggregator can validate overlays on it).
/// Text that does not parse is reported as empty.
pub fn redacted(local_text: &str) -> String {
    let Ok(mut table) = local_text.parse::<toml::Table>() else { return String::new() };
    let collect = table.get_mut("collect").and_then(toml::Value::as_table_mut);
    if let Some(collect) = collect {
        for (list, field) in [("postgres", "dsn"), ("redis", "password")] {
            let Some(entries) = collect.get_mut(list).and_then(toml::Value::as_array_mut) else { continue };
            for entry in entries.iter_mut().filter_map(toml::Value::as_table_mut) {
                if let Some(toml::Value::String(value)) = entry.get_mut(field) {
                    *value = if field == "dsn" { redact_dsn(value) } else { "***".to_owned() };
                }
            }
        }
    }
    toml::to_string(&table).unwrap_or_default()
}

/// A PostgreSQL connection string with its password (URL userinfo,
/// `?password=` or a `password=` pair) replaced by `***`.
pub fn redact_dsn(dsn: &str) -> String {
    if let Some((scheme, rest)) = dsn.split_once("://") {
        let (authority, tail) = rest.find(['/', '?']).map_or((rest, ""), |at| rest.split_at(at));
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| if pair.starts_with("password=") { "password=***".to_owned() } else { pair.to_owned() })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        format!("{scheme}://{authority}{tail}")
    } else {
        dsn.split_whitespace()
            .map(|pair| if pair.starts_with("password=") { "password=***".to_owned() } else { pair.to_owned() })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LOCAL: &str = r#"
        [agent]
        id = "db-1"
        labels = { role = "postgres", env = "prod" }
        [uplink]
        endpoints = ["agg:7400"]
        ca_file = "pki/ca.pem"
        cert_file = "pki/db-1.pem"
        key_file = "pki/db-1-key.pem"
        [collect]
        interval = "10s"
        [[collect.postgres]]
        dsn = "postgres://herd:secret@127.0.0.1:5432/app"
    "#;

    fn check(body: &str) -> Result<Effective, String> {
        let body = Body::parse("web@3", body).map_err(|e| e.to_string())?;
        effective("agent.toml", LOCAL, "web@3", &body, Some(Path::new("/etc/herd")), "db-1").map_err(|e| e.to_string())
    }

    #[test]
    fn tables_merge_and_arrays_replace() {
        let effective = check(
            "[collect]\ninterval = \"5s\"\n[agent]\nlabels = { tier = \"gold\" }\n[buffer]\nmax_bytes = 1048576\n",
        )
        .unwrap();
        let config = effective.config;
        assert_eq!(config.collect.interval, Duration::from_secs(5));
        assert_eq!(config.collect.postgres.len(), 1, "the local postgres entry stays");
        assert_eq!(config.labels.get("role").map(String::as_str), Some("postgres"));
        assert_eq!(config.labels.get("tier").map(String::as_str), Some("gold"));
        assert_eq!(config.buffer.max_bytes, 1 << 20);
        assert_eq!(config.id, "db-1");
        let replaced =
            check("[[collect.redis]]\naddress = \"127.0.0.1:6379\"\n[[collect.postgres]]\ndsn = \"host=db\"\n")
                .unwrap()
                .config;
        assert_eq!(replaced.collect.postgres.len(), 1);
        assert_eq!(replaced.collect.redis.len(), 1);
    }

    #[test]
    fn local_keys_are_refused_with_their_path() {
        let err = check("[uplink]\nendpoints = [\"evil:7400\"]\n[agent]\nid = \"other\"\nstate_dir = \"/tmp\"\n")
            .unwrap_err();
        for needle in ["web@3: uplink: stays in the agent's local file", "web@3: agent.id:", "web@3: agent.state_dir:"]
        {
            assert!(err.contains(needle), "{needle:?} in:\n{err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported_from_the_body() {
        let err = check("[collect]\nintervall = \"5s\"\n").unwrap_err();
        assert!(err.contains("web@3") && err.contains("unknown field `intervall`"), "{err}");
        let err = check("[collect]\ninterval = \"10ms\"\n").unwrap_err();
        assert!(err.contains("web@3: collect.interval: must be at least 100ms"), "{err}");
    }

    #[test]
    fn hashes_follow_the_content() {
        let a = check("[collect]\ninterval = \"5s\"\n").unwrap();
        let b = check("[collect]\n\ninterval = \"5s\"\n").unwrap();
        assert_eq!(a.hash, b.hash, "the effective text is canonical");
        assert_ne!(a.hash, check("[collect]\ninterval = \"6s\"\n").unwrap().hash);
        assert!(Body::empty().is_empty());
        assert_eq!(content_hash("").len(), "sha256:".len() + 64);
    }

    #[test]
    fn redaction_keeps_the_file_valid_and_hides_passwords() {
        let redacted = redacted(LOCAL);
        assert!(!redacted.contains("secret"), "{redacted}");
        assert!(redacted.contains("postgres://herd:***@127.0.0.1:5432/app"), "{redacted}");
        let body = Body::parse("b", "[collect]\ninterval = \"5s\"\n").unwrap();
        effective("reported", &redacted, "b", &body, None, "db-1").unwrap();
        assert_eq!(redact_dsn("host=db password=x user=u"), "host=db password=*** user=u");
        assert_eq!(
            redact_dsn("postgres://u@h/db?password=x&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact_dsn("postgres://h/db"), "postgres://h/db");
    }
}
