//! The head: the recent, still-writable part of the store, in memory. A
//! series table, an inverted index (postings: label name → value → sorted
//! series refs) and per series compressed chunks plus a small sorted buffer
//! of out-of-order samples. No disk I/O here: `db` cuts the head's old data
//! into blocks and the WAL makes it durable.
//!
//! Out-of-order samples (backfill after an agent outage) are stored: a sample
//! older than the series' newest goes to the out-of-order buffer, which reads
//! merge in time order and which is folded into the chunks when it grows or
//! when the head is cut. A repeated timestamp with the same value bits is
//! ignored; with a different value it is rejected (`duplicate_timestamp`) and
//! the first write stays.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use herd_common::metric::Labels;

use super::chunk::{Chunk, ChunkEncoder};
use super::{AppendError, LabelMatcher, MatchOp, Sample, SeriesRef};

/// The out-of-order buffer is folded into the chunks past this many samples.
const OOO_FOLD_AT: usize = 240;

#[derive(Default)]
struct SeriesData {
    /// Closed chunks, in time order, not overlapping.
    chunks: Vec<Chunk>,
    open: ChunkEncoder,
    /// The newest in-order sample.
    last: Option<Sample>,
    /// Samples older than `last` that arrived late, sorted, distinct timestamps.
    ooo: Vec<Sample>,
    /// In the postings (has data in the head). A series whose data all went
    /// to blocks is released: its chunks freed, its postings removed; its ref
    /// stays valid and a new sample brings it back.
    active: bool,
}

impl SeriesData {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.open.is_empty() && self.ooo.is_empty()
    }

    fn in_order_samples(&self, min_t: i64, max_t: i64, out: &mut Vec<Sample>) {
        for chunk in self.chunks.iter().filter(|c| c.max_t >= min_t && c.min_t <= max_t) {
            out.extend(chunk.iter().filter(|s| s.timestamp_ms >= min_t && s.timestamp_ms <= max_t));
        }
        if !self.open.is_empty() && self.last.is_some_and(|l| l.timestamp_ms >= min_t) && self.open.min_t() <= max_t {
            out.extend(self.open.iter().filter(|s| s.timestamp_ms >= min_t && s.timestamp_ms <= max_t));
        }
    }

    /// Every sample with `min_t <= t <= max_t`, in time order.
    fn read(&self, min_t: i64, max_t: i64, out: &mut Vec<Sample>) {
        let start = out.len();
        self.in_order_samples(min_t, max_t, out);
        let from = self.ooo.partition_point(|s| s.timestamp_ms < min_t);
        let to = self.ooo.partition_point(|s| s.timestamp_ms <= max_t);
        if from < to {
            let in_order = out.split_off(start);
            merge_into(&in_order, &self.ooo[from..to], out);
        }
    }

    /// The value stored at `t` among the in-order samples, if any.
    fn in_order_at(&self, t: i64) -> Option<f64> {
        let mut found = Vec::new();
        self.in_order_samples(t, t, &mut found);
        found.first().map(|s| s.value)
    }

    fn append_in_order(&mut self, sample: Sample) {
        self.open.append(sample);
        self.last = Some(sample);
        if self.open.is_full() {
            let full = std::mem::take(&mut self.open);
            self.chunks.push(full.seal());
        }
    }

    /// Re-encodes the in-order samples from the oldest out-of-order one on,
    /// merged with the out-of-order buffer.
    fn fold_ooo(&mut self) {
        let Some(first) = self.ooo.first().map(|s| s.timestamp_ms) else { return };
        let keep = self.chunks.partition_point(|c| c.max_t < first);
        let mut newer = Vec::new();
        for chunk in self.chunks.drain(keep..) {
            newer.extend(chunk.iter());
        }
        newer.extend(self.open.iter());
        self.open = ChunkEncoder::new();
        let ooo = std::mem::take(&mut self.ooo);
        let mut merged = Vec::with_capacity(newer.len() + ooo.len());
        merge_into(&newer, &ooo, &mut merged);
        self.last = None;
        for sample in merged {
            self.append_in_order(sample);
        }
    }

    /// Removes and returns (time-ordered) every sample older than `before`.
    fn cut(&mut self, before: i64) -> Vec<Sample> {
        if !self.ooo.is_empty() && self.ooo[0].timestamp_ms < before {
            self.fold_ooo();
        }
        let mut old = Vec::new();
        let whole = self.chunks.partition_point(|c| c.max_t < before);
        for chunk in self.chunks.drain(..whole) {
            old.extend(chunk.iter());
        }
        // A chunk (closed or open) that straddles the boundary is split.
        if let Some(first) = self.chunks.first()
            && first.min_t < before
        {
            let straddling = self.chunks.remove(0);
            let (older, newer): (Vec<Sample>, Vec<Sample>) = straddling.iter().partition(|s| s.timestamp_ms < before);
            old.extend(older);
            let mut encoder = ChunkEncoder::new();
            newer.iter().for_each(|&s| encoder.append(s));
            self.chunks.insert(0, encoder.seal());
        } else if self.chunks.is_empty() && !self.open.is_empty() && self.open.min_t() < before {
            let samples: Vec<Sample> = self.open.iter().collect();
            self.open = ChunkEncoder::new();
            for sample in samples {
                if sample.timestamp_ms < before {
                    old.push(sample);
                } else {
                    self.open.append(sample);
                }
            }
        }
        if self.is_empty() {
            self.last = None;
            self.chunks = Vec::new();
            self.open = ChunkEncoder::new();
        }
        old
    }

    fn has_data_in(&self, min_t: i64, max_t: i64) -> bool {
        let from = self.ooo.partition_point(|s| s.timestamp_ms < min_t);
        if self.ooo.get(from).is_some_and(|s| s.timestamp_ms <= max_t) {
            return true;
        }
        // Chunk bounds answer most cases; a chunk spanning the range without
        // a sample in it is decoded.
        let in_chunk =
            |mut iter: super::chunk::ChunkIter<'_>| iter.any(|s| s.timestamp_ms >= min_t && s.timestamp_ms <= max_t);
        for chunk in self.chunks.iter().filter(|c| c.max_t >= min_t && c.min_t <= max_t) {
            if (chunk.min_t >= min_t || chunk.max_t <= max_t) || in_chunk(chunk.iter()) {
                return true;
            }
        }
        match self.last {
            Some(last) if !self.open.is_empty() && last.timestamp_ms >= min_t && self.open.min_t() <= max_t => {
                self.open.min_t() >= min_t || last.timestamp_ms <= max_t || in_chunk(self.open.iter())
            }
            _ => false,
        }
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.bytes.len() + std::mem::size_of::<Chunk>()).sum::<usize>()
            + self.open.bytes().len()
            + self.ooo.len() * std::mem::size_of::<Sample>()
    }
}

/// Merges two time-ordered runs; on equal timestamps the sample from `a` wins.
pub(crate) fn merge_into(a: &[Sample], b: &[Sample], out: &mut Vec<Sample>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].timestamp_ms.cmp(&b[j].timestamp_ms) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

/// One shared copy of each label set, for the head and every block: a
/// series' labels would otherwise be held once per block it has data in.
#[derive(Default)]
pub struct LabelPool {
    labels: Mutex<HashSet<Arc<Labels>>>,
}

impl LabelPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<Labels>>> {
        self.labels.lock().expect("label pool lock is never poisoned")
    }

    pub fn intern(&self, labels: Labels) -> Arc<Labels> {
        let mut pool = self.lock();
        if let Some(found) = pool.get(&labels) {
            return Arc::clone(found);
        }
        let labels = Arc::new(labels);
        pool.insert(Arc::clone(&labels));
        labels
    }

    pub fn intern_ref(&self, labels: &Labels) -> Arc<Labels> {
        if let Some(found) = self.lock().get(labels) {
            return Arc::clone(found);
        }
        self.intern(labels.clone())
    }

    /// Forgets label sets nothing else holds (after blocks are deleted).
    pub fn sweep(&self) {
        self.lock().retain(|labels| Arc::strong_count(labels) > 1);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct HeadSeries {
    pub labels: Arc<Labels>,
    data: Mutex<SeriesData>,
}

impl HeadSeries {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeriesData> {
        self.data.lock().expect("series lock is never poisoned")
    }
}

#[derive(Default)]
struct Index {
    by_labels: HashMap<Arc<Labels>, SeriesRef>,
    series: HashMap<SeriesRef, Arc<HeadSeries>>,
    /// label name → label value → refs of active series, ascending.
    postings: HashMap<String, HashMap<String, Vec<SeriesRef>>>,
    next_ref: SeriesRef,
    active: u64,
}

impl Index {
    fn add_postings(&mut self, series_ref: SeriesRef, labels: &Labels) {
        for (name, value) in labels.iter() {
            let list = self.postings.entry(name.to_owned()).or_default().entry(value.to_owned()).or_default();
            // Refs only grow, except when a released series comes back.
            match list.last() {
                Some(&last) if last > series_ref => {
                    if let Err(at) = list.binary_search(&series_ref) {
                        list.insert(at, series_ref);
                    }
                }
                Some(&last) if last == series_ref => {}
                _ => list.push(series_ref),
            }
        }
        self.active += 1;
    }
}

/// Head figures for self-monitoring.
#[derive(Debug, Default)]
pub struct HeadCounters {
    pub samples_appended: AtomicU64,
    pub out_of_order_samples: AtomicU64,
    pub duplicate_samples_ignored: AtomicU64,
    pub rejected_duplicate_timestamp: AtomicU64,
    pub rejected_unknown_series: AtomicU64,
    pub series_created: AtomicU64,
    pub series_released: AtomicU64,
}

pub struct Head {
    index: RwLock<Index>,
    pub pool: LabelPool,
    /// The newest timestamp appended, `i64::MIN` when none.
    max_t: AtomicI64,
    pub counters: HeadCounters,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            index: RwLock::default(),
            pool: LabelPool::default(),
            max_t: AtomicI64::new(i64::MIN),
            counters: HeadCounters::default(),
        }
    }
}

impl Head {
    pub fn new() -> Self {
        Self::default()
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("head index lock is never poisoned")
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().expect("head index lock is never poisoned")
    }

    fn get(&self, series_ref: SeriesRef) -> Option<Arc<HeadSeries>> {
        self.read_index().series.get(&series_ref).cloned()
    }

    pub fn max_t(&self) -> i64 {
        self.max_t.load(Ordering::Relaxed)
    }

    /// The series with exactly `labels`, created (released, without data) if new.
    pub fn series_ref(&self, labels: &Labels) -> SeriesRef {
        if let Some(&found) = self.read_index().by_labels.get(labels) {
            return found;
        }
        let mut index = self.write_index();
        if let Some(&found) = index.by_labels.get(labels) {
            return found;
        }
        let series_ref = index.next_ref;
        index.next_ref += 1;
        let labels = self.pool.intern_ref(labels);
        index.series.insert(
            series_ref,
            Arc::new(HeadSeries { labels: Arc::clone(&labels), data: Mutex::new(SeriesData::default()) }),
        );
        index.by_labels.insert(labels, series_ref);
        self.counters.series_created.fetch_add(1, Ordering::Relaxed);
        series_ref
    }

    /// Like `series_ref` but with the ref chosen by the caller (replay keeps
    /// the refs the WAL was written with). Fails if the labels already have
    /// another ref or the ref other labels.
    pub fn series_ref_for_replay(&self, wanted: SeriesRef, labels: &Labels) -> SeriesRef {
        let mut index = self.write_index();
        if let Some(&found) = index.by_labels.get(labels) {
            return found;
        }
        let series_ref = if index.series.contains_key(&wanted) { index.next_ref } else { wanted };
        index.next_ref = index.next_ref.max(series_ref + 1);
        let labels = self.pool.intern_ref(labels);
        index.series.insert(
            series_ref,
            Arc::new(HeadSeries { labels: Arc::clone(&labels), data: Mutex::new(SeriesData::default()) }),
        );
        index.by_labels.insert(labels, series_ref);
        series_ref
    }

    pub fn labels(&self, series_ref: SeriesRef) -> Option<Arc<Labels>> {
        self.get(series_ref).map(|s| Arc::clone(&s.labels))
    }

    pub fn append(&self, series_ref: SeriesRef, sample: Sample) -> Result<(), AppendError> {
        let Some(series) = self.get(series_ref) else {
            self.counters.rejected_unknown_series.fetch_add(1, Ordering::Relaxed);
            return Err(AppendError::UnknownSeries(series_ref));
        };
        let mut data = series.lock();
        if !data.active {
            drop(data);
            let mut index = self.write_index();
            data = series.lock();
            if !data.active {
                index.add_postings(series_ref, &series.labels);
                data.active = true;
            }
        }
        let t = sample.timestamp_ms;
        let bits = sample.value.to_bits();
        let existing = match data.last {
            None => None,
            Some(last) if t > last.timestamp_ms => None,
            Some(last) if t == last.timestamp_ms => Some(last.value),
            Some(_) => match data.ooo.binary_search_by_key(&t, |s| s.timestamp_ms) {
                Ok(at) => Some(data.ooo[at].value),
                Err(_) => data.in_order_at(t),
            },
        };
        if let Some(value) = existing {
            if value.to_bits() == bits {
                self.counters.duplicate_samples_ignored.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            self.counters.rejected_duplicate_timestamp.fetch_add(1, Ordering::Relaxed);
            return Err(AppendError::DuplicateTimestamp { timestamp_ms: t });
        }
        if data.last.is_none_or(|last| t > last.timestamp_ms) {
            data.append_in_order(sample);
        } else {
            let at = data.ooo.partition_point(|s| s.timestamp_ms < t);
            data.ooo.insert(at, sample);
            self.counters.out_of_order_samples.fetch_add(1, Ordering::Relaxed);
            if data.ooo.len() > OOO_FOLD_AT {
                data.fold_ooo();
            }
        }
        drop(data);
        self.max_t.fetch_max(t, Ordering::Relaxed);
        self.counters.samples_appended.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Active series whose labels satisfy every matcher, unordered.
    pub fn select(&self, matchers: &[LabelMatcher]) -> Vec<(SeriesRef, Arc<Labels>)> {
        let index = self.read_index();
        let candidates = postings_for(&index.postings, matchers);
        let check = |series_ref: SeriesRef| {
            let series = index.series.get(&series_ref)?;
            matchers.iter().all(|m| m.matches_labels(&series.labels)).then(|| (series_ref, Arc::clone(&series.labels)))
        };
        match candidates {
            Some(list) => list.into_iter().filter_map(check).collect(),
            None => index.series.iter().filter(|(_, s)| s.lock().active).filter_map(|(&r, _)| check(r)).collect(),
        }
    }

    /// Appends the head's samples of `series_ref` in `[min_t, max_t]`, in time order.
    pub fn read(&self, series_ref: SeriesRef, min_t: i64, max_t: i64, out: &mut Vec<Sample>) {
        if let Some(series) = self.get(series_ref) {
            series.lock().read(min_t, max_t, out);
        }
    }

    pub fn has_data_in(&self, series_ref: SeriesRef, min_t: i64, max_t: i64) -> bool {
        self.get(series_ref).is_some_and(|s| s.lock().has_data_in(min_t, max_t))
    }

    /// Removes every sample older than `before` from the head and returns
    /// them by series, sorted by labels, encoded; then releases the series
    /// left without data.
    pub fn cut(&self, before: i64) -> Vec<(Arc<Labels>, Vec<Chunk>)> {
        let all: Vec<Arc<HeadSeries>> = self.read_index().series.values().cloned().collect();
        let mut out = Vec::new();
        let mut emptied = Vec::new();
        for series in all {
            let mut data = series.lock();
            if !data.active {
                continue;
            }
            let old = data.cut(before);
            if data.is_empty() {
                emptied.push(Arc::clone(&series));
            }
            drop(data);
            if !old.is_empty() {
                let mut chunks = Vec::new();
                Chunk::encode_all(&old, &mut chunks);
                out.push((Arc::clone(&series.labels), chunks));
            }
        }
        self.release(&emptied);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Releases series that have no data in the head any more.
    fn release(&self, candidates: &[Arc<HeadSeries>]) {
        if candidates.is_empty() {
            return;
        }
        let mut index = self.write_index();
        let mut released: HashSet<SeriesRef> = HashSet::new();
        let mut pairs: HashSet<(&str, &str)> = HashSet::new();
        for series in candidates {
            let mut data = series.lock();
            // A sample may have arrived since the cut.
            if !data.active || !data.is_empty() {
                continue;
            }
            data.active = false;
            if let Some(&r) = index.by_labels.get(&series.labels) {
                released.insert(r);
            }
            pairs.extend(series.labels.iter());
        }
        for (name, value) in pairs {
            if let Some(values) = index.postings.get_mut(name) {
                if let Some(list) = values.get_mut(value) {
                    list.retain(|r| !released.contains(r));
                    if list.is_empty() {
                        values.remove(value);
                    }
                }
                if values.is_empty() {
                    index.postings.remove(name);
                }
            }
        }
        index.active -= released.len() as u64;
        self.counters.series_released.fetch_add(released.len() as u64, Ordering::Relaxed);
    }

    /// Every series (active or released) and, for active ones, their head
    /// samples: what a WAL checkpoint must keep.
    pub fn snapshot(&self, mut each: impl FnMut(SeriesRef, &Labels, &[Sample])) {
        let all: Vec<(SeriesRef, Arc<HeadSeries>)> =
            self.read_index().series.iter().map(|(&r, s)| (r, Arc::clone(s))).collect();
        let mut samples = Vec::new();
        for (series_ref, series) in all {
            samples.clear();
            series.lock().read(i64::MIN, i64::MAX, &mut samples);
            each(series_ref, &series.labels, &samples);
        }
    }

    pub fn series_count(&self) -> u64 {
        self.read_index().active
    }

    /// Bytes held by chunks and out-of-order buffers.
    pub fn chunk_bytes(&self) -> usize {
        let all: Vec<Arc<HeadSeries>> = self.read_index().series.values().cloned().collect();
        all.iter().map(|s| s.lock().bytes()).sum()
    }
}

/// Candidate refs from the matchers that narrow (an equality on a non-empty
/// value, a regex that does not match ""), intersected; `None` if no matcher
/// narrows. Regex matchers scan the label's values.
fn postings_for(
    postings: &HashMap<String, HashMap<String, Vec<SeriesRef>>>,
    matchers: &[LabelMatcher],
) -> Option<Vec<SeriesRef>> {
    let mut result: Option<Vec<SeriesRef>> = None;
    for matcher in matchers {
        let list: Vec<SeriesRef> = match matcher.op {
            MatchOp::Equal if !matcher.value.is_empty() => {
                postings.get(&matcher.name).and_then(|values| values.get(&matcher.value)).cloned().unwrap_or_default()
            }
            MatchOp::RegexMatch if !matcher.matches("") => {
                let mut union: Vec<SeriesRef> = postings
                    .get(&matcher.name)
                    .into_iter()
                    .flat_map(|values| values.iter())
                    .filter(|(value, _)| matcher.matches(value))
                    .flat_map(|(_, refs)| refs.iter().copied())
                    .collect();
                union.sort_unstable();
                union.dedup();
                union
            }
            _ => continue,
        };
        result = Some(match result {
            None => list,
            Some(previous) => intersect(&previous, &list),
        });
    }
    result
}

fn intersect(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64, v: f64) -> Sample {
        Sample { timestamp_ms: t, value: v }
    }

    fn read_all(head: &Head, r: SeriesRef) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        head.read(r, i64::MIN, i64::MAX, &mut out);
        out.iter().map(|s| (s.timestamp_ms, s.value)).collect()
    }

    #[test]
    fn late_samples_are_stored_and_duplicates_are_deterministic() {
        let head = Head::new();
        let r = head.series_ref(&Labels::from_pairs([("__name__", "x")]));
        for t in (0..1000).rev() {
            head.append(r, sample(t * 10, t as f64)).unwrap();
        }
        // Same value again: ignored; different value: rejected, first write stays.
        head.append(r, sample(500, 50.0)).unwrap();
        assert_eq!(head.append(r, sample(500, 51.0)), Err(AppendError::DuplicateTimestamp { timestamp_ms: 500 }));
        assert_eq!(head.append(r, sample(9990, 0.5)), Err(AppendError::DuplicateTimestamp { timestamp_ms: 9990 }));
        let all = read_all(&head, r);
        assert_eq!(all, (0..1000).map(|t| (t * 10, t as f64)).collect::<Vec<_>>());
        assert_eq!(head.counters.samples_appended.load(Ordering::Relaxed), 1000);
        assert_eq!(head.counters.rejected_duplicate_timestamp.load(Ordering::Relaxed), 2);
        let mut some = Vec::new();
        head.read(r, 95, 125, &mut some);
        assert_eq!(some.iter().map(|s| s.timestamp_ms).collect::<Vec<_>>(), vec![100, 110, 120]);
        for (min_t, max_t, expected) in [(1, 9, false), (1201, 1209, false), (1205, 1210, true), (9990, 20_000, true)] {
            assert_eq!(head.has_data_in(r, min_t, max_t), expected, "{min_t}..={max_t}");
        }
        let late = head.series_ref(&Labels::from_pairs([("__name__", "late")]));
        head.append(late, sample(100, 1.0)).unwrap();
        head.append(late, sample(50, 1.0)).unwrap();
        assert!(head.has_data_in(late, 40, 60) && !head.has_data_in(late, 60, 90));
    }

    #[test]
    fn select_intersects_postings_and_scans_regex_values() {
        let head = Head::new();
        for (cpu, mode) in [("0", "idle"), ("0", "user"), ("1", "idle"), ("10", "idle")] {
            let r = head.series_ref(&Labels::from_pairs([("__name__", "cpu"), ("cpu", cpu), ("mode", mode)]));
            head.append(r, sample(1, 1.0)).unwrap();
        }
        let m = |op, n: &str, v: &str| LabelMatcher::new(op, n, v).unwrap();
        let count = |ms: &[LabelMatcher]| head.select(ms).len();
        assert_eq!(count(&[m(MatchOp::Equal, "mode", "idle")]), 3);
        assert_eq!(count(&[m(MatchOp::Equal, "mode", "idle"), m(MatchOp::RegexMatch, "cpu", "1.*")]), 2);
        assert_eq!(count(&[m(MatchOp::RegexMatch, "cpu", "1")]), 1, "anchored");
        assert_eq!(count(&[m(MatchOp::NotEqual, "cpu", "0")]), 2);
        assert_eq!(count(&[m(MatchOp::Equal, "cpu", "")]), 0);
        assert_eq!(count(&[m(MatchOp::RegexMatch, "zone", ".*")]), 4);
    }

    #[test]
    fn cut_moves_old_samples_out_and_releases_idle_series() {
        let head = Head::new();
        let busy = head.series_ref(&Labels::from_pairs([("__name__", "busy")]));
        let idle = head.series_ref(&Labels::from_pairs([("__name__", "idle")]));
        for t in 0..300 {
            head.append(busy, sample(t * 1000, t as f64)).unwrap();
        }
        head.append(idle, sample(5_000, 1.0)).unwrap();
        head.append(busy, sample(2_500, 9.0)).unwrap(); // late
        let cut = head.cut(150_000);
        let names: Vec<_> = cut.iter().map(|(l, _)| l.metric_name().unwrap().to_owned()).collect();
        assert_eq!(names, vec!["busy", "idle"]);
        let busy_old: Vec<i64> = cut[0].1.iter().flat_map(|c| c.iter()).map(|s| s.timestamp_ms).collect();
        assert_eq!(busy_old.len(), 151);
        assert!(busy_old.windows(2).all(|w| w[0] < w[1]) && busy_old.contains(&2_500));
        assert_eq!(read_all(&head, busy).len(), 150);
        assert_eq!(read_all(&head, busy)[0], (150_000, 150.0));
        assert_eq!(head.series_count(), 1, "idle series released");
        assert!(head.select(&[LabelMatcher::new(MatchOp::Equal, "__name__", "idle").unwrap()]).is_empty());
        // Its ref stays valid and a new sample brings it back.
        head.append(idle, sample(400_000, 2.0)).unwrap();
        assert_eq!(head.series_count(), 2);
        assert_eq!(read_all(&head, idle), vec![(400_000, 2.0)]);
    }
}
