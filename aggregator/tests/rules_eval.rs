//! Rule evaluation through the real PromQL engine over the in-memory store,
//! with time moved by hand: alert states step by step (`for`,
//! `keep_firing_for`), what is sent to Alertmanager and when, `ALERTS` and
//! `ALERTS_FOR_STATE`, recording rules, state surviving a restart, and a
//! reload that refuses a broken file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herd_aggregator::promql::{Engine, Value};
use herd_aggregator::rules::{AlertState, EvalContext, Group, ManagerOptions, RuleManager, parse_rule_file};
use herd_aggregator::store::{MemStore, Sample, Storage};
use herd_common::metric::Labels;
use tokio_util::sync::CancellationToken;

const RULES: &str = r#"
groups:
  - name: node
    interval: 30s
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      - alert: NodeDown
        expr: up == 0
        for: 1m
        keep_firing_for: 30s
        labels:
          severity: critical
          team: '{{ $labels.job }}-team'
        annotations:
          summary: "Node {{ $labels.instance }} is down"
          description: "up is {{ $value }} ({{ $value | humanizePercentage }}) in {{ $externalLabels.cluster }}"
"#;

const S: i64 = 1000;

fn setup() -> (Arc<dyn Storage>, Engine, Group, EvalContext) {
    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    let engine = Engine::new(Arc::clone(&store), Duration::from_secs(300), 10_000);
    let groups = parse_rule_file(Path::new("node.yml"), RULES).expect("rules parse");
    let group = Group::new(groups.into_iter().next().expect("one group"), Duration::from_secs(60));
    let ctx = EvalContext {
        external_labels: Labels::from_pairs([("cluster", "eu")]),
        external_url: "http://herd:7401".into(),
        resend_delay: Duration::from_secs(60),
    };
    (store, engine, group, ctx)
}

fn up(store: &dyn Storage, instance: &str, ts_ms: i64, value: f64) {
    let series = store.series_ref(&Labels::from_pairs([("__name__", "up"), ("job", "node"), ("instance", instance)]));
    store.append(series, Sample { timestamp_ms: ts_ms, value }).expect("append");
}

fn query(engine: &Engine, expr: &str, ts_ms: i64) -> Vec<(String, f64)> {
    match engine.instant_query(expr, ts_ms).expect("query runs") {
        Value::Vector(samples) => samples.into_iter().map(|(l, s)| (l.to_string(), s.value)).collect(),
        other => panic!("not a vector: {other:?}"),
    }
}

/// (time in s, value of `up` for instance a, expected state of a's alert, alerts sent as (startsAt s, endsAt s)).
type Step = (i64, f64, Option<AlertState>, &'static [(i64, i64)]);

fn alert_states(group: &Group) -> Vec<(String, AlertState)> {
    group.rules[1].active.values().map(|a| (a.labels.get("instance").unwrap_or("").to_owned(), a.state)).collect()
}

#[test]
fn alert_lifecycle_with_for_and_keep_firing_for() {
    let (store, engine, mut group, ctx) = setup();
    let steps: &[Step] = &[
        (0, 1.0, None, &[]),
        (30, 0.0, Some(AlertState::Pending), &[]),
        (60, 0.0, Some(AlertState::Pending), &[]),
        // for: 1m after activeAt 30s: fires at 90s; valid until 90 + 4 * max(resend 60, interval 30).
        (90, 0.0, Some(AlertState::Firing), &[(90, 330)]),
        // Not resent before resend_delay has passed.
        (120, 0.0, Some(AlertState::Firing), &[]),
        // Back up: keep_firing_for 30s holds it firing from 150 to 180.
        (150, 1.0, Some(AlertState::Firing), &[]),
        // Resent after resend_delay (last sent 90).
        (165, 1.0, Some(AlertState::Firing), &[(90, 165 + 240)]),
        (180, 1.0, Some(AlertState::Inactive), &[(90, 180)]),
        // Resolved alerts are not sent again until resend_delay.
        (210, 1.0, Some(AlertState::Inactive), &[]),
        (300, 1.0, Some(AlertState::Inactive), &[(90, 180)]),
        // Kept 15 minutes after resolving, then dropped.
        (180 + 901, 1.0, None, &[]),
    ];
    for &(t, value, expected, sent) in steps {
        up(store.as_ref(), "a", t * S, value);
        let outcome = group.eval(&engine, store.as_ref(), t * S, &ctx);
        let states = alert_states(&group);
        assert_eq!(states.first().map(|s| s.1), expected, "state at {t}s");
        let got: Vec<(i64, i64)> = outcome.to_send.iter().map(|a| (a.starts_at_ms / S, a.ends_at_ms / S)).collect();
        assert_eq!(got, sent, "sent at {t}s");
    }
}

#[test]
fn alerts_series_labels_and_annotations() {
    let (store, engine, mut group, ctx) = setup();
    up(store.as_ref(), "a", 0, 0.0);
    up(store.as_ref(), "b", 0, 1.0);
    group.eval(&engine, store.as_ref(), 0, &ctx);
    assert_eq!(
        query(&engine, "ALERTS", 0),
        [(
            "ALERTS{alertname=\"NodeDown\", alertstate=\"pending\", instance=\"a\", job=\"node\", severity=\"critical\", team=\"node-team\"}".to_owned(),
            1.0
        )]
    );
    assert_eq!(query(&engine, "ALERTS_FOR_STATE", 0).first().map(|s| s.1), Some(0.0));
    assert_eq!(query(&engine, "job:up:sum", 0), [("job:up:sum{job=\"node\"}".to_owned(), 1.0)]);

    up(store.as_ref(), "a", 60 * S, 0.0);
    up(store.as_ref(), "b", 60 * S, 1.0);
    let outcome = group.eval(&engine, store.as_ref(), 60 * S, &ctx);
    assert_eq!(query(&engine, "ALERTS{alertstate=\"firing\"}", 60 * S).len(), 1);
    // The pending series went stale when the alert fired.
    assert!(query(&engine, "ALERTS{alertstate=\"pending\"}", 60 * S).is_empty());
    let [alert] = outcome.to_send.as_slice() else { panic!("one alert sent: {:?}", outcome.to_send) };
    assert_eq!(alert.labels.get("cluster"), Some("eu"), "external labels are added");
    assert_eq!(
        alert.annotations,
        [
            ("description".to_owned(), "up is 0 (0%) in eu".to_owned()),
            ("summary".to_owned(), "Node a is down".to_owned())
        ]
    );
    assert_eq!(alert.generator_url, "http://herd:7401/graph?g0.expr=up+%3D%3D+0&g0.tab=1");
}

#[test]
fn a_restart_keeps_pending_timers_and_firing_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.json");
    let (store, engine, mut group, ctx) = setup();
    up(store.as_ref(), "a", 0, 0.0);
    let outcome = group.eval(&engine, store.as_ref(), 0, &ctx);
    assert!(outcome.state_changed);
    let (mut state, problem) = herd_aggregator::rules::state::AlertStateStore::open(&path);
    assert!(problem.is_none());
    state.update(&group);
    state.save().expect("state saved");

    // A new process: same rules, empty memory.
    let (_, _, mut restarted, _) = setup();
    let (state, problem) = herd_aggregator::rules::state::AlertStateStore::open(&path);
    assert!(problem.is_none());
    state.restore(&mut restarted);
    assert_eq!(alert_states(&restarted), [("a".to_owned(), AlertState::Pending)]);
    up(store.as_ref(), "a", 60 * S, 0.0);
    let outcome = restarted.eval(&engine, store.as_ref(), 60 * S, &ctx);
    // Fires one minute after the first activation, not one minute after the restart.
    assert_eq!(alert_states(&restarted), [("a".to_owned(), AlertState::Firing)]);
    assert_eq!(outcome.to_send.first().map(|a| a.starts_at_ms), Some(60 * S));

    // A corrupt file is reported and ignored.
    std::fs::write(&path, b"{not json").expect("write");
    let (_, problem) = herd_aggregator::rules::state::AlertStateStore::open(&path);
    assert!(problem.is_some());
}

#[tokio::test]
async fn reload_refuses_a_broken_file_and_keeps_the_old_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("node.yml");
    std::fs::write(&rules, RULES).expect("write rules");
    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    let engine = Arc::new(Engine::new(Arc::clone(&store), Duration::from_secs(300), 10_000));
    let options = ManagerOptions {
        files: vec![dir.path().join("*.yml").display().to_string()],
        default_interval: Duration::from_secs(60),
        state_path: dir.path().join("alerts.json"),
        context: EvalContext::default(),
    };
    let shutdown = CancellationToken::new();
    let manager = RuleManager::new(engine, store, None, options, shutdown.clone());
    assert_eq!(manager.apply_config().await.expect("valid rules apply"), 1);

    std::fs::write(dir.path().join("broken.yml"), "groups:\n- name: b\n  rules:\n  - alert: X\n    expr: up ==\n")
        .expect("write broken rules");
    let err = manager.apply_config().await.expect_err("broken file refused").to_string();
    assert!(err.contains("broken.yml:4: group \"b\", rule 1, \"X\": could not parse expression"), "{err}");
    let groups = manager.groups().await;
    assert_eq!(groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["node"]);

    std::fs::write(dir.path().join("broken.yml"), "groups:\n- name: b\n  rules:\n  - alert: X\n    expr: up == 0\n")
        .expect("fix rules");
    assert_eq!(manager.apply_config().await.expect("fixed rules apply"), 2);
    manager.stop().await;
}

#[test]
fn a_failing_rule_reports_its_error_and_keeps_its_series() {
    let rules = "groups:\n- name: g\n  rules:\n  - alert: Clash\n    expr: label_replace(up, \"instance\", \"same\", \"\", \"\") == 0\n";
    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    let engine = Engine::new(Arc::clone(&store), Duration::from_secs(300), 10_000);
    let groups = parse_rule_file(Path::new("clash.yml"), rules).expect("rules parse");
    let mut group = Group::new(groups.into_iter().next().expect("one group"), Duration::from_secs(60));
    let ctx = EvalContext::default();
    up(store.as_ref(), "a", 0, 0.0);
    group.eval(&engine, store.as_ref(), 0, &ctx);
    assert_eq!(group.rules[0].health, herd_aggregator::rules::Health::Ok);
    assert_eq!(query(&engine, "ALERTS", 0).len(), 1);

    // A second instance makes both series share one label set: an error, as in Prometheus.
    up(store.as_ref(), "a", 60 * S, 0.0);
    up(store.as_ref(), "b", 60 * S, 0.0);
    let outcome = group.eval(&engine, store.as_ref(), 60 * S, &ctx);
    assert_eq!(group.rules[0].health, herd_aggregator::rules::Health::Err);
    let error = group.rules[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("same labelset"), "{error}");
    assert!(outcome.to_send.is_empty());
    // ALERTS is not marked stale for a failed evaluation: the last value stays visible.
    assert_eq!(query(&engine, "ALERTS", 60 * S).len(), 1);
}
