//! The storage interface every other part of the aggregator uses: append
//! samples to series, select series by label matchers, read samples in a time
//! range. Ingest writes through it, PromQL and the HTTP API read through it,
//! and none of them knows where the data lives.
//!
//! `db::Db` is the aggregator's durable store (compressed head made durable
//! by the WAL, immutable blocks on disk, compaction and retention);
//! `memory::MemStore` keeps everything in memory for unit tests.

pub mod block;
pub mod cache;
pub mod chunk;
pub mod column;
pub mod db;
pub mod head;
pub mod maintenance;
pub mod memory;

use std::sync::Arc;

use herd_common::metric::Labels;
use regex::Regex;

pub use memory::MemStore;

/// Store-assigned handle of a series, stable while the process runs.
pub type SeriesRef = u64;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub timestamp_ms: i64,
    pub value: f64,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum AppendError {
    #[error("series {0} does not exist")]
    UnknownSeries(SeriesRef),
    #[error("a different value is already stored at {timestamp_ms} for this series")]
    DuplicateTimestamp { timestamp_ms: i64 },
}

impl AppendError {
    /// A fixed label value for `herd_store_rejected_samples_total{reason}`.
    pub fn reason_code(&self) -> &'static str {
        match self {
            AppendError::UnknownSeries(_) => "unknown_series",
            AppendError::DuplicateTimestamp { .. } => "duplicate_timestamp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    RegexMatch,
    RegexNoMatch,
}

/// One label matcher of a selector. A missing label has the value "".
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl LabelMatcher {
    /// Regexes are anchored at both ends, as in Prometheus.
    pub fn new(op: MatchOp, name: impl Into<String>, value: impl Into<String>) -> Result<Self, regex::Error> {
        let value = value.into();
        let regex = match op {
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => Some(Regex::new(&format!("^(?s:{value})$"))?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Self { name: name.into(), op, value, regex })
    }

    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::RegexMatch, Some(re)) => re.is_match(value),
            (MatchOp::RegexNoMatch, Some(re)) => !re.is_match(value),
            (_, None) => unreachable!("regex matchers are built with their regex"),
        }
    }

    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).unwrap_or(""))
    }
}

/// Counts for self-monitoring and the demo's live line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub series: u64,
    pub samples: u64,
}

pub trait Storage: Send + Sync + 'static {
    /// The series with exactly `labels`, created if new.
    fn series_ref(&self, labels: &Labels) -> SeriesRef;

    /// Stores one sample. Samples may arrive out of order (backfill); a
    /// repeated timestamp with the same value is accepted and ignored.
    fn append(&self, series: SeriesRef, sample: Sample) -> Result<(), AppendError>;

    /// Series whose labels satisfy every matcher, in label order.
    fn select(&self, matchers: &[LabelMatcher]) -> Vec<(SeriesRef, Arc<Labels>)>;

    /// Appends to `out` the samples of `series` with `min_t <= t <= max_t`, in time order.
    fn read(&self, series: SeriesRef, min_t: i64, max_t: i64, out: &mut Vec<Sample>);

    fn stats(&self) -> StoreStats;

    // The methods below serve the metadata endpoints of the HTTP API
    // (`/api/v1/series`, `/labels`, `/label/<name>/values`). Their defaults
    // are correct for any store; a store with an index should override them.

    /// Series whose labels satisfy every matcher (all series for no matchers)
    /// and that have at least one sample with `min_t <= t <= max_t`, in label order.
    ///
    /// The default reads samples to check the range; override it when the
    /// store knows each series' time range.
    fn select_in_range(&self, matchers: &[LabelMatcher], min_t: i64, max_t: i64) -> Vec<(SeriesRef, Arc<Labels>)> {
        let mut samples = Vec::new();
        self.select(matchers)
            .into_iter()
            .filter(|(series, _)| {
                samples.clear();
                self.read(*series, min_t, max_t, &mut samples);
                !samples.is_empty()
            })
            .collect()
    }

    /// Sorted, distinct label names of the series `select_in_range` returns.
    fn label_names(&self, matchers: &[LabelMatcher], min_t: i64, max_t: i64) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        for (_, labels) in self.select_in_range(matchers, min_t, max_t) {
            for (name, _) in labels.iter() {
                if !names.contains(name) {
                    names.insert(name.to_owned());
                }
            }
        }
        names.into_iter().collect()
    }

    /// Sorted, distinct values of label `name` among the series
    /// `select_in_range` returns (series without the label contribute nothing).
    fn label_values(&self, name: &str, matchers: &[LabelMatcher], min_t: i64, max_t: i64) -> Vec<String> {
        let mut values = std::collections::BTreeSet::new();
        for (_, labels) in self.select_in_range(matchers, min_t, max_t) {
            if let Some(value) = labels.get(name)
                && !values.contains(value)
            {
                values.insert(value.to_owned());
            }
        }
        values.into_iter().collect()
    }
}
