//! The rule manager, Prometheus style: `apply_config` loads the rule files
//! (globs expanded each time, so a reload sees new files), refuses the whole
//! set if any file is broken (the running groups keep going), and otherwise
//! replaces the running groups, carrying alert state over; each group runs as
//! a task evaluating at its interval; `stop` ends them. Evaluations run on
//! blocking threads (PromQL is CPU work); firing or resolved alerts go to the
//! notifier first, then alert state is saved if the evaluation changed it
//! (so the disk's sync does not delay a notification).
//!
//! With `evaluate_on_ingest`, a group's task also evaluates its alerting
//! rules when ingest stored data they read (`trigger`): at the time of that
//! evaluation, never sooner than `min_eval_spacing` after the previous
//! triggered one. One task per group runs both kinds one at a time, so a
//! group's evaluation timestamps only grow.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::file::{RuleFileError, RuleGroup, load_file};
use super::group::{EvalContext, EvalKind, Group};
use super::state::AlertStateStore;
use super::trigger::{GroupTrigger, Spacing, TriggerIndex, Triggers};
use crate::ingest::IngestObserver;
use crate::notify::Notifier;
use crate::promql::Engine;
use crate::store::Storage;
use herd_common::protocol::AlertInputs;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("rule file pattern {pattern:?} is not a valid glob: {message}")]
    Pattern { pattern: String, message: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Files(Vec<RuleFileError>),
    #[error("group {name:?} is defined twice in {}", file.display())]
    DuplicateGroup { name: String, file: PathBuf },
}

#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Paths or globs of rule files.
    pub files: Vec<String>,
    /// Interval of groups that set none.
    pub default_interval: Duration,
    /// Where alert state is kept across restarts.
    pub state_path: PathBuf,
    pub context: EvalContext,
}

/// Ingest-triggered evaluation (`[rules] evaluate_on_ingest`, `min_eval_spacing`).
#[derive(Debug, Clone, Default)]
pub struct IngestTriggerOptions {
    pub min_eval_spacing: Duration,
    /// By group name, overriding `min_eval_spacing`.
    pub min_eval_spacing_by_group: Vec<(String, Duration)>,
    /// How often agents sample the triggered rules' instant inputs (`rules.alert_input_interval`; zero: off).
    pub alert_input_interval: Duration,
}

impl IngestTriggerOptions {
    fn spacing_of(&self, group: &str) -> Duration {
        self.min_eval_spacing_by_group.iter().find(|(name, _)| name == group).map_or(self.min_eval_spacing, |(_, s)| *s)
    }
}

struct RunningGroup {
    group: Arc<Mutex<Group>>,
    /// Its ingest trigger, when it has rules evaluated on ingest.
    trigger: Option<Arc<GroupTrigger>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct RuleManager {
    engine: Arc<Engine>,
    store: Arc<dyn Storage>,
    notifier: Option<Arc<Notifier>>,
    options: ManagerOptions,
    state: Arc<Mutex<AlertStateStore>>,
    running: tokio::sync::Mutex<Vec<RunningGroup>>,
    shutdown: CancellationToken,
    /// Set when alerting rules are evaluated on ingest too.
    ingest_triggers: Option<IngestTriggerOptions>,
    triggers: Arc<Triggers>,
    generation: std::sync::atomic::AtomicU64,
    /// What agents are asked to sample between cycles; ingest hands it on.
    alert_inputs: tokio::sync::watch::Sender<Arc<AlertInputs>>,
}

/// Expands the patterns into the sorted list of rule files.
pub fn expand_files(patterns: &[String]) -> Result<Vec<PathBuf>, ApplyError> {
    let mut files = Vec::new();
    for pattern in patterns {
        let paths = glob::glob(pattern)
            .map_err(|err| ApplyError::Pattern { pattern: pattern.clone(), message: err.to_string() })?;
        let mut matched = false;
        for path in paths.flatten() {
            matched = true;
            files.push(path);
        }
        // A plain path that does not exist is an error; a glob matching nothing is not (as Prometheus).
        if !matched && !pattern.contains(['*', '?', '[']) {
            files.push(PathBuf::from(pattern));
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Loads every file; all errors of all files, or all groups.
pub fn load_files(files: &[PathBuf]) -> Result<Vec<RuleGroup>, ApplyError> {
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_file(file) {
            Ok(loaded) => groups.extend(loaded),
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() { Ok(groups) } else { Err(ApplyError::Files(errors)) }
}

impl RuleManager {
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<dyn Storage>,
        notifier: Option<Arc<Notifier>>,
        options: ManagerOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let (state, problem) = AlertStateStore::open(&options.state_path);
        if let Some(problem) = problem {
            warn!(error = %problem, "alert state not restored");
        }
        Self {
            engine,
            store,
            notifier,
            options,
            state: Arc::new(Mutex::new(state)),
            running: tokio::sync::Mutex::new(Vec::new()),
            shutdown,
            ingest_triggers: None,
            triggers: Arc::new(Triggers::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
            alert_inputs: tokio::sync::watch::Sender::new(Arc::default()),
        }
    }

    /// The series agents should sample between cycles, updated when the rules change.
    pub fn alert_inputs(&self) -> tokio::sync::watch::Receiver<Arc<AlertInputs>> {
        self.alert_inputs.subscribe()
    }

    /// Evaluates alerting rules when ingest stores data they read, besides
    /// periodically; give `ingest_observer` to ingest. Call before `apply_config`.
    pub fn with_ingest_triggers(mut self, options: IngestTriggerOptions) -> Self {
        self.ingest_triggers = Some(options);
        self
    }

    /// What ingest must tell about stored data, when rules are evaluated on ingest.
    pub fn ingest_observer(&self) -> Option<Arc<dyn IngestObserver>> {
        self.ingest_triggers.as_ref().map(|_| Arc::clone(&self.triggers) as Arc<dyn IngestObserver>)
    }

    /// Loads the rule files and, if all are valid, replaces the running
    /// groups. Returns the number of groups now running.
    pub async fn apply_config(&self) -> Result<usize, ApplyError> {
        let patterns = self.options.files.clone();
        let groups = tokio::task::spawn_blocking(move || load_files(&expand_files(&patterns)?))
            .await
            .expect("rule loading does not panic")?;
        let mut new_groups: Vec<Group> = Vec::with_capacity(groups.len());
        let mut keys = HashSet::new();
        for group in groups {
            let group = Group::new(group, self.options.default_interval);
            if !keys.insert(group.key()) {
                return Err(ApplyError::DuplicateGroup { name: group.name, file: group.file });
            }
            new_groups.push(group);
        }
        let mut running = self.running.lock().await;
        let old: Vec<RunningGroup> = std::mem::take(&mut *running);
        // Stop the old groups first so that no evaluation of theirs overlaps a new one.
        for group in &old {
            group.stop.cancel();
        }
        let mut old_groups = Vec::with_capacity(old.len());
        let mut old_triggers = Vec::new();
        for group in old {
            let _ = group.task.await;
            if let Some(trigger) = group.trigger {
                old_triggers.push((group.group.lock().expect("group lock is not poisoned").key(), trigger));
            }
            old_groups.push(group.group);
        }
        {
            let state = self.state.lock().expect("alert state lock is not poisoned");
            for group in &mut new_groups {
                let previous = old_groups.iter().find(|g| g.lock().expect("group lock").key() == group.key());
                match previous {
                    Some(previous) => group.copy_state(&previous.lock().expect("group lock")),
                    None => state.restore(group),
                }
            }
        }
        {
            let mut state = self.state.lock().expect("alert state lock is not poisoned");
            state.retain_groups(&keys);
        }
        // Series of removed groups go stale now rather than linger for the lookback delta.
        let now = now_ms();
        for old in &old_groups {
            let old = old.lock().expect("group lock is not poisoned");
            if !keys.contains(&old.key()) {
                old.mark_stale(self.store.as_ref(), now);
            }
        }
        let count = new_groups.len();
        // A kept group keeps its trigger: its counters, and a request not yet served.
        let triggers: Vec<Option<Arc<GroupTrigger>>> = new_groups
            .iter()
            .map(|group| {
                let options = self.ingest_triggers.as_ref().filter(|_| group.has_ingest_rules())?;
                let kept = old_triggers.iter().find(|(key, _)| *key == group.key()).map(|(_, t)| Arc::clone(t));
                Some(kept.unwrap_or_else(|| Arc::new(GroupTrigger::new(options.spacing_of(&group.name)))))
            })
            .collect();
        if self.ingest_triggers.is_some() {
            let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let pairs: Vec<(&Group, Option<Arc<GroupTrigger>>)> =
                new_groups.iter().zip(triggers.iter().cloned()).collect();
            let index = TriggerIndex::new(generation, &pairs);
            self.publish_alert_inputs(&index);
            let (triggers, store) = (Arc::clone(&self.triggers), Arc::clone(&self.store));
            // Matching the stored series reads the store's index: off the runtime.
            tokio::task::spawn_blocking(move || triggers.replace(index, store.as_ref()))
                .await
                .expect("trigger index building does not panic");
        }
        for (group, trigger) in new_groups.into_iter().zip(triggers) {
            let group = Arc::new(Mutex::new(group));
            let stop = self.shutdown.child_token();
            let task = tokio::spawn(self.group_loop(Arc::clone(&group), trigger.clone(), stop.clone()));
            running.push(RunningGroup { group, trigger, stop, task });
        }
        info!(groups = count, "rules applied");
        Ok(count)
    }

    fn publish_alert_inputs(&self, index: &TriggerIndex) {
        let Some(options) = &self.ingest_triggers else { return };
        let inputs = if options.alert_input_interval.is_zero() {
            AlertInputs::default()
        } else {
            AlertInputs {
                interval_ms: options.alert_input_interval.as_millis().try_into().unwrap_or(u32::MAX),
                names: index.alert_input_names(),
            }
        };
        self.alert_inputs.send_if_modified(|current| {
            let changed = **current != inputs;
            if changed {
                info!(interval_ms = inputs.interval_ms, names = inputs.names.len(), "alert inputs for agents");
                *current = Arc::new(inputs);
            }
            changed
        });
    }

    /// Stops every group and waits for their current evaluations.
    pub async fn stop(&self) {
        let mut running = self.running.lock().await;
        for group in running.iter() {
            group.stop.cancel();
        }
        for group in running.drain(..) {
            let _ = group.task.await;
        }
    }

    /// Snapshots of the running groups, in file and name order.
    pub async fn groups(&self) -> Vec<Group> {
        let running = self.running.lock().await;
        let mut groups: Vec<Group> =
            running.iter().map(|g| g.group.lock().expect("group lock is not poisoned").clone()).collect();
        groups.sort_by(|a, b| (&a.file, &a.name).cmp(&(&b.file, &b.name)));
        groups
    }

    /// Appends the rule manager's counters to `store` at `timestamp_ms` (`job="herd-aggregator"`).
    pub async fn record_metrics(&self, store: &dyn Storage, instance: &str, timestamp_ms: i64) {
        use herd_common::metric::{Labels, METRIC_NAME};
        use std::sync::atomic::Ordering::Relaxed;
        let running = self.running.lock().await;
        for running in running.iter() {
            let Some(trigger) = &running.trigger else { continue };
            let key = running.group.lock().expect("group lock is not poisoned").key();
            let stats = &trigger.stats;
            for (name, value) in [
                ("herd_rule_trigger_requests_total", &stats.requests),
                ("herd_rule_triggered_evaluations_total", &stats.evaluations),
                ("herd_rule_triggered_evaluations_skipped_total", &stats.skipped),
                ("herd_rule_alerting_evaluations_covered_total", &stats.periodic_covered),
            ] {
                let labels = Labels::from_pairs([
                    (METRIC_NAME, name),
                    ("job", "herd-aggregator"),
                    ("instance", instance),
                    ("rule_group", key.as_str()),
                ]);
                let series = store.series_ref(&labels);
                let _ = store.append(series, crate::store::Sample { timestamp_ms, value: value.load(Relaxed) as f64 });
            }
        }
    }

    /// Rebuilds the trigger index from the running groups and the store, so
    /// that series the store no longer holds are forgotten. The manager's
    /// owner calls it now and then (`server.rs`: hourly).
    pub async fn refresh_triggers(&self) {
        if self.ingest_triggers.is_none() {
            return;
        }
        let running = self.running.lock().await;
        let groups: Vec<Group> =
            running.iter().map(|r| r.group.lock().expect("group lock is not poisoned").clone()).collect();
        let pairs: Vec<(&Group, Option<Arc<GroupTrigger>>)> =
            groups.iter().zip(running.iter().map(|r| r.trigger.clone())).collect();
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let index = TriggerIndex::new(generation, &pairs);
        let (triggers, store) = (Arc::clone(&self.triggers), Arc::clone(&self.store));
        // Held across the rebuild so that a reload cannot publish its index before this older one.
        let _running = running;
        tokio::task::spawn_blocking(move || triggers.replace(index, store.as_ref()))
            .await
            .expect("trigger index building does not panic");
    }

    /// Counters of the groups evaluated on ingest, by group key.
    pub async fn trigger_stats(&self) -> Vec<(String, Arc<GroupTrigger>)> {
        let running = self.running.lock().await;
        running
            .iter()
            .filter_map(|r| {
                let trigger = r.trigger.as_ref()?;
                Some((r.group.lock().expect("group lock is not poisoned").key(), Arc::clone(trigger)))
            })
            .collect()
    }

    fn group_loop(
        &self,
        group: Arc<Mutex<Group>>,
        trigger: Option<Arc<GroupTrigger>>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + use<> {
        let engine = Arc::clone(&self.engine);
        let store = Arc::clone(&self.store);
        let notifier = self.notifier.clone();
        let state = Arc::clone(&self.state);
        let context = self.options.context.clone();
        async move {
            let (interval, key) = {
                let group = group.lock().expect("group lock is not poisoned");
                (group.interval, group.key())
            };
            let slots = EvalSlots::new(&key, interval);
            let first = tokio::time::Instant::now() + slots.until_next(now_ms());
            let mut ticker = tokio::time::interval_at(first, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last_slot_ms = i64::MIN;
            let mut last_ts_ms = i64::MIN;
            let mut spacing = Spacing::new(trigger.as_ref().map_or(Duration::ZERO, |t| t.min_spacing));
            // When the requested triggered evaluation may run. A request the
            // group's task before a reload did not serve is served now.
            let mut trigger_due: Option<tokio::time::Instant> =
                trigger.as_ref().filter(|t| t.is_requested()).map(|_| tokio::time::Instant::now());
            loop {
                let kind = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => EvalKind::Periodic,
                    _ = wait_request(trigger.as_deref()), if trigger_due.is_none() => {
                        trigger_due = Some(spacing.due(tokio::time::Instant::now()));
                        continue;
                    }
                    _ = tokio::time::sleep_until(trigger_due.unwrap_or_else(tokio::time::Instant::now)), if trigger_due.is_some() => {
                        trigger_due = None;
                        EvalKind::Ingest
                    }
                };
                let ts_ms = match kind {
                    EvalKind::Periodic => {
                        let slot = slots.current(now_ms());
                        // A late tick can land in the slot already evaluated.
                        if slot <= last_slot_ms {
                            continue;
                        }
                        last_slot_ms = slot;
                        slot
                    }
                    EvalKind::Ingest => {
                        let trigger = trigger.as_ref().expect("only groups with a trigger are triggered");
                        // Data stored from here on asks for the next evaluation.
                        trigger.take();
                        trigger.stats.evaluations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        spacing.started(tokio::time::Instant::now());
                        // The time of evaluation, after every earlier one of this group.
                        now_ms().max(last_ts_ms.saturating_add(1))
                    }
                };
                last_ts_ms = last_ts_ms.max(ts_ms);
                let (group, engine, store, state, context, notifier, trigger) = (
                    Arc::clone(&group),
                    Arc::clone(&engine),
                    Arc::clone(&store),
                    Arc::clone(&state),
                    context.clone(),
                    notifier.clone(),
                    trigger.clone(),
                );
                let evaluated = tokio::task::spawn_blocking(move || {
                    // Evaluate a copy so that readers (the API) never wait for an evaluation.
                    let mut evaluating = group.lock().expect("group lock is not poisoned").clone();
                    let mut outcome = evaluating.eval_as(kind, &engine, store.as_ref(), ts_ms, &context);
                    if let Some(trigger) = &trigger {
                        trigger
                            .stats
                            .periodic_covered
                            .fetch_add(outcome.covered as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(notifier) = &notifier {
                        notifier.send(std::mem::take(&mut outcome.to_send));
                    }
                    if outcome.state_changed {
                        let mut state = state.lock().expect("alert state lock is not poisoned");
                        state.update(&evaluating);
                        if let Err(err) = state.save() {
                            error!(error = %err, "alert state not saved");
                        }
                    }
                    *group.lock().expect("group lock is not poisoned") = evaluating;
                })
                .await;
                if let Err(err) = evaluated {
                    error!(error = %err, "rule group evaluation panicked");
                }
            }
        }
    }
}

/// Completes when `trigger` has a request; never without a trigger.
async fn wait_request(trigger: Option<&GroupTrigger>) {
    match trigger {
        Some(trigger) => trigger.requested().await,
        None => std::future::pending().await,
    }
}

/// Evaluation times of a group, as Prometheus aligns them: multiples of the
/// interval shifted by an offset derived from the group's file and name, so
/// timestamps are the same after a restart and groups spread over the interval.
struct EvalSlots {
    interval_ms: i64,
    offset_ms: i64,
}

impl EvalSlots {
    fn new(key: &str, interval: Duration) -> Self {
        let interval_ms = (interval.as_millis() as i64).max(1);
        // FNV-1a: stable across builds, unlike std's hasher.
        let hash =
            key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        Self { interval_ms, offset_ms: (hash % interval_ms as u64) as i64 }
    }

    /// The latest slot at or before `now_ms`.
    fn current(&self, now_ms: i64) -> i64 {
        let adjusted = now_ms - self.offset_ms;
        adjusted - adjusted.rem_euclid(self.interval_ms) + self.offset_ms
    }

    /// Time from `now_ms` to the next slot.
    fn until_next(&self, now_ms: i64) -> Duration {
        let next = self.current(now_ms) + self.interval_ms;
        Duration::from_millis((next - now_ms).max(0) as u64)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What `herd-aggregator rules check` prints for one file, and whether it passed.
pub fn check_file(path: &Path) -> (String, bool) {
    match load_file(path) {
        Ok(groups) => {
            let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
            (format!("Checking {}\n  SUCCESS: {rules} rules found\n\n", path.display()), true)
        }
        Err(err) => (format!("Checking {}\n  FAILED:\n{err}\n\n", path.display()), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_slots_are_aligned() {
        let slots = EvalSlots::new("rules.yml;node", Duration::from_secs(30));
        let offset = slots.offset_ms;
        assert!((0..30_000).contains(&offset));
        for now in [0, 1, 29_999, 30_000, 1_700_000_012_345] {
            let slot = slots.current(now);
            assert!(slot <= now && now - slot < 30_000, "{now} -> {slot}");
            assert_eq!((slot - offset).rem_euclid(30_000), 0);
            let wait = slots.until_next(now).as_millis() as i64;
            assert!(wait > 0 && wait <= 30_000 && (now + wait - offset).rem_euclid(30_000) == 0);
        }
        assert_eq!(EvalSlots::new("rules.yml;node", Duration::from_secs(30)).offset_ms, offset, "stable");
    }
}
