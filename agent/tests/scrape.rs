//! Scrape jobs against a real exporter: Debian's node_exporter on a free
//! loopback port (only its loadavg and time collectors), scraped in-process
//! through the library's scheduler; plus a target that is down. Values must
//! agree with what the host says at the same moment.
//!
//! Also scrapes a real Prometheus's own `/metrics`, and a target whose body
//! has malformed lines (skipped and counted, the rest kept).
//!
//! Needs `/usr/bin/prometheus-node-exporter` (`HERD_NODE_EXPORTER` names
//! another binary) and `/usr/bin/prometheus` (`HERD_PROMETHEUS`);
//! `scripts/test.sh` installs both.

mod common;

use common::*;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_agent::collect::scrape::ScrapeCollector;
use herd_agent::collect::{Collector, Scheduler, SharedSeriesTable};
use herd_common::config::agent::AgentConfig;
use herd_common::metric::is_stale;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_series_carry_the_job_and_agree_with_the_host() {
    let binary = std::env::var("HERD_NODE_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-node-exporter".to_owned());
    let port = free_port();
    let _exporter = KillOnDrop(
        Command::new(&binary)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--collector.disable-defaults", "--collector.loadavg", "--collector.time"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {binary}: {err} (apt-get install -y prometheus-node-exporter)")),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "node_exporter did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = free_port();
    let text = format!(
        "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
         [collect]\ninterval = \"10s\"\ntimeout = \"5s\"\n[collect.host]\nenabled = false\n\
         [[collect.scrape]]\njob = \"app-node\"\nurl = \"http://127.0.0.1:{port}/metrics\"\n\
         [[collect.scrape]]\njob = \"gone\"\nurl = \"http://127.0.0.1:{down}/metrics\"\ntimeout = \"1s\"\n"
    );
    let config = AgentConfig::from_toml("agent.toml", &text, None, "web-1").unwrap();
    let collectors: Vec<Arc<dyn Collector>> =
        config.collect.scrape.iter().map(|s| Arc::new(ScrapeCollector::from_config(s)) as Arc<dyn Collector>).collect();
    let table: SharedSeriesTable = Arc::default();
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let mut scheduler = Scheduler::new(
        collectors,
        Duration::from_secs(10),
        Duration::from_secs(5),
        Arc::clone(&table),
        vec![("instance".into(), "web-1".into())],
        1,
        tx,
    );
    let load1 = || -> f64 {
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
        loadavg.split_whitespace().next().unwrap().parse().unwrap()
    };
    let load_before = load1();
    let batch = scheduler.cycle().await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let load_after = load1();
    let series: BTreeMap<String, f64> = {
        let table = table.lock().unwrap();
        batch
            .samples
            .iter()
            .filter(|(_, v)| !is_stale(*v))
            .map(|(id, v)| (table.labels(*id).unwrap().to_string(), *v))
            .collect()
    };
    // The kernel moves the load average every 5 s: the scraped one lies between two reads.
    let scraped_load1 = series[r#"node_load1{instance="web-1", job="app-node"}"#];
    let (low, high) = (load_before.min(load_after) - 0.01, load_before.max(load_after) + 0.01);
    assert!((low..=high).contains(&scraped_load1), "{scraped_load1} not in {low}..{high}");
    let scraped_time = series[r#"node_time_seconds{instance="web-1", job="app-node"}"#];
    assert!((scraped_time - now).abs() < 5.0, "{scraped_time} vs {now}");
    assert!(series.keys().any(|s| s.starts_with("go_goroutines{")), "every family is kept");
    assert_eq!(series[r#"herd_collector_success{collector="scrape:app-node", instance="web-1", job="app-node"}"#], 1.0);
    assert_eq!(series[r#"herd_collector_success{collector="scrape:gone", instance="web-1", job="gone"}"#], 0.0);
    // A target that is down has Prometheus's per-target series, and nothing else.
    assert_eq!(series[r#"up{instance="web-1", job="gone"}"#], 0.0);
    assert_eq!(series[r#"scrape_samples_scraped{instance="web-1", job="gone"}"#], 0.0);
    let target_series = |s: &&String| s.starts_with("up{") || s.starts_with("scrape_") || s.starts_with("herd_");
    assert!(!series.keys().filter(|s| s.contains(r#"job="gone""#)).any(|s| !target_series(&s)));
    assert_eq!(series[r#"up{instance="web-1", job="app-node"}"#], 1.0);
    let kept = series.keys().filter(|s| s.contains(r#"job="app-node""#)).filter(|s| !target_series(s)).count();
    assert_eq!(series[r#"scrape_samples_scraped{instance="web-1", job="app-node"}"#], kept as f64);
    assert!(series[r#"scrape_duration_seconds{instance="web-1", job="app-node"}"#] > 0.0);
    assert_eq!(series[r#"herd_scrape_malformed_lines{instance="web-1", job="app-node"}"#], 0.0);
}

/// Scrapes `url` once through a scrape job and returns the series it produced.
async fn scrape_once(url: &str, extra: &str) -> BTreeMap<String, f64> {
    let text = format!(
        "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
         [collect]\ninterval = \"10s\"\ntimeout = \"5s\"\n[collect.host]\nenabled = false\n\
         [[collect.scrape]]\njob = \"target\"\nurl = \"{url}\"\n{extra}\n"
    );
    let config = AgentConfig::from_toml("agent.toml", &text, None, "web-1").unwrap();
    let collectors: Vec<Arc<dyn Collector>> =
        config.collect.scrape.iter().map(|s| Arc::new(ScrapeCollector::from_config(s)) as Arc<dyn Collector>).collect();
    let table: SharedSeriesTable = Arc::default();
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let mut scheduler = Scheduler::new(
        collectors,
        Duration::from_secs(10),
        Duration::from_secs(5),
        Arc::clone(&table),
        vec![("instance".into(), "web-1".into())],
        1,
        tx,
    );
    let batch = scheduler.cycle().await;
    let table = table.lock().unwrap();
    batch.samples.iter().map(|(id, v)| (table.labels(*id).unwrap().to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_own_metrics_scrape_cleanly() {
    let binary = std::env::var("HERD_PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".to_owned());
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
    let port = free_port();
    let _prometheus = KillOnDrop(
        Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", work.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {binary}: {err} (apt-get install -y prometheus)")),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "prometheus did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let series = scrape_once(&format!("http://127.0.0.1:{port}/metrics"), "").await;
    assert_eq!(series[r#"herd_collector_success{collector="scrape:target", instance="web-1", job="target"}"#], 1.0);
    assert_eq!(series[r#"herd_scrape_malformed_lines{instance="web-1", job="target"}"#], 0.0);
    assert_eq!(series[r#"herd_scrape_body_truncated{instance="web-1", job="target"}"#], 0.0);
    assert!(
        series.keys().any(|s| s.starts_with("prometheus_build_info{")),
        "{:?}",
        series.keys().take(5).collect::<Vec<_>>()
    );
    assert!(series.keys().any(|s| s.starts_with("go_gc_duration_seconds{") && s.contains("quantile=")));
    assert!(series.len() > 100, "only {} series", series.len());

    // The same body cut at 4 KiB: whole lines only, and said so.
    let cut = scrape_once(&format!("http://127.0.0.1:{port}/metrics"), "max_body_bytes = 4096").await;
    assert_eq!(cut[r#"herd_scrape_body_truncated{instance="web-1", job="target"}"#], 1.0);
    assert_eq!(cut[r#"herd_scrape_malformed_lines{instance="web-1", job="target"}"#], 0.0);
    assert!(cut.len() > 5 && cut.len() < series.len(), "{} of {} series", cut.len(), series.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_skipped_and_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = "good 1\nbad{ 2\n{no=\"name\"} 3\nalso_good{a=\"b\"} 4\nvalue_missing\n";
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    let series = scrape_once(&format!("http://127.0.0.1:{port}/metrics"), "labels = { team = \"dairy\" }").await;
    assert_eq!(series[r#"good{instance="web-1", job="target", team="dairy"}"#], 1.0);
    assert_eq!(series[r#"also_good{a="b", instance="web-1", job="target", team="dairy"}"#], 4.0);
    assert_eq!(series[r#"herd_scrape_malformed_lines{instance="web-1", job="target"}"#], 3.0);
    assert_eq!(series[r#"herd_scrape_body_truncated{instance="web-1", job="target"}"#], 0.0);
    assert_eq!(series[r#"herd_collector_success{collector="scrape:target", instance="web-1", job="target"}"#], 1.0);
}

#[test]
fn scrape_jobs_are_checked_with_their_keys() {
    let text = "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
                [[collect.scrape]]\njob = \"app\"\nurl = \"https://app/metrics\"\ntls = { key_file = \"k.pem\" }\n\
                [[collect.scrape]]\njob = \"app\"\nurl = \"app:9100\"\n[[collect.scrape]]\nurl = \"http://x/metrics\"\n";
    let err = AgentConfig::from_toml("agent.toml", text, None, "web-1").unwrap_err().to_string();
    for needle in [
        "collect.scrape[0].tls.cert_file: is missing",
        "collect.scrape[1].job: \"app\" is used by another",
        "collect.scrape[1].url: is not an http(s) URL",
        "collect.scrape[2].job: is missing or empty",
    ] {
        assert!(err.contains(needle), "{needle:?} in:\n{err}");
    }
}
