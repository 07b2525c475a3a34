//! Durable, bounded queue of collected batches: an append-only log in
//! segment files under `STATE_DIR/spool/`. No network here.
//!
//! Files:
//! - `series.log`: one record per series, in id order (its labels), so ids
//!   survive a restart;
//! - `SEQ.seg` (SEQ: the segment's first sequence number, 20 digits): batch
//!   records, packed as on the wire (`herd_common::protocol::samples`: each
//!   value against the same series' value in the segment's previous batch,
//!   usually one to three bytes), and acknowledgement records;
//! - `next_seq`: the next sequence number, rewritten (temp file, fsync,
//!   rename) before a segment holding the newest numbers is deleted, so
//!   numbers never repeat across restarts.
//!
//! Every record is `[payload length u32][crc32 u32][payload]`. A batch is
//! appended and fsynced (with the series it needs, first) before the uplink
//! sends it; a torn or corrupt tail (a crash mid-write) is cut off at the
//! next start. A segment is deleted once every batch in it is acknowledged
//! (or dropped): acknowledgements are also logged, unsynced, so a restart
//! rarely resends what was already acknowledged (the aggregator drops
//! duplicates by sequence number anyway).
//!
//! The buffer is bounded in bytes: past the budget the oldest segments go
//! first, their batches counted in `herd_agent_buffer_dropped_samples_total`.
//! The budget also shrinks when the filesystem runs low, so a small or shared
//! disk fills with deliberate, counted drops rather than write errors. If the
//! disk refuses writes anyway (full, read-only), batches are kept in memory
//! up to a limit and the problem is reported once, then again on recovery.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_common::metric::{Labels, SeriesId, SeriesTable};
use herd_common::protocol::SampleBatch;
use herd_common::protocol::samples::{SampleDecoder, SampleEncoder};
use herd_common::varint::{get as get_varint, put as put_varint};
use tracing::{info, warn};

const DIR_NAME: &str = "spool";
/// The sled directory of agents before this format; removed on start.
const LEGACY_DIR_NAME: &str = "buffer";
const SERIES_FILE: &str = "series.log";
const NEXT_SEQ_FILE: &str = "next_seq";
const SEGMENT_SUFFIX: &str = ".seg";
/// Length and CRC of every record.
const FRAME_BYTES: usize = 8;
/// No record is larger (a batch of a few hundred thousand samples).
const MAX_RECORD_BYTES: usize = 64 << 20;
const RECORD_BATCH: u8 = 1;
const RECORD_ACKED: u8 = 2;
/// Acknowledged ranges kept for the next record, at most.
const MAX_PENDING_ACKS: usize = 256;
/// A segment closes after this many batches: each starts with full values,
/// so longer segments pack better; shorter ones free disk sooner.
const MAX_SEGMENT_BATCHES: usize = 128;
/// ...or this many bytes, or an eighth of the budget or a sixteenth of the
/// filesystem if that is less, so dropping the oldest segment frees little
/// at a time.
const MAX_SEGMENT_BYTES: u64 = 256 << 10;
const MIN_SEGMENT_BYTES: u64 = 8 << 10;
/// Most bytes one packed sample takes: header, id gap varint, XOR shape and bytes.
const MAX_SAMPLE_BYTES: usize = 1 + 5 + 1 + 8;
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
    Open { path: PathBuf, source: std::io::Error },
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

/// Where a held batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    /// In segment `segment` (its first sequence number), record at `offset`.
    Disk { segment: u64, offset: u64 },
    /// In `memory`, because the disk refused it.
    Memory,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    samples: u32,
    timestamp_ms: i64,
    location: Location,
}

/// A segment file on disk.
#[derive(Debug)]
struct Segment {
    bytes: u64,
    /// Batches in it neither acknowledged nor dropped.
    live: usize,
    /// Its highest sequence number.
    last_seq: u64,
}

/// The segment being appended to.
struct Active {
    key: u64,
    file: Arc<File>,
    encoder: SampleEncoder,
    batches: usize,
    /// Bytes up to the end of the last complete record.
    bytes: u64,
    limit: u64,
}

/// A reader positioned in one segment, so reading batches in order decodes each once.
struct Cursor {
    segment: u64,
    file: File,
    decoder: SampleDecoder,
    /// Offset of the next record to read.
    offset: u64,
}

/// The files a flush makes durable, for a blocking thread.
pub struct FlushHandle {
    files: Vec<Arc<File>>,
}

impl FlushHandle {
    /// fdatasync of every file written since the last flush.
    pub fn flush(&self) -> std::io::Result<()> {
        self.files.iter().try_for_each(|file| file.sync_data())
    }
}

pub struct Buffer {
    path: PathBuf,
    series_file: Arc<File>,
    series_dirty: bool,
    segments: BTreeMap<u64, Segment>,
    active: Option<Active>,
    active_dirty: bool,
    cursor: Option<Cursor>,
    /// Acknowledged ranges not yet logged: written with the next batch.
    pending_acks: Vec<(u64, u64)>,
    index: BTreeMap<u64, Entry>,
    memory: BTreeMap<u64, SampleBatch>,
    persisted_series: usize,
    /// `next_seq` as last written to its file.
    persisted_next_seq: u64,
    max_bytes: u64,
    /// `max_bytes`, or less while the filesystem is short of space.
    budget: u64,
    disk_short: bool,
    /// Size of the buffer's filesystem (as of the last check).
    filesystem_bytes: u64,
    /// The aggregator is connected and acknowledging.
    draining: bool,
    /// Bytes pushed since the budget was last lowered, and how many it freed:
    /// it is lowered again only once the drops have had an effect.
    pushed_since_shrink: u64,
    freed_by_shrink: u64,
    max_memory_batches: usize,
    /// Bytes of every segment file.
    stored_bytes: u64,
    next_seq: u64,
    disk_failing: bool,
    /// Reused for encoding records and reading them back.
    record: Vec<u8>,
    sorted: Vec<(SeriesId, f64)>,
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
        let path = dir.join(DIR_NAME);
        let open_err = |source| BufferError::Open { path: path.clone(), source };
        remove_legacy(&dir.join(LEGACY_DIR_NAME));
        std::fs::create_dir_all(&path).map_err(open_err)?;

        // Series: every complete record, in id order; a torn tail is cut.
        let series_path = path.join(SERIES_FILE);
        let data = read_if_exists(&series_path).map_err(open_err)?;
        let mut table = SeriesTable::new();
        let mut pos = 0;
        while let Some((payload, next)) = next_record(&data, pos) {
            let labels = decode_labels(payload).ok_or_else(|| BufferError::Corrupt {
                path: series_path.clone(),
                detail: format!("series {} is unreadable", table.len()),
            })?;
            table.restore(labels);
            pos = next;
        }
        let series_file = std::fs::OpenOptions::new().create(true).append(true).open(&series_path).map_err(open_err)?;
        if (pos as u64) < series_file.metadata().map_err(open_err)?.len() {
            warn!(path = %series_path.display(), "cutting a torn series record off the agent buffer");
            series_file.set_len(pos as u64).map_err(open_err)?;
        }

        // Segments, oldest first.
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(open_err)? {
            let name = entry.map_err(open_err)?.file_name();
            if let Some(key) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)).and_then(|k| k.parse().ok()) {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        let mut index = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut acked = Vec::new();
        let mut stored_bytes = 0;
        // Acknowledged batches stay in their segment until it is deleted
        // (and `next_seq` is written first): the highest number in any
        // record was used, held or not.
        let mut used_next_seq = 0;
        for key in keys {
            let file = segment_path(&path, key);
            let data = std::fs::read(&file).map_err(open_err)?;
            let mut pos = 0;
            let mut segment = Segment { bytes: 0, live: 0, last_seq: key };
            while let Some((payload, next)) = next_record(&data, pos) {
                match parse_record(payload) {
                    Some(Record::Batch { seq, timestamp_ms, count, .. }) => {
                        used_next_seq = used_next_seq.max(seq + 1);
                        let location = Location::Disk { segment: key, offset: pos as u64 };
                        index.insert(seq, Entry { samples: count, timestamp_ms, location });
                        segment.live += 1;
                        segment.last_seq = segment.last_seq.max(seq);
                    }
                    Some(Record::Acked(ranges)) => acked.extend(ranges),
                    None => break,
                }
                pos = next;
            }
            if pos < data.len() {
                warn!(path = %file.display(), "cutting a torn batch record off the agent buffer");
                let cut = std::fs::OpenOptions::new().write(true).open(&file).and_then(|f| f.set_len(pos as u64));
                cut.map_err(open_err)?;
            }
            segment.bytes = pos as u64;
            stored_bytes += segment.bytes;
            segments.insert(key, segment);
        }
        let stored_next = read_if_exists(&path.join(NEXT_SEQ_FILE))
            .map_err(open_err)?
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let next_seq = stored_next.max(used_next_seq);
        let mut buffer = Buffer {
            path,
            series_file: Arc::new(series_file),
            series_dirty: false,
            segments,
            active: None,
            active_dirty: false,
            cursor: None,
            pending_acks: Vec::new(),
            index,
            memory: BTreeMap::new(),
            persisted_series: table.len(),
            persisted_next_seq: stored_next,
            max_bytes,
            budget: max_bytes,
            disk_short: false,
            filesystem_bytes: u64::MAX,
            draining: false,
            pushed_since_shrink: 0,
            freed_by_shrink: 0,
            max_memory_batches: max_memory_batches.max(1),
            stored_bytes,
            next_seq,
            disk_failing: false,
            record: Vec::new(),
            sorted: Vec::new(),
            stats: Arc::new(BufferStats::default()),
        };
        buffer.forget(&acked);
        // Segments left with nothing to send (all acknowledged, or empty after a cut).
        let empty: Vec<u64> = buffer.segments.iter().filter(|(_, s)| s.live == 0).map(|(&k, _)| k).collect();
        for key in empty {
            buffer.delete_segment(key);
        }
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
    /// Call [`Buffer::flush_handle`]'s flush before sending it.
    pub fn push(&mut self, batch: &SampleBatch, table: &SeriesTable) {
        let mut disk_ok = self.persist_series(table).is_ok();
        // The record's largest possible size, for the budget (its packed size
        // depends on the segment it goes to, which making room may delete).
        let bound =
            (2 * FRAME_BYTES + 32 + batch.samples.len() * MAX_SAMPLE_BYTES + self.pending_acks.len() * 20) as u64;
        self.check_filesystem(bound);
        self.make_room(bound);
        let mut location = Location::Memory;
        if disk_ok {
            match self.append(batch) {
                Ok(offset) => {
                    let segment = self.active.as_ref().expect("append leaves a segment open").key;
                    location = Location::Disk { segment, offset };
                }
                Err(err) => {
                    disk_ok = false;
                    self.report_disk(Some(&err.to_string()));
                }
            }
        }
        let entry = Entry { samples: batch.samples.len() as u32, timestamp_ms: batch.timestamp_ms, location };
        self.next_seq = self.next_seq.max(batch.seq + 1);
        if !disk_ok {
            self.memory.insert(batch.seq, batch.clone());
            self.index.insert(batch.seq, entry);
            while self.memory.len() > self.max_memory_batches {
                let oldest = *self.memory.keys().next().expect("memory is not empty");
                self.drop_batch(oldest);
            }
        } else {
            self.index.insert(batch.seq, entry);
        }
        self.stats.pushed_batches.fetch_add(1, Ordering::Relaxed);
        self.update_stats();
    }

    /// Appends `batch` (and any acknowledgements waiting) to the active
    /// segment, opening one if needed; returns the batch record's offset.
    fn append(&mut self, batch: &SampleBatch) -> std::io::Result<u64> {
        if self.active.as_ref().is_some_and(|a| a.batches >= MAX_SEGMENT_BATCHES || a.bytes >= a.limit) {
            self.close_active();
        }
        if self.active.is_none() {
            let key = batch.seq;
            let file = std::fs::OpenOptions::new().create(true).append(true).open(segment_path(&self.path, key))?;
            // A leftover file of that name (a crash before the first record) holds nothing valid.
            file.set_len(0)?;
            let limit = (self.budget.min(self.max_bytes) / 8)
                .min(self.filesystem_bytes / 16)
                .clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
            self.active =
                Some(Active { key, file: Arc::new(file), encoder: SampleEncoder::new(), batches: 0, bytes: 0, limit });
            self.segments.insert(key, Segment { bytes: 0, live: 0, last_seq: key });
        }
        self.sorted.clear();
        self.sorted.extend_from_slice(&batch.samples);
        self.sorted.sort_unstable_by_key(|&(id, _)| id);
        let active = self.active.as_mut().expect("opened above");
        let record = &mut self.record;
        record.clear();
        if !self.pending_acks.is_empty() {
            let start = record.len();
            record.extend_from_slice(&[0; FRAME_BYTES]);
            record.push(RECORD_ACKED);
            put_varint(self.pending_acks.len() as u64, record);
            for &(first, last) in &self.pending_acks {
                put_varint(first, record);
                put_varint(last - first, record);
            }
            seal(record, start);
        }
        let batch_start = record.len();
        record.extend_from_slice(&[0; FRAME_BYTES]);
        record.push(RECORD_BATCH);
        put_varint(batch.seq, record);
        record.extend_from_slice(&batch.timestamp_ms.to_le_bytes());
        put_varint(self.sorted.len() as u64, record);
        active.encoder.encode(&self.sorted, record);
        seal(record, batch_start);
        let offset = active.bytes + batch_start as u64;
        if let Err(err) = (&*active.file).write_all(record) {
            // Cut what was half written; the encoder already counted this
            // batch, so the segment takes no more.
            let _ = active.file.set_len(active.bytes);
            self.close_active();
            return Err(err);
        }
        self.pending_acks.clear();
        active.bytes += record.len() as u64;
        active.batches += 1;
        let segment = self.segments.get_mut(&active.key).expect("the active segment is listed");
        segment.bytes = active.bytes;
        segment.live += 1;
        segment.last_seq = segment.last_seq.max(batch.seq);
        self.stored_bytes += record.len() as u64;
        self.active_dirty = true;
        Ok(offset)
    }

    /// Stops appending to the active segment; deletes it if nothing in it is still held.
    fn close_active(&mut self) {
        if let Some(active) = self.active.take()
            && self.segments.get(&active.key).is_some_and(|s| s.live == 0)
        {
            self.delete_segment(active.key);
        }
        self.active_dirty = false;
    }

    /// What [`FlushHandle::flush`] must sync to make every pushed batch
    /// durable. Flushing blocks: call it from `spawn_blocking`.
    pub fn flush_handle(&mut self) -> FlushHandle {
        let mut files = Vec::with_capacity(2);
        if std::mem::take(&mut self.series_dirty) {
            files.push(Arc::clone(&self.series_file));
        }
        if std::mem::take(&mut self.active_dirty)
            && let Some(active) = &self.active
        {
            files.push(Arc::clone(&active.file));
        }
        FlushHandle { files }
    }

    /// Records the outcome of a [`FlushHandle::flush`].
    pub fn flushed(&mut self, result: std::io::Result<()>) {
        match result {
            Ok(()) => self.report_disk(None),
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

    fn persist_series(&mut self, table: &SeriesTable) -> std::io::Result<()> {
        if self.persisted_series >= table.len() {
            return Ok(());
        }
        let record = &mut self.record;
        record.clear();
        for id in self.persisted_series..table.len() {
            let labels = table.labels(id as SeriesId).expect("ids below len exist");
            let start = record.len();
            record.extend_from_slice(&[0; FRAME_BYTES]);
            encode_labels(labels, record);
            seal(record, start);
        }
        let before = self.series_file.metadata().map(|m| m.len());
        if let Err(err) = (&*self.series_file).write_all(record) {
            if let Ok(len) = before {
                let _ = self.series_file.set_len(len);
            }
            self.report_disk(Some(&err.to_string()));
            return Err(err);
        }
        self.persisted_series = table.len();
        self.series_dirty = true;
        Ok(())
    }

    /// Lowers the budget below what is stored when the filesystem runs short
    /// of space, and restores it when space comes back.
    fn check_filesystem(&mut self, incoming: u64) {
        let Ok(fs) = rustix::fs::statvfs(&self.path) else { return };
        let size = fs.f_blocks.saturating_mul(fs.f_frsize);
        self.filesystem_bytes = size;
        let available = fs.f_bavail.saturating_mul(fs.f_frsize);
        let reserve = ((size as f64 * RESERVE_FRACTION) as u64).clamp(MIN_RESERVE_BYTES, MAX_RESERVE_BYTES);
        self.pushed_since_shrink += incoming;
        if available < reserve {
            if self.draining {
                // Acknowledgements are freeing whole segments as the backfill
                // goes: dropping the oldest now would cut holes in what it
                // has not sent yet. A disk that fills anyway refuses the
                // write, and the batch waits in memory.
                return;
            }
            if self.disk_short && self.pushed_since_shrink < self.freed_by_shrink {
                return; // The last cut has not been used up yet.
            }
            if self.disk_short && self.stored_bytes + incoming <= self.budget {
                // Below the lowered budget (acknowledgements are draining it):
                // cutting more would only lose data.
                return;
            }
            // Cut a quarter: the oldest segments go, their space comes back at once.
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

    /// Whether the aggregator is connected: while it is, a filesystem short
    /// of space does not make the buffer drop batches (acknowledgements free
    /// space); `max_bytes` still holds.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
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

    /// Drops the oldest segments until `incoming` more bytes fit the budget
    /// (`max_bytes` alone while draining).
    fn make_room(&mut self, incoming: u64) {
        let limit = if self.draining { self.max_bytes } else { self.budget.min(self.max_bytes) };
        while self.stored_bytes + incoming > limit {
            let Some((&oldest, _)) = self.segments.iter().next() else { break };
            let seqs: Vec<u64> = self
                .index
                .iter()
                .filter(|(_, e)| matches!(e.location, Location::Disk { segment, .. } if segment == oldest))
                .map(|(&s, _)| s)
                .collect();
            for seq in seqs {
                self.drop_batch(seq);
            }
            if self.segments.contains_key(&oldest) {
                // Held nothing more (the rest acknowledged while it was active): free it.
                if self.active.as_ref().is_some_and(|a| a.key == oldest) {
                    self.active = None;
                    self.active_dirty = false;
                }
                self.delete_segment(oldest);
            }
            if self.segments.contains_key(&oldest) {
                break; // It could not be deleted (reported): nothing more to free now.
            }
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

    /// Forgets `seq`; deletes its segment when that held nothing else.
    fn remove_one(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.index.remove(&seq)?;
        match entry.location {
            Location::Memory => {
                self.memory.remove(&seq);
            }
            Location::Disk { segment, .. } => {
                let emptied = self.segments.get_mut(&segment).is_some_and(|s| {
                    s.live = s.live.saturating_sub(1);
                    s.live == 0
                });
                let active = self.active.as_ref().is_some_and(|a| a.key == segment);
                if emptied && !active {
                    self.delete_segment(segment);
                }
            }
        }
        Some(entry)
    }

    /// Deletes segment `key`'s file, first recording `next_seq` if the
    /// segment held the newest numbers.
    fn delete_segment(&mut self, key: u64) {
        let Some(segment) = self.segments.remove(&key) else { return };
        if self.cursor.as_ref().is_some_and(|c| c.segment == key) {
            self.cursor = None;
        }
        if self.persisted_next_seq <= segment.last_seq {
            let next_seq = self.next_seq.max(segment.last_seq + 1);
            match write_next_seq(&self.path, next_seq) {
                Ok(()) => self.persisted_next_seq = next_seq,
                Err(err) => {
                    // Keep the file: it still carries the numbers.
                    self.report_disk(Some(&err.to_string()));
                    self.segments.insert(key, segment);
                    return;
                }
            }
        }
        let _ = std::fs::remove_file(segment_path(&self.path, key));
        self.stored_bytes = self.stored_bytes.saturating_sub(segment.bytes);
    }

    /// Removes `ranges` from the index (used on open, before anything is logged).
    fn forget(&mut self, ranges: &[(u64, u64)]) {
        for &(first, last) in ranges {
            let seqs: Vec<u64> = self.index.range(first..=last).map(|(&s, _)| s).collect();
            for seq in seqs {
                if let Some(Entry { location: Location::Disk { segment, .. }, .. }) = self.index.remove(&seq)
                    && let Some(s) = self.segments.get_mut(&segment)
                {
                    s.live = s.live.saturating_sub(1);
                }
            }
        }
    }

    /// Forgets acknowledged batches.
    pub fn acknowledge(&mut self, ranges: &[(u64, u64)]) {
        for &(first, last) in ranges {
            let seqs: Vec<u64> = self.index.range(first..=last).map(|(&s, _)| s).collect();
            let on_disk = seqs.iter().any(|s| self.index.get(s).is_some_and(|e| e.location != Location::Memory));
            for seq in seqs {
                self.remove_one(seq);
            }
            if on_disk && last >= first {
                let pending = self.pending_acks.len();
                match self.pending_acks.last_mut() {
                    Some(previous) if previous.1.checked_add(1) == Some(first) => previous.1 = last,
                    _ if pending >= MAX_PENDING_ACKS => {} // They only save resends after a restart.
                    _ => self.pending_acks.push((first, last)),
                }
            }
        }
        self.update_stats();
    }

    /// The batch `seq`, if still held (samples in ascending id order).
    pub fn get(&mut self, seq: u64) -> Option<SampleBatch> {
        let entry = *self.index.get(&seq)?;
        match entry.location {
            Location::Memory => {
                let mut batch = self.memory.get(&seq).cloned()?;
                batch.samples.sort_by_key(|&(id, _)| id);
                Some(batch)
            }
            Location::Disk { segment, offset } => {
                let batch = self.read_batch(segment, offset);
                if batch.is_none() {
                    self.cursor = None;
                    warn!(seq, path = %self.path.display(), "cannot read a batch back from the agent buffer");
                }
                batch
            }
        }
    }

    /// Decodes the batch record at `offset` of `segment`, decoding the ones
    /// before it in the segment unless the cursor is already past them.
    fn read_batch(&mut self, segment: u64, offset: u64) -> Option<SampleBatch> {
        let reuse = self.cursor.as_ref().is_some_and(|c| c.segment == segment && c.offset <= offset);
        if !reuse {
            let file = File::open(segment_path(&self.path, segment)).ok()?;
            self.cursor = Some(Cursor { segment, file, decoder: SampleDecoder::new(), offset: 0 });
        }
        let cursor = self.cursor.as_mut()?;
        if let Some(last) = self.persisted_series.checked_sub(1) {
            cursor.decoder.define(last as u32);
        }
        let mut samples = Vec::new();
        loop {
            let at = cursor.offset;
            let mut frame = [0u8; FRAME_BYTES];
            cursor.file.read_exact_at(&mut frame, at).ok()?;
            let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_RECORD_BYTES {
                return None;
            }
            self.record.resize(len, 0);
            cursor.file.read_exact_at(&mut self.record, at + FRAME_BYTES as u64).ok()?;
            if crc32fast::hash(&self.record) != u32::from_le_bytes(frame[4..].try_into().expect("4 bytes")) {
                return None;
            }
            cursor.offset = at + (FRAME_BYTES + len) as u64;
            if let Some(Record::Batch { seq, timestamp_ms, count, packed }) = parse_record(&self.record) {
                samples.clear();
                cursor.decoder.decode(packed, count, &mut samples).ok()?;
                if at == offset {
                    return Some(SampleBatch { seq, timestamp_ms, samples });
                }
            }
            if at >= offset {
                return None;
            }
        }
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

    /// Bytes of the segment files.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
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

fn segment_path(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("{key:020}{SEGMENT_SUFFIX}"))
}

fn read_if_exists(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// Removes the sled buffer of an older agent version (its batches are not read).
fn remove_legacy(path: &Path) {
    if path.join("db").exists() || path.join("conf").exists() {
        warn!(
            path = %path.display(),
            "removing an older agent's buffer: batches it held that were never acknowledged are not sent"
        );
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Writes `next_seq` durably: a temp file, fsync, rename, fsync of the directory.
fn write_next_seq(dir: &Path, next_seq: u64) -> std::io::Result<()> {
    let temp = dir.join(format!("{NEXT_SEQ_FILE}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(&next_seq.to_le_bytes())?;
    file.sync_data()?;
    std::fs::rename(&temp, dir.join(NEXT_SEQ_FILE))?;
    File::open(dir)?.sync_all()
}

/// Fills in the length and CRC of the record that starts at `start` and runs to the end of `out`.
fn seal(out: &mut [u8], start: usize) {
    let payload = start + FRAME_BYTES;
    let len = (out.len() - payload) as u32;
    let crc = crc32fast::hash(&out[payload..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..payload].copy_from_slice(&crc.to_le_bytes());
}

/// The payload of the record at `pos` and where the next one starts; `None`
/// at the end or at a torn or corrupt record.
fn next_record(data: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let frame = data.get(pos..pos.checked_add(FRAME_BYTES)?)?;
    let len = u32::from_le_bytes(frame[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(frame[4..].try_into().ok()?);
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let start = pos + FRAME_BYTES;
    let payload = data.get(start..start.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, start + len))
}

enum Record<'a> {
    Batch { seq: u64, timestamp_ms: i64, count: u32, packed: &'a [u8] },
    Acked(Vec<(u64, u64)>),
}

fn parse_record(payload: &[u8]) -> Option<Record<'_>> {
    let (&kind, rest) = payload.split_first()?;
    let mut pos = 0;
    match kind {
        RECORD_BATCH => {
            let seq = get_varint(rest, &mut pos)?;
            let timestamp_ms = i64::from_le_bytes(rest.get(pos..pos + 8)?.try_into().ok()?);
            pos += 8;
            let count = u32::try_from(get_varint(rest, &mut pos)?).ok()?;
            Some(Record::Batch { seq, timestamp_ms, count, packed: rest.get(pos..)? })
        }
        RECORD_ACKED => {
            let n = get_varint(rest, &mut pos)?;
            let mut ranges = Vec::with_capacity((n as usize).min(rest.len()));
            for _ in 0..n {
                let first = get_varint(rest, &mut pos)?;
                let last = first.checked_add(get_varint(rest, &mut pos)?)?;
                ranges.push((first, last));
            }
            Some(Record::Acked(ranges))
        }
        _ => None,
    }
}

fn encode_labels(labels: &Labels, out: &mut Vec<u8>) {
    for (name, value) in labels.iter() {
        put_varint(name.len() as u64, out);
        out.extend_from_slice(name.as_bytes());
        put_varint(value.len() as u64, out);
        out.extend_from_slice(value.as_bytes());
    }
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

    fn sorted(mut batch: SampleBatch) -> SampleBatch {
        batch.samples.sort_by_key(|s| s.0);
        batch
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
                buffer.flush_handle().flush().unwrap();
                written.push(b);
            }
            buffer.acknowledge(&[(1, 2)]);
            // Logged with the next batch.
            let b = batch(&mut table, 5, 3);
            buffer.push(&b, &table);
            buffer.flush_handle().flush().unwrap();
            written.push(b);
        }
        let Recovered { mut buffer, table: restored, next_seq } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
        assert_eq!(next_seq, 6);
        assert_eq!(restored.len(), table.len());
        for id in 0..table.len() as SeriesId {
            assert_eq!(restored.labels(id), table.labels(id));
        }
        assert_eq!(buffer.len(), 4);
        // Out of order too: the newest first, then the rest in order, as the uplink reads them.
        for seq in [5u64, 0, 3, 4] {
            assert_eq!(buffer.get(seq), Some(sorted(written[seq as usize].clone())), "batch {seq}");
        }
        assert_eq!(buffer.get(1), None);
        assert_eq!(buffer.next_at_or_after(1, 10), Some(3));
    }

    #[test]
    fn a_restarted_backfill_reads_every_held_batch_newest_first_then_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        let mut written = Vec::new();
        {
            let Recovered { mut buffer, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
            for seq in 0..300 {
                let b = batch(&mut table, seq, 20 + (seq % 7) as u32);
                buffer.push(&b, &table);
                buffer.flush_handle().flush().unwrap();
                written.push(b);
                if seq == 250 {
                    buffer.acknowledge(&[(0, 9), (250, 250)]);
                }
            }
        }
        let Recovered { mut buffer, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
        assert_eq!(buffer.len(), 300 - 11);
        let newest = buffer.newest().unwrap();
        assert_eq!(buffer.get(newest), Some(sorted(written[newest as usize].clone())));
        let mut next = 0;
        let mut read = 0;
        while let Some(seq) = buffer.next_at_or_after(next, newest) {
            assert_eq!(buffer.get(seq), Some(sorted(written[seq as usize].clone())), "batch {seq}");
            next = seq + 1;
            read += 1;
        }
        assert_eq!(read, 300 - 11 - 1);
    }

    #[test]
    fn numbers_of_acknowledged_batches_are_not_given_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        {
            let Recovered { mut buffer, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
            for seq in 0..10 {
                buffer.push(&batch(&mut table, seq, 5), &table);
            }
            // The newest ones were sent live and acknowledged; older ones wait for the backfill.
            buffer.acknowledge(&[(7, 9)]);
            buffer.push(&batch(&mut table, 10, 5), &table);
            buffer.acknowledge(&[(10, 10)]);
            buffer.flush_handle().flush().unwrap();
        }
        let Recovered { buffer, next_seq, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
        // 7 to 9 are known acknowledged; 10's acknowledgement was not logged yet (a resend is harmless).
        assert_eq!(buffer.next_at_or_after(7, 10), None);
        assert_eq!(buffer.newest(), Some(10));
        assert_eq!(next_seq, 11);
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        let mut written = Vec::new();
        {
            let Recovered { mut buffer, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
            for seq in 0..3 {
                let b = batch(&mut table, seq, 50);
                buffer.push(&b, &table);
                written.push(b);
            }
            buffer.flush_handle().flush().unwrap();
        }
        let segment = segment_path(&dir.path().join(DIR_NAME), 0);
        let len = std::fs::metadata(&segment).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 5).unwrap();
        let Recovered { mut buffer, next_seq, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
        assert_eq!(buffer.len(), 2);
        assert_eq!(buffer.get(1), Some(sorted(written[1].clone())));
        assert_eq!(next_seq, 2, "the torn batch was never sent, so its number is free");
        // New batches go after the cut, readable after another restart.
        let b = batch(&mut table, 2, 50);
        buffer.push(&b, &table);
        buffer.flush_handle().flush().unwrap();
        drop(buffer);
        let Recovered { mut buffer, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
        assert_eq!(buffer.get(2), Some(sorted(b)));
        assert_eq!(buffer.get(0), Some(sorted(written[0].clone())));
    }

    #[test]
    fn sequence_numbers_never_repeat_after_everything_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        {
            let Recovered { mut buffer, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
            for seq in 0..(MAX_SEGMENT_BATCHES as u64 + 3) {
                buffer.push(&batch(&mut table, seq, 4), &table);
                buffer.acknowledge(&[(seq, seq)]);
            }
            assert_eq!(buffer.len(), 0);
            assert!(buffer.segments.len() <= 1, "acknowledged segments are deleted");
        }
        let Recovered { buffer, next_seq, .. } = Buffer::open(dir.path(), 1 << 20, 10).unwrap();
        assert_eq!(next_seq, MAX_SEGMENT_BATCHES as u64 + 3);
        // Acknowledgements are logged with the next batch: only the last one's is missing.
        assert_eq!(buffer.len(), 1, "acknowledged batches are not resent");
        assert_eq!(buffer.newest(), Some(MAX_SEGMENT_BATCHES as u64 + 2));
    }

    #[test]
    fn over_budget_drops_the_oldest_segments_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        let max_bytes = 64 << 10;
        let Recovered { mut buffer, .. } = Buffer::open(dir.path(), max_bytes, 10).unwrap();
        let mut pushed = 0u64;
        for seq in 0..400 {
            buffer.push(&batch(&mut table, seq, 100), &table);
            pushed += 1;
            assert!(buffer.stored_bytes() <= max_bytes, "{} bytes stored", buffer.stored_bytes());
        }
        let stats = buffer.stats();
        let dropped = stats.dropped_batches.load(Ordering::Relaxed);
        assert!(dropped > 0);
        assert_eq!(pushed, dropped + buffer.len() as u64, "every batch is held or counted as dropped");
        assert_eq!(stats.dropped_samples.load(Ordering::Relaxed), dropped * 100);
        // Only the oldest went: what is held is one unbroken run up to the newest.
        assert_eq!(buffer.next_at_or_after(0, 400), Some(dropped));
        assert_eq!(buffer.newest(), Some(399));
        assert_eq!(stats.bytes.load(Ordering::Relaxed), buffer.stored_bytes());
        let mut back = buffer.get(dropped).unwrap();
        back.samples.truncate(1);
        assert_eq!(back.samples, vec![(0, dropped as f64 / 10.0)]);
    }

    #[test]
    fn steady_values_pack_to_a_few_bytes_per_sample() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SeriesTable::new();
        let Recovered { mut buffer, .. } = Buffer::open(dir.path(), 1 << 30, 10).unwrap();
        let mut samples = 0;
        for seq in 0..300 {
            let b = batch(&mut table, seq, 500);
            samples += b.samples.len();
            buffer.push(&b, &table);
        }
        let per_sample = buffer.stored_bytes() as f64 / samples as f64;
        assert!(per_sample < 3.0, "{per_sample:.2} bytes per sample");
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert!(next_record(&[], 0).is_none());
        assert!(next_record(&[1, 0, 0, 0, 0, 0, 0, 0, 7], 0).is_none(), "bad CRC");
        assert!(next_record(&[255, 255, 255, 255, 0, 0, 0, 0], 0).is_none(), "too long");
        assert!(parse_record(&[RECORD_BATCH, 1]).is_none());
        assert!(parse_record(&[9]).is_none());
        assert_eq!(decode_labels(&[5, b'a']), None);
    }
}
