//! PromQL evaluation over the `Storage` interface. Parsing is
//! `promql-parser`'s; this module evaluates. It knows nothing of HTTP or JSON.
//!
//! This version evaluates instant queries of selectors: vector selectors with
//! all four matcher kinds, range selectors, `offset` and `@`, and literals.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_common::metric::{Labels, METRIC_NAME, is_stale};
use promql_parser::label::{MatchOp as ParsedOp, Matcher};
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};

use crate::store::{LabelMatcher, MatchOp, Sample, Storage};

/// The result of evaluating an expression at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Vector(Vec<(Arc<Labels>, Sample)>),
    Matrix(Vec<(Arc<Labels>, Vec<Sample>)>),
    Scalar(Sample),
    String { timestamp_ms: i64, value: String },
}

impl Value {
    /// Prometheus's `resultType`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
            Value::Scalar(_) => "scalar",
            Value::String { .. } => "string",
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QueryError {
    #[error("{0}")]
    Parse(String),
    #[error("{0} is not supported by this version of Herd's query engine")]
    Unsupported(String),
    #[error("query selects {found} series, more than the limit of {limit}")]
    TooManySeries { found: usize, limit: usize },
}

pub struct Engine {
    store: Arc<dyn Storage>,
    lookback_ms: i64,
    max_series: usize,
}

impl Engine {
    pub fn new(store: Arc<dyn Storage>, lookback: Duration, max_series: usize) -> Self {
        Self { store, lookback_ms: lookback.as_millis() as i64, max_series }
    }

    pub fn instant_query(&self, query: &str, time_ms: i64) -> Result<Value, QueryError> {
        let expr = parser::parse(query).map_err(QueryError::Parse)?;
        self.eval(&expr, time_ms)
    }

    fn eval(&self, expr: &Expr, time_ms: i64) -> Result<Value, QueryError> {
        match expr {
            Expr::Paren(paren) => self.eval(&paren.expr, time_ms),
            Expr::NumberLiteral(number) => Ok(Value::Scalar(Sample { timestamp_ms: time_ms, value: number.val })),
            Expr::StringLiteral(string) => Ok(Value::String { timestamp_ms: time_ms, value: string.val.clone() }),
            Expr::VectorSelector(selector) => {
                let at = self.reference_time(selector, time_ms);
                let mut out = Vec::new();
                let mut samples = Vec::new();
                for (series, labels) in self.select(selector)? {
                    samples.clear();
                    self.store.read(series, at - self.lookback_ms, at, &mut samples);
                    if let Some(last) = samples.last().filter(|s| !is_stale(s.value)) {
                        out.push((labels, Sample { timestamp_ms: time_ms, value: last.value }));
                    }
                }
                Ok(Value::Vector(out))
            }
            Expr::MatrixSelector(matrix) => {
                let at = self.reference_time(&matrix.vs, time_ms);
                let range_ms = matrix.range.as_millis() as i64;
                let mut out = Vec::new();
                for (series, labels) in self.select(&matrix.vs)? {
                    let mut samples = Vec::new();
                    self.store.read(series, at - range_ms, at, &mut samples);
                    samples.retain(|s| !is_stale(s.value));
                    if !samples.is_empty() {
                        out.push((labels, samples));
                    }
                }
                Ok(Value::Matrix(out))
            }
            other => Err(QueryError::Unsupported(describe(other))),
        }
    }

    fn reference_time(&self, selector: &VectorSelector, time_ms: i64) -> i64 {
        let base = match &selector.at {
            Some(AtModifier::At(at)) => system_time_ms(*at),
            // Instant queries: start and end are the evaluation time.
            Some(AtModifier::Start | AtModifier::End) | None => time_ms,
        };
        match &selector.offset {
            Some(Offset::Pos(d)) => base - d.as_millis() as i64,
            Some(Offset::Neg(d)) => base + d.as_millis() as i64,
            None => base,
        }
    }

    fn select(&self, selector: &VectorSelector) -> Result<Vec<(u64, Arc<Labels>)>, QueryError> {
        let mut matchers = Vec::new();
        if let Some(name) = &selector.name {
            matchers.push(
                LabelMatcher::new(MatchOp::Equal, METRIC_NAME, name.as_str())
                    .map_err(|e| QueryError::Parse(e.to_string()))?,
            );
        }
        for matcher in &selector.matchers.matchers {
            matchers.push(convert(matcher)?);
        }
        if !selector.matchers.or_matchers.is_empty() {
            return Err(QueryError::Unsupported("`or` inside a selector".into()));
        }
        let found = self.store.select(&matchers);
        if found.len() > self.max_series {
            return Err(QueryError::TooManySeries { found: found.len(), limit: self.max_series });
        }
        Ok(found)
    }
}

fn convert(matcher: &Matcher) -> Result<LabelMatcher, QueryError> {
    let op = match matcher.op {
        ParsedOp::Equal => MatchOp::Equal,
        ParsedOp::NotEqual => MatchOp::NotEqual,
        ParsedOp::Re(_) => MatchOp::RegexMatch,
        ParsedOp::NotRe(_) => MatchOp::RegexNoMatch,
    };
    LabelMatcher::new(op, matcher.name.as_str(), matcher.value.as_str())
        .map_err(|e| QueryError::Parse(format!("invalid regex: {e}")))
}

fn system_time_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn describe(expr: &Expr) -> String {
    let kind = match expr {
        Expr::Aggregate(_) => "aggregation",
        Expr::Unary(_) => "unary expression",
        Expr::Binary(_) => "binary expression",
        Expr::Subquery(_) => "subquery",
        Expr::Call(_) => "function call",
        _ => "this expression",
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn engine() -> Engine {
        let store = Arc::new(MemStore::new());
        for (mode, values) in
            [("idle", [(0, 1.0), (60_000, 2.0)]), ("user", [(0, 5.0), (30_000, herd_common::metric::stale_nan())])]
        {
            let series = store.series_ref(&Labels::from_pairs([("__name__", "cpu"), ("mode", mode)]));
            for (t, v) in values {
                store.append(series, Sample { timestamp_ms: t, value: v }).unwrap();
            }
        }
        Engine::new(store, Duration::from_secs(300), 1000)
    }

    fn vector(value: Value) -> Vec<(String, f64)> {
        let Value::Vector(v) = value else { panic!("not a vector: {value:?}") };
        v.into_iter().map(|(l, s)| (l.to_string(), s.value)).collect()
    }

    #[test]
    fn selector_takes_the_latest_sample_within_lookback_and_honours_staleness() {
        let e = engine();
        assert_eq!(
            vector(e.instant_query("cpu", 20_000).unwrap()),
            vec![(r#"cpu{mode="idle"}"#.into(), 1.0), (r#"cpu{mode="user"}"#.into(), 5.0)]
        );
        assert_eq!(
            vector(e.instant_query("cpu", 61_000).unwrap()),
            vec![(r#"cpu{mode="idle"}"#.into(), 2.0)],
            "user went stale"
        );
        assert_eq!(vector(e.instant_query("cpu", 60_000 + 300_001).unwrap()), vec![], "beyond lookback");
        assert_eq!(vector(e.instant_query(r#"{__name__="cpu",mode=~"id.*"}"#, 61_000).unwrap()).len(), 1);
        assert_eq!(vector(e.instant_query("cpu offset 1m", 91_000).unwrap()).len(), 1);
        assert_eq!(vector(e.instant_query("cpu @ 20", 1_000_000).unwrap()).len(), 2);
    }

    #[test]
    fn range_selector_returns_samples_in_the_window() {
        let Value::Matrix(m) = engine().instant_query(r#"cpu{mode="idle"}[2m]"#, 60_000).unwrap() else { panic!() };
        assert_eq!(m[0].1.len(), 2);
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(engine().instant_query("cpu{", 0), Err(QueryError::Parse(_))));
        assert!(matches!(engine().instant_query("sum(cpu)", 0), Err(QueryError::Unsupported(_))));
        let small = Engine { max_series: 1, ..engine() };
        assert!(matches!(small.instant_query("cpu", 0), Err(QueryError::TooManySeries { found: 2, limit: 1 })));
    }
}
