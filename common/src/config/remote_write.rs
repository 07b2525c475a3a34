//! Prometheus remote_write, both ways: `[[remote_write]]` endpoints the
//! aggregator sends everything it ingests to, and `[remote_write_receiver]`,
//! the authenticated `POST /api/v1/write` that Prometheus or vmagent send to.
//! Key names and defaults follow Prometheus's `remote_write` configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Problems, Secret, resolve};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_SAMPLES_PER_SEND: usize = 2000;
const DEFAULT_BATCH_SEND_DEADLINE: Duration = Duration::from_secs(5);
const DEFAULT_MIN_SHARDS: usize = 1;
const DEFAULT_MAX_SHARDS: usize = 50;
const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(30);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// WAL bytes an endpoint may fall behind before its oldest unsent data is dropped.
const DEFAULT_MAX_BACKLOG_BYTES: u64 = 1 << 30;
/// Largest compressed request body the receiver reads.
const DEFAULT_RECEIVER_MAX_BODY_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteWrite {
    pub url: String,
    pub name: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub basic_auth: Option<RawBasicAuth>,
    pub bearer_token: Option<Secret>,
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub write_relabel_configs: Vec<RawRelabel>,
    #[serde(default)]
    pub queue_config: RawQueueConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: String,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelabel {
    #[serde(default)]
    pub source_labels: Vec<String>,
    pub separator: Option<String>,
    pub regex: Option<String>,
    pub action: Option<String>,
    pub target_label: Option<String>,
    pub replacement: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueueConfig {
    pub max_samples_per_send: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub batch_send_deadline: Option<Duration>,
    pub min_shards: Option<usize>,
    pub max_shards: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub min_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    pub max_backlog_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub allow_unauthenticated: bool,
    #[serde(default)]
    pub bearer_tokens: Vec<Secret>,
    #[serde(default)]
    pub bearer_token_files: Vec<PathBuf>,
    #[serde(default)]
    pub basic_auth: Vec<RawBasicAuth>,
    pub max_body_bytes: Option<usize>,
}

/// Credentials sent with each request.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

/// What a relabel rule does (Prometheus's `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelabelAction {
    Replace,
    Keep,
    Drop,
    LabelDrop,
    LabelKeep,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelabelConfig {
    pub source_labels: Vec<String>,
    pub separator: String,
    /// Unanchored as written; anchored when compiled.
    pub regex: String,
    pub action: RelabelAction,
    pub target_label: String,
    pub replacement: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    pub max_samples_per_send: usize,
    pub batch_send_deadline: Duration,
    pub min_shards: usize,
    pub max_shards: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_backlog_bytes: u64,
}

/// One `[[remote_write]]` endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWriteConfig {
    pub url: String,
    /// Unique among endpoints; names the queue's state file and metrics.
    pub name: String,
    pub timeout: Duration,
    pub credentials: Credentials,
    pub write_relabel_configs: Vec<RelabelConfig>,
    pub queue: QueueConfig,
}

/// `[remote_write_receiver]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReceiverConfig {
    pub enabled: bool,
    pub allow_unauthenticated: bool,
    pub bearer_tokens: Vec<Secret>,
    /// (username, password) pairs.
    pub basic_auth: Vec<(String, Secret)>,
    pub max_body_bytes: usize,
}

/// Both directions, as validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteConfig {
    pub write: Vec<RemoteWriteConfig>,
    pub receiver: ReceiverConfig,
}

fn read_secret(key: &str, path: &Path, base_dir: Option<&Path>, problems: &mut Problems) -> Secret {
    let path = resolve(base_dir, path);
    match std::fs::read_to_string(&path) {
        Ok(text) => Secret::new(text.trim_end_matches(['\n', '\r'])),
        Err(err) => {
            problems.push(key, format!("cannot read {}: {err}", path.display()));
            Secret::new("")
        }
    }
}

fn basic_auth(key: &str, raw: RawBasicAuth, base_dir: Option<&Path>, problems: &mut Problems) -> (String, Secret) {
    let password = match (raw.password, raw.password_file) {
        (Some(password), None) => password,
        (None, Some(file)) => read_secret(&format!("{key}.password_file"), &file, base_dir, problems),
        (Some(_), Some(_)) => {
            problems.push(key, "set password or password_file, not both");
            Secret::new("")
        }
        (None, None) => {
            problems.push(key, "needs password or password_file");
            Secret::new("")
        }
    };
    if raw.username.is_empty() {
        problems.push(&format!("{key}.username"), "must not be empty");
    }
    (raw.username, password)
}

fn relabel(key: &str, raw: RawRelabel, problems: &mut Problems) -> RelabelConfig {
    let action = match raw.action.as_deref().unwrap_or("replace") {
        "replace" => RelabelAction::Replace,
        "keep" => RelabelAction::Keep,
        "drop" => RelabelAction::Drop,
        "labeldrop" => RelabelAction::LabelDrop,
        "labelkeep" => RelabelAction::LabelKeep,
        other => {
            problems.push(
                &format!("{key}.action"),
                format!("{other:?} is not supported (expected replace, keep, drop, labeldrop or labelkeep)"),
            );
            RelabelAction::Keep
        }
    };
    let regex = raw.regex.unwrap_or_else(|| "(.*)".to_owned());
    if let Err(err) = regex::Regex::new(&format!("^(?:{regex})$")) {
        problems.push(&format!("{key}.regex"), format!("{regex:?} does not compile: {err}"));
    }
    let target_label = raw.target_label.unwrap_or_default();
    if action == RelabelAction::Replace && target_label.is_empty() {
        problems.push(&format!("{key}.target_label"), "is required for action replace");
    }
    RelabelConfig {
        source_labels: raw.source_labels,
        separator: raw.separator.unwrap_or_else(|| ";".to_owned()),
        regex,
        action,
        target_label,
        replacement: raw.replacement.unwrap_or_else(|| "$1".to_owned()),
    }
}

/// Validates `[[remote_write]]` and `[remote_write_receiver]`, reading secret files.
pub(crate) fn validate(
    write: Vec<RawRemoteWrite>,
    receiver: RawReceiver,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> RemoteConfig {
    let mut endpoints: Vec<RemoteWriteConfig> = Vec::new();
    for (i, raw) in write.into_iter().enumerate() {
        let key = format!("remote_write[{i}]");
        // The URL is logged and labels metrics: credentials belong in basic_auth.
        let scheme_end = raw.url.find("://").map_or(0, |i| i + 3);
        let authority = raw.url[scheme_end..].split('/').next().unwrap_or_default();
        if authority.contains('@') {
            problems.push(&format!("{key}.url"), "holds credentials (user@host): set them in basic_auth instead");
        } else if !raw.url.starts_with("http://") {
            // https needs a TLS client with the receiver's CA: not built yet.
            problems.push(
                &format!("{key}.url"),
                format!(
                    "{:?} is not an http:// URL (expected e.g. \"http://127.0.0.1:9090/api/v1/write\"; https is not supported yet)",
                    raw.url
                ),
            );
        }
        let name = raw.name.clone().unwrap_or_else(|| format!("remote-{i}"));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            problems
                .push(&format!("{key}.name"), format!("{name:?} must be non-empty letters, digits, '-', '_' or '.'"));
        }
        if endpoints.iter().any(|e| e.name == name) {
            problems.push(&format!("{key}.name"), format!("{name:?} is used by another endpoint"));
        }
        let bearer = match (raw.bearer_token, raw.bearer_token_file) {
            (Some(token), None) => Some(token),
            (None, Some(file)) => Some(read_secret(&format!("{key}.bearer_token_file"), &file, base_dir, problems)),
            (Some(_), Some(_)) => {
                problems.push(&key, "set bearer_token or bearer_token_file, not both");
                None
            }
            (None, None) => None,
        };
        let credentials = match (raw.basic_auth, bearer) {
            (Some(_), Some(_)) => {
                problems.push(&key, "set basic_auth or a bearer token, not both");
                Credentials::None
            }
            (Some(auth), None) => {
                let (username, password) = basic_auth(&format!("{key}.basic_auth"), auth, base_dir, problems);
                Credentials::Basic { username, password }
            }
            (None, Some(token)) => Credentials::Bearer(token),
            (None, None) => Credentials::None,
        };
        let write_relabel_configs = raw
            .write_relabel_configs
            .into_iter()
            .enumerate()
            .map(|(j, r)| relabel(&format!("{key}.write_relabel_configs[{j}]"), r, problems))
            .collect();
        let q = raw.queue_config;
        let queue = QueueConfig {
            max_samples_per_send: q.max_samples_per_send.unwrap_or(DEFAULT_MAX_SAMPLES_PER_SEND),
            batch_send_deadline: q.batch_send_deadline.unwrap_or(DEFAULT_BATCH_SEND_DEADLINE),
            min_shards: q.min_shards.unwrap_or(DEFAULT_MIN_SHARDS),
            max_shards: q.max_shards.unwrap_or(DEFAULT_MAX_SHARDS),
            min_backoff: q.min_backoff.unwrap_or(DEFAULT_MIN_BACKOFF),
            max_backoff: q.max_backoff.unwrap_or(DEFAULT_MAX_BACKOFF),
            max_backlog_bytes: q.max_backlog_bytes.unwrap_or(DEFAULT_MAX_BACKLOG_BYTES),
        };
        let qkey = format!("{key}.queue_config");
        if queue.max_samples_per_send == 0 {
            problems.push(&format!("{qkey}.max_samples_per_send"), "must be at least 1");
        }
        if queue.min_shards == 0 || queue.max_shards < queue.min_shards || queue.max_shards > 1000 {
            problems.push(&qkey, "needs 1 <= min_shards <= max_shards <= 1000");
        }
        if queue.min_backoff.is_zero() || queue.max_backoff < queue.min_backoff {
            problems.push(&qkey, "needs 0 < min_backoff <= max_backoff");
        }
        if queue.batch_send_deadline.is_zero() {
            problems.push(&format!("{qkey}.batch_send_deadline"), "must be above zero");
        }
        let timeout = raw.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            problems.push(&format!("{key}.timeout"), "must be above zero");
        }
        endpoints.push(RemoteWriteConfig { url: raw.url, name, timeout, credentials, write_relabel_configs, queue });
    }

    let mut bearer_tokens = receiver.bearer_tokens;
    for (i, file) in receiver.bearer_token_files.iter().enumerate() {
        bearer_tokens.push(read_secret(
            &format!("remote_write_receiver.bearer_token_files[{i}]"),
            file,
            base_dir,
            problems,
        ));
    }
    if bearer_tokens.iter().any(|t| t.expose().is_empty()) {
        problems.push("remote_write_receiver.bearer_tokens", "a token must not be empty");
    }
    let basic = receiver
        .basic_auth
        .into_iter()
        .enumerate()
        .map(|(i, raw)| basic_auth(&format!("remote_write_receiver.basic_auth[{i}]"), raw, base_dir, problems))
        .collect::<Vec<_>>();
    if receiver.enabled && bearer_tokens.is_empty() && basic.is_empty() && !receiver.allow_unauthenticated {
        problems.push(
            "remote_write_receiver",
            "enabled without credentials: anyone could write data; set bearer_tokens, bearer_token_files or basic_auth, or allow_unauthenticated = true",
        );
    }
    let max_body_bytes = receiver.max_body_bytes.unwrap_or(DEFAULT_RECEIVER_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        problems.push("remote_write_receiver.max_body_bytes", "must be at least 1");
    }
    RemoteConfig {
        write: endpoints,
        receiver: ReceiverConfig {
            enabled: receiver.enabled,
            allow_unauthenticated: receiver.allow_unauthenticated,
            bearer_tokens,
            basic_auth: basic,
            max_body_bytes,
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::config::aggregator::AggregatorConfig;

    use super::*;

    #[test]
    fn defaults_follow_prometheus() {
        let config = AggregatorConfig::from_toml(
            "a.toml",
            "[[remote_write]]\nurl = \"http://127.0.0.1:9090/api/v1/write\"\nbearer_token = \"s3cret\"\n",
            None,
        )
        .unwrap();
        let endpoint = &config.remote.write[0];
        assert_eq!(endpoint.name, "remote-0");
        assert_eq!(endpoint.queue.max_samples_per_send, 2000);
        assert_eq!(endpoint.queue.batch_send_deadline, Duration::from_secs(5));
        assert_eq!((endpoint.queue.min_shards, endpoint.queue.max_shards), (1, 50));
        assert_eq!(endpoint.credentials, Credentials::Bearer(Secret::new("s3cret")));
        assert!(!format!("{config:?}").contains("s3cret"), "secrets never reach Debug output");
        assert!(!config.remote.receiver.enabled);
    }

    #[test]
    fn receiver_without_credentials_is_refused() {
        let err = AggregatorConfig::from_toml("a.toml", "[remote_write_receiver]\nenabled = true\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("remote_write_receiver: enabled without credentials"), "{err}");
        let open = AggregatorConfig::from_toml(
            "a.toml",
            "[remote_write_receiver]\nenabled = true\nallow_unauthenticated = true\n",
            None,
        )
        .unwrap();
        assert!(open.remote.receiver.allow_unauthenticated);
    }

    #[test]
    fn secret_files_are_read_and_bad_keys_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "from-file\n").unwrap();
        let config = AggregatorConfig::from_toml(
            "a.toml",
            "[remote_write_receiver]\nenabled = true\nbearer_token_files = [\"token\"]\n",
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(config.remote.receiver.bearer_tokens, [Secret::new("from-file")]);
        let err = AggregatorConfig::from_toml(
            "a.toml",
            "[[remote_write]]\nurl = \"https://x\"\n[[remote_write.write_relabel_configs]]\naction = \"hashmod\"\n\
             [[remote_write.write_relabel_configs]]\naction = \"keep\"\nregex = \"(\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("remote_write[0].url"), "{err}");
        assert!(err.contains("remote_write[0].write_relabel_configs[0].action"), "{err}");
        assert!(err.contains("remote_write[0].write_relabel_configs[1].regex"), "{err}");
        let err = AggregatorConfig::from_toml("a.toml", "[[remote_write]]\nurl = \"http://u:pw@h:9090/w\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("remote_write[0].url: holds credentials") && !err.contains("pw"), "{err}");
    }
}
