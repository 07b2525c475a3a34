//! Ingest-triggered evaluation end to end: a real agent scrapes an
//! application whose value crosses a threshold; the aggregator evaluates
//! its rules only every hour, so the alert can only fire within seconds if
//! storing the agent's batch triggered the evaluation. The built-in router
//! (`group_wait: 0s`) delivers it to a webhook; the trigger counters are
//! recorded with the aggregator's own metrics.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_tests::router::WebhookRecorder;
use herd_tests::*;

#[test]
fn an_alert_fires_when_its_data_is_stored_not_at_the_next_evaluation() {
    let value = Arc::new(Mutex::new(0.0f64));
    let served = Arc::clone(&value);
    let source = serve_text(move |_| Some(format!("queue_depth {}\n", served.lock().expect("value lock"))));

    let work = tempfile::tempdir().expect("temp dir");
    let rules = work.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: app\n    interval: 1h\n    rules:\n      - alert: QueueDeep\n        expr: queue_depth > 5\n",
    )
    .expect("write rules");
    let hook = WebhookRecorder::start();
    let router = work.path().join("router.yml");
    std::fs::write(
        &router,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1m\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs: [{{url: '{}'}}]\n",
            hook.url
        ),
    )
    .expect("write router config");
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("app-1");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
    let aggregator = Aggregator::start_configured(
        &pki,
        work.path(),
        "aggregator",
        http,
        quic,
        &format!(
            "[rules]\nfiles = [\"{}\"]\nmin_eval_spacing = \"100ms\"\n[alerting]\nrouter_config = \"{}\"\n",
            rules.display(),
            router.display()
        ),
    );
    let agent_config = agent_config_with(
        work.path(),
        &pki,
        "app-1",
        &[quic],
        "500ms",
        "",
        &format!(
            "[collect.host]\nenabled = false\n[[collect.scrape]]\njob = \"app\"\nurl = \"http://{source}/metrics\"\n"
        ),
    );
    let _agent = start_agent(work.path(), "app-1", &agent_config);
    let stored = wait_for(Duration::from_secs(20), || latest_value(&aggregator, "queue_depth").filter(|v| *v == 0.0));
    assert!(stored.is_some(), "the agent's samples are stored:\n{}", aggregator.process.log());
    assert!(hook.bodies().is_empty(), "nothing fires below the threshold");

    *value.lock().expect("value lock") = 9.0;
    let flipped = Instant::now();
    let notified = wait_for(Duration::from_secs(15), || {
        hook.bodies().into_iter().find(|body| {
            body["alerts"].as_array().into_iter().flatten().any(|a| a["labels"]["alertname"] == "QueueDeep")
        })
    });
    let elapsed = flipped.elapsed();
    assert!(notified.is_some(), "QueueDeep notified within 15 s of the crossing:\n{}", aggregator.process.log());
    // One 500 ms scrape, delivery, evaluation and the router: far below the group's hour.
    assert!(elapsed < Duration::from_secs(5), "notified {elapsed:?} after the crossing");

    // The counters are recorded with the self-metrics (every 5 s).
    let triggered = wait_for(Duration::from_secs(15), || {
        latest_value(&aggregator, "herd_rule_triggered_evaluations_total{rule_group=~\".*;app\"}").filter(|v| *v >= 1.0)
    });
    assert!(triggered.is_some(), "triggered evaluations counted");
    let requests = latest_value(&aggregator, "herd_rule_trigger_requests_total{rule_group=~\".*;app\"}").unwrap_or(0.0);
    let skipped = latest_value(&aggregator, "herd_rule_triggered_evaluations_skipped_total{rule_group=~\".*;app\"}")
        .unwrap_or(-1.0);
    assert!(requests >= triggered.unwrap_or(0.0) && skipped >= 0.0, "requests {requests}, skipped {skipped}");
}
