//! `/etc/herd/aggregator.toml`: where the aggregator listens and keeps state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Problems, check_log_level, parse_toml, read_file, resolve};
use crate::tls::TlsFiles;

pub const DEFAULT_PATH: &str = "/etc/herd/aggregator.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/herd-aggregator";
pub const DEFAULT_QUIC_LISTEN: &str = "0.0.0.0:7400";
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:7401";
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_LOOKBACK_DELTA: Duration = Duration::from_secs(300);
const DEFAULT_MAX_SERIES_PER_AGENT: u32 = 1_000_000;
/// Prometheus's `global.evaluation_interval` default.
const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest time between two ingest-triggered evaluations of a rule group by default.
pub const DEFAULT_MIN_EVAL_SPACING: Duration = Duration::from_secs(1);
/// Prometheus's `--rules.alert.resend-delay` default.
const DEFAULT_RESEND_DELAY: Duration = Duration::from_secs(60);
/// Prometheus's default Alertmanager timeout.
const DEFAULT_ALERTMANAGER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregatorConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub query: RawQuery,
    #[serde(default)]
    pub rules: RawRules,
    #[serde(default)]
    pub alerting: RawAlerting,
    #[serde(default)]
    pub storage: super::storage::RawStorage,
    #[serde(default)]
    pub remote_write: Vec<super::remote_write::RawRemoteWrite>,
    #[serde(default)]
    pub remote_write_receiver: super::remote_write::RawReceiver,
    #[serde(default)]
    pub identity: super::identity::RawIdentity,
    #[serde(default)]
    pub http: super::http::RawHttp,
    #[serde(default)]
    pub remote_config: RawRemoteConfig,
}

/// `[remote_config]`: profiles pushed to agents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteConfig {
    /// Versions kept per profile for rollback (the active one is always kept).
    pub keep_versions: Option<usize>,
}

/// Versions kept per profile by default.
pub const DEFAULT_KEEP_VERSIONS: usize = 20;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Prometheus rule files: paths or globs, relative to this file.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub evaluation_interval: Option<Duration>,
    /// Added to alerts sent to Alertmanager and available as `$externalLabels`.
    #[serde(default)]
    pub external_labels: std::collections::BTreeMap<String, String>,
    /// Evaluate alerting rules as soon as data their selectors read is stored (default true).
    pub evaluate_on_ingest: Option<bool>,
    /// Shortest time between two ingest-triggered evaluations of one group.
    #[serde(default, with = "humantime_serde")]
    pub min_eval_spacing: Option<Duration>,
    /// `min_eval_spacing` for the groups of these names, e.g. `{ detect = "200ms" }`.
    #[serde(default)]
    pub min_eval_spacing_by_group: std::collections::BTreeMap<String, String>,
    /// How often agents sample the series alerting rules compare directly,
    /// between their collection cycles ("0s", the default: not at all).
    #[serde(default, with = "humantime_serde")]
    pub alert_input_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerting {
    #[serde(default, with = "humantime_serde")]
    pub resend_delay: Option<Duration>,
    /// The URL alerts link back to (`generatorURL`, `$externalURL`).
    pub external_url: Option<String>,
    #[serde(default)]
    pub alertmanagers: Vec<RawAlertmanager>,
    /// An Alertmanager configuration file for the built-in router (relative to this file).
    pub router_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    pub url: String,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// Rule evaluation: `[rules]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesConfig {
    /// Paths or globs, made absolute.
    pub files: Vec<String>,
    pub evaluation_interval: Duration,
    pub external_labels: Vec<(String, String)>,
    /// Ingest-triggered evaluation of alerting rules (periodic evaluation runs regardless).
    pub evaluate_on_ingest: bool,
    pub min_eval_spacing: Duration,
    /// Per group name, overriding `min_eval_spacing`.
    pub min_eval_spacing_by_group: Vec<(String, Duration)>,
    /// Agents sample alert inputs this often (`Duration::ZERO`: off).
    pub alert_input_interval: Duration,
}

/// The shortest `rules.alert_input_interval`: an agent's scheduler ticks no faster.
pub const MIN_ALERT_INPUT_INTERVAL: Duration = Duration::from_millis(100);

/// Where alerts go: `[alerting]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertingConfig {
    pub resend_delay: Duration,
    pub external_url: Option<String>,
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// The built-in router's Alertmanager configuration file, made absolute.
    pub router_config: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertmanagerConfig {
    pub url: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub quic_listen: Option<String>,
    pub http_listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    pub max_series_per_agent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    #[serde(default, with = "humantime_serde")]
    pub lookback_delta: Option<Duration>,
    /// Samples one query may hold in memory at once (`--query.max-samples`).
    pub max_samples: Option<u64>,
    /// Samples one query may read from the store.
    pub max_samples_read: Option<u64>,
    /// Series one selector may select.
    pub max_series: Option<u64>,
    /// Longest a query may run (`--query.timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// API queries evaluated at once; more wait (`--query.max-concurrency`).
    pub max_concurrency: Option<u64>,
}

/// Limits on what one query may cost; past them it fails with Prometheus's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimitsConfig {
    pub max_samples: u64,
    pub max_samples_read: u64,
    pub max_series: u64,
    pub timeout: Duration,
    pub max_concurrency: u64,
}

impl Default for QueryLimitsConfig {
    /// Prometheus's defaults where it has them.
    fn default() -> Self {
        Self {
            max_samples: 50_000_000,
            max_samples_read: 1_000_000_000,
            max_series: 500_000,
            timeout: Duration::from_secs(120),
            max_concurrency: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub log_level: String,
    pub heartbeat_interval: Duration,
    pub max_series_per_agent: u32,
    pub tls: TlsFiles,
    pub lookback_delta: Duration,
    pub query_limits: QueryLimitsConfig,
    pub rules: RulesConfig,
    pub alerting: AlertingConfig,
    pub storage: super::storage::StorageConfig,
    pub remote: super::remote_write::RemoteConfig,
    pub identity: super::identity::IdentityConfig,
    /// The HTTP listener's TLS and request limits: also `[http]`.
    pub http_listener: super::http::HttpListenerConfig,
    /// Who may call the HTTP API: `[http]`.
    pub http: super::http::HttpConfig,
    /// `[remote_config] keep_versions`.
    pub keep_config_versions: usize,
}

impl AggregatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::from_toml(&path.display().to_string(), &text, path.parent())
    }

    pub fn from_toml(source_name: &str, text: &str, base_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let raw: RawAggregatorConfig = parse_toml(source_name, text)?;
        raw.validate(source_name, base_dir)
    }
}

impl RawAggregatorConfig {
    pub fn validate(self, source_name: &str, base_dir: Option<&Path>) -> Result<AggregatorConfig, ConfigError> {
        let mut problems = Problems::default();
        let mut addr = |key: &str, value: Option<String>, default: &str| -> SocketAddr {
            let text = value.unwrap_or_else(|| default.to_owned());
            text.parse().unwrap_or_else(|_| {
                problems.push(key, format!("{text:?} is not an address (expected e.g. \"{default}\")"));
                default.parse().expect("default address parses")
            })
        };
        let quic_listen = addr("server.quic_listen", self.server.quic_listen, DEFAULT_QUIC_LISTEN);
        let http_listen = addr("server.http_listen", self.server.http_listen, DEFAULT_HTTP_LISTEN);
        let log_level = self.server.log_level.unwrap_or_else(|| "info".to_owned());
        if let Err(err) = check_log_level(&log_level) {
            problems.push("server.log_level", err);
        }
        let state_dir =
            self.server.state_dir.map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |p| resolve(base_dir, &p));
        let pki = state_dir.join("pki");
        let tls = TlsFiles {
            ca_file: self.tls.ca_file.map_or_else(|| pki.join("ca.pem"), |p| resolve(base_dir, &p)),
            cert_file: self.tls.cert_file.map_or_else(|| pki.join("aggregator.pem"), |p| resolve(base_dir, &p)),
            key_file: self.tls.key_file.map_or_else(|| pki.join("aggregator-key.pem"), |p| resolve(base_dir, &p)),
        };
        let heartbeat_interval = self.server.heartbeat_interval.unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        if heartbeat_interval < Duration::from_millis(100) || heartbeat_interval > Duration::from_secs(60) {
            problems.push("server.heartbeat_interval", "must be between 100ms and 60s");
        }
        let max_series_per_agent = self.server.max_series_per_agent.unwrap_or(DEFAULT_MAX_SERIES_PER_AGENT);
        if max_series_per_agent == 0 {
            problems.push("server.max_series_per_agent", "must be at least 1");
        }
        let lookback_delta = self.query.lookback_delta.unwrap_or(DEFAULT_LOOKBACK_DELTA);
        if lookback_delta.is_zero() {
            problems.push("query.lookback_delta", "must be above zero");
        }
        let defaults = QueryLimitsConfig::default();
        let mut at_least_one = |key: &str, value: Option<u64>, default: u64| {
            let value = value.unwrap_or(default);
            if value == 0 {
                problems.push(key, "must be at least 1");
            }
            value
        };
        let query_limits = QueryLimitsConfig {
            max_samples: at_least_one("query.max_samples", self.query.max_samples, defaults.max_samples),
            max_samples_read: at_least_one(
                "query.max_samples_read",
                self.query.max_samples_read,
                defaults.max_samples_read,
            ),
            max_series: at_least_one("query.max_series", self.query.max_series, defaults.max_series),
            max_concurrency: at_least_one(
                "query.max_concurrency",
                self.query.max_concurrency,
                defaults.max_concurrency,
            ),
            timeout: self.query.timeout.unwrap_or(defaults.timeout),
        };
        if query_limits.timeout.is_zero() {
            problems.push("query.timeout", "must be above zero");
        }
        let alert_input_interval = self.rules.alert_input_interval.unwrap_or(Duration::ZERO);
        // Inputs sampled between cycles would otherwise wait for the spacing.
        let default_spacing = match alert_input_interval.is_zero() {
            true => DEFAULT_MIN_EVAL_SPACING,
            false => DEFAULT_MIN_EVAL_SPACING.min(alert_input_interval),
        };
        let mut rules = RulesConfig {
            files: self.rules.files.iter().map(|f| resolve(base_dir, Path::new(f)).display().to_string()).collect(),
            evaluation_interval: self.rules.evaluation_interval.unwrap_or(DEFAULT_EVALUATION_INTERVAL),
            external_labels: self.rules.external_labels.into_iter().collect(),
            evaluate_on_ingest: self.rules.evaluate_on_ingest.unwrap_or(true),
            min_eval_spacing: self.rules.min_eval_spacing.unwrap_or(default_spacing),
            min_eval_spacing_by_group: Vec::new(),
            alert_input_interval,
        };
        if !rules.alert_input_interval.is_zero() {
            if rules.alert_input_interval < MIN_ALERT_INPUT_INTERVAL {
                problems.push("rules.alert_input_interval", "must be 0s (off) or at least 100ms");
            } else if !rules.evaluate_on_ingest {
                problems.push(
                    "rules.alert_input_interval",
                    "needs evaluate_on_ingest = true: samples taken between evaluations would wait for the next one",
                );
            }
        }
        for (group, text) in &self.rules.min_eval_spacing_by_group {
            match humantime::parse_duration(text) {
                Ok(spacing) => rules.min_eval_spacing_by_group.push((group.clone(), spacing)),
                Err(err) => problems.push(
                    &format!("rules.min_eval_spacing_by_group.{group}"),
                    format!("{text:?} is not a duration ({err}); write e.g. \"200ms\""),
                ),
            }
        }
        if rules.evaluation_interval.is_zero() {
            problems.push("rules.evaluation_interval", "must be above zero");
        }
        for (name, _) in &rules.external_labels {
            let mut chars = name.chars();
            let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push("rules.external_labels", format!("{name:?} is not a valid label name"));
            }
        }
        let resend_delay = self.alerting.resend_delay.unwrap_or(DEFAULT_RESEND_DELAY);
        if resend_delay.is_zero() {
            problems.push("alerting.resend_delay", "must be above zero");
        }
        let mut alertmanagers = Vec::new();
        for (i, raw) in self.alerting.alertmanagers.into_iter().enumerate() {
            // https needs a TLS client with the Alertmanager's CA: not built yet, so refuse it
            // here rather than fail on every send.
            if !raw.url.starts_with("http://") {
                problems.push(
                    &format!("alerting.alertmanagers[{i}].url"),
                    format!(
                        "{:?} is not an http:// URL (expected e.g. \"http://127.0.0.1:9093\"; https is not supported yet)",
                        raw.url
                    ),
                );
            }
            alertmanagers.push(AlertmanagerConfig {
                url: raw.url,
                timeout: raw.timeout.unwrap_or(DEFAULT_ALERTMANAGER_TIMEOUT),
            });
        }
        let router_config = self.alerting.router_config.map(|p| resolve(base_dir, &p));
        let alerting =
            AlertingConfig { resend_delay, external_url: self.alerting.external_url, alertmanagers, router_config };
        let storage = self.storage.validate(&mut problems);
        let remote =
            super::remote_write::validate(self.remote_write, self.remote_write_receiver, base_dir, &mut problems);
        let identity = self.identity.validate(base_dir, &tls.ca_file, &mut problems);
        let http_listener = self.http.listener(base_dir, &mut problems);
        let http = self.http.validate(http_listen, base_dir, &mut problems);
        let keep_config_versions = self.remote_config.keep_versions.unwrap_or(DEFAULT_KEEP_VERSIONS);
        if keep_config_versions == 0 {
            problems.push("remote_config.keep_versions", "must be at least 1");
        }
        let config = AggregatorConfig {
            identity,
            http_listener,
            http,
            keep_config_versions,
            storage,
            quic_listen,
            http_listen,
            state_dir,
            log_level,
            heartbeat_interval,
            max_series_per_agent,
            tls,
            lookback_delta,
            query_limits,
            rules,
            alerting,
            remote,
        };
        problems.finish(source_name, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        let config = AggregatorConfig::from_toml("aggregator.toml", "", None).unwrap();
        assert_eq!(config.quic_listen, DEFAULT_QUIC_LISTEN.parse().unwrap());
        assert_eq!(config.http_listen, DEFAULT_HTTP_LISTEN.parse().unwrap());
        assert_eq!(config.tls.ca_file, PathBuf::from("/var/lib/herd-aggregator/pki/ca.pem"));
        assert_eq!(config.lookback_delta, Duration::from_secs(300));
        assert_eq!(config.query_limits, QueryLimitsConfig::default());
        assert_eq!(config.rules.evaluation_interval, Duration::from_secs(60));
        assert_eq!(config.alerting.resend_delay, Duration::from_secs(60));
        assert!(config.rules.files.is_empty() && config.alerting.alertmanagers.is_empty());
    }

    #[test]
    fn query_limits_are_configurable_and_checked() {
        let config = AggregatorConfig::from_toml(
            "aggregator.toml",
            "[query]\nmax_samples = 1000\nmax_series = 10\ntimeout = \"5s\"\nmax_concurrency = 2\n",
            None,
        )
        .unwrap();
        let limits = config.query_limits;
        assert_eq!((limits.max_samples, limits.max_series, limits.max_concurrency), (1000, 10, 2));
        assert_eq!((limits.timeout, limits.max_samples_read), (Duration::from_secs(5), 1_000_000_000));
        let err = AggregatorConfig::from_toml("aggregator.toml", "[query]\nmax_series = 0\ntimeout = \"0s\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("query.max_series") && err.contains("query.timeout"), "{err}");
    }

    #[test]
    fn rules_and_alerting() {
        let config = AggregatorConfig::from_toml(
            "aggregator.toml",
            "[rules]\nfiles = [\"rules/*.yml\", \"/abs.yml\"]\nevaluation_interval = \"15s\"\n\n[alerting]\nresend_delay = \"30s\"\n[[alerting.alertmanagers]]\nurl = \"http://127.0.0.1:9093\"\n",
            Some(Path::new("/etc/herd")),
        )
        .unwrap();
        assert_eq!(config.rules.files, ["/etc/herd/rules/*.yml", "/abs.yml"]);
        assert_eq!(config.rules.evaluation_interval, Duration::from_secs(15));
        assert!(config.rules.evaluate_on_ingest);
        assert_eq!(config.rules.min_eval_spacing, DEFAULT_MIN_EVAL_SPACING);
        assert_eq!(config.alerting.resend_delay, Duration::from_secs(30));
        assert_eq!(
            config.alerting.alertmanagers,
            [AlertmanagerConfig { url: "http://127.0.0.1:9093".into(), timeout: Duration::from_secs(10) }]
        );
        let err = AggregatorConfig::from_toml("a.toml", "[[alerting.alertmanagers]]\nurl = \"am:9093\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.toml: alerting.alertmanagers[0].url"), "{err}");
    }

    #[test]
    fn ingest_triggered_evaluation_settings() {
        let config = AggregatorConfig::from_toml(
            "aggregator.toml",
            "[rules]\nevaluate_on_ingest = false\nmin_eval_spacing = \"200ms\"\nmin_eval_spacing_by_group = { detect = \"50ms\" }\n",
            None,
        )
        .unwrap();
        assert!(!config.rules.evaluate_on_ingest);
        assert_eq!(config.rules.min_eval_spacing, Duration::from_millis(200));
        assert_eq!(config.rules.min_eval_spacing_by_group, [("detect".to_owned(), Duration::from_millis(50))]);
        let err = AggregatorConfig::from_toml(
            "aggregator.toml",
            "[rules]\nmin_eval_spacing_by_group = { detect = \"soon\" }\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rules.min_eval_spacing_by_group.detect"), "{err}");
    }

    #[test]
    fn alert_inputs_are_off_by_default_and_need_evaluation_on_ingest() {
        let default = AggregatorConfig::from_toml("aggregator.toml", "", None).unwrap();
        assert_eq!(default.rules.alert_input_interval, Duration::ZERO);
        let config =
            AggregatorConfig::from_toml("aggregator.toml", "[rules]\nalert_input_interval = \"250ms\"\n", None)
                .unwrap();
        assert_eq!(config.rules.alert_input_interval, Duration::from_millis(250));
        assert_eq!(config.rules.min_eval_spacing, Duration::from_millis(250), "the spacing follows unless set");
        for (toml, says) in [
            ("[rules]\nalert_input_interval = \"10ms\"\n", "at least 100ms"),
            ("[rules]\nalert_input_interval = \"250ms\"\nevaluate_on_ingest = false\n", "needs evaluate_on_ingest"),
        ] {
            let err = AggregatorConfig::from_toml("aggregator.toml", toml, None).unwrap_err().to_string();
            assert!(err.contains("rules.alert_input_interval") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn bad_values_name_their_keys() {
        let err = AggregatorConfig::from_toml(
            "aggregator.toml",
            "[server]\nhttp_listen = \"nowhere\"\nheartbeat_interval = \"1ms\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("aggregator.toml: server.http_listen: \"nowhere\" is not an address"), "{err}");
        assert!(err.contains("server.heartbeat_interval"), "{err}");
    }
}
