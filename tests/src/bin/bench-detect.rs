//! Detection latency: from the moment a metric crosses its threshold at the
//! source to the moment the notification arrives at a webhook, for Herd and
//! for the Prometheus + Alertmanager pipeline, in one run on the same source.
//!
//! ```text
//! cargo build --release -p herd-aggregator -p herd-agent -p herd-tests --bins
//! target/release/bench-detect [TRIALS]
//! ```
//!
//! The source is an application endpoint serving `bench_value{trial="N"}`;
//! trial N flips its series from 0 to 1 (trials start 3 s apart) and each
//! pipeline has an alert rule `bench_value{trial="N"} > 0.5` with `for: 0s`.
//! - Herd: herd-agent scrapes the source every second, the aggregator
//!   evaluates every second and its built-in router sends at once
//!   (`group_wait: 0s`).
//! - The seed's pipeline: Prometheus 2.42 scraping and evaluating every 15 s
//!   and Alertmanager with the seed's `group_wait: 30s`.
//! - Prometheus tuned: scraping and evaluating every second, Alertmanager
//!   with `group_wait: 0s`.
//!
//! Every pipeline groups by `alertname`, so each trial is a new group.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use herd_tests::peers::{start_alertmanager, start_prometheus};
use herd_tests::router::WebhookRecorder;
use herd_tests::*;

fn rules(trials: usize) -> String {
    let mut text = String::from("groups:\n  - name: detect\n    rules:\n");
    for trial in 0..trials {
        text.push_str(&format!(
            "      - alert: BenchTrial{trial}\n        expr: bench_value{{trial=\"{trial}\"}} > 0.5\n        for: 0s\n"
        ));
    }
    text
}

fn route(hook: &WebhookRecorder, group_wait: &str, group_interval: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: {group_wait}\n  group_interval: {group_interval}\n  repeat_interval: 12h\n\
         receivers:\n  - name: hook\n    webhook_configs: [{{url: '{}'}}]\n",
        hook.url
    )
}

/// First arrival of a firing notification per alert name.
fn first_firing(hook: &WebhookRecorder) -> BTreeMap<String, SystemTime> {
    let mut first = BTreeMap::new();
    for (at, body) in hook.received() {
        for alert in body["alerts"].as_array().into_iter().flatten() {
            if alert["status"] == "firing"
                && let Some(name) = alert["labels"]["alertname"].as_str()
            {
                first.entry(name.to_owned()).or_insert(at);
            }
        }
    }
    first
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let values = Arc::new(Mutex::new(vec![0.0f64; trials]));
    let served = Arc::clone(&values);
    let source = serve_text(move |_| {
        let values = served.lock().expect("values lock");
        Some(values.iter().enumerate().map(|(trial, v)| format!("bench_value{{trial=\"{trial}\"}} {v}\n")).collect())
    });

    let work = tempfile::tempdir().expect("temp dir");
    let rules_path = work.path().join("rules.yml");
    std::fs::write(&rules_path, rules(trials)).expect("write rules");

    // Herd.
    let herd_hook = WebhookRecorder::start();
    let router = work.path().join("router.yml");
    std::fs::write(&router, route(&herd_hook, "0s", "1s")).expect("write router config");
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("app-1");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
    let _aggregator = Aggregator::start_configured(
        &pki,
        work.path(),
        "aggregator",
        http,
        quic,
        &format!(
            "[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\n[alerting]\nrouter_config = \"{}\"\n",
            rules_path.display(),
            router.display()
        ),
    );
    let agent_config = agent_config_with(
        work.path(),
        &pki,
        "app-1",
        &[quic],
        "1s",
        "",
        &format!(
            "[collect.host]\nenabled = false\n[[collect.scrape]]\njob = \"app\"\nurl = \"http://{source}/metrics\"\n"
        ),
    );
    let _agent = start_agent(work.path(), "app-1", &agent_config);

    // Prometheus + Alertmanager, as the seed sets them up and tuned.
    let mut peers = Vec::new();
    for (name, interval, group_wait) in [("seed", "15s", "30s"), ("tuned", "1s", "0s")] {
        let hook = WebhookRecorder::start();
        let dir = work.path().join(name);
        let alertmanager = start_alertmanager(work.path(), &dir.join("am"), &route(&hook, group_wait, "5m"));
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             rule_files: ['{rules}']\n\
             alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['127.0.0.1:{am}']}}]\n\
             scrape_configs:\n  - job_name: app\n    static_configs: [{{targets: ['{source}']}}]\n",
            rules = rules_path.display(),
            am = alertmanager.port,
        );
        let prometheus = start_prometheus(work.path(), &dir.join("prometheus"), &config, 0);
        peers.push((name, hook, alertmanager, prometheus));
    }

    // Let every pipeline see the source at 0 first.
    std::thread::sleep(Duration::from_secs(20));
    let mut flipped = Vec::with_capacity(trials);
    for trial in 0..trials {
        std::thread::sleep(Duration::from_millis(3000 + fastrand::u64(0..1000)));
        values.lock().expect("values lock")[trial] = 1.0;
        flipped.push(SystemTime::now());
        eprintln!("trial {trial} flipped");
    }
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut pipelines: Vec<(&str, &WebhookRecorder)> = vec![("herd", &herd_hook)];
    pipelines.extend(peers.iter().map(|(name, hook, _, _)| (*name, hook)));
    while Instant::now() < deadline && pipelines.iter().any(|(_, hook)| first_firing(hook).len() < trials) {
        std::thread::sleep(Duration::from_millis(500));
    }

    println!("\n{trials} trials, threshold crossed at the source -> firing notification at the webhook");
    println!("| pipeline | notified | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- |");
    let mut p99s = BTreeMap::new();
    for (name, hook) in &pipelines {
        let first = first_firing(hook);
        let mut latencies: Vec<f64> = (0..trials)
            .filter_map(|trial| {
                let at = first.get(&format!("BenchTrial{trial}"))?;
                Some(at.duration_since(flipped[trial]).unwrap_or_default().as_secs_f64())
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let p99 = percentile(&latencies, 0.99);
        p99s.insert(*name, p99);
        println!(
            "| {name} | {}/{trials} | {:.2} s | {p99:.2} s | {:.2} s |",
            latencies.len(),
            percentile(&latencies, 0.5),
            latencies.last().copied().unwrap_or(f64::NAN)
        );
    }
    for peer in ["seed", "tuned"] {
        println!("herd p99 / {peer} p99: {:.3}", p99s["herd"] / p99s[peer]);
    }
}
