//! https scrape jobs and probes against a real HTTPS endpoint: Debian's
//! node_exporter started with a `--web.config.file` whose
//! `tls_server_config` uses certificates the test generates, requiring a
//! client certificate from the same CA. Also: per-job scrape intervals
//! against the same target, and `up` for a target that is down.
//!
//! Needs `/usr/bin/prometheus-node-exporter` (`HERD_NODE_EXPORTER` names
//! another binary); `scripts/test.sh` installs it. A missing binary fails
//! the test, it does not skip it.

mod common;

use common::*;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_agent::collect::probe::ProbeCollector;
use herd_agent::collect::scrape::ScrapeCollector;
use herd_agent::collect::{Collector, Scheduler, SharedSeriesTable};
use herd_common::config::agent::AgentConfig;
use herd_common::metric::is_stale;
use herd_common::tls::{PemPair, Role, generate_ca, issue, write_pair};

/// Certificates in a temp dir: the server's CA, the server, a client, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca("exporters").unwrap();
        write_pair(dir.path(), "ca", &ca, false).unwrap();
        let server = issue(&ca, Role::Server, "localhost", &["127.0.0.1".into()]).unwrap();
        write_pair(dir.path(), "server", &server, false).unwrap();
        let client = issue(&ca, Role::Agent, "herd-agent", &[]).unwrap();
        write_pair(dir.path(), "client", &client, false).unwrap();
        let other: PemPair = generate_ca("someone else").unwrap();
        write_pair(dir.path(), "other-ca", &other, false).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// node_exporter on https, requiring a client certificate signed by the CA.
fn start_exporter(pki: &Pki) -> (KillOnDrop, u16) {
    let binary = std::env::var("HERD_NODE_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-node-exporter".to_owned());
    let web_config = pki.path("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            pki.path("server.pem").display(),
            pki.path("server-key.pem").display(),
            pki.path("ca.pem").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(&binary)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--web.config.file={}", web_config.display()))
        .args(["--collector.disable-defaults", "--collector.loadavg", "--collector.time"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err} (apt-get install -y prometheus-node-exporter)"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "node_exporter did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (KillOnDrop(child), port)
}

fn tls_table(pki: &Pki, ca: &str, client: bool, extra: &str) -> String {
    let client = if client {
        format!(
            ", cert_file = \"{}\", key_file = \"{}\"",
            pki.path("client.pem").display(),
            pki.path("client-key.pem").display()
        )
    } else {
        String::new()
    };
    format!("tls = {{ ca_file = \"{}\"{client}{extra} }}", pki.path(ca).display())
}

fn config(collect: &str, entries: &str) -> AgentConfig {
    let text = format!(
        "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
         [collect]\n{collect}\n[collect.host]\nenabled = false\n{entries}"
    );
    AgentConfig::from_toml("agent.toml", &text, None, "web-1").unwrap()
}

fn collectors(config: &AgentConfig) -> Vec<Arc<dyn Collector>> {
    let scrapes = config.collect.scrape.iter().map(|s| Arc::new(ScrapeCollector::from_config(s)) as Arc<dyn Collector>);
    let probes = config.collect.probe.iter().map(|p| Arc::new(ProbeCollector::from_config(p)) as Arc<dyn Collector>);
    scrapes.chain(probes).collect()
}

fn scheduler(
    config: &AgentConfig,
    table: &SharedSeriesTable,
) -> (Scheduler, tokio::sync::mpsc::Receiver<herd_common::protocol::SampleBatch>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let scheduler = Scheduler::new(
        collectors(config),
        config.collect.interval,
        config.collect.timeout,
        Arc::clone(table),
        vec![("instance".into(), "web-1".into())],
        1,
        tx,
    );
    (scheduler, rx)
}

#[tokio::test]
async fn https_scrape_and_probe_with_client_certificates_and_a_wrong_ca() {
    let pki = Pki::new();
    let (_exporter, port) = start_exporter(&pki);
    let url = format!("https://127.0.0.1:{port}/metrics");
    let down = free_port();
    let entries = format!(
        "[[collect.scrape]]\njob = \"tls-node\"\nurl = \"{url}\"\n{}\n\
         [[collect.scrape]]\njob = \"wrong-ca\"\nurl = \"{url}\"\n{}\n\
         [[collect.scrape]]\njob = \"no-client-cert\"\nurl = \"{url}\"\n{}\n\
         [[collect.scrape]]\njob = \"down\"\nurl = \"http://127.0.0.1:{down}/metrics\"\nlabels = {{ team = \"ops\" }}\n\
         [[collect.probe]]\ntarget = \"{url}\"\n{}\n\
         [[collect.probe]]\ntarget = \"https://localhost:{port}/metrics\"\n{}\n\
         [[collect.probe]]\ntarget = \"https://127.0.0.1:{port}/\"\n{}\n",
        tls_table(&pki, "ca.pem", true, ""),
        tls_table(&pki, "other-ca.pem", true, ""),
        tls_table(&pki, "ca.pem", false, ""),
        tls_table(&pki, "ca.pem", true, ""),
        tls_table(&pki, "other-ca.pem", true, ""),
        tls_table(&pki, "other-ca.pem", true, ", insecure_skip_verify = true"),
    );
    let config = config("interval = \"10s\"\ntimeout = \"5s\"", &entries);
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let table: SharedSeriesTable = Arc::default();
    let (mut scheduler, _rx) = scheduler(&config, &table);
    scheduler.cycle().await;
    let batch = scheduler.cycle().await;
    let series: BTreeMap<String, f64> = {
        let table = table.lock().unwrap();
        batch
            .samples
            .iter()
            .filter(|(_, v)| !is_stale(*v))
            .map(|(id, v)| (table.labels(*id).unwrap().to_string(), *v))
            .collect()
    };
    let get = |key: &str| -> f64 {
        *series
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from:\n{}", series.keys().cloned().collect::<Vec<_>>().join("\n")))
    };

    // The verified, mutually authenticated scrape gets node_exporter's metrics.
    assert_eq!(get(r#"up{instance="web-1", job="tls-node"}"#), 1.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let scraped_time = get(r#"node_time_seconds{instance="web-1", job="tls-node"}"#);
    assert!((scraped_time - now).abs() < 5.0, "{scraped_time} vs {now}");
    let scraped = get(r#"scrape_samples_scraped{instance="web-1", job="tls-node"}"#);
    let node_series = series
        .keys()
        .filter(|k| k.contains(r#"job="tls-node""#))
        .filter(|k| !k.starts_with("herd_") && !k.starts_with("scrape_") && !k.starts_with("up{"))
        .count();
    assert_eq!(scraped, node_series as f64, "every sample scraped is kept");
    assert!(get(r#"scrape_duration_seconds{instance="web-1", job="tls-node"}"#) > 0.0);

    // A CA that did not sign the server, or no client certificate: up 0, nothing else from the job.
    for job in ["wrong-ca", "no-client-cert"] {
        assert_eq!(get(&format!(r#"up{{instance="web-1", job="{job}"}}"#)), 0.0, "{job}");
        assert_eq!(get(&format!(r#"scrape_samples_scraped{{instance="web-1", job="{job}"}}"#)), 0.0, "{job}");
        assert_eq!(
            get(&format!(r#"herd_collector_success{{collector="scrape:{job}", instance="web-1", job="{job}"}}"#)),
            0.0
        );
        assert!(!series.keys().any(|k| k.starts_with("node_") && k.contains(&format!(r#"job="{job}""#))));
    }
    // A refused connection: up 0, with the job's static labels as Prometheus puts them.
    assert_eq!(get(r#"up{instance="web-1", job="down", team="ops"}"#), 0.0);

    let probe = |target: &str, metric: &str| {
        get(&format!(r#"{metric}{{instance="web-1", job="blackbox", target="{target}"}}"#))
    };
    assert_eq!(probe(&url, "probe_success"), 1.0);
    assert_eq!(probe(&url, "probe_http_status_code"), 200.0);
    let wrong = format!("https://localhost:{port}/metrics");
    assert_eq!(probe(&wrong, "probe_success"), 0.0);
    assert_eq!(probe(&wrong, "probe_http_status_code"), 0.0);
    // insecure_skip_verify: the handshake completes (the client certificate still counts).
    let skip = format!("https://127.0.0.1:{port}/");
    assert_eq!(probe(&skip, "probe_success"), 1.0);
    assert_eq!(probe(&skip, "probe_http_status_code"), 200.0);

    // Two cycles, one line per failing target: the wrong CA is named as such.
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let probe_lines: Vec<&str> = logs.lines().filter(|l| l.contains("probe failing")).collect();
    assert_eq!(probe_lines.len(), 1, "{logs}");
    assert!(probe_lines[0].contains(&wrong) && probe_lines[0].contains("UnknownIssuer"), "{logs}");
    let scrape_lines: Vec<&str> = logs.lines().filter(|l| l.contains("collector failing")).collect();
    assert_eq!(scrape_lines.len(), 3, "wrong-ca, no-client-cert, down: {logs}");
    let wrong_ca = scrape_lines.iter().find(|l| l.contains("scrape:wrong-ca")).unwrap();
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
}

/// The timestamps of the batches that carry `up{job}`.
fn runs_of(batches: &[(i64, Vec<String>)], job: &str) -> Vec<i64> {
    let key = format!(r#"up{{instance="web-1", job="{job}"}}"#);
    batches.iter().filter(|(_, keys)| keys.contains(&key)).map(|(ts, _)| *ts).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_its_own_interval_is_scraped_at_that_interval() {
    let pki = Pki::new();
    let (_exporter, port) = start_exporter(&pki);
    let url = format!("https://127.0.0.1:{port}/metrics");
    let tls = tls_table(&pki, "ca.pem", true, "");
    let entries = format!(
        "[[collect.scrape]]\njob = \"fast\"\nurl = \"{url}\"\ninterval = \"500ms\"\n{tls}\n\
         [[collect.scrape]]\njob = \"default\"\nurl = \"{url}\"\n{tls}\n"
    );
    let config = config("interval = \"1500ms\"\ntimeout = \"1s\"", &entries);
    assert_eq!(config.collect.scrape[0].interval, Duration::from_millis(500));
    assert_eq!(config.collect.scrape[1].interval, Duration::from_millis(1500));
    let table: SharedSeriesTable = Arc::default();
    let (scheduler, mut rx) = scheduler(&config, &table);
    assert_eq!(scheduler.tick(), Duration::from_millis(500));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(scheduler.run(shutdown.clone()));
    let mut batches = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3300);
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let table = table.lock().unwrap();
        let keys: Vec<String> = batch.samples.iter().map(|(id, _)| table.labels(*id).unwrap().to_string()).collect();
        // Neither job's series goes stale in the ticks where only the other ran.
        assert!(!batch.samples.iter().any(|(_, v)| is_stale(*v)), "nothing disappeared");
        batches.push((batch.timestamp_ms, keys));
    }
    shutdown.cancel();
    task.await.unwrap();
    let fast = runs_of(&batches, "fast");
    let default = runs_of(&batches, "default");
    // 0, 0.5, ... 3.0 s and 0, 1.5, 3.0 s.
    assert_eq!((fast.len(), default.len()), (7, 3), "fast at {fast:?}, default at {default:?}");
    for (runs, every) in [(&fast, 500), (&default, 1500)] {
        for pair in runs.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((every - 150..=every + 150).contains(&gap), "gap {gap} ms, expected {every} ms: {runs:?}");
        }
    }
}
