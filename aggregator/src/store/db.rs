//! The durable store: the head (recent data, in memory, made durable by the
//! WAL) plus immutable blocks on disk, behind the one `Storage` interface.
//! `select` merges series from the head and every block by labels; `read`
//! merges their samples in time order (an equal timestamp from two places is
//! returned once, the older write first). Maintenance cuts head data older
//! than the current block range into a block, compacts blocks into larger
//! ones and deletes whole blocks past retention; WAL checkpoints are driven
//! from `maintenance`.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use herd_common::metric::Labels;
use tracing::{info, warn};

use super::block::{self, Block, BlockError, Compaction};
use super::chunk::Chunk;
use super::head::Head;
use super::{AppendError, LabelMatcher, Sample, SeriesRef, Storage, StoreStats};

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
}

impl DbOptions {
    /// Compacted blocks span up to 10% of retention, at most 31 days.
    pub fn new(block_duration_ms: i64, retention_ms: i64, retention_bytes: Option<u64>) -> Self {
        let max_block_duration_ms = (retention_ms / 10).min(31 * 24 * 3600 * 1000).max(block_duration_ms);
        Self { block_duration_ms: block_duration_ms.max(1), retention_ms, retention_bytes, max_block_duration_ms }
    }
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
            match block::open(&path, &head.pool) {
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
            counters: DbCounters::default(),
        })
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
        let copies = series.iter().map(|(labels, chunks)| (Arc::clone(labels), chunks.clone()));
        let written = match block::write(
            &self.blocks_dir,
            &id,
            copies,
            Compaction { level: 1, sources: vec![] },
            &self.head.pool,
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
        let mut all_labels: Vec<Arc<Labels>> = sources.iter().flat_map(|b| b.labels().cloned()).collect();
        all_labels.sort();
        all_labels.dedup();
        let mut error = None;
        let mut samples = Vec::new();
        let series = all_labels.into_iter().map_while(|labels| {
            samples.clear();
            for block in sources {
                if let Err(e) = block.read(&labels, i64::MIN, i64::MAX, &mut samples) {
                    error = Some(e);
                    return None;
                }
            }
            sort_dedup(&mut samples);
            let mut chunks: Vec<Chunk> = Vec::new();
            Chunk::encode_all(&samples, &mut chunks);
            Some((labels, chunks))
        });
        let level = sources.iter().map(|b| b.meta.compaction.level).max().unwrap_or(1) + 1;
        let compaction = Compaction { level, sources: sources.iter().map(|b| b.id().to_owned()).collect() };
        let id = self.next_block_id();
        let written = block::write(&self.blocks_dir, &id, series, compaction, &self.head.pool);
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
        for source in sources {
            if let Err(error) = fs::remove_dir_all(&source.dir) {
                warn!(block = %source.dir.display(), %error, "cannot delete a compacted block");
            }
        }
        let elapsed = started.elapsed();
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters.compaction_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        info!(block = %id, sources = sources.len(), level, elapsed_ms = elapsed.as_millis() as u64, "blocks compacted");
        Ok(())
    }

    /// Deletes whole blocks past `retention_ms` (relative to the newest
    /// sample stored, or now if that is in the future) and, if `retention_bytes` is set, the oldest blocks
    /// while they take more. Returns the number deleted.
    pub fn apply_retention(&self) -> usize {
        // A sample stamped in the future must not age everything else out.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(i64::MAX, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let newest = self.max_t().min(now_ms);
        let mut doomed = Vec::new();
        {
            let mut blocks = self.blocks.write().expect("blocks lock is never poisoned");
            let horizon = newest.saturating_sub(self.options.retention_ms);
            blocks.retain(|b| {
                let keep = b.meta.max_time >= horizon;
                if !keep {
                    doomed.push(Arc::clone(b));
                }
                keep
            });
            if let Some(limit) = self.options.retention_bytes {
                let mut total: u64 = blocks.iter().map(|b| b.meta.stats.bytes).sum();
                blocks.sort_by_key(|b| b.meta.max_time);
                while total > limit && !blocks.is_empty() {
                    let oldest = blocks.remove(0);
                    total -= oldest.meta.stats.bytes;
                    doomed.push(oldest);
                }
                blocks.sort_by_key(|b| (b.meta.min_time, b.meta.max_time));
            }
        }
        for block in &doomed {
            info!(block = %block.dir.display(), max_time = block.meta.max_time, "deleting a block past retention");
            if let Err(error) = fs::remove_dir_all(&block.dir) {
                warn!(block = %block.dir.display(), %error, "cannot delete a block past retention");
            }
        }
        self.counters.blocks_deleted_retention.fetch_add(doomed.len() as u64, Ordering::Relaxed);
        doomed.len()
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
        let mut chunks = Vec::new();
        Chunk::encode_all(&[Sample { timestamp_ms: 0, value: 1.0 }], &mut chunks);
        let labels = Arc::new(Labels::from_pairs([("__name__", "merged")]));
        let compaction = Compaction { level: 2, sources: vec![source.clone()] };
        block::write(dir.path(), "000000000100", std::iter::once((labels, chunks)), compaction, &reopened.head.pool)
            .unwrap();
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
