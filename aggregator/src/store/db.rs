//! The durable store: the head (recent data, in memory, made durable by the
//! WAL) plus immutable blocks on disk, behind the one `Storage` interface.
//! `select` merges series from the head and every block by labels; `read`
//! merges their samples in time order (an equal timestamp from two places is
//! returned once, the older write first). Maintenance cuts head data older
//! than the current block range into a block, compacts blocks into larger
//! ones and applies retention: whole blocks past the default retention are
//! deleted, and with per-selector rules a block whose series have different
//! retentions is rewritten without the series past theirs. WAL checkpoints
//! are driven from `maintenance`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use herd_common::metric::Labels;
use tracing::{info, warn};

use super::block::{self, Block, BlockError, Compaction};
use super::cache::FrameCache;
use super::head::Head;
use super::{AppendError, LabelMatcher, MatchOp, Sample, SeriesRef, Storage, StoreStats};

/// Decompressed block data kept for reads unless the options say otherwise.
pub const DEFAULT_BLOCK_CACHE_BYTES: u64 = 64 << 20;
/// Frames a compaction keeps for itself while it reads its sources in order.
const COMPACTION_CACHE_BYTES: u64 = 8 << 20;

/// Limits and spans of the store, in milliseconds of sample time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbOptions {
    /// Span of a block cut from the head; block boundaries are multiples of it.
    pub block_duration_ms: i64,
    /// Blocks whose newest sample is older than the newest sample stored minus this are deleted.
    pub retention_ms: i64,
    /// If set, the oldest blocks are deleted while blocks take more bytes.
    pub retention_bytes: Option<u64>,
    /// Compacted blocks span at most this.
    pub max_block_duration_ms: i64,
    /// Decompressed block frames kept in memory for reads.
    pub block_cache_bytes: u64,
}

impl DbOptions {
    /// Compacted blocks span up to 10% of retention, at most 31 days.
    pub fn new(block_duration_ms: i64, retention_ms: i64, retention_bytes: Option<u64>) -> Self {
        let max_block_duration_ms = (retention_ms / 10).min(31 * 24 * 3600 * 1000).max(block_duration_ms);
        Self {
            block_duration_ms: block_duration_ms.max(1),
            retention_ms,
            retention_bytes,
            max_block_duration_ms,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }

    pub fn with_block_cache_bytes(mut self, bytes: u64) -> Self {
        self.block_cache_bytes = bytes;
        self
    }
}

/// Series matching every matcher keep their data for `retention_ms`
/// instead of the default.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    pub matchers: Vec<LabelMatcher>,
    pub retention_ms: i64,
}

impl RetentionRule {
    /// The store's form of a validated `[[storage.retention]]` rule.
    pub fn from_config(rule: &herd_common::config::storage::RetentionRule) -> Result<Self, regex::Error> {
        use herd_common::config::storage::SelectorOp;
        let matchers = rule
            .matchers
            .iter()
            .map(|m| {
                let op = match m.op {
                    SelectorOp::Equal => MatchOp::Equal,
                    SelectorOp::NotEqual => MatchOp::NotEqual,
                    SelectorOp::RegexMatch => MatchOp::RegexMatch,
                    SelectorOp::RegexNoMatch => MatchOp::RegexNoMatch,
                };
                LabelMatcher::new(op, m.name.clone(), m.value.clone())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { matchers, retention_ms: i64::try_from(rule.time.as_millis()).unwrap_or(i64::MAX) })
    }

    fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches_labels(labels))
    }
}

#[derive(Default)]
struct RetentionState {
    rules: Vec<RetentionRule>,
    /// Per block id: the shortest retention of its series under `rules`
    /// (nothing in the block expires before that).
    shortest: HashMap<String, i64>,
}

/// Store figures for self-monitoring.
#[derive(Debug, Default)]
pub struct DbCounters {
    pub head_cuts: AtomicU64,
    pub compactions: AtomicU64,
    /// Sum of compaction durations, in microseconds.
    pub compaction_micros: AtomicU64,
    pub blocks_deleted_retention: AtomicU64,
    pub block_read_errors: AtomicU64,
}

struct MaintenanceState {
    /// Everything older than this has been cut from the head at least once.
    last_cut_before: i64,
    next_block_number: u64,
}

pub struct Db {
    blocks_dir: PathBuf,
    pub head: Head,
    /// Sorted by min time.
    blocks: RwLock<Vec<Arc<Block>>>,
    options: DbOptions,
    maintenance: Mutex<MaintenanceState>,
    retention: Mutex<RetentionState>,
    /// Decompressed block frames, shared by every block.
    pub cache: Arc<FrameCache>,
    pub counters: DbCounters,
}

fn align_down(t: i64, span: i64) -> i64 {
    t.div_euclid(span) * span
}

impl Db {
    /// Opens the blocks in `blocks_dir` (created if missing). Half-written
    /// blocks (`*.tmp`) and blocks already merged into another are deleted;
    /// a block that cannot be read is skipped with an error log.
    pub fn open(blocks_dir: &Path, options: DbOptions) -> Result<Self, BlockError> {
        let io = |source| BlockError::Io { path: blocks_dir.to_owned(), source };
        fs::create_dir_all(blocks_dir).map_err(io)?;
        let head = Head::new();
        let cache = Arc::new(FrameCache::new(options.block_cache_bytes));
        let mut blocks = Vec::new();
        let mut next_block_number = 1;
        for entry in fs::read_dir(blocks_dir).map_err(io)?.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            if name.ends_with(".tmp") {
                warn!(block = %path.display(), "discarding a half-written block");
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            if let Ok(number) = name.parse::<u64>() {
                next_block_number = next_block_number.max(number + 1);
            }
            match block::open(&path, &head.pool, &cache) {
                Ok(block) => blocks.push(Arc::new(block)),
                Err(error) => tracing::error!(%error, "skipping an unreadable block"),
            }
        }
        // A compaction that crashed before deleting its sources left them behind.
        let merged: HashSet<String> = blocks.iter().flat_map(|b| b.meta.compaction.sources.clone()).collect();
        blocks.retain(|b| {
            if merged.contains(b.id()) {
                info!(block = %b.dir.display(), "deleting a block already merged into another");
                let _ = fs::remove_dir_all(&b.dir);
                false
            } else {
                true
            }
        });
        blocks.sort_by_key(|b| (b.meta.min_time, b.meta.max_time));
        info!(blocks = blocks.len(), dir = %blocks_dir.display(), "blocks loaded");
        Ok(Self {
            blocks_dir: blocks_dir.to_owned(),
            head,
            blocks: RwLock::new(blocks),
            options,
            maintenance: Mutex::new(MaintenanceState { last_cut_before: i64::MIN, next_block_number }),
            retention: Mutex::default(),
            cache,
            counters: DbCounters::default(),
        })
    }

    /// Sets the per-selector retention rules (first match wins; series no
    /// rule matches keep `retention_ms`). They apply from the next
    /// `apply_retention`.
    pub fn set_retention_rules(&self, rules: Vec<RetentionRule>) {
        let mut state = self.retention.lock().expect("retention lock");
        state.rules = rules;
        state.shortest.clear();
    }

    /// The retention of a series with `labels` under `rules`.
    fn retention_of(&self, rules: &[RetentionRule], labels: &Labels) -> i64 {
        rules.iter().find(|r| r.matches(labels)).map_or(self.options.retention_ms, |r| r.retention_ms)
    }

    pub fn options(&self) -> DbOptions {
        self.options
    }

    fn blocks(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Block>>> {
        self.blocks.read().expect("blocks lock is never poisoned")
    }

    /// Number of blocks and their bytes on disk.
    pub fn block_stats(&self) -> (u64, u64) {
        let blocks = self.blocks();
        (blocks.len() as u64, blocks.iter().map(|b| b.meta.stats.bytes).sum())
    }

    /// Samples held by all blocks.
    pub fn block_samples(&self) -> u64 {
        self.blocks().iter().map(|b| b.meta.stats.samples).sum()
    }

    /// Ids, time ranges and levels of the blocks, oldest first.
    pub fn block_ranges(&self) -> Vec<(String, i64, i64, u32)> {
        self.blocks()
            .iter()
            .map(|b| (b.id().to_owned(), b.meta.min_time, b.meta.max_time, b.meta.compaction.level))
            .collect()
    }

    /// The newest sample time in the store.
    pub fn max_t(&self) -> i64 {
        let blocks_max = self.blocks().iter().map(|b| b.meta.max_time).max().unwrap_or(i64::MIN);
        blocks_max.max(self.head.max_t())
    }

    /// Where the head would be cut now: head data older than this goes to a
    /// block once the head spans half a block past a block boundary; `None`
    /// when no new boundary was reached.
    pub fn due_cut(&self) -> Option<i64> {
        let max_t = self.head.max_t();
        if max_t == i64::MIN {
            return None;
        }
        let span = self.options.block_duration_ms;
        let before = align_down(max_t.saturating_sub(span / 2), span);
        let state = self.maintenance.lock().expect("maintenance lock");
        (before > state.last_cut_before).then_some(before)
    }

    fn next_block_id(&self) -> String {
        let mut state = self.maintenance.lock().expect("maintenance lock");
        let id = format!("{:012}", state.next_block_number);
        state.next_block_number += 1;
        id
    }

    /// Moves every head sample older than `before` into a new block. Queries
    /// wait for the block to be written, so they never miss the moved data.
    pub fn cut(&self, before: i64) -> Result<Option<String>, BlockError> {
        let id = self.next_block_id();
        let started = Instant::now();
        let mut blocks = self.blocks.write().expect("blocks lock is never poisoned");
        let series = self.head.cut(before);
        let copies =
            series.iter().map(|(labels, chunks)| (Arc::clone(labels), chunks.iter().flat_map(|c| c.iter()).collect()));
        let written = match block::write(
            &self.blocks_dir,
            &id,
            copies,
            Compaction { level: 1, sources: vec![] },
            &self.head.pool,
            &self.cache,
        ) {
            Ok(written) => written,
            Err(error) => {
                // Put the data back: queries keep seeing it and the next round retries.
                for (labels, chunks) in &series {
                    let series_ref = self.head.series_ref(labels);
                    for sample in chunks.iter().flat_map(|c| c.iter()) {
                        let _ = self.head.append(series_ref, sample);
                    }
                }
                return Err(error);
            }
        };
        self.maintenance.lock().expect("maintenance lock").last_cut_before = before;
        self.counters.head_cuts.fetch_add(1, Ordering::Relaxed);
        let Some(block) = written else { return Ok(None) };
        info!(
            block = %id, min_time = block.meta.min_time, max_time = block.meta.max_time,
            series = block.meta.stats.series, samples = block.meta.stats.samples, bytes = block.meta.stats.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64, "head cut into a block"
        );
        blocks.push(Arc::new(block));
        blocks.sort_by_key(|b| (b.meta.min_time, b.meta.max_time));
        Ok(Some(id))
    }

    /// Merges adjacent blocks into blocks of 3, 9, 27... block spans (up to
    /// `max_block_duration_ms`) once their whole range has been cut from the
    /// head. Returns the number of compactions done.
    pub fn compact(&self) -> Result<usize, BlockError> {
        let mut done = 0;
        while let Some(group) = self.plan_compaction() {
            self.merge(&group)?;
            done += 1;
        }
        Ok(done)
    }

    fn plan_compaction(&self) -> Option<Vec<Arc<Block>>> {
        let complete_before = self.maintenance.lock().expect("maintenance lock").last_cut_before;
        let blocks = self.blocks();
        let mut range = self.options.block_duration_ms.saturating_mul(3);
        while range <= self.options.max_block_duration_ms {
            let mut groups: std::collections::BTreeMap<i64, Vec<Arc<Block>>> = Default::default();
            for block in blocks.iter() {
                let start = align_down(block.meta.min_time, range);
                if block.meta.max_time < start + range && block.meta.max_time - block.meta.min_time < range {
                    groups.entry(start).or_default().push(Arc::clone(block));
                }
            }
            if let Some((_, group)) =
                groups.into_iter().find(|(start, group)| group.len() >= 2 && start + range <= complete_before)
            {
                return Some(group);
            }
            range = range.saturating_mul(3);
        }
        None
    }

    fn merge(&self, sources: &[Arc<Block>]) -> Result<(), BlockError> {
        let started = Instant::now();
        let level = sources.iter().map(|b| b.meta.compaction.level).max().unwrap_or(1) + 1;
        let id = self.rewrite(sources, level, |_| true)?;
        let elapsed = started.elapsed();
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters.compaction_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        info!(block = %id, sources = sources.len(), level, elapsed_ms = elapsed.as_millis() as u64, "blocks compacted");
        Ok(())
    }

    /// Writes the series of `sources` that `keep` accepts into one new block
    /// (at `level`), puts it in their place and deletes them. Returns the
    /// new block's id.
    fn rewrite(
        &self,
        sources: &[Arc<Block>],
        level: u32,
        keep: impl Fn(&Labels) -> bool,
    ) -> Result<String, BlockError> {
        let mut all_labels: Vec<Arc<Labels>> =
            sources.iter().flat_map(|b| b.labels().filter(|l| keep(l)).cloned()).collect();
        all_labels.sort();
        all_labels.dedup();
        let mut error = None;
        let scratch = FrameCache::new(COMPACTION_CACHE_BYTES);
        let series = all_labels.into_iter().map_while(|labels| {
            let mut samples = Vec::new();
            for block in sources {
                if let Err(e) = block.read_with(&scratch, &labels, i64::MIN, i64::MAX, &mut samples) {
                    error = Some(e);
                    return None;
                }
            }
            sort_dedup(&mut samples);
            Some((labels, samples))
        });
        let compaction = Compaction { level, sources: sources.iter().map(|b| b.id().to_owned()).collect() };
        let id = self.next_block_id();
        let written = block::write(&self.blocks_dir, &id, series, compaction, &self.head.pool, &self.cache);
        if let Some(e) = error {
            let _ = fs::remove_dir_all(self.blocks_dir.join(&id));
            return Err(e);
        }
        let written = written?;
        {
            let mut blocks = self.blocks.write().expect("blocks lock is never poisoned");
            blocks.retain(|b| !sources.iter().any(|s| s.id() == b.id()));
            if let Some(block) = written {
                blocks.push(Arc::new(block));
            }
            blocks.sort_by_key(|b| (b.meta.min_time, b.meta.max_time));
        }
        let mut retention = self.retention.lock().expect("retention lock");
        for source in sources {
            retention.shortest.remove(source.id());
            if let Err(error) = fs::remove_dir_all(&source.dir) {
                warn!(block = %source.dir.display(), %error, "cannot delete a compacted block");
            }
        }
        Ok(id)
    }

    /// Applies retention, relative to the newest sample stored (or now if
    /// that is in the future): data of a series is deleted by whole blocks
    /// once the block's newest sample is older than the series' retention
    /// (its first matching rule's, else `retention_ms`). A block whose series
    /// all expired is deleted; one where only some did is rewritten without
    /// them. Then, if `retention_bytes` is set, the oldest blocks are deleted
    /// while blocks take more. Returns the number of blocks deleted.
    pub fn apply_retention(&self) -> usize {
        // A sample stamped in the future must not age everything else out.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(i64::MAX, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let newest = self.max_t().min(now_ms);
        let mut deleted = 0;
        for (block, expired_all) in self.expired_blocks(newest) {
            if expired_all {
                if self.remove_blocks(&[block]) > 0 {
                    deleted += 1;
                }
                continue;
            }
            let rules = self.retention.lock().expect("retention lock").rules.clone();
            let keep =
                |labels: &Labels| block.meta.max_time >= newest.saturating_sub(self.retention_of(&rules, labels));
            match self.rewrite(std::slice::from_ref(&block), block.meta.compaction.level, keep) {
                Ok(id) => {
                    info!(block = %block.dir.display(), new_block = %id, "rewrote a block without the series past their retention");
                }
                Err(error) => warn!(block = %block.dir.display(), %error, "cannot rewrite a block for retention"),
            }
        }
        if let Some(limit) = self.options.retention_bytes {
            let doomed: Vec<Arc<Block>> = {
                let mut blocks: Vec<Arc<Block>> = self.blocks().clone();
                blocks.sort_by_key(|b| b.meta.max_time);
                let mut total: u64 = blocks.iter().map(|b| b.meta.stats.bytes).sum();
                let mut doomed = Vec::new();
                for block in blocks {
                    if total <= limit {
                        break;
                    }
                    total -= block.meta.stats.bytes;
                    doomed.push(block);
                }
                doomed
            };
            deleted += self.remove_blocks(&doomed);
        }
        deleted
    }

    /// Blocks holding data past retention at `newest`, each with whether all
    /// of its series expired.
    fn expired_blocks(&self, newest: i64) -> Vec<(Arc<Block>, bool)> {
        let blocks = self.blocks().clone();
        let mut state = self.retention.lock().expect("retention lock");
        let mut found = Vec::new();
        for block in blocks {
            if state.rules.is_empty() {
                if block.meta.max_time < newest.saturating_sub(self.options.retention_ms) {
                    found.push((block, true));
                }
                continue;
            }
            let rules = std::mem::take(&mut state.rules);
            let shortest = *state.shortest.entry(block.id().to_owned()).or_insert_with(|| {
                block.labels().map(|l| self.retention_of(&rules, l)).min().unwrap_or(self.options.retention_ms)
            });
            if block.meta.max_time < newest.saturating_sub(shortest) {
                let all =
                    block.labels().all(|l| block.meta.max_time < newest.saturating_sub(self.retention_of(&rules, l)));
                found.push((block, all));
            }
            state.rules = rules;
        }
        found
    }

    /// Takes `doomed` out of the store and deletes their directories;
    /// returns how many were still there.
    fn remove_blocks(&self, doomed: &[Arc<Block>]) -> usize {
        let removed: Vec<Arc<Block>> = {
            let mut blocks = self.blocks.write().expect("blocks lock is never poisoned");
            let before = blocks.len();
            let mut removed = Vec::new();
            blocks.retain(|b| {
                let gone = doomed.iter().any(|d| d.id() == b.id());
                if gone {
                    removed.push(Arc::clone(b));
                }
                !gone
            });
            debug_assert_eq!(before, blocks.len() + removed.len());
            removed
        };
        for block in &removed {
            info!(block = %block.dir.display(), max_time = block.meta.max_time, "deleting a block past retention");
            if let Err(error) = fs::remove_dir_all(&block.dir) {
                warn!(block = %block.dir.display(), %error, "cannot delete a block past retention");
            }
            self.retention.lock().expect("retention lock").shortest.remove(block.id());
        }
        self.counters.blocks_deleted_retention.fetch_add(removed.len() as u64, Ordering::Relaxed);
        removed.len()
    }

    fn select_range(&self, matchers: &[LabelMatcher], range: Option<(i64, i64)>) -> Vec<(SeriesRef, Arc<Labels>)> {
        let (min_t, max_t) = range.unwrap_or((i64::MIN, i64::MAX));
        let mut found = self.head.select(matchers);
        if range.is_some() {
            found.retain(|(r, _)| self.head.has_data_in(*r, min_t, max_t));
        }
        let blocks = self.blocks();
        let overlapping: Vec<&Arc<Block>> = blocks.iter().filter(|b| b.overlaps(min_t, max_t)).collect();
        if !overlapping.is_empty() {
            let mut seen: HashSet<Arc<Labels>> = found.iter().map(|(_, l)| Arc::clone(l)).collect();
            for block in overlapping {
                for labels in block.select(matchers, min_t, max_t) {
                    if !seen.contains(&labels) {
                        // A series only in blocks gets a (released) head ref, so reads can name it.
                        found.push((self.head.series_ref(&labels), Arc::clone(&labels)));
                        seen.insert(labels);
                    }
                }
            }
        }
        found.sort_by(|a, b| a.1.cmp(&b.1));
        found
    }
}

/// Sorts by time and keeps the first of equal timestamps (already-sorted input is left as is).
fn sort_dedup(samples: &mut Vec<Sample>) {
    if samples.windows(2).all(|w| w[0].timestamp_ms < w[1].timestamp_ms) {
        return;
    }
    samples.sort_by_key(|s| s.timestamp_ms);
    samples.dedup_by_key(|s| s.timestamp_ms);
}

impl Storage for Db {
    fn series_ref(&self, labels: &Labels) -> SeriesRef {
        self.head.series_ref(labels)
    }

    fn append(&self, series: SeriesRef, sample: Sample) -> Result<(), AppendError> {
        self.head.append(series, sample)
    }

    fn select(&self, matchers: &[LabelMatcher]) -> Vec<(SeriesRef, Arc<Labels>)> {
        self.select_range(matchers, None)
    }

    fn read(&self, series: SeriesRef, min_t: i64, max_t: i64, out: &mut Vec<Sample>) {
        let Some(labels) = self.head.labels(series) else { return };
        let start = out.len();
        let blocks = self.blocks();
        for block in blocks.iter().filter(|b| b.overlaps(min_t, max_t)) {
            if let Err(error) = block.read(&labels, min_t, max_t, out) {
                self.counters.block_read_errors.fetch_add(1, Ordering::Relaxed);
                warn!(%error, "cannot read a block");
            }
        }
        self.head.read(series, min_t, max_t, out);
        drop(blocks);
        // Sources overlap only after backfill into a cut range: usually this is a no-op check.
        if !out[start..].windows(2).all(|w| w[0].timestamp_ms < w[1].timestamp_ms) {
            out[start..].sort_by_key(|s| s.timestamp_ms);
            let mut kept = start;
            for i in start..out.len() {
                if kept > start && out[kept - 1].timestamp_ms == out[i].timestamp_ms {
                    continue;
                }
                out[kept] = out[i];
                kept += 1;
            }
            out.truncate(kept);
        }
    }

    fn select_in_range(&self, matchers: &[LabelMatcher], min_t: i64, max_t: i64) -> Vec<(SeriesRef, Arc<Labels>)> {
        self.select_range(matchers, Some((min_t, max_t)))
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            series: self.head.series_count(),
            samples: self.head.counters.samples_appended.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MatchOp;

    const HOUR: i64 = 3_600_000;

    fn db(dir: &Path) -> Db {
        Db::open(dir, DbOptions::new(2 * HOUR, 30 * HOUR, None)).unwrap()
    }

    fn read_all(db: &Db, r: SeriesRef) -> Vec<Sample> {
        let mut out = Vec::new();
        db.read(r, i64::MIN, i64::MAX, &mut out);
        out
    }

    #[test]
    fn data_reads_the_same_from_head_and_blocks_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = db(dir.path());
        let a = store.series_ref(&Labels::from_pairs([("__name__", "a"), ("job", "node")]));
        let gone = store.series_ref(&Labels::from_pairs([("__name__", "gone"), ("job", "node")]));
        let mut expected = Vec::new();
        for t in (0..10 * HOUR).step_by(60_000) {
            let sample = Sample { timestamp_ms: t, value: t as f64 / 1000.0 };
            store.append(a, sample).unwrap();
            expected.push(sample);
            if t < HOUR {
                store.append(gone, sample).unwrap();
            }
        }
        // Backfill into an hour that will be cut.
        store.append(a, Sample { timestamp_ms: 30_000, value: -1.0 }).unwrap();
        expected.insert(1, Sample { timestamp_ms: 30_000, value: -1.0 });
        let before = store.due_cut().unwrap();
        assert_eq!(before, 8 * HOUR);
        store.cut(before).unwrap().unwrap();
        assert_eq!(store.due_cut(), None);
        assert_eq!(read_all(&store, a), expected);
        assert_eq!(store.stats().series, 1, "the idle series was released from the head");
        let name = |v: &str| LabelMatcher::new(MatchOp::Equal, "__name__", v).unwrap();
        let found = store.select(&[name("gone")]);
        assert_eq!(found.len(), 1, "still found in its block");
        assert_eq!(read_all(&store, found[0].0).len(), 60);
        assert_eq!(store.select_in_range(&[name("gone")], 2 * HOUR, 3 * HOUR).len(), 0);
        let job = LabelMatcher::new(MatchOp::Equal, "job", "node").unwrap();
        assert_eq!(store.select_in_range(&[job], 0, HOUR).len(), 2);
        // Blocks come back on open; the head part is the WAL's job. A
        // half-written block and a block already merged into another are deleted.
        drop(store);
        fs::create_dir(dir.path().join("000000000099.tmp")).unwrap();
        fs::write(dir.path().join("000000000099.tmp/chunks"), b"partial").unwrap();
        let reopened = db(dir.path());
        assert!(!dir.path().join("000000000099.tmp").exists());
        assert_eq!(reopened.block_stats().0, 1);
        let a = reopened.series_ref(&Labels::from_pairs([("__name__", "a"), ("job", "node")]));
        assert_eq!(
            read_all(&reopened, a),
            expected[..expected.iter().position(|s| s.timestamp_ms >= 8 * HOUR).unwrap()]
        );
        // A compaction that crashed after writing its result but before deleting its sources.
        let source = reopened.block_ranges()[0].0.clone();
        let samples = vec![Sample { timestamp_ms: 0, value: 1.0 }];
        let labels = Arc::new(Labels::from_pairs([("__name__", "merged")]));
        let compaction = Compaction { level: 2, sources: vec![source.clone()] };
        let series = std::iter::once((labels, samples));
        block::write(dir.path(), "000000000100", series, compaction, &reopened.head.pool, &reopened.cache).unwrap();
        drop(reopened);
        let after_crash = db(dir.path());
        assert_eq!(after_crash.block_ranges().iter().map(|b| b.0.as_str()).collect::<Vec<_>>(), vec!["000000000100"]);
        assert!(!dir.path().join(&source).exists());
    }

    #[test]
    fn a_failed_cut_puts_the_data_back_into_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = db(&dir.path().join("blocks"));
        let a = store.series_ref(&Labels::from_pairs([("__name__", "a")]));
        for t in (0..4 * HOUR).step_by(60_000) {
            store.append(a, Sample { timestamp_ms: t, value: 1.0 }).unwrap();
        }
        // The blocks directory is replaced by a file: the block cannot be written.
        fs::remove_dir_all(dir.path().join("blocks")).unwrap();
        fs::write(dir.path().join("blocks"), b"").unwrap();
        let before = store.due_cut().unwrap();
        assert!(store.cut(before).is_err());
        assert_eq!(read_all(&store, a).len(), 240);
        assert_eq!(store.due_cut(), Some(before), "retried next round");
        fs::remove_file(dir.path().join("blocks")).unwrap();
        fs::create_dir(dir.path().join("blocks")).unwrap();
        store.cut(before).unwrap().unwrap();
        assert_eq!(read_all(&store, a).len(), 240);
        assert_eq!(store.block_samples(), 120);
    }

    #[test]
    fn compaction_merges_blocks_and_retention_deletes_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Db::open(dir.path(), DbOptions::new(HOUR, 100 * HOUR, None)).unwrap();
        let a = store.series_ref(&Labels::from_pairs([("__name__", "a")]));
        let mut written = 0;
        for t in (0..40 * HOUR).step_by(600_000) {
            store.append(a, Sample { timestamp_ms: t, value: 1.0 }).unwrap();
            written += 1;
            if let Some(before) = store.due_cut() {
                store.cut(before).unwrap();
                store.compact().unwrap();
            }
        }
        let levels: Vec<u32> = store.block_ranges().iter().map(|b| b.3).collect();
        assert!(levels.iter().any(|&l| l >= 3), "{levels:?}");
        assert!(levels.len() < 12, "{levels:?}");
        assert_eq!(read_all(&store, a).len(), written);
        assert!(store.counters.compactions.load(Ordering::Relaxed) > 0);
        let ranges = store.block_ranges();
        assert!(ranges.windows(2).all(|w| w[0].2 < w[1].1), "no overlaps: {ranges:?}");
        // Retention of 10 h: blocks ending before 30 h go.
        let store = Db::open(dir.path(), DbOptions::new(HOUR, 10 * HOUR, None)).unwrap();
        assert!(store.apply_retention() > 0);
        assert!(store.block_ranges().iter().all(|b| b.2 >= store.max_t() - 10 * HOUR));
        let bytes_limit = store.block_stats().1 / 2;
        let store = Db::open(dir.path(), DbOptions::new(HOUR, 100 * HOUR, Some(bytes_limit))).unwrap();
        store.apply_retention();
        assert!(store.block_stats().1 <= bytes_limit);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count() as u64, store.block_stats().0);
    }
}
