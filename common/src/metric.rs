//! Herd's metric model: label sets, the agent's series table, staleness.

use std::collections::HashMap;
use std::fmt;

/// Bit pattern Prometheus uses to mark a series as stale (a NaN that no
/// arithmetic produces).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as a value.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `value` is the staleness marker (not any NaN).
pub fn is_stale(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// Formats a sample value as Prometheus does: shortest round-trip decimal
/// without exponent, `NaN`, `+Inf`, `-Inf`.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

/// The reserved label carrying the metric name.
pub const METRIC_NAME: &str = "__name__";

/// A series' identity: label pairs sorted by name, names unique, no empty
/// values (an empty value means the label is absent, as in Prometheus).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a label set from pairs in any order; later duplicates win, empty values are dropped.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().map(|(n, v)| (n.into(), v.into())).collect();
        // Stable sort keeps insertion order among equal names; keep the last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match deduped.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => deduped.push(pair),
            }
        }
        deduped.retain(|(_, v)| !v.is_empty());
        Labels(deduped)
    }

    /// Takes pairs that are already sorted and unique, as received from a
    /// peer, checking that they are.
    pub fn from_sorted(pairs: Vec<(String, String)>) -> Result<Self, LabelsError> {
        if pairs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(LabelsError::NotSorted);
        }
        if let Some((name, _)) = pairs.iter().find(|(n, v)| n.is_empty() || v.is_empty()) {
            return Err(LabelsError::Empty { name: name.clone() });
        }
        Ok(Labels(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }

    /// Bytes held by names and values, for memory accounting.
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LabelsError {
    #[error("label names are not sorted and unique")]
    NotSorted,
    #[error("label {name:?} has an empty name or value")]
    Empty { name: String },
}

impl fmt::Display for Labels {
    /// Prometheus notation: `name{a="x", b="y"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.metric_name() {
            f.write_str(name)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for (n, v) in self.iter().filter(|(n, _)| *n != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// Agent-local id of a series, dense from 0 for the life of the process.
pub type SeriesId = u32;

/// The agent's interning table: label sets to dense ids and back.
///
/// Lookups by a caller-built canonical key allocate nothing when the series
/// is already known, which is the common case every cycle.
#[derive(Debug, Default)]
pub struct SeriesTable {
    by_key: HashMap<Box<str>, SeriesId>,
    labels: Vec<Labels>,
}

impl SeriesTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the id of the series `name{labels}`, creating it if new.
    /// `scratch` is a reusable buffer for the canonical key.
    /// At most this many labels (besides the name) take part in a series' identity.
    pub const MAX_LABELS: usize = 32;

    pub fn intern(&mut self, name: &str, labels: &[(&str, &str)], scratch: &mut String) -> SeriesId {
        let labels = &labels[..labels.len().min(Self::MAX_LABELS)];
        Self::key(name, labels, scratch);
        if let Some(&id) = self.by_key.get(scratch.as_str()) {
            return id;
        }
        let all = labels.iter().copied().chain(std::iter::once((METRIC_NAME, name)));
        self.insert(Labels::from_pairs(all), scratch)
    }

    /// Re-adds a series kept on disk; ids are given out in the same order as before.
    pub fn restore(&mut self, labels: Labels) -> SeriesId {
        let mut scratch = String::new();
        let name = labels.metric_name().unwrap_or("").to_owned();
        let mut pairs: Vec<(&str, &str)> = labels.iter().filter(|(n, _)| *n != METRIC_NAME).collect();
        pairs.truncate(Self::MAX_LABELS);
        Self::key(&name, &pairs, &mut scratch);
        match self.by_key.get(scratch.as_str()) {
            Some(&id) => id,
            None => self.insert(labels, &scratch),
        }
    }

    fn insert(&mut self, labels: Labels, key: &str) -> SeriesId {
        let id = SeriesId::try_from(self.labels.len()).expect("fewer than 2^32 series in one agent");
        self.labels.push(labels);
        self.by_key.insert(key.into(), id);
        id
    }

    /// The canonical key: name, then labels sorted by name, with separators
    /// that cannot appear in either.
    fn key(name: &str, labels: &[(&str, &str)], scratch: &mut String) {
        let mut sorted: [(&str, &str); Self::MAX_LABELS] = [("", ""); Self::MAX_LABELS];
        let n = labels.len().min(Self::MAX_LABELS);
        sorted[..n].copy_from_slice(&labels[..n]);
        sorted[..n].sort_unstable_by(|a, b| a.0.cmp(b.0));
        scratch.clear();
        scratch.push_str(name);
        for (k, v) in &sorted[..n] {
            scratch.push('\u{0}');
            scratch.push_str(k);
            scratch.push('\u{1}');
            scratch.push_str(v);
        }
    }

    pub fn labels(&self, id: SeriesId) -> Option<&Labels> {
        self.labels.get(id as usize)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_deduplicated_and_drop_empty_values() {
        let labels = Labels::from_pairs([("b", "2"), ("a", "1"), ("b", "3"), ("c", "")]);
        assert_eq!(labels.as_pairs(), &[("a".into(), "1".into()), ("b".into(), "3".into())]);
        assert_eq!(labels.get("b"), Some("3"));
        assert_eq!(labels.get("c"), None);
    }

    #[test]
    fn display_uses_prometheus_notation() {
        let labels = Labels::from_pairs([("__name__", "up"), ("job", "node"), ("instance", "a:1")]);
        assert_eq!(labels.to_string(), r#"up{instance="a:1", job="node"}"#);
    }

    #[test]
    fn from_sorted_checks_its_input() {
        assert!(Labels::from_sorted(vec![("b".into(), "1".into()), ("a".into(), "1".into())]).is_err());
        assert!(Labels::from_sorted(vec![("a".into(), "".into())]).is_err());
        assert!(Labels::from_sorted(vec![("a".into(), "1".into()), ("b".into(), "1".into())]).is_ok());
    }

    #[test]
    fn interning_is_stable_and_order_independent() {
        let mut table = SeriesTable::new();
        let mut scratch = String::new();
        let a = table.intern("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")], &mut scratch);
        let b = table.intern("node_cpu_seconds_total", &[("mode", "idle"), ("cpu", "0")], &mut scratch);
        let c = table.intern("node_cpu_seconds_total", &[("cpu", "1"), ("mode", "idle")], &mut scratch);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(table.labels(a).unwrap().get("__name__"), Some("node_cpu_seconds_total"));
        assert_eq!(table.len(), 2);

        // A table restored from the labels gives the same ids and finds them again.
        let mut restored = SeriesTable::new();
        for id in 0..table.len() as SeriesId {
            assert_eq!(restored.restore(table.labels(id).unwrap().clone()), id);
        }
        assert_eq!(restored.intern("node_cpu_seconds_total", &[("mode", "idle"), ("cpu", "1")], &mut scratch), c);
    }
}
