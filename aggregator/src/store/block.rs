//! Immutable on-disk blocks: one directory per time range holding
//! - `chunks`: the compressed chunks of every series, series after series;
//! - `index`: series labels with their chunk refs (time range, sample count,
//!   offset, length), then postings (label name → value → series ids), then
//!   a CRC-32 of all of it;
//! - `meta.json`: id, time range, stats, compaction level and sources.
//!
//! A block is written into `<id>.tmp`, fsync'd, then renamed, so a directory
//! without `.tmp` is always complete. The index and postings are held in
//! memory; chunks are read from the file on demand. No head or WAL logic here.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herd_common::metric::Labels;
use herd_common::varint::{self, put as put_varint, unzigzag, zigzag};
use serde::{Deserialize, Serialize};

use super::chunk::{Chunk, ChunkIter};
use super::head::LabelPool;
use super::{LabelMatcher, MatchOp, Sample};

const INDEX_MAGIC: &[u8; 8] = b"HERDIDX1";
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
    count: u16,
    offset: u64,
    len: u32,
}

struct BlockSeries {
    labels: Arc<Labels>,
    chunks: Vec<ChunkRef>,
}

pub struct Block {
    pub dir: PathBuf,
    pub meta: BlockMeta,
    series: Vec<BlockSeries>,
    by_labels: HashMap<Arc<Labels>, u32>,
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
    chunks: File,
}

/// Writes a block from series in label order, each with its chunks in time
/// order, into `parent/<id>` (through `<id>.tmp`), and opens it. Returns
/// `None` when there was nothing to write.
pub fn write(
    parent: &Path,
    id: &str,
    series: impl Iterator<Item = (Arc<Labels>, Vec<Chunk>)>,
    compaction: Compaction,
    pool: &LabelPool,
) -> Result<Option<Block>, BlockError> {
    let tmp = parent.join(format!("{id}.tmp"));
    let io = |source| BlockError::Io { path: tmp.clone(), source };
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io)?;
    }
    fs::create_dir_all(&tmp).map_err(io)?;
    let mut chunks_file = BufWriter::with_capacity(1 << 20, File::create(tmp.join("chunks")).map_err(io)?);
    let mut index = Vec::new();
    index.extend_from_slice(INDEX_MAGIC);
    let mut entries = Vec::new();
    let mut offset = 0u64;
    let mut stats = BlockStats::default();
    let (mut min_time, mut max_time) = (i64::MAX, i64::MIN);
    let mut postings: std::collections::BTreeMap<(String, String), Vec<u32>> = Default::default();
    for (labels, chunks) in series {
        if chunks.is_empty() {
            continue;
        }
        let id = entries.len() as u32;
        let mut refs = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            chunks_file.write_all(&chunk.bytes).map_err(io)?;
            refs.push(ChunkRef {
                min_t: chunk.min_t,
                max_t: chunk.max_t,
                count: chunk.count,
                offset,
                len: chunk.bytes.len() as u32,
            });
            offset += chunk.bytes.len() as u64;
            stats.chunks += 1;
            stats.samples += u64::from(chunk.count);
            min_time = min_time.min(chunk.min_t);
            max_time = max_time.max(chunk.max_t);
        }
        for (name, value) in labels.iter() {
            postings.entry((name.to_owned(), value.to_owned())).or_default().push(id);
        }
        entries.push((labels, refs));
    }
    if entries.is_empty() {
        drop(chunks_file);
        fs::remove_dir_all(&tmp).map_err(io)?;
        return Ok(None);
    }
    stats.series = entries.len() as u64;
    put_varint(entries.len() as u64, &mut index);
    for (labels, refs) in &entries {
        put_varint(labels.len() as u64, &mut index);
        for (name, value) in labels.iter() {
            put_bytes(name.as_bytes(), &mut index);
            put_bytes(value.as_bytes(), &mut index);
        }
        put_varint(refs.len() as u64, &mut index);
        for r in refs {
            put_varint(zigzag(r.min_t), &mut index);
            put_varint(r.max_t.wrapping_sub(r.min_t) as u64, &mut index);
            put_varint(u64::from(r.count), &mut index);
            put_varint(r.offset, &mut index);
            put_varint(u64::from(r.len), &mut index);
        }
    }
    put_varint(postings.len() as u64, &mut index);
    for ((name, value), ids) in &postings {
        put_bytes(name.as_bytes(), &mut index);
        put_bytes(value.as_bytes(), &mut index);
        put_varint(ids.len() as u64, &mut index);
        let mut previous = 0u32;
        for &id in ids {
            put_varint(u64::from(id - previous), &mut index);
            previous = id;
        }
    }
    let crc = crc32fast::hash(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let chunks_file = chunks_file.into_inner().map_err(|e| io(e.into_error()))?;
    chunks_file.sync_all().map_err(io)?;
    write_synced(&tmp.join("index"), &index).map_err(io)?;
    stats.bytes = offset + index.len() as u64;
    let meta = BlockMeta { id: id.to_owned(), min_time, max_time, stats, compaction };
    let json = serde_json::to_vec_pretty(&meta).expect("block meta serializes");
    write_synced(&tmp.join("meta.json"), &json).map_err(io)?;
    File::open(&tmp).and_then(|d| d.sync_all()).map_err(io)?;
    let dir = parent.join(id);
    fs::rename(&tmp, &dir).map_err(io)?;
    File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
    open(&dir, pool).map(Some)
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
pub fn open(dir: &Path, pool: &LabelPool) -> Result<Block, BlockError> {
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
    if crc32fast::hash(&index[..body_len]) != crc || !index.starts_with(INDEX_MAGIC) {
        return Err(corrupt("index checksum mismatch"));
    }
    let chunks = File::open(dir.join("chunks")).map_err(io)?;
    let chunks_len = chunks.metadata().map_err(io)?.len();
    let parsed =
        parse_index(&index[INDEX_MAGIC.len()..body_len], chunks_len, pool).ok_or_else(|| corrupt("index malformed"))?;
    let (series, postings) = parsed;
    let by_labels = series.iter().enumerate().map(|(i, s)| (Arc::clone(&s.labels), i as u32)).collect();
    Ok(Block { dir: dir.to_owned(), meta, series, by_labels, postings, chunks })
}

type Postings = HashMap<String, HashMap<String, Vec<u32>>>;

fn parse_index(bytes: &[u8], chunks_len: u64, pool: &LabelPool) -> Option<(Vec<BlockSeries>, Postings)> {
    let mut r = Reader { bytes, pos: 0 };
    let series_count = r.count()?;
    let mut series = Vec::with_capacity(series_count);
    for _ in 0..series_count {
        let label_count = r.count()?;
        let mut pairs = Vec::with_capacity(label_count);
        for _ in 0..label_count {
            pairs.push((r.string()?, r.string()?));
        }
        let labels = pool.intern(Labels::from_sorted(pairs).ok()?);
        let chunk_count = r.count()?;
        let mut chunks = Vec::with_capacity(chunk_count);
        for _ in 0..chunk_count {
            let min_t = unzigzag(r.varint()?);
            let max_t = min_t.wrapping_add(r.varint()? as i64);
            let count = u16::try_from(r.varint()?).ok()?;
            let offset = r.varint()?;
            let len = u32::try_from(r.varint()?).ok()?;
            if offset.checked_add(u64::from(len))? > chunks_len {
                return None;
            }
            chunks.push(ChunkRef { min_t, max_t, count, offset, len });
        }
        series.push(BlockSeries { labels, chunks });
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
    (r.pos == bytes.len()).then_some((series, postings))
}

impl Block {
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    pub fn overlaps(&self, min_t: i64, max_t: i64) -> bool {
        self.meta.min_time <= max_t && self.meta.max_time >= min_t
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
                && (whole_range || s.chunks.iter().any(|c| c.min_t <= max_t && c.max_t >= min_t))
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
        let Some(&id) = self.by_labels.get(labels) else { return Ok(()) };
        let series = &self.series[id as usize];
        let wanted: Vec<&ChunkRef> = series.chunks.iter().filter(|c| c.min_t <= max_t && c.max_t >= min_t).collect();
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else { return Ok(()) };
        // A series' chunks are contiguous: one read for all of them.
        let mut bytes = vec![0u8; (last.offset + u64::from(last.len) - first.offset) as usize];
        self.chunks
            .read_exact_at(&mut bytes, first.offset)
            .map_err(|source| BlockError::Io { path: self.dir.join("chunks"), source })?;
        for chunk in wanted {
            let start = (chunk.offset - first.offset) as usize;
            let Some(chunk_bytes) = bytes.get(start..start + chunk.len as usize) else { continue };
            out.extend(
                ChunkIter::new(chunk_bytes, chunk.count).filter(|s| s.timestamp_ms >= min_t && s.timestamp_ms <= max_t),
            );
        }
        Ok(())
    }

    /// Every series, in label order, with all its samples (for compaction).
    pub fn labels(&self) -> impl Iterator<Item = &Arc<Labels>> {
        self.series.iter().map(|s| &s.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_block_reads_back_and_a_damaged_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let series: Vec<(Arc<Labels>, Vec<Chunk>)> = (0..50)
            .map(|i| {
                let labels = Arc::new(Labels::from_pairs([("__name__", "m"), ("i", &format!("{i:03}"))]));
                let samples: Vec<Sample> =
                    (0..300).map(|t| Sample { timestamp_ms: t * 1000, value: (t * i) as f64 }).collect();
                let mut chunks = Vec::new();
                Chunk::encode_all(&samples, &mut chunks);
                (labels, chunks)
            })
            .collect();
        let pool = LabelPool::default();
        let block = write(dir.path(), "b1", series.into_iter(), Compaction { level: 1, sources: vec![] }, &pool)
            .unwrap()
            .unwrap();
        assert_eq!((block.meta.min_time, block.meta.max_time), (0, 299_000));
        assert_eq!((block.meta.stats.series, block.meta.stats.samples), (50, 15_000));
        let reopened = open(&dir.path().join("b1"), &pool).unwrap();
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
        let index = dir.path().join("b1/index");
        let mut bytes = fs::read(&index).unwrap();
        bytes[20] ^= 1;
        fs::write(&index, bytes).unwrap();
        assert!(matches!(open(&dir.path().join("b1"), &pool), Err(BlockError::Corrupt { .. })));
        assert!(write(dir.path(), "empty", std::iter::empty(), Compaction::default(), &pool).unwrap().is_none());
        assert!(!dir.path().join("empty").exists() && !dir.path().join("empty.tmp").exists());
    }
}
