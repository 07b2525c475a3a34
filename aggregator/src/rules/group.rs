//! One rule group's evaluation, Prometheus style: at a timestamp handed in,
//! each rule's expression runs through the PromQL engine; recording rules
//! append their result to the store; alerting rules move their alerts
//! through inactive → pending → firing → resolved (honouring `for` and
//! `keep_firing_for`) and write `ALERTS` and `ALERTS_FOR_STATE`. Series a rule
//! wrote last time and not this time get a staleness marker. A periodic
//! evaluation runs every rule; one triggered by ingest runs only the
//! alerting rules marked `on_ingest`, each exactly as a periodic evaluation
//! at that time would. It reads no clock and does no I/O besides the store:
//! the manager schedules it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use herd_common::metric::{Labels, METRIC_NAME, stale_nan};

use super::file::{AlertingRule, RecordingRule, Rule, RuleGroup};
use super::template::TemplateData;
use crate::promql::{Engine, QueryRange, Value};
use crate::store::{Sample, Storage};

/// A resolved alert is still reported (as resolved) this long, as in Prometheus.
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule, identified by its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Vec<(String, String)>,
    pub state: AlertState,
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub last_sent_ms: Option<i64>,
    pub valid_until_ms: i64,
    pub keep_firing_since_ms: Option<i64>,
}

/// An alert as handed to the notifier.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingAlert {
    pub labels: Labels,
    pub annotations: Vec<(String, String)>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub generator_url: String,
}

/// What every rule sees besides its own data.
#[derive(Debug, Clone, Default)]
pub struct EvalContext {
    pub external_labels: Labels,
    pub external_url: String,
    pub resend_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

/// A rule with what its evaluations left behind.
#[derive(Debug, Clone)]
pub struct RuleState {
    pub rule: Rule,
    /// Alerts by label set (alerting rules only).
    pub active: BTreeMap<Labels, Alert>,
    pub health: Health,
    pub last_error: Option<String>,
    pub last_eval_ms: Option<i64>,
    pub last_eval_duration: Duration,
    /// Evaluated on ingest triggers too (`trigger::triggerable`), not only periodically.
    pub on_ingest: bool,
    /// Series written last evaluation, to mark stale when they disappear.
    written: HashSet<Labels>,
}

impl RuleState {
    fn new(rule: Rule) -> Self {
        Self {
            on_ingest: false,
            rule,
            active: BTreeMap::new(),
            health: Health::Unknown,
            last_error: None,
            last_eval_ms: None,
            last_eval_duration: Duration::ZERO,
            written: HashSet::new(),
        }
    }
}

/// What one evaluation of a group produced.
#[derive(Debug, Default)]
pub struct GroupOutcome {
    /// An alert was created, changed state, or was dropped: persist the state.
    pub state_changed: bool,
    pub to_send: Vec<OutgoingAlert>,
    /// Alerting rules a periodic evaluation left out: a triggered one already ran at or after its time.
    pub covered: usize,
}

/// Why a group is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalKind {
    /// At the group's interval: every rule (alerting rules already evaluated
    /// at or after this time by a trigger are left out).
    Periodic,
    /// Data an alerting rule reads was stored: the rules with `on_ingest` only.
    Ingest,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub file: std::path::PathBuf,
    pub interval: Duration,
    pub limit: usize,
    pub rules: Vec<RuleState>,
    pub last_eval_ms: Option<i64>,
    pub last_eval_duration: Duration,
}

impl Group {
    pub fn new(group: RuleGroup, default_interval: Duration) -> Self {
        let mut group = Self {
            name: group.name,
            file: group.file,
            interval: group.interval.unwrap_or(default_interval),
            limit: group.limit,
            rules: group.rules.into_iter().map(RuleState::new).collect(),
            last_eval_ms: None,
            last_eval_duration: Duration::ZERO,
        };
        let triggerable = super::trigger::triggerable(&group);
        for (state, on_ingest) in group.rules.iter_mut().zip(triggerable) {
            state.on_ingest = on_ingest;
        }
        group
    }

    /// Whether any rule is evaluated on ingest triggers.
    pub fn has_ingest_rules(&self) -> bool {
        self.rules.iter().any(|r| r.on_ingest)
    }

    /// `file` and `name` together: what a reload and the state file match groups by.
    pub fn key(&self) -> String {
        format!("{};{}", self.file.display(), self.name)
    }

    /// Takes over alerts and written series from the same group before a
    /// reload, rule by rule matched by name, so a reload neither re-fires
    /// nor forgets.
    pub fn copy_state(&mut self, old: &Group) {
        let mut used = HashSet::new();
        for rule in &mut self.rules {
            let found = old.rules.iter().enumerate().find(|(i, r)| {
                !used.contains(i) && r.rule.name() == rule.rule.name() && same_kind(&r.rule, &rule.rule)
            });
            if let Some((i, old_rule)) = found {
                used.insert(i);
                rule.active = old_rule.active.clone();
                rule.written = old_rule.written.clone();
                rule.health = old_rule.health;
                rule.last_error = old_rule.last_error.clone();
                rule.last_eval_ms = old_rule.last_eval_ms;
            }
        }
        self.last_eval_ms = old.last_eval_ms;
    }

    /// Evaluates every rule at `ts_ms`, in order (a recording rule's output is
    /// visible to the rules after it): a periodic evaluation.
    pub fn eval(&mut self, engine: &Engine, store: &dyn Storage, ts_ms: i64, ctx: &EvalContext) -> GroupOutcome {
        self.eval_as(EvalKind::Periodic, engine, store, ts_ms, ctx)
    }

    /// Evaluates the rules `kind` selects at `ts_ms`, in order. Each rule is
    /// evaluated exactly as a periodic evaluation at `ts_ms` would.
    pub fn eval_as(
        &mut self,
        kind: EvalKind,
        engine: &Engine,
        store: &dyn Storage,
        ts_ms: i64,
        ctx: &EvalContext,
    ) -> GroupOutcome {
        let started = std::time::Instant::now();
        let mut outcome = GroupOutcome::default();
        let interval_ms = self.interval.as_millis() as i64;
        for state in &mut self.rules {
            match kind {
                EvalKind::Ingest if !state.on_ingest => continue,
                // Evaluating again at an earlier time would move its alerts back in time.
                EvalKind::Periodic
                    if matches!(state.rule, Rule::Alerting(_))
                        && state.last_eval_ms.is_some_and(|last| last >= ts_ms) =>
                {
                    outcome.covered += 1;
                    continue;
                }
                _ => {}
            }
            let rule_started = std::time::Instant::now();
            let result = match &state.rule {
                Rule::Recording(rule) => eval_recording(rule, engine, ts_ms, self.limit),
                Rule::Alerting(rule) => {
                    let before: Vec<(Labels, AlertState)> =
                        state.active.iter().map(|(l, a)| (l.clone(), a.state)).collect();
                    let result = eval_alerting(rule, &mut state.active, engine, ts_ms, self.limit, ctx);
                    let after: Vec<(Labels, AlertState)> =
                        state.active.iter().map(|(l, a)| (l.clone(), a.state)).collect();
                    outcome.state_changed |= before != after;
                    // As Prometheus: a failed evaluation sends nothing (its alerts did not change).
                    if result.is_ok() {
                        outcome.to_send.extend(alerts_to_send(rule, &mut state.active, ts_ms, interval_ms, ctx));
                    }
                    result
                }
            };
            let samples = match result {
                Ok(samples) => {
                    state.health = Health::Ok;
                    state.last_error = None;
                    samples
                }
                Err(err) => {
                    tracing::debug!(group = %self.name, rule = state.rule.name(), error = %err, "rule evaluation failed");
                    state.health = Health::Err;
                    state.last_error = Some(err);
                    // As Prometheus: the series written last time are not marked stale for a failure.
                    state.last_eval_ms = Some(ts_ms);
                    state.last_eval_duration = rule_started.elapsed();
                    continue;
                }
            };
            let mut written = HashSet::with_capacity(samples.len());
            for (labels, value) in samples {
                append(store, &labels, ts_ms, value);
                written.insert(labels);
            }
            for gone in state.written.difference(&written) {
                append(store, gone, ts_ms, stale_nan());
            }
            state.written = written;
            state.last_eval_ms = Some(ts_ms);
            state.last_eval_duration = rule_started.elapsed();
        }
        self.last_eval_ms = Some(ts_ms);
        self.last_eval_duration = started.elapsed();
        outcome
    }
}

impl Group {
    /// Marks every series the group wrote last as stale, for a group that a reload removed.
    pub fn mark_stale(&self, store: &dyn Storage, ts_ms: i64) {
        for rule in &self.rules {
            for labels in &rule.written {
                append(store, labels, ts_ms, stale_nan());
            }
        }
    }
}

fn same_kind(a: &Rule, b: &Rule) -> bool {
    matches!((a, b), (Rule::Recording(_), Rule::Recording(_)) | (Rule::Alerting(_), Rule::Alerting(_)))
}

fn append(store: &dyn Storage, labels: &Labels, ts_ms: i64, value: f64) {
    let series = store.series_ref(labels);
    // A duplicate timestamp means this evaluation already ran (a restart within one interval): nothing to do.
    let _ = store.append(series, Sample { timestamp_ms: ts_ms, value });
}

/// The expression's result as a vector, a scalar becoming one sample without labels.
fn query_vector(
    engine: &Engine,
    expr: &promql_parser::parser::Expr,
    ts_ms: i64,
) -> Result<Vec<(Arc<Labels>, f64)>, String> {
    let output = engine.query(expr, QueryRange::Instant { time_ms: ts_ms }).map_err(|err| err.to_string())?;
    match output.value {
        Value::Vector(samples) => Ok(samples.into_iter().map(|(labels, sample)| (labels, sample.value)).collect()),
        Value::Scalar(sample) => Ok(vec![(Arc::new(Labels::default()), sample.value)]),
        other => Err(format!("rule result is not a vector or scalar but a {}", other.type_name())),
    }
}

fn eval_recording(
    rule: &RecordingRule,
    engine: &Engine,
    ts_ms: i64,
    limit: usize,
) -> Result<Vec<(Labels, f64)>, String> {
    let vector = query_vector(engine, &rule.expr, ts_ms)?;
    let mut out = Vec::with_capacity(vector.len());
    let mut seen = HashSet::with_capacity(vector.len());
    for (labels, value) in vector {
        let pairs = labels
            .iter()
            .filter(|(name, _)| *name != METRIC_NAME)
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .chain(rule.labels.iter().map(|(n, v)| (n.to_owned(), v.to_owned())))
            .chain([(METRIC_NAME.to_owned(), rule.record.clone())]);
        let labels = Labels::from_pairs(pairs);
        if !seen.insert(labels.clone()) {
            return Err("vector contains metrics with the same labelset after applying rule labels".into());
        }
        out.push((labels, value));
    }
    if limit > 0 && out.len() > limit {
        return Err(format!("exceeded limit of {limit} with {} series", out.len()));
    }
    Ok(out)
}

fn template_data<'a>(labels: &'a Labels, value: f64, ctx: &'a EvalContext) -> TemplateData<'a> {
    TemplateData {
        labels: labels.iter().collect(),
        external_labels: ctx.external_labels.iter().collect(),
        external_url: &ctx.external_url,
        value,
    }
}

/// Updates `active` from the expression's result at `ts_ms`; returns the
/// `ALERTS` and `ALERTS_FOR_STATE` samples to write.
fn eval_alerting(
    rule: &AlertingRule,
    active: &mut BTreeMap<Labels, Alert>,
    engine: &Engine,
    ts_ms: i64,
    limit: usize,
    ctx: &EvalContext,
) -> Result<Vec<(Labels, f64)>, String> {
    let vector = query_vector(engine, &rule.expr, ts_ms)?;
    let mut results: HashMap<Labels, (Vec<(String, String)>, f64)> = HashMap::with_capacity(vector.len());
    for (sample_labels, value) in vector {
        let data = template_data(&sample_labels, value, ctx);
        let pairs = sample_labels
            .iter()
            .filter(|(name, _)| *name != METRIC_NAME)
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .chain(rule.labels.iter().map(|(n, t)| (n.clone(), t.render(&data))))
            .chain([("alertname".to_owned(), rule.alert.clone())]);
        let labels = Labels::from_pairs(pairs);
        let annotations = rule.annotations.iter().map(|(n, t)| (n.clone(), t.render(&data))).collect();
        if results.insert(labels, (annotations, value)).is_some() {
            return Err("vector contains metrics with the same labelset after applying alert labels".into());
        }
    }
    let hold_ms = rule.hold.as_millis() as i64;
    let keep_firing_ms = rule.keep_firing_for.as_millis() as i64;
    for (labels, (annotations, value)) in &results {
        match active.get_mut(labels) {
            Some(alert) if alert.state != AlertState::Inactive => {
                alert.value = *value;
                alert.annotations.clone_from(annotations);
            }
            _ => {
                active.insert(
                    labels.clone(),
                    Alert {
                        labels: labels.clone(),
                        annotations: annotations.clone(),
                        state: AlertState::Pending,
                        value: *value,
                        active_at_ms: ts_ms,
                        fired_at_ms: None,
                        resolved_at_ms: None,
                        last_sent_ms: None,
                        valid_until_ms: 0,
                        keep_firing_since_ms: None,
                    },
                );
            }
        }
    }
    let mut samples = Vec::new();
    active.retain(|labels, alert| {
        if !results.contains_key(labels) {
            let mut keep_firing = false;
            if alert.state == AlertState::Firing && keep_firing_ms > 0 {
                let since = *alert.keep_firing_since_ms.get_or_insert(ts_ms);
                keep_firing = ts_ms - since < keep_firing_ms;
            }
            if !keep_firing {
                // A firing alert stays a while so it is reported as resolved.
                if alert.state == AlertState::Pending
                    || alert.resolved_at_ms.is_some_and(|resolved| ts_ms - resolved > RESOLVED_RETENTION_MS)
                {
                    return false;
                }
                if alert.state != AlertState::Inactive {
                    alert.state = AlertState::Inactive;
                    alert.resolved_at_ms = Some(ts_ms);
                }
                return true;
            }
        } else if alert.state != AlertState::Inactive {
            alert.keep_firing_since_ms = None;
        }
        if alert.state == AlertState::Pending && ts_ms - alert.active_at_ms >= hold_ms {
            alert.state = AlertState::Firing;
            alert.fired_at_ms = Some(ts_ms);
        }
        true
    });
    let live = active.values().filter(|a| a.state != AlertState::Inactive).count();
    if limit > 0 && live > limit {
        active.clear();
        return Err(format!("exceeded limit of {limit} with {live} alerts"));
    }
    for alert in active.values().filter(|a| a.state != AlertState::Inactive) {
        let with = |name: &str, extra: Option<(&str, &str)>| {
            Labels::from_pairs(
                alert
                    .labels
                    .iter()
                    .chain([(METRIC_NAME, name)])
                    .chain(extra)
                    .map(|(n, v)| (n.to_owned(), v.to_owned())),
            )
        };
        samples.push((with("ALERTS", Some(("alertstate", alert.state.as_str()))), 1.0));
        samples.push((with("ALERTS_FOR_STATE", None), alert.active_at_ms as f64 / 1000.0));
    }
    Ok(samples)
}

/// Firing alerts not sent for `resend_delay`, and newly resolved ones, as Prometheus's `sendAlerts`.
fn alerts_to_send(
    rule: &AlertingRule,
    active: &mut BTreeMap<Labels, Alert>,
    ts_ms: i64,
    interval_ms: i64,
    ctx: &EvalContext,
) -> Vec<OutgoingAlert> {
    let resend_ms = ctx.resend_delay.as_millis() as i64;
    let mut out = Vec::new();
    for alert in active.values_mut() {
        let needs_sending = match alert.state {
            AlertState::Pending => false,
            _ if alert.resolved_at_ms.is_some_and(|r| alert.last_sent_ms.is_none_or(|s| r > s)) => true,
            _ => alert.last_sent_ms.is_none_or(|sent| sent + resend_ms < ts_ms),
        };
        if !needs_sending {
            continue;
        }
        alert.last_sent_ms = Some(ts_ms);
        alert.valid_until_ms = ts_ms + 4 * resend_ms.max(interval_ms);
        let labels = Labels::from_pairs(
            ctx.external_labels.iter().chain(alert.labels.iter()).map(|(n, v)| (n.to_owned(), v.to_owned())),
        );
        out.push(OutgoingAlert {
            labels,
            annotations: alert.annotations.clone(),
            starts_at_ms: alert.fired_at_ms.unwrap_or(alert.active_at_ms),
            ends_at_ms: alert.resolved_at_ms.unwrap_or(alert.valid_until_ms),
            generator_url: generator_url(&ctx.external_url, &rule.expr_text),
        });
    }
    out
}

/// Where the alert's expression can be graphed, as Prometheus links it.
pub fn generator_url(external_url: &str, expr: &str) -> String {
    let expr: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    format!("{}/graph?g0.expr={expr}&g0.tab=1", external_url.trim_end_matches('/'))
}
