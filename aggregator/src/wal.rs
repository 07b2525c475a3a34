//! The aggregator's write-ahead log: every batch is in it, fsync'd, before
//! the agent gets its acknowledgement, and it is replayed on start.
//!
//! Layout: `<state_dir>/wal/NNNNNNNN.seg`, segments of up to
//! [`SEGMENT_BYTES`]; each start of the process opens a new segment. A record
//! is `[u32 LE payload length][u32 LE CRC-32 of payload][payload]`. Payloads
//! are a kind byte and varint fields:
//!
//! - `1` series: store ref, label count, then name/value pairs.
//! - `5` samples: agent id, batch sequence, timestamp, count, then per sample
//!   the store ref as the zigzag difference to the previous sample's ref, and
//!   the value as one varint whose low 2 bits say how: `0` an integer
//!   (zigzag), `1` a decimal `m / 10^d` that converts back to the same bits
//!   (zigzag `m` and 4 bits of `d`), `2` the IEEE-754 bits follow (8 bytes).
//!   Counters and gauges of whole units or a few decimals take 1-4 bytes
//!   instead of 8; anything else keeps its exact bits.
//! - `2` samples, the format before `5` (per sample a ref and the 8 bytes of
//!   the value): still read, no longer written.
//! - `3` head chunk (checkpoints only): store ref, sample count, then the
//!   bytes of one compressed chunk (`store/chunk.rs`'s format, about a
//!   quarter of the size of plain samples).
//! - `4` sequence ranges (checkpoints only): agent id, count, then per range
//!   its first sequence and its length minus one.
//!
//! Checkpoints: after the store cuts head data into a block, the writer is
//! rolled to a new segment N and `wal/checkpoint.NNNNNNNN/` is written (via a
//! `.tmp` directory and a rename) with what segments below N held that is
//! still needed: every series record, the head's samples and the per-agent
//! sequence ranges. Then segments below N (and below the lowest
//! [`SegmentHolds`] hold) and older checkpoints are deleted. Replay reads
//! the latest checkpoint, then the segments numbered N and above.
//!
//! One writer thread appends what ingest sessions submit and syncs once for
//! everything that queued up meanwhile (group commit), then completes each
//! submission. A torn or corrupt record at the end of a segment is cut off
//! with a warning on replay; the process always starts.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_common::metric::Labels;
use herd_common::varint::{self, put as put_varint, unzigzag, zigzag};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest record replay accepts; anything claiming more is corruption.
pub(crate) const MAX_RECORD_BYTES: usize = 64 << 20;
pub(crate) const HEADER_BYTES: usize = 8;
const KIND_SERIES: u8 = 1;
const KIND_SAMPLES: u8 = 2;
const KIND_HEAD_CHUNK: u8 = 3;
const KIND_SEQ_RANGES: u8 = 4;
const KIND_SAMPLES_COMPACT: u8 = 5;
/// Value tags of `KIND_SAMPLES_COMPACT` (the low 2 bits of the value varint).
const VALUE_INTEGER: u64 = 0;
const VALUE_DECIMAL: u64 = 1;
const VALUE_BITS: u64 = 2;
/// Decimals up to this many digits after the point are stored as integers.
const MAX_DECIMALS: usize = 9;
const POW10: [f64; MAX_DECIMALS + 1] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Integers beyond this do not all convert back exactly.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
const CHECKPOINT_PREFIX: &str = "checkpoint.";
/// Submissions waiting for the writer before submitters wait.
const QUEUE_DEPTH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot create the WAL directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read the WAL directory {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("WAL segment {path}: {source}")]
    Segment { path: PathBuf, source: std::io::Error },
    #[error("WAL write failed: {0} (is the disk full?); batches stay unacknowledged and agents will resend")]
    Write(String),
    #[error("the WAL writer has stopped")]
    Stopped,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum WalRecord {
    Series {
        series_ref: u64,
        labels: Labels,
    },
    Samples {
        agent: String,
        seq: u64,
        timestamp_ms: i64,
        samples: Vec<(u64, f64)>,
    },
    /// A compressed chunk of one series' head samples, from a checkpoint.
    HeadChunk {
        series_ref: u64,
        count: u16,
        bytes: Vec<u8>,
    },
    /// Inclusive ranges of batch sequences an agent had stored, from a checkpoint.
    SeqRanges {
        agent: String,
        ranges: Vec<(u64, u64)>,
    },
}

/// Appends one framed series record to `out`.
pub fn encode_series(series_ref: u64, labels: &Labels, out: &mut Vec<u8>) {
    frame(out, |payload| {
        payload.push(KIND_SERIES);
        put_varint(series_ref, payload);
        put_varint(labels.len() as u64, payload);
        for (name, value) in labels.iter() {
            put_bytes(name.as_bytes(), payload);
            put_bytes(value.as_bytes(), payload);
        }
    });
}

/// Appends one framed samples record to `out`.
pub fn encode_samples(agent: &str, seq: u64, timestamp_ms: i64, samples: &[(u64, f64)], out: &mut Vec<u8>) {
    frame(out, |payload| {
        payload.push(KIND_SAMPLES_COMPACT);
        put_bytes(agent.as_bytes(), payload);
        put_varint(seq, payload);
        put_varint(zigzag(timestamp_ms), payload);
        put_varint(samples.len() as u64, payload);
        let mut previous_ref = 0u64;
        for &(series_ref, value) in samples {
            put_varint(zigzag(series_ref.wrapping_sub(previous_ref) as i64), payload);
            previous_ref = series_ref;
            put_value(value, payload);
        }
    });
}

/// `value` as an integer that converts back to the same bits (not -0.0).
fn exact_integer(value: f64) -> Option<i64> {
    if !value.is_finite() || value.fract() != 0.0 || value.abs() >= MAX_EXACT_INTEGER {
        return None;
    }
    let integer = value as i64;
    ((integer as f64).to_bits() == value.to_bits()).then_some(integer)
}

/// `value` as `m / 10^d` (1 <= d <= MAX_DECIMALS) converting back to the same bits.
fn exact_decimal(value: f64) -> Option<(i64, usize)> {
    if !value.is_finite() || value == 0.0 {
        return None;
    }
    (1..=MAX_DECIMALS).find_map(|digits| {
        let scaled = value * POW10[digits];
        if scaled.fract() != 0.0 || scaled.abs() >= MAX_EXACT_INTEGER {
            return None;
        }
        let mantissa = scaled as i64;
        ((mantissa as f64 / POW10[digits]).to_bits() == value.to_bits()).then_some((mantissa, digits))
    })
}

fn put_value(value: f64, out: &mut Vec<u8>) {
    if let Some(integer) = exact_integer(value) {
        put_varint(zigzag(integer) << 2 | VALUE_INTEGER, out);
    } else if let Some((mantissa, digits)) = exact_decimal(value) {
        put_varint((zigzag(mantissa) << 4 | digits as u64) << 2 | VALUE_DECIMAL, out);
    } else {
        put_varint(VALUE_BITS, out);
        out.extend_from_slice(&value.to_bits().to_le_bytes());
    }
}

/// Appends one framed head-chunk record (checkpoints) to `out`.
pub fn encode_head_chunk(series_ref: u64, count: u16, chunk: &[u8], out: &mut Vec<u8>) {
    frame(out, |payload| {
        payload.push(KIND_HEAD_CHUNK);
        put_varint(series_ref, payload);
        put_varint(u64::from(count), payload);
        put_bytes(chunk, payload);
    });
}

/// Appends one framed sequence-ranges record (checkpoints) to `out`.
pub fn encode_seq_ranges(agent: &str, ranges: &[(u64, u64)], out: &mut Vec<u8>) {
    frame(out, |payload| {
        payload.push(KIND_SEQ_RANGES);
        put_bytes(agent.as_bytes(), payload);
        put_varint(ranges.len() as u64, payload);
        for &(start, end) in ranges {
            put_varint(start, payload);
            put_varint(end.saturating_sub(start), payload);
        }
    });
}

fn frame(out: &mut Vec<u8>, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    write_payload(out);
    let payload_len = (out.len() - start - HEADER_BYTES) as u32;
    let crc = crc32fast::hash(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Cursor over a payload; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        varint::get(self.bytes, &mut self.pos)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let slice = self.bytes.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(slice)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn f64(&mut self) -> Option<f64> {
        let chunk = self.bytes.get(self.pos..self.pos.checked_add(8)?)?;
        self.pos += 8;
        Some(f64::from_bits(u64::from_le_bytes(chunk.try_into().ok()?)))
    }

    /// A value written by `put_value`.
    fn value(&mut self) -> Option<f64> {
        let code = self.varint()?;
        match code & 3 {
            VALUE_INTEGER => Some(unzigzag(code >> 2) as f64),
            VALUE_DECIMAL => {
                let digits = ((code >> 2) & 15) as usize;
                let scale = *POW10.get(digits).filter(|_| digits > 0)?;
                Some(unzigzag(code >> 6) as f64 / scale)
            }
            VALUE_BITS if code == VALUE_BITS => self.f64(),
            _ => None,
        }
    }
}

/// Decodes one record's payload (after its header and CRC check).
pub(crate) fn decode(payload: &[u8]) -> Option<WalRecord> {
    let mut r = Reader { bytes: payload, pos: 0 };
    let record = match r.u8()? {
        KIND_SERIES => {
            let series_ref = r.varint()?;
            let count = r.varint()?;
            let mut pairs = Vec::new();
            for _ in 0..count {
                pairs.push((r.string()?, r.string()?));
            }
            WalRecord::Series { series_ref, labels: Labels::from_sorted(pairs).ok()? }
        }
        KIND_SAMPLES => {
            let agent = r.string()?;
            let seq = r.varint()?;
            let timestamp_ms = unzigzag(r.varint()?);
            let count = usize::try_from(r.varint()?).ok()?;
            // Each sample takes at least 9 bytes: never reserve beyond what is there.
            let mut samples = Vec::with_capacity(count.min(payload.len() / 9));
            for _ in 0..count {
                samples.push((r.varint()?, r.f64()?));
            }
            WalRecord::Samples { agent, seq, timestamp_ms, samples }
        }
        KIND_SAMPLES_COMPACT => {
            let agent = r.string()?;
            let seq = r.varint()?;
            let timestamp_ms = unzigzag(r.varint()?);
            let count = usize::try_from(r.varint()?).ok()?;
            // Each sample takes at least 2 bytes: never reserve beyond what is there.
            let mut samples = Vec::with_capacity(count.min(payload.len() / 2));
            let mut series_ref = 0u64;
            for _ in 0..count {
                series_ref = series_ref.wrapping_add(unzigzag(r.varint()?) as u64);
                samples.push((series_ref, r.value()?));
            }
            WalRecord::Samples { agent, seq, timestamp_ms, samples }
        }
        KIND_HEAD_CHUNK => {
            let series_ref = r.varint()?;
            let count = u16::try_from(r.varint()?).ok()?;
            let bytes = r.bytes()?.to_vec();
            WalRecord::HeadChunk { series_ref, count, bytes }
        }
        KIND_SEQ_RANGES => {
            let agent = r.string()?;
            let count = usize::try_from(r.varint()?).ok()?;
            let mut ranges = Vec::with_capacity(count.min(payload.len() / 2));
            for _ in 0..count {
                let start = r.varint()?;
                ranges.push((start, start.checked_add(r.varint()?)?));
            }
            WalRecord::SeqRanges { agent, ranges }
        }
        _ => return None,
    };
    (r.pos == payload.len()).then_some(record)
}

/// What replay found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// Records cut off because they were torn or corrupt.
    pub truncated_segments: u64,
}

/// The segment files in `dir`, by number.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let entries = fs::read_dir(dir).map_err(|source| WalError::ReadDir { path: dir.to_owned(), source })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The complete checkpoints in `dir` (`checkpoint.NNNNNNNN`), by number.
pub fn checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let entries = fs::read_dir(dir).map_err(|source| WalError::ReadDir { path: dir.to_owned(), source })?;
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let number = path.file_name()?.to_str()?.strip_prefix(CHECKPOINT_PREFIX)?.parse::<u64>().ok()?;
            Some((number, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Replays the latest checkpoint in `dir`, then every segment numbered at or
/// above it, in order, calling `apply` per record. Torn or corrupt records
/// end their segment's replay and are cut off. Half-written checkpoints are
/// deleted.
pub fn replay(dir: &Path, mut apply: impl FnMut(WalRecord)) -> Result<ReplayStats, WalError> {
    fs::create_dir_all(dir).map_err(|source| WalError::CreateDir { path: dir.to_owned(), source })?;
    for entry in fs::read_dir(dir).map_err(|source| WalError::ReadDir { path: dir.to_owned(), source })?.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(CHECKPOINT_PREFIX) && name.ends_with(".tmp") {
            warn!(checkpoint = %path.display(), "deleting a half-written WAL checkpoint");
            let _ = fs::remove_dir_all(&path);
        }
    }
    let mut stats = ReplayStats::default();
    let mut first_segment = 0;
    if let Some((number, checkpoint)) = checkpoints(dir)?.pop() {
        for (_, path) in segments(&checkpoint)? {
            replay_segment(&path, &mut apply, &mut stats)?;
        }
        first_segment = number;
    }
    for (number, path) in segments(dir)? {
        if number >= first_segment {
            replay_segment(&path, &mut apply, &mut stats)?;
        }
    }
    Ok(stats)
}

fn replay_segment(path: &Path, apply: &mut impl FnMut(WalRecord), stats: &mut ReplayStats) -> Result<(), WalError> {
    let err = |source| WalError::Segment { path: path.to_owned(), source };
    let file = File::open(path).map_err(err)?;
    let length = file.metadata().map_err(err)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut payload = Vec::new();
    let problem = loop {
        let mut header = [0u8; HEADER_BYTES];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break (offset < length).then_some("torn record header");
            }
            Err(e) => return Err(err(e)),
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD_BYTES || offset + (HEADER_BYTES + len) as u64 > length {
            break Some("torn or oversized record");
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload).map_err(err)?;
        if crc32fast::hash(&payload) != crc {
            break Some("checksum mismatch");
        }
        let Some(record) = decode(&payload) else { break Some("undecodable record") };
        apply(record);
        stats.records += 1;
        offset += (HEADER_BYTES + len) as u64;
    };
    stats.segments += 1;
    stats.bytes += offset;
    if let Some(problem) = problem {
        warn!(segment = %path.display(), offset, dropped_bytes = length - offset, problem, "cutting off the end of a WAL segment");
        let file = OpenOptions::new().write(true).open(path).map_err(err)?;
        file.set_len(offset).map_err(err)?;
        file.sync_all().map_err(err)?;
        stats.truncated_segments += 1;
    }
    Ok(())
}

/// Writes a checkpoint's records; see [`write_checkpoint`].
pub struct CheckpointWriter {
    file: std::io::BufWriter<File>,
    buffer: Vec<u8>,
    bytes: u64,
    error: Option<std::io::Error>,
}

impl CheckpointWriter {
    /// Adds the records `encode` appends (with the `encode_*` functions).
    pub fn record(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.buffer.clear();
        encode(&mut self.buffer);
        self.bytes += self.buffer.len() as u64;
        if self.error.is_none()
            && let Err(e) = self.file.write_all(&self.buffer)
        {
            self.error = Some(e);
        }
    }
}

/// Writes `wal/checkpoint.NNNNNNNN` (`number` = the first segment replay
/// reads after it) through a `.tmp` directory, synced and renamed; returns
/// its size in bytes.
pub fn write_checkpoint(dir: &Path, number: u64, fill: impl FnOnce(&mut CheckpointWriter)) -> Result<u64, WalError> {
    let name = format!("{CHECKPOINT_PREFIX}{number:08}");
    let tmp = dir.join(format!("{name}.tmp"));
    let err = |source| WalError::Segment { path: tmp.clone(), source };
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(err)?;
    }
    fs::create_dir_all(&tmp).map_err(err)?;
    let file = File::create(tmp.join(format!("{:08}.seg", 0))).map_err(err)?;
    let mut writer = CheckpointWriter {
        file: std::io::BufWriter::with_capacity(1 << 20, file),
        buffer: Vec::new(),
        bytes: 0,
        error: None,
    };
    fill(&mut writer);
    if let Some(e) = writer.error {
        return Err(err(e));
    }
    let file = writer.file.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)?;
    File::open(&tmp).and_then(|d| d.sync_all()).map_err(err)?;
    let target = dir.join(&name);
    if target.exists() {
        fs::remove_dir_all(&target).map_err(err)?;
    }
    fs::rename(&tmp, &target).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(writer.bytes)
}

/// Deletes the checkpoints older than checkpoint `number` and the segments
/// below it, except those at or above the lowest hold. Returns the bytes freed.
pub fn truncate(dir: &Path, number: u64, holds: &SegmentHolds) -> Result<u64, WalError> {
    let limit = holds.lowest().map_or(number, |held| held.min(number));
    let mut freed = 0;
    for (segment, path) in segments(dir)? {
        if segment >= limit {
            break;
        }
        let err = |source| WalError::Segment { path: path.clone(), source };
        freed += fs::metadata(&path).map_err(err)?.len();
        fs::remove_file(&path).map_err(err)?;
    }
    for (checkpoint, path) in checkpoints(dir)? {
        if checkpoint < number {
            freed += dir_bytes(&path);
            fs::remove_dir_all(&path).map_err(|source| WalError::Segment { path: path.clone(), source })?;
        }
    }
    Ok(freed)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

/// Segments that readers of the WAL other than replay (remote-write queues)
/// still need: truncation never deletes a segment numbered at or above the
/// lowest hold.
#[derive(Debug, Default)]
pub struct SegmentHolds {
    holds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl SegmentHolds {
    /// Sets (or moves) the lowest segment `holder` still needs.
    pub fn set(&self, holder: &str, segment: u64) {
        self.holds.lock().expect("holds lock").insert(holder.to_owned(), segment);
    }

    pub fn release(&self, holder: &str) {
        self.holds.lock().expect("holds lock").remove(holder);
    }

    /// The lowest segment any holder needs, if any holds.
    pub fn lowest(&self) -> Option<u64> {
        self.holds.lock().expect("holds lock").values().min().copied()
    }
}

/// WAL figures for self-monitoring.
#[derive(Debug, Default)]
pub struct WalStats {
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub records_bytes_written: AtomicU64,
}

struct Submission {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

enum Command {
    Append(Submission),
    /// Start a new segment unless the current one is empty; answers the
    /// number of the segment later appends go to.
    Roll(oneshot::Sender<Result<u64, String>>),
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Command>,
    dir: PathBuf,
    pub stats: Arc<WalStats>,
    pub holds: Arc<SegmentHolds>,
}

impl Wal {
    /// Starts a writer on a new segment in `dir`. Run [`replay`] first.
    pub fn start(dir: &Path, existing_bytes: u64) -> Result<Self, WalError> {
        fs::create_dir_all(dir).map_err(|source| WalError::CreateDir { path: dir.to_owned(), source })?;
        let next = segments(dir)?.last().map_or(0, |(n, _)| n + 1);
        let stats = Arc::new(WalStats::default());
        stats.bytes.store(existing_bytes, Ordering::Relaxed);
        let mut writer =
            Writer { dir: dir.to_owned(), number: next, file: None, written: 0, stats: Arc::clone(&stats) };
        writer.open_segment().map_err(|source| WalError::Segment { path: writer.path(), source })?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("herd-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| WalError::Segment { path: dir.to_owned(), source })?;
        info!(dir = %dir.display(), segment = next, "WAL writer started");
        Ok(Self { tx, dir: dir.to_owned(), stats, holds: Arc::new(SegmentHolds::default()) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every later append go to a new segment (unless the current one
    /// is still empty); returns that segment's number. Everything appended
    /// before is in lower-numbered segments.
    pub async fn roll(&self) -> Result<u64, WalError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Command::Roll(done)).await.map_err(|_| WalError::Stopped)?;
        wait.await.map_err(|_| WalError::Stopped)?.map_err(WalError::Write)
    }

    /// Appends framed records and waits until they are synced to disk.
    pub async fn append(&self, bytes: Vec<u8>) -> Result<(), WalError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Command::Append(Submission { bytes, done })).await.map_err(|_| WalError::Stopped)?;
        wait.await.map_err(|_| WalError::Stopped)?.map_err(WalError::Write)
    }
}

struct Writer {
    dir: PathBuf,
    number: u64,
    file: Option<File>,
    written: u64,
    stats: Arc<WalStats>,
}

impl Writer {
    fn path(&self) -> PathBuf {
        self.dir.join(format!("{:08}.seg", self.number))
    }

    fn open_segment(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).open(self.path())?;
        self.written = file.metadata()?.len();
        self.file = Some(file);
        // Make the new file's directory entry durable too.
        File::open(&self.dir)?.sync_all()
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group: Vec<Submission> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut roll = None;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(submission) => group.push(submission),
                    Command::Roll(reply) => {
                        roll = Some(reply);
                        break;
                    }
                }
                if group.len() >= 256 {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !group.is_empty() {
                self.complete_group(&mut group);
            }
            if let Some(reply) = roll {
                let result = if self.written == 0 {
                    Ok(self.number)
                } else {
                    self.number += 1;
                    self.open_segment().map(|()| self.number).map_err(|e| e.to_string())
                };
                let _ = reply.send(result);
            }
        }
    }

    fn complete_group(&mut self, group: &mut Vec<Submission>) {
        let result = self.write_group(group).map_err(|e| e.to_string());
        if let Err(error) = &result {
            warn!(%error, "WAL write failed");
        }
        for submission in group.drain(..) {
            let _ = submission.done.send(result.clone());
        }
    }

    fn write_group(&mut self, group: &[Submission]) -> std::io::Result<()> {
        if self.written >= SEGMENT_BYTES {
            self.number += 1;
            self.open_segment()?;
        }
        let file = self.file.as_mut().expect("a segment is open after start");
        let start = file.seek(SeekFrom::End(0))?;
        let mut written = 0u64;
        let result = (|| {
            for submission in group {
                file.write_all(&submission.bytes)?;
                written += submission.bytes.len() as u64;
            }
            file.sync_data()
        })();
        if let Err(err) = result {
            // Leave no partial group behind: replay would cut it anyway.
            let _ = file.set_len(start);
            return Err(err);
        }
        self.written += written;
        self.stats.bytes.fetch_add(written, Ordering::Relaxed);
        self.stats.records_bytes_written.fetch_add(written, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Where [`read_segment_from`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRead {
    /// Byte offset after the last whole record read.
    pub offset: u64,
    /// A corrupt record stopped the read (nothing after it can be read).
    pub corrupt: bool,
}

/// Reads up to `max_records` whole records of the segment (or checkpoint
/// file) at `path` from byte `offset`, for readers that tail the WAL while
/// it is written (remote-write queues). `apply` gets each record and the
/// offset after it. An incomplete record at the end (still being written)
/// ends the read without error; the file is never modified.
pub fn read_segment_from(
    path: &Path,
    offset: u64,
    max_records: usize,
    mut apply: impl FnMut(WalRecord, u64),
) -> Result<SegmentRead, WalError> {
    let err = |source| WalError::Segment { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(err)?;
    let length = file.metadata().map_err(err)?.len();
    if offset >= length {
        return Ok(SegmentRead { offset, corrupt: false });
    }
    file.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = offset;
    let mut payload = Vec::new();
    for _ in 0..max_records {
        let mut header = [0u8; HEADER_BYTES];
        if offset + HEADER_BYTES as u64 > length {
            break;
        }
        reader.read_exact(&mut header).map_err(err)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD_BYTES {
            return Ok(SegmentRead { offset, corrupt: true });
        }
        if offset + (HEADER_BYTES + len) as u64 > length {
            break;
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload).map_err(err)?;
        let Some(record) = (crc32fast::hash(&payload) == crc).then(|| decode(&payload)).flatten() else {
            return Ok(SegmentRead { offset, corrupt: true });
        };
        offset += (HEADER_BYTES + len) as u64;
        apply(record, offset);
    }
    Ok(SegmentRead { offset, corrupt: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels() -> Labels {
        Labels::from_pairs([("__name__", "up"), ("job", "node")])
    }

    fn replay_all(dir: &Path) -> (Vec<WalRecord>, ReplayStats) {
        let mut records = Vec::new();
        let stats = replay(dir, |r| records.push(r)).unwrap();
        (records, stats)
    }

    #[tokio::test]
    async fn appended_records_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0).unwrap();
        let mut bytes = Vec::new();
        encode_series(7, &labels(), &mut bytes);
        encode_samples("web-1", 42, -5, &[(7, 1.5), (7, f64::NAN)], &mut bytes);
        wal.append(bytes).await.unwrap();
        let mut more = Vec::new();
        encode_samples("web-1", 43, 1_700_000_000_000, &[], &mut more);
        wal.append(more).await.unwrap();
        let (records, stats) = replay_all(dir.path());
        assert_eq!(stats.records, 3);
        assert_eq!(records[0], WalRecord::Series { series_ref: 7, labels: labels() });
        let WalRecord::Samples { agent, seq, timestamp_ms, samples } = &records[1] else { panic!() };
        assert_eq!((agent.as_str(), *seq, *timestamp_ms), ("web-1", 42, -5));
        assert_eq!(samples[0], (7, 1.5));
        assert!(samples[1].1.is_nan());
        assert_eq!(wal.stats.syncs.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_torn_or_corrupt_tail_is_cut_off_and_later_writes_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::start(dir.path(), 0).unwrap();
            for seq in 0..3 {
                let mut bytes = Vec::new();
                encode_samples("a", seq, 0, &[(1, 1.0)], &mut bytes);
                wal.append(bytes).await.unwrap();
            }
        }
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let full = fs::read(&path).unwrap();
        // Flip a byte in the last record's payload: a checksum mismatch.
        let mut corrupt = full.clone();
        *corrupt.last_mut().unwrap() ^= 0xff;
        fs::write(&path, &corrupt).unwrap();
        let (records, stats) = replay_all(dir.path());
        assert_eq!((records.len(), stats.truncated_segments), (2, 1));
        // A torn write: half a header.
        let mut torn = fs::read(&path).unwrap();
        torn.extend_from_slice(&[9, 9, 9]);
        fs::write(&path, &torn).unwrap();
        let (records, stats) = replay_all(dir.path());
        assert_eq!((records.len(), stats.truncated_segments), (2, 1));
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, torn.len() - 3, "cut back to the last good record");
        // After repair, a new writer's records replay after the old ones.
        let wal = Wal::start(dir.path(), stats.bytes).unwrap();
        let mut bytes = Vec::new();
        encode_samples("a", 9, 0, &[], &mut bytes);
        wal.append(bytes).await.unwrap();
        let (records, _) = replay_all(dir.path());
        assert_eq!(records.len(), 3);
    }

    #[tokio::test]
    async fn a_checkpoint_replaces_the_segments_below_it_except_held_ones() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0).unwrap();
        let append = |seq: u64| {
            let mut bytes = Vec::new();
            encode_samples("a", seq, seq as i64, &[(1, seq as f64)], &mut bytes);
            wal.append(bytes)
        };
        let mut series = Vec::new();
        encode_series(1, &labels(), &mut series);
        wal.append(series).await.unwrap();
        append(0).await.unwrap();
        let first = wal.roll().await.unwrap();
        assert_eq!(wal.roll().await.unwrap(), first, "an empty segment is not rolled again");
        append(1).await.unwrap();
        let second = wal.roll().await.unwrap();
        append(2).await.unwrap();
        assert_eq!((first, second), (1, 2));
        // A reader still needs segment 1: it survives the checkpoint at 2.
        wal.holds.set("remote", 1);
        write_checkpoint(dir.path(), second, |w| {
            w.record(|b| encode_series(1, &labels(), b));
            w.record(|b| encode_head_chunk(1, 2, &[1, 2, 3], b));
            w.record(|b| encode_seq_ranges("a", &[(0, 1)], b));
        })
        .unwrap();
        truncate(dir.path(), second, &wal.holds).unwrap();
        let numbers: Vec<u64> = segments(dir.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(numbers, vec![1, 2]);
        wal.holds.release("remote");
        truncate(dir.path(), second, &wal.holds).unwrap();
        let numbers: Vec<u64> = segments(dir.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(numbers, vec![2]);
        fs::create_dir(dir.path().join("checkpoint.00000009.tmp")).unwrap();
        let (records, _) = replay_all(dir.path());
        assert_eq!(records.len(), 4, "{records:?}");
        assert_eq!(records[1], WalRecord::HeadChunk { series_ref: 1, count: 2, bytes: vec![1, 2, 3] });
        assert_eq!(records[2], WalRecord::SeqRanges { agent: "a".into(), ranges: vec![(0, 1)] });
        assert!(matches!(&records[3], WalRecord::Samples { seq: 2, .. }));
        assert!(!dir.path().join("checkpoint.00000009.tmp").exists());
        assert_eq!(checkpoints(dir.path()).unwrap().len(), 1);
    }

    /// Frames a samples record in the format before `KIND_SAMPLES_COMPACT`.
    fn encode_samples_v1(agent: &str, seq: u64, timestamp_ms: i64, samples: &[(u64, f64)], out: &mut Vec<u8>) {
        frame(out, |payload| {
            payload.push(KIND_SAMPLES);
            put_bytes(agent.as_bytes(), payload);
            put_varint(seq, payload);
            put_varint(zigzag(timestamp_ms), payload);
            put_varint(samples.len() as u64, payload);
            for &(series_ref, value) in samples {
                put_varint(series_ref, payload);
                payload.extend_from_slice(&value.to_bits().to_le_bytes());
            }
        });
    }

    fn decoded_samples(bytes: &[u8]) -> Vec<(u64, u64)> {
        let Some(WalRecord::Samples { samples, .. }) = decode(&bytes[HEADER_BYTES..]) else { panic!("not samples") };
        samples.iter().map(|&(r, v)| (r, v.to_bits())).collect()
    }

    proptest::proptest! {
        #[test]
        fn sample_values_round_trip_bit_exactly(samples in proptest::collection::vec((any::<u64>(), value_strategy()), 0..200)) {
            let mut bytes = Vec::new();
            encode_samples("agent", 1, 2, &samples, &mut bytes);
            let expected: Vec<(u64, u64)> = samples.iter().map(|&(r, v)| (r, v.to_bits())).collect();
            prop_assert_eq!(decoded_samples(&bytes), expected);
        }
    }

    fn value_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            any::<i64>().prop_map(|i| (i >> 10) as f64),
            (any::<i32>(), 0i32..12).prop_map(|(m, d)| f64::from(m) / 10f64.powi(d)),
            Just(-0.0),
            Just(herd_common::metric::stale_nan()),
            Just(f64::INFINITY),
        ]
    }

    #[test]
    fn samples_of_whole_units_and_decimals_take_a_few_bytes_and_old_records_still_read() {
        // A batch as an agent sends it: counters, gauges with two decimals, constants.
        let samples: Vec<(u64, f64)> = (0..1000u64)
            .map(|i| {
                let value = match i % 4 {
                    0 => 123_456_789.0 + i as f64,
                    1 => (i % 100) as f64 * 0.25,
                    2 => i as f64 / 100.0,
                    _ => 1.0,
                };
                (1000 + i, value)
            })
            .collect();
        let mut compact = Vec::new();
        encode_samples("agent", 1, 1_700_000_000_000, &samples, &mut compact);
        let mut old = Vec::new();
        encode_samples_v1("agent", 1, 1_700_000_000_000, &samples, &mut old);
        let per_sample = compact.len() as f64 / samples.len() as f64;
        assert!(per_sample < 4.5, "{per_sample} bytes per sample");
        assert!(old.len() > 2 * compact.len(), "{} vs {}", old.len(), compact.len());
        assert_eq!(decoded_samples(&compact), decoded_samples(&old));
    }

    #[test]
    fn decoding_garbage_never_panics() {
        for len in 0..64u8 {
            let garbage: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37).wrapping_add(len)).collect();
            let _ = decode(&garbage);
            let mut samples = vec![KIND_SAMPLES, 1, b'a', 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
            samples.extend_from_slice(&garbage);
            let _ = decode(&samples);
            for kind in [KIND_SERIES, KIND_HEAD_CHUNK, KIND_SEQ_RANGES, KIND_SAMPLES_COMPACT] {
                let mut record = vec![kind];
                record.extend_from_slice(&garbage);
                let _ = decode(&record);
            }
        }
    }
}
