//! Ingest-triggered evaluation against periodic evaluation, on the same
//! recorded stream of batches: three agents whose batches arrive at
//! different moments (so a triggered evaluation often sees only some of a
//! round), driven in virtual time through the real trigger index, the real
//! spacing and the real group evaluator; and, through the real ingest write
//! path (with its WAL) and rule manager, the spacing bound under a flood of
//! batches, a remote_write request's triggers, and triggers across a reload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herd_common::metric::{Labels, METRIC_NAME};

use super::group::{Alert, EvalContext, EvalKind, Group, GroupOutcome, OutgoingAlert};
use super::trigger::{GroupTrigger, Spacing, TriggerIndex, Triggers};
use crate::ingest::{IngestObserver, ObservedSamples};
use crate::promql::Engine;
use crate::store::{MemStore, Sample, SeriesRef, Storage};

const S: i64 = 1000;
/// Virtual time starts here (a multiple of every interval used).
const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % (60 * S);

const RULES: &str = "groups:
- name: g
  interval: 2s
  rules:
  - alert: High
    expr: load > 5
    for: 2s
    keep_firing_for: 1s
    labels: {severity: page}
    annotations: {summary: 'load {{ $value }} on {{ $labels.instance }}'}
  - alert: FleetHot
    expr: sum(load) > 14
  - alert: Quiet
    expr: rate(requests_total[10s]) == 0
  - record: load:sum
    expr: sum(load)
  - alert: RecordedHot
    expr: load:sum > 14
";

/// One agent's batch: when it arrives, its samples' timestamp, its values.
#[derive(Debug, Clone)]
struct Batch {
    arrival_ms: i64,
    timestamp_ms: i64,
    instance: &'static str,
    load: f64,
    requests: f64,
}

/// 40 s of one-second rounds from three agents; each agent's batch of a
/// round arrives 10 to 900 ms late, so rounds interleave. Loads are steps
/// held for `hold` rounds.
fn stream(hold: i64) -> Vec<Batch> {
    let agents: [(&str, i64, [f64; 4]); 3] =
        [("a", 10, [1.0, 6.0, 6.0, 2.0]), ("b", 420, [4.0, 4.0, 7.0, 7.0]), ("c", 900, [6.0, 1.0, 5.0, 6.0])];
    let mut out = Vec::new();
    for round in 0..40 {
        for (index, (instance, delay_ms, loads)) in agents.iter().enumerate() {
            let timestamp_ms = T0 + round * S + index as i64 * 7;
            let step = ((round / hold) % 4) as usize;
            // `requests_total` stalls for a while on agent b.
            let stalled = *instance == "b" && (12..26).contains(&round);
            out.push(Batch {
                arrival_ms: timestamp_ms + delay_ms + (round * 37 % 90),
                timestamp_ms,
                instance,
                load: loads[step],
                requests: if stalled { 12.0 * S as f64 } else { (round * 10) as f64 },
            });
        }
    }
    out.sort_by_key(|b| b.arrival_ms);
    out
}

fn group() -> Group {
    let groups = super::file::parse_rule_file(std::path::Path::new("g.yml"), RULES).expect("rules parse");
    Group::new(groups.into_iter().next().expect("one group"), Duration::from_secs(60))
}

fn context() -> EvalContext {
    EvalContext { resend_delay: Duration::from_secs(5), ..EvalContext::default() }
}

/// A store and engine, and the batches written into it as ingest writes them.
struct Side {
    store: Arc<dyn Storage>,
    engine: Engine,
}

impl Side {
    fn new() -> Self {
        let store: Arc<dyn Storage> = Arc::new(MemStore::new());
        let engine = Engine::new(Arc::clone(&store), Duration::from_secs(300), 10_000);
        Self { store, engine }
    }

    /// Appends `batch`; returns its (series, value) pairs and each series' labels.
    fn append(&self, batch: &Batch) -> Vec<(SeriesRef, f64, Labels)> {
        let mut out = Vec::new();
        for (name, value) in [("load", batch.load), ("requests_total", batch.requests), ("other", 1.0)] {
            let labels = Labels::from_pairs([(METRIC_NAME, name), ("instance", batch.instance), ("job", "app")]);
            let series = self.store.series_ref(&labels);
            self.store.append(series, Sample { timestamp_ms: batch.timestamp_ms, value }).expect("append");
            out.push((series, value, labels));
        }
        out
    }

    /// Every sample of the `ALERTS` and `ALERTS_FOR_STATE` series of `alertnames`.
    fn alert_series(&self, alertnames: &[&str]) -> BTreeMap<String, Vec<(i64, String)>> {
        let mut out = BTreeMap::new();
        for name in ["ALERTS", "ALERTS_FOR_STATE"] {
            let matcher =
                crate::store::LabelMatcher::new(crate::store::MatchOp::Equal, METRIC_NAME, name).expect("matcher");
            for (series, labels) in self.store.select(&[matcher]) {
                if !alertnames.contains(&labels.get("alertname").unwrap_or("")) {
                    continue;
                }
                let mut samples = Vec::new();
                self.store.read(series, i64::MIN, i64::MAX, &mut samples);
                let samples = samples.iter().map(|s| (s.timestamp_ms, format!("{:?}", s.value))).collect();
                out.insert(format!("{labels:?}"), samples);
            }
        }
        out
    }
}

/// What one evaluation left, for comparison.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    ts_ms: i64,
    alerts: Vec<Alert>,
    sent: Vec<OutgoingAlert>,
}

fn snapshot(group: &Group, ts_ms: i64, sent: &[OutgoingAlert], names: &[&str]) -> Snapshot {
    let alerts = group
        .rules
        .iter()
        .filter(|r| names.contains(&r.rule.name()))
        .flat_map(|r| r.active.values().cloned())
        .collect();
    let sent = sent.iter().filter(|a| names.contains(&a.labels.get("alertname").unwrap_or(""))).cloned().collect();
    Snapshot { ts_ms, alerts, sent }
}

/// Drives `group` over `batches` in virtual time as the manager does:
/// periodic slots every interval, and with `spacing` an evaluation of the
/// alerting rules when the trigger index says a stored batch concerns the
/// group, no sooner than `spacing` after the previous one. Calls `on_eval`
/// after each evaluation of alerting rules, with the batches stored so far.
fn drive(
    side: &Side,
    group: &mut Group,
    batches: &[Batch],
    spacing: Option<Duration>,
    mut on_eval: impl FnMut(&Group, EvalKind, i64, usize, &GroupOutcome),
) {
    let ctx = context();
    let trigger = Arc::new(GroupTrigger::new(spacing.unwrap_or_default()));
    let triggers = Triggers::default();
    if spacing.is_some() {
        triggers.replace(TriggerIndex::new(1, &[(&*group, Some(Arc::clone(&trigger)))]), side.store.as_ref());
    }
    let interval_ms = group.interval.as_millis() as i64;
    let mut spacing_state = Spacing::<Duration>::new(spacing.unwrap_or_default());
    let at = |ms: i64| Duration::from_millis((ms - T0) as u64);
    let mut next_slot = T0 + interval_ms;
    let mut due: Option<i64> = None;
    let mut stored = 0;
    let mut last_ts = i64::MIN;
    let end = batches.last().map_or(T0, |b| b.arrival_ms) + 4 * interval_ms;
    let mut seen = std::collections::HashSet::new();
    loop {
        let next_arrival = batches.get(stored).map_or(i64::MAX, |b| b.arrival_ms);
        let next = next_arrival.min(next_slot).min(due.unwrap_or(i64::MAX));
        if next > end {
            break;
        }
        if next == next_arrival {
            // As ingest: series resolved, samples appended, then made durable.
            let written = side.append(&batches[stored]);
            stored += 1;
            let mut observed = ObservedSamples::default();
            for (series, _, labels) in &written {
                if seen.insert(*series) {
                    triggers.series_resolved(*series, labels);
                }
            }
            let samples: Vec<(SeriesRef, f64)> = written.iter().map(|(s, v, _)| (*s, *v)).collect();
            triggers.samples_appended(&samples, &mut observed);
            triggers.samples_durable(&mut observed);
            if trigger.is_requested() && due.is_none() {
                due = Some(T0 + spacing_state.due(at(next)).as_millis() as i64);
            }
            continue;
        }
        let (kind, ts_ms) = if due == Some(next) {
            due = None;
            trigger.take();
            spacing_state.started(at(next));
            (EvalKind::Ingest, next.max(last_ts + 1))
        } else {
            next_slot += interval_ms;
            (EvalKind::Periodic, next)
        };
        last_ts = last_ts.max(ts_ms);
        let outcome = group.eval_as(kind, &side.engine, side.store.as_ref(), ts_ms, &ctx);
        on_eval(group, kind, ts_ms, stored, &outcome);
    }
}

const TRIGGERED: [&str; 3] = ["High", "FleetHot", "Quiet"];

#[test]
fn triggered_evaluation_equals_periodic_evaluation_at_the_same_instants() {
    let batches = stream(3);
    // The triggered pipeline, recording each instant its alerting rules were evaluated.
    let triggered = Side::new();
    let mut group_t = group();
    assert_eq!(group_t.rules.iter().map(|r| r.on_ingest).collect::<Vec<_>>(), [true, true, true, false, false]);
    let mut instants = Vec::new();
    let mut snapshots_t = Vec::new();
    let mut ingest_evals = 0;
    drive(&triggered, &mut group_t, &batches, Some(Duration::from_millis(300)), |g, kind, ts, stored, outcome| {
        // Instants at which the alerting rules were evaluated (a periodic slot a trigger covered is not one).
        if kind == EvalKind::Ingest || outcome.covered == 0 {
            ingest_evals += usize::from(kind == EvalKind::Ingest);
            instants.push((ts, stored));
            snapshots_t.push(snapshot(g, ts, &outcome.to_send, &TRIGGERED));
        }
    });
    assert!(ingest_evals > 40, "triggers ran ({ingest_evals} of {} evaluations)", instants.len());

    // Plain periodic evaluation, run at exactly those instants over the same stored batches.
    let periodic = Side::new();
    let mut group_p = group();
    let mut snapshots_p = Vec::new();
    let mut stored = 0;
    for &(ts, upto) in &instants {
        while stored < upto {
            periodic.append(&batches[stored]);
            stored += 1;
        }
        let outcome = group_p.eval(&periodic.engine, periodic.store.as_ref(), ts, &context());
        snapshots_p.push(snapshot(&group_p, ts, &outcome.to_send, &TRIGGERED));
    }
    for (t, p) in snapshots_t.iter().zip(&snapshots_p) {
        assert_eq!(t, p, "at {}", t.ts_ms - T0);
    }
    assert_eq!(snapshots_t.len(), snapshots_p.len());
    assert_eq!(triggered.alert_series(&TRIGGERED), periodic.alert_series(&TRIGGERED), "same ALERTS series");
    // The stream exercises every path: pending, firing, keep_firing_for, resolution.
    let fired: Vec<&str> =
        snapshots_t.iter().flat_map(|s| s.sent.iter()).filter_map(|a| a.labels.get("alertname")).collect();
    for name in TRIGGERED {
        assert!(fired.contains(&name), "{name} fired at some point: {fired:?}");
    }
    assert!(
        snapshots_t.iter().any(|s| s.alerts.iter().any(|a| a.keep_firing_since_ms.is_some())),
        "keep_firing_for held an alert"
    );
    assert!(snapshots_t.iter().any(|s| s.sent.iter().any(|a| a.ends_at_ms <= s.ts_ms)), "a resolution was sent");
}

/// Firing and resolution times per alert (labels), in order, from what was sent.
fn transitions(sent: &[(i64, OutgoingAlert)]) -> BTreeMap<String, Vec<(&'static str, i64)>> {
    let mut out: BTreeMap<String, Vec<(&'static str, i64)>> = BTreeMap::new();
    for (ts, alert) in sent {
        let key = format!("{:?}", alert.labels);
        let events = out.entry(key).or_default();
        let resolved = alert.ends_at_ms <= *ts;
        let event = if resolved { ("resolved", alert.ends_at_ms) } else { ("firing", alert.starts_at_ms) };
        if events.last() != Some(&event) {
            events.push(event);
        }
    }
    out
}

#[test]
fn triggered_evaluation_fires_and_resolves_the_same_alerts_no_later() {
    // Loads held six rounds (three periodic intervals), so that periodic
    // evaluation sees every step: the two pipelines must agree on what fires.
    let batches = stream(6);
    let names = ["High", "Quiet", "RecordedHot"];
    let mut runs = Vec::new();
    for spacing in [None, Some(Duration::from_millis(300))] {
        let side = Side::new();
        let mut group = group();
        let mut sent = Vec::new();
        let mut fired_checks = Vec::new();
        drive(&side, &mut group, &batches, spacing, |g, _, ts, _, outcome| {
            sent.extend(
                outcome
                    .to_send
                    .iter()
                    .filter(|a| names.contains(&a.labels.get("alertname").unwrap_or("")))
                    .map(|a| (ts, a.clone())),
            );
            for alert in g.rules[0].active.values() {
                if let Some(fired) = alert.fired_at_ms {
                    fired_checks.push(fired - alert.active_at_ms);
                }
            }
        });
        assert!(fired_checks.iter().all(|held| *held >= 2 * S), "`for: 2s` honoured: {fired_checks:?}");
        runs.push((transitions(&sent), side.alert_series(&names)));
    }
    let (periodic, triggered) = (&runs[0], &runs[1]);
    assert_eq!(periodic.0.keys().collect::<Vec<_>>(), triggered.0.keys().collect::<Vec<_>>(), "same alerts");
    assert!(periodic.0.len() >= 4, "the stream fires several alerts: {:?}", periodic.0);
    for (key, events_p) in &periodic.0 {
        let events_t = &triggered.0[key];
        let kinds = |events: &[(&'static str, i64)]| events.iter().map(|e| e.0).collect::<Vec<&'static str>>();
        assert_eq!(kinds(events_p), kinds(events_t), "{key}: same firings and resolutions, in order");
        for (p, t) in events_p.iter().zip(events_t) {
            // At most one interval plus `keep_firing_for` (or `for`) later when periodic.
            assert!(
                t.1 <= p.1 && p.1 - t.1 <= 3 * S,
                "{key}: {} triggered at {} vs periodic {}",
                p.0,
                t.1 - T0,
                p.1 - T0
            );
        }
    }
    // `RecordedHot` reads a recorded series: periodic in both, so identical.
    fn recorded(series: &BTreeMap<String, Vec<(i64, String)>>) -> Vec<(String, Vec<(i64, String)>)> {
        series.iter().filter(|(k, _)| k.contains("RecordedHot")).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    assert!(!recorded(&periodic.1).is_empty());
    assert_eq!(recorded(&periodic.1), recorded(&triggered.1));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A rule manager evaluating `rules` on ingest every `spacing` at most, over
/// an in-memory store, and the ingest write path (with a real WAL) telling it.
struct Live {
    _dir: tempfile::TempDir,
    store: Arc<dyn Storage>,
    manager: crate::rules::RuleManager,
    log: Arc<crate::ingest::SeriesLog>,
    shutdown: tokio_util::sync::CancellationToken,
}

async fn live(rules: &str, spacing: Duration) -> Live {
    use crate::rules::{IngestTriggerOptions, ManagerOptions, RuleManager};
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    let engine = Arc::new(Engine::new(Arc::clone(&store), Duration::from_secs(300), 10_000));
    let options = ManagerOptions {
        files: vec![dir.path().join("rules.yml").display().to_string()],
        default_interval: Duration::from_secs(3600),
        state_path: dir.path().join("alerts.json"),
        context: EvalContext::default(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let manager = RuleManager::new(engine, Arc::clone(&store), None, options, shutdown.clone())
        .with_ingest_triggers(IngestTriggerOptions { min_eval_spacing: spacing, ..Default::default() });
    manager.apply_config().await.expect("rules apply");
    let wal = crate::wal::Wal::start(&dir.path().join("wal"), 0).expect("wal");
    let stats = Arc::new(crate::ingest::IngestStats::default());
    let log = Arc::new(crate::ingest::SeriesLog::new(Arc::clone(&store), wal, stats));
    log.set_observer(manager.ingest_observer().expect("triggers enabled"));
    Live { _dir: dir, store, manager, log, shutdown }
}

/// Stores one sample of `labels` now as an agent session does: resolve,
/// append, WAL sync, then tell the observer it is durable.
async fn store_batch(log: &crate::ingest::SeriesLog, labels: &Labels, seq: u64, value: f64) {
    let (mut wal_bytes, mut new_series) = (Vec::new(), Vec::new());
    let series = log.resolve(labels, &mut wal_bytes, &mut new_series);
    let now = now_ms();
    let samples = [(series, value)];
    log.append(now, &samples);
    let mut observed = ObservedSamples::default();
    log.note_appended(&samples, &mut observed);
    crate::wal::encode_samples("test", seq, now, &samples, &mut wal_bytes);
    log.sync(wal_bytes, new_series).await.expect("wal sync");
    log.note_durable(&mut observed);
}

/// Waits up to 5 s for the group `name` to have run `count` triggered evaluations; returns the count.
async fn triggered_evaluations(manager: &crate::rules::RuleManager, name: &str, count: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = manager
            .trigger_stats()
            .await
            .iter()
            .filter(|(key, _)| key.ends_with(&format!(";{name}")))
            .map(|(_, t)| t.stats.evaluations.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if seen >= count || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stored_before_a_reload_still_trigger_after_it() {
    let Live { _dir, store: _, manager, log, shutdown } = live(
        "groups:\n- name: kept\n  interval: 24h\n  rules:\n  - alert: Seen\n    expr: seen > 0\n",
        Duration::from_millis(50),
    )
    .await;
    let labels = Labels::from_pairs([(METRIC_NAME, "seen"), ("instance", "a")]);
    store_batch(&log, &labels, 1, 1.0).await;
    assert_eq!(triggered_evaluations(&manager, "kept", 1).await, 1);
    // A reload (SIGHUP) rebuilds the index; the agent's series is not resolved
    // again (its connection stays up), so the index must find it in the store.
    assert_eq!(manager.apply_config().await.expect("reload"), 1);
    store_batch(&log, &labels, 2, 2.0).await;
    assert_eq!(triggered_evaluations(&manager, "kept", 2).await, 2, "counted across the reload");
    manager.refresh_triggers().await;
    store_batch(&log, &labels, 3, 3.0).await;
    assert_eq!(triggered_evaluations(&manager, "kept", 3).await, 3, "and after a rebuild");
    shutdown.cancel();
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_spacing_holds_under_a_flood_of_batches() {
    let spacing = Duration::from_millis(200);
    let Live { _dir, store, manager, log, shutdown } = live(
        "groups:\n- name: flood\n  interval: 24h\n  rules:\n  - alert: Flooded\n    expr: count(flood) > 0\n",
        spacing,
    )
    .await;

    // Eight writers storing a batch every 2 ms each for 2 s, as agent sessions do.
    let flood = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let log = Arc::clone(&log);
        writers.push(tokio::spawn(async move {
            let labels = Labels::from_pairs([(METRIC_NAME, "flood"), ("instance", format!("w{writer}").as_str())]);
            let mut batches = 0u64;
            let mut last_durable_ms = 0;
            while started.elapsed() < flood {
                store_batch(&log, &labels, batches, 1.0).await;
                last_durable_ms = now_ms();
                batches += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (batches, last_durable_ms)
        }));
    }
    let mut batches = 0;
    let mut last_durable_ms = 0;
    for writer in writers {
        let (n, last) = writer.await.expect("writer");
        batches += n;
        last_durable_ms = last_durable_ms.max(last);
    }
    // The request of the last batches is served within one spacing.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let flooded_evals = |store: &dyn Storage| {
        let matcher =
            crate::store::LabelMatcher::new(crate::store::MatchOp::Equal, METRIC_NAME, "ALERTS_FOR_STATE").expect("m");
        let mut samples = Vec::new();
        for (series, _) in store.select(&[matcher]) {
            store.read(series, i64::MIN, i64::MAX, &mut samples);
        }
        samples.iter().map(|s| s.timestamp_ms).collect::<Vec<_>>()
    };
    let evals = loop {
        let evals = flooded_evals(store.as_ref());
        if evals.last().is_some_and(|last| *last >= last_durable_ms) || std::time::Instant::now() > deadline {
            break evals;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stats = manager.trigger_stats().await;
    let (_, trigger) = stats.first().expect("the group is triggered");
    let requests = trigger.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    let evaluations = trigger.stats.evaluations.load(std::sync::atomic::Ordering::Relaxed);
    let skipped = trigger.stats.skipped.load(std::sync::atomic::Ordering::Relaxed);
    shutdown.cancel();
    manager.stop().await;

    assert!(batches > 100, "a flood: {batches} batches");
    assert_eq!(requests, batches, "every stored batch asked for an evaluation");
    assert_eq!(evaluations + skipped, requests, "every request was evaluated or merged into one");
    let limit = (flood.as_millis() / spacing.as_millis()) as u64 + 2;
    assert!(evaluations <= limit && evaluations >= 5, "{evaluations} evaluations in {flood:?} (at most {limit})");
    assert_eq!(evals.len() as u64, evaluations, "one ALERTS_FOR_STATE sample per evaluation: {evals:?}");
    for pair in evals.windows(2) {
        // Spacing is kept on the monotonic clock and the timestamps read from
        // the wall clock just after: allow for a thread preempted in between.
        assert!(pair[1] - pair[0] >= spacing.as_millis() as i64 - 50, "evaluations {} ms apart", pair[1] - pair[0]);
    }
    let last = *evals.last().expect("evaluated");
    assert!(last >= last_durable_ms, "the last batches were evaluated ({last} < {last_durable_ms})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_write_request_triggers_the_groups_it_concerns() {
    use crate::remote::{proto, receiver};
    use tower::ServiceExt as _;

    let Live { _dir, store: _, manager, log, shutdown } = live(
        "groups:\n- name: rw\n  interval: 24h\n  rules:\n  - alert: Written\n    expr: rw_value > 0\n\
         - name: other\n  interval: 24h\n  rules:\n  - alert: Other\n    expr: not_written > 0\n",
        Duration::from_millis(100),
    )
    .await;
    let config = herd_common::config::remote_write::ReceiverConfig {
        enabled: true,
        allow_unauthenticated: true,
        bearer_tokens: vec![],
        basic_auth: vec![],
        max_body_bytes: 1 << 20,
    };
    let routes = receiver::routes(Arc::new(receiver::Receiver::new(log, config)));

    let request = proto::WriteRequest {
        timeseries: vec![proto::TimeSeries {
            labels: vec![
                proto::Label { name: "__name__".into(), value: "rw_value".into() },
                proto::Label { name: "job".into(), value: "prometheus".into() },
            ],
            samples: vec![proto::Sample { value: 3.0, timestamp: now_ms() }],
        }],
    };
    let (mut scratch, mut body) = (Vec::new(), Vec::new());
    proto::encode(&request, &mut scratch, &mut body);
    let post = axum::http::Request::post("/api/v1/write")
        .header("Content-Encoding", "snappy")
        .body(axum::body::Body::from(body))
        .expect("request");
    let response = routes.oneshot(post).await.expect("response");
    assert_eq!(response.status(), axum::http::StatusCode::NO_CONTENT);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let firing = loop {
        let groups = manager.groups().await;
        let firing = groups
            .iter()
            .find(|g| g.name == "rw")
            .is_some_and(|g| g.rules[0].active.values().any(|a| a.state == super::group::AlertState::Firing));
        if firing || std::time::Instant::now() > deadline {
            break firing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stats: BTreeMap<String, (u64, u64)> = manager
        .trigger_stats()
        .await
        .into_iter()
        .map(|(key, t)| {
            let name = key.rsplit(';').next().unwrap_or_default().to_owned();
            let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            (name, (load(&t.stats.requests), load(&t.stats.evaluations)))
        })
        .collect();
    shutdown.cancel();
    manager.stop().await;
    assert!(firing, "the remote_write request's sample fired its alert within 5 s (the group runs daily)");
    assert_eq!(stats["rw"], (1, 1), "one request, one evaluation");
    assert_eq!(stats["other"], (0, 0), "a group reading other series is not triggered");
}
