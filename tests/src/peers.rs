//! Real peers from Debian's packages for the end-to-end tests: Prometheus,
//! VictoriaMetrics and node_exporter, each on a free loopback port with its
//! own temp directory, stopped when dropped. Also an aggregator started
//! with extra configuration, and readers of each peer's raw samples.
//!
//! A missing peer binary skips the test with a note, unless
//! `HERD_REQUIRE_PEERS=1`, which makes it fail.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value as Json;

use crate::{encode, free_tcp_port, http_get, wait_for};

/// Whether `binary` is on PATH; panics if it is not and `HERD_REQUIRE_PEERS=1`.
pub fn peer_available(binary: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("HERD_REQUIRE_PEERS").as_deref() != Ok("1"),
            "{binary} is not installed and HERD_REQUIRE_PEERS=1 (scripts/test.sh installs it)"
        );
        eprintln!("skipping: {binary} is not installed");
    }
    found
}

/// A peer server process: SIGKILLed when dropped, log printed if the test fails.
pub struct Peer {
    name: String,
    child: Child,
    log: PathBuf,
    pub port: u16,
}

impl Peer {
    fn spawn(name: &str, binary: &str, args: &[String], work: &Path, port: u16) -> Self {
        let log = work.join(format!("{name}.log"));
        let out = File::options().create(true).append(true).open(&log).expect("create peer log");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Self { name: name.to_owned(), child, log, port }
    }

    pub fn rss_bytes(&self) -> Option<u64> {
        crate::rss_of(self.child.id())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (a clean shutdown), then SIGKILL if it is still running after 10 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let gone = wait_for(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_))).then_some(()));
        if gone.is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    fn wait_ready(self, path: &str) -> Self {
        let url = format!("{}{path}", self.url());
        let ready = wait_for(Duration::from_secs(30), || http_get(&url).filter(|(status, _)| *status == 200));
        assert!(ready.is_some(), "{} not ready within 30 s:\n{}", self.name, self.log());
        self
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// Starts Prometheus with `config` (YAML) and its storage in `dir`; the
/// remote-write receiver is on. `port` 0 picks a free one.
pub fn start_prometheus(work: &Path, dir: &Path, config: &str, port: u16) -> Peer {
    let port = if port == 0 { free_tcp_port() } else { port };
    std::fs::create_dir_all(dir).expect("create Prometheus dir");
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write Prometheus config");
    let args = vec![
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--web.enable-remote-write-receiver".to_owned(),
        "--log.level=warn".to_owned(),
    ];
    Peer::spawn("prometheus", "prometheus", &args, work, port).wait_ready("/-/ready")
}

/// Starts Debian's Alertmanager with `config` (YAML) and its data in `dir`,
/// clustering off.
pub fn start_alertmanager(work: &Path, dir: &Path, config: &str) -> Peer {
    let port = free_tcp_port();
    std::fs::create_dir_all(dir).expect("create Alertmanager dir");
    let config_path = dir.join("alertmanager.yml");
    std::fs::write(&config_path, config).expect("write Alertmanager config");
    let args = vec![
        format!("--config.file={}", config_path.display()),
        format!("--storage.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--cluster.listen-address=".to_owned(),
        "--log.level=warn".to_owned(),
    ];
    Peer::spawn("alertmanager", "prometheus-alertmanager", &args, work, port).wait_ready("/-/ready")
}

/// Starts VictoriaMetrics with its storage in `dir`.
pub fn start_victoria_metrics(work: &Path, dir: &Path, port: u16) -> Peer {
    let port = if port == 0 { free_tcp_port() } else { port };
    let args = vec![
        format!("-httpListenAddr=127.0.0.1:{port}"),
        format!("-storageDataPath={}", dir.display()),
        "-loggerLevel=WARN".to_owned(),
        "-retentionPeriod=100y".to_owned(),
    ];
    Peer::spawn("victoria-metrics", "victoria-metrics", &args, work, port).wait_ready("/health")
}

/// Starts node_exporter with a few cheap collectors.
pub fn start_node_exporter(work: &Path) -> Peer {
    let port = free_tcp_port();
    let args = vec![
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--collector.disable-defaults".to_owned(),
        "--collector.loadavg".to_owned(),
        "--collector.meminfo".to_owned(),
        "--collector.cpu".to_owned(),
    ];
    Peer::spawn("node-exporter", "prometheus-node-exporter", &args, work, port).wait_ready("/metrics")
}

/// Raw samples, (timestamp ms, value), per series (labels rendered sorted).
pub type SeriesSamples = BTreeMap<String, Vec<(i64, f64)>>;

fn labels_key(metric: &Json) -> String {
    let mut pairs: Vec<String> = metric
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    pairs.sort();
    pairs.join(",")
}

/// Raw samples of `selector` over `range` ending at `time_s` (or now), from a
/// Prometheus-compatible `/api/v1/query` at `base` (Herd or Prometheus).
pub fn raw_samples(base: &str, selector: &str, range: &str, time_s: Option<f64>) -> SeriesSamples {
    let time = time_s.map(|t| format!("&time={t:.3}")).unwrap_or_default();
    let url = format!("{base}/api/v1/query?query={}{time}", encode(&format!("{selector}[{range}]")));
    let (status, body) = http_get(&url).unwrap_or_else(|| panic!("{base} unreachable"));
    assert_eq!(status, 200, "{url}: {body}");
    let json: Json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON ({e}): {body}"));
    let mut out = SeriesSamples::new();
    for series in json["data"]["result"].as_array().cloned().unwrap_or_default() {
        let samples = series["values"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|pair| Some(((pair[0].as_f64()? * 1000.0).round() as i64, parse_value(&pair[1])?)))
            .collect();
        out.insert(labels_key(&series["metric"]), samples);
    }
    out
}

fn parse_value(value: &Json) -> Option<f64> {
    match value.as_str()? {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        text => text.parse().ok(),
    }
}

/// Raw samples of the series matching `selector` from VictoriaMetrics's
/// `/api/v1/export` (after a flush, so just-written data is visible).
pub fn victoria_samples(vm: &Peer, selector: &str) -> SeriesSamples {
    let _ = http_get(&format!("{}/internal/force_flush", vm.url()));
    let url = format!("{}/api/v1/export?match[]={}", vm.url(), encode(selector));
    let (status, body) = http_get(&url).unwrap_or_else(|| panic!("VictoriaMetrics unreachable"));
    assert_eq!(status, 200, "{url}: {body}");
    let mut out = SeriesSamples::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let json: Json = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line ({e}): {line}"));
        let times = json["timestamps"].as_array().cloned().unwrap_or_default();
        let values = json["values"].as_array().cloned().unwrap_or_default();
        let mut samples: Vec<(i64, f64)> = times
            .iter()
            .zip(values.iter())
            .filter_map(|(t, v)| Some((t.as_i64()?, v.as_f64().or_else(|| parse_value(v))?)))
            .collect();
        samples.sort_by_key(|s| s.0);
        out.entry(labels_key(&json["metric"])).or_default().extend(samples);
    }
    out
}

/// Differences between two sample sets (values within a relative `tolerance`), for assertion messages.
pub fn differences(expected: &SeriesSamples, actual: &SeriesSamples, tolerance: f64) -> Vec<String> {
    let mut problems = Vec::new();
    for (series, want) in expected {
        let Some(got) = actual.get(series) else {
            problems.push(format!("{series}: missing ({} samples expected)", want.len()));
            continue;
        };
        if want.len() != got.len() {
            let missing: Vec<i64> = want.iter().map(|w| w.0).filter(|t| !got.iter().any(|g| g.0 == *t)).collect();
            let extra: Vec<i64> = got.iter().map(|g| g.0).filter(|t| !want.iter().any(|w| w.0 == *t)).collect();
            problems.push(format!(
                "{series}: {} samples expected, {} found; missing at {missing:?}, unexpected at {extra:?}",
                want.len(),
                got.len()
            ));
        }
        for (w, g) in want.iter().zip(got.iter()) {
            let same_value = (w.1.is_nan() && g.1.is_nan())
                || w.1 == g.1
                || (w.1 - g.1).abs() <= tolerance * w.1.abs().max(g.1.abs());
            if w.0 != g.0 || !same_value {
                problems.push(format!("{series}: expected {w:?}, found {g:?}"));
                break;
            }
        }
    }
    for series in actual.keys().filter(|s| !expected.contains_key(*s)) {
        problems.push(format!("{series}: unexpected series"));
    }
    problems
}

/// Keeps the samples with `from_ms <= t <= to_ms`, dropping series left empty.
pub fn window(samples: &SeriesSamples, from_ms: i64, to_ms: i64) -> SeriesSamples {
    samples
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().copied().filter(|&(t, _)| t >= from_ms && t <= to_ms).collect::<Vec<_>>()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}
