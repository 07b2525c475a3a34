//! Immutable on-disk blocks: one directory per time range holding
//! - `chunks`: zstd frames of about [`FRAME_BYTES`] each, holding the column
//!   chunks (`column.rs`) of consecutive series in label order, up to
//!   [`MAX_SAMPLES_PER_COLUMN_CHUNK`] samples per chunk;
//! - `index`: `HERDIDX2`, then one zstd frame holding the frame table
//!   (compressed and raw length of each frame), the series (labels, then
//!   per chunk its time range, sample count, frame and length; the offset in
//!   the frame follows from the order), then postings (label name → value →
//!   series ids); then a CRC-32 of everything before it;
//! - `meta.json`: id, time range, stats, compaction level and sources.
//!
//! zstd over byte-aligned columns is what makes blocks small: series
//! scraped together have the same timestamps and often the same steps, so
//! most of a frame is matches against the series before it.
//!
//! Blocks of the first format (`HERDIDX1`: Gorilla chunks stored
//! uncompressed, one after the other) are still read, and compaction
//! rewrites them in the current format.
//!
//! A block is written into `<id>.tmp`, fsync'd, then renamed, so a directory
//! without `.tmp` is always complete. The index and postings are held in
//! memory; frames are read from the file on demand and kept decompressed in
//! the store's [`FrameCache`]. No head or WAL logic here.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herd_common::metric::Labels;
use herd_common::varint::{self, put as put_varint, unzigzag, zigzag};
use serde::{Deserialize, Serialize};

use super::cache::FrameCache;
use super::chunk::ChunkIter;
use super::column::{self, ColumnIter, MAX_SAMPLES_PER_COLUMN_CHUNK};
use super::head::LabelPool;
use super::{LabelMatcher, MatchOp, Sample};

/// The first format: Gorilla chunks, uncompressed.
const INDEX_MAGIC_V1: &[u8; 8] = b"HERDIDX1";
const INDEX_MAGIC: &[u8; 8] = b"HERDIDX2";
/// A frame is closed once its raw bytes reach this: big enough for zstd to
/// find the series before, small enough that a cold read decompresses little.
pub const FRAME_BYTES: usize = 128 << 10;
const ZSTD_LEVEL: i32 = 3;
/// Largest index file `open` reads; anything bigger is not one of ours.
const MAX_INDEX_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("block {path}: {problem} (move the directory away to start without it)")]
    Corrupt { path: PathBuf, problem: String },
}

/// `meta.json`: the on-disk description of a block (a file format, not an API type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockMeta {
    pub id: String,
    /// Oldest and newest sample, inclusive.
    pub min_time: i64,
    pub max_time: i64,
    pub stats: BlockStats,
    pub compaction: Compaction,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockStats {
    pub series: u64,
    pub chunks: u64,
    pub samples: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compaction {
    /// 1 for a block cut from the head, +1 per compaction.
    pub level: u32,
    /// Ids of the blocks merged into this one (deleted after it is written).
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ChunkRef {
    min_t: i64,
    max_t: i64,
    /// In the frame's raw bytes (current format) or in the file (first format).
    offset: u64,
    len: u32,
    frame: u32,
    count: u16,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct FrameRef {
    offset: u64,
    len: u32,
    raw_len: u32,
}

struct BlockSeries {
    labels: Arc<Labels>,
    first_chunk: u32,
    chunk_count: u32,
}

/// How the `chunks` file is laid out.
enum Layout {
    /// The first format: Gorilla chunks at file offsets.
    Gorilla,
    /// zstd frames of column chunks.
    Frames(Vec<FrameRef>),
}

pub struct Block {
    pub dir: PathBuf,
    pub meta: BlockMeta,
    /// In label order: reads find a series by binary search (a map by
    /// labels would cost more memory per series and block than it saves).
    series: Vec<BlockSeries>,
    chunk_refs: Vec<ChunkRef>,
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
    chunks: File,
    layout: Layout,
    cache: Arc<FrameCache>,
    /// This block's part of the cache keys.
    number: u64,
}

impl Drop for Block {
    fn drop(&mut self) {
        self.cache.forget_block(self.number);
    }
}

/// Writes a block from series in label order, each with its samples in time
/// order, into `parent/<id>` (through `<id>.tmp`), and opens it. Returns
/// `None` when there was nothing to write.
pub fn write(
    parent: &Path,
    id: &str,
    series: impl Iterator<Item = (Arc<Labels>, Vec<Sample>)>,
    compaction: Compaction,
    pool: &LabelPool,
    cache: &Arc<FrameCache>,
) -> Result<Option<Block>, BlockError> {
    let tmp = parent.join(format!("{id}.tmp"));
    let io = |source| BlockError::Io { path: tmp.clone(), source };
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io)?;
    }
    fs::create_dir_all(&tmp).map_err(io)?;
    let mut chunks_file = BufWriter::with_capacity(1 << 20, File::create(tmp.join("chunks")).map_err(io)?);
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(io)?;
    let mut frames: Vec<FrameRef> = Vec::new();
    let mut frame = Vec::with_capacity(FRAME_BYTES + (64 << 10));
    let mut file_offset = 0u64;
    let mut flush = |frame: &mut Vec<u8>, frames: &mut Vec<FrameRef>| -> std::io::Result<()> {
        let compressed = compressor.compress(frame)?;
        chunks_file.write_all(&compressed)?;
        frames.push(FrameRef { offset: file_offset, len: compressed.len() as u32, raw_len: frame.len() as u32 });
        file_offset += compressed.len() as u64;
        frame.clear();
        Ok(())
    };
    let mut entries = Vec::new();
    let mut stats = BlockStats::default();
    let (mut min_time, mut max_time) = (i64::MAX, i64::MIN);
    let mut postings: std::collections::BTreeMap<(String, String), Vec<u32>> = Default::default();
    for (labels, samples) in series {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else { continue };
        min_time = min_time.min(first.timestamp_ms);
        max_time = max_time.max(last.timestamp_ms);
        let id = entries.len() as u32;
        let mut refs = Vec::with_capacity(samples.len().div_ceil(MAX_SAMPLES_PER_COLUMN_CHUNK));
        for piece in samples.chunks(MAX_SAMPLES_PER_COLUMN_CHUNK) {
            let start = frame.len();
            column::encode(piece, &mut frame);
            refs.push(ChunkRef {
                min_t: piece[0].timestamp_ms,
                max_t: piece[piece.len() - 1].timestamp_ms,
                offset: start as u64,
                len: (frame.len() - start) as u32,
                frame: frames.len() as u32,
                count: piece.len() as u16,
            });
            stats.chunks += 1;
            stats.samples += piece.len() as u64;
            if frame.len() >= FRAME_BYTES {
                flush(&mut frame, &mut frames).map_err(io)?;
            }
        }
        for (name, value) in labels.iter() {
            postings.entry((name.to_owned(), value.to_owned())).or_default().push(id);
        }
        entries.push((labels, refs));
    }
    if !frame.is_empty() {
        flush(&mut frame, &mut frames).map_err(io)?;
    }
    if entries.is_empty() {
        drop(chunks_file);
        fs::remove_dir_all(&tmp).map_err(io)?;
        return Ok(None);
    }
    stats.series = entries.len() as u64;
    let mut body = Vec::new();
    put_varint(frames.len() as u64, &mut body);
    for f in &frames {
        put_varint(u64::from(f.len), &mut body);
        put_varint(u64::from(f.raw_len), &mut body);
    }
    put_varint(entries.len() as u64, &mut body);
    let mut previous_frame = 0u32;
    for (labels, refs) in &entries {
        put_varint(labels.len() as u64, &mut body);
        for (name, value) in labels.iter() {
            put_bytes(name.as_bytes(), &mut body);
            put_bytes(value.as_bytes(), &mut body);
        }
        put_varint(refs.len() as u64, &mut body);
        let mut previous_max = 0i64;
        for r in refs {
            put_varint(zigzag(r.min_t.wrapping_sub(previous_max)), &mut body);
            put_varint(r.max_t.wrapping_sub(r.min_t) as u64, &mut body);
            put_varint(u64::from(r.count), &mut body);
            put_varint(u64::from(r.frame - previous_frame), &mut body);
            put_varint(u64::from(r.len), &mut body);
            previous_max = r.max_t;
            previous_frame = r.frame;
        }
    }
    put_postings(&postings, &mut body);
    let mut index = Vec::with_capacity(body.len() / 4);
    index.extend_from_slice(INDEX_MAGIC);
    index.extend_from_slice(&zstd::bulk::compress(&body, ZSTD_LEVEL).map_err(io)?);
    let crc = crc32fast::hash(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let chunks_file = chunks_file.into_inner().map_err(|e| io(e.into_error()))?;
    chunks_file.sync_all().map_err(io)?;
    write_synced(&tmp.join("index"), &index).map_err(io)?;
    stats.bytes = file_offset + index.len() as u64;
    let meta = BlockMeta { id: id.to_owned(), min_time, max_time, stats, compaction };
    let json = serde_json::to_vec_pretty(&meta).expect("block meta serializes");
    write_synced(&tmp.join("meta.json"), &json).map_err(io)?;
    File::open(&tmp).and_then(|d| d.sync_all()).map_err(io)?;
    let dir = parent.join(id);
    fs::rename(&tmp, &dir).map_err(io)?;
    File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
    open(&dir, pool, cache).map(Some)
}

fn put_postings(postings: &std::collections::BTreeMap<(String, String), Vec<u32>>, out: &mut Vec<u8>) {
    put_varint(postings.len() as u64, out);
    for ((name, value), ids) in postings {
        put_bytes(name.as_bytes(), out);
        put_bytes(value.as_bytes(), out);
        put_varint(ids.len() as u64, out);
        let mut previous = 0u32;
        for &id in ids {
            put_varint(u64::from(id - previous), out);
            previous = id;
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        varint::get(self.bytes, &mut self.pos)
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.varint()?).ok()?;
        let slice = self.bytes.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        String::from_utf8(slice.to_vec()).ok()
    }

    fn count(&mut self) -> Option<usize> {
        // Every entry takes at least a byte: a count beyond what is left is corrupt.
        let count = usize::try_from(self.varint()?).ok()?;
        (count <= self.bytes.len().saturating_sub(self.pos)).then_some(count)
    }
}

/// Opens a complete block directory.
pub fn open(dir: &Path, pool: &LabelPool, cache: &Arc<FrameCache>) -> Result<Block, BlockError> {
    let io = |source| BlockError::Io { path: dir.to_owned(), source };
    let corrupt = |problem: &str| BlockError::Corrupt { path: dir.to_owned(), problem: problem.to_owned() };
    let meta: BlockMeta = serde_json::from_slice(&fs::read(dir.join("meta.json")).map_err(io)?)
        .map_err(|e| corrupt(&format!("meta.json: {e}")))?;
    let index_len = fs::metadata(dir.join("index")).map_err(io)?.len();
    if index_len > MAX_INDEX_BYTES {
        return Err(corrupt("index too large"));
    }
    let index = fs::read(dir.join("index")).map_err(io)?;
    let body_len = index.len().checked_sub(4).ok_or_else(|| corrupt("index truncated"))?;
    let crc = u32::from_le_bytes(index[body_len..].try_into().expect("4 bytes"));
    if crc32fast::hash(&index[..body_len]) != crc {
        return Err(corrupt("index checksum mismatch"));
    }
    let chunks = File::open(dir.join("chunks")).map_err(io)?;
    let chunks_len = chunks.metadata().map_err(io)?.len();
    let magic = index.get(..INDEX_MAGIC.len()).unwrap_or_default();
    let parsed = if magic == INDEX_MAGIC {
        let mut body = Vec::new();
        zstd::stream::read::Decoder::new(&index[INDEX_MAGIC.len()..body_len])
            .and_then(|decoder| decoder.take(MAX_INDEX_BYTES).read_to_end(&mut body))
            .map_err(|e| corrupt(&format!("index does not decompress: {e}")))?;
        parse_index(&body, chunks_len, pool, true)
    } else if magic == INDEX_MAGIC_V1 {
        parse_index(&index[INDEX_MAGIC_V1.len()..body_len], chunks_len, pool, false)
    } else {
        return Err(corrupt("index is not in a format this version reads (HERDIDX1 or HERDIDX2)"));
    };
    let Parsed { series, chunk_refs, postings, layout } = parsed.ok_or_else(|| corrupt("index malformed"))?;
    if !series.windows(2).all(|w| w[0].labels < w[1].labels) {
        return Err(corrupt("series not in label order"));
    }
    Ok(Block {
        dir: dir.to_owned(),
        meta,
        series,
        chunk_refs,
        postings,
        chunks,
        layout,
        cache: Arc::clone(cache),
        number: cache.block_number(),
    })
}

type Postings = HashMap<String, HashMap<String, Vec<u32>>>;

struct Parsed {
    series: Vec<BlockSeries>,
    chunk_refs: Vec<ChunkRef>,
    postings: Postings,
    layout: Layout,
}

/// Parses an index body: the current format (`framed`) or the first one.
fn parse_index(bytes: &[u8], chunks_len: u64, pool: &LabelPool, framed: bool) -> Option<Parsed> {
    let mut r = Reader { bytes, pos: 0 };
    let mut frames = Vec::new();
    if framed {
        let frame_count = r.count()?;
        frames.reserve(frame_count);
        let mut offset = 0u64;
        for _ in 0..frame_count {
            let len = u32::try_from(r.varint()?).ok()?;
            let raw_len = u32::try_from(r.varint()?).ok()?;
            frames.push(FrameRef { offset, len, raw_len });
            offset = offset.checked_add(u64::from(len))?;
        }
        if offset > chunks_len {
            return None;
        }
    }
    let series_count = r.count()?;
    let mut series = Vec::with_capacity(series_count);
    let mut chunk_refs = Vec::new();
    // Where the next chunk starts in its frame (current format).
    let (mut frame, mut frame_offset) = (0u32, 0u64);
    for _ in 0..series_count {
        let label_count = r.count()?;
        let mut pairs = Vec::with_capacity(label_count);
        for _ in 0..label_count {
            pairs.push((r.string()?, r.string()?));
        }
        let labels = pool.intern(Labels::from_sorted(pairs).ok()?);
        let chunk_count = r.count()?;
        let first_chunk = u32::try_from(chunk_refs.len()).ok()?;
        let mut previous_max = 0i64;
        for _ in 0..chunk_count {
            let chunk = if framed {
                let min_t = previous_max.wrapping_add(unzigzag(r.varint()?));
                let max_t = min_t.wrapping_add(r.varint()? as i64);
                let count = u16::try_from(r.varint()?).ok()?;
                let frame_step = u32::try_from(r.varint()?).ok()?;
                let len = u32::try_from(r.varint()?).ok()?;
                if frame_step > 0 {
                    frame = frame.checked_add(frame_step)?;
                    frame_offset = 0;
                }
                let offset = frame_offset;
                frame_offset = frame_offset.checked_add(u64::from(len))?;
                if frame_offset > u64::from(frames.get(frame as usize)?.raw_len) {
                    return None;
                }
                previous_max = max_t;
                ChunkRef { min_t, max_t, offset, len, frame, count }
            } else {
                let min_t = unzigzag(r.varint()?);
                let max_t = min_t.wrapping_add(r.varint()? as i64);
                let count = u16::try_from(r.varint()?).ok()?;
                let offset = r.varint()?;
                let len = u32::try_from(r.varint()?).ok()?;
                if offset.checked_add(u64::from(len))? > chunks_len {
                    return None;
                }
                ChunkRef { min_t, max_t, offset, len, frame: 0, count }
            };
            chunk_refs.push(chunk);
        }
        series.push(BlockSeries { labels, first_chunk, chunk_count: u32::try_from(chunk_count).ok()? });
    }
    let pair_count = r.count()?;
    let mut postings: Postings = HashMap::new();
    for _ in 0..pair_count {
        let (name, value) = (r.string()?, r.string()?);
        let id_count = r.count()?;
        let mut ids = Vec::with_capacity(id_count);
        let mut id = 0u32;
        for _ in 0..id_count {
            id = id.checked_add(u32::try_from(r.varint()?).ok()?)?;
            if id as usize >= series.len() {
                return None;
            }
            ids.push(id);
        }
        postings.entry(name).or_default().insert(value, ids);
    }
    chunk_refs.shrink_to_fit();
    let layout = if framed { Layout::Frames(frames) } else { Layout::Gorilla };
    (r.pos == bytes.len()).then_some(Parsed { series, chunk_refs, postings, layout })
}

thread_local! {
    /// One decompression context per reading thread, reused.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decompress(compressed: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("set above").decompress(compressed, raw_len)
    })
}

impl Block {
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    pub fn overlaps(&self, min_t: i64, max_t: i64) -> bool {
        self.meta.min_time <= max_t && self.meta.max_time >= min_t
    }

    fn chunks_of(&self, series: &BlockSeries) -> &[ChunkRef] {
        let start = series.first_chunk as usize;
        self.chunk_refs.get(start..start + series.chunk_count as usize).unwrap_or_default()
    }

    /// Labels of the series satisfying every matcher that have a sample in `[min_t, max_t]`.
    pub fn select(&self, matchers: &[LabelMatcher], min_t: i64, max_t: i64) -> Vec<Arc<Labels>> {
        let mut candidates: Option<Vec<u32>> = None;
        for matcher in matchers {
            let list: Vec<u32> = match matcher.op {
                MatchOp::Equal if !matcher.value.is_empty() => {
                    self.postings.get(&matcher.name).and_then(|v| v.get(&matcher.value)).cloned().unwrap_or_default()
                }
                MatchOp::RegexMatch if !matcher.matches("") => {
                    let mut union: Vec<u32> = self
                        .postings
                        .get(&matcher.name)
                        .into_iter()
                        .flat_map(|v| v.iter())
                        .filter(|(value, _)| matcher.matches(value))
                        .flat_map(|(_, ids)| ids.iter().copied())
                        .collect();
                    union.sort_unstable();
                    union.dedup();
                    union
                }
                _ => continue,
            };
            candidates = Some(match candidates {
                None => list,
                Some(previous) => previous.into_iter().filter(|id| list.binary_search(id).is_ok()).collect(),
            });
        }
        let whole_range = min_t <= self.meta.min_time && max_t >= self.meta.max_time;
        let keep = |s: &&BlockSeries| {
            matchers.iter().all(|m| m.matches_labels(&s.labels))
                && (whole_range || self.chunks_of(s).iter().any(|c| c.min_t <= max_t && c.max_t >= min_t))
        };
        match candidates {
            Some(ids) => ids
                .iter()
                .filter_map(|&id| self.series.get(id as usize))
                .filter(keep)
                .map(|s| Arc::clone(&s.labels))
                .collect(),
            None => self.series.iter().filter(keep).map(|s| Arc::clone(&s.labels)).collect(),
        }
    }

    /// Appends the samples of the series with `labels` in `[min_t, max_t]`, in time order.
    pub fn read(&self, labels: &Labels, min_t: i64, max_t: i64, out: &mut Vec<Sample>) -> Result<(), BlockError> {
        self.read_with(&self.cache, labels, min_t, max_t, out)
    }

    /// `read`, keeping decompressed frames in `cache` (compaction passes its
    /// own, so that a merge does not push out what queries read).
    pub fn read_with(
        &self,
        cache: &FrameCache,
        labels: &Labels,
        min_t: i64,
        max_t: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), BlockError> {
        let Ok(id) = self.series.binary_search_by(|s| s.labels.as_ref().cmp(labels)) else { return Ok(()) };
        let chunks = self.chunks_of(&self.series[id]);
        let mut wanted = chunks.iter().filter(|c| c.min_t <= max_t && c.max_t >= min_t).peekable();
        let Some(&&first) = wanted.peek() else { return Ok(()) };
        let frames = match &self.layout {
            Layout::Frames(frames) => frames,
            Layout::Gorilla => return self.read_gorilla(wanted.copied().collect(), min_t, max_t, out),
        };
        let mut current = (first.frame, self.frame(cache, frames, first.frame)?);
        for chunk in wanted {
            if chunk.frame != current.0 {
                current = (chunk.frame, self.frame(cache, frames, chunk.frame)?);
            }
            let start = chunk.offset as usize;
            let Some(bytes) = current.1.get(start..start + chunk.len as usize) else { continue };
            let samples = ColumnIter::new(bytes, chunk.count);
            if chunk.min_t >= min_t && chunk.max_t <= max_t {
                out.extend(samples);
            } else {
                out.extend(samples.filter(|s| s.timestamp_ms >= min_t && s.timestamp_ms <= max_t));
            }
        }
        Ok(())
    }

    /// A frame's raw bytes, from the cache or decompressed from the file.
    fn frame(&self, cache: &FrameCache, frames: &[FrameRef], number: u32) -> Result<Arc<[u8]>, BlockError> {
        if let Some(bytes) = cache.get((self.number, number)) {
            return Ok(bytes);
        }
        let path = || self.dir.join("chunks");
        let frame = frames.get(number as usize).ok_or_else(|| BlockError::Corrupt {
            path: path(),
            problem: format!("frame {number} is not in the index"),
        })?;
        let mut compressed = vec![0u8; frame.len as usize];
        self.chunks
            .read_exact_at(&mut compressed, frame.offset)
            .map_err(|source| BlockError::Io { path: path(), source })?;
        let raw = decompress(&compressed, frame.raw_len as usize)
            .ok()
            .filter(|raw| raw.len() == frame.raw_len as usize)
            .ok_or_else(|| BlockError::Corrupt {
                path: path(),
                problem: format!("frame {number} does not decompress"),
            })?;
        let raw: Arc<[u8]> = raw.into();
        cache.insert((self.number, number), Arc::clone(&raw));
        Ok(raw)
    }

    /// Reads chunks of the first format: Gorilla chunks at file offsets.
    fn read_gorilla(
        &self,
        wanted: Vec<ChunkRef>,
        min_t: i64,
        max_t: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), BlockError> {
        let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else { return Ok(()) };
        // A series' chunks are contiguous: one read for all of them.
        let span = (last.offset + u64::from(last.len)).checked_sub(first.offset).ok_or_else(|| {
            BlockError::Corrupt { path: self.dir.join("index"), problem: "chunks out of order".into() }
        })?;
        let mut bytes = vec![0u8; span as usize];
        self.chunks
            .read_exact_at(&mut bytes, first.offset)
            .map_err(|source| BlockError::Io { path: self.dir.join("chunks"), source })?;
        for chunk in &wanted {
            let start = (chunk.offset - first.offset) as usize;
            let Some(chunk_bytes) = bytes.get(start..start + chunk.len as usize) else { continue };
            out.extend(
                ChunkIter::new(chunk_bytes, chunk.count).filter(|s| s.timestamp_ms >= min_t && s.timestamp_ms <= max_t),
            );
        }
        Ok(())
    }

    /// Every series, in label order (for compaction and retention).
    pub fn labels(&self) -> impl Iterator<Item = &Arc<Labels>> {
        self.series.iter().map(|s| &s.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunk::Chunk;

    fn test_series() -> Vec<(Arc<Labels>, Vec<Sample>)> {
        (0..50)
            .map(|i| {
                let labels = Arc::new(Labels::from_pairs([("__name__", "m"), ("i", &format!("{i:03}"))]));
                let samples: Vec<Sample> =
                    (0..300).map(|t| Sample { timestamp_ms: t * 1000, value: (t * i) as f64 }).collect();
                (labels, samples)
            })
            .collect()
    }

    /// Writes `series` as a block of the first format (HERDIDX1, Gorilla chunks).
    fn write_v1(dir: &Path, series: &[(Arc<Labels>, Vec<Sample>)]) {
        fs::create_dir_all(dir).unwrap();
        let (mut chunks_file, mut index) = (Vec::new(), INDEX_MAGIC_V1.to_vec());
        let mut postings: std::collections::BTreeMap<(String, String), Vec<u32>> = Default::default();
        put_varint(series.len() as u64, &mut index);
        for (id, (labels, samples)) in series.iter().enumerate() {
            put_varint(labels.len() as u64, &mut index);
            for (name, value) in labels.iter() {
                put_bytes(name.as_bytes(), &mut index);
                put_bytes(value.as_bytes(), &mut index);
                postings.entry((name.to_owned(), value.to_owned())).or_default().push(id as u32);
            }
            let mut chunks = Vec::new();
            Chunk::encode_all(samples, &mut chunks);
            put_varint(chunks.len() as u64, &mut index);
            for chunk in &chunks {
                put_varint(zigzag(chunk.min_t), &mut index);
                put_varint((chunk.max_t - chunk.min_t) as u64, &mut index);
                put_varint(u64::from(chunk.count), &mut index);
                put_varint(chunks_file.len() as u64, &mut index);
                put_varint(chunk.bytes.len() as u64, &mut index);
                chunks_file.extend_from_slice(&chunk.bytes);
            }
        }
        put_postings(&postings, &mut index);
        let crc = crc32fast::hash(&index);
        index.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.join("chunks"), chunks_file).unwrap();
        fs::write(dir.join("index"), index).unwrap();
        let meta = BlockMeta {
            id: "old".into(),
            min_time: 0,
            max_time: 299_000,
            stats: BlockStats::default(),
            compaction: Compaction::default(),
        };
        fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    }

    #[test]
    fn a_written_block_reads_back_and_a_damaged_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = LabelPool::default();
        let cache = Arc::new(FrameCache::new(1 << 20));
        let block =
            write(dir.path(), "b1", test_series().into_iter(), Compaction { level: 1, sources: vec![] }, &pool, &cache)
                .unwrap()
                .unwrap();
        assert_eq!((block.meta.min_time, block.meta.max_time), (0, 299_000));
        assert_eq!((block.meta.stats.series, block.meta.stats.samples), (50, 15_000));
        assert!(block.meta.stats.bytes < 15_000, "{} bytes for 15000 samples", block.meta.stats.bytes);
        let reopened = open(&dir.path().join("b1"), &pool, &cache).unwrap();
        assert_eq!(pool.len(), 50, "both copies share the label sets");
        let m = |op, n: &str, v: &str| LabelMatcher::new(op, n, v).unwrap();
        let found = reopened.select(&[m(MatchOp::RegexMatch, "i", "00.")], i64::MIN, i64::MAX);
        assert_eq!(found.len(), 10);
        assert_eq!(reopened.select(&[m(MatchOp::Equal, "i", "007")], 300_000, 400_000).len(), 0);
        let mut out = Vec::new();
        reopened.read(&found[7], 10_000, 12_000, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Sample { timestamp_ms: 10_000, value: 70.0 },
                Sample { timestamp_ms: 11_000, value: 77.0 },
                Sample { timestamp_ms: 12_000, value: 84.0 }
            ]
        );
        for (labels, samples) in test_series() {
            out.clear();
            reopened.read(&labels, i64::MIN, i64::MAX, &mut out).unwrap();
            assert_eq!(out, samples);
        }
        let index = dir.path().join("b1/index");
        let mut bytes = fs::read(&index).unwrap();
        bytes[20] ^= 1;
        fs::write(&index, bytes).unwrap();
        assert!(matches!(open(&dir.path().join("b1"), &pool, &cache), Err(BlockError::Corrupt { .. })));
        assert!(
            write(dir.path(), "empty", std::iter::empty(), Compaction::default(), &pool, &cache).unwrap().is_none()
        );
        assert!(!dir.path().join("empty").exists() && !dir.path().join("empty.tmp").exists());
    }

    #[test]
    fn blocks_of_the_first_format_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let pool = LabelPool::default();
        let cache = Arc::new(FrameCache::new(1 << 20));
        write_v1(&dir.path().join("old"), &test_series());
        let block = open(&dir.path().join("old"), &pool, &cache).unwrap();
        let mut out = Vec::new();
        for (labels, samples) in test_series() {
            out.clear();
            block.read(&labels, i64::MIN, i64::MAX, &mut out).unwrap();
            assert_eq!(out, samples);
        }
        out.clear();
        block.read(&test_series()[3].0, 5_000, 6_000, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let mut index = fs::read(dir.path().join("old/index")).unwrap();
        index[..8].copy_from_slice(b"HERDIDX9");
        let body_len = index.len() - 4;
        let crc = crc32fast::hash(&index[..body_len]);
        index[body_len..].copy_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join("old/index"), index).unwrap();
        let error = open(&dir.path().join("old"), &pool, &cache).err().unwrap().to_string();
        assert!(error.contains("not in a format this version reads"), "{error}");
    }
}
