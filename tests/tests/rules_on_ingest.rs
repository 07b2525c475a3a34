//! Ingest-triggered evaluation end to end: a real agent scrapes an
//! application whose value crosses a threshold; the aggregator evaluates
//! its rules only every hour, so the alert can only fire within seconds if
//! storing the agent's batch triggered the evaluation. The built-in router
//! (`group_wait: 0s`) delivers it to a webhook; the trigger counters are
//! recorded with the aggregator's own metrics. With `alert_input_interval`,
//! the agent samples what the rule compares between its cycles, so the
//! alert fires long before the agent's next cycle.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_tests::router::WebhookRecorder;
use herd_tests::*;

/// An application serving `queue_depth` (the rule's input) and
/// `queue_total` (read by no rule), an aggregator whose rule group runs
/// hourly, and an agent scraping the application.
struct Pipeline {
    depth: Arc<Mutex<f64>>,
    total: Arc<Mutex<f64>>,
    hook: WebhookRecorder,
    aggregator: Aggregator,
    agent: Process,
    _work: tempfile::TempDir,
}

impl Pipeline {
    fn start(rules_extra: &str, agent_interval: &str) -> Self {
        let depth = Arc::new(Mutex::new(0.0f64));
        let total = Arc::new(Mutex::new(0.0f64));
        let (served_depth, served_total) = (Arc::clone(&depth), Arc::clone(&total));
        let source = serve_text(move |_| {
            Some(format!(
                "queue_depth {}\nqueue_total {}\n",
                served_depth.lock().expect("value lock"),
                served_total.lock().expect("value lock")
            ))
        });
        let work = tempfile::tempdir().expect("temp dir");
        let rules = work.path().join("rules.yml");
        std::fs::write(
            &rules,
            "groups:\n  - name: app\n    interval: 1h\n    rules:\n      - alert: QueueDeep\n        expr: queue_depth > 5\n",
        )
        .expect("write rules");
        let hook = WebhookRecorder::start();
        let router = work.path().join("router.yml");
        std::fs::write(&router, hook.route_by_alertname("0s", "1m", "1h")).expect("write router config");
        let pki = Pki::create(work.path().join("pki"));
        pki.issue_agent("app-1");
        let (http, quic) = loopback_addresses();
        let aggregator = Aggregator::start_configured(
            &pki,
            work.path(),
            "aggregator",
            http,
            quic,
            &format!(
                "[rules]\nfiles = [\"{}\"]\nmin_eval_spacing = \"100ms\"\n{rules_extra}\n[alerting]\nrouter_config = \"{}\"\n",
                rules.display(),
                router.display()
            ),
        );
        let agent_config = agent_config_with(
            work.path(),
            &pki,
            "app-1",
            &[quic],
            agent_interval,
            "",
            &format!(
                "[collect.host]\nenabled = false\n[[collect.scrape]]\njob = \"app\"\nurl = \"http://{source}/metrics\"\n"
            ),
        );
        let agent = start_agent(work.path(), "app-1", &agent_config);
        let stored =
            wait_for(Duration::from_secs(20), || latest_value(&aggregator, "queue_depth").filter(|v| *v == 0.0));
        assert!(stored.is_some(), "the agent's samples are stored:\n{}", aggregator.process.log());
        assert!(hook.bodies().is_empty(), "nothing fires below the threshold");
        Pipeline { depth, total, hook, aggregator, agent, _work: work }
    }

    /// Waits for the first notification of QueueDeep; its arrival time.
    fn notified(&self, limit: Duration) -> Option<SystemTime> {
        wait_for(limit, || {
            self.hook.received().into_iter().find_map(|(at, body)| {
                body["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["labels"]["alertname"] == "QueueDeep")
                    .then_some(at)
            })
        })
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

#[test]
fn an_alert_fires_when_its_data_is_stored_not_at_the_next_evaluation() {
    let pipeline = Pipeline::start("", "500ms");
    let aggregator = &pipeline.aggregator;
    *pipeline.depth.lock().expect("value lock") = 9.0;
    let flipped = Instant::now();
    let notified = pipeline.notified(Duration::from_secs(15));
    let elapsed = flipped.elapsed();
    assert!(notified.is_some(), "QueueDeep notified within 15 s of the crossing:\n{}", aggregator.process.log());
    // One 500 ms scrape, delivery, evaluation and the router: far below the group's hour.
    assert!(elapsed < Duration::from_secs(5), "notified {elapsed:?} after the crossing");

    // The counters are recorded with the self-metrics (every 5 s).
    let triggered = wait_for(Duration::from_secs(15), || {
        latest_value(aggregator, "herd_rule_triggered_evaluations_total{rule_group=~\".*;app\"}").filter(|v| *v >= 1.0)
    });
    assert!(triggered.is_some(), "triggered evaluations counted");
    let requests = latest_value(aggregator, "herd_rule_trigger_requests_total{rule_group=~\".*;app\"}").unwrap_or(0.0);
    let skipped = latest_value(aggregator, "herd_rule_triggered_evaluations_skipped_total{rule_group=~\".*;app\"}")
        .unwrap_or(-1.0);
    assert!(requests >= triggered.unwrap_or(0.0) && skipped >= 0.0, "requests {requests}, skipped {skipped}");
}

#[test]
fn alert_inputs_sampled_between_cycles_fire_an_alert_long_before_the_next_cycle() {
    let pipeline = Pipeline::start("alert_input_interval = \"200ms\"", "10s");
    let aggregator = &pipeline.aggregator;
    let asked = wait_for(Duration::from_secs(10), || {
        pipeline.agent.log().contains("sampling alert inputs between cycles").then_some(())
    });
    assert!(asked.is_some(), "the aggregator asked the agent for its rule's input:\n{}", pipeline.agent.log());
    assert!(
        pipeline.agent.log().contains("names=1"),
        "one name: queue_depth, not queue_total:\n{}",
        pipeline.agent.log()
    );

    // Cross the threshold just after a cycle, so that the next one is most of 10 s away.
    let cycle_ms = wait_for(Duration::from_secs(25), || {
        let newest = *sample_times(aggregator, "queue_total", "5m").last()?;
        let now = unix_ms(SystemTime::now());
        (now - newest < 4_000).then_some(newest)
    })
    .expect("a cycle stored within the last 4 s");
    *pipeline.total.lock().expect("value lock") = 1.0;
    *pipeline.depth.lock().expect("value lock") = 9.0;
    let flipped = SystemTime::now();
    let notified = pipeline.notified(Duration::from_secs(15)).expect("QueueDeep notified");
    let latency = notified.duration_since(flipped).unwrap_or_default();
    let next_cycle_ms = cycle_ms + 10_000;
    assert!(
        unix_ms(notified) < next_cycle_ms - 1_000 && latency < Duration::from_secs(3),
        "notified {latency:?} after the crossing, the next cycle being {} ms after it:\n{}",
        next_cycle_ms - unix_ms(flipped),
        pipeline.agent.log()
    );

    // What was sent between cycles: the changed input alone, once.
    let depth = sample_times(aggregator, "queue_depth", "5m");
    let total = sample_times(aggregator, "queue_total", "5m");
    // A cycle may run up to half a scheduler tick (100 ms) early.
    let between = |times: &[i64]| times.iter().filter(|&&t| t > cycle_ms && t < next_cycle_ms - 500).count();
    assert_eq!(between(&depth), 1, "queue_depth: one sample when it changed, none while it did not: {depth:?}");
    assert_eq!(between(&total), 0, "queue_total, which no rule reads, waits for the cycle: {total:?}");
    assert_eq!(
        depth.iter().filter(|&&t| t <= cycle_ms).count(),
        total.iter().filter(|&&t| t <= cycle_ms).count(),
        "an unchanged input is not sent between cycles"
    );
}
