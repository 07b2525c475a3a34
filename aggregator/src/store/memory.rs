//! An in-memory store: a series table, postings from label pairs to series,
//! and a sorted sample vector per series. Nothing is persisted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use herd_common::metric::Labels;

use super::{AppendError, LabelMatcher, MatchOp, Sample, SeriesRef, Storage, StoreStats};

struct MemSeries {
    labels: Arc<Labels>,
    samples: Mutex<Vec<Sample>>,
}

#[derive(Default)]
struct Index {
    by_labels: HashMap<Arc<Labels>, SeriesRef>,
    series: Vec<Arc<MemSeries>>,
    /// label name → label value → series, ascending.
    postings: HashMap<String, HashMap<String, Vec<SeriesRef>>>,
}

#[derive(Default)]
pub struct MemStore {
    index: RwLock<Index>,
    samples: AtomicU64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn series(&self, series: SeriesRef) -> Option<Arc<MemSeries>> {
        let index = self.index.read().expect("store index lock is never poisoned");
        usize::try_from(series).ok().and_then(|i| index.series.get(i)).cloned()
    }
}

impl Storage for MemStore {
    fn series_ref(&self, labels: &Labels) -> SeriesRef {
        if let Some(&found) = self.index.read().expect("store index lock is never poisoned").by_labels.get(labels) {
            return found;
        }
        let mut index = self.index.write().expect("store index lock is never poisoned");
        if let Some(&found) = index.by_labels.get(labels) {
            return found;
        }
        let series_ref = index.series.len() as SeriesRef;
        let labels = Arc::new(labels.clone());
        for (name, value) in labels.iter() {
            index.postings.entry(name.to_owned()).or_default().entry(value.to_owned()).or_default().push(series_ref);
        }
        index.series.push(Arc::new(MemSeries { labels: Arc::clone(&labels), samples: Mutex::new(Vec::new()) }));
        index.by_labels.insert(labels, series_ref);
        series_ref
    }

    fn append(&self, series: SeriesRef, sample: Sample) -> Result<(), AppendError> {
        let series = self.series(series).ok_or(AppendError::UnknownSeries(series))?;
        let mut samples = series.samples.lock().expect("series lock is never poisoned");
        match samples.last() {
            Some(last) if last.timestamp_ms < sample.timestamp_ms => samples.push(sample),
            None => samples.push(sample),
            Some(_) => {
                // Late sample (backfill): insert in time order.
                match samples.binary_search_by_key(&sample.timestamp_ms, |s| s.timestamp_ms) {
                    Ok(at) if samples[at].value.to_bits() == sample.value.to_bits() => return Ok(()),
                    Ok(_) => return Err(AppendError::DuplicateTimestamp { timestamp_ms: sample.timestamp_ms }),
                    Err(at) => samples.insert(at, sample),
                }
            }
        }
        self.samples.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn select(&self, matchers: &[LabelMatcher]) -> Vec<(SeriesRef, Arc<Labels>)> {
        let index = self.index.read().expect("store index lock is never poisoned");
        // Narrow with the smallest postings list of an equality matcher on a
        // non-empty value; every matcher is then checked on the candidates.
        let mut candidates: Option<&[SeriesRef]> = None;
        for matcher in matchers.iter().filter(|m| m.op == MatchOp::Equal && !m.value.is_empty()) {
            let list = index
                .postings
                .get(&matcher.name)
                .and_then(|values| values.get(&matcher.value))
                .map_or(&[][..], Vec::as_slice);
            if candidates.is_none_or(|c| list.len() < c.len()) {
                candidates = Some(list);
            }
        }
        let check = |series_ref: SeriesRef| {
            let series = &index.series[series_ref as usize];
            matchers.iter().all(|m| m.matches_labels(&series.labels)).then(|| (series_ref, Arc::clone(&series.labels)))
        };
        let mut found: Vec<(SeriesRef, Arc<Labels>)> = match candidates {
            Some(list) => list.iter().filter_map(|&r| check(r)).collect(),
            None => (0..index.series.len() as SeriesRef).filter_map(check).collect(),
        };
        found.sort_by(|a, b| a.1.cmp(&b.1));
        found
    }

    fn read(&self, series: SeriesRef, min_t: i64, max_t: i64, out: &mut Vec<Sample>) {
        let Some(series) = self.series(series) else { return };
        let samples = series.samples.lock().expect("series lock is never poisoned");
        let start = samples.partition_point(|s| s.timestamp_ms < min_t);
        let end = samples.partition_point(|s| s.timestamp_ms <= max_t);
        if start < end {
            out.extend_from_slice(&samples[start..end]);
        }
    }

    fn select_in_range(&self, matchers: &[LabelMatcher], min_t: i64, max_t: i64) -> Vec<(SeriesRef, Arc<Labels>)> {
        let mut found = self.select(matchers);
        if min_t == i64::MIN && max_t == i64::MAX {
            return found;
        }
        // Samples are sorted: a binary search per series answers "any in range?".
        found.retain(|(series, _)| {
            let Some(series) = self.series(*series) else { return false };
            let samples = series.samples.lock().expect("series lock is never poisoned");
            let first = samples.partition_point(|s| s.timestamp_ms < min_t);
            samples.get(first).is_some_and(|s| s.timestamp_ms <= max_t)
        });
        found
    }

    fn stats(&self) -> StoreStats {
        let series = self.index.read().expect("store index lock is never poisoned").series.len() as u64;
        StoreStats { series, samples: self.samples.load(Ordering::Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    fn matcher(op: MatchOp, name: &str, value: &str) -> LabelMatcher {
        LabelMatcher::new(op, name, value).unwrap()
    }

    fn names(found: &[(SeriesRef, Arc<Labels>)]) -> Vec<String> {
        found.iter().map(|(_, l)| l.to_string()).collect()
    }

    #[test]
    fn select_applies_all_four_matcher_kinds() {
        let store = MemStore::new();
        for (cpu, mode) in [("0", "idle"), ("0", "user"), ("1", "idle")] {
            store.series_ref(&labels(&[("__name__", "node_cpu_seconds_total"), ("cpu", cpu), ("mode", mode)]));
        }
        store.series_ref(&labels(&[("__name__", "node_load1")]));
        let cpu = matcher(MatchOp::Equal, "__name__", "node_cpu_seconds_total");
        assert_eq!(store.select(&[cpu.clone(), matcher(MatchOp::Equal, "mode", "idle")]).len(), 2);
        assert_eq!(store.select(&[cpu.clone(), matcher(MatchOp::NotEqual, "mode", "idle")]).len(), 1);
        assert_eq!(store.select(&[cpu.clone(), matcher(MatchOp::RegexMatch, "mode", "id.*")]).len(), 2);
        assert_eq!(store.select(&[cpu.clone(), matcher(MatchOp::RegexMatch, "mode", "id")]).len(), 0, "anchored");
        assert_eq!(store.select(&[cpu, matcher(MatchOp::RegexNoMatch, "cpu", "0")]).len(), 1);
        // `cpu=""` selects series without the label.
        assert_eq!(names(&store.select(&[matcher(MatchOp::Equal, "cpu", "")])), vec!["node_load1{}"]);
        assert_eq!(store.series_ref(&labels(&[("__name__", "node_load1")])), 3, "existing series keeps its ref");
    }

    #[test]
    fn metadata_queries_respect_matchers_and_time_range() {
        let store = MemStore::new();
        for (job, instance, t) in [("node", "a", 10), ("node", "b", 50), ("redis", "a", 90)] {
            let s = store.series_ref(&labels(&[("__name__", "up"), ("job", job), ("instance", instance)]));
            store.append(s, Sample { timestamp_ms: t, value: 1.0 }).unwrap();
        }
        let all = (i64::MIN, i64::MAX);
        assert_eq!(store.select_in_range(&[], all.0, all.1).len(), 3);
        assert_eq!(names(&store.select_in_range(&[], 40, 60)), vec![r#"up{instance="b", job="node"}"#]);
        assert_eq!(store.label_names(&[], all.0, all.1), vec!["__name__", "instance", "job"]);
        assert_eq!(store.label_values("job", &[], all.0, all.1), vec!["node", "redis"]);
        assert_eq!(store.label_values("job", &[], 0, 60), vec!["node"]);
        let redis = matcher(MatchOp::Equal, "job", "redis");
        assert_eq!(store.label_values("instance", &[redis], all.0, all.1), vec!["a"]);
        assert!(store.label_values("zone", &[], all.0, all.1).is_empty());
    }

    #[test]
    fn late_samples_are_stored_in_order_and_duplicates_handled() {
        let store = MemStore::new();
        let s = store.series_ref(&labels(&[("__name__", "x")]));
        for t in [10, 30, 20, 5] {
            store.append(s, Sample { timestamp_ms: t, value: t as f64 }).unwrap();
        }
        store.append(s, Sample { timestamp_ms: 20, value: 20.0 }).unwrap();
        assert!(store.append(s, Sample { timestamp_ms: 20, value: 21.0 }).is_err());
        let mut out = Vec::new();
        store.read(s, 6, 30, &mut out);
        assert_eq!(out.iter().map(|s| s.timestamp_ms).collect::<Vec<_>>(), vec![10, 20, 30]);
        assert_eq!(store.stats(), StoreStats { series: 1, samples: 4 });
        assert_eq!(store.append(99, Sample { timestamp_ms: 0, value: 0.0 }), Err(AppendError::UnknownSeries(99)));
    }
}
