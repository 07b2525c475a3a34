//! Prometheus remote_write with real peers: Herd sends what its agents
//! collect to a real Prometheus and a real VictoriaMetrics at once, catches a
//! receiver up after an outage, and receives what a real Prometheus scrapes
//! from a real node_exporter. Every comparison is sample by sample
//! (timestamps and values), never only counts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_tests::peers::*;
use herd_tests::*;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn remote_write_section(name: &str, url: &str) -> String {
    format!(
        "[[remote_write]]\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"5s\"\n\
         [remote_write.queue_config]\nbatch_send_deadline = \"500ms\"\nmin_backoff = \"50ms\"\nmax_backoff = \"1s\"\n"
    )
}

/// The agent's series the comparisons use.
const SELECTORS: [&str; 3] = [
    r#"node_load1{instance="a"}"#,
    r#"node_memory_MemAvailable_bytes{instance="a"}"#,
    r#"node_cpu_seconds_total{instance="a",cpu="0"}"#,
];

fn herd_samples(aggregator: &Aggregator) -> SeriesSamples {
    let base = format!("http://{}", aggregator.http);
    SELECTORS.iter().flat_map(|s| raw_samples(&base, s, "30m", None)).collect()
}

fn prometheus_samples(prometheus: &Peer) -> SeriesSamples {
    SELECTORS.iter().flat_map(|s| raw_samples(&prometheus.url(), s, "30m", None)).collect()
}

fn vm_samples(vm: &Peer) -> SeriesSamples {
    SELECTORS.iter().flat_map(|s| victoria_samples(vm, s)).collect()
}

/// Polls until `read` returns exactly `expected` (VictoriaMetrics stores
/// values as decimals: `tolerance` is relative).
fn wait_identical(
    what: &str,
    expected: &SeriesSamples,
    tolerance: f64,
    limit: Duration,
    mut read: impl FnMut() -> SeriesSamples,
) {
    let mut last = Vec::new();
    let same = wait_for(limit, || {
        last = differences(expected, &read(), tolerance);
        last.is_empty().then_some(())
    });
    assert!(same.is_some(), "{what} does not hold Herd's samples:\n{}", last.join("\n"));
}

#[test]
fn herd_sends_the_same_samples_to_prometheus_and_victoria_metrics() {
    if !peer_available("prometheus") || !peer_available("victoria-metrics") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let prometheus = start_prometheus(work.path(), &work.path().join("prom"), "global:\n  scrape_interval: 1m\n", 0);
    let vm = start_victoria_metrics(work.path(), &work.path().join("vm"), 0);
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("a");
    let (http, quic) = loopback_addresses();
    let extra = remote_write_section("prom", &format!("{}/api/v1/write", prometheus.url()))
        + &remote_write_section("vm", &format!("{}/api/v1/write", vm.url()))
        // VictoriaMetrics gets everything but memory: write_relabel_configs at work.
        + "[[remote_write.write_relabel_configs]]\nsource_labels = [\"__name__\"]\nregex = \"node_memory_.*\"\naction = \"drop\"\n";
    let aggregator = Aggregator::start_configured(&pki, work.path(), "agg", http, quic, &extra);
    let config = agent_config(work.path(), &pki, "a", quic, "1s");
    let mut agent = start_agent(work.path(), "a", &config);

    // Let the agent run a while, then stop it so the set to compare is final.
    let enough = wait_for(Duration::from_secs(30), || {
        (sample_times(&aggregator, r#"node_load1{instance="a"}"#, "30m").len() >= 12).then_some(())
    });
    assert!(enough.is_some(), "the agent's samples did not reach Herd:\n{}", aggregator.process.log());
    agent.kill();
    std::thread::sleep(Duration::from_millis(500));
    let herd = herd_samples(&aggregator);
    assert!(herd.len() >= 3, "node_load1, MemAvailable and cpu 0's modes: {herd:?}");
    assert!(herd.values().all(|samples| samples.len() >= 12), "{herd:?}");

    wait_identical("Prometheus", &herd, 0.0, Duration::from_secs(30), || prometheus_samples(&prometheus));
    let without_memory: SeriesSamples =
        herd.iter().filter(|(k, _)| !k.contains("node_memory_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(without_memory.len() < herd.len());
    // An unexpected node_memory series in VictoriaMetrics would be reported too.
    wait_identical("VictoriaMetrics", &without_memory, 1e-12, Duration::from_secs(30), || vm_samples(&vm));
    let dropped = victoria_samples(&vm, r#"{__name__=~"node_memory_.*"}"#);
    assert!(dropped.is_empty(), "relabeling should have kept memory series out: {:?}", dropped.keys());
    assert!(prometheus_samples(&prometheus).keys().any(|k| k.contains("node_memory_")), "Prometheus gets them");

    // Herd's own figures say the same.
    let sent = latest_value(&aggregator, r#"herd_remote_write_samples_sent_total{remote_name="prom"}"#);
    let wait_sent = wait_for(Duration::from_secs(10), || {
        latest_value(&aggregator, r#"herd_remote_write_samples_sent_total{remote_name="vm"}"#).filter(|&v| v > 0.0)
    });
    assert!(sent.is_some_and(|v| v > 0.0) && wait_sent.is_some(), "sent counters missing");
    assert_eq!(latest_value(&aggregator, r#"herd_remote_write_samples_failed_total{remote_name="prom"}"#), Some(0.0));
}

#[test]
fn a_receiver_down_for_a_while_ends_up_complete_and_ingestion_continues() {
    // Also crashes and restarts Herd during the outage.
    if !peer_available("prometheus") {
        return;
    }
    let outage =
        Duration::from_secs(std::env::var("HERD_RW_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let work = tempfile::tempdir().unwrap();
    let prom_dir = work.path().join("prom");
    // After Herd's crash the agent sends its newest batch first and then the
    // few it buffered: older samples arrive after newer ones, which
    // Prometheus accepts only with an out-of-order window.
    let prom_config = "global:\n  scrape_interval: 1m\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n";
    let mut prometheus = start_prometheus(work.path(), &prom_dir, prom_config, 0);
    let port = prometheus.port;
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("a");
    let (http, quic) = loopback_addresses();
    let extra = remote_write_section("prom", &format!("{}/api/v1/write", prometheus.url()));
    let aggregator = Aggregator::start_configured(&pki, work.path(), "agg", http, quic, &extra);
    let config = agent_config(work.path(), &pki, "a", quic, "1s");
    let mut agent = start_agent(work.path(), "a", &config);

    let load = r#"node_load1{instance="a"}"#;
    let arrived = wait_for(Duration::from_secs(30), || {
        (!raw_samples(&prometheus.url(), load, "30m", None).is_empty()).then_some(())
    });
    assert!(arrived.is_some(), "nothing reached Prometheus:\n{}", aggregator.process.log());

    prometheus.stop();
    let down_at = now_ms();
    std::thread::sleep(outage / 2);
    // Herd crashes too while the receiver is down: its queue must resume from
    // the position it persisted, with the series of the previous process's WAL.
    let mut aggregator = aggregator;
    aggregator.process.kill();
    let aggregator = Aggregator::start_configured(&pki, work.path(), "agg", http, quic, &extra);
    std::thread::sleep(outage / 2);
    let up_at = now_ms();
    // Ingestion went on while the receiver was down: one sample a second, no gap
    // (the agent fills the crash's few seconds from its buffer).
    let complete = wait_for(Duration::from_secs(15), || {
        covers(&sample_times(&aggregator, load, "30m"), down_at, up_at - 1000, 1500).then_some(())
    });
    let times = sample_times(&aggregator, load, "30m");
    assert!(complete.is_some(), "Herd's ingestion stalled: gaps {:?}", gaps(&times, 1500));
    let retried = latest_value(&aggregator, r#"herd_remote_write_samples_retried_total{remote_name="prom"}"#);
    assert!(retried.is_some_and(|v| v > 0.0), "sends during the outage should be retried: {retried:?}");

    let prometheus = start_prometheus(work.path(), &prom_dir, prom_config, port);
    std::thread::sleep(Duration::from_secs(3));
    agent.kill();
    std::thread::sleep(Duration::from_millis(500));
    let herd = herd_samples(&aggregator);
    let load_key = herd.keys().find(|k| k.contains("node_load1")).cloned().expect("node_load1 in Herd");
    let outage_samples = window(&herd, down_at, up_at).get(&load_key).map_or(0, |v| v.len());
    assert!(outage_samples as u64 + 2 >= outage.as_secs(), "only {outage_samples} samples over the outage");
    wait_identical("Prometheus after its outage", &herd, 0.0, Duration::from_secs(60), || {
        prometheus_samples(&prometheus)
    });
    assert_eq!(latest_value(&aggregator, r#"herd_remote_write_samples_dropped_total{remote_name="prom"}"#), Some(0.0));
}

#[test]
fn prometheus_remote_writes_node_exporter_scrapes_into_herd() {
    if !peer_available("prometheus") || !peer_available("prometheus-node-exporter") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let node_exporter = start_node_exporter(work.path());
    let pki = Pki::create(work.path().join("pki"));
    let token = "rw-token-1f2e";
    std::fs::write(work.path().join("rw.token"), format!("{token}\n")).unwrap();
    let (http, quic) = loopback_addresses();
    let extra = format!(
        "[http]\nanonymous_role = \"viewer\"\n[remote_write_receiver]\nenabled = true\nbearer_token_files = [\"{}\"]\n",
        work.path().join("rw.token").display()
    );
    let aggregator = Aggregator::start_configured(&pki, work.path(), "agg", http, quic, &extra);
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1m\n\
         scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
         remote_write:\n  - url: http://{http}/api/v1/write\n    authorization:\n      credentials: {token}\n\
         \x20   queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 50ms\n      max_backoff: 1s\n",
        port = node_exporter.port,
    );
    let prometheus = start_prometheus(work.path(), &work.path().join("prom"), &config, 0);

    // Without the token Herd refuses writes.
    let herd = format!("http://{http}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let refused = agent.post(&format!("{herd}/api/v1/write")).send(&b"x"[..]).expect("Herd reachable");
    assert_eq!(refused.status().as_u16(), 401, "a write without the token");
    let wrong = agent
        .post(&format!("{herd}/api/v1/write"))
        .header("Authorization", "Bearer not-the-token")
        .send(&b"x"[..])
        .expect("Herd reachable");
    assert_eq!(wrong.status().as_u16(), 401, "a write with a wrong token");

    let started = now_ms();
    let instance = format!("127.0.0.1:{}", node_exporter.port);
    let selectors = [
        format!(r#"node_load1{{instance="{instance}"}}"#),
        format!(r#"node_memory_MemAvailable_bytes{{instance="{instance}"}}"#),
        format!(r#"node_cpu_seconds_total{{instance="{instance}",cpu="0"}}"#),
        format!(r#"up{{instance="{instance}"}}"#),
    ];
    // Scrape for a while, then compare everything up to a time both have had plenty of time to reach.
    let enough = wait_for(Duration::from_secs(40), || {
        let got = raw_samples(&herd, &selectors[0], "5m", None);
        got.values().next().filter(|s| s.len() >= 12).map(|_| ())
    });
    assert!(enough.is_some(), "Prometheus's samples did not reach Herd:\n{}", prometheus.log());
    let at_s = (now_ms() - 3000) as f64 / 1000.0;
    let read = |base: &str| -> SeriesSamples {
        selectors.iter().flat_map(|s| raw_samples(base, s, "5m", Some(at_s))).collect()
    };
    let expected = read(&prometheus.url());
    assert!(expected.len() >= 6, "Prometheus should hold the chosen series: {expected:?}");
    assert!(expected.values().all(|s| s.len() >= 8 && s[0].0 >= started - 2000), "{expected:?}");
    wait_identical("Herd", &expected, 0.0, Duration::from_secs(20), || read(&herd));
    let received = latest_value(&aggregator, "herd_remote_write_receiver_samples_total");
    assert!(received.is_some_and(|v| v > 0.0), "{received:?}");

    // Received samples were in the WAL before they were acknowledged: a crash loses none of them.
    drop(prometheus);
    let mut aggregator = aggregator;
    aggregator.process.kill();
    let aggregator = Aggregator::start_configured(&pki, work.path(), "agg", http, quic, &extra);
    let after_restart = read(&format!("http://{}", aggregator.http));
    let lost = differences(&expected, &after_restart, 0.0);
    assert!(lost.is_empty(), "after a crash and WAL replay:\n{}", lost.join("\n"));
}
