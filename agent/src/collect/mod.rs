//! Collectors and the scheduler that runs them.
//!
//! A [`Collector`] reads one source (the host, Docker, PostgreSQL, ...) and
//! pushes samples into a [`Batch`]. The [`Scheduler`] runs every collector
//! at its own interval (the agent's unless the collector has one), in
//! parallel, each under its own timeout, adds `herd_collector_success` and
//! `herd_collector_duration_seconds`, marks series that disappeared as stale
//! (comparing a collector's run with its own previous run, so a collector
//! read less often than others does not go stale in between), and hands one
//! [`SampleBatch`] per tick that ran something to the uplink. Ticks come
//! every greatest common divisor of the intervals (at least 100 ms). Collectors are built from config values and own no global
//! state, so a new configuration can replace them while the agent runs.
//!
//! Alert inputs: when the aggregator names the series its alerting rules
//! compare directly ([`AlertInputs`]), the collectors that report any of them
//! also run every `interval_ms` between their own cycles. Those extra runs
//! send only alert-input samples whose value changed since the last one
//! sent, and touch nothing else (no staleness, no `herd_collector_*`), so a
//! threshold crossing reaches the rules within that interval while the rest
//! keeps its own.

pub mod containers;
pub mod herd;
pub mod host;
pub mod postgres;
pub mod probe;
pub mod redis;
pub mod scrape;
pub mod spec;
pub mod tls;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herd_common::metric::{SeriesId, SeriesTable, stale_nan};
use herd_common::protocol::{AlertInputs, CollectorHealth, SampleBatch};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use spec::{BuildError, CollectorSpec};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: unexpected format: {detail}")]
    Parse { path: String, detail: String },
    #[error("timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u128 },
    /// A server the collector queries (PostgreSQL, Redis) is down, slow or
    /// refused it; `detail` never holds credentials.
    #[error("{server}: {detail}")]
    Server { server: String, detail: String },
    /// The source cannot be reached at all; `detail` says what to do about it.
    #[error("{source_name} unavailable: {detail}")]
    Unavailable { source_name: &'static str, detail: String },
}

#[async_trait]
pub trait Collector: Send + Sync {
    /// Name in `herd_collector_success{collector=...}` and logs.
    fn name(&self) -> &str;
    /// The `job` label on this collector's series ("node", "postgres", ...).
    fn job(&self) -> &str;
    /// How often to run; `None`: the agent's `collect.interval`.
    fn interval(&self) -> Option<Duration> {
        None
    }
    /// Push what you could read; return the error for the rest.
    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError>;
}

/// The agent's series table, shared by collectors and the uplink.
pub type SharedSeriesTable = Arc<Mutex<SeriesTable>>;

/// Where a collector puts its samples during one cycle. Adds the `job`,
/// `instance` and agent labels to every series.
pub struct Batch {
    table: SharedSeriesTable,
    job: String,
    common_labels: Arc<Vec<(String, String)>>,
    key_scratch: String,
    samples: Vec<(SeriesId, f64)>,
    /// Between cycles: the alert inputs' names; samples of other names are skipped.
    only: Option<Arc<HashSet<String>>>,
}

/// Most labels a single series may carry, common ones included.
const MAX_LABELS: usize = 32;

impl Batch {
    fn new(table: SharedSeriesTable, job: String, common_labels: Arc<Vec<(String, String)>>) -> Self {
        Self { table, job, common_labels, key_scratch: String::new(), samples: Vec::new(), only: None }
    }

    /// Adds one sample of `name{labels}`.
    pub fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if self.only.as_ref().is_some_and(|only| !only.contains(name)) {
            return;
        }
        let Batch { table, job, common_labels, key_scratch, samples, .. } = self;
        let mut all: [(&str, &str); MAX_LABELS] = [("", ""); MAX_LABELS];
        let mut n = 0;
        let common = common_labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for pair in common.chain(std::iter::once(("job", job.as_str()))).chain(labels.iter().copied()).take(MAX_LABELS)
        {
            all[n] = pair;
            n += 1;
        }
        let id = table.lock().expect("series table lock is never poisoned: no panics while held").intern(
            name,
            &all[..n],
            key_scratch,
        );
        samples.push((id, value));
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Runs the collectors at their intervals and sends one batch per tick.
pub struct Scheduler {
    slots: Vec<Slot>,
    /// `collect.interval` and `collect.timeout`: for collectors without their own.
    interval: Duration,
    timeout: Duration,
    /// How often the scheduler wakes up.
    tick: Duration,
    table: SharedSeriesTable,
    /// `instance` and the agent's own labels.
    common_labels: Arc<Vec<(String, String)>>,
    next_seq: u64,
    out: mpsc::Sender<SampleBatch>,
    /// A series-id buffer handed back and forth with each slot's `previous`.
    spare_ids: Vec<SeriesId>,
    /// Series of collectors a new configuration removed: ended with a
    /// staleness marker in the next batch.
    retired: Vec<SeriesId>,
    /// The latest samples, for the local metrics endpoint.
    latest: Option<crate::exposition::Latest>,
    commands: Option<mpsc::Receiver<SchedulerCommand>>,
    /// Parent of the stop tokens of collectors built from specs.
    stop: CancellationToken,
    /// What the aggregator asks to sample between cycles.
    alert_inputs: Option<watch::Receiver<AlertInputs>>,
    /// Set while it asks for something.
    fast: Option<FastLane>,
}

/// Alert inputs being sampled between cycles.
struct FastLane {
    interval: Duration,
    names: Arc<HashSet<String>>,
}

/// One collector and its scheduling state.
struct Slot {
    collector: Arc<dyn Collector>,
    /// What it was built from; `None` for collectors every configuration has (the agent's own).
    spec: Option<CollectorSpec>,
    /// Ends the tasks it owns when it is removed.
    stop: Option<CancellationToken>,
    interval: Duration,
    /// The agent's timeout, at most the interval.
    timeout: Duration,
    /// When it runs next (`None`: at the next tick).
    next_due: Option<Instant>,
    /// The series it reported last run (sorted).
    previous: Vec<SeriesId>,
    failing: bool,
    /// Its last run's error, for the health reported after a configuration change.
    last_error: Option<String>,
    /// Its latest run's samples (kept only with `latest`).
    last_samples: Vec<(SeriesId, f64)>,
    /// Its series that are alert inputs, each with the value last sent
    /// (`None`: not known yet), sorted by id; empty unless the aggregator asked for any.
    watched: Vec<(SeriesId, Option<f64>)>,
    /// When its alert inputs are sampled next, between its own runs.
    next_fast: Option<Instant>,
}

impl Slot {
    fn new(collector: Arc<dyn Collector>, spec: Option<CollectorSpec>, stop: Option<CancellationToken>) -> Self {
        Slot {
            collector,
            spec,
            stop,
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
            next_due: None,
            previous: Vec::new(),
            failing: false,
            last_error: None,
            last_samples: Vec::new(),
            watched: Vec::new(),
            next_fast: None,
        }
    }

    fn health(&self) -> CollectorHealth {
        CollectorHealth { name: self.collector.name().to_owned(), error: self.last_error.clone() }
    }
}

/// Work handed to a running scheduler.
pub enum SchedulerCommand {
    /// Switch to these collectors (see [`Scheduler::apply`]); the reply is
    /// each collector's health after the first run of those that changed,
    /// or why the new set could not be built (nothing changed then).
    Apply {
        specs: Vec<CollectorSpec>,
        interval: Duration,
        timeout: Duration,
        common_labels: Vec<(String, String)>,
        reply: oneshot::Sender<Result<Vec<CollectorHealth>, BuildError>>,
    },
}

/// Shortest scheduler tick, whatever the intervals.
const MIN_TICK: Duration = Duration::from_millis(100);

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Scheduler {
    pub fn new(
        collectors: Vec<Arc<dyn Collector>>,
        interval: Duration,
        timeout: Duration,
        table: SharedSeriesTable,
        common_labels: Vec<(String, String)>,
        first_seq: u64,
        out: mpsc::Sender<SampleBatch>,
    ) -> Self {
        let slots = collectors.into_iter().map(|c| Slot::new(c, None, None)).collect();
        let mut scheduler = Self {
            slots,
            interval,
            timeout,
            tick: MIN_TICK,
            table,
            common_labels: Arc::new(common_labels),
            next_seq: first_seq,
            out,
            spare_ids: Vec::new(),
            retired: Vec::new(),
            latest: None,
            commands: None,
            stop: CancellationToken::new(),
            alert_inputs: None,
            fast: None,
        };
        scheduler.retune();
        scheduler
    }

    /// A scheduler for the collectors `specs` describe, plus `always`
    /// (collectors every configuration has). `stop` ends the tasks the
    /// collectors own.
    #[allow(clippy::too_many_arguments)]
    pub fn from_specs(
        specs: &[CollectorSpec],
        always: Vec<Arc<dyn Collector>>,
        interval: Duration,
        timeout: Duration,
        table: SharedSeriesTable,
        common_labels: Vec<(String, String)>,
        first_seq: u64,
        out: mpsc::Sender<SampleBatch>,
        stop: CancellationToken,
    ) -> Result<Self, BuildError> {
        let mut scheduler = Self::new(always, interval, timeout, table, common_labels, first_seq, out);
        scheduler.stop = stop;
        let mut built = Vec::with_capacity(specs.len());
        for spec in specs {
            let token = scheduler.stop.child_token();
            built.push(Slot::new(spec.build(token.clone())?, Some(spec.clone()), Some(token)));
        }
        built.append(&mut scheduler.slots);
        scheduler.slots = built;
        scheduler.retune();
        Ok(scheduler)
    }

    /// Takes commands (configuration changes) from `commands` while running.
    pub fn with_commands(mut self, commands: mpsc::Receiver<SchedulerCommand>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// Samples what `inputs` names between cycles (see the module's documentation).
    pub fn with_alert_inputs(mut self, inputs: watch::Receiver<AlertInputs>) -> Self {
        self.alert_inputs = Some(inputs);
        self
    }

    /// Starts, changes or ends the sampling of alert inputs between cycles.
    pub fn set_alert_inputs(&mut self, inputs: &AlertInputs) {
        self.fast = inputs.is_active().then(|| FastLane {
            interval: Duration::from_millis(u64::from(inputs.interval_ms)).max(MIN_TICK),
            names: Arc::new(inputs.names.iter().cloned().collect()),
        });
        let table = self.table.lock().expect("series table lock is never poisoned");
        for slot in &mut self.slots {
            slot.next_fast = None;
            slot.watched = watched_of(&table, self.fast.as_ref(), &slot.previous, &slot.watched);
        }
        drop(table);
        self.retune();
        let collectors = self.slots.iter().filter(|s| !s.watched.is_empty()).count();
        match &self.fast {
            Some(fast) => info!(
                interval_ms = fast.interval.as_millis() as u64,
                names = fast.names.len(),
                collectors,
                "sampling alert inputs between cycles"
            ),
            None => info!("not sampling alert inputs between cycles"),
        }
    }

    /// Sets each slot's interval and timeout and the tick from them.
    fn retune(&mut self) {
        for slot in &mut self.slots {
            slot.interval = slot
                .spec
                .as_ref()
                .map_or_else(|| slot.collector.interval(), CollectorSpec::interval)
                .unwrap_or(self.interval);
            slot.timeout = self.timeout.min(slot.interval);
        }
        let fast_ms = self.fast.as_ref().map_or(0, |fast| fast.interval.as_millis());
        let tick_ms = self
            .slots
            .iter()
            .fold(gcd(self.interval.as_millis(), fast_ms), |acc, slot| gcd(acc, slot.interval.as_millis()));
        self.tick = Duration::from_millis(u64::try_from(tick_ms).unwrap_or(u64::MAX)).max(MIN_TICK);
    }

    /// How often the scheduler wakes up: the intervals' greatest common divisor.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Keeps a copy of each cycle's samples in `latest` (for the local endpoint).
    pub fn with_latest(mut self, latest: crate::exposition::Latest) -> Self {
        self.latest = Some(latest);
        self
    }

    /// Collects until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut commands = self.commands.take();
        let mut alert_inputs = self.alert_inputs.take();
        'ticking: loop {
            let mut ticker = tokio::time::interval(self.tick);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                let now = tokio::select! {
                    _ = shutdown.cancelled() => break 'ticking,
                    now = ticker.tick() => now,
                    Some(command) = async { match commands.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                        let tick = self.tick;
                        let SchedulerCommand::Apply { specs, interval, timeout, common_labels, reply } = command;
                        let result = self.apply(specs, interval, timeout, common_labels).await;
                        let _ = reply.send(result);
                        if self.tick != tick {
                            continue 'ticking;
                        }
                        continue;
                    }
                    Ok(()) = async { match alert_inputs.as_mut() { Some(inputs) => inputs.changed().await, None => std::future::pending().await } } => {
                        let tick = self.tick;
                        let inputs = alert_inputs.as_mut().map(|i| i.borrow_and_update().clone()).unwrap_or_default();
                        self.set_alert_inputs(&inputs);
                        if self.tick != tick {
                            continue 'ticking;
                        }
                        continue;
                    }
                };
                let Some(batch) = self.run_due(now).await else { continue };
                if self.out.send(batch).await.is_err() {
                    break 'ticking; // The uplink is gone: the agent is shutting down.
                }
            }
        }
        self.stop.cancel();
    }

    /// Switches to the collectors `specs` describe, under a new
    /// `collect.interval`, `collect.timeout` and common labels. Collectors
    /// whose settings did not change keep running on their schedule, with
    /// their series and connections; a changed interval only re-tunes one;
    /// new and changed ones are built (if any cannot be, nothing changes)
    /// and run at once; removed ones are stopped and their series end with a
    /// staleness marker in the next batch. Returns every collector's health
    /// after that first run.
    pub async fn apply(
        &mut self,
        specs: Vec<CollectorSpec>,
        interval: Duration,
        timeout: Duration,
        common_labels: Vec<(String, String)>,
    ) -> Result<Vec<CollectorHealth>, BuildError> {
        // Decide every spec first, building what is new, so that a collector
        // that cannot be built leaves the running ones untouched.
        enum Choice {
            Keep(usize),
            New(Arc<dyn Collector>, CancellationToken),
        }
        let mut kept = vec![false; self.slots.len()];
        let mut choices = Vec::with_capacity(specs.len());
        for spec in &specs {
            let reusable = (0..self.slots.len())
                .find(|&i| !kept[i] && self.slots[i].spec.as_ref().is_some_and(|running| running.same_collector(spec)));
            if let Some(i) = reusable {
                kept[i] = true;
                choices.push(Choice::Keep(i));
                continue;
            }
            let token = self.stop.child_token();
            match spec.build(token.clone()) {
                Ok(collector) => choices.push(Choice::New(collector, token)),
                Err(err) => {
                    token.cancel();
                    for choice in &choices {
                        if let Choice::New(_, token) = choice {
                            token.cancel();
                        }
                    }
                    return Err(err);
                }
            }
        }
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.slots).into_iter().map(Some).collect();
        let mut slots = Vec::with_capacity(specs.len() + 1);
        // Indices in `slots` that run now: new, rebuilt or re-tuned.
        let mut run_now = Vec::new();
        for (spec, choice) in specs.into_iter().zip(choices) {
            match choice {
                Choice::Keep(at) => {
                    let mut slot = old[at].take().expect("each old slot is kept at most once");
                    if slot.spec.as_ref() != Some(&spec) {
                        run_now.push(slots.len());
                    }
                    slot.spec = Some(spec);
                    slots.push(slot);
                }
                Choice::New(collector, token) => {
                    info!(collector = collector.name(), "collector started");
                    run_now.push(slots.len());
                    slots.push(Slot::new(collector, Some(spec), Some(token)));
                }
            }
        }
        // Collectors every configuration has stay; the rest of the old ones go.
        for slot in old.into_iter().flatten() {
            if slot.spec.is_none() {
                slots.push(slot);
            } else {
                if let Some(stop) = &slot.stop {
                    stop.cancel();
                }
                info!(collector = slot.collector.name(), "collector removed");
                self.retired.extend_from_slice(&slot.previous);
            }
        }
        let labels_changed = *self.common_labels != common_labels;
        self.common_labels = Arc::new(common_labels);
        self.interval = interval;
        self.timeout = timeout;
        let before: Vec<Duration> = slots.iter().map(|s| s.interval).collect();
        self.slots = slots;
        self.retune();
        for (index, slot) in self.slots.iter().enumerate() {
            // Every series is renamed by new common labels; a new interval starts now.
            let retuned = before.get(index).is_some_and(|&b| b != Duration::ZERO && b != slot.interval);
            if (labels_changed || retuned) && !run_now.contains(&index) {
                run_now.push(index);
            }
        }
        if !run_now.is_empty() {
            let now = Instant::now();
            for &index in &run_now {
                let slot = &mut self.slots[index];
                slot.next_due = Some(now + slot.interval);
            }
            run_now.sort_unstable();
            let batch = self.run_collectors(&run_now, &[]).await;
            let batch = self.sequenced(batch);
            let _ = self.out.send(batch).await;
        }
        Ok(self.slots.iter().filter(|s| s.spec.is_some()).map(Slot::health).collect())
    }

    /// Runs the collectors due at `now`, and the alert inputs due then, if
    /// any, and returns their batch (none if nothing ran or changed).
    pub async fn run_due(&mut self, now: Instant) -> Option<SampleBatch> {
        // Half a tick of slack: a tick that fires a little late still runs what was due on it.
        let horizon = now + self.tick / 2;
        let due: Vec<usize> =
            (0..self.slots.len()).filter(|&i| self.slots[i].next_due.is_none_or(|at| at <= horizon)).collect();
        let fast_due: Vec<usize> = match &self.fast {
            Some(_) => (0..self.slots.len())
                .filter(|&i| {
                    let slot = &self.slots[i];
                    !slot.watched.is_empty() && !due.contains(&i) && slot.next_fast.is_none_or(|at| at <= horizon)
                })
                .collect(),
            None => Vec::new(),
        };
        if due.is_empty() && fast_due.is_empty() {
            return None;
        }
        for &i in &due {
            let slot = &mut self.slots[i];
            let every = slot.interval;
            let mut next = slot.next_due.map_or(now + every, |at| at + every);
            while next <= horizon {
                next += every; // Skipped runs are not made up, as with the ticker.
            }
            slot.next_due = Some(next);
        }
        if let Some(fast) = &self.fast {
            for &i in due.iter().chain(&fast_due) {
                let slot = &mut self.slots[i];
                let mut next = slot.next_fast.map_or(now + fast.interval, |at| at + fast.interval);
                while next <= horizon {
                    next += fast.interval;
                }
                slot.next_fast = Some(next);
            }
        }
        let batch = self.run_collectors(&due, &fast_due).await;
        (!due.is_empty() || !batch.samples.is_empty()).then(|| self.sequenced(batch))
    }

    /// Runs every collector once, due or not, and returns the cycle's batch.
    pub async fn cycle(&mut self) -> SampleBatch {
        let now = Instant::now();
        for slot in &mut self.slots {
            slot.next_due = Some(now + slot.interval);
        }
        let all: Vec<usize> = (0..self.slots.len()).collect();
        let batch = self.run_collectors(&all, &[]).await;
        self.sequenced(batch)
    }

    /// Gives `batch` the next sequence number.
    fn sequenced(&mut self, mut batch: SampleBatch) -> SampleBatch {
        batch.seq = self.next_seq;
        self.next_seq += 1;
        batch
    }

    /// Runs the collectors `full` (a whole cycle of each) and `fast` (their
    /// alert inputs only) and returns what they report, unsequenced.
    async fn run_collectors(&mut self, full: &[usize], fast: &[usize]) -> SampleBatch {
        let timestamp_ms = unix_millis(SystemTime::now());
        let mut tasks = JoinSet::new();
        let runs = full.iter().map(|&index| (index, false)).chain(fast.iter().map(|&index| (index, true)));
        for (index, between) in runs {
            let slot = &self.slots[index];
            let collector = Arc::clone(&slot.collector);
            let mut batch =
                Batch::new(Arc::clone(&self.table), collector.job().to_owned(), Arc::clone(&self.common_labels));
            if between {
                batch.only = self.fast.as_ref().map(|fast| Arc::clone(&fast.names));
            }
            let timeout = slot.timeout;
            tasks.spawn(async move {
                let started = Instant::now();
                let result = match tokio::time::timeout(timeout, collector.collect(&mut batch)).await {
                    Ok(result) => result,
                    Err(_) => {
                        // A cycle that did not finish reports nothing, like a failed scrape.
                        batch.samples.clear();
                        Err(CollectError::Timeout { timeout_ms: timeout.as_millis() })
                    }
                };
                (index, between, batch, result, started.elapsed())
            });
        }
        let mut samples = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((index, between, mut batch, result, elapsed)) = joined else {
                continue; // A collector panicked; its series go stale below.
            };
            if between {
                // Between cycles: changed alert inputs only; a failed run reports nothing.
                if result.is_ok() {
                    note_inputs(&mut self.slots[index].watched, &batch.samples, |sample| samples.push(sample));
                }
                continue;
            }
            let slot = &mut self.slots[index];
            let name = slot.collector.name();
            let success = result.is_ok();
            match (&result, slot.failing) {
                (Err(err), false) => warn!(collector = name, error = %err, "collector failing"),
                (Ok(()), true) => info!(collector = name, "collector recovered"),
                _ => {}
            }
            slot.failing = !success;
            slot.last_error = result.err().map(|err| err.to_string());
            batch.push("herd_collector_success", &[("collector", name)], if success { 1.0 } else { 0.0 });
            batch.push("herd_collector_duration_seconds", &[("collector", name)], elapsed.as_secs_f64());
            // The ids reported now, in the buffer of the run before last: no allocation per cycle.
            let mut current = std::mem::take(&mut self.spare_ids);
            current.clear();
            current.extend(batch.samples.iter().map(|&(id, _)| id));
            current.sort_unstable();
            current.dedup();
            for gone in sorted_difference(&slot.previous, &current) {
                batch.samples.push((gone, stale_nan()));
            }
            if self.fast.is_some() {
                if current != slot.previous {
                    let table = self.table.lock().expect("series table lock is never poisoned");
                    slot.watched = watched_of(&table, self.fast.as_ref(), &current, &slot.watched);
                }
                // The cycle sends every sample: each is now the last one sent.
                note_inputs(&mut slot.watched, &batch.samples, |_| {});
            }
            self.spare_ids = std::mem::replace(&mut slot.previous, current);
            if self.latest.is_some() {
                slot.last_samples.clone_from(&batch.samples);
            }
            samples.append(&mut batch.samples);
        }
        if !self.retired.is_empty() {
            let mut retired = std::mem::take(&mut self.retired);
            retired.sort_unstable();
            retired.dedup();
            // A series a remaining collector reports again is not ended.
            let reported: HashSet<SeriesId> = samples.iter().map(|&(id, _)| id).collect();
            samples.extend(retired.into_iter().filter(|id| !reported.contains(id)).map(|id| (id, stale_nan())));
        }
        if let Some(latest) = &self.latest {
            let mut latest = latest.lock().expect("latest lock is never poisoned");
            latest.clear();
            for slot in &self.slots {
                latest.extend_from_slice(&slot.last_samples);
            }
        }
        SampleBatch { seq: 0, timestamp_ms, samples }
    }
}

/// Which of `ids` (a slot's series, sorted) are alert inputs under `fast`
/// (none without it), each with its last value sent from `old`, if known.
fn watched_of(
    table: &SeriesTable,
    fast: Option<&FastLane>,
    ids: &[SeriesId],
    old: &[(SeriesId, Option<f64>)],
) -> Vec<(SeriesId, Option<f64>)> {
    let Some(fast) = fast else { return Vec::new() };
    ids.iter()
        .filter(|&&id| table.labels(id).and_then(|l| l.metric_name()).is_some_and(|name| fast.names.contains(name)))
        .map(|&id| (id, old.binary_search_by_key(&id, |&(i, _)| i).ok().and_then(|at| old[at].1)))
        .collect()
}

/// Records the samples of `reported` that are alert inputs (`watched`,
/// sorted by id) as the last sent, handing `changed` each whose value
/// differs from a known one sent before.
fn note_inputs(
    watched: &mut [(SeriesId, Option<f64>)],
    reported: &[(SeriesId, f64)],
    mut changed: impl FnMut((SeriesId, f64)),
) {
    if watched.is_empty() {
        return;
    }
    for &(id, value) in reported {
        let Ok(at) = watched.binary_search_by_key(&id, |&(i, _)| i) else { continue };
        if watched[at].1.replace(value).is_some_and(|last| last.to_bits() != value.to_bits()) {
            changed((id, value));
        }
    }
}

/// Elements of sorted `a` that are not in sorted `b`.
fn sorted_difference(a: &[SeriesId], b: &[SeriesId]) -> Vec<SeriesId> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if b.get(j) != Some(&x) {
            out.push(x);
        }
    }
    out
}

pub fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_common::metric::is_stale;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Reports `count` series, one fewer each cycle.
    struct Shrinking(AtomicU32);

    #[async_trait]
    impl Collector for Shrinking {
        fn name(&self) -> &str {
            "shrinking"
        }
        fn job(&self) -> &str {
            "test"
        }
        async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
            let count = self.0.fetch_sub(1, Ordering::SeqCst);
            for i in 0..count {
                out.push("thing", &[("i", &i.to_string())], f64::from(i));
            }
            Ok(())
        }
    }

    struct Hanging;

    #[async_trait]
    impl Collector for Hanging {
        fn name(&self) -> &str {
            "hanging"
        }
        fn job(&self) -> &str {
            "test"
        }
        async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
            out.push("before_hang", &[], 1.0);
            std::future::pending::<()>().await;
            Ok(())
        }
    }

    fn labels_of(table: &SharedSeriesTable, id: SeriesId) -> String {
        table.lock().unwrap().labels(id).unwrap().to_string()
    }

    #[tokio::test]
    async fn vanished_series_are_marked_stale_and_timeouts_reported() {
        let table: SharedSeriesTable = Arc::default();
        let (tx, _rx) = mpsc::channel(4);
        let mut scheduler = Scheduler::new(
            vec![Arc::new(Shrinking(AtomicU32::new(3))), Arc::new(Hanging)],
            Duration::from_secs(1),
            Duration::from_millis(50),
            Arc::clone(&table),
            vec![("instance".into(), "web-1".into())],
            10,
            tx,
        );
        let first = scheduler.cycle().await;
        assert_eq!(first.seq, 10);
        let second = scheduler.cycle().await;
        assert_eq!(second.seq, 11);
        let stale: Vec<String> =
            second.samples.iter().filter(|s| is_stale(s.1)).map(|s| labels_of(&table, s.0)).collect();
        assert_eq!(stale, vec![r#"thing{i="2", instance="web-1", job="test"}"#.to_string()]);
        let success: Vec<(String, f64)> = second
            .samples
            .iter()
            .map(|s| (labels_of(&table, s.0), s.1))
            .filter(|(l, _)| l.starts_with("herd_collector_success"))
            .collect();
        assert!(
            success.contains(&(
                r#"herd_collector_success{collector="hanging", instance="web-1", job="test"}"#.into(),
                0.0
            ))
        );
        assert!(
            success.contains(&(
                r#"herd_collector_success{collector="shrinking", instance="web-1", job="test"}"#.into(),
                1.0
            ))
        );
        // What the hanging collector pushed before its timeout is dropped with it.
        assert!(!second.samples.iter().any(|s| labels_of(&table, s.0).starts_with("before_hang")));
    }

    /// Reports one series, counting its runs; runs at its own interval.
    struct Every(Duration, &'static str, AtomicU32);

    #[async_trait]
    impl Collector for Every {
        fn name(&self) -> &str {
            self.1
        }
        fn job(&self) -> &str {
            self.1
        }
        fn interval(&self) -> Option<Duration> {
            Some(self.0)
        }
        async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
            let run = self.2.fetch_add(1, Ordering::SeqCst);
            out.push("runs", &[], f64::from(run));
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_collector_runs_at_its_own_interval_without_going_stale_between_runs() {
        let table: SharedSeriesTable = Arc::default();
        let (tx, _rx) = mpsc::channel(4);
        let fast = Arc::new(Every(Duration::from_millis(400), "fast", AtomicU32::new(0)));
        let slow = Arc::new(Every(Duration::from_millis(1000), "slow", AtomicU32::new(0)));
        let mut scheduler = Scheduler::new(
            vec![fast.clone(), slow.clone(), Arc::new(Shrinking(AtomicU32::new(1000)))],
            Duration::from_millis(600),
            Duration::from_millis(300),
            Arc::clone(&table),
            vec![("instance".into(), "web-1".into())],
            1,
            tx,
        );
        // gcd(600, 400, 1000) ms.
        assert_eq!(scheduler.tick(), Duration::from_millis(200));
        let start = Instant::now();
        let mut jobs_per_tick = Vec::new();
        for step in 0..=15u32 {
            // Ticks a little late, as real ones are.
            let now = start + Duration::from_millis(200) * step + Duration::from_millis(3);
            let Some(batch) = scheduler.run_due(now).await else {
                jobs_per_tick.push((step * 200, Vec::new()));
                continue;
            };
            let mut jobs: Vec<String> = batch
                .samples
                .iter()
                .filter(|s| labels_of(&table, s.0).starts_with("runs{"))
                .map(|s| labels_of(&table, s.0))
                .collect();
            jobs.sort();
            // The slow series is never marked stale in the ticks where only others ran.
            assert!(!batch.samples.iter().any(|s| is_stale(s.1) && labels_of(&table, s.0).starts_with("runs{")));
            jobs_per_tick.push((step * 200, jobs));
        }
        let ran = |job: &str| -> Vec<u32> {
            jobs_per_tick.iter().filter(|(_, jobs)| jobs.iter().any(|j| j.contains(job))).map(|(ms, _)| *ms).collect()
        };
        assert_eq!(ran("job=\"fast\""), vec![0, 400, 800, 1200, 1600, 2000, 2400, 2800]);
        assert_eq!(ran("job=\"slow\""), vec![0, 1000, 2000, 3000]);
        // Nothing due at 200 ms: no batch at all.
        assert_eq!(jobs_per_tick[1], (200, Vec::new()));
        assert_eq!((fast.2.load(Ordering::SeqCst), slow.2.load(Ordering::SeqCst)), (8, 4));
    }

    /// Reports `level` (set from outside) and `runs`, which changes every run.
    struct Level(AtomicU32, AtomicU32);

    #[async_trait]
    impl Collector for Level {
        fn name(&self) -> &str {
            "level"
        }
        fn job(&self) -> &str {
            "app"
        }
        async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
            out.push("level", &[], f64::from(self.0.load(Ordering::SeqCst)));
            out.push("runs", &[], f64::from(self.1.fetch_add(1, Ordering::SeqCst)));
            Ok(())
        }
    }

    #[tokio::test]
    async fn alert_inputs_are_sampled_between_cycles_and_sent_only_when_they_change() {
        let table: SharedSeriesTable = Arc::default();
        let (tx, _rx) = mpsc::channel(4);
        let level = Arc::new(Level(AtomicU32::new(0), AtomicU32::new(0)));
        let mut scheduler = Scheduler::new(
            vec![level.clone(), Arc::new(Every(Duration::from_secs(1), "other", AtomicU32::new(0)))],
            Duration::from_secs(1),
            Duration::from_millis(100),
            Arc::clone(&table),
            vec![("instance".into(), "web-1".into())],
            1,
            tx,
        );
        scheduler.set_alert_inputs(&AlertInputs { interval_ms: 200, names: vec!["level".into()] });
        assert_eq!(scheduler.tick(), Duration::from_millis(200));
        let names = |batch: &SampleBatch| -> Vec<String> {
            let mut names: Vec<String> = batch
                .samples
                .iter()
                .map(|s| table.lock().unwrap().labels(s.0).unwrap().metric_name().unwrap().to_owned())
                .collect();
            names.sort();
            names.dedup();
            names
        };
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms + 3);
        let first = scheduler.run_due(at(0)).await.expect("the first cycle runs everything");
        assert_eq!(names(&first), ["herd_collector_duration_seconds", "herd_collector_success", "level", "runs"]);
        // Unchanged between cycles: nothing to send, no batch, no sequence number used.
        assert!(scheduler.run_due(at(200)).await.is_none());
        assert_eq!(level.1.load(Ordering::SeqCst), 2, "the collector reporting an alert input ran between cycles");
        level.0.store(7, Ordering::SeqCst);
        let between = scheduler.run_due(at(400)).await.expect("a changed alert input is sent at once");
        assert_eq!(between.seq, first.seq + 1);
        assert_eq!(names(&between), ["level"], "only the alert input, no staleness, no collector health");
        assert_eq!(between.samples[0].1, 7.0);
        assert!(scheduler.run_due(at(600)).await.is_none(), "sent once, not again");
        assert!(scheduler.run_due(at(800)).await.is_none());
        let cycle = scheduler.run_due(at(1000)).await.expect("the next cycle");
        assert!(names(&cycle).contains(&"runs".to_owned()) && !cycle.samples.iter().any(|s| is_stale(s.1)));
        // The aggregator stops asking: back to one batch per cycle.
        scheduler.set_alert_inputs(&AlertInputs::default());
        assert_eq!(scheduler.tick(), Duration::from_secs(1));
        level.0.store(8, Ordering::SeqCst);
        assert!(scheduler.run_due(at(1200)).await.is_none());
    }

    fn probe(target: &str, interval_ms: u64) -> CollectorSpec {
        use herd_common::config::agent::{ProbeConfig, ProbeKind};
        let address = herd_common::config::Endpoint::parse(target.trim_start_matches("tcp://")).unwrap();
        CollectorSpec::Probe(ProbeConfig {
            target: target.to_owned(),
            kind: ProbeKind::Tcp { address },
            timeout: Duration::from_millis(50),
            interval: Duration::from_millis(interval_ms),
            tls: None,
        })
    }

    #[tokio::test]
    async fn a_new_configuration_keeps_retunes_replaces_and_ends_collectors() {
        let table: SharedSeriesTable = Arc::default();
        let (tx, mut rx) = mpsc::channel(16);
        let labels = vec![("instance".to_owned(), "web-1".to_owned())];
        let (a, b, c) =
            (probe("tcp://127.0.0.1:1", 1000), probe("tcp://127.0.0.1:2", 1000), probe("tcp://127.0.0.1:3", 1000));
        let mut scheduler = Scheduler::from_specs(
            &[a.clone(), b.clone()],
            vec![Arc::new(Shrinking(AtomicU32::new(2)))],
            Duration::from_secs(1),
            Duration::from_millis(500),
            Arc::clone(&table),
            labels.clone(),
            1,
            tx,
            CancellationToken::new(),
        )
        .unwrap();
        scheduler.cycle().await;
        let kept = Arc::clone(&scheduler.slots[0].collector);
        let series_of = |name: &str| -> Vec<SeriesId> {
            let table = table.lock().unwrap();
            (0..table.len() as SeriesId).filter(|&id| table.labels(id).unwrap().to_string().contains(name)).collect()
        };
        // `a` re-tuned to 500 ms, `b` removed, `c` added.
        let health = scheduler
            .apply(
                vec![probe("tcp://127.0.0.1:1", 500), c.clone()],
                Duration::from_secs(1),
                Duration::from_millis(500),
                labels.clone(),
            )
            .await
            .unwrap();
        assert_eq!(
            health.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
            ["probe:tcp://127.0.0.1:1", "probe:tcp://127.0.0.1:3"]
        );
        assert!(health.iter().all(|h| h.error.is_none()), "a refused TCP probe is a successful cycle: {health:?}");
        assert!(Arc::ptr_eq(&kept, &scheduler.slots[0].collector), "a re-tuned collector keeps running");
        assert_eq!(scheduler.slots[0].interval, Duration::from_millis(500));
        assert_eq!(scheduler.tick(), Duration::from_millis(500));
        let first = rx.recv().await.unwrap(); // the cycle() batch was not sent; this is apply's
        let stale: Vec<SeriesId> = first.samples.iter().filter(|s| is_stale(s.1)).map(|s| s.0).collect();
        let b_series = series_of("127.0.0.1:2");
        assert!(!b_series.is_empty() && b_series.iter().all(|id| stale.contains(id)), "the removed probe's series end");
        assert!(series_of("127.0.0.1:1").iter().all(|id| !stale.contains(id)), "the kept probe's series go on");
        assert!(first.samples.iter().any(|s| series_of("127.0.0.1:3").contains(&s.0)), "the new probe ran at once");
        // A collector that cannot be built leaves everything as it was.
        let bad = CollectorSpec::Host {
            config: herd_common::config::agent::HostConfig {
                procfs_root: "/proc".into(),
                mount_points_exclude: "(".into(),
                fs_types_exclude: String::new(),
                disk_devices_exclude: String::new(),
                net_devices_exclude: String::new(),
            },
            collect_timeout: Duration::from_secs(1),
        };
        assert!(scheduler.apply(vec![bad], Duration::from_secs(1), Duration::from_millis(500), labels).await.is_err());
        assert_eq!(scheduler.slots.len(), 3);
        assert!(Arc::ptr_eq(&kept, &scheduler.slots[0].collector));
    }

    #[test]
    fn difference_of_sorted_lists() {
        assert_eq!(sorted_difference(&[1, 2, 3, 5], &[2, 5, 7]), vec![1, 3]);
        assert_eq!(sorted_difference(&[], &[1]), Vec::<SeriesId>::new());
    }
}
