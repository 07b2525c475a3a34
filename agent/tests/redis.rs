//! The Redis collector against a real Redis 7 that the test starts itself
//! (`redis-server` as a child process on a free loopback port, no
//! persistence, a password, a small `maxmemory` so that writes evict). The
//! collector runs in-process through the library's scheduler.
//!
//! Checked: values agree with what `INFO` returns at the same moment after a
//! load of writes, hits, misses, expiries and evictions; the server going
//! away and coming back (`redis_up` 0 then 1 without help); a wrong password
//! (`redis_up 0`, one log line, no password in logs or labels); a server
//! that never answers; the same series as Debian's redis_exporter; TLS
//! (`--tls-port` only, client certificates required, certificates made by
//! the test): up with real values, and down with one clear log line when the
//! CA is wrong or no client certificate is configured.
//!
//! Needs Debian's `redis-server` (`HERD_REDIS_SERVER` names another binary);
//! `scripts/test.sh` installs it.

mod common;

use common::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_agent::collect::redis::RedisCollector;
use herd_agent::collect::{Collector, Scheduler, SharedSeriesTable};
use herd_common::config::agent::AgentConfig;
use herd_common::metric::is_stale;

const PASSWORD: &str = "r3dis-herd-test";
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);

/// A throwaway Redis; killed when dropped.
struct Server {
    port: u16,
    child: Option<Child>,
    /// With TLS: `port` is the TLS port, the plain one is off.
    tls_args: Vec<String>,
}

impl Server {
    fn new() -> Self {
        let mut server = Self { port: free_port(), child: None, tls_args: Vec::new() };
        server.start();
        server
    }

    /// TLS only, on `port`, requiring client certificates signed by `dir/ca.pem`.
    fn with_tls(dir: &std::path::Path, extra: &[&str]) -> Self {
        let file = |name: &str| dir.join(name).display().to_string();
        let mut tls_args = vec![
            "--tls-cert-file".to_owned(),
            file("server.pem"),
            "--tls-key-file".to_owned(),
            file("server-key.pem"),
            "--tls-ca-cert-file".to_owned(),
            file("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "yes".to_owned(),
        ];
        tls_args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let mut server = Self { port: free_port(), child: None, tls_args };
        server.start();
        server
    }

    fn start(&mut self) {
        let binary = std::env::var("HERD_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let port = self.port.to_string();
        let ports: [&str; 4] = if self.tls_args.is_empty() {
            ["--port", &port, "--tls-port", "0"]
        } else {
            ["--port", "0", "--tls-port", &port]
        };
        let child = Command::new(&binary)
            .args(ports)
            .args(&self.tls_args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--requirepass", PASSWORD])
            .args(["--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {binary}: {err} (apt-get install -y redis-server)"));
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain RESP client for the test's own load and `INFO` reads, separate
/// from the collector's.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut client = Self { reader: BufReader::new(stream) };
        client.command(&["AUTH", PASSWORD]);
        client
    }

    /// Sends a command; returns a bulk reply's text, or the status/integer line.
    fn command(&mut self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_owned();
        if let Some(len) = line.strip_prefix('$') {
            let Ok(len) = len.parse::<usize>() else { return String::new() }; // $-1: nil
            let mut body = vec![0; len + 2];
            self.reader.read_exact(&mut body).unwrap();
            body.truncate(len);
            return String::from_utf8(body).unwrap();
        }
        assert!(!line.starts_with('-'), "{args:?}: {line}");
        line
    }

    fn info(&mut self) -> BTreeMap<String, String> {
        self.command(&["INFO"])
            .lines()
            .filter_map(|line| line.trim_end().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

fn collector(extra: &str) -> RedisCollector {
    let text = format!(
        "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
         [collect]\ninterval = \"10s\"\ntimeout = \"5s\"\n[collect.host]\nenabled = false\n\
         [[collect.redis]]\n{extra}\n"
    );
    let config = AgentConfig::from_toml("agent.toml", &text, None, "cache-1").unwrap();
    RedisCollector::from_config(&config.collect.redis[0])
}

struct Harness {
    scheduler: Scheduler,
    table: SharedSeriesTable,
    _rx: tokio::sync::mpsc::Receiver<herd_common::protocol::SampleBatch>,
}

impl Harness {
    fn new(collector: RedisCollector) -> Self {
        let table: SharedSeriesTable = Arc::default();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let collectors: Vec<Arc<dyn Collector>> = vec![Arc::new(collector)];
        let scheduler = Scheduler::new(
            collectors,
            Duration::from_secs(10),
            Duration::from_secs(5),
            Arc::clone(&table),
            vec![("instance".into(), "cache-1".into())],
            1,
            tx,
        );
        Self { scheduler, table, _rx: rx }
    }

    async fn cycle(&mut self) -> Series {
        let batch = self.scheduler.cycle().await;
        let table = self.table.lock().unwrap();
        Series(
            batch
                .samples
                .iter()
                .filter(|(_, v)| !is_stale(*v))
                .map(|(id, v)| (table.labels(*id).unwrap().to_string(), *v))
                .collect(),
        )
    }
}

struct Series(BTreeMap<String, f64>);

impl Series {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<(&String, &f64)> = self
            .0
            .iter()
            .filter(|(series, _)| {
                series.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: expected one series, got {found:?}");
        *found[0].1
    }
}

fn field(info: &BTreeMap<String, String>, key: &str) -> f64 {
    info.get(key).unwrap_or_else(|| panic!("INFO has no {key}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_agree_with_info_at_the_same_moment() {
    let server = Server::new();
    let mut load = Client::connect(server.port);
    // 3000 values of 2 KiB do not fit in 4 MiB: the oldest are evicted
    // (only keys with a time to live, so db1's key below stays).
    let value = "v".repeat(2048);
    for i in 0..3000 {
        load.command(&["SET", &format!("key:{i}"), &value, "EX", "3600"]);
    }
    for i in 0..50 {
        load.command(&["GET", &format!("key:{}", 2999 - i)]); // hits
        load.command(&["GET", &format!("missing:{i}")]); // misses
    }
    load.command(&["SET", "short", "1", "PX", "1"]);
    load.command(&["SELECT", "1"]);
    load.command(&["SET", "in-db1", "1"]);
    // Let the expiry cycle remove `short`: wait until INFO counts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while field(&load.info(), "expired_keys") < 1.0 {
        assert!(Instant::now() < deadline, "`short` never expired");
        load.command(&["SELECT", "0"]);
        load.command(&["GET", "short"]);
        load.command(&["SELECT", "1"]);
    }

    let mut harness =
        Harness::new(collector(&format!("address = \"127.0.0.1:{}\"\npassword = \"{PASSWORD}\"", server.port)));
    let before = load.info();
    let series = harness.cycle().await;
    let after = load.info();
    let s = ("server", format!("127.0.0.1:{}", server.port));
    let s = (s.0, s.1.as_str());

    assert_eq!(series.get("redis_up", &[s]), 1.0);
    assert_eq!(series.get("herd_collector_success", &[]), 1.0);
    // Counters that only the test's load moves: exactly INFO's.
    for (key, name) in [
        ("keyspace_hits", "redis_keyspace_hits_total"),
        ("keyspace_misses", "redis_keyspace_misses_total"),
        ("evicted_keys", "redis_evicted_keys_total"),
        ("expired_keys", "redis_expired_keys_total"),
        ("maxmemory", "redis_memory_max_bytes"),
        ("rdb_last_save_time", "redis_rdb_last_save_timestamp_seconds"),
        ("aof_enabled", "redis_aof_enabled"),
        ("connected_slaves", "redis_connected_slaves"),
        ("master_repl_offset", "redis_master_repl_offset"),
        ("blocked_clients", "redis_blocked_clients"),
        ("used_memory_peak", "redis_memory_used_peak_bytes"),
    ] {
        assert_eq!(series.get(name, &[s]), field(&after, key), "{name}");
    }
    assert!(series.get("redis_evicted_keys_total", &[s]) > 0.0, "the load evicts");
    assert_eq!(series.get("redis_keyspace_misses_total", &[s]), field(&after, "keyspace_misses"));
    assert_eq!(series.get("redis_memory_max_bytes", &[s]), 4.0 * 1024.0 * 1024.0);
    assert_eq!(series.get("redis_rdb_last_bgsave_status", &[s]), 1.0);
    // The collector's connection exists only from its first cycle on.
    assert_eq!(series.get("redis_connected_clients", &[s]), field(&after, "connected_clients"));
    // Between the two INFO reads: commands, memory.
    let commands = series.get("redis_commands_processed_total", &[s]);
    assert!(
        field(&before, "total_commands_processed") <= commands && commands <= field(&after, "total_commands_processed")
    );
    let used = series.get("redis_memory_used_bytes", &[s]);
    let (low, high) = (field(&before, "used_memory"), field(&after, "used_memory"));
    assert!(low.min(high) * 0.98 <= used && used <= low.max(high) * 1.02, "{low} {used} {high}");
    let rss = series.get("redis_memory_used_rss_bytes", &[s]);
    assert!((rss - field(&after, "used_memory_rss")).abs() <= field(&after, "used_memory_rss") * 0.02);
    let ratio = series.get("redis_mem_fragmentation_ratio", &[s]);
    assert!((ratio - field(&after, "mem_fragmentation_ratio")).abs() < 0.05, "{ratio}");

    let db0_keys = series.get("redis_db_keys", &[s, ("db", "db0")]);
    let db0_info = after.get("db0").unwrap();
    assert!(db0_info.starts_with(&format!("keys={db0_keys},")), "{db0_keys} vs {db0_info}");
    assert!(db0_keys < 3000.0, "evicted keys are gone");
    assert_eq!(series.get("redis_db_keys", &[s, ("db", "db1")]), 1.0);
    assert_eq!(series.get("redis_db_keys_expiring", &[s, ("db", "db1")]), 0.0);
    let expiring = series.get("redis_db_keys_expiring", &[s, ("db", "db0")]);
    assert!(db0_info.starts_with(&format!("keys={db0_keys},expires={expiring},")), "{expiring} vs {db0_info}");

    let version = after.get("redis_version").unwrap();
    let info = series.get("redis_instance_info", &[s, ("role", "master"), ("redis_version", version)]);
    assert_eq!(info, 1.0);
    for text in series.0.keys() {
        assert!(!text.contains(PASSWORD), "password in {text}");
    }
}

#[tokio::test]
async fn down_then_back_and_wrong_password() {
    let mut server = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut harness = Harness::new(collector(&format!(
        "name = \"cache\"\naddress = \"127.0.0.1:{}\"\npassword_file = \"{}\"\ntimeout = \"1s\"",
        server.port,
        password_file.display()
    )));
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let up = [("server", "cache")];

    assert_eq!(harness.cycle().await.get("redis_up", &up), 1.0);
    server.stop();
    let started = Instant::now();
    let series = harness.cycle().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(series.get("redis_up", &up), 0.0);
    assert_eq!(series.get("herd_collector_success", &[("collector", "redis:cache")]), 0.0);
    assert!(!series.0.keys().any(|s| s.starts_with("redis_memory_used_bytes")));
    assert_eq!(harness.cycle().await.get("redis_up", &up), 0.0);
    server.start();
    assert_eq!(harness.cycle().await.get("redis_up", &up), 1.0, "reconnects on the first cycle after the restart");
    // A restart between two cycles is not an outage: the stale connection is replaced at once.
    server.stop();
    server.start();
    assert_eq!(harness.cycle().await.get("redis_up", &up), 1.0);

    // A wrong password: down (after the next reconnect), then up again once it is fixed.
    std::fs::write(&password_file, "not-the-password\n").unwrap();
    server.stop();
    server.start();
    for _ in 0..3 {
        assert_eq!(harness.cycle().await.get("redis_up", &up), 0.0);
    }
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    assert_eq!(harness.cycle().await.get("redis_up", &up), 1.0);

    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logs.matches("collector failing").count(), 2, "one line per outage:\n{logs}");
    assert_eq!(logs.matches("collector recovered").count(), 2, "{logs}");
    assert!(logs.contains("WRONGPASS"), "{logs}");
    assert!(!logs.contains("not-the-password") && !logs.contains(PASSWORD), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_down_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket); // Accept, then say nothing.
        }
    });
    let mut harness = Harness::new(collector(&format!("address = \"127.0.0.1:{port}\"\ntimeout = \"1s\"")));
    let started = Instant::now();
    let series = harness.cycle().await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(series.get("redis_up", &[("server", &format!("127.0.0.1:{port}"))]), 0.0);
}

/// Families Herd and redis_exporter both produce must have the same label
/// sets (`server`, `instance` and `job` aside), except that the exporter
/// also lists empty databases (with 0) that `INFO` leaves out; slow-moving
/// values must agree within 2%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_series_as_redis_exporter() {
    let binary =
        std::env::var("HERD_REDIS_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-redis-exporter".to_owned());
    assert!(
        std::path::Path::new(&binary).exists(),
        "{binary} is missing: apt-get install -y prometheus-redis-exporter (or set HERD_REDIS_EXPORTER)"
    );
    let server = Server::new();
    let mut load = Client::connect(server.port);
    for i in 0..100 {
        load.command(&["SET", &format!("key:{i}"), "value", "EX", "3600"]);
    }
    let port = free_port();
    let _exporter = KillOnDrop(start_exporter(
        &binary,
        &[
            "-redis.addr".into(),
            format!("redis://127.0.0.1:{}", server.port),
            "-web.listen-address".into(),
            format!("127.0.0.1:{port}"),
        ],
        &[("REDIS_PASSWORD", PASSWORD.to_owned())],
        port,
    ));
    let mut harness =
        Harness::new(collector(&format!("address = \"127.0.0.1:{}\"\npassword = \"{PASSWORD}\"", server.port)));
    harness.cycle().await;
    let herd = harness.cycle().await;
    let exporter_text = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
    let drop = ["server", "instance", "job"];
    let herd_lines: Vec<String> = herd.0.iter().map(|(text, value)| format!("{text} {value}")).collect();
    let ours = families(herd_lines.iter().map(String::as_str), &drop);
    let theirs = families(exporter_text.lines(), &drop);

    let shared: Vec<&String> = ours.keys().filter(|name| theirs.contains_key(*name)).collect();
    for family in [
        "redis_up",
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
        "redis_memory_used_peak_bytes",
        "redis_memory_used_rss_bytes",
        "redis_mem_fragmentation_ratio",
        "redis_keyspace_hits_total",
        "redis_keyspace_misses_total",
        "redis_evicted_keys_total",
        "redis_expired_keys_total",
        "redis_connected_clients",
        "redis_blocked_clients",
        "redis_commands_processed_total",
        "redis_db_keys",
        "redis_rdb_last_save_timestamp_seconds",
        "redis_rdb_last_bgsave_status",
        "redis_aof_enabled",
        "redis_instance_info",
        "redis_connected_slaves",
        "redis_master_repl_offset",
    ] {
        assert!(shared.iter().any(|name| *name == family), "{family} is not in both outputs");
    }
    let mut problems = Vec::new();
    for name in &shared {
        let (a, b) = (&ours[*name], &theirs[*name]);
        for labels in b.keys().filter(|labels| !a.contains_key(*labels)) {
            let empty_database = name.starts_with("redis_db_keys") && b[labels] == 0.0;
            if !empty_database {
                problems.push(format!("{name}{{{labels}}}: only the exporter has it"));
            }
        }
        for labels in a.keys().filter(|labels| !b.contains_key(*labels)) {
            problems.push(format!("{name}{{{labels}}}: only Herd has it"));
        }
        let slack = match name.as_str() {
            "redis_connected_clients" => 1.0,
            "redis_uptime_in_seconds" | "redis_start_time_seconds" => 2.0,
            n if n.ends_with("_total") || n.contains("memory") || n.contains("mem_") => continue,
            "redis_master_repl_offset" | "redis_instantaneous_ops_per_sec" => continue,
            _ => 0.0,
        };
        for (labels, ours) in a {
            let Some(&theirs) = b.get(labels) else { continue };
            if (ours - theirs).abs() > slack && (ours - theirs).abs() > theirs.abs() * 0.02 {
                problems.push(format!("{name}{{{labels}}}: herd {ours}, exporter {theirs}"));
            }
        }
    }
    // Memory moves with every client buffer: within 2% or 64 KiB.
    for name in ["redis_memory_used_bytes", "redis_memory_used_rss_bytes", "redis_memory_used_peak_bytes"] {
        let (ours, theirs) = (ours[name][""], theirs[name][""]);
        if (ours - theirs).abs() > (theirs * 0.02).max(65536.0) {
            problems.push(format!("{name}: herd {ours}, exporter {theirs}"));
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
    assert!(shared.len() >= 40, "only {} shared families: {shared:?}", shared.len());
}

#[tokio::test]
async fn tls_with_a_client_certificate_and_a_wrong_ca() {
    use herd_common::tls::{Role, generate_ca, issue, write_pair};
    let pki = tempfile::tempdir().unwrap();
    let ca = generate_ca("cache CA").unwrap();
    write_pair(pki.path(), "ca", &ca, false).unwrap();
    write_pair(pki.path(), "server", &issue(&ca, Role::Server, "localhost", &["127.0.0.1".into()]).unwrap(), false)
        .unwrap();
    write_pair(pki.path(), "client", &issue(&ca, Role::Agent, "herd-agent", &[]).unwrap(), false).unwrap();
    write_pair(pki.path(), "other-ca", &generate_ca("someone else").unwrap(), false).unwrap();
    let server = Server::with_tls(pki.path(), &["--maxclients", "1234"]);
    let file = |name: &str| pki.path().join(name).display().to_string();
    let entry = |name: &str, tls: String| {
        format!(
            "name = \"{name}\"\naddress = \"127.0.0.1:{}\"\npassword = \"{PASSWORD}\"\ntimeout = \"2s\"\ntls = {{ {tls} }}",
            server.port
        )
    };
    let client_cert = format!("cert_file = \"{}\", key_file = \"{}\"", file("client.pem"), file("client-key.pem"));

    // Verified against the CA, by name (the certificate is for "localhost", the address an IP).
    let mut good = Harness::new(collector(&entry(
        "secure",
        format!("ca_file = \"{}\", {client_cert}, server_name = \"localhost\"", file("ca.pem")),
    )));
    let series = good.cycle().await;
    let up = [("server", "secure")];
    assert_eq!(series.get("redis_up", &up), 1.0);
    let pid = server.child.as_ref().unwrap().id();
    assert_eq!(series.get("redis_process_id", &up), f64::from(pid), "the values are this server's");
    assert_eq!(series.get("redis_config_maxclients", &up), 1234.0);
    assert!(series.get("redis_connected_clients", &up) >= 1.0);
    // The connection is kept: the next cycle reuses it.
    let series = good.cycle().await;
    assert_eq!(series.get("redis_up", &up), 1.0);
    assert!(series.get("redis_commands_processed_total", &up) >= 1.0);

    // insecure_skip_verify: any server certificate, here one the configured CA did not sign.
    let mut insecure = Harness::new(collector(&entry(
        "insecure",
        format!("ca_file = \"{}\", {client_cert}, insecure_skip_verify = true", file("other-ca.pem")),
    )));
    assert_eq!(insecure.cycle().await.get("redis_process_id", &[("server", "insecure")]), f64::from(pid));

    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut wrong_ca =
        Harness::new(collector(&entry("wrong-ca", format!("ca_file = \"{}\", {client_cert}", file("other-ca.pem")))));
    let mut no_cert = Harness::new(collector(&entry("no-cert", format!("ca_file = \"{}\"", file("ca.pem")))));
    for _ in 0..3 {
        let series = wrong_ca.cycle().await;
        assert_eq!(series.get("redis_up", &[("server", "wrong-ca")]), 0.0);
        assert!(!series.0.keys().any(|s| s.starts_with("redis_process_id")));
        assert_eq!(no_cert.cycle().await.get("redis_up", &[("server", "no-cert")]), 0.0);
    }
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let failing: Vec<&str> = logs.lines().filter(|line| line.contains("collector failing")).collect();
    assert_eq!(failing.len(), 2, "one line per collector, not per cycle:\n{logs}");
    let wrong = failing.iter().find(|line| line.contains("redis:wrong-ca")).expect("the wrong CA is logged");
    assert!(wrong.contains("invalid peer certificate") && wrong.contains("UnknownIssuer"), "{wrong}");
    assert!(failing.iter().any(|line| line.contains("redis:no-cert")), "{logs}");
    assert!(!logs.contains(PASSWORD), "the password never reaches a log: {logs}");
}
