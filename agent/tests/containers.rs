//! The containers collector against the machine's real Docker engine: real
//! containers from a local busybox image (no registry needed), read through
//! the scheduler as the agent runs it.
//!
//! Needs Docker and Debian's busybox-static (`scripts/test.sh` installs it);
//! builds the image `herd-test-busybox:latest` from it when missing. Every
//! container is named per test run and removed by a guard, even on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_agent::collect::containers::ContainersCollector;
use herd_agent::collect::{Collector, Scheduler, SharedSeriesTable};
use herd_common::config::agent::ContainersConfig;
use herd_common::metric::is_stale;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "herd-test-busybox:latest";
const BUSYBOX: &str = "/bin/busybox";
/// Applets the test containers use, linked to busybox in the image.
const APPLETS: [&str; 6] = ["sh", "dd", "sleep", "cat", "head", "tail"];
/// What the CPU burner may use: a quarter core, so the expected rate holds
/// on a busy two-core machine too.
const BURNER_CPUS: f64 = 0.25;
const HELD_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker CLI runs (is Docker installed?)");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Imports a one-binary busybox image unless it is there already.
fn ensure_image() {
    let present =
        Command::new("docker").args(["image", "inspect", IMAGE]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if present.is_ok_and(|s| s.success()) {
        return;
    }
    assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} missing: apt-get install busybox-static");
    let rootfs = tempfile::tempdir().unwrap();
    let bin = rootfs.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let mut tar =
        Command::new("tar").arg("-C").arg(rootfs.path()).args(["-c", "."]).stdout(Stdio::piped()).spawn().unwrap();
    let import = Command::new("docker")
        .args(["import", "-", IMAGE])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("docker import runs");
    assert!(tar.wait().unwrap().success());
    assert!(import.status.success(), "docker import: {}", String::from_utf8_lossy(&import.stderr));
}

/// A container removed (with `docker rm -f`) when dropped.
struct Container {
    name: String,
}

impl Container {
    fn run(suffix: &str, options: &[&str], command: &str) -> Self {
        ensure_image();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let name = format!("herd-test-{}-{nanos}-{suffix}", std::process::id());
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(options);
        args.extend_from_slice(&[IMAGE, "sh", "-c", command]);
        docker(&args);
        Self { name }
    }

    fn remove(&self) {
        docker(&["rm", "-f", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ =
            Command::new("docker").args(["rm", "-f", &self.name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn config(docker_socket: &str) -> ContainersConfig {
    ContainersConfig {
        docker_socket: PathBuf::from(docker_socket),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        sysfs_root: PathBuf::from("/sys"),
        procfs_root: PathBuf::from("/proc"),
        label_allowlist: vec!["com.example.team".into()],
    }
}

const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The collector under the real scheduler; each cycle rendered as `(series, value)`.
struct Harness {
    scheduler: Scheduler,
    table: SharedSeriesTable,
    _shutdown: CancellationToken,
}

impl Harness {
    fn new(config: &ContainersConfig) -> Self {
        let shutdown = CancellationToken::new();
        let collector: Arc<dyn Collector> = Arc::new(ContainersCollector::start(config, shutdown.clone()));
        let table = SharedSeriesTable::default();
        let (tx, _rx) = mpsc::channel(1);
        let scheduler = Scheduler::new(
            vec![collector],
            Duration::from_secs(1),
            Duration::from_secs(5),
            Arc::clone(&table),
            vec![("instance".into(), "test-host".into())],
            0,
            tx,
        );
        Self { scheduler, table, _shutdown: shutdown }
    }

    async fn cycle(&mut self) -> Vec<(String, f64)> {
        let batch = self.scheduler.cycle().await;
        let table = self.table.lock().unwrap();
        batch.samples.iter().map(|&(id, value)| (table.labels(id).unwrap().to_string(), value)).collect()
    }

    /// Cycles (every 200ms) until `done` holds for one, for at most `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&[(String, f64)]) -> bool,
    ) -> Vec<(String, f64)> {
        let deadline = Instant::now() + limit;
        loop {
            let samples = self.cycle().await;
            if done(&samples) {
                return samples;
            }
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}; last cycle:\n{samples:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The live value of `metric` for container `name`.
fn value(samples: &[(String, f64)], metric: &str, name: &str) -> Option<f64> {
    let (metric_prefix, name_label) = (format!("{metric}{{"), format!("name=\"{name}\""));
    samples.iter().find(|(s, v)| s.starts_with(&metric_prefix) && s.contains(&name_label) && !is_stale(*v)).map(|s| s.1)
}

fn series_of<'a>(samples: &'a [(String, f64)], name: &str) -> Vec<&'a (String, f64)> {
    let name_label = format!("name=\"{name}\"");
    samples.iter().filter(|(s, _)| s.contains(&name_label)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_container_has_cadvisors_series_until_it_is_removed() {
    let cpus = BURNER_CPUS.to_string();
    // Fills a tmpfs (charged to the container's memory cgroup) with exactly
    // 64 MiB, then spins.
    let burner = Container::run(
        "burner",
        &["--cpus", &cpus, "--tmpfs", "/held:size=128m", "--label", "com.example.team=edge", "--label", "secret=x"],
        "dd if=/dev/zero of=/held/fill bs=1M count=64 2>/dev/null; while :; do :; done",
    );
    let full_id = docker(&["inspect", "-f", "{{.Id}}", &burner.name]);
    let mut harness = Harness::new(&config(DOCKER_SOCKET));
    // Until the memory is held (dd done) and the container's counters are read.
    let samples = harness
        .until(Duration::from_secs(30), "the burner's memory series", |samples| {
            value(samples, "container_memory_working_set_bytes", &burner.name).is_some_and(|v| v >= HELD_BYTES)
        })
        .await;

    let (cpu_series, _) = samples
        .iter()
        .find(|(s, _)| s.starts_with("container_cpu_usage_seconds_total{") && s.contains(&burner.name))
        .expect("cpu series");
    for label in [
        format!("id=\"/docker/{full_id}\""),
        format!("image=\"{IMAGE}\""),
        format!("name=\"{}\"", burner.name),
        "container_label_com_example_team=\"edge\"".into(),
        "cpu=\"total\"".into(),
        "job=\"cadvisor\"".into(),
        "instance=\"test-host\"".into(),
    ] {
        assert!(cpu_series.contains(&label), "{label} in {cpu_series}");
    }
    assert!(!cpu_series.contains("secret"), "labels off the allow-list stay off: {cpu_series}");
    let ours = series_of(&samples, &burner.name);
    for metric in [
        "container_cpu_user_seconds_total",
        "container_cpu_system_seconds_total",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_spec_memory_limit_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_packets_total",
        "container_start_time_seconds",
        "container_restart_count",
        "container_state",
    ] {
        assert!(ours.iter().any(|(s, _)| s.starts_with(&format!("{metric}{{"))), "{metric} missing in {ours:#?}");
    }
    assert!(
        ours.iter().any(|(s, v)| s.contains("interface=\"eth0\"") && s.starts_with("container_network") && *v >= 0.0)
    );
    let running = ours.iter().find(|(s, _)| s.starts_with("container_state{") && s.contains("state=\"running\""));
    assert_eq!(running.map(|s| s.1), Some(1.0), "{ours:#?}");
    let started = value(&samples, "container_start_time_seconds", &burner.name).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 60.0..=now).contains(&started), "start time {started} vs now {now}");

    // Memory: what the tmpfs holds, plus the shell's few pages.
    let working_set = value(&samples, "container_memory_working_set_bytes", &burner.name).unwrap();
    let usage = value(&samples, "container_memory_usage_bytes", &burner.name).unwrap();
    println!("memory: working set {working_set} bytes, usage {usage} bytes, held {HELD_BYTES} bytes");
    assert!((working_set / HELD_BYTES - 1.0).abs() <= 0.10, "working set {working_set} vs {HELD_BYTES}");

    // CPU: the quota's rate over a few seconds of wall time.
    let first = value(&samples, "container_cpu_usage_seconds_total", &burner.name).unwrap();
    let first_at = Instant::now();
    // A measurement window, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let samples = harness.cycle().await;
    let elapsed = first_at.elapsed().as_secs_f64();
    let second = value(&samples, "container_cpu_usage_seconds_total", &burner.name).unwrap();
    let rate = (second - first) / elapsed;
    println!("cpu: {rate:.3} cores measured over {elapsed:.2}s, {BURNER_CPUS} expected");
    assert!((rate / BURNER_CPUS - 1.0).abs() <= 0.20, "cpu rate {rate} vs {BURNER_CPUS}");

    // Removed: its series are marked stale once, then gone.
    let live_series = series_of(&samples, &burner.name).len();
    burner.remove();
    let samples = harness
        .until(Duration::from_secs(15), "stale markers for the removed container", |samples| {
            let ours = series_of(samples, &burner.name);
            !ours.is_empty() && ours.iter().all(|(_, v)| is_stale(*v))
        })
        .await;
    assert_eq!(series_of(&samples, &burner.name).len(), live_series, "every series marked stale");
    let samples = harness.cycle().await;
    assert!(series_of(&samples, &burner.name).is_empty(), "{:#?}", series_of(&samples, &burner.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_by_the_restart_policy_raise_the_restart_count() {
    let crasher = Container::run("crasher", &["--restart", "always"], "sleep 1; exit 3");
    let mut harness = Harness::new(&config(DOCKER_SOCKET));
    let mut seen = Vec::new();
    harness
        .until(Duration::from_secs(40), "two restarts", |samples| {
            if let Some(count) = value(samples, "container_restart_count", &crasher.name)
                && seen.last() != Some(&count)
            {
                seen.push(count);
            }
            seen.last().is_some_and(|&count| count >= 2.0)
        })
        .await;
    println!("restart counts seen: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "restart count only rises: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_docker_socket_is_a_failing_collector_not_a_crash() {
    let mut harness = Harness::new(&config("/nonexistent/docker.sock"));
    let samples = harness
        .until(Duration::from_secs(10), "the collector reported failing", |samples| {
            samples
                .iter()
                .any(|(s, v)| s.starts_with("herd_collector_success{") && s.contains("containers") && *v == 0.0)
        })
        .await;
    assert!(samples.iter().all(|(s, _)| !s.starts_with("container_")), "{samples:#?}");
    // Still failing, and still cycling, a moment later.
    let samples = harness.cycle().await;
    assert!(samples.iter().any(|(s, v)| s.starts_with("herd_collector_success{") && *v == 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_api_fills_in_when_cgroup_files_cannot_be_read() {
    let sleeper = Container::run("sleeper", &[], "sleep 600");
    // Roots with nothing in them, as for an agent in a container without the host's mounts.
    let empty = tempfile::tempdir().unwrap();
    let config = ContainersConfig {
        cgroup_root: empty.path().join("cgroup"),
        sysfs_root: empty.path().join("sys"),
        procfs_root: empty.path().join("proc"),
        ..config(DOCKER_SOCKET)
    };
    let mut harness = Harness::new(&config);
    let samples = harness
        .until(Duration::from_secs(30), "the sleeper's counters from the stats API", |samples| {
            value(samples, "container_memory_usage_bytes", &sleeper.name).is_some()
        })
        .await;
    assert!(value(&samples, "container_cpu_usage_seconds_total", &sleeper.name).is_some());
    assert!(value(&samples, "container_network_receive_bytes_total", &sleeper.name).is_some(), "{samples:#?}");
}
