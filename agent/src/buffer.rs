//! Durable, bounded queue of collected batches, in sled. No network here.
//!
//! Trees: `batches` (key: sequence number, big-endian; value: an encoded
//! batch), `series` (key: series id; value: its labels, so ids survive a
//! restart), `meta` (`next_seq`). A batch is written and flushed before the
//! uplink sends it, and removed when the aggregator acknowledges it.
//!
//! The buffer is bounded in bytes: past the budget the oldest batches go
//! first, counted in `herd_agent_buffer_dropped_samples_total`. The budget
//! also shrinks when the filesystem runs low, so a small or shared disk
//! fills with deliberate, counted drops rather than write errors (sled's
//! log-structured files take several times the logical bytes). If the disk
//! refuses writes anyway (full, read-only), batches are kept in memory up to
//! a limit and the problem is reported once, then again on recovery.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_common::metric::{Labels, SeriesId, SeriesTable};
use herd_common::protocol::SampleBatch;
use herd_common::varint::{get as get_varint, put as put_varint};
use tracing::{info, warn};

// sled's default page cache is 1 GiB; the agent must stay small.
const CACHE_CAPACITY_BYTES: u64 = 4 << 20;
const FORMAT_VERSION: u8 = 1;
/// Header: version, timestamp, sample count.
const HEADER_BYTES: usize = 1 + 8 + 4;
const NEXT_SEQ_KEY: &[u8] = b"next_seq";
/// Free space kept on the buffer's filesystem: this fraction of its size...
const RESERVE_FRACTION: f64 = 0.15;
/// ...but at least this much...
const MIN_RESERVE_BYTES: u64 = 512 << 10;
/// ...and at most this much: on a large disk 15% is far more than the
/// buffer's neighbours need, and the agent would shed data early.
const MAX_RESERVE_BYTES: u64 = 2 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot open the agent buffer at {path} (is it writable by the herd-agent user?): {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("agent buffer at {path} is damaged: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// Figures the self-metrics collector reads.
#[derive(Debug, Default)]
pub struct BufferStats {
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    pub dropped_samples: AtomicU64,
    pub dropped_batches: AtomicU64,
    /// Timestamp (ms) of the oldest batch not yet acknowledged, 0 if none.
    pub oldest_timestamp_ms: AtomicU64,
    pub memory_batches: AtomicU64,
    /// Batches ever pushed: acked + dropped + held add up to it.
    pub pushed_batches: AtomicU64,
    /// The budget in force, lowered while the filesystem is short of space.
    pub budget_bytes: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    samples: u32,
    timestamp_ms: i64,
    /// Held in `memory` because the disk refused it.
    in_memory: bool,
}

pub struct Buffer {
    path: PathBuf,
    db: sled::Db,
    batches: sled::Tree,
    series: sled::Tree,
    meta: sled::Tree,
    index: BTreeMap<u64, Entry>,
    memory: BTreeMap<u64, SampleBatch>,
    persisted_series: usize,
    max_bytes: u64,
    /// `max_bytes`, or less while the filesystem is short of space.
    budget: u64,
    disk_short: bool,
    /// Bytes pushed since the budget was last lowered, and how many it freed:
    /// it is lowered again only once sled has had the chance to reuse them.
    pushed_since_shrink: u64,
    freed_by_shrink: u64,
    max_memory_batches: usize,
    stored_bytes: u64,
    next_seq: u64,
    disk_failing: bool,
    stats: Arc<BufferStats>,
}

/// What opening the buffer recovered.
pub struct Recovered {
    pub buffer: Buffer,
    pub table: SeriesTable,
    pub next_seq: u64,
}

impl Buffer {
    /// Opens (or creates) the buffer under `dir` and recovers the series
    /// table and the batches that were never acknowledged.
    pub fn open(dir: &Path, max_bytes: u64, max_memory_batches: usize) -> Result<Recovered, BufferError> {
        let path = dir.join("buffer");
        let open_err = |source| BufferError::Open { path: path.clone(), source };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(open_err)?;
        let batches = db.open_tree("batches").map_err(open_err)?;
        let series = db.open_tree("series").map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;

        let mut table = SeriesTable::new();
        for (expected, item) in series.iter().enumerate() {
            let (key, value) = item.map_err(open_err)?;
            let id = key_u64(&key).filter(|&id| id == expected as u64).ok_or_else(|| BufferError::Corrupt {
                path: path.clone(),
                detail: format!("series ids are not dense at {expected}"),
            })?;
            let labels = decode_labels(&value).ok_or_else(|| BufferError::Corrupt {
                path: path.clone(),
                detail: format!("series {id} is unreadable"),
            })?;
            table.restore(labels);
        }

        let mut index = BTreeMap::new();
        let mut stored_bytes = 0;
        let mut unreadable = Vec::new();
        for item in batches.iter() {
            let (key, value) = item.map_err(open_err)?;
            match (key_u64(&key), decode_header(&value)) {
                (Some(seq), Some((timestamp_ms, samples))) => {
                    let bytes = (key.len() + value.len()) as u64;
                    stored_bytes += bytes;
                    index.insert(seq, Entry { bytes, samples, timestamp_ms, in_memory: false });
                }
                _ => unreadable.push(key),
            }
        }
        for key in &unreadable {
            warn!(path = %path.display(), "dropping an unreadable batch from the agent buffer");
            let _ = batches.remove(key);
        }
        let stored_next = meta.get(NEXT_SEQ_KEY).map_err(open_err)?.and_then(|v| key_u64(&v)).unwrap_or(0);
        let next_seq = stored_next.max(index.keys().next_back().map_or(0, |s| s + 1));
        let buffer = Buffer {
            path,
            db,
            batches,
            series,
            meta,
            index,
            memory: BTreeMap::new(),
            persisted_series: table.len(),
            max_bytes,
            budget: max_bytes,
            disk_short: false,
            pushed_since_shrink: 0,
            freed_by_shrink: 0,
            max_memory_batches: max_memory_batches.max(1),
            stored_bytes,
            next_seq,
            disk_failing: false,
            stats: Arc::new(BufferStats::default()),
        };
        buffer.update_stats();
        info!(
            path = %buffer.path.display(),
            batches = buffer.index.len(),
            bytes = buffer.stored_bytes,
            series = table.len(),
            next_seq,
            "agent buffer opened"
        );
        Ok(Recovered { buffer, table, next_seq })
    }

    pub fn stats(&self) -> Arc<BufferStats> {
        Arc::clone(&self.stats)
    }

    /// Batches held, on disk and in memory.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Stores `batch`, first persisting any series `table` gained since the
    /// last call. Never fails: a disk problem moves the batch to memory.
    /// Call [`Buffer::flush`] before sending it.
    pub fn push(&mut self, batch: &SampleBatch, table: &SeriesTable) {
        let mut disk_ok = self.persist_series(table).is_ok();
        let value = encode_batch(batch);
        let bytes = (8 + value.len()) as u64;
        self.check_filesystem(bytes);
        self.make_room(bytes);
        if disk_ok {
            let written = self
                .batches
                .insert(batch.seq.to_be_bytes(), value)
                .and_then(|_| self.meta.insert(NEXT_SEQ_KEY, &(batch.seq + 1).to_be_bytes()[..]));
            disk_ok = written.is_ok();
            if let Err(err) = written {
                self.report_disk(Some(&err.to_string()));
            }
        }
        let entry =
            Entry { bytes, samples: batch.samples.len() as u32, timestamp_ms: batch.timestamp_ms, in_memory: !disk_ok };
        self.next_seq = self.next_seq.max(batch.seq + 1);
        if disk_ok {
            self.stored_bytes += bytes;
        } else {
            self.memory.insert(batch.seq, batch.clone());
            while self.memory.len() > self.max_memory_batches {
                let oldest = *self.memory.keys().next().expect("memory is not empty");
                self.drop_batch(oldest);
            }
        }
        self.index.insert(batch.seq, entry);
        self.stats.pushed_batches.fetch_add(1, Ordering::Relaxed);
        self.update_stats();
    }

    /// Makes every pushed batch durable. Blocking: call from `spawn_blocking`.
    pub fn flush_handle(&self) -> sled::Db {
        self.db.clone()
    }

    /// Records the outcome of a flush done on a [`flush_handle`](Self::flush_handle).
    pub fn flushed(&mut self, result: Result<usize, sled::Error>) {
        match result {
            Ok(_) => self.report_disk(None),
            Err(err) => self.report_disk(Some(&err.to_string())),
        }
    }

    fn report_disk(&mut self, error: Option<&str>) {
        match (error, self.disk_failing) {
            (Some(error), false) => {
                warn!(path = %self.path.display(), %error, "agent buffer cannot write to disk: keeping batches in memory");
                self.disk_failing = true;
            }
            (None, true) => {
                info!(path = %self.path.display(), "agent buffer writes to disk again");
                self.disk_failing = false;
            }
            _ => {}
        }
    }

    fn persist_series(&mut self, table: &SeriesTable) -> Result<(), sled::Error> {
        while self.persisted_series < table.len() {
            let id = self.persisted_series as SeriesId;
            let labels = table.labels(id).expect("ids below len exist");
            if let Err(err) = self.series.insert(u64::from(id).to_be_bytes(), encode_labels(labels)) {
                self.report_disk(Some(&err.to_string()));
                return Err(err);
            }
            self.persisted_series += 1;
        }
        Ok(())
    }

    /// Lowers the budget below what is stored when the filesystem runs short
    /// of space, and restores it when space comes back.
    fn check_filesystem(&mut self, incoming: u64) {
        let Ok(fs) = rustix::fs::statvfs(&self.path) else { return };
        let size = fs.f_blocks.saturating_mul(fs.f_frsize);
        let available = fs.f_bavail.saturating_mul(fs.f_frsize);
        let reserve = ((size as f64 * RESERVE_FRACTION) as u64).clamp(MIN_RESERVE_BYTES, MAX_RESERVE_BYTES);
        self.pushed_since_shrink += incoming;
        if available < reserve {
            if self.disk_short && self.pushed_since_shrink < self.freed_by_shrink {
                return; // The last cut has not been rewritten yet.
            }
            if self.disk_short && self.stored_bytes + incoming <= self.budget {
                // Below the lowered budget (acknowledgements are draining it):
                // sled reuses that space, so cutting more would only lose data.
                return;
            }
            // Cut a quarter; sled reuses freed space as new batches arrive.
            self.budget = (self.stored_bytes * 3 / 4).max(incoming);
            self.freed_by_shrink = self.stored_bytes - self.budget.min(self.stored_bytes);
            self.pushed_since_shrink = 0;
            if !self.disk_short {
                warn!(
                    path = %self.path.display(),
                    available_bytes = available,
                    budget_bytes = self.budget,
                    "agent buffer's filesystem is nearly full: dropping the oldest batches"
                );
                self.disk_short = true;
            }
        } else if available > reserve * 3 && self.disk_short {
            self.budget = self.max_bytes;
            self.disk_short = false;
            info!(path = %self.path.display(), available_bytes = available, "agent buffer's filesystem has room again");
        }
    }

    /// New bounds from a pushed configuration. A lower `max_bytes` takes
    /// effect at the next push (the oldest batches make room, counted as
    /// drops); memory batches past the new count wait there until the disk
    /// takes them or they are acknowledged.
    pub fn set_limits(&mut self, max_bytes: u64, max_memory_batches: usize) {
        if (max_bytes, max_memory_batches.max(1)) == (self.max_bytes, self.max_memory_batches) {
            return;
        }
        info!(max_bytes, memory_batches = max_memory_batches, "agent buffer limits changed");
        self.max_bytes = max_bytes;
        if !self.disk_short {
            self.budget = max_bytes;
        }
        self.max_memory_batches = max_memory_batches.max(1);
        self.update_stats();
    }

    /// Drops the oldest batches until `incoming` more bytes fit the budget.
    fn make_room(&mut self, incoming: u64) {
        while self.stored_bytes + incoming > self.budget.min(self.max_bytes) {
            let Some((&oldest, _)) = self.index.iter().find(|(_, e)| !e.in_memory) else { break };
            self.drop_batch(oldest);
        }
    }

    fn drop_batch(&mut self, seq: u64) {
        if let Some(entry) = self.remove_one(seq) {
            let dropped = self.stats.dropped_samples.fetch_add(u64::from(entry.samples), Ordering::Relaxed)
                + u64::from(entry.samples);
            self.stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
            warn!(
                seq,
                samples = entry.samples,
                dropped_samples_total = dropped,
                "agent buffer full: dropped the oldest batch"
            );
        }
    }

    fn remove_one(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.index.remove(&seq)?;
        if entry.in_memory {
            self.memory.remove(&seq);
        } else {
            let _ = self.batches.remove(seq.to_be_bytes());
            self.stored_bytes = self.stored_bytes.saturating_sub(entry.bytes);
        }
        Some(entry)
    }

    /// Forgets acknowledged batches.
    pub fn acknowledge(&mut self, ranges: &[(u64, u64)]) {
        for &(first, last) in ranges {
            let seqs: Vec<u64> = self.index.range(first..=last).map(|(&s, _)| s).collect();
            for seq in seqs {
                self.remove_one(seq);
            }
        }
        self.update_stats();
    }

    /// The batch `seq`, if still held.
    pub fn get(&self, seq: u64) -> Option<SampleBatch> {
        let entry = self.index.get(&seq)?;
        if entry.in_memory {
            return self.memory.get(&seq).cloned();
        }
        let value = self.batches.get(seq.to_be_bytes()).ok()??;
        decode_batch(seq, &value)
    }

    /// The first held sequence number at or after `seq` and before `end`.
    pub fn next_at_or_after(&self, seq: u64, end: u64) -> Option<u64> {
        self.index.range(seq..end).next().map(|(&s, _)| s)
    }

    /// The newest held sequence number.
    pub fn newest(&self) -> Option<u64> {
        self.index.keys().next_back().copied()
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn update_stats(&self) {
        self.stats.bytes.store(self.stored_bytes, Ordering::Relaxed);
        self.stats.batches.store(self.index.len() as u64, Ordering::Relaxed);
        self.stats.memory_batches.store(self.memory.len() as u64, Ordering::Relaxed);
        self.stats.budget_bytes.store(self.budget.min(self.max_bytes), Ordering::Relaxed);
        let oldest = self.index.values().next().map_or(0, |e| e.timestamp_ms.max(0) as u64);
        self.stats.oldest_timestamp_ms.store(oldest, Ordering::Relaxed);
    }
}

fn key_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Version, timestamp, count, then per sample (ascending ids): id gap, value bits.
fn encode_batch(batch: &SampleBatch) -> Vec<u8> {
    let mut samples = batch.samples.clone();
    samples.sort_unstable_by_key(|&(id, _)| id);
    let mut out = Vec::with_capacity(HEADER_BYTES + samples.len() * 10);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&batch.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    let mut previous = 0u32;
    for (id, value) in samples {
        put_varint(u64::from(id - previous), &mut out);
        previous = id;
        out.extend_from_slice(&value.to_bits().to_le_bytes());
    }
    out
}

fn decode_header(value: &[u8]) -> Option<(i64, u32)> {
    if *value.first()? != FORMAT_VERSION {
        return None;
    }
    let timestamp_ms = i64::from_le_bytes(value.get(1..9)?.try_into().ok()?);
    let samples = u32::from_le_bytes(value.get(9..13)?.try_into().ok()?);
    Some((timestamp_ms, samples))
}

fn decode_batch(seq: u64, value: &[u8]) -> Option<SampleBatch> {
    let (timestamp_ms, count) = decode_header(value)?;
    let mut pos = HEADER_BYTES;
    let mut samples = Vec::with_capacity((count as usize).min(value.len() / 9));
    let mut id = 0u64;
    for _ in 0..count {
        id = id.checked_add(get_varint(value, &mut pos)?)?;
        let bits = u64::from_le_bytes(value.get(pos..pos + 8)?.try_into().ok()?);
        pos += 8;
        samples.push((SeriesId::try_from(id).ok()?, f64::from_bits(bits)));
    }
    (pos == value.len()).then_some(SampleBatch { seq, timestamp_ms, samples })
}

fn encode_labels(labels: &Labels) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in labels.iter() {
        put_varint(name.len() as u64, &mut out);
        out.extend_from_slice(name.as_bytes());
        put_varint(value.len() as u64, &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn decode_labels(bytes: &[u8]) -> Option<Labels> {
    let mut pos = 0;
    let mut pairs = Vec::new();
    let text = |pos: &mut usize| -> Option<String> {
        let len = usize::try_from(get_varint(bytes, pos)?).ok()?;
        let s = std::str::from_utf8(bytes.get(*pos..pos.checked_add(len)?)?).ok()?.to_owned();
        *pos += len;
        Some(s)
    };
    while pos < bytes.len() {
        pairs.push((text(&mut pos)?, text(&mut pos)?));
    }
    Labels::from_sorted(pairs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(table: &mut SeriesTable, seq: u64, series: u32) -> SampleBatch {
        let mut scratch = String::new();
        let samples = (0..series)
            .map(|i| (table.intern("thing", &[("i", &i.to_string())], &mut scratch), f64::from(i) + seq as f64 / 10.0))
            .collect();
        SampleBatch { seq, timestamp_ms: 1_000 * seq as i64, samples }
    }

    /// Opens the buffer again in the same process. sled's flusher thread can
    /// hold the directory's lock for a moment after the previous handle is
    /// dropped (a restarted agent is a new process and never meets this).
    fn reopen(dir: &Path) -> Recovered {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Buffer::open(dir, 1 << 20, 10) {
                Ok(recovered) => return recovered,
                Err(err) if std::time::Instant::now() < deadline && err.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => panic!("{err}"),
            }
        }
    }

    #[test]
    fn batches_and_series_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        let mut written = Vec::new();
        {
            let Recovered { mut buffer, next_seq, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
            assert_eq!(next_seq, 0);
            for seq in 0..5 {
                let b = batch(&mut table, seq, 3 + seq as u32);
                buffer.push(&b, &table);
                written.push(b);
            }
            buffer.acknowledge(&[(1, 2)]);
            buffer.flush_handle().flush().unwrap();
        }
        let Recovered { buffer, table: restored, next_seq } = reopen(dir.path());
        assert_eq!(next_seq, 5);
        assert_eq!(restored.len(), table.len());
        for id in 0..table.len() as SeriesId {
            assert_eq!(restored.labels(id), table.labels(id));
        }
        assert_eq!(buffer.len(), 3);
        for seq in [0u64, 3, 4] {
            let mut want = written[seq as usize].clone();
            want.samples.sort_by_key(|s| s.0);
            assert_eq!(buffer.get(seq), Some(want));
        }
        assert_eq!(buffer.get(1), None);
        assert_eq!(buffer.next_at_or_after(1, 10), Some(3));
    }

    #[test]
    fn over_budget_drops_oldest_first_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        let one = encode_batch(&batch(&mut table, 0, 10)).len() as u64 + 8;
        let Recovered { mut buffer, .. } = Buffer::open(dir.path(), one * 3, 10).unwrap();
        for seq in 0..5 {
            buffer.push(&batch(&mut table, seq, 10), &table);
        }
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.next_at_or_after(0, 10), Some(2), "the two oldest went");
        let stats = buffer.stats();
        assert_eq!(stats.dropped_samples.load(Ordering::Relaxed), 20);
        assert_eq!(stats.dropped_batches.load(Ordering::Relaxed), 2);
        assert_eq!(stats.bytes.load(Ordering::Relaxed), one * 3);
    }

    #[test]
    fn garbage_values_are_not_batches() {
        assert_eq!(decode_batch(1, &[]), None);
        assert_eq!(decode_batch(1, &[FORMAT_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 1]), None);
        assert_eq!(decode_labels(&[5, b'a']), None);
    }
}
