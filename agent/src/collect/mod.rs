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

pub mod containers;
pub mod herd;
pub mod host;
pub mod postgres;
pub mod probe;
pub mod redis;
pub mod scrape;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herd_common::metric::{SeriesId, SeriesTable, stale_nan};
use herd_common::protocol::SampleBatch;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
}

/// Most labels a single series may carry, common ones included.
const MAX_LABELS: usize = 32;

impl Batch {
    fn new(table: SharedSeriesTable, job: String, common_labels: Arc<Vec<(String, String)>>) -> Self {
        Self { table, job, common_labels, key_scratch: String::new(), samples: Vec::new() }
    }

    /// Adds one sample of `name{labels}`.
    pub fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let Batch { table, job, common_labels, key_scratch, samples } = self;
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
    collectors: Vec<Arc<dyn Collector>>,
    /// Per collector: its interval, and its timeout (the agent's, at most the interval).
    intervals: Vec<Duration>,
    timeouts: Vec<Duration>,
    /// Per collector: when it runs next (`None`: at the next tick).
    next_due: Vec<Option<Instant>>,
    /// How often the scheduler wakes up.
    tick: Duration,
    table: SharedSeriesTable,
    /// `instance` and the agent's own labels.
    common_labels: Arc<Vec<(String, String)>>,
    next_seq: u64,
    out: mpsc::Sender<SampleBatch>,
    /// Per collector, the series it reported last cycle (sorted).
    previous: Vec<Vec<SeriesId>>,
    /// A series-id buffer handed back and forth with `previous`.
    spare_ids: Vec<SeriesId>,
    failing: Vec<bool>,
    /// The latest samples, for the local metrics endpoint.
    latest: Option<crate::exposition::Latest>,
    /// Per collector, its latest run's samples (kept only with `latest`).
    last_samples: Vec<Vec<(SeriesId, f64)>>,
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
        let n = collectors.len();
        let intervals: Vec<Duration> = collectors.iter().map(|c| c.interval().unwrap_or(interval)).collect();
        let timeouts = intervals.iter().map(|&every| timeout.min(every)).collect();
        let tick_ms = intervals.iter().fold(interval.as_millis(), |acc, every| gcd(acc, every.as_millis()));
        let tick = Duration::from_millis(u64::try_from(tick_ms).unwrap_or(u64::MAX)).max(MIN_TICK);
        Self {
            collectors,
            intervals,
            timeouts,
            next_due: vec![None; n],
            tick,
            table,
            common_labels: Arc::new(common_labels),
            next_seq: first_seq,
            out,
            previous: vec![Vec::new(); n],
            spare_ids: Vec::new(),
            failing: vec![false; n],
            latest: None,
            last_samples: vec![Vec::new(); n],
        }
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
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let now = tokio::select! {
                _ = shutdown.cancelled() => return,
                now = ticker.tick() => now,
            };
            let Some(batch) = self.run_due(now).await else { continue };
            if self.out.send(batch).await.is_err() {
                return; // The uplink is gone: the agent is shutting down.
            }
        }
    }

    /// Runs the collectors due at `now`, if any, and returns their batch.
    pub async fn run_due(&mut self, now: Instant) -> Option<SampleBatch> {
        // Half a tick of slack: a tick that fires a little late still runs what was due on it.
        let horizon = now + self.tick / 2;
        let due: Vec<usize> =
            (0..self.collectors.len()).filter(|&i| self.next_due[i].is_none_or(|at| at <= horizon)).collect();
        if due.is_empty() {
            return None;
        }
        for &i in &due {
            let every = self.intervals[i];
            let mut next = self.next_due[i].map_or(now + every, |at| at + every);
            while next <= horizon {
                next += every; // Skipped runs are not made up, as with the ticker.
            }
            self.next_due[i] = Some(next);
        }
        Some(self.run_collectors(&due).await)
    }

    /// Runs every collector once, due or not, and returns the cycle's batch.
    pub async fn cycle(&mut self) -> SampleBatch {
        let now = Instant::now();
        for (next, every) in self.next_due.iter_mut().zip(&self.intervals) {
            *next = Some(now + *every);
        }
        let all: Vec<usize> = (0..self.collectors.len()).collect();
        self.run_collectors(&all).await
    }

    async fn run_collectors(&mut self, which: &[usize]) -> SampleBatch {
        let timestamp_ms = unix_millis(SystemTime::now());
        let mut tasks = JoinSet::new();
        for &index in which {
            let collector = Arc::clone(&self.collectors[index]);
            let mut batch =
                Batch::new(Arc::clone(&self.table), collector.job().to_owned(), Arc::clone(&self.common_labels));
            let timeout = self.timeouts[index];
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
                (index, batch, result, started.elapsed())
            });
        }
        let mut samples = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((index, mut batch, result, elapsed)) = joined else {
                continue; // A collector panicked; its series go stale below.
            };
            let collector = &self.collectors[index];
            let success = result.is_ok();
            match (&result, self.failing[index]) {
                (Err(err), false) => warn!(collector = collector.name(), error = %err, "collector failing"),
                (Ok(()), true) => info!(collector = collector.name(), "collector recovered"),
                _ => {}
            }
            self.failing[index] = !success;
            let name = collector.name();
            batch.push("herd_collector_success", &[("collector", name)], if success { 1.0 } else { 0.0 });
            batch.push("herd_collector_duration_seconds", &[("collector", name)], elapsed.as_secs_f64());
            // The ids reported now, in the buffer of the run before last: no allocation per cycle.
            let mut current = std::mem::take(&mut self.spare_ids);
            current.clear();
            current.extend(batch.samples.iter().map(|&(id, _)| id));
            current.sort_unstable();
            current.dedup();
            for gone in sorted_difference(&self.previous[index], &current) {
                batch.samples.push((gone, stale_nan()));
            }
            self.spare_ids = std::mem::replace(&mut self.previous[index], current);
            if self.latest.is_some() {
                self.last_samples[index].clone_from(&batch.samples);
            }
            samples.append(&mut batch.samples);
        }
        if let Some(latest) = &self.latest {
            let mut latest = latest.lock().expect("latest lock is never poisoned");
            latest.clear();
            for collector_samples in &self.last_samples {
                latest.extend_from_slice(collector_samples);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        SampleBatch { seq, timestamp_ms, samples }
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

    #[test]
    fn difference_of_sorted_lists() {
        assert_eq!(sorted_difference(&[1, 2, 3, 5], &[2, 5, 7]), vec![1, 3]);
        assert_eq!(sorted_difference(&[], &[1]), Vec::<SeriesId>::new());
    }
}
