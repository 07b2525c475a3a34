//! The PostgreSQL collector against a real PostgreSQL 15 that the test
//! starts itself: a throwaway cluster in a temporary directory, on a free
//! loopback port, run as the `postgres` OS user (PostgreSQL refuses root),
//! with `pg_stat_statements` preloaded. The collector runs in-process
//! through the library's scheduler.
//!
//! Checked: values agree with what SQL returns at the same moment (after the
//! load has settled), the server going away and coming back (`pg_up` 0 then
//! 1 without help), a server that accepts but never answers (`pg_up 0`
//! within the instance timeout), a wrong password (one log line, no
//! password in logs or labels), replication lag on a streaming standby made
//! with `pg_basebackup`, the same series as Debian's postgres_exporter, and
//! TLS: a cluster with `ssl=on`, test-made certificates and only `hostssl`
//! lines requiring a client certificate, read with `verify-full` and
//! `require`; a wrong CA, a missing client certificate and `disable` are
//! `pg_up 0` with a clear log line.
//!
//! Needs Debian's `postgresql` package (PostgreSQL 15 under
//! `/usr/lib/postgresql/15/bin`; `HERD_PG_BIN` names another directory);
//! `scripts/test.sh` installs it.

mod common;

use common::*;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_agent::collect::postgres::PostgresCollector;
use herd_agent::collect::{Collector, Scheduler, SharedSeriesTable};
use herd_common::config::agent::AgentConfig;
use herd_common::metric::is_stale;
use tokio_postgres::NoTls;

const PASSWORD: &str = "s3cret-herd-test";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

fn pg_bin(tool: &str) -> PathBuf {
    let dir =
        std::env::var_os("HERD_PG_BIN").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from);
    let path = dir.join(tool);
    assert!(path.exists(), "{} is missing: apt-get install -y postgresql (or set HERD_PG_BIN)", path.display());
    path
}

/// Runs a command as the `postgres` OS user and fails the test on error.
fn as_postgres(program: &Path, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("runuser runs");
    assert!(status.success(), "{} {args:?} failed", program.display());
}

/// A throwaway cluster; stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
}

impl Cluster {
    fn new() -> Self {
        Self::new_with(|_| {})
    }

    /// A cluster whose data directory `configure` edits (as root) before it starts.
    fn new_with(configure: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::File::create(&pwfile).unwrap().write_all(PASSWORD.as_bytes()).unwrap();
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        assert!(status.success());
        let data = dir.path().join("data");
        as_postgres(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--no-sync",
            ],
        );
        configure(&data);
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status().unwrap();
        assert!(status.success());
        let mut cluster = Self { dir, port: free_port(), server: None };
        cluster.start();
        cluster
    }

    /// A hot standby of `primary`, streaming from it (`pg_basebackup -R`).
    fn standby_of(primary: &Cluster) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        assert!(status.success());
        let data = dir.path().join("data");
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--", "env", &format!("PGPASSWORD={PASSWORD}")])
            .arg(pg_bin("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-R", "-X", "stream"])
            .args(["--no-sync", "-D", data.to_str().unwrap()])
            .status()
            .expect("runuser runs");
        assert!(status.success(), "pg_basebackup failed");
        let mut cluster = Self { dir, port: free_port(), server: None };
        cluster.start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("postgres"))
            .args(["-D", &self.data(), "-p", &port, "-k", self.dir.path().to_str().unwrap()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "shared_preload_libraries=pg_stat_statements"])
            .args(["-c", "fsync=off", "-c", "max_connections=50", "-c", "track_io_timing=on"])
            // Autovacuum workers would move app's counters between the collector's read and the test's.
            .args(["-c", "autovacuum=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.server = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            as_postgres(&pg_bin("pg_ctl"), &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
            let _ = child.wait();
        }
    }

    fn dsn(&self, database: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname={database}", self.port)
    }

    async fn client(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.dsn(database), NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds the collector the way the agent does: from `agent.toml` text.
fn collector(extra: &str) -> PostgresCollector {
    let text = format!(
        "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
         [collect]\ninterval = \"10s\"\ntimeout = \"5s\"\n[collect.host]\nenabled = false\n\
         [[collect.postgres]]\n{extra}\n"
    );
    let config = AgentConfig::from_toml("agent.toml", &text, None, "db-1").unwrap();
    PostgresCollector::from_config(0, &config.collect.postgres[0]).unwrap()
}

struct Harness {
    scheduler: Scheduler,
    table: SharedSeriesTable,
    _rx: tokio::sync::mpsc::Receiver<herd_common::protocol::SampleBatch>,
}

impl Harness {
    fn new(collector: PostgresCollector) -> Self {
        let table: SharedSeriesTable = Arc::default();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let collectors: Vec<Arc<dyn Collector>> = vec![Arc::new(collector)];
        let scheduler = Scheduler::new(
            collectors,
            Duration::from_secs(10),
            Duration::from_secs(5),
            Arc::clone(&table),
            vec![("instance".into(), "db-1".into())],
            1,
            tx,
        );
        Self { scheduler, table, _rx: rx }
    }

    /// One cycle, as `series text → value`, stale markers left out.
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
    /// The value of the one series named `name` carrying all of `labels`.
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

async fn number(client: &tokio_postgres::Client, sql: &str) -> f64 {
    let row = client.query_one(&format!("SELECT ({sql})::float8"), &[]).await.unwrap();
    row.get(0)
}

/// Backends report their counters to the cumulative statistics when idle,
/// at most once a second: waits until app's counters stop moving.
async fn settle(admin: &tokio_postgres::Client) {
    let sql = "SELECT xact_commit + tup_inserted + blks_read + blks_hit FROM pg_stat_database WHERE datname = 'app'";
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = -1.0;
    loop {
        let now = number(admin, sql).await;
        if now == last {
            return;
        }
        last = now;
        assert!(Instant::now() < deadline, "app's statistics never settled");
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_agree_with_sql_at_the_same_moment() {
    let cluster = Cluster::new();
    let admin = cluster.client("postgres").await;
    admin.batch_execute("CREATE EXTENSION pg_stat_statements").await.unwrap();
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    let app = cluster.client("app").await;
    app.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, body text);
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;
         SELECT count(*) FROM t WHERE body LIKE '%y%';
         UPDATE t SET body = 'y' WHERE id <= 10;
         DELETE FROM t WHERE id > 4990;",
    )
    .await
    .unwrap();
    app.batch_execute("SELECT pg_sleep(0.6)").await.unwrap();
    // Two more idle sessions, then one holding a table lock inside a
    // transaction (after the counters settle: a backend in a transaction
    // block does not report them).
    let idle_a = cluster.client("app").await;
    let idle_b = cluster.client("app").await;
    // An idle backend reports its counters only after 10 s unless told to.
    for client in [&app, &idle_a, &idle_b] {
        client.batch_execute("SELECT pg_stat_force_next_flush()").await.unwrap();
    }
    settle(&admin).await;
    app.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    settle(&admin).await;

    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pg-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut harness = Harness::new(collector(&format!(
        "dsn = \"postgres://postgres@127.0.0.1:{}/postgres\"\npassword_file = \"{}\"\n\
         slow_statement_threshold = \"500ms\"\nstatements_limit = 5\nstatement_text_max_chars = 40",
        cluster.port,
        password_file.display()
    )));

    let series = harness.cycle().await;
    let server = ("server", format!("127.0.0.1:{}", cluster.port));
    let server = (server.0, server.1.as_str());
    assert_eq!(series.get("pg_up", &[server]), 1.0);
    assert_eq!(series.get("herd_collector_success", &[]), 1.0);

    let app_db = [server, ("datname", "app")];
    for column in
        ["numbackends", "xact_commit", "xact_rollback", "blks_hit", "blks_read", "tup_returned", "tup_fetched"]
            .into_iter()
            .chain(["tup_inserted", "tup_updated", "tup_deleted", "conflicts", "deadlocks"])
    {
        let sql = format!("SELECT {column} FROM pg_stat_database WHERE datname = 'app'");
        assert_eq!(series.get(&format!("pg_stat_database_{column}"), &app_db), number(&admin, &sql).await, "{column}");
    }
    assert_eq!(series.get("pg_stat_database_numbackends", &app_db), 3.0);
    // 5000 rows plus the catalog rows CREATE TABLE wrote.
    assert!(series.get("pg_stat_database_tup_inserted", &app_db) >= 5000.0);
    let datid = number(&admin, "SELECT oid::int8 FROM pg_database WHERE datname = 'app'").await.to_string();
    series.get("pg_stat_database_xact_commit", &[("datid", &datid), ("datname", "app")]);

    assert_eq!(series.get("pg_settings_max_connections", &[server]), 50.0);
    assert_eq!(
        series.get("pg_settings_shared_buffers_bytes", &[server]),
        number(&admin, "SELECT setting::float8 * 8192 FROM pg_settings WHERE name = 'shared_buffers'").await
    );
    assert_eq!(series.get("pg_settings_fsync", &[server]), 0.0);
    assert_eq!(series.get("pg_settings_track_io_timing", &[server]), 1.0);
    assert_eq!(series.get("pg_database_size_bytes", &app_db), number(&admin, "SELECT pg_database_size('app')").await);

    assert_eq!(series.get("pg_stat_activity_count", &[server, ("datname", "app"), ("state", "idle")]), 2.0);
    assert_eq!(
        series.get("pg_stat_activity_count", &[server, ("datname", "app"), ("state", "idle in transaction")]),
        1.0
    );
    assert_eq!(series.get("pg_stat_activity_count", &[server, ("datname", "app"), ("state", "active")]), 0.0);
    let locks_sql = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                     WHERE d.datname = 'app' AND lower(l.mode) = 'accessexclusivelock'";
    let access_exclusive = series.get("pg_locks_count", &[server, ("datname", "app"), ("mode", "accessexclusivelock")]);
    assert!(access_exclusive >= 1.0);
    assert_eq!(access_exclusive, number(&admin, locks_sql).await);
    assert_eq!(series.get("pg_locks_count", &[server, ("datname", "app"), ("mode", "sireadlock")]), 0.0);

    assert_eq!(series.get("pg_replication_lag_seconds", &[server]), 0.0);
    assert_eq!(series.get("pg_replication_is_replica", &[server]), 0.0);

    // pg_stat_statements: the slow statement is among the top 5 by total time.
    let sleep = [server, ("datname", "app"), ("query", "SELECT pg_sleep($1)")];
    assert_eq!(series.get("pg_stat_statements_calls_total", &sleep), 1.0);
    let mean_ms = series.get("pg_stat_statements_mean_exec_time_ms", &sleep);
    let sql_mean =
        number(&admin, "SELECT mean_exec_time FROM pg_stat_statements WHERE query = 'SELECT pg_sleep($1)'").await;
    assert!(mean_ms >= 600.0 && mean_ms == sql_mean, "{mean_ms} vs {sql_mean}");
    assert_eq!(series.get("pg_stat_statements_max_exec_time_ms", &sleep), sql_mean);
    let statements: Vec<&String> =
        series.0.keys().filter(|s| s.starts_with("pg_stat_statements_calls_total{")).collect();
    assert_eq!(statements.len(), 5, "statements_limit bounds the series: {statements:?}");
    for text in statements {
        let query = text.split("query=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
        assert!(query.chars().count() <= 43, "statement_text_max_chars: {query}");
    }
    assert!(series.get("pg_stat_statements_slow_statements", &[server]) >= 1.0);

    for text in series.0.keys() {
        assert!(!text.contains(PASSWORD), "password in {text}");
    }
    app.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_then_back_without_help() {
    let mut cluster = Cluster::new();
    let mut harness = Harness::new(collector(&format!(
        "name = \"main\"\ndsn = \"postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres\"\ntimeout = \"2s\"",
        cluster.port
    )));
    let server = [("server", "main")];
    let series = harness.cycle().await;
    assert_eq!(series.get("pg_up", &server), 1.0);
    assert!(series.0.keys().any(|s| s.starts_with("pg_stat_database_xact_commit{")));

    cluster.stop();
    let started = Instant::now();
    let series = harness.cycle().await;
    assert!(started.elapsed() < Duration::from_secs(3), "a stopped server is noticed within the timeout");
    assert_eq!(series.get("pg_up", &server), 0.0);
    assert_eq!(series.get("herd_collector_success", &[("collector", "postgres:main")]), 0.0);
    assert!(!series.0.keys().any(|s| s.starts_with("pg_stat_database_")), "nothing stale is repeated");

    cluster.start();
    let series = harness.cycle().await;
    assert_eq!(series.get("pg_up", &server), 1.0, "reconnects on the first cycle after the restart");
    assert_eq!(series.get("herd_collector_success", &[("collector", "postgres:main")]), 1.0);
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
    let mut harness =
        Harness::new(collector(&format!("dsn = \"postgres://herd@127.0.0.1:{port}/postgres\"\ntimeout = \"1s\"")));
    let started = Instant::now();
    let series = harness.cycle().await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(series.get("pg_up", &[("server", &format!("127.0.0.1:{port}"))]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_lag_on_a_standby_and_per_replica_on_the_primary() {
    let primary = Cluster::new();
    let standby = Cluster::standby_of(&primary);
    let admin = primary.client("postgres").await;
    admin.batch_execute("CREATE TABLE r (x int); INSERT INTO r VALUES (1)").await.unwrap();
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while number(&admin, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").await < 1.0 {
        assert!(Instant::now() < deadline, "the standby never streamed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dsn = |port: u16| format!("dsn = \"postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres\"");
    let mut on_standby = Harness::new(collector(&dsn(standby.port)));
    let mut on_primary = Harness::new(collector(&dsn(primary.port)));

    let series = on_standby.cycle().await;
    assert_eq!(series.get("pg_up", &[]), 1.0);
    assert_eq!(series.get("pg_replication_is_replica", &[]), 1.0);
    let lag = series.get("pg_replication_lag_seconds", &[]);
    let replica = standby.client("postgres").await;
    let sql_lag = number(
        &replica,
        "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
         ELSE GREATEST(0, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))) END",
    )
    .await;
    assert!((0.0..30.0).contains(&lag) && (lag - sql_lag).abs() < 1.0, "{lag} vs {sql_lag}");
    assert!(!series.0.keys().any(|s| s.starts_with("pg_stat_replication_")), "no replicas of a standby");

    let series = on_primary.cycle().await;
    assert_eq!(series.get("pg_replication_is_replica", &[]), 0.0);
    assert_eq!(series.get("pg_replication_lag_seconds", &[]), 0.0);
    let replay_lag = series.get("pg_stat_replication_replay_lag_seconds", &[("state", "streaming")]);
    assert!((0.0..30.0).contains(&replay_lag), "{replay_lag}");
    assert!(series.get("pg_stat_replication_pg_wal_lsn_diff", &[("state", "streaming")]) >= 0.0);
}

#[tokio::test]
async fn wrong_password_is_down_logged_once_and_never_printed() {
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pg-password");
    std::fs::write(&password_file, "not-the-password\n").unwrap();
    let mut harness = Harness::new(collector(&format!(
        "dsn = \"postgres://postgres@127.0.0.1:{}/postgres\"\npassword_file = \"{}\"",
        cluster.port,
        password_file.display()
    )));
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    for _ in 0..3 {
        let series = harness.cycle().await;
        assert_eq!(series.get("pg_up", &[]), 0.0);
    }
    // The right password in the file is picked up on the next cycle.
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    assert_eq!(harness.cycle().await.get("pg_up", &[]), 1.0);

    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logs.matches("collector failing").count(), 1, "{logs}");
    assert!(logs.contains("password authentication failed"), "{logs}");
    assert_eq!(logs.matches("collector recovered").count(), 1, "{logs}");
    assert!(!logs.contains("not-the-password") && !logs.contains(PASSWORD), "{logs}");
}

#[test]
fn a_config_file_readable_by_others_may_not_hold_a_password() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let base = "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n";
    let with_password = format!("{base}[[collect.postgres]]\ndsn = \"postgres://herd:{PASSWORD}@db:5432/postgres\"\n");
    std::fs::write(&path, &with_password).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = AgentConfig::load(&path, "db-1").unwrap_err().to_string();
    assert!(err.contains("collect.postgres[0].dsn: holds a password but the file is readable by others"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(AgentConfig::load(&path, "db-1").is_ok());
    // Without a password in it, a world-readable file is fine.
    std::fs::write(&path, format!("{base}[[collect.postgres]]\ndsn = \"postgres://herd@db:5432/postgres\"\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = AgentConfig::load(&path, "db-1").unwrap();
    assert!(!format!("{config:?}").contains("herd@db"), "the DSN is kept as a Secret");
}

/// Herd's series as exposition lines (`name{k="v", ...} value`).
fn herd_lines(series: &Series) -> Vec<String> {
    series.0.iter().map(|(text, value)| format!("{text} {value}")).collect()
}

/// Families Herd and postgres_exporter both produce must have the same label
/// sets (`server`, `instance` and `job` aside: the exporter's `pg_up` has no
/// `server`), and the slow-moving ones the same values within 2% (a few
/// counts of sessions and locks move by the scrapers' own queries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_series_as_postgres_exporter() {
    let binary =
        std::env::var("HERD_POSTGRES_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-postgres-exporter".to_owned());
    assert!(
        Path::new(&binary).exists(),
        "{binary} is missing: apt-get install -y prometheus-postgres-exporter (or set HERD_POSTGRES_EXPORTER)"
    );
    let cluster = Cluster::new();
    let admin = cluster.client("postgres").await;
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    let port = free_port();
    let dsn = format!("postgresql://postgres:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable", cluster.port);
    let _exporter = KillOnDrop(start_exporter(
        &binary,
        &[format!("--web.listen-address=127.0.0.1:{port}")],
        &[("DATA_SOURCE_NAME", dsn)],
        port,
    ));
    let mut harness = Harness::new(collector(&format!(
        "dsn = \"postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres\"",
        cluster.port
    )));
    harness.cycle().await; // Both scrapers now hold a connection.
    let herd = harness.cycle().await;
    let exporter_text = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
    let drop = ["server", "instance", "job"];
    let herd_lines = herd_lines(&herd);
    let ours = families(herd_lines.iter().map(String::as_str), &drop);
    let theirs = families(exporter_text.lines(), &drop);

    let shared: Vec<&String> = ours.keys().filter(|name| theirs.contains_key(*name)).collect();
    for family in [
        "pg_up",
        "pg_stat_database_numbackends",
        "pg_stat_database_xact_commit",
        "pg_stat_database_blks_hit",
        "pg_settings_max_connections",
        "pg_database_size_bytes",
        "pg_locks_count",
        "pg_stat_activity_count",
    ] {
        assert!(shared.iter().any(|name| *name == family), "{family} is not in both outputs");
    }
    let mut problems = Vec::new();
    for name in &shared {
        let (a, b) = (&ours[*name], &theirs[*name]);
        let (a_sets, b_sets): (Vec<&String>, Vec<&String>) = (a.keys().collect(), b.keys().collect());
        if a_sets != b_sets {
            problems.push(format!("{name}: label sets differ\n  herd:     {a_sets:?}\n  exporter: {b_sets:?}"));
            continue;
        }
        if name.as_str() == "pg_settings_extra_float_digits" {
            continue; // A per-session setting: each scraper's driver sets its own.
        }
        let slack = match name.as_str() {
            "pg_stat_database_numbackends" | "pg_stat_activity_count" => 1.0,
            "pg_locks_count" => 3.0,
            n if n.starts_with("pg_settings_") || n == "pg_database_size_bytes" || n == "pg_up" => 0.0,
            _ => continue, // Counters and timestamps move between the two reads.
        };
        for (labels, ours) in a {
            let theirs = b[labels];
            if (ours - theirs).abs() > slack && (ours - theirs).abs() > theirs.abs() * 0.02 {
                problems.push(format!("{name}{{{labels}}}: herd {ours}, exporter {theirs}"));
            }
        }
    }
    assert!(problems.is_empty(), "{} differences:\n{}", problems.len(), problems.join("\n"));
    assert!(shared.len() > 200, "only {} shared families", shared.len());
}

#[tokio::test]
async fn tls_verify_full_with_a_client_certificate_and_a_wrong_ca() {
    use herd_common::tls::{Role, generate_ca, issue, write_pair};
    let pki = tempfile::tempdir().unwrap();
    let ca = generate_ca("database CA").unwrap();
    write_pair(pki.path(), "ca", &ca, false).unwrap();
    write_pair(pki.path(), "client", &issue(&ca, Role::Agent, "postgres", &[]).unwrap(), false).unwrap();
    write_pair(pki.path(), "other-ca", &generate_ca("someone else").unwrap(), false).unwrap();
    let cluster = Cluster::new_with(|data| {
        let server = issue(&ca, Role::Server, "db.internal", &["127.0.0.1".into()]).unwrap();
        write_pair(data, "server", &server, false).unwrap();
        std::fs::write(data.join("root.pem"), &ca.cert_pem).unwrap();
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server-key.pem'\nssl_ca_file = 'root.pem'"
        )
        .unwrap();
        // TLS only, with a client certificate from the CA, plus the password.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n",
        )
        .unwrap();
    });
    let file = |name: &str| pki.path().join(name).display().to_string();
    let client_cert = format!("cert_file = \"{}\", key_file = \"{}\"", file("client.pem"), file("client-key.pem"));
    let entry = |name: &str, sslmode: &str, tls: String| {
        collector(&format!(
            "name = \"{name}\"\ndsn = \"postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres\"\nsslmode = \"{sslmode}\"\n\
             timeout = \"2s\"\nstatements_limit = 0\ntls = {{ {tls} }}",
            cluster.port
        ))
    };
    let admin = {
        // The test's own view, over the local socket (trust).
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(cluster.dir.path())
            .port(cluster.port)
            .user("postgres")
            .dbname("postgres")
            .connect(NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    };

    // verify-full: the chain against the CA, the IP address against the certificate.
    let mut full =
        Harness::new(entry("full", "verify-full", format!("ca_file = \"{}\", {client_cert}", file("ca.pem"))));
    let series = full.cycle().await;
    assert_eq!(series.get("pg_up", &[("server", "full")]), 1.0);
    let max_connections = number(&admin, "current_setting('max_connections')::int").await;
    assert_eq!(series.get("pg_settings_max_connections", &[("server", "full")]), max_connections);
    // The collector's session is encrypted and authenticated by its certificate.
    let ssl = number(
        &admin,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'herd-agent' AND s.ssl AND s.client_dn = '/CN=postgres/O=Herd'",
    )
    .await;
    assert_eq!(ssl, 1.0);
    // verify-full by name: the certificate's DNS name instead of the address.
    let mut by_name = Harness::new(entry(
        "by-name",
        "verify-full",
        format!("ca_file = \"{}\", {client_cert}, server_name = \"db.internal\"", file("ca.pem")),
    ));
    assert_eq!(by_name.cycle().await.get("pg_up", &[("server", "by-name")]), 1.0);
    // require: encrypted, any server certificate (libpq's meaning without a CA).
    let mut require = Harness::new(entry("require", "require", client_cert.clone()));
    assert_eq!(require.cycle().await.get("pg_up", &[("server", "require")]), 1.0);
    // require with a CA file: the chain is verified, the name is not (libpq's verify-ca).
    let mut require_ca = Harness::new(entry(
        "require-ca",
        "require",
        format!("ca_file = \"{}\", {client_cert}, server_name = \"other.internal\"", file("ca.pem")),
    ));
    assert_eq!(require_ca.cycle().await.get("pg_up", &[("server", "require-ca")]), 1.0);

    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut down = [
        Harness::new(entry(
            "wrong-ca",
            "verify-full",
            format!("ca_file = \"{}\", {client_cert}", file("other-ca.pem")),
        )),
        Harness::new(entry(
            "wrong-name",
            "verify-full",
            format!("ca_file = \"{}\", {client_cert}, server_name = \"other.internal\"", file("ca.pem")),
        )),
        Harness::new(entry("no-cert", "verify-full", format!("ca_file = \"{}\"", file("ca.pem")))),
        Harness::new(entry("plain", "disable", String::new())),
        Harness::new(entry(
            "require-wrong-ca",
            "require",
            format!("ca_file = \"{}\", {client_cert}", file("other-ca.pem")),
        )),
    ];
    for _ in 0..2 {
        for (harness, name) in down.iter_mut().zip(["wrong-ca", "wrong-name", "no-cert", "plain", "require-wrong-ca"]) {
            let series = harness.cycle().await;
            assert_eq!(series.get("pg_up", &[("server", name)]), 0.0, "{name}");
            assert!(!series.0.keys().any(|s| s.starts_with("pg_settings_")), "{name}");
        }
    }
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let failing: Vec<&str> = logs.lines().filter(|line| line.contains("collector failing")).collect();
    assert_eq!(failing.len(), 5, "one line per collector, not per cycle:\n{logs}");
    let line = |name: &str| *failing.iter().find(|l| l.contains(&format!("postgres:{name}"))).unwrap();
    assert!(
        line("wrong-ca").contains("invalid peer certificate") && line("wrong-ca").contains("UnknownIssuer"),
        "{logs}"
    );
    assert!(line("wrong-name").contains("not valid for name \"other.internal\""), "{logs}");
    assert!(line("no-cert").contains("certificate"), "{logs}");
    assert!(line("plain").contains("no encryption"), "{logs}");
    assert!(line("require-wrong-ca").contains("UnknownIssuer"), "{logs}");
    assert!(!logs.contains(PASSWORD), "the password never reaches a log: {logs}");
}
