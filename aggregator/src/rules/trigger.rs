//! Ingest-triggered evaluation: which rule groups a stored series concerns,
//! and when such a group may be evaluated again.
//!
//! `TriggerIndex` is built from the running groups: the vector and matrix
//! selectors of every alerting rule that may run on a trigger (see
//! `triggerable`), indexed by metric name. Ingest tells `Triggers` (its
//! `IngestObserver`) each new series' labels, which are matched once and
//! remembered by `SeriesRef` (only series that match something are kept);
//! for each stored batch it looks its series up, and once the batch's WAL
//! record is synced it asks every concerned group for an evaluation.
//! `GroupTrigger` holds that request; several requests before the group's
//! task takes it count as one (`skipped`), and `Spacing` keeps a group's
//! triggered evaluations at least `min_eval_spacing` apart, so a busy fleet
//! cannot evaluate a rule more often than that.
//!
//! It evaluates nothing and does no I/O: the manager runs the evaluations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herd_common::metric::{Labels, METRIC_NAME};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use tokio::sync::Notify;

use super::file::Rule;
use super::group::Group;
use crate::ingest::{IngestObserver, ObservedSamples};
use crate::store::{SeriesRef, Storage};

/// Series the rules write themselves: no batch of ingest carries them.
const RULE_OUTPUTS: [&str; 2] = ["ALERTS", "ALERTS_FOR_STATE"];

/// One alternative of a selector: its metric name if fixed, and every other matcher.
#[derive(Debug, Clone)]
pub struct Selector {
    pub name: Option<String>,
    pub matchers: Vec<Matcher>,
    /// An instant vector selector (not the inside of a range `x[5m]`).
    pub instant: bool,
}

impl Selector {
    /// Whether the series `labels` (whose `__name__` is `name`) satisfies the selector.
    fn matches(&self, name: &str, labels: &Labels) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.matchers.iter().all(|m| m.is_match(labels.get(&m.name).unwrap_or("")))
    }

    /// Whether a series named `name` can satisfy the selector.
    fn may_read(&self, name: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.matchers.iter().filter(|m| m.name == METRIC_NAME).all(|m| m.is_match(name))
    }
}

/// Every selector of `expr`, `or` alternatives split.
pub fn selectors(expr: &Expr) -> Vec<Selector> {
    struct Collect(Vec<Selector>);
    impl ExprVisitor for Collect {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            match expr {
                Expr::VectorSelector(selector) => add(&mut self.0, selector, true),
                Expr::MatrixSelector(matrix) => add(&mut self.0, &matrix.vs, false),
                _ => {}
            }
            Ok(true)
        }
    }
    fn add(out: &mut Vec<Selector>, selector: &VectorSelector, instant: bool) {
        let base = &selector.matchers.matchers;
        let alternatives: Vec<Vec<&Matcher>> = if selector.matchers.or_matchers.is_empty() {
            vec![base.iter().collect()]
        } else {
            selector.matchers.or_matchers.iter().map(|alt| base.iter().chain(alt.iter()).collect()).collect()
        };
        for matchers in alternatives {
            let mut name = selector.name.clone();
            let mut rest = Vec::with_capacity(matchers.len());
            for matcher in matchers {
                if matcher.name == METRIC_NAME && matcher.op == MatchOp::Equal && name.is_none() {
                    name = Some(matcher.value.clone());
                } else {
                    rest.push(matcher.clone());
                }
            }
            out.push(Selector { name, matchers: rest, instant });
        }
    }
    let mut collect = Collect(Vec::new());
    let _ = walk_expr(&mut collect, expr);
    collect.0
}

/// Which rules of `group` an ingest trigger evaluates: alerting rules whose
/// selectors all name their metric and cannot read what the group itself
/// writes (its recording rules' series, `ALERTS`, `ALERTS_FOR_STATE`). The
/// others would see those series as of the last periodic evaluation, not as
/// a periodic evaluation at that instant would: they stay periodic, as do
/// recording rules.
pub fn triggerable(group: &Group) -> Vec<bool> {
    let outputs: Vec<&str> = group
        .rules
        .iter()
        .filter_map(|r| match &r.rule {
            Rule::Recording(rule) => Some(rule.record.as_str()),
            Rule::Alerting(_) => None,
        })
        .chain(RULE_OUTPUTS)
        .collect();
    group
        .rules
        .iter()
        .map(|state| match &state.rule {
            Rule::Recording(_) => false,
            Rule::Alerting(rule) => {
                let selectors = selectors(&rule.expr);
                !selectors.is_empty()
                    && selectors.iter().all(|s| s.name.is_some() && !outputs.iter().any(|o| s.may_read(o)))
            }
        })
        .collect()
}

/// Counters of one group's ingest-triggered evaluations.
#[derive(Debug, Default)]
pub struct TriggerStats {
    /// Stored batches (or remote_write requests) that asked for an evaluation.
    pub requests: AtomicU64,
    /// Requests merged into an evaluation already asked for (the spacing bound).
    pub skipped: AtomicU64,
    /// Evaluations run for requests.
    pub evaluations: AtomicU64,
    /// Periodic evaluations of alerting rules left out because a triggered one already covered the slot.
    pub periodic_covered: AtomicU64,
}

/// A group's pending request for a triggered evaluation, shared between ingest and the group's task.
#[derive(Debug)]
pub struct GroupTrigger {
    requested: AtomicBool,
    wake: Notify,
    pub min_spacing: Duration,
    pub stats: TriggerStats,
}

impl GroupTrigger {
    pub fn new(min_spacing: Duration) -> Self {
        Self { requested: AtomicBool::new(false), wake: Notify::new(), min_spacing, stats: TriggerStats::default() }
    }

    /// Asks for an evaluation; a request while one is pending adds nothing.
    pub fn request(&self) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if self.requested.swap(true, Ordering::AcqRel) {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.wake.notify_one();
        }
    }

    /// Waits for a request (one made before the call counts).
    pub async fn requested(&self) {
        self.wake.notified().await;
    }

    /// Whether a request waits to be served.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Takes the request just before evaluating: data stored from now on asks again.
    pub fn take(&self) {
        self.requested.store(false, Ordering::Release);
    }
}

/// The earliest time a group's next triggered evaluation may start. Generic
/// over the clock so that tests can drive it with plain numbers.
#[derive(Debug, Clone)]
pub struct Spacing<T> {
    min: Duration,
    last_start: Option<T>,
}

impl<T: Copy + Ord + std::ops::Add<Duration, Output = T>> Spacing<T> {
    pub fn new(min: Duration) -> Self {
        Self { min, last_start: None }
    }

    /// When an evaluation asked for at `now` may start.
    pub fn due(&self, now: T) -> T {
        self.last_start.map_or(now, |last| now.max(last + self.min))
    }

    pub fn started(&mut self, now: T) {
        self.last_start = Some(now);
    }
}

/// The running groups' selectors, and the series known to match them.
pub struct TriggerIndex {
    generation: u64,
    /// Selectors by metric name, each with the index of its group.
    by_name: HashMap<String, Vec<(u32, Selector)>>,
    groups: Vec<Arc<GroupTrigger>>,
    /// Groups each matching series concerns (series matching nothing are absent).
    matched: RwLock<HashMap<SeriesRef, GroupSet, RefHasher>>,
}

/// The groups a series concerns: almost always one, kept without an allocation.
#[derive(Debug, Clone)]
enum GroupSet {
    One(u32),
    Many(Box<[u32]>),
}

impl GroupSet {
    fn as_slice(&self) -> &[u32] {
        match self {
            GroupSet::One(group) => std::slice::from_ref(group),
            GroupSet::Many(groups) => groups,
        }
    }
}

/// Series refs are store-assigned integers, not attacker-chosen keys: a
/// multiply-shift hash is enough and costs a fraction of SipHash on the
/// per-sample lookup of every stored batch.
#[derive(Debug, Clone, Copy, Default)]
struct RefHasher;

impl std::hash::BuildHasher for RefHasher {
    type Hasher = RefHash;
    fn build_hasher(&self) -> RefHash {
        RefHash(0)
    }
}

struct RefHash(u64);

impl std::hash::Hasher for RefHash {
    fn finish(&self) -> u64 {
        let mixed = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        mixed ^ (mixed >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl TriggerIndex {
    /// Indexes the triggerable rules of `groups`, each with its trigger (`None`: never triggered).
    pub fn new(generation: u64, groups: &[(&Group, Option<Arc<GroupTrigger>>)]) -> Self {
        let mut by_name: HashMap<String, Vec<(u32, Selector)>> = HashMap::new();
        let mut triggers = Vec::new();
        for (group, trigger) in groups {
            let Some(trigger) = trigger else { continue };
            let index = triggers.len() as u32;
            let mut any = false;
            for (state, triggerable) in group.rules.iter().zip(triggerable(group)) {
                let Rule::Alerting(rule) = &state.rule else { continue };
                if !triggerable {
                    continue;
                }
                for selector in selectors(&rule.expr) {
                    let name = selector.name.clone().expect("triggerable selectors name their metric");
                    by_name.entry(name).or_default().push((index, selector));
                    any = true;
                }
            }
            if any {
                triggers.push(Arc::clone(trigger));
            }
        }
        Self { generation, by_name, groups: triggers, matched: RwLock::new(HashMap::default()) }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Metric names the triggered rules read with an instant selector, sorted:
    /// what agents sample between cycles (`rules.alert_input_interval`). A
    /// threshold on such a series flips with the newest sample; a range
    /// function over minutes (`rate(x[5m])`) moves little by one more, so
    /// names read only through ranges are left at the collection interval.
    pub fn alert_input_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, selectors)| selectors.iter().any(|(_, s)| s.instant))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        names
    }

    /// The groups `labels` concerns, in order, without repeats.
    fn groups_of(&self, labels: &Labels) -> Vec<u32> {
        let Some(name) = labels.get(METRIC_NAME) else { return Vec::new() };
        let Some(selectors) = self.by_name.get(name) else { return Vec::new() };
        let mut groups: Vec<u32> =
            selectors.iter().filter(|(_, s)| s.matches(name, labels)).map(|(group, _)| *group).collect();
        groups.dedup();
        groups
    }

    /// Remembers `series` if it concerns any group.
    fn note_series(&self, series: SeriesRef, labels: &Labels) {
        let groups = match self.groups_of(labels).as_slice() {
            [] => return,
            [one] => GroupSet::One(*one),
            many => GroupSet::Many(many.into()),
        };
        self.matched.write().expect("trigger index lock is not poisoned").insert(series, groups);
    }

    /// Matches every series the store already holds (after a reload), so
    /// agents connected before it trigger too.
    pub fn fill_from(&self, store: &dyn Storage) {
        for name in self.by_name.keys() {
            let Ok(matcher) = crate::store::LabelMatcher::new(crate::store::MatchOp::Equal, METRIC_NAME, name.as_str())
            else {
                continue;
            };
            for (series, labels) in store.select(&[matcher]) {
                self.note_series(series, &labels);
            }
        }
    }

    /// Adds the groups `samples` concern to `bits`.
    fn collect(&self, samples: &[(SeriesRef, f64)], bits: &mut Vec<u64>) {
        let matched = self.matched.read().expect("trigger index lock is not poisoned");
        if matched.is_empty() {
            return;
        }
        bits.resize(self.groups.len().div_ceil(64), 0);
        for (series, _) in samples {
            if let Some(groups) = matched.get(series) {
                for &group in groups.as_slice() {
                    bits[group as usize / 64] |= 1 << (group % 64);
                }
            }
        }
    }

    /// Asks every group set in `bits` for an evaluation.
    fn request(&self, bits: &[u64]) {
        for (word_index, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                if let Some(group) = self.groups.get(word_index * 64 + bit) {
                    group.request();
                }
            }
        }
    }
}

/// Ingest's observer: routes stored batches to the groups they concern.
pub struct Triggers {
    current: RwLock<Arc<TriggerIndex>>,
}

impl Default for Triggers {
    fn default() -> Self {
        Self { current: RwLock::new(Arc::new(TriggerIndex::new(0, &[]))) }
    }
}

impl Triggers {
    /// Puts `index` in force, then matches the series already stored against it.
    pub fn replace(&self, index: TriggerIndex, store: &dyn Storage) {
        let index = Arc::new(index);
        *self.current.write().expect("trigger lock is not poisoned") = Arc::clone(&index);
        // After publishing: a series created meanwhile is matched by `series_resolved` or found here.
        index.fill_from(store);
    }

    fn current(&self) -> Arc<TriggerIndex> {
        Arc::clone(&self.current.read().expect("trigger lock is not poisoned"))
    }
}

impl IngestObserver for Triggers {
    fn series_resolved(&self, series: SeriesRef, labels: &Labels) {
        self.current().note_series(series, labels);
    }

    fn samples_appended(&self, samples: &[(SeriesRef, f64)], pending: &mut ObservedSamples) {
        let index = self.current();
        if index.is_empty() {
            return;
        }
        if pending.generation != index.generation {
            // Bits of a replaced index mean other groups: drop them (periodic evaluation covers them).
            pending.bits.clear();
            pending.generation = index.generation;
        }
        index.collect(samples, &mut pending.bits);
    }

    fn samples_durable(&self, pending: &mut ObservedSamples) {
        if pending.bits.is_empty() {
            return;
        }
        let index = self.current();
        if pending.generation == index.generation {
            index.request(&pending.bits);
        }
        pending.bits.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::file::parse_rule_file;

    fn group(yaml: &str) -> Group {
        let groups = parse_rule_file(std::path::Path::new("t.yml"), yaml).expect("rule file parses");
        Group::new(groups.into_iter().next().expect("one group"), Duration::from_secs(1))
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
    }

    #[test]
    fn only_alerting_rules_on_ingested_series_are_triggered() {
        let g = group(
            r#"groups:
- name: g
  rules:
  - record: job:x:sum
    expr: sum(x)
  - alert: OnIngest
    expr: rate(x{job=~"a|b"}[1m]) > 0 and on() y
  - alert: OnRecorded
    expr: job:x:sum > 1
  - alert: OnAlerts
    expr: ALERTS{alertname="OnIngest"}
  - alert: NoName
    expr: '{job="a"} > 1'
  - alert: Literal
    expr: vector(1)
"#,
        );
        assert_eq!(triggerable(&g), [false, true, false, false, false, false]);
        let trigger = Arc::new(GroupTrigger::new(Duration::ZERO));
        let index = TriggerIndex::new(1, &[(&g, Some(Arc::clone(&trigger)))]);
        let check = |pairs: &[(&str, &str)], expected: &[u32]| {
            assert_eq!(index.groups_of(&labels(pairs)), expected, "{pairs:?}");
        };
        check(&[("__name__", "x"), ("job", "a")], &[0]);
        check(&[("__name__", "x"), ("job", "c")], &[]);
        check(&[("__name__", "y")], &[0]);
        check(&[("__name__", "job:x:sum")], &[]);
        check(&[("__name__", "z"), ("job", "a")], &[]);
        // `x` is read only through a range; `y` is compared as it is.
        assert_eq!(index.alert_input_names(), ["y"]);
    }

    #[test]
    fn spacing_delays_the_next_evaluation() {
        let mut spacing = Spacing::<std::time::Instant>::new(Duration::from_millis(200));
        let t0 = std::time::Instant::now();
        assert_eq!(spacing.due(t0), t0, "the first request runs at once");
        spacing.started(t0);
        assert_eq!(spacing.due(t0 + Duration::from_millis(50)), t0 + Duration::from_millis(200));
        assert_eq!(spacing.due(t0 + Duration::from_millis(300)), t0 + Duration::from_millis(300));
    }
}
