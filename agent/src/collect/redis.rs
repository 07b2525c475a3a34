//! The Redis collector: one server per collector, `INFO` turned into
//! redis_exporter's metric and label names (`redis_up`,
//! `redis_memory_used_bytes`, `redis_keyspace_hits_total`,
//! `redis_db_keys{db}`, `redis_instance_info{role,...}`, ...).
//!
//! It speaks just enough RESP for `AUTH` and `INFO` rather than pulling in
//! the `redis` crate: two commands do not justify its URL, IDNA and parser
//! combinator dependencies in an agent that must stay small. Replies are
//! read with a size limit, so a wrong server on the port cannot make the
//! agent allocate without bound.
//!
//! One connection is kept between cycles and dropped on any error or
//! timeout; the next cycle reconnects. Every cycle runs under the instance's
//! own timeout, below the scheduler's, so a down, slow or misconfigured
//! server reads `redis_up 0`.
//!
//! With a `tls` table the connection is TLS (the server's `tls-port`),
//! verified against its CA (or not, with `insecure_skip_verify`), with a
//! client certificate when the server asks for one (`tls-auth-clients`).
//! Must not: log or label the password, or send any command that changes
//! the server's state.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use herd_common::config::agent::{PasswordSource, RedisConfig};
use herd_common::config::client_tls::ClientTls;
use herd_common::config::{Endpoint, Secret};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::{Batch, CollectError, Collector};

/// Longest reply line (status, error, length header) accepted.
const MAX_LINE_BYTES: u64 = 64 << 10;
/// Largest bulk reply accepted; `INFO` is a few KiB.
const MAX_BULK_BYTES: usize = 4 << 20;

/// `INFO` fields redis_exporter exports as gauges, by its names.
const GAUGES: &[(&str, &str)] = &[
    ("uptime_in_seconds", "redis_uptime_in_seconds"),
    ("connected_clients", "redis_connected_clients"),
    ("blocked_clients", "redis_blocked_clients"),
    ("maxclients", "redis_config_maxclients"),
    ("used_memory", "redis_memory_used_bytes"),
    ("used_memory_rss", "redis_memory_used_rss_bytes"),
    ("used_memory_peak", "redis_memory_used_peak_bytes"),
    ("used_memory_lua", "redis_memory_used_lua_bytes"),
    ("used_memory_dataset", "redis_memory_used_dataset_bytes"),
    ("maxmemory", "redis_memory_max_bytes"),
    ("total_system_memory", "redis_total_system_memory_bytes"),
    ("mem_fragmentation_ratio", "redis_mem_fragmentation_ratio"),
    ("loading", "redis_loading_dump_file"),
    ("rdb_changes_since_last_save", "redis_rdb_changes_since_last_save"),
    ("rdb_bgsave_in_progress", "redis_rdb_bgsave_in_progress"),
    ("rdb_last_save_time", "redis_rdb_last_save_timestamp_seconds"),
    ("rdb_last_bgsave_time_sec", "redis_rdb_last_bgsave_duration_sec"),
    ("aof_enabled", "redis_aof_enabled"),
    ("aof_rewrite_in_progress", "redis_aof_rewrite_in_progress"),
    ("connected_slaves", "redis_connected_slaves"),
    ("master_repl_offset", "redis_master_repl_offset"),
    ("repl_backlog_size", "redis_repl_backlog_size_bytes"),
    ("instantaneous_ops_per_sec", "redis_instantaneous_ops_per_sec"),
    ("pubsub_channels", "redis_pubsub_channels"),
    ("pubsub_patterns", "redis_pubsub_patterns"),
    ("process_id", "redis_process_id"),
];

/// `INFO` fields redis_exporter exports as counters, by its names.
const COUNTERS: &[(&str, &str)] = &[
    ("total_connections_received", "redis_connections_received_total"),
    ("total_commands_processed", "redis_commands_processed_total"),
    ("rejected_connections", "redis_rejected_connections_total"),
    ("expired_keys", "redis_expired_keys_total"),
    ("evicted_keys", "redis_evicted_keys_total"),
    ("keyspace_hits", "redis_keyspace_hits_total"),
    ("keyspace_misses", "redis_keyspace_misses_total"),
    ("total_net_input_bytes", "redis_net_input_bytes_total"),
    ("total_net_output_bytes", "redis_net_output_bytes_total"),
    ("used_cpu_sys", "redis_cpu_sys_seconds_total"),
    ("used_cpu_user", "redis_cpu_user_seconds_total"),
];

/// `INFO` fields that are "ok" or not, exported as 1 or 0.
const STATUSES: &[(&str, &str)] = &[
    ("rdb_last_bgsave_status", "redis_rdb_last_bgsave_status"),
    ("aof_last_bgrewrite_status", "redis_aof_last_bgrewrite_status"),
    ("aof_last_write_status", "redis_aof_last_write_status"),
];

/// Labels of `redis_instance_info`, as redis_exporter (1.45, Debian 12's) sets them.
const INFO_LABELS: &[&str] = &[
    "role",
    "redis_version",
    "redis_build_id",
    "redis_mode",
    "os",
    "maxmemory_policy",
    "tcp_port",
    "run_id",
    "process_id",
];

/// Why one exchange with the server failed. Never holds the password.
#[derive(Debug, thiserror::Error)]
enum RespError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("server replied with an error: {0}")]
    Server(String),
    #[error("not a Redis reply: {0}")]
    Protocol(&'static str),
}

/// A reply this collector understands: everything but arrays, which neither
/// `AUTH` nor `INFO` returns.
#[derive(Debug, PartialEq)]
enum Reply {
    Status(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

/// A plain or TLS byte stream.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A RESP2 connection: commands out, replies in.
struct Connection {
    stream: BufReader<Box<dyn Stream>>,
}

impl Connection {
    async fn open(address: &Endpoint) -> Result<Self, RespError> {
        let stream = TcpStream::connect((address.host.as_str(), address.port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream: BufReader::new(Box::new(stream)) })
    }

    /// Connects and runs the TLS handshake; errors are for the log as they are.
    async fn open_tls(address: &Endpoint, tls: &ClientTls) -> Result<Self, String> {
        let config = super::tls::client_config(tls, super::tls::Verify::Full, &[])?;
        let name = super::tls::server_name(tls, &address.host)?;
        let stream = TcpStream::connect((address.host.as_str(), address.port))
            .await
            .map_err(|err| format!("cannot connect: {err}"))?;
        stream.set_nodelay(true).map_err(|err| format!("cannot connect: {err}"))?;
        let stream = super::tls::handshake(config, name, stream).await?;
        Ok(Self { stream: BufReader::new(Box::new(stream)) })
    }

    async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        let mut request = Vec::with_capacity(64);
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&request).await?;
        self.read_reply().await
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, RespError> {
        let mut line = Vec::new();
        (&mut self.stream).take(MAX_LINE_BYTES).read_until(b'\n', &mut line).await?;
        if !line.ends_with(b"\r\n") {
            return Err(if line.len() as u64 >= MAX_LINE_BYTES {
                RespError::Protocol("reply line too long")
            } else {
                RespError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    async fn read_reply(&mut self) -> Result<Reply, RespError> {
        let line = self.read_line().await?;
        let (kind, rest) = line.split_first().ok_or(RespError::Protocol("empty reply line"))?;
        let rest = String::from_utf8_lossy(rest);
        match kind {
            b'+' => Ok(Reply::Status(rest.into_owned())),
            b'-' => Err(RespError::Server(rest.into_owned())),
            b':' => rest.parse().map(Reply::Integer).map_err(|_| RespError::Protocol("bad integer")),
            b'$' => {
                let len: i64 = rest.parse().map_err(|_| RespError::Protocol("bad bulk length"))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).map_err(|_| RespError::Protocol("bad bulk length"))?;
                if len > MAX_BULK_BYTES {
                    return Err(RespError::Protocol("bulk reply too large"));
                }
                let mut body = vec![0; len + 2];
                self.stream.read_exact(&mut body).await?;
                if !body.ends_with(b"\r\n") {
                    return Err(RespError::Protocol("bulk reply not terminated"));
                }
                body.truncate(len);
                Ok(Reply::Bulk(Some(body)))
            }
            _ => Err(RespError::Protocol("unexpected reply type")),
        }
    }
}

pub struct RedisCollector {
    /// `herd_collector_success{collector=...}`: "redis:" and the server.
    collector_name: String,
    /// `server` label.
    server: String,
    address: Endpoint,
    username: Option<String>,
    password: PasswordSource,
    timeout: Duration,
    interval: Duration,
    tls: Option<ClientTls>,
    connection: Mutex<Option<Connection>>,
}

impl RedisCollector {
    pub fn from_config(config: &RedisConfig) -> Self {
        Self {
            collector_name: format!("redis:{}", config.name),
            server: config.name.clone(),
            address: config.address.clone(),
            username: config.username.clone(),
            password: config.password.clone(),
            timeout: config.timeout,
            interval: config.interval,
            tls: config.tls.clone(),
            connection: Mutex::new(None),
        }
    }

    fn error(&self, detail: impl Into<String>) -> CollectError {
        CollectError::Server { server: self.server.clone(), detail: detail.into() }
    }

    fn password(&self) -> Result<Option<Secret>, CollectError> {
        match &self.password {
            PasswordSource::None => Ok(None),
            PasswordSource::Inline(secret) => Ok(Some(secret.clone())),
            PasswordSource::File(path) => std::fs::read_to_string(path)
                .map(|text| Some(Secret::new(text.trim_end_matches(['\n', '\r']))))
                .map_err(|err| self.error(format!("cannot read password_file {}: {err}", path.display()))),
            PasswordSource::Env(var) => std::env::var(var)
                .map(|value| Some(Secret::new(value)))
                .map_err(|_| self.error(format!("password_env: variable {var} is not set"))),
        }
    }

    async fn connect(&self) -> Result<Connection, CollectError> {
        let password = self.password()?;
        let mut connection = match &self.tls {
            None => {
                Connection::open(&self.address).await.map_err(|err| self.error(format!("cannot connect: {err}")))?
            }
            Some(tls) => Connection::open_tls(&self.address, tls).await.map_err(|err| self.error(err))?,
        };
        if let Some(password) = password {
            let pass = password.expose().as_bytes();
            let reply = match &self.username {
                Some(user) => connection.command(&[b"AUTH", user.as_bytes(), pass]).await,
                None => connection.command(&[b"AUTH", pass]).await,
            };
            reply.map_err(|err| self.error(format!("AUTH failed: {err}")))?;
        }
        Ok(connection)
    }

    /// Connects if needed and returns `INFO`'s text.
    async fn info(&self) -> Result<String, CollectError> {
        let mut slot = self.connection.lock().await;
        let reused = slot.is_some();
        if !reused {
            *slot = Some(self.connect().await?);
        }
        let connection = slot.as_mut().expect("set just above");
        let mut reply = connection.command(&[b"INFO"]).await;
        if reused && matches!(reply, Err(RespError::Io(_))) {
            // The server restarted (or dropped an idle client) since the last
            // cycle: that is not an outage if a new connection works now.
            *slot = None;
            let connection = slot.insert(self.connect().await?);
            reply = connection.command(&[b"INFO"]).await;
        }
        match reply {
            Ok(Reply::Bulk(Some(body))) => Ok(String::from_utf8_lossy(&body).into_owned()),
            Ok(_) => {
                *slot = None;
                Err(self.error("INFO: unexpected reply type"))
            }
            Err(err) => {
                // A broken or confused connection is not reused: the next cycle starts afresh.
                *slot = None;
                Err(self.error(format!("INFO: {err}")))
            }
        }
    }
}

#[async_trait]
impl Collector for RedisCollector {
    fn name(&self) -> &str {
        &self.collector_name
    }

    fn job(&self) -> &str {
        "redis"
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let result = match tokio::time::timeout(self.timeout, self.info()).await {
            Ok(result) => result,
            Err(_) => {
                *self.connection.lock().await = None;
                Err(self.error(format!("no answer within {} ms", self.timeout.as_millis())))
            }
        };
        let server = ("server", self.server.as_str());
        match result {
            Ok(text) => {
                out.push("redis_up", &[server], 1.0);
                push_info(&text, server, out);
                Ok(())
            }
            Err(err) => {
                out.push("redis_up", &[server], 0.0);
                Err(err)
            }
        }
    }
}

/// `INFO`'s `field:value` lines, skipping section headers and blanks.
fn info_fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(|line| line.trim_end().split_once(':'))
}

/// What an `INFO` field becomes.
#[derive(Clone, Copy)]
enum Field {
    Number(&'static str),
    Status(&'static str),
}

/// `INFO` fields to their series, looked up once per field per cycle.
fn field_table() -> &'static HashMap<&'static str, Field> {
    static TABLE: OnceLock<HashMap<&'static str, Field>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let numbers = GAUGES.iter().chain(COUNTERS).map(|&(field, metric)| (field, Field::Number(metric)));
        let statuses = STATUSES.iter().map(|&(field, metric)| (field, Field::Status(metric)));
        numbers.chain(statuses).collect()
    })
}

/// Turns `INFO`'s text into redis_exporter's series, in one pass over it.
fn push_info(text: &str, server: (&str, &str), out: &mut Batch) {
    let table = field_table();
    let mut info_values = [""; INFO_LABELS.len()];
    for (field, value) in info_fields(text) {
        if let Some(i) = INFO_LABELS.iter().position(|label| *label == field) {
            info_values[i] = value;
        }
        if field.strip_prefix("db").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            push_keyspace(field, value, server, out);
            continue;
        }
        if field == "uptime_in_seconds" {
            // redis_exporter's start time: now minus uptime, in whole seconds.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            if let (Ok(uptime), Ok(now)) = (value.parse::<f64>(), now) {
                out.push("redis_start_time_seconds", &[server], now.as_secs() as f64 - uptime);
            }
        }
        match table.get(field) {
            Some(Field::Number(metric)) => {
                if let Ok(number) = value.parse::<f64>() {
                    out.push(metric, &[server], number);
                }
            }
            Some(Field::Status(metric)) => out.push(metric, &[server], if value == "ok" { 1.0 } else { 0.0 }),
            None if field == "latest_fork_usec" => {
                if let Ok(usec) = value.parse::<f64>() {
                    out.push("redis_latest_fork_seconds", &[server], usec / 1e6);
                }
            }
            None if field == "master_link_status" => {
                out.push("redis_master_link_up", &[server], if value == "up" { 1.0 } else { 0.0 });
            }
            None => {}
        }
    }
    let mut info_labels = [("", ""); INFO_LABELS.len() + 1];
    info_labels[0] = server;
    for (i, label) in INFO_LABELS.iter().enumerate() {
        info_labels[i + 1] = (label, info_values[i]);
    }
    out.push("redis_instance_info", &info_labels, 1.0);
}

/// `db0:keys=1,expires=0,avg_ttl=0` → `redis_db_keys{db="db0"}`, ...
fn push_keyspace(field: &str, value: &str, server: (&str, &str), out: &mut Batch) {
    let labels = [server, ("db", field)];
    for pair in value.split(',') {
        let Some((key, number)) = pair.split_once('=') else { continue };
        let Ok(number) = number.parse::<f64>() else { continue };
        match key {
            "keys" => out.push("redis_db_keys", &labels, number),
            "expires" => out.push("redis_db_keys_expiring", &labels, number),
            "avg_ttl" => out.push("redis_db_avg_ttl_seconds", &labels, number / 1000.0),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::SharedSeriesTable;
    use std::sync::Arc;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\nprocess_id:42\r\n\
        run_id:abc\r\ntcp_port:6379\r\n\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n\
        mem_fragmentation_ratio:1.50\r\n# Persistence\r\nrdb_last_bgsave_status:err\r\naof_enabled:0\r\n\
        # Stats\r\nkeyspace_hits:7\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\
        # Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=2500\r\n";

    fn check(info: &str, expected: &[&str]) {
        let table: SharedSeriesTable = Arc::default();
        let mut batch = Batch::new(Arc::clone(&table), "redis".into(), Arc::new(Vec::new()));
        push_info(info, ("server", "r1"), &mut batch);
        let table = table.lock().unwrap();
        let got: Vec<String> =
            batch.samples.iter().map(|(id, v)| format!("{} {v}", table.labels(*id).unwrap())).collect();
        for line in expected {
            assert!(got.iter().any(|g| g == line), "{line:?} missing from:\n{}", got.join("\n"));
        }
    }

    #[test]
    fn info_becomes_redis_exporter_series() {
        check(
            INFO,
            &[
                r#"redis_memory_used_bytes{job="redis", server="r1"} 1000"#,
                r#"redis_memory_max_bytes{job="redis", server="r1"} 0"#,
                r#"redis_mem_fragmentation_ratio{job="redis", server="r1"} 1.5"#,
                r#"redis_keyspace_hits_total{job="redis", server="r1"} 7"#,
                r#"redis_rdb_last_bgsave_status{job="redis", server="r1"} 0"#,
                r#"redis_db_keys{db="db0", job="redis", server="r1"} 3"#,
                r#"redis_db_keys_expiring{db="db0", job="redis", server="r1"} 1"#,
                r#"redis_db_avg_ttl_seconds{db="db0", job="redis", server="r1"} 2.5"#,
                // Empty label values are no labels, as in Prometheus.
                r#"redis_instance_info{job="redis", maxmemory_policy="noeviction", os="Linux", process_id="42", redis_mode="standalone", redis_version="7.0.15", role="master", run_id="abc", server="r1", tcp_port="6379"} 1"#,
            ],
        );
    }

    #[tokio::test]
    async fn replies_are_parsed_and_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            for reply in [&b"+OK\r\n"[..], b":12\r\n", b"$3\r\nabc\r\n", b"$-1\r\n", b"-ERR nope\r\n", b"$99999999\r\n"]
            {
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(reply).await.unwrap();
            }
        });
        let mut connection = Connection::open(&Endpoint { host: "127.0.0.1".into(), port }).await.unwrap();
        assert_eq!(connection.command(&[b"PING"]).await.unwrap(), Reply::Status("OK".into()));
        assert_eq!(connection.command(&[b"PING"]).await.unwrap(), Reply::Integer(12));
        assert_eq!(connection.command(&[b"PING"]).await.unwrap(), Reply::Bulk(Some(b"abc".to_vec())));
        assert_eq!(connection.command(&[b"PING"]).await.unwrap(), Reply::Bulk(None));
        assert!(matches!(connection.command(&[b"PING"]).await, Err(RespError::Server(e)) if e == "ERR nope"));
        assert!(matches!(connection.command(&[b"PING"]).await, Err(RespError::Protocol(_))));
    }
}
