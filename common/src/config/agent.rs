//! `/etc/herd/agent.toml`: what the agent collects and where it sends it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::client_tls::{ClientTls, RawClientTls, readable_key_problem};
use super::{ConfigError, Endpoint, Problems, check_log_level, parse_toml, read_file, resolve};
use crate::tls::TlsFiles;

pub const DEFAULT_PATH: &str = "/etc/herd/agent.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/herd-agent";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_COLLECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_BACKFILL_BATCHES_PER_SECOND: u32 = 50;
const DEFAULT_FAILBACK_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_BUFFER_MAX_BYTES: u64 = 256 << 20;
const DEFAULT_BUFFER_MEMORY_BATCHES: usize = 360;

/// node_exporter's default `--collector.filesystem.mount-points-exclude` (upstream, not Debian's patched one).
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter's default `--collector.filesystem.fs-types-exclude`.
pub const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|\
hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$";
/// node_exporter's default `--collector.diskstats.device-exclude`: partitions, RAM and loop devices.
pub const DEFAULT_DISK_DEVICES_EXCLUDE: &str = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";
/// node_exporter excludes no network device by default (Debian's package patches in `^lo$`).
pub const DEFAULT_NET_DEVICES_EXCLUDE: &str = "";
/// Per PostgreSQL or Redis server; kept below `collect.timeout` so that a
/// slow server is reported as `pg_up 0` / `redis_up 0` rather than dropped.
const DEFAULT_SERVICE_TIMEOUT: Duration = Duration::from_secs(3);
/// Top statements by total time exported from pg_stat_statements; bounds the series count.
const DEFAULT_STATEMENTS_LIMIT: usize = 20;
const MAX_STATEMENTS_LIMIT: usize = 1000;
/// postgres_exporter's `--collector.stat_statements.query_length`.
const DEFAULT_STATEMENT_TEXT_MAX_CHARS: usize = 120;
/// The seed's SlowQueries rule fires on a mean execution time above 500ms.
const DEFAULT_SLOW_STATEMENT_THRESHOLD: Duration = Duration::from_millis(500);
/// The containers collector (cAdvisor's metrics) is off unless asked for: a Docker socket on a host is not consent.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";
/// Container labels copied onto series, at most: each becomes one more label on every container series.
pub const MAX_CONTAINER_LABELS: usize = 16;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    #[serde(default)]
    pub agent: RawAgentSection,
    pub uplink: Option<RawUplink>,
    #[serde(default)]
    pub collect: RawCollect,
    #[serde(default)]
    pub buffer: RawBuffer,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    pub max_bytes: Option<u64>,
    pub memory_batches: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentSection {
    pub id: Option<String>,
    pub instance: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub state_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    /// Optional local Prometheus endpoint, e.g. "127.0.0.1:7402"; off when absent.
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    pub backfill_batches_per_second: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub failback_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollect {
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub host: RawHost,
    /// `[[collect.postgres]]`: one entry per PostgreSQL server.
    #[serde(default)]
    pub postgres: Vec<RawPostgres>,
    /// `[[collect.redis]]`: one entry per Redis server.
    #[serde(default)]
    pub redis: Vec<RawRedis>,
    /// `[[collect.probe]]`: blackbox_exporter-style HTTP and TCP probes.
    #[serde(default)]
    pub probe: Vec<RawProbe>,
    /// `[[collect.scrape]]`: Prometheus /metrics endpoints on this host.
    #[serde(default)]
    pub scrape: Vec<RawScrape>,
    #[serde(default)]
    pub containers: RawContainers,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainers {
    pub enabled: Option<bool>,
    pub docker_socket: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub sysfs_root: Option<PathBuf>,
    pub procfs_root: Option<PathBuf>,
    #[serde(default)]
    pub label_allowlist: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub enabled: Option<bool>,
    pub procfs_root: Option<PathBuf>,
    pub mount_points_exclude: Option<String>,
    pub fs_types_exclude: Option<String>,
    pub disk_devices_exclude: Option<String>,
    pub net_devices_exclude: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// Value of the `server` label; defaults to the DSN's host:port.
    pub name: Option<String>,
    pub dsn: Option<super::Secret>,
    pub dsn_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub statements_limit: Option<usize>,
    pub statement_text_max_chars: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub slow_statement_threshold: Option<Duration>,
    /// "disable", "prefer" (default), "require" or "verify-full", as libpq's.
    pub sslmode: Option<String>,
    pub tls: Option<RawClientTls>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScrape {
    /// The `job` label on every series scraped.
    pub job: Option<String>,
    /// "http://host:port/metrics".
    pub url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Static labels added to every series of this job.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Bodies longer than this are cut at the last whole line before it.
    pub max_body_bytes: Option<u64>,
    /// How often this job is scraped; default `collect.interval`.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// For https URLs.
    pub tls: Option<RawClientTls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    /// "http://host[:port]/path", "https://host[:port]/path" or "tcp://host:port".
    pub target: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// For https targets.
    pub tls: Option<RawClientTls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Value of the `server` label; defaults to `address`.
    pub name: Option<String>,
    /// `host:port`.
    pub address: Option<String>,
    /// ACL user (Redis 6+); without it AUTH sends the password alone.
    pub username: Option<String>,
    pub password: Option<super::Secret>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Connect with TLS (the server's `tls-port`).
    pub tls: Option<RawClientTls>,
}

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub id: String,
    /// Value of the `instance` label on every series.
    pub instance: String,
    pub labels: BTreeMap<String, String>,
    pub state_dir: PathBuf,
    pub log_level: String,
    /// Where to serve the latest samples in Prometheus text format, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub uplink: UplinkConfig,
    pub collect: CollectConfig,
    pub buffer: BufferConfig,
}

/// The durable buffer under `state_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    /// Disk budget; past it the oldest batches are dropped and counted.
    pub max_bytes: u64,
    /// Batches kept in memory while the disk refuses writes.
    pub memory_batches: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    /// In order of preference.
    pub endpoints: Vec<Endpoint>,
    /// TLS name to verify; `None` means each endpoint's host.
    pub server_name: Option<String>,
    pub tls: TlsFiles,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Rate at which buffered batches are resent after a reconnect, behind live data.
    pub backfill_batches_per_second: u32,
    /// While connected to a fallback endpoint, how often a preferred one is tried again.
    pub failback_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CollectConfig {
    pub interval: Duration,
    /// Per collector, per cycle.
    pub timeout: Duration,
    pub host: Option<HostConfig>,
    pub postgres: Vec<PostgresConfig>,
    pub redis: Vec<RedisConfig>,
    pub probe: Vec<ProbeConfig>,
    pub scrape: Vec<ScrapeConfig>,
    pub containers: Option<ContainersConfig>,
}

/// `[collect.containers]`: cAdvisor's per-container metrics from Docker and cgroups.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainersConfig {
    pub docker_socket: PathBuf,
    /// Where the cgroup hierarchies are mounted (v2: the unified one; v1: the directory holding `cpuacct`, `memory`, `blkio`).
    pub cgroup_root: PathBuf,
    /// For block device names (`dev/block/<major>:<minor>/uevent`).
    pub sysfs_root: PathBuf,
    /// For each container's `<pid>/cgroup` and `<pid>/net/dev`.
    pub procfs_root: PathBuf,
    /// Container label keys copied as `container_label_<key with non-alphanumerics as _>`.
    pub label_allowlist: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    pub procfs_root: PathBuf,
    /// Regular expressions (checked to compile; `""` excludes nothing), as node_exporter's
    /// `--collector.{filesystem.mount-points,filesystem.fs-types,diskstats.device,netdev.device}-exclude`.
    pub mount_points_exclude: String,
    pub fs_types_exclude: String,
    pub disk_devices_exclude: String,
    pub net_devices_exclude: String,
}

/// Where a password comes from. Files and variables are read at each
/// connection attempt, so a rotated password is picked up without a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum PasswordSource {
    None,
    /// Written in the config file itself (refused if the file is readable by others).
    Inline(super::Secret),
    File(PathBuf),
    Env(String),
}

/// Where a PostgreSQL connection string comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DsnSource {
    Inline(super::Secret),
    /// Read at each connection attempt.
    File(PathBuf),
}

/// `[[collect.postgres]]`: one PostgreSQL server, as postgres_exporter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// `server` label; `None` means the DSN's host:port.
    pub name: Option<String>,
    pub dsn: DsnSource,
    /// Overrides a password in the DSN.
    pub password: PasswordSource,
    /// Connecting plus all queries of one cycle.
    pub timeout: Duration,
    /// Top statements by total time; 0 turns pg_stat_statements off.
    pub statements_limit: usize,
    pub statement_text_max_chars: usize,
    pub slow_statement_threshold: Duration,
    /// `None`: the DSN's `sslmode` (disable, prefer or require), else prefer.
    pub sslmode: Option<SslMode>,
    /// CA, client certificate and name for `require`, `prefer` and `verify-full`.
    pub tls: ClientTls,
    /// How often this server is read.
    pub interval: Duration,
}

/// libpq's `sslmode`, the values Herd supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without verifying its certificate; else plain.
    Prefer,
    /// TLS, without verifying the certificate (unless a `tls.ca_file` is set: then the chain is verified).
    Require,
    /// TLS, the chain verified against the CA and the name against the host (or `tls.server_name`).
    VerifyFull,
}

/// `[[collect.scrape]]`: one Prometheus text-format endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    pub job: String,
    pub url: String,
    pub timeout: Duration,
    /// Static labels, sorted by name.
    pub labels: Vec<(String, String)>,
    pub max_body_bytes: u64,
    pub interval: Duration,
    /// Set for https URLs.
    pub tls: Option<ClientTls>,
}

/// Default for `collect.scrape[].max_body_bytes`.
pub const DEFAULT_SCRAPE_MAX_BODY_BYTES: u64 = 16 << 20;

/// `[[collect.probe]]`: one target, probed as blackbox_exporter's `http_2xx`
/// or `tcp_connect` module would.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// As written: the `target` label.
    pub target: String,
    pub kind: ProbeKind,
    pub timeout: Duration,
    pub interval: Duration,
    /// Set for https targets.
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// Connects, then closes.
    Tcp { address: Endpoint },
    /// `GET path` over HTTP/1.1 (over TLS when the probe has `tls`); success is a 2xx status.
    Http { address: Endpoint, path: String },
}

/// `[[collect.redis]]`: one Redis server, as redis_exporter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `server` label.
    pub name: String,
    pub address: Endpoint,
    pub username: Option<String>,
    pub password: PasswordSource,
    pub timeout: Duration,
    pub interval: Duration,
    pub tls: Option<ClientTls>,
}

impl AgentConfig {
    /// Loads and validates a file; relative paths in it are taken from its directory.
    pub fn load(path: &Path, hostname: &str) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        let config = Self::from_toml(&path.display().to_string(), &text, path.parent(), hostname)?;
        refuse_readable_secrets(path, &config)?;
        refuse_readable_keys(path, &config)?;
        Ok(config)
    }

    /// Validates TOML text; `source_name` names it in errors.
    pub fn from_toml(
        source_name: &str,
        text: &str,
        base_dir: Option<&Path>,
        hostname: &str,
    ) -> Result<Self, ConfigError> {
        let raw: RawAgentConfig = parse_toml(source_name, text)?;
        raw.validate(source_name, base_dir, hostname)
    }
}

impl RawAgentConfig {
    pub fn validate(
        self,
        source_name: &str,
        base_dir: Option<&Path>,
        hostname: &str,
    ) -> Result<AgentConfig, ConfigError> {
        let mut problems = Problems::default();
        let agent = self.agent;
        let id = agent.id.unwrap_or_else(|| hostname.to_owned());
        if id.is_empty() {
            problems.push("agent.id", "is empty and the host name is unknown");
        }
        let instance = agent.instance.unwrap_or_else(|| id.clone());
        for name in agent.labels.keys() {
            if !is_label_name(name) {
                problems.push(&format!("agent.labels.{name}"), "is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)");
            } else if matches!(name.as_str(), "job" | "instance" | "__name__") {
                problems
                    .push(&format!("agent.labels.{name}"), "is set by the agent itself and cannot be overridden here");
            }
        }
        let metrics_listen = agent.metrics_listen.as_deref().and_then(|text| match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(
                    "agent.metrics_listen",
                    format!("{text:?} is not an address (expected e.g. \"127.0.0.1:7402\")"),
                );
                None
            }
        });
        let log_level = agent.log_level.unwrap_or_else(|| "info".to_owned());
        if let Err(err) = check_log_level(&log_level) {
            problems.push("agent.log_level", err);
        }

        let uplink = self.uplink.unwrap_or_default();
        let mut endpoints = Vec::new();
        if uplink.endpoints.is_empty() {
            problems.push("uplink.endpoints", "is missing (expected e.g. [\"aggregator.example.com:7400\"])");
        }
        for (i, text) in uplink.endpoints.iter().enumerate() {
            match Endpoint::parse(text) {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(err) => problems.push(&format!("uplink.endpoints[{i}]"), err),
            }
        }
        let mut file = |key: &str, value: Option<PathBuf>| -> PathBuf {
            match value {
                Some(path) => resolve(base_dir, &path),
                None => {
                    problems.push(
                        &format!("uplink.{key}"),
                        "is missing (the agent authenticates with a certificate from the fleet CA)",
                    );
                    PathBuf::new()
                }
            }
        };
        let tls = TlsFiles {
            ca_file: file("ca_file", uplink.ca_file),
            cert_file: file("cert_file", uplink.cert_file),
            key_file: file("key_file", uplink.key_file),
        };
        let backoff_initial = uplink.backoff_initial.unwrap_or(DEFAULT_BACKOFF_INITIAL);
        let backoff_max = uplink.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX);
        if backoff_initial.is_zero() || backoff_initial > backoff_max {
            problems.push("uplink.backoff_initial", "must be above zero and at most uplink.backoff_max");
        }
        let backfill_batches_per_second =
            uplink.backfill_batches_per_second.unwrap_or(DEFAULT_BACKFILL_BATCHES_PER_SECOND);
        if backfill_batches_per_second == 0 {
            problems.push("uplink.backfill_batches_per_second", "must be at least 1");
        }
        let failback_interval = uplink.failback_interval.unwrap_or(DEFAULT_FAILBACK_INTERVAL);
        if failback_interval < Duration::from_millis(100) {
            problems.push("uplink.failback_interval", "must be at least 100ms");
        }
        let buffer = BufferConfig {
            max_bytes: self.buffer.max_bytes.unwrap_or(DEFAULT_BUFFER_MAX_BYTES),
            memory_batches: self.buffer.memory_batches.unwrap_or(DEFAULT_BUFFER_MEMORY_BATCHES),
        };
        if buffer.max_bytes < 64 << 10 {
            problems.push("buffer.max_bytes", "must be at least 65536");
        }
        if buffer.memory_batches == 0 {
            problems.push("buffer.memory_batches", "must be at least 1");
        }

        let interval = self.collect.interval.unwrap_or(DEFAULT_INTERVAL);
        if interval < MIN_INTERVAL {
            problems.push("collect.interval", format!("must be at least {}", humantime::format_duration(MIN_INTERVAL)));
        }
        let timeout = self.collect.timeout.unwrap_or_else(|| interval.min(DEFAULT_COLLECT_TIMEOUT));
        if timeout.is_zero() || timeout > interval {
            problems.push("collect.timeout", "must be above zero and at most collect.interval");
        }
        let host = self.collect.host;
        let mut pattern = |key: &str, value: Option<String>, default: &str| -> String {
            let value = value.unwrap_or_else(|| default.to_owned());
            if let Err(err) = regex::Regex::new(&value) {
                problems.push(&format!("collect.host.{key}"), format!("is not a valid regular expression: {err}"));
            }
            value
        };
        let mount_points_exclude =
            pattern("mount_points_exclude", host.mount_points_exclude, DEFAULT_MOUNT_POINTS_EXCLUDE);
        let fs_types_exclude = pattern("fs_types_exclude", host.fs_types_exclude, DEFAULT_FS_TYPES_EXCLUDE);
        let disk_devices_exclude =
            pattern("disk_devices_exclude", host.disk_devices_exclude, DEFAULT_DISK_DEVICES_EXCLUDE);
        let net_devices_exclude = pattern("net_devices_exclude", host.net_devices_exclude, DEFAULT_NET_DEVICES_EXCLUDE);
        let host = host.enabled.unwrap_or(true).then(|| HostConfig {
            procfs_root: host.procfs_root.map_or_else(|| PathBuf::from("/proc"), |p| resolve(base_dir, &p)),
            mount_points_exclude,
            fs_types_exclude,
            disk_devices_exclude,
            net_devices_exclude,
        });

        let containers = self.collect.containers;
        if containers.label_allowlist.len() > MAX_CONTAINER_LABELS {
            problems.push("collect.containers.label_allowlist", format!("has more than {MAX_CONTAINER_LABELS} keys"));
        }
        if containers.label_allowlist.iter().any(|key| key.is_empty()) {
            problems.push("collect.containers.label_allowlist", "has an empty key");
        }
        let containers = containers.enabled.unwrap_or(false).then(|| {
            let path = |value: Option<PathBuf>, default: &str| {
                value.map_or_else(|| PathBuf::from(default), |p| resolve(base_dir, &p))
            };
            ContainersConfig {
                docker_socket: path(containers.docker_socket, DEFAULT_DOCKER_SOCKET),
                cgroup_root: path(containers.cgroup_root, DEFAULT_CGROUP_ROOT),
                sysfs_root: path(containers.sysfs_root, DEFAULT_SYSFS_ROOT),
                procfs_root: path(containers.procfs_root, "/proc"),
                label_allowlist: containers.label_allowlist,
            }
        });

        let bounds = Bounds { interval, timeout };
        let postgres = validate_postgres(self.collect.postgres, bounds, base_dir, &mut problems);
        let redis = validate_redis(self.collect.redis, bounds, base_dir, &mut problems);
        let probe = validate_probes(self.collect.probe, bounds, base_dir, &mut problems);
        let scrape = validate_scrapes(self.collect.scrape, bounds, base_dir, &mut problems);

        let config = AgentConfig {
            id,
            instance,
            labels: agent.labels,
            state_dir: agent.state_dir.map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |p| resolve(base_dir, &p)),
            log_level,
            metrics_listen,
            uplink: UplinkConfig {
                endpoints,
                server_name: uplink.server_name,
                tls,
                connect_timeout: uplink.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                idle_timeout: uplink.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
                backoff_initial,
                backoff_max,
                backfill_batches_per_second,
                failback_interval,
            },
            collect: CollectConfig { interval, timeout, host, containers, postgres, redis, probe, scrape },
            buffer,
        };
        problems.finish(source_name, config)
    }
}

/// The agent's `collect.interval` and `collect.timeout`, which bound every entry's own.
#[derive(Clone, Copy)]
struct Bounds {
    interval: Duration,
    timeout: Duration,
}

/// An entry's `interval` (default `collect.interval`) and `timeout`, which
/// must stay below both `collect.timeout` and that interval.
fn entry_timing(
    key: &str,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    bounds: Bounds,
    problems: &mut Problems,
) -> (Duration, Duration) {
    let interval = interval.unwrap_or(bounds.interval);
    if interval < MIN_INTERVAL {
        problems
            .push(&format!("{key}.interval"), format!("must be at least {}", humantime::format_duration(MIN_INTERVAL)));
    }
    let limit = bounds.timeout.min(interval);
    let timeout = timeout.unwrap_or_else(|| DEFAULT_SERVICE_TIMEOUT.min(limit * 4 / 5));
    if timeout.is_zero() || timeout >= limit {
        problems.push(
            &format!("{key}.timeout"),
            "must be above zero and below collect.timeout and the entry's interval (so a slow server is reported as down)",
        );
    }
    (interval, timeout)
}

/// At most one of `password`, `password_file`, `password_env`.
fn password_source(
    key: &str,
    inline: Option<super::Secret>,
    file: Option<PathBuf>,
    env: Option<String>,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> PasswordSource {
    match (inline, file, env) {
        (None, None, None) => PasswordSource::None,
        (Some(secret), None, None) => PasswordSource::Inline(secret),
        (None, Some(path), None) => PasswordSource::File(resolve(base_dir, &path)),
        (None, None, Some(var)) if !var.is_empty() => PasswordSource::Env(var),
        (None, None, Some(_)) => {
            problems.push(&format!("{key}.password_env"), "is empty (expected an environment variable name)");
            PasswordSource::None
        }
        _ => {
            problems.push(key, "sets more than one of password, password_file, password_env (keep one)");
            PasswordSource::None
        }
    }
}

fn check_server_name(key: &str, name: &Option<String>, problems: &mut Problems) {
    if name.as_deref().is_some_and(str::is_empty) {
        problems.push(&format!("{key}.name"), "is empty (it becomes the `server` label; leave it out for host:port)");
    }
}

fn validate_postgres(
    raw: Vec<RawPostgres>,
    bounds: Bounds,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> Vec<PostgresConfig> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let key = format!("collect.postgres[{i}]");
        check_server_name(&key, &entry.name, problems);
        let dsn = match (entry.dsn, entry.dsn_file) {
            (Some(dsn), None) => {
                if !looks_like_postgres_dsn(dsn.expose()) {
                    problems.push(
                        &format!("{key}.dsn"),
                        "is not a connection string (expected \"postgres://user@host:port/db\" or \"host=... user=...\")",
                    );
                }
                DsnSource::Inline(dsn)
            }
            (None, Some(path)) => DsnSource::File(resolve(base_dir, &path)),
            (None, None) => {
                problems
                    .push(&format!("{key}.dsn"), "is missing (expected \"postgres://user@host:port/db\" or dsn_file)");
                continue;
            }
            (Some(_), Some(_)) => {
                problems.push(&key, "sets both dsn and dsn_file (keep one)");
                continue;
            }
        };
        let password = password_source(&key, None, entry.password_file, entry.password_env, base_dir, problems);
        let (interval, timeout) = entry_timing(&key, entry.interval, entry.timeout, bounds, problems);
        let sslmode = match entry.sslmode.as_deref() {
            None => None,
            Some("prefer") => Some(SslMode::Prefer),
            Some("disable") => Some(SslMode::Disable),
            Some("require") => Some(SslMode::Require),
            Some("verify-full") => Some(SslMode::VerifyFull),
            Some(other) => {
                problems.push(
                    &format!("{key}.sslmode"),
                    format!("{other:?} is not one of \"disable\", \"prefer\", \"require\", \"verify-full\""),
                );
                None
            }
        };
        let tls = entry.tls.unwrap_or_default().validate(&format!("{key}.tls"), base_dir, problems);
        if tls.insecure_skip_verify && sslmode == Some(SslMode::VerifyFull) {
            problems.push(&format!("{key}.tls.insecure_skip_verify"), "contradicts sslmode = \"verify-full\"");
        }
        let statements_limit = entry.statements_limit.unwrap_or(DEFAULT_STATEMENTS_LIMIT);
        if statements_limit > MAX_STATEMENTS_LIMIT {
            problems.push(&format!("{key}.statements_limit"), format!("must be at most {MAX_STATEMENTS_LIMIT}"));
        }
        let statement_text_max_chars = entry.statement_text_max_chars.unwrap_or(DEFAULT_STATEMENT_TEXT_MAX_CHARS);
        if statement_text_max_chars == 0 {
            problems.push(&format!("{key}.statement_text_max_chars"), "must be at least 1");
        }
        out.push(PostgresConfig {
            name: entry.name,
            dsn,
            password,
            timeout,
            statements_limit,
            statement_text_max_chars,
            slow_statement_threshold: entry.slow_statement_threshold.unwrap_or(DEFAULT_SLOW_STATEMENT_THRESHOLD),
            sslmode,
            tls,
            interval,
        });
    }
    out
}

fn validate_scrapes(
    raw: Vec<RawScrape>,
    bounds: Bounds,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> Vec<ScrapeConfig> {
    let mut out = Vec::with_capacity(raw.len());
    let mut jobs = std::collections::BTreeSet::new();
    for (i, entry) in raw.into_iter().enumerate() {
        let key = format!("collect.scrape[{i}]");
        let job = entry.job.unwrap_or_default();
        if !is_label_value_safe_job(&job) {
            problems.push(&format!("{key}.job"), "is missing or empty (it becomes the `job` label)");
        } else if !jobs.insert(job.clone()) {
            problems.push(&format!("{key}.job"), format!("{job:?} is used by another [[collect.scrape]] entry"));
        }
        let url = entry.url.unwrap_or_default();
        let https = url.starts_with("https://") && url.len() > "https://".len();
        if !https && (!url.starts_with("http://") || url.len() <= "http://".len()) {
            problems.push(
                &format!("{key}.url"),
                "is not an http(s) URL (expected \"http://127.0.0.1:9100/metrics\" or https://...)",
            );
        }
        let tls = match (https, entry.tls) {
            (true, tls) => {
                let tls = tls.unwrap_or_default().validate(&format!("{key}.tls"), base_dir, problems);
                if tls.server_name.is_some() {
                    problems.push(
                        &format!("{key}.tls.server_name"),
                        "is not supported for scrape jobs: the URL's host is the name verified",
                    );
                }
                Some(tls)
            }
            (false, Some(_)) => {
                problems.push(&format!("{key}.tls"), "applies to https:// URLs only");
                None
            }
            (false, None) => None,
        };
        let (interval, timeout) = entry_timing(&key, entry.interval, entry.timeout, bounds, problems);
        for name in entry.labels.keys() {
            if !is_label_name(name) || matches!(name.as_str(), "job" | "instance" | "__name__") {
                problems.push(&format!("{key}.labels.{name}"), "is not a label name this job may set");
            }
        }
        let max_body_bytes = entry.max_body_bytes.unwrap_or(DEFAULT_SCRAPE_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            problems.push(&format!("{key}.max_body_bytes"), "must be at least 1024");
        }
        out.push(ScrapeConfig {
            job,
            url,
            timeout,
            labels: entry.labels.into_iter().collect(),
            max_body_bytes,
            interval,
            tls,
        });
    }
    out
}

fn is_label_value_safe_job(job: &str) -> bool {
    !job.trim().is_empty()
}

fn validate_probes(
    raw: Vec<RawProbe>,
    bounds: Bounds,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> Vec<ProbeConfig> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let key = format!("collect.probe[{i}]");
        let Some(target) = entry.target else {
            problems.push(
                &format!("{key}.target"),
                "is missing (expected \"http://host:port/path\", \"https://host/path\" or \"tcp://host:port\")",
            );
            continue;
        };
        let http = target
            .strip_prefix("http://")
            .map(|rest| (rest, 80))
            .or_else(|| target.strip_prefix("https://").map(|rest| (rest, 443)));
        let https = target.starts_with("https://");
        let kind = if let Some((rest, default_port)) = http {
            let (authority, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
            let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| !port.contains(']')) {
                authority.to_owned()
            } else {
                format!("{authority}:{default_port}")
            };
            Endpoint::parse(&with_port).map(|address| ProbeKind::Http { address, path: path.to_owned() })
        } else if let Some(rest) = target.strip_prefix("tcp://") {
            Endpoint::parse(rest).map(|address| ProbeKind::Tcp { address })
        } else {
            Err(format!(
                "{target:?} has no scheme (expected \"http://host:port/path\", \"https://host/path\" or \"tcp://host:port\")"
            ))
        };
        let kind = match kind {
            Ok(kind) => kind,
            Err(err) => {
                problems.push(&format!("{key}.target"), err);
                continue;
            }
        };
        let tls = match (https, entry.tls) {
            (true, tls) => Some(tls.unwrap_or_default().validate(&format!("{key}.tls"), base_dir, problems)),
            (false, Some(_)) => {
                problems.push(&format!("{key}.tls"), "applies to https:// targets only");
                None
            }
            (false, None) => None,
        };
        let (interval, timeout) = entry_timing(&key, entry.interval, entry.timeout, bounds, problems);
        out.push(ProbeConfig { target, kind, timeout, interval, tls });
    }
    out
}

fn validate_redis(
    raw: Vec<RawRedis>,
    bounds: Bounds,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> Vec<RedisConfig> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let key = format!("collect.redis[{i}]");
        check_server_name(&key, &entry.name, problems);
        let address = match entry.address.as_deref().map(Endpoint::parse) {
            Some(Ok(address)) => address,
            Some(Err(err)) => {
                problems.push(&format!("{key}.address"), err);
                continue;
            }
            None => {
                problems.push(&format!("{key}.address"), "is missing (expected \"127.0.0.1:6379\")");
                continue;
            }
        };
        let password =
            password_source(&key, entry.password, entry.password_file, entry.password_env, base_dir, problems);
        let (interval, timeout) = entry_timing(&key, entry.interval, entry.timeout, bounds, problems);
        let tls = entry.tls.map(|tls| tls.validate(&format!("{key}.tls"), base_dir, problems));
        out.push(RedisConfig {
            name: entry.name.unwrap_or_else(|| address.to_string()),
            address,
            username: entry.username,
            password,
            timeout,
            interval,
            tls,
        });
    }
    out
}

/// A URL (`postgres://`, `postgresql://`) or libpq's `key=value` form; the
/// collector parses it fully.
fn looks_like_postgres_dsn(dsn: &str) -> bool {
    dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") || dsn.contains('=')
}

/// Whether a connection string carries a password: `user:password@` or
/// `?password=` in a URL, or a `password=` pair.
pub fn dsn_has_password(dsn: &str) -> bool {
    if let Some(rest) = dsn.strip_prefix("postgres://").or_else(|| dsn.strip_prefix("postgresql://")) {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let in_userinfo = authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'));
        let query = rest.split_once('?').map_or("", |(_, query)| query);
        in_userinfo || query.split('&').any(|pair| pair.starts_with("password="))
    } else {
        dsn.split_whitespace().any(|pair| pair.starts_with("password"))
    }
}

/// Refuses a config file that others can read when it holds a password.
fn refuse_readable_secrets(path: &Path, config: &AgentConfig) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let keys = config.inline_secret_keys();
    if keys.is_empty() {
        return Ok(());
    }
    let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
    if mode & 0o004 == 0 {
        return Ok(());
    }
    Err(ConfigError {
        source_name: path.display().to_string(),
        problems: keys
            .into_iter()
            .map(|key| {
                format!(
                    "{key}: holds a password but the file is readable by others (mode {:o}): \
                     chmod o-r it, or move the password to a *_file key",
                    mode & 0o777
                )
            })
            .collect(),
    })
}

/// Refuses client private keys (`tls.key_file`) that others can read.
fn refuse_readable_keys(path: &Path, config: &AgentConfig) -> Result<(), ConfigError> {
    let problems: Vec<String> =
        config.client_tls().filter_map(|(key, tls)| readable_key_problem(&format!("{key}.tls"), tls)).collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(ConfigError { source_name: path.display().to_string(), problems })
}

impl AgentConfig {
    /// Every `tls` table, with the key of its entry.
    pub fn client_tls(&self) -> impl Iterator<Item = (String, &ClientTls)> {
        let collect = &self.collect;
        let postgres =
            collect.postgres.iter().enumerate().map(|(i, c)| (format!("collect.postgres[{i}]"), Some(&c.tls)));
        let redis = collect.redis.iter().enumerate().map(|(i, c)| (format!("collect.redis[{i}]"), c.tls.as_ref()));
        let probe = collect.probe.iter().enumerate().map(|(i, c)| (format!("collect.probe[{i}]"), c.tls.as_ref()));
        let scrape = collect.scrape.iter().enumerate().map(|(i, c)| (format!("collect.scrape[{i}]"), c.tls.as_ref()));
        postgres.chain(redis).chain(probe).chain(scrape).filter_map(|(key, tls)| Some((key, tls?)))
    }

    /// Files this configuration reads while it runs (password and DSN files,
    /// client TLS files) that cannot be read here, each as a problem naming
    /// its key. The file loader leaves them to the collectors (a file may
    /// appear later); a pushed configuration is refused for them, since the
    /// one it replaces may be working.
    pub fn unreadable_files(&self) -> Vec<String> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        for (i, pg) in self.collect.postgres.iter().enumerate() {
            if let DsnSource::File(path) = &pg.dsn {
                files.push((format!("collect.postgres[{i}].dsn_file"), path));
            }
            if let PasswordSource::File(path) = &pg.password {
                files.push((format!("collect.postgres[{i}].password_file"), path));
            }
        }
        for (i, redis) in self.collect.redis.iter().enumerate() {
            if let PasswordSource::File(path) = &redis.password {
                files.push((format!("collect.redis[{i}].password_file"), path));
            }
        }
        for (key, tls) in self.client_tls() {
            if let Some(ca) = &tls.ca_file {
                files.push((format!("{key}.tls.ca_file"), ca));
            }
            if let Some(client) = &tls.client_cert {
                files.push((format!("{key}.tls.cert_file"), &client.cert_file));
                files.push((format!("{key}.tls.key_file"), &client.key_file));
            }
        }
        files
            .into_iter()
            .filter_map(|(key, path)| {
                std::fs::File::open(path).err().map(|err| format!("{key}: cannot read {}: {err}", path.display()))
            })
            .collect()
    }

    /// Keys that hold a password written in the configuration itself.
    pub fn inline_secret_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (i, pg) in self.collect.postgres.iter().enumerate() {
            if matches!(&pg.dsn, DsnSource::Inline(dsn) if dsn_has_password(dsn.expose())) {
                keys.push(format!("collect.postgres[{i}].dsn"));
            }
        }
        for (i, redis) in self.collect.redis.iter().enumerate() {
            if matches!(redis.password, PasswordSource::Inline(_)) {
                keys.push(format!("collect.redis[{i}].password"));
            }
        }
        keys
    }
}

/// Prometheus label name syntax.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [uplink]
        endpoints = ["agg.example:7400"]
        ca_file = "pki/ca.pem"
        cert_file = "pki/web-1.pem"
        key_file = "pki/web-1-key.pem"
    "#;

    fn check(text: &str) -> Result<AgentConfig, String> {
        AgentConfig::from_toml("agent.toml", text, Some(Path::new("/etc/herd")), "web-1").map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = check(MINIMAL).unwrap();
        assert_eq!(config.id, "web-1");
        assert_eq!(config.instance, "web-1");
        assert_eq!(config.collect.interval, Duration::from_secs(10));
        assert_eq!(config.collect.timeout, Duration::from_secs(5));
        assert_eq!(config.uplink.tls.ca_file, PathBuf::from("/etc/herd/pki/ca.pem"));
        let host = config.collect.host.unwrap();
        assert_eq!(host.procfs_root, PathBuf::from("/proc"));
        assert_eq!(host.fs_types_exclude, DEFAULT_FS_TYPES_EXCLUDE);
        assert_eq!(host.net_devices_exclude, "");
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn one_second_interval_works() {
        let config = check(&format!("[collect]\ninterval = \"1s\"\n{MINIMAL}")).unwrap();
        assert_eq!(config.collect.interval, Duration::from_secs(1));
        assert_eq!(config.collect.timeout, Duration::from_secs(1));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = check("[agent]\nlog_level = \"loud\"\nlabels = { job = \"x\", \"bad-name\" = \"y\" }\n[collect]\ninterval = \"10ms\"\n").unwrap_err();
        for needle in [
            "agent.toml: agent.log_level",
            "agent.labels.job",
            "agent.labels.bad-name",
            "uplink.endpoints: is missing",
            "uplink.ca_file: is missing",
            "collect.interval: must be at least 100ms",
        ] {
            assert!(err.contains(needle), "{needle:?} in:\n{err}");
        }
    }

    #[test]
    fn bad_host_patterns_are_reported_with_their_key() {
        let err = check(&format!("{MINIMAL}\n[collect.host]\nfs_types_exclude = \"^(nfs\"\n")).unwrap_err();
        assert!(err.contains("collect.host.fs_types_exclude: is not a valid regular expression"), "{err}");
    }

    #[test]
    fn containers_are_off_by_default_and_take_paths_and_an_allowlist() {
        assert_eq!(check(MINIMAL).unwrap().collect.containers, None);
        let text = format!(
            "{MINIMAL}\n[collect.containers]\nenabled = true\ncgroup_root = \"fixtures/cgroup\"\nlabel_allowlist = [\"com.example.team\"]\n"
        );
        let containers = check(&text).unwrap().collect.containers.unwrap();
        assert_eq!(containers.docker_socket, PathBuf::from(DEFAULT_DOCKER_SOCKET));
        assert_eq!(containers.cgroup_root, PathBuf::from("/etc/herd/fixtures/cgroup"));
        assert_eq!(containers.sysfs_root, PathBuf::from("/sys"));
        assert_eq!(containers.label_allowlist, vec!["com.example.team".to_string()]);
        let err = check(&format!("{MINIMAL}\n[collect.containers]\nlabel_allowlist = [\"\"]\n")).unwrap_err();
        assert!(err.contains("collect.containers.label_allowlist: has an empty key"), "{err}");
    }

    #[test]
    fn postgres_and_redis_entries_are_checked_with_their_keys() {
        let err = check(&format!(
            "{MINIMAL}\n[[collect.postgres]]\ndsn = \"db.example\"\n[[collect.postgres]]\n\
             dsn = \"postgres://herd@db/x\"\ndsn_file = \"x\"\n[[collect.postgres]]\ndsn = \"host=db\"\n\
             timeout = \"9s\"\nstatements_limit = 5000\n[[collect.redis]]\naddress = \"cache\"\n\
             [[collect.redis]]\naddress = \"cache:6379\"\npassword = \"p\"\npassword_env = \"P\"\n"
        ))
        .unwrap_err();
        for needle in [
            "collect.postgres[0].dsn: is not a connection string",
            "collect.postgres[1]: sets both dsn and dsn_file",
            "collect.postgres[2].timeout: must be above zero and below collect.timeout",
            "collect.postgres[2].statements_limit: must be at most 1000",
            "collect.redis[0].address: \"cache\" has no port",
            "collect.redis[1]: sets more than one of password, password_file, password_env",
        ] {
            assert!(err.contains(needle), "{needle:?} in:\n{err}");
        }
        let config = check(&format!(
            "{MINIMAL}\n[[collect.postgres]]\ndsn = \"postgres://herd:pw@db/x\"\n[[collect.redis]]\n\
             address = \"cache:6379\"\npassword_file = \"redis.pw\"\n"
        ))
        .unwrap();
        let postgres = &config.collect.postgres[0];
        assert_eq!(postgres.timeout, Duration::from_secs(3));
        assert_eq!((postgres.statements_limit, postgres.statement_text_max_chars), (20, 120));
        assert!(!format!("{config:?}").contains("pw@db"), "the DSN is a Secret");
        assert_eq!(config.collect.redis[0].name, "cache:6379");
        assert_eq!(config.collect.redis[0].password, PasswordSource::File(PathBuf::from("/etc/herd/redis.pw")));
        assert_eq!(config.inline_secret_keys(), vec!["collect.postgres[0].dsn".to_owned()]);
        assert!(dsn_has_password("host=db password=x") && !dsn_has_password("postgres://herd@db:5432/x"));
    }

    #[test]
    fn tls_intervals_and_sslmode_are_checked_with_their_keys() {
        let config = check(&format!(
            "{MINIMAL}\n[[collect.scrape]]\njob = \"a\"\nurl = \"https://127.0.0.1:9100/metrics\"\ninterval = \"5s\"\n\
             tls = {{ ca_file = \"ca.pem\", cert_file = \"c.pem\", key_file = \"k.pem\" }}\n\
             [[collect.probe]]\ntarget = \"https://example.org\"\n\
             [[collect.redis]]\naddress = \"cache:6380\"\ntls = {{ server_name = \"cache.internal\" }}\n\
             [[collect.postgres]]\ndsn = \"postgres://herd@db/x\"\nsslmode = \"verify-full\"\n"
        ))
        .unwrap();
        let scrape = &config.collect.scrape[0];
        assert_eq!(scrape.interval, Duration::from_secs(5));
        let tls = scrape.tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/herd/ca.pem")));
        assert_eq!(tls.client_cert.as_ref().unwrap().key_file, PathBuf::from("/etc/herd/k.pem"));
        assert!(!tls.insecure_skip_verify);
        let probe = &config.collect.probe[0];
        assert_eq!(
            probe.kind,
            ProbeKind::Http { address: Endpoint::parse("example.org:443").unwrap(), path: "/".into() }
        );
        assert_eq!(probe.tls.as_ref().unwrap().ca_file(), Path::new(super::super::client_tls::SYSTEM_CA_FILE));
        assert_eq!(probe.interval, Duration::from_secs(10));
        assert_eq!(config.collect.redis[0].tls.as_ref().unwrap().server_name.as_deref(), Some("cache.internal"));
        assert_eq!(config.collect.postgres[0].sslmode, Some(SslMode::VerifyFull));

        let err = check(&format!(
            "{MINIMAL}\n[[collect.scrape]]\njob = \"a\"\nurl = \"http://h:1/m\"\ntls = {{ insecure_skip_verify = true }}\n\
             [[collect.scrape]]\njob = \"b\"\nurl = \"https://h:1/m\"\ninterval = \"2s\"\ntimeout = \"3s\"\n\
             tls = {{ cert_file = \"c.pem\", server_name = \"x\" }}\n\
             [[collect.probe]]\ntarget = \"tcp://h:1\"\ntls = {{}}\ninterval = \"10ms\"\n\
             [[collect.postgres]]\ndsn = \"host=db\"\nsslmode = \"allow\"\n\
             [[collect.postgres]]\ndsn = \"host=db\"\nsslmode = \"verify-full\"\ntls = {{ insecure_skip_verify = true }}\n"
        ))
        .unwrap_err();
        for needle in [
            "collect.scrape[0].tls: applies to https:// URLs only",
            "collect.scrape[1].timeout: must be above zero and below collect.timeout and the entry's interval",
            "collect.scrape[1].tls.key_file: is missing",
            "collect.scrape[1].tls.server_name: is not supported for scrape jobs",
            "collect.probe[0].tls: applies to https:// targets only",
            "collect.probe[0].interval: must be at least 100ms",
            "collect.postgres[0].sslmode: \"allow\" is not one of",
            "collect.postgres[1].tls.insecure_skip_verify: contradicts sslmode",
        ] {
            assert!(err.contains(needle), "{needle:?} in:\n{err}");
        }
    }

    #[test]
    fn a_client_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client-key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "{MINIMAL}\n[[collect.redis]]\naddress = \"cache:6380\"\n\
                 tls = {{ cert_file = \"client.pem\", key_file = \"client-key.pem\" }}\n"
            ),
        )
        .unwrap();
        let err = AgentConfig::load(&path, "web-1").unwrap_err().to_string();
        assert!(err.contains("collect.redis[0].tls.key_file:") && err.contains("is readable by others"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        AgentConfig::load(&path, "web-1").unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_with_their_location() {
        let err = check(&format!("{MINIMAL}\nendpoint = \"typo\"\n")).unwrap_err();
        assert!(err.contains("unknown field `endpoint`"), "{err}");
        assert!(err.contains("line"), "{err}");
    }
}
