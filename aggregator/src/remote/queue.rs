//! One remote_write endpoint's queue: a reader thread tails the WAL and
//! hands samples to shards (async tasks) that batch, send and retry.
//!
//! Position: every sample read gets an index. A shard publishes the index
//! after the last sample it finished (sent, refused for good); the reader
//! keeps (index, WAL position) marks and persists the newest mark that every
//! shard has passed. After a restart the queue resumes there, so a sample is
//! sent at least once; a few may be sent twice, which receivers accept (same
//! timestamp, same value).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use herd_common::config::remote_write::{Credentials, RemoteWriteConfig};
use herd_common::metric::Labels;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::RemoteStats;
use super::proto::{self, Label, TimeSeries, WriteRequest};
use super::relabel::Relabeler;
use crate::wal::{self, SegmentHolds, WalRecord};

/// Records read from the WAL per read call.
const RECORDS_PER_READ: usize = 512;
/// Sample chunks a shard's channel holds before the reader waits.
const SHARD_CHANNEL_CHUNKS: usize = 16;
/// How often the reader looks for new WAL data when it is at the end.
const TAIL_POLL: Duration = Duration::from_millis(50);
/// How often the position is persisted and the shard count reconsidered.
const POSITION_EVERY: Duration = Duration::from_secs(1);
const RESHARD_EVERY: Duration = Duration::from_secs(10);
/// Extra requests one refused batch may be split into to isolate its bad samples.
const MAX_SPLIT_REQUESTS: usize = 64;
/// Position marks kept while shards catch up.
const MAX_MARKS: usize = 1024;

/// A series as it is sent: relabeled labels and the hash that picks its shard.
#[derive(Debug)]
struct SendSeries {
    labels: Vec<Label>,
    hash: u64,
}

#[derive(Debug, Clone)]
struct Item {
    series: Arc<SendSeries>,
    timestamp_ms: i64,
    value: f64,
    index: u64,
}

/// A WAL position: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut parts = text.split_whitespace();
        Some(Self { segment: parts.next()?.parse().ok()?, offset: parts.next()?.parse().ok()? })
    }

    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {}\n", self.segment, self.offset))?;
        std::fs::rename(&tmp, path)
    }
}

/// What the HTTP side needs; shared by the shards.
struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    url: hyper::Uri,
    authorization: Option<String>,
    timeout: Duration,
}

enum SendOutcome {
    Sent,
    /// Refused for good: drop the request and count it.
    Refused(String),
    /// Try again later.
    Retry(String),
}

impl Sender {
    async fn send(&self, body: Bytes) -> SendOutcome {
        let mut request = hyper::Request::post(self.url.clone())
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header("User-Agent", concat!("Herd/", env!("CARGO_PKG_VERSION")));
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(err) => return SendOutcome::Refused(format!("cannot build the request: {err}")),
        };
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => return SendOutcome::Retry(format!("no answer within {:?}", self.timeout)),
            Ok(Err(err)) => return SendOutcome::Retry(format!("connection error: {err}")),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        // Read the body so the connection can be reused; keep the start for the log.
        let body = tokio::time::timeout(self.timeout, response.into_body().collect()).await;
        let text = match body {
            Ok(Ok(collected)) => {
                let bytes = collected.to_bytes();
                String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).trim().to_owned()
            }
            _ => String::new(),
        };
        if status.is_success() {
            SendOutcome::Sent
        } else if status.is_server_error() || status.as_u16() == 429 {
            SendOutcome::Retry(format!("{status}: {text}"))
        } else {
            SendOutcome::Refused(format!("{status}: {text}"))
        }
    }
}

/// A shard's state visible to the reader.
#[derive(Default)]
struct ShardProgress {
    /// Index after the last sample this shard finished.
    done: AtomicU64,
    /// Set while the shard is retrying a failed send.
    failing: AtomicBool,
}

struct Shard {
    tx: mpsc::Sender<Vec<Item>>,
    progress: Arc<ShardProgress>,
    /// Index after the last sample handed to this shard.
    enqueued: u64,
    task: tokio::task::JoinHandle<()>,
}

pub struct Queue {
    config: RemoteWriteConfig,
    relabeler: Relabeler,
    wal_dir: PathBuf,
    position_file: PathBuf,
    holds: Arc<SegmentHolds>,
    pub stats: Arc<RemoteStats>,
    sender: Arc<Sender>,
    reshard_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("remote_write {name}: url {url:?} is not a valid URL")]
    Url { name: String, url: String },
    #[error("remote_write {name}: a write_relabel_configs regex does not compile: {source}")]
    Regex { name: String, source: regex::Error },
    #[error("remote_write {name}: cannot create {path}: {source}")]
    StateDir { name: String, path: PathBuf, source: std::io::Error },
}

impl Queue {
    pub fn new(
        config: RemoteWriteConfig,
        wal_dir: &Path,
        state_dir: &Path,
        holds: Arc<SegmentHolds>,
    ) -> Result<Self, QueueError> {
        let url: hyper::Uri =
            config.url.parse().map_err(|_| QueueError::Url { name: config.name.clone(), url: config.url.clone() })?;
        let relabeler = Relabeler::new(&config.write_relabel_configs)
            .map_err(|source| QueueError::Regex { name: config.name.clone(), source })?;
        let dir = state_dir.join("remote_write");
        std::fs::create_dir_all(&dir).map_err(|source| QueueError::StateDir {
            name: config.name.clone(),
            path: dir.clone(),
            source,
        })?;
        let authorization = match &config.credentials {
            Credentials::None => None,
            Credentials::Bearer(token) => Some(format!("Bearer {}", token.expose())),
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()))
            )),
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let stats = Arc::new(RemoteStats {
            name: config.name.clone(),
            url: config.url.clone(),
            highest_read_timestamp_ms: i64::MIN.into(),
            highest_sent_timestamp_ms: i64::MIN.into(),
            ..RemoteStats::default()
        });
        Ok(Self {
            position_file: dir.join(format!("{}.position", config.name)),
            sender: Arc::new(Sender { client, url, authorization, timeout: config.timeout }),
            relabeler,
            wal_dir: wal_dir.to_owned(),
            holds,
            stats,
            config,
            reshard_every: RESHARD_EVERY,
        })
    }

    /// How often the shard count is reconsidered (tests shorten it).
    pub fn with_reshard_interval(mut self, every: Duration) -> Self {
        self.reshard_every = every;
        self
    }

    /// Runs until `shutdown`; the WAL is read on a blocking thread.
    pub async fn run(self, shutdown: CancellationToken) {
        let runtime = tokio::runtime::Handle::current();
        let name = self.config.name.clone();
        let result = tokio::task::spawn_blocking(move || Reader::new(self, runtime, shutdown).run()).await;
        if let Err(err) = result {
            tracing::error!(remote = %name, error = %err, "remote_write queue stopped unexpectedly");
        }
    }
}

struct Reader {
    queue: Queue,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    /// WAL series ref → what to send (`None`: dropped by relabeling).
    series: HashMap<u64, Option<Arc<SendSeries>>>,
    shards: Vec<Shard>,
    /// Index of the next sample read.
    next_index: u64,
    /// (index after a record, position after it), oldest first.
    marks: VecDeque<(u64, Position)>,
    persisted: Option<Position>,
    /// Staging per shard for the record being read.
    staged: Vec<Vec<Item>>,
    /// Time spent waiting for full shards since the last reshard decision.
    blocked: Duration,
    idle_rounds: u32,
    /// Over `max_backlog_bytes`: samples read are dropped until half of it.
    dropping: bool,
}

impl Reader {
    fn new(queue: Queue, runtime: tokio::runtime::Handle, shutdown: CancellationToken) -> Self {
        Self {
            queue,
            runtime,
            shutdown,
            series: HashMap::new(),
            shards: Vec::new(),
            next_index: 0,
            marks: VecDeque::new(),
            persisted: None,
            staged: Vec::new(),
            blocked: Duration::ZERO,
            idle_rounds: 0,
            dropping: false,
        }
    }

    fn name(&self) -> &str {
        &self.queue.config.name
    }

    fn run(mut self) {
        let mut position = match self.start_position() {
            Ok(position) => position,
            Err(err) => {
                warn!(remote = %self.name(), error = %err, "cannot read the WAL: remote_write stopped");
                return;
            }
        };
        self.queue.holds.set(&self.queue.config.name, position.segment);
        self.persisted = Some(position);
        info!(remote = %self.name(), url = %self.queue.config.url, segment = position.segment, offset = position.offset, series = self.series.len(), "remote_write queue started");
        self.start_shards(self.queue.config.queue.min_shards);
        let mut last_position_save = Instant::now();
        let mut last_reshard = Instant::now();
        let mut corrupt_warned = false;
        while !self.shutdown.is_cancelled() {
            let segment_path = self.queue.wal_dir.join(format!("{:08}.seg", position.segment));
            let mut records = Vec::new();
            let read = wal::read_segment_from(&segment_path, position.offset, RECORDS_PER_READ, |record, end| {
                records.push((record, end))
            });
            let read = match read {
                Ok(read) => read,
                Err(err) => {
                    // The segment is gone (truncated under us) or unreadable: move on if we can.
                    match self.next_segment(position.segment) {
                        Some(next) => {
                            warn!(remote = %self.name(), error = %err, next, "skipping an unreadable WAL segment");
                            position = Position { segment: next, offset: 0 };
                        }
                        None => std::thread::sleep(TAIL_POLL),
                    }
                    continue;
                }
            };
            let progressed = !records.is_empty();
            for (record, end) in records {
                self.handle_record(record);
                let segment = position.segment;
                position = Position { segment, offset: end };
                // Bounded: past MAX_MARKS the newest mark moves forward (persisting a little later).
                let full = self.marks.len() >= MAX_MARKS;
                match self.marks.back_mut() {
                    Some(last) if full => *last = (self.next_index, position),
                    _ => self.marks.push_back((self.next_index, position)),
                }
                if !self.dispatch(position) {
                    break;
                }
                // Also between records: a read of many records sent to a slow
                // endpoint blocks in `dispatch` long before the read is done.
                if last_reshard.elapsed() >= self.queue.reshard_every {
                    self.reconsider_shards(position, last_reshard.elapsed());
                    last_reshard = Instant::now();
                }
            }
            if self.dropping {
                self.skip_position_to(position);
                if self.backlog_bytes(position) <= self.queue.config.queue.max_backlog_bytes / 2 {
                    info!(remote = %self.name(), "remote_write endpoint within half its backlog limit again: sending resumes");
                    self.dropping = false;
                }
            }
            if !progressed {
                if read.corrupt && !corrupt_warned {
                    warn!(remote = %self.name(), segment = position.segment, offset = read.offset, "corrupt WAL record: the rest of this segment is skipped once a newer one exists");
                    corrupt_warned = true;
                }
                match self.next_segment(position.segment) {
                    // Data written before the next segment was opened is complete: read to its end first.
                    Some(next) if read.corrupt || self.at_end(position) => {
                        position = Position { segment: next, offset: 0 };
                        corrupt_warned = false;
                    }
                    Some(_) => {}
                    None => std::thread::sleep(TAIL_POLL),
                }
            }
            if last_position_save.elapsed() >= POSITION_EVERY {
                self.save_position();
                last_position_save = Instant::now();
            }
            if last_reshard.elapsed() >= self.queue.reshard_every {
                self.reconsider_shards(position, last_reshard.elapsed());
                last_reshard = Instant::now();
            }
        }
        // Shards stop without flushing: what they hold is sent again after a restart.
        for shard in std::mem::take(&mut self.shards) {
            drop(shard.tx);
            let _ = self.runtime.block_on(shard.task);
        }
        self.save_position();
        info!(remote = %self.name(), "remote_write queue stopped");
    }

    /// Whether `position` is at the end of its segment file.
    fn at_end(&self, position: Position) -> bool {
        let path = self.queue.wal_dir.join(format!("{:08}.seg", position.segment));
        std::fs::metadata(path).map_or(true, |m| m.len() <= position.offset)
    }

    fn next_segment(&self, after: u64) -> Option<u64> {
        let segments = wal::segments(&self.queue.wal_dir).ok()?;
        segments.iter().map(|(n, _)| *n).find(|&n| n > after)
    }

    /// The persisted position (or, for a new endpoint, the start of the newest
    /// segment), after loading the series defined before it.
    fn start_position(&mut self) -> Result<Position, wal::WalError> {
        let segments = wal::segments(&self.queue.wal_dir)?;
        let newest = segments.last().map_or(0, |(n, _)| *n);
        let mut position = Position::load(&self.queue.position_file).unwrap_or(Position { segment: newest, offset: 0 });
        if !segments.iter().any(|(n, _)| *n == position.segment) {
            let next = segments.iter().map(|(n, _)| *n).find(|&n| n > position.segment).unwrap_or(newest);
            warn!(remote = %self.name(), segment = position.segment, resuming_at = next, "the WAL segment this endpoint stopped in is gone: samples in between were not sent");
            position = Position { segment: next, offset: 0 };
        }
        // Series records from the newest checkpoint at or below the position, then from segments before it.
        let mut from_segment = 0;
        if let Some((number, dir)) = latest_checkpoint(&self.queue.wal_dir, position.segment) {
            from_segment = number;
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            files.sort();
            for file in files {
                self.load_series(&file, u64::MAX);
            }
        }
        for (number, path) in &segments {
            if *number >= from_segment && *number < position.segment {
                self.load_series(path, u64::MAX);
            }
        }
        let current = self.queue.wal_dir.join(format!("{:08}.seg", position.segment));
        self.load_series(&current, position.offset);
        Ok(position)
    }

    /// Reads the series records of `path` up to byte `until`.
    fn load_series(&mut self, path: &Path, until: u64) {
        let mut offset = 0;
        loop {
            let mut found = Vec::new();
            let read = wal::read_segment_from(path, offset, RECORDS_PER_READ, |record, end| {
                if end <= until {
                    found.push(record);
                }
            });
            let Ok(read) = read else { return };
            let done = read.offset == offset || read.offset >= until || read.corrupt;
            offset = read.offset;
            for record in found {
                if let WalRecord::Series { series_ref, labels } = record {
                    self.define(series_ref, &labels);
                }
            }
            if done {
                return;
            }
        }
    }

    fn define(&mut self, series_ref: u64, labels: &Labels) {
        let relabeled =
            if self.queue.relabeler.is_empty() { Some(labels.clone()) } else { self.queue.relabeler.apply(labels) };
        let send = relabeled.filter(|l| !l.is_empty()).map(|labels| {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(&labels);
            let labels = labels.into_pairs().into_iter().map(|(name, value)| Label { name, value }).collect();
            Arc::new(SendSeries { labels, hash })
        });
        // A later process reuses refs: its series record comes before its samples, so the latest wins.
        self.series.insert(series_ref, send);
    }

    fn handle_record(&mut self, record: WalRecord) {
        match record {
            WalRecord::Series { series_ref, labels } => self.define(series_ref, &labels),
            WalRecord::Samples { timestamp_ms, samples, .. } => {
                let shards = self.shards.len().max(1) as u64;
                self.staged.resize_with(shards as usize, Vec::new);
                for (series_ref, value) in samples {
                    let Some(Some(series)) = self.series.get(&series_ref) else { continue };
                    let shard = (series.hash % shards) as usize;
                    let index = self.next_index;
                    self.next_index += 1;
                    self.staged[shard].push(Item { series: Arc::clone(series), timestamp_ms, value, index });
                }
                self.queue.stats.highest_read_timestamp_ms.fetch_max(timestamp_ms, Ordering::Relaxed);
            }
            // Checkpoints carry the head's chunks and the agents' sequences:
            // those samples were read (and sent) from the segments they replace.
            WalRecord::HeadChunk { .. } | WalRecord::SeqRanges { .. } => {}
        }
    }

    /// Hands the staged samples to their shards, waiting while a shard is
    /// full. If the endpoint falls more than `max_backlog_bytes` of WAL
    /// behind meanwhile, the staged samples are dropped and counted instead.
    /// Returns false on shutdown.
    fn dispatch(&mut self, position: Position) -> bool {
        if self.dropping {
            let count: usize = self.staged.iter_mut().map(|s| std::mem::take(s).len()).sum();
            self.queue.stats.samples_dropped.fetch_add(count as u64, Ordering::Relaxed);
            return !self.shutdown.is_cancelled();
        }
        let mut last_backlog_check = Instant::now();
        for shard_index in 0..self.staged.len() {
            if self.staged[shard_index].is_empty() {
                continue;
            }
            let mut chunk = std::mem::take(&mut self.staged[shard_index]);
            let count = chunk.len() as u64;
            let last = chunk.last().map_or(0, |item| item.index + 1);
            let waited_from = Instant::now();
            loop {
                let Some(shard) = self.shards.get_mut(shard_index) else { return true };
                match shard.tx.try_send(chunk) {
                    Ok(()) => {
                        shard.enqueued = last;
                        self.queue.stats.pending_samples.fetch_add(count, Ordering::Relaxed);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    Err(mpsc::error::TrySendError::Full(back)) => chunk = back,
                }
                if self.shutdown.is_cancelled() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
                if last_backlog_check.elapsed() >= POSITION_EVERY {
                    last_backlog_check = Instant::now();
                    self.save_position();
                    if self.backlog_bytes(position) > self.queue.config.queue.max_backlog_bytes {
                        self.queue.stats.samples_dropped.fetch_add(count, Ordering::Relaxed);
                        warn!(remote = %self.name(), max_backlog_bytes = self.queue.config.queue.max_backlog_bytes, "remote_write endpoint too far behind: dropping its oldest unsent samples until it is within half the limit");
                        self.dropping = true;
                        return self.dispatch(position);
                    }
                }
            }
            self.blocked += waited_from.elapsed();
        }
        true
    }

    /// Persists `position` although shards may still hold older samples (they
    /// keep retrying, but a restart would not send them again): past the
    /// backlog limit the WAL behind the reader must be released.
    fn skip_position_to(&mut self, position: Position) {
        self.marks.clear();
        self.marks.push_back((self.next_index, position));
        if let Err(err) = position.store(&self.queue.position_file) {
            warn!(remote = %self.name(), error = %err, "cannot persist the remote_write position");
            return;
        }
        self.persisted = Some(position);
        self.queue.holds.set(&self.queue.config.name, position.segment);
    }

    /// WAL bytes from `position` to the end of the newest segment.
    fn backlog_bytes(&self, position: Position) -> u64 {
        let Ok(segments) = wal::segments(&self.queue.wal_dir) else { return 0 };
        segments
            .iter()
            .filter(|(n, _)| *n >= position.segment)
            .map(|(n, path)| {
                let len = std::fs::metadata(path).map_or(0, |m| m.len());
                if *n == position.segment { len.saturating_sub(position.offset) } else { len }
            })
            .sum()
    }

    /// Index below which every sample has been finished by its shard.
    fn watermark(&self) -> u64 {
        let mut low = self.next_index;
        for shard in &self.shards {
            let done = shard.progress.done.load(Ordering::Acquire);
            if done < shard.enqueued {
                low = low.min(done);
            }
        }
        low
    }

    fn save_position(&mut self) {
        let low = self.watermark();
        let mut position = None;
        while let Some(&(index, mark)) = self.marks.front() {
            if index > low {
                break;
            }
            position = Some(mark);
            self.marks.pop_front();
        }
        let Some(position) = position else { return };
        if self.persisted == Some(position) {
            return;
        }
        if let Err(err) = position.store(&self.queue.position_file) {
            warn!(remote = %self.name(), error = %err, "cannot persist the remote_write position");
            return;
        }
        self.persisted = Some(position);
        self.queue.holds.set(&self.queue.config.name, position.segment);
    }

    /// Grows the shards when the reader kept waiting for them and they are
    /// sending fine; shrinks them after a few idle rounds. Resharding waits
    /// for the shards to send what they hold, so per-series order is kept.
    fn reconsider_shards(&mut self, position: Position, period: Duration) {
        let config = &self.queue.config.queue;
        let current = self.shards.len();
        let failing = self.shards.iter().any(|s| s.progress.failing.load(Ordering::Relaxed));
        let blocked_ratio = self.blocked.as_secs_f64() / period.as_secs_f64().max(0.001);
        self.blocked = Duration::ZERO;
        let behind = self.backlog_bytes(position) > 0;
        let desired = if failing {
            current
        } else if blocked_ratio > 0.1 {
            self.idle_rounds = 0;
            (current * 2).min(config.max_shards)
        } else if !behind && self.watermark() == self.next_index {
            self.idle_rounds += 1;
            if self.idle_rounds >= 3 { (current / 2).max(config.min_shards) } else { current }
        } else {
            self.idle_rounds = 0;
            current
        };
        if desired == current {
            return;
        }
        info!(remote = %self.name(), from = current, to = desired, "remote_write resharding");
        self.idle_rounds = 0;
        for shard in std::mem::take(&mut self.shards) {
            drop(shard.tx);
            let _ = self.runtime.block_on(shard.task);
        }
        self.save_position();
        self.start_shards(desired);
    }

    fn start_shards(&mut self, count: usize) {
        let count = count.max(1);
        for _ in 0..count {
            let (tx, rx) = mpsc::channel(SHARD_CHANNEL_CHUNKS);
            let progress = Arc::new(ShardProgress::default());
            progress.done.store(self.next_index, Ordering::Release);
            let worker = ShardWorker {
                sender: Arc::clone(&self.queue.sender),
                stats: Arc::clone(&self.queue.stats),
                progress: Arc::clone(&progress),
                max_samples: self.queue.config.queue.max_samples_per_send,
                deadline: self.queue.config.queue.batch_send_deadline,
                min_backoff: self.queue.config.queue.min_backoff,
                max_backoff: self.queue.config.queue.max_backoff,
                name: self.queue.config.name.clone(),
            };
            let task = self.runtime.spawn(worker.run(rx, self.shutdown.clone()));
            self.shards.push(Shard { tx, progress, enqueued: self.next_index, task });
        }
        self.staged.clear();
        self.queue.stats.shards.store(count as u64, Ordering::Relaxed);
    }
}

/// The newest `checkpoint.NNNNNNNN` directory with NNNNNNNN <= `at_or_below`.
fn latest_checkpoint(wal_dir: &Path, at_or_below: u64) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(wal_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix("checkpoint.")?.parse::<u64>().ok()?;
            (number <= at_or_below && entry.path().is_dir()).then(|| (number, entry.path()))
        })
        .max()
}

struct ShardWorker {
    sender: Arc<Sender>,
    stats: Arc<RemoteStats>,
    progress: Arc<ShardProgress>,
    max_samples: usize,
    deadline: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    name: String,
}

impl ShardWorker {
    async fn run(self, mut rx: mpsc::Receiver<Vec<Item>>, shutdown: CancellationToken) {
        let mut pending: Vec<Item> = Vec::new();
        let mut buffers = Buffers::default();
        let mut oldest_at = tokio::time::Instant::now();
        loop {
            let deadline = oldest_at + self.deadline;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                chunk = rx.recv() => match chunk {
                    Some(items) => {
                        if pending.is_empty() {
                            oldest_at = tokio::time::Instant::now();
                        }
                        pending.extend(items);
                        while pending.len() >= self.max_samples {
                            let rest = pending.split_off(self.max_samples);
                            let batch = std::mem::replace(&mut pending, rest);
                            if !self.send(&batch, &mut buffers, &shutdown).await {
                                return;
                            }
                            oldest_at = tokio::time::Instant::now();
                        }
                    }
                    None => {
                        // Resharding: send what is left, then stop.
                        for batch in pending.chunks(self.max_samples) {
                            if !self.send(batch, &mut buffers, &shutdown).await {
                                return;
                            }
                        }
                        return;
                    }
                },
                _ = tokio::time::sleep_until(deadline), if !pending.is_empty() => {
                    let batch = std::mem::take(&mut pending);
                    if !self.send(&batch, &mut buffers, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends one batch until it is accepted or refused for good; false on shutdown.
    ///
    /// Receivers such as Prometheus refuse a whole request for one bad sample
    /// (say, an out-of-order one): a refused request is split in halves and
    /// each sent again, earlier half first, so only the bad samples are lost,
    /// up to [`MAX_SPLIT_REQUESTS`] extra requests per batch.
    async fn send(&self, batch: &[Item], buffers: &mut Buffers, shutdown: &CancellationToken) -> bool {
        let Some(last) = batch.last() else { return true };
        let count = batch.len() as u64;
        let mut parts = vec![(0, batch.len())];
        let mut splits = 0usize;
        while let Some((from, to)) = parts.pop() {
            let part = &batch[from..to];
            let body = buffers.encode(part);
            let mut backoff = self.min_backoff;
            loop {
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    outcome = self.sender.send(body.clone()) => outcome,
                };
                match outcome {
                    SendOutcome::Sent => {
                        self.stats.samples_sent.fetch_add(part.len() as u64, Ordering::Relaxed);
                        let newest = part.iter().map(|i| i.timestamp_ms).max().unwrap_or(i64::MIN);
                        self.stats.highest_sent_timestamp_ms.fetch_max(newest, Ordering::Relaxed);
                        break;
                    }
                    SendOutcome::Refused(reason) => {
                        if part.len() > 1 && splits < MAX_SPLIT_REQUESTS {
                            splits += 2;
                            let middle = from + part.len() / 2;
                            parts.push((middle, to));
                            parts.push((from, middle));
                            debug!(remote = %self.name, samples = part.len(), %reason, "remote_write request refused: sending its halves");
                        } else {
                            self.stats.samples_failed.fetch_add(part.len() as u64, Ordering::Relaxed);
                            warn!(remote = %self.name, samples = part.len(), %reason, "remote_write receiver refused samples: dropped");
                        }
                        break;
                    }
                    SendOutcome::Retry(reason) => {
                        self.progress.failing.store(true, Ordering::Relaxed);
                        self.stats.samples_retried.fetch_add(part.len() as u64, Ordering::Relaxed);
                        debug!(remote = %self.name, samples = part.len(), %reason, ?backoff, "remote_write send failed, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return false,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(self.max_backoff);
                    }
                }
            }
        }
        self.progress.failing.store(false, Ordering::Relaxed);
        let _ = self
            .stats
            .pending_samples
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(count)));
        self.progress.done.store(last.index + 1, Ordering::Release);
        true
    }
}

/// Reused encoding buffers of one shard.
#[derive(Default)]
struct Buffers {
    scratch: Vec<u8>,
    body: Vec<u8>,
}

impl Buffers {
    /// One `TimeSeries` per series in the batch, samples in batch order.
    fn encode(&mut self, batch: &[Item]) -> Bytes {
        let mut slots: HashMap<*const SendSeries, usize> = HashMap::with_capacity(batch.len());
        let mut request = WriteRequest { timeseries: Vec::new() };
        for item in batch {
            let slot = *slots.entry(Arc::as_ptr(&item.series)).or_insert_with(|| {
                request.timeseries.push(TimeSeries { labels: item.series.labels.clone(), samples: Vec::new() });
                request.timeseries.len() - 1
            });
            request.timeseries[slot].samples.push(proto::Sample { value: item.value, timestamp: item.timestamp_ms });
        }
        proto::encode(&request, &mut self.scratch, &mut self.body);
        Bytes::copy_from_slice(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use herd_common::config::remote_write::QueueConfig;

    use super::*;
    use crate::wal::Wal;

    /// A loopback receiver that decodes what it gets; it can answer the first
    /// requests with an error status and delay every answer.
    #[derive(Default)]
    struct Received {
        samples: Mutex<Vec<(String, i64, f64)>>,
        fail_first: AtomicUsize,
        fail_status: std::sync::atomic::AtomicU16,
        delay_ms: AtomicU64,
        requests: AtomicUsize,
        /// Requests holding a sample at this timestamp get 400, like Prometheus's out-of-order refusal.
        poison_timestamp: Mutex<Option<i64>>,
    }

    async fn receiver(received: Arc<Received>) -> std::net::SocketAddr {
        use axum::http::StatusCode;
        async fn write(
            axum::extract::State(received): axum::extract::State<Arc<Received>>,
            body: axum::body::Bytes,
        ) -> StatusCode {
            received.requests.fetch_add(1, Ordering::SeqCst);
            let delay = received.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let failing = received.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return StatusCode::from_u16(received.fail_status.load(Ordering::SeqCst)).unwrap();
            }
            let request = proto::decode(&body, 64 << 20).unwrap();
            let poison = *received.poison_timestamp.lock().unwrap();
            if request.timeseries.iter().flat_map(|s| &s.samples).any(|s| Some(s.timestamp) == poison) {
                return StatusCode::BAD_REQUEST;
            }
            let mut samples = received.samples.lock().unwrap();
            for series in request.timeseries {
                let name = series.labels.iter().find(|l| l.name == "__name__").unwrap().value.clone();
                samples.extend(series.samples.iter().map(|s| (name.clone(), s.timestamp, s.value)));
            }
            StatusCode::NO_CONTENT
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/write", axum::routing::post(write)).with_state(received);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn config(addr: std::net::SocketAddr, max_samples_per_send: usize, max_shards: usize) -> RemoteWriteConfig {
        RemoteWriteConfig {
            url: format!("http://{addr}/write"),
            name: "test".into(),
            timeout: Duration::from_secs(5),
            credentials: Credentials::None,
            write_relabel_configs: Vec::new(),
            queue: QueueConfig {
                max_samples_per_send,
                batch_send_deadline: Duration::from_millis(50),
                min_shards: 1,
                max_shards,
                min_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
                max_backlog_bytes: 1 << 30,
            },
        }
    }

    /// Writes `series` series (refs 0.., names `m<i>`) unless `define` is false,
    /// and one samples record per timestamp in `times` (value = series * 1e6 + t).
    async fn write_wal(wal: &Wal, series: u64, define: bool, times: std::ops::Range<i64>, names: &str) {
        let mut bytes = Vec::new();
        if define {
            for i in 0..series {
                let labels = Labels::from_pairs([("__name__", format!("{names}{i}")), ("job", "t".into())]);
                wal::encode_series(i, &labels, &mut bytes);
            }
        }
        for t in times {
            let samples: Vec<(u64, f64)> = (0..series).map(|i| (i, i as f64 * 1e6 + t as f64)).collect();
            wal::encode_samples("agent", t as u64, t, &samples, &mut bytes);
        }
        wal.append(bytes).await.unwrap();
    }

    async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check()
    }

    /// Every (name, t) exactly once and each series' timestamps strictly increasing.
    fn check_complete(received: &Received, names: &[String], times: std::ops::Range<i64>) {
        let samples = received.samples.lock().unwrap();
        let mut by_series: HashMap<&str, Vec<(i64, f64)>> = HashMap::new();
        for (name, t, v) in samples.iter() {
            by_series.entry(name.as_str()).or_default().push((*t, *v));
        }
        assert_eq!(by_series.len(), names.len());
        for (i, name) in names.iter().enumerate() {
            let got = &by_series[name.as_str()];
            let want: Vec<(i64, f64)> = times.clone().map(|t| (t, i as f64 * 1e6 + t as f64)).collect();
            assert_eq!(got, &want, "series {name}: in WAL order, each sample once");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_sample_arrives_once_and_in_order_through_retries() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = Wal::start(&wal_dir, 0).unwrap();
        let received = Arc::new(Received::default());
        received.fail_first.store(5, Ordering::SeqCst);
        received.fail_status.store(503, Ordering::SeqCst);
        let addr = receiver(Arc::clone(&received)).await;
        let queue = Queue::new(config(addr, 100, 4), &wal_dir, dir.path(), Arc::clone(&wal.holds)).unwrap();
        let stats = Arc::clone(&queue.stats);
        let shutdown = CancellationToken::new();
        // Stops the reader thread if an assertion fails (the runtime waits for it).
        let _stop = shutdown.clone().drop_guard();
        let task = tokio::spawn(queue.run(shutdown.clone()));
        write_wal(&wal, 20, true, 0..100, "m").await;
        write_wal(&wal, 20, false, 100..200, "m").await;
        let all = wait_until(Duration::from_secs(20), || received.samples.lock().unwrap().len() >= 4000).await;
        assert!(all, "received {} of 4000", received.samples.lock().unwrap().len());
        shutdown.cancel();
        task.await.unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        check_complete(&received, &names, 0..200);
        assert!(stats.samples_retried.load(Ordering::Relaxed) > 0);
        assert_eq!(stats.samples_sent.load(Ordering::Relaxed), 4000);
        assert_eq!(stats.highest_sent_timestamp_ms.load(Ordering::Relaxed), 199);
        assert_eq!(wal.holds.lowest(), Some(0), "the queue holds the segment it reads");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_requests_are_counted_and_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = Wal::start(&wal_dir, 0).unwrap();
        let received = Arc::new(Received::default());
        received.fail_first.store(usize::MAX, Ordering::SeqCst);
        received.fail_status.store(400, Ordering::SeqCst);
        let addr = receiver(Arc::clone(&received)).await;
        let queue = Queue::new(config(addr, 50, 1), &wal_dir, dir.path(), Arc::clone(&wal.holds)).unwrap();
        let stats = Arc::clone(&queue.stats);
        let shutdown = CancellationToken::new();
        // Stops the reader thread if an assertion fails (the runtime waits for it).
        let _stop = shutdown.clone().drop_guard();
        let task = tokio::spawn(queue.run(shutdown.clone()));
        write_wal(&wal, 10, true, 0..20, "m").await;
        let counted = wait_until(Duration::from_secs(10), || stats.samples_failed.load(Ordering::Relaxed) == 200).await;
        assert!(counted, "failed = {}", stats.samples_failed.load(Ordering::Relaxed));
        // Retrying a 400 would never count the samples failed; they are not retried either.
        assert_eq!(stats.samples_retried.load(Ordering::Relaxed), 0);
        assert_eq!(stats.samples_sent.load(Ordering::Relaxed), 0);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_request_is_split_so_only_its_bad_samples_are_lost() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = Wal::start(&wal_dir, 0).unwrap();
        let received = Arc::new(Received::default());
        *received.poison_timestamp.lock().unwrap() = Some(7);
        let addr = receiver(Arc::clone(&received)).await;
        let queue = Queue::new(config(addr, 60, 1), &wal_dir, dir.path(), Arc::clone(&wal.holds)).unwrap();
        let stats = Arc::clone(&queue.stats);
        let shutdown = CancellationToken::new();
        // Stops the reader thread if an assertion fails (the runtime waits for it).
        let _stop = shutdown.clone().drop_guard();
        let task = tokio::spawn(queue.run(shutdown.clone()));
        write_wal(&wal, 3, true, 0..20, "m").await;
        let done = wait_until(Duration::from_secs(10), || {
            stats.samples_sent.load(Ordering::Relaxed) + stats.samples_failed.load(Ordering::Relaxed) == 60
        })
        .await;
        assert!(
            done,
            "sent {} failed {}",
            stats.samples_sent.load(Ordering::Relaxed),
            stats.samples_failed.load(Ordering::Relaxed)
        );
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(stats.samples_failed.load(Ordering::Relaxed), 3, "only the three samples at t=7");
        let mut samples = received.samples.lock().unwrap().clone();
        assert!(samples.iter().all(|s| s.1 != 7));
        // Everything else arrived once, in order per series.
        samples.retain(|s| s.0 == "m1");
        let times: Vec<i64> = samples.iter().map(|s| s.1).collect();
        assert_eq!(times, (0..20).filter(|&t| t != 7).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_grow_for_a_slow_receiver_and_keep_per_series_order() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = Wal::start(&wal_dir, 0).unwrap();
        let received = Arc::new(Received::default());
        received.delay_ms.store(50, Ordering::SeqCst);
        let addr = receiver(Arc::clone(&received)).await;
        let queue = Queue::new(config(addr, 10, 8), &wal_dir, dir.path(), Arc::clone(&wal.holds))
            .unwrap()
            .with_reshard_interval(Duration::from_millis(300));
        let stats = Arc::clone(&queue.stats);
        let shutdown = CancellationToken::new();
        // Stops the reader thread if an assertion fails (the runtime waits for it).
        let _stop = shutdown.clone().drop_guard();
        let task = tokio::spawn(queue.run(shutdown.clone()));
        write_wal(&wal, 40, true, 0..60, "m").await;
        let mut most_shards = 0;
        let all = wait_until(Duration::from_secs(60), || {
            most_shards = most_shards.max(stats.shards.load(Ordering::Relaxed));
            received.samples.lock().unwrap().len() >= 2400
        })
        .await;
        assert!(all, "received {} of 2400", received.samples.lock().unwrap().len());
        assert!(most_shards > 1, "shards should grow while the reader waits for them");
        shutdown.cancel();
        task.await.unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        check_complete(&received, &names, 0..60);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_backlog_limit_the_oldest_samples_are_dropped_and_the_wal_released() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = Wal::start(&wal_dir, 0).unwrap();
        let received = Arc::new(Received::default());
        received.fail_first.store(usize::MAX, Ordering::SeqCst);
        received.fail_status.store(503, Ordering::SeqCst);
        let addr = receiver(Arc::clone(&received)).await;
        let mut config = config(addr, 20, 1);
        config.queue.max_backlog_bytes = 8 << 10;
        let queue = Queue::new(config, &wal_dir, dir.path(), Arc::clone(&wal.holds)).unwrap();
        let stats = Arc::clone(&queue.stats);
        let position_file = queue.position_file.clone();
        let shutdown = CancellationToken::new();
        // Stops the reader thread if an assertion fails (the runtime waits for it).
        let _stop = shutdown.clone().drop_guard();
        let task = tokio::spawn(queue.run(shutdown.clone()));
        write_wal(&wal, 20, true, 0..100, "m").await;
        for start in (100..1000).step_by(100) {
            write_wal(&wal, 20, false, start..start + 100, "m").await;
        }
        let dropped = wait_until(Duration::from_secs(20), || stats.samples_dropped.load(Ordering::Relaxed) > 0).await;
        assert!(dropped, "nothing dropped although the receiver is down and the backlog over its limit");
        let released =
            wait_until(Duration::from_secs(10), || Position::load(&position_file).is_some_and(|p| p.offset > 100_000))
                .await;
        assert!(released, "position {:?} should move past the dropped data", Position::load(&position_file));
        assert_eq!(stats.samples_sent.load(Ordering::Relaxed), 0);
        assert!(stats.samples_retried.load(Ordering::Relaxed) > 0);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_queue_resumes_where_it_stopped_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let received = Arc::new(Received::default());
        let addr = receiver(Arc::clone(&received)).await;
        {
            let wal = Wal::start(&wal_dir, 0).unwrap();
            let queue = Queue::new(config(addr, 100, 2), &wal_dir, dir.path(), Arc::clone(&wal.holds)).unwrap();
            let shutdown = CancellationToken::new();
            // Stops the reader thread if an assertion fails (the runtime waits for it).
            let _stop = shutdown.clone().drop_guard();
            let task = tokio::spawn(queue.run(shutdown.clone()));
            write_wal(&wal, 5, true, 0..50, "m").await;
            assert!(wait_until(Duration::from_secs(10), || received.samples.lock().unwrap().len() >= 250).await);
            shutdown.cancel();
            task.await.unwrap();
            // Written while no queue runs (the receiver was down, say).
            write_wal(&wal, 5, false, 50..80, "m").await;
        }
        // A later process: a new segment where refs 0.. name other series.
        let wal = Wal::start(&wal_dir, 0).unwrap();
        write_wal(&wal, 5, true, 80..100, "n").await;
        let queue = Queue::new(config(addr, 100, 2), &wal_dir, dir.path(), Arc::clone(&wal.holds)).unwrap();
        let shutdown = CancellationToken::new();
        // Stops the reader thread if an assertion fails (the runtime waits for it).
        let _stop = shutdown.clone().drop_guard();
        let task = tokio::spawn(queue.run(shutdown.clone()));
        assert!(wait_until(Duration::from_secs(10), || received.samples.lock().unwrap().len() >= 500).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        task.await.unwrap();
        let samples = received.samples.lock().unwrap().clone();
        assert_eq!(samples.len(), 500, "nothing twice");
        let m: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        let n: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        let only = |prefix: &str| Received {
            samples: Mutex::new(samples.iter().filter(|s| s.0.starts_with(prefix)).cloned().collect()),
            ..Received::default()
        };
        check_complete(&only("m"), &m, 0..80);
        check_complete(&only("n"), &n, 80..100);
    }

    #[test]
    fn positions_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.position");
        assert_eq!(Position::load(&path), None);
        let position = Position { segment: 7, offset: 4096 };
        position.store(&path).unwrap();
        assert_eq!(Position::load(&path), Some(position));
    }

    #[test]
    fn a_batch_groups_samples_by_series_in_order() {
        let a = Arc::new(SendSeries { labels: vec![Label { name: "__name__".into(), value: "a".into() }], hash: 1 });
        let b = Arc::new(SendSeries { labels: vec![Label { name: "__name__".into(), value: "b".into() }], hash: 2 });
        let item = |series: &Arc<SendSeries>, t: i64, index: u64| Item {
            series: Arc::clone(series),
            timestamp_ms: t,
            value: t as f64,
            index,
        };
        let batch = [item(&a, 1, 0), item(&b, 1, 1), item(&a, 2, 2)];
        let body = Buffers::default().encode(&batch);
        let request = proto::decode(&body, 1 << 20).unwrap();
        assert_eq!(request.timeseries.len(), 2);
        assert_eq!(request.timeseries[0].labels[0].value, "a");
        let times: Vec<i64> = request.timeseries[0].samples.iter().map(|s| s.timestamp).collect();
        assert_eq!(times, [1, 2]);
    }
}
