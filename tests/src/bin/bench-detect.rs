//! Detection latency: from the moment a metric crosses its threshold at the
//! source to the moment the notification arrives at a webhook, for Herd and
//! for the Prometheus + Alertmanager pipeline, in one run on the same source.
//!
//! ```text
//! cargo build --release -p herd-aggregator -p herd-agent -p herd-tests --bins
//! target/release/bench-detect [TRIALS]        # default 40, at least 30 for a p99
//! ```
//!
//! The source is an application endpoint serving `bench_value{trial="N"}`;
//! trial N flips its series from 0 to 1 (trials start 1.5 to 2.5 s apart, so
//! each lands at a random phase of every scrape and evaluation clock) and
//! each pipeline has an alert rule `bench_value{trial="N"} > 0.5` with
//! `for: 0s`. Every pipeline groups by `alertname`, so each trial is a new
//! group, and sends to its own recording webhook.
//! - Herd: herd-agent scrapes the source every second; the aggregator
//!   evaluates the rules every second and as soon as a scraped batch is
//!   stored (`min_eval_spacing = "200ms"`); its built-in router sends at
//!   once (`group_wait: 0s`).
//! - Herd, periodic only: the same with `evaluate_on_ingest = false` (how
//!   Herd evaluated before ingest-triggered evaluation).
//! - Herd with alert inputs: the same 1 s scrape, and the aggregator asks
//!   the agent to sample what its rules compare every 250 ms between cycles
//!   (`alert_input_interval = "250ms"`); only changed values are sent.
//! - Herd, agent scraping every 250 ms: not like-for-like with the peers'
//!   1 s scrape; shows what is left once the scrape wait is shorter.
//! - The seed's pipeline: Prometheus 2.42 scraping and evaluating every 15 s
//!   and Alertmanager with the seed's `group_wait: 30s`.
//! - Prometheus tuned: scraping and evaluating every second, Alertmanager
//!   with `group_wait: 0s`.
//!
//! With `HERD_BENCH_REPORT=FILE` the result is appended to FILE as a
//! markdown section (see `herd_tests::bench_report`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use herd_tests::loadgen::process_cpu_seconds;
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

/// One Herd pipeline: an aggregator with the rules and its router, and an agent scraping the source.
struct HerdPipeline {
    hook: WebhookRecorder,
    aggregator: Aggregator,
    agent: Process,
}

/// How one Herd pipeline is set up.
struct Variant {
    key: &'static str,
    label: &'static str,
    scrape_interval: &'static str,
    on_ingest: bool,
    alert_input_interval: &'static str,
}

fn start_herd(work: &Path, pki: &Pki, rules_path: &Path, source: SocketAddr, variant: &Variant) -> HerdPipeline {
    let Variant { key: name, scrape_interval, on_ingest, alert_input_interval, .. } = variant;
    let hook = WebhookRecorder::start();
    let router = work.join(format!("{name}-router.yml"));
    std::fs::write(&router, hook.route_by_alertname("0s", "1s", "12h")).expect("write router config");
    let agent = format!("{name}-agent");
    pki.issue_agent(&agent);
    let (http, quic) = loopback_addresses();
    let aggregator = Aggregator::start_configured(
        pki,
        work,
        name,
        http,
        quic,
        &format!(
            "[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\nevaluate_on_ingest = {on_ingest}\nmin_eval_spacing = \"200ms\"\n\
             alert_input_interval = \"{alert_input_interval}\"\n\
             [alerting]\nrouter_config = \"{}\"\n",
            rules_path.display(),
            router.display()
        ),
    );
    let agent_config = agent_config_with(
        work,
        pki,
        &agent,
        &[quic],
        scrape_interval,
        "",
        &format!(
            "[collect.host]\nenabled = false\n[[collect.scrape]]\njob = \"app\"\nurl = \"http://{source}/metrics\"\n"
        ),
    );
    let agent = start_agent(work, &agent, &agent_config);
    HerdPipeline { hook, aggregator, agent }
}

fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    let values = Arc::new(Mutex::new(vec![0.0f64; trials]));
    let served = Arc::clone(&values);
    let source = serve_text(move |_| {
        let values = served.lock().expect("values lock");
        Some(values.iter().enumerate().map(|(trial, v)| format!("bench_value{{trial=\"{trial}\"}} {v}\n")).collect())
    });

    let work = tempfile::tempdir().expect("temp dir");
    let rules_path = work.path().join("rules.yml");
    std::fs::write(&rules_path, rules(trials)).expect("write rules");
    let pki = Pki::create(work.path().join("pki"));

    // (key, label, webhook) of every pipeline, Herd's first.
    let variant = |key, label, scrape_interval, on_ingest, alert_input_interval| Variant {
        key,
        label,
        scrape_interval,
        on_ingest,
        alert_input_interval,
    };
    let herd = [
        variant(
            "herd-inputs",
            "Herd (1 s scrape, evaluated on ingest, alert inputs sampled every 250 ms)",
            "1s",
            true,
            "250ms",
        ),
        variant("herd", "Herd (1 s scrape, evaluated on ingest)", "1s", true, "0s"),
        variant("herd-periodic", "Herd, periodic evaluation only (1 s scrape, 1 s evaluation)", "1s", false, "0s"),
        variant("herd-250ms", "Herd, agent scraping everything every 250 ms", "250ms", true, "0s"),
    ];
    let herd_pipelines: Vec<(&str, &str, HerdPipeline)> =
        herd.iter().map(|v| (v.key, v.label, start_herd(work.path(), &pki, &rules_path, source, v))).collect();

    // Prometheus + Alertmanager, as the seed sets them up and tuned.
    let mut peers = Vec::new();
    for (name, label, interval, group_wait) in [
        ("seed", "seed's Prometheus + Alertmanager (15 s, group_wait 30 s)", "15s", "30s"),
        ("tuned", "Prometheus + Alertmanager tuned (1 s scrape, 1 s evaluation, group_wait 0 s)", "1s", "0s"),
    ] {
        let hook = WebhookRecorder::start();
        let dir = work.path().join(name);
        let alertmanager =
            start_alertmanager(work.path(), &dir.join("am"), &hook.route_by_alertname(group_wait, "5m", "12h"));
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             rule_files: ['{rules}']\n\
             alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['127.0.0.1:{am}']}}]\n\
             scrape_configs:\n  - job_name: app\n    static_configs: [{{targets: ['{source}']}}]\n",
            rules = rules_path.display(),
            am = alertmanager.port,
        );
        let prometheus = start_prometheus(work.path(), &dir.join("prometheus"), &config, 0);
        peers.push((name, label, hook, alertmanager, prometheus));
    }

    // Let every pipeline see the source at 0 first.
    std::thread::sleep(Duration::from_secs(20));
    let mut flipped = Vec::with_capacity(trials);
    for trial in 0..trials {
        std::thread::sleep(Duration::from_millis(1500 + fastrand::u64(0..1000)));
        values.lock().expect("values lock")[trial] = 1.0;
        flipped.push(SystemTime::now());
        eprintln!("trial {trial} flipped");
    }
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut pipelines: Vec<(&str, &str, &WebhookRecorder)> =
        herd_pipelines.iter().map(|(key, label, p)| (*key, *label, &p.hook)).collect();
    pipelines.extend(peers.iter().map(|(name, label, hook, _, _)| (*name, *label, hook)));
    while Instant::now() < deadline && pipelines.iter().any(|(_, _, hook)| first_firing(hook).len() < trials) {
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut report = format!(
        "## Detection latency\n\n`target/release/bench-detect {trials}` (source: `tests/src/bin/bench-detect.rs`), {date}.\n\n\
         {trials} trials, threshold crossed at the source -> first firing notification at the webhook:\n\n\
         | pipeline | notified | min | p50 | p99 | max |\n| --- | --- | --- | --- | --- | --- |\n",
        date = date_utc(),
    );
    let mut p99s = BTreeMap::new();
    for (key, label, hook) in &pipelines {
        let first = first_firing(hook);
        let mut latencies: Vec<f64> = (0..trials)
            .filter_map(|trial| {
                let at = first.get(&format!("BenchTrial{trial}"))?;
                Some(at.duration_since(flipped[trial]).unwrap_or_default().as_secs_f64())
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let p99 = percentile(&latencies, 0.99);
        p99s.insert(*key, p99);
        report.push_str(&format!(
            "| {label} | {}/{trials} | {:.2} s | {:.2} s | {p99:.2} s | {:.2} s |\n",
            latencies.len(),
            latencies.first().copied().unwrap_or(f64::NAN),
            percentile(&latencies, 0.5),
            latencies.last().copied().unwrap_or(f64::NAN)
        ));
    }
    report.push_str("\n| p99 ratio | Herd / tuned | Herd / seed's |\n| --- | --- | --- |\n");
    for (key, label, _) in &pipelines[..herd_pipelines.len()] {
        report.push_str(&format!("| {label} | {:.3} | {:.3} |\n", p99s[key] / p99s["tuned"], p99s[key] / p99s["seed"]));
    }
    report.push_str(
        "\nWhat each Herd pipeline cost over the whole run (start, 20 s at rest, the trials, the wait for \
         the last notification):\n\n| pipeline | agent CPU seconds | `bench_value` samples stored |\n\
         | --- | --- | --- |\n",
    );
    for (_, label, pipeline) in &herd_pipelines {
        let cpu = process_cpu_seconds(pipeline.agent.pid()).unwrap_or(f64::NAN);
        let stored = latest_value(&pipeline.aggregator, "sum(count_over_time(bench_value[15m]))").unwrap_or(f64::NAN);
        report.push_str(&format!("| {label} | {cpu:.2} | {stored:.0} |\n"));
    }
    report.push_str(
        "\nSame source, same machine, same run; every pipeline but the last Herd one collects everything \
         every second. A pipeline's latency is the wait for the next sample (up to one interval), delivery \
         to the evaluator, the wait for the next evaluation, and notification. Evaluated on ingest, Herd \
         has no evaluation wait: without alert inputs its floor is the 1 s scrape wait. With them, the \
         agent re-reads the source every 250 ms between its 1 s cycles and sends a rule's input as soon \
         as it changed, so the wait is at most 250 ms while everything else (and the storage of unchanged \
         values) stays at 1 s. Prometheus's evaluation clock keeps a fixed phase to its scrape clock \
         within a run, so the tuned pipeline's wait for evaluation is a constant between 0 and 1 s that \
         changes from run to run (its `min` shows it).\n",
    );
    bench_report(&report);
}

/// Today's date, UTC, as `YYYY-MM-DD`.
fn date_utc() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", today.year(), u8::from(today.month()), today.day())
}
