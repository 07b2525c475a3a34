//! Agent cost benchmark: CPU time per collection cycle, peak RSS, series and
//! startup of the real release `herd-agent` collecting the host, a real
//! PostgreSQL (one database with 55 tables, `pg_stat_statements` on) and a
//! real Redis (1,000 keys) and streaming to a real aggregator, next to
//! Debian's node_exporter, postgres_exporter and redis_exporter scraped with
//! `Accept-Encoding: gzip` at the same interval, in the same run.
//!
//!   cargo build --release -p herd-agent -p herd-aggregator -p herd-tests --bins
//!   target/release/bench-agent [RUNS [SECONDS_AT_1S [CYCLES_AT_10S [CONTAINERS]]]]
//!
//! Defaults: 5 runs per interval, 60 s windows at 1 s, 6 cycles at 10 s,
//! then one run with every collector on (host, CONTAINERS idle containers
//! (default 5; 0 skips Docker), PostgreSQL, Redis, a probe and a scrape job)
//! for the agent's peak RSS. Every run starts fresh processes (agent and
//! exporters), so peak RSS is per run.
//!
//! CPU is user + system time of each process and all its threads, exited
//! ones included: from a cpuacct cgroup per process (nanoseconds) when
//! /sys/fs/cgroup/cpuacct is writable, else from /proc/PID/stat (10 ms
//! ticks). Peak RSS is VmHWM. Prints medians and spreads (min to max) and
//! appends a report section to `HERD_BENCH_REPORT` if set; asserts nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_tests::servers::{PASSWORD, Postgres, Redis, secret_file};
use herd_tests::*;

const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";
const BUSYBOX_IMAGE: &str = "herd-test-busybox:latest";
const TABLES: usize = 55;
const REDIS_KEYS: usize = 1000;

/// CPU time of one process and its threads.
struct CpuMeter {
    pid: u32,
    cgroup: Option<PathBuf>,
}

impl CpuMeter {
    /// Moves `pid` into a cpuacct cgroup of its own, if the hierarchy is writable.
    fn attach(name: &str, pid: u32) -> Self {
        let dir = Path::new(CPUACCT).join(format!("herd-bench-{}-{name}", std::process::id()));
        let cgroup = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()))
            .ok()
            .map(|()| dir);
        Self { pid, cgroup }
    }

    fn seconds(&self) -> f64 {
        if let Some(usage) = self
            .cgroup
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.join("cpuacct.usage")).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
        {
            return usage / 1e9;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    fn precise(&self) -> bool {
        self.cgroup.is_some()
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        if let Some(dir) = &self.cgroup {
            // Empty once its process is gone.
            let _ = wait_for(Duration::from_secs(2), || std::fs::remove_dir(dir).ok());
        }
    }
}

/// Peak resident memory of `pid` in bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:") * 1024
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// An exporter process, killed when dropped.
struct Exporter {
    child: Child,
    port: u16,
    cpu: CpuMeter,
}

impl Exporter {
    fn start(name: &'static str, binary: &str, args: &[String], env: &[(&str, String)]) -> Self {
        let port = free_tcp_port();
        let mut command = Command::new(binary);
        command.arg(format!("--web.listen-address=127.0.0.1:{port}")).args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary}: {err} (apt-get install {binary})"));
        let cpu = CpuMeter::attach(&format!("{name}-{port}"), child.id());
        let exporter = Self { child, port, cpu };
        wait_for(Duration::from_secs(20), || scrape_gzip(exporter.port))
            .unwrap_or_else(|| panic!("{name} does not answer on port {port}"));
        exporter
    }

    /// Samples in one uncompressed scrape.
    fn series(&self) -> usize {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.port))
            .map_or(0, |(_, body)| body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /metrics with `Accept-Encoding: gzip`, as Prometheus scrapes; the
/// body's size if the answer is a gzip-encoded 200.
fn scrape_gzip(port: u16) -> Option<usize> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain;version=0.0.4\r\n\
              Accept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    (head.starts_with("http/1.1 200") && head.contains("content-encoding: gzip"))
        .then_some(response.len() - head_end - 4)
}

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct RunFigures {
    agent_ms_per_cycle: f64,
    exporters_ms_per_set: f64,
    node_ms: f64,
    postgres_ms: f64,
    redis_ms: f64,
    agent_peak: f64,
    agent_rss_end: f64,
    exporters_peak: f64,
    agent_series: f64,
    exporter_series: f64,
    /// Process start to the agent's first batch sent (its own log line), if it says.
    startup_ms: Option<f64>,
    /// Process start to its first sample being queryable at the aggregator.
    first_data_ms: f64,
    gzip_bytes: f64,
}

struct Fixture {
    work: tempfile::TempDir,
    pki: Pki,
    aggregator: Aggregator,
    postgres: Postgres,
    redis: Redis,
    password: PathBuf,
    precise: bool,
    heartbeat: &'static str,
}

impl Fixture {
    fn start() -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        let pki = Pki::create(work.path().join("pki"));
        // HERD_BENCH_TEST_HEARTBEAT=1: the tests' 1 s heartbeat, as the first version of this benchmark had.
        let aggregator = if std::env::var_os("HERD_BENCH_TEST_HEARTBEAT").is_some() {
            Aggregator::start(&pki, work.path())
        } else {
            Aggregator::start_with_default_heartbeat(&pki, work.path())
        };
        let heartbeat = if std::env::var_os("HERD_BENCH_TEST_HEARTBEAT").is_some() { "1 s" } else { "5 s (default)" };
        let postgres = Postgres::start_with(&["shared_preload_libraries=pg_stat_statements"]);
        postgres.psql("postgres", "CREATE DATABASE bench");
        postgres.psql(
            "bench",
            &format!(
                "CREATE EXTENSION pg_stat_statements; \
                 DO $$ BEGIN FOR i IN 1..{TABLES} LOOP \
                 EXECUTE format('CREATE TABLE t%s (id serial PRIMARY KEY, name text, at timestamptz DEFAULT now())', i); \
                 EXECUTE format('INSERT INTO t%s (name) SELECT md5(g::text) FROM generate_series(1, 200) g', i); \
                 EXECUTE format('SELECT count(*) FROM t%s WHERE name LIKE ''a%%''', i); \
                 END LOOP; END $$; ANALYZE;"
            ),
        );
        for i in 1..=20 {
            postgres.psql("bench", &format!("SELECT count(*), max(id) FROM t{i} WHERE id > {i}"));
        }
        let redis = Redis::start();
        let mut mset = vec!["MSET".to_owned()];
        for i in 0..REDIS_KEYS {
            mset.push(format!("key:{i}"));
            mset.push(format!("value-{i}-{}", "x".repeat(i % 32)));
        }
        let args: Vec<&str> = mset.iter().map(String::as_str).collect();
        let reply = redis.command(&args);
        assert!(reply.contains("+OK\r\n+OK"), "MSET failed: {reply}");
        let password = secret_file(&work.path().join("servers.password"), PASSWORD);
        let probe = CpuMeter::attach("probe", std::process::id());
        let precise = probe.precise();
        if precise {
            // Back to the root group: the bench's own CPU is not measured.
            let _ = std::fs::write(Path::new(CPUACCT).join("cgroup.procs"), std::process::id().to_string());
        }
        drop(probe);
        Self { work, pki, aggregator, postgres, redis, password, precise, heartbeat }
    }

    fn collectors(&self) -> String {
        format!(
            "[[collect.postgres]]\ndsn = \"{}\"\npassword_file = \"{}\"\nname = \"main\"\n\
             [[collect.redis]]\naddress = \"{}\"\npassword_file = \"{}\"\nname = \"cache\"\n",
            self.postgres.dsn("bench"),
            self.password.display(),
            self.redis.address(),
            self.password.display()
        )
    }

    fn exporters(&self) -> Vec<Exporter> {
        vec![
            Exporter::start("node_exporter", "/usr/bin/prometheus-node-exporter", &[], &[]),
            Exporter::start(
                "postgres_exporter",
                "/usr/bin/prometheus-postgres-exporter",
                &[],
                &[(
                    "DATA_SOURCE_NAME",
                    format!("postgresql://postgres:{PASSWORD}@127.0.0.1:{}/bench?sslmode=disable", self.postgres.port),
                )],
            ),
            Exporter::start(
                "redis_exporter",
                "/usr/bin/prometheus-redis-exporter",
                &[format!("--redis.addr=redis://{}", self.redis.address()), format!("--redis.password={PASSWORD}")],
                &[],
            ),
        ]
    }

    /// One run: a fresh agent with `tail` collectors at `interval` and fresh
    /// exporters scraped at the same interval, measured over `cycles` cycles.
    fn run(&self, id: &str, interval: Duration, cycles: u32, tail: &str, with_exporters: bool) -> RunFigures {
        self.pki.issue_agent(id);
        let interval_text = format!("{}ms", interval.as_millis());
        let config =
            agent_config_with(self.work.path(), &self.pki, id, &[self.aggregator.quic], &interval_text, "", tail);
        let spawned = Instant::now();
        let mut agent = start_agent(self.work.path(), id, &config);
        let agent_cpu = CpuMeter::attach(id, agent.pid());
        // The agent's own figure (its log line), and when its data is queryable.
        let selector = format!(r#"herd_collector_success{{instance="{id}"}}"#);
        let (mut startup_ms, mut first_data) = (None, None);
        wait_for(Duration::from_secs(30), || {
            if startup_ms.is_none() {
                let log = agent.log();
                startup_ms = log
                    .lines()
                    .find(|l| l.contains("first batch sent"))
                    .and_then(|line| line.split("startup_ms=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok());
            }
            if first_data.is_none() && !vector_result(&self.aggregator.query(&selector)).is_empty() {
                first_data = Some(spawned.elapsed());
            }
            let settled =
                first_data.is_some_and(|at| startup_ms.is_some() || spawned.elapsed() > at + Duration::from_secs(1));
            settled.then_some(())
        })
        .unwrap_or_else(|| panic!("agent {id} data never arrived:\n{}", agent.log()));
        let first_data = first_data.expect("settled");
        let exporters = if with_exporters { self.exporters() } else { Vec::new() };

        // Measure from the middle of the second cycle on, so connections are
        // made and the window holds exactly `cycles` collection cycles.
        let window_start = spawned + first_data + interval + interval / 2;
        sleep_until(window_start);
        let profilers = profile(id, agent.pid(), interval * cycles);
        let agent_cpu0 = agent_cpu.seconds();
        let exporter_cpu0: Vec<f64> = exporters.iter().map(|e| e.cpu.seconds()).collect();
        let mut gzip_bytes = 0usize;
        let mut scrapes = 0u32;
        for cycle in 0..cycles {
            sleep_until(window_start + interval * cycle + Duration::from_millis(50));
            let ports: Vec<u16> = exporters.iter().map(|e| e.port).collect();
            let handles: Vec<_> = ports.into_iter().map(|p| std::thread::spawn(move || scrape_gzip(p))).collect();
            let done: Vec<Option<usize>> = handles.into_iter().map(|h| h.join().ok().flatten()).collect();
            if done.iter().all(Option::is_some) {
                scrapes += 1;
                gzip_bytes += done.iter().flatten().sum::<usize>();
            }
        }
        sleep_until(window_start + interval * cycles);
        let agent_cpu = agent_cpu.seconds() - agent_cpu0;
        for mut profiler in profilers {
            let _ = profiler.wait();
        }
        let exporter_cpu: Vec<f64> = exporters.iter().zip(&exporter_cpu0).map(|(e, c0)| e.cpu.seconds() - c0).collect();
        let agent_peak = peak_rss(agent.pid()) as f64;
        let agent_rss_end = status_kb(agent.pid(), "VmRSS:") as f64 * 1024.0;
        let exporters_peak: f64 = exporters.iter().map(|e| peak_rss(e.child.id()) as f64).sum();
        let agent_series = latest_value(&self.aggregator, &format!(r#"count({{instance="{id}"}})"#)).unwrap_or(0.0);
        let exporter_series: usize = exporters.iter().map(Exporter::series).sum();
        agent.kill();
        drop(exporters);

        let per_scrape = |cpu: f64| cpu * 1000.0 / f64::from(scrapes.max(1));
        let by_name = |name: &str| {
            exporters_names()
                .iter()
                .position(|n| *n == name)
                .and_then(|i| exporter_cpu.get(i))
                .map_or(0.0, |&c| per_scrape(c))
        };
        RunFigures {
            agent_ms_per_cycle: agent_cpu * 1000.0 / f64::from(cycles),
            exporters_ms_per_set: per_scrape(exporter_cpu.iter().sum()),
            node_ms: by_name("node_exporter"),
            postgres_ms: by_name("postgres_exporter"),
            redis_ms: by_name("redis_exporter"),
            agent_peak,
            agent_rss_end,
            exporters_peak,
            agent_series,
            exporter_series: exporter_series as f64,
            startup_ms,
            first_data_ms: first_data.as_secs_f64() * 1000.0,
            gzip_bytes: gzip_bytes as f64 / f64::from(scrapes.max(1)),
        }
    }
}

/// With `HERD_BENCH_PROFILE=DIR`, `perf stat` (CPU, page faults, context
/// switches, thread creations, fsyncs) and `perf record` (sampled at 2 kHz,
/// or `HERD_BENCH_PROFILE_HZ`)
/// of the agent for `window`, into DIR/ID.stat and DIR/ID.data. They add a
/// little CPU to the agent's figures of those runs.
fn profile(id: &str, pid: u32, window: Duration) -> Vec<Child> {
    let Some(dir) = std::env::var_os("HERD_BENCH_PROFILE").map(PathBuf::from) else { return Vec::new() };
    let _ = std::fs::create_dir_all(&dir);
    let seconds = format!("{:.1}", window.as_secs_f64());
    let pid = pid.to_string();
    let stat = Command::new("perf")
        .args(["stat", "-e"])
        .arg("task-clock,page-faults,context-switches,syscalls:sys_enter_clone3,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_munmap,syscalls:sys_enter_madvise")
        .args(["-p", &pid, "-o"])
        .arg(dir.join(format!("{id}.stat")))
        .args(["--", "sleep", &seconds])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let frequency = std::env::var("HERD_BENCH_PROFILE_HZ").unwrap_or_else(|_| "2000".to_owned());
    let record = Command::new("perf")
        .args(["record", "-F", &frequency, "-p", &pid, "-o"])
        .arg(dir.join(format!("{id}.data")))
        .args(["--", "sleep", &seconds])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    [stat, record].into_iter().flatten().collect()
}

fn exporters_names() -> [&'static str; 3] {
    ["node_exporter", "postgres_exporter", "redis_exporter"]
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// Median and (min, max).
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    (median, sorted[0], sorted[n - 1])
}

fn cell(values: &[f64], digits: usize) -> String {
    let (median, min, max) = stats(values);
    format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
}

fn imports_busybox() -> bool {
    let present = Command::new("docker")
        .args(["image", "inspect", BUSYBOX_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return true;
    }
    let Ok(rootfs) = tempfile::tempdir() else { return false };
    let bin = rootfs.path().join("bin");
    let made = std::fs::create_dir_all(&bin)
        .and_then(|()| std::fs::copy("/bin/busybox", bin.join("busybox")))
        .and_then(|_| std::os::unix::fs::symlink("busybox", bin.join("sleep")))
        .and_then(|()| std::os::unix::fs::symlink("busybox", bin.join("sh")));
    made.is_ok()
        && Command::new("sh")
            .arg("-c")
            .arg(format!("tar -C {} -c . | docker import - {BUSYBOX_IMAGE}", rootfs.path().display()))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn main() {
    let arg = |i: usize, default: u64| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let runs = arg(1, 5) as usize;
    let seconds_at_1s = arg(2, 60) as u32;
    let cycles_at_10s = arg(3, 6) as u32;
    let containers = arg(4, 5) as usize;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();

    let fixture = Fixture::start();
    let tail = fixture.collectors();
    let binary_bytes = std::fs::metadata(bin("herd-agent")).map_or(0, |m| m.len());
    let mut sections = Vec::new();
    for (interval, cycles) in [(Duration::from_secs(10), cycles_at_10s), (Duration::from_secs(1), seconds_at_1s)] {
        let mut figures = Vec::new();
        for run in 0..runs {
            let id = format!("bench-{}s-{run}", interval.as_secs());
            let f = fixture.run(&id, interval, cycles, &tail, true);
            println!(
                "{id}: herd-agent {:.3} ms/cycle, exporters {:.2} ms/set (node {:.2}, postgres {:.2}, redis {:.2}), \
                 peak RSS {:.1} MiB vs {:.1} MiB, series {} vs {}, startup {:?} ms, first data {:.0} ms",
                f.agent_ms_per_cycle,
                f.exporters_ms_per_set,
                f.node_ms,
                f.postgres_ms,
                f.redis_ms,
                mib(f.agent_peak),
                mib(f.exporters_peak),
                f.agent_series,
                f.exporter_series,
                f.startup_ms,
                f.first_data_ms
            );
            figures.push(f);
        }
        sections.push((interval, cycles, figures));
    }

    // Every collector on, for the agent's peak RSS.
    let mut all_tail = tail.clone();
    let scrape_target = format!("127.0.0.1:{}", fixture.aggregator.http.port());
    all_tail.push_str(&format!(
        "[[collect.scrape]]\njob = \"aggregator\"\nurl = \"http://{scrape_target}/metrics\"\n\
         [[collect.probe]]\ntarget = \"tcp://{}\"\n",
        fixture.redis.address()
    ));
    let names: Vec<String> = (0..containers).map(|i| format!("herd-bench-{}-{i}", std::process::id())).collect();
    let docker_ok = containers > 0 && imports_busybox();
    if docker_ok {
        for name in &names {
            let _ = Command::new("docker")
                .args(["run", "-d", "--name", name, BUSYBOX_IMAGE, "sleep", "3600"])
                .stdout(Stdio::null())
                .status();
        }
        all_tail.push_str("[collect.containers]\nenabled = true\n");
    }
    let mut all = Vec::new();
    for run in 0..runs.min(3) {
        let f = fixture.run(&format!("bench-all-{run}"), Duration::from_secs(1), 20, &all_tail, false);
        println!(
            "bench-all-{run}: herd-agent {:.3} ms/cycle, peak RSS {:.1} MiB, {} series",
            f.agent_ms_per_cycle,
            mib(f.agent_peak),
            f.agent_series
        );
        all.push(f);
    }
    for name in &names {
        let _ = Command::new("docker").args(["rm", "-f", name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }

    let mut report = format!(
        "## herd-agent footprint vs node_exporter + postgres_exporter + redis_exporter\n\n\
         Measured {date} with `{command}` (release build; defaults: 5 runs per interval, 60 s at 1 s, \
         6 cycles at 10 s). Median (min–max) over the runs; each run starts a fresh agent and fresh exporters. \
         herd-agent binary: {:.1} MiB. CPU from {}. Aggregator heartbeat interval: {}.\n\n\
         | interval | herd-agent CPU per cycle | exporters per scrape set | ratio | µs per Herd series | \
         herd-agent peak RSS | exporters summed | ratio | series (Herd / exporters) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        mib(binary_bytes as f64),
        if fixture.precise { "a cpuacct cgroup per process (ns)" } else { "/proc/PID/stat (10 ms ticks)" },
        fixture.heartbeat
    );
    let mut detail = String::from(
        "\n| interval | node_exporter ms/scrape | postgres_exporter ms/scrape | redis_exporter ms/scrape | \
         gzip bytes per scrape set | herd-agent RSS at end | startup to first batch sent | start to first sample queryable |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (interval, _, figures) in &sections {
        let col = |f: fn(&RunFigures) -> f64| figures.iter().map(f).collect::<Vec<f64>>();
        let ratio_cpu = col(|f| f.agent_ms_per_cycle / f.exporters_ms_per_set);
        let ratio_rss = col(|f| f.agent_peak / f.exporters_peak);
        let per_series = col(|f| f.agent_ms_per_cycle * 1000.0 / f.agent_series.max(1.0));
        let startup: Vec<f64> = figures.iter().filter_map(|f| f.startup_ms).collect();
        report.push_str(&format!(
            "| {} s | {} ms | {} ms | {} | {} | {} MiB | {} MiB | {} | {:.0} / {:.0} |\n",
            interval.as_secs(),
            cell(&col(|f| f.agent_ms_per_cycle), 2),
            cell(&col(|f| f.exporters_ms_per_set), 1),
            cell(&ratio_cpu, 3),
            cell(&per_series, 2),
            cell(&col(|f| mib(f.agent_peak)), 1),
            cell(&col(|f| mib(f.exporters_peak)), 1),
            cell(&ratio_rss, 3),
            stats(&col(|f| f.agent_series)).0,
            stats(&col(|f| f.exporter_series)).0,
        ));
        detail.push_str(&format!(
            "| {} s | {} | {} | {} | {} | {} MiB | {} | {} ms |\n",
            interval.as_secs(),
            cell(&col(|f| f.node_ms), 2),
            cell(&col(|f| f.postgres_ms), 2),
            cell(&col(|f| f.redis_ms), 2),
            cell(&col(|f| f.gzip_bytes), 0),
            cell(&col(|f| mib(f.agent_rss_end)), 1),
            if startup.is_empty() { "not logged".to_owned() } else { format!("{} ms", cell(&startup, 0)) },
            cell(&col(|f| f.first_data_ms), 0),
        ));
    }
    report.push_str(&detail);
    if !all.is_empty() {
        let col = |f: fn(&RunFigures) -> f64| all.iter().map(f).collect::<Vec<f64>>();
        report.push_str(&format!(
            "\nEvery collector on at 1 s (host, {} idle containers, PostgreSQL, Redis, a TCP probe, a scrape job of \
             the aggregator's /metrics), {} runs of 20 s: herd-agent peak RSS {} MiB, CPU {} ms per cycle, {:.0} series.\n",
            if docker_ok { containers } else { 0 },
            all.len(),
            cell(&col(|f| mib(f.agent_peak)), 1),
            cell(&col(|f| f.agent_ms_per_cycle), 2),
            stats(&col(|f| f.agent_series)).0,
        ));
    }
    report.push_str(
        "\nLike for like: the same host, database (55 tables, pg_stat_statements) and Redis (1,000 keys), the same \
         interval, measured over the same window. Unlike: the exporters run Debian's default collectors and \
         expose more series (postgres_exporter's per-table statistics, node_exporter's many collectors), and \
         their cost includes gzip of each scrape; Herd's includes its TLS/QUIC delivery and its durable buffer, \
         which the exporters do not have. The machine (2 cores) was shared with parallel builds: figures are noisy.\n",
    );
    bench_report(&report);
}
