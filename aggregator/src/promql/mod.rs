//! PromQL over the `Storage` interface: `promql-parser` parses, this module
//! evaluates, with Prometheus 2.42's semantics (lookback delta, staleness,
//! extrapolation, NaN handling). It reads only through `Storage::select` and
//! `Storage::read`, so it behaves the same on the in-memory head and on
//! persisted blocks. It knows nothing of HTTP or JSON, and its types are not
//! `Serialize`: `api/` converts them.
//!
//! - `eval`: the step loop, selectors, subqueries, `@` and `offset`.
//! - `aggregate`, `binary`, `functions`: operators and the function library.
//! - `labels`: label-set edits and grouping keys.
//! - `limits`: samples in memory, series per selector, timeout.
//! - `testfile`: runner for Prometheus's `*.test` files (`herd-aggregator promql-test`).

mod aggregate;
mod binary;
mod eval;
mod functions;
mod labels;
mod limits;
pub mod testfile;

use std::sync::{Arc, Once};
use std::time::Duration;

use herd_common::metric::Labels;
pub use limits::{Limits, QueryStats};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr};

use crate::store::{LabelMatcher, Sample, Storage};
use eval::{Evaluated, Evaluator, QueryContext};
use limits::Budget;

/// The result of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An instant vector: one sample per series, stamped with the evaluation time.
    Vector(Vec<(Arc<Labels>, Sample)>),
    /// A range vector, or the result of a range query: samples per series, in time order.
    Matrix(Vec<(Arc<Labels>, Vec<Sample>)>),
    Scalar(Sample),
    String {
        timestamp_ms: i64,
        value: String,
    },
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
    /// The query does not parse; the parser's message.
    #[error("{0}")]
    Parse(String),
    /// The query parses but cannot be run as asked (a range query of a range vector, a bad step).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} is not supported by Herd's query engine")]
    Unsupported(String),
    /// A run-time error with Prometheus's message, e.g. duplicate label sets.
    #[error("{0}")]
    Execution(String),
    #[error("query processing would load too many samples into memory in query execution (limit {limit})")]
    TooManySamples { limit: usize },
    #[error("query would read more than {limit} samples: narrow its time range or its selectors")]
    TooManySamplesRead { limit: u64 },
    #[error("query selects {found} series, more than the limit of {limit}: add label matchers to narrow it")]
    TooManySeries { found: usize, limit: usize },
    #[error("query timed out in expression evaluation (limit {timeout:?})")]
    Timeout { timeout: Duration },
}

/// The time range a query is evaluated over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRange {
    Instant { time_ms: i64 },
    Range { start_ms: i64, end_ms: i64, step_ms: i64 },
}

/// A query's value and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutput {
    pub value: Value,
    pub stats: QueryStats,
}

/// Deepest expression the engine evaluates. Evaluation recurses once per
/// level; real queries are a few dozen levels deep. At this depth a release
/// build needs well under 1 MiB of stack.
pub const MAX_EXPRESSION_DEPTH: usize = 1000;

/// Operators and parentheses a query may contain, checked before parsing:
/// it bounds the parser's tree depth, which the parser and dropping the tree
/// handle recursively.
const MAX_NESTING_TOKENS: usize = 10_000;

/// Default step of subqueries written without one, Prometheus's default
/// global evaluation interval.
const DEFAULT_SUBQUERY_STEP: Duration = Duration::from_secs(60);

pub struct Engine {
    store: Arc<dyn Storage>,
    lookback_ms: i64,
    limits: Limits,
    default_subquery_step_ms: i64,
}

impl Engine {
    /// An engine with default limits except `max_series` per selector.
    pub fn new(store: Arc<dyn Storage>, lookback: Duration, max_series: usize) -> Self {
        Self {
            store,
            lookback_ms: eval::duration_ms(lookback),
            limits: Limits { max_series, ..Limits::default() },
            default_subquery_step_ms: eval::duration_ms(DEFAULT_SUBQUERY_STEP),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Step of subqueries without an explicit one (`x[1h:]`); must be above zero.
    pub fn with_default_subquery_step(mut self, step: Duration) -> Self {
        self.default_subquery_step_ms = eval::duration_ms(step).max(1);
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Parses a query with the functions Herd evaluates.
    pub fn parse(query: &str) -> Result<Expr, QueryError> {
        let tokens = nesting_tokens(query);
        if tokens > MAX_NESTING_TOKENS {
            return Err(QueryError::BadRequest(format!(
                "query has {tokens} operators and parentheses, more than the limit of {MAX_NESTING_TOKENS}: split it up"
            )));
        }
        register_legacy_functions();
        parser::parse(query).map_err(QueryError::Parse)
    }

    pub fn instant_query(&self, query: &str, time_ms: i64) -> Result<Value, QueryError> {
        Ok(self.query(&Self::parse(query)?, QueryRange::Instant { time_ms })?.value)
    }

    pub fn range_query(&self, query: &str, start_ms: i64, end_ms: i64, step_ms: i64) -> Result<Value, QueryError> {
        Ok(self.query(&Self::parse(query)?, QueryRange::Range { start_ms, end_ms, step_ms })?.value)
    }

    /// Evaluates a parsed expression. A range query returns a matrix sorted
    /// by labels; an instant query returns the expression's own type.
    ///
    /// Evaluation recurses once per level of the expression (at most
    /// `MAX_EXPRESSION_DEPTH`, else `BadRequest`): at that depth a release
    /// build needs under 2 MiB of stack, a debug build up to 16 MiB. The HTTP
    /// API evaluates on threads with 64 MiB.
    pub fn query(&self, expr: &Expr, range: QueryRange) -> Result<QueryOutput, QueryError> {
        self.query_with_limits(expr, range, &self.limits)
    }

    /// As `query`, with limits other than the engine's (a request's own timeout).
    pub fn query_with_limits(
        &self,
        expr: &Expr,
        range: QueryRange,
        limits: &Limits,
    ) -> Result<QueryOutput, QueryError> {
        let depth = expression_depth(expr);
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(QueryError::BadRequest(format!(
                "query is nested {depth} levels deep, more than the limit of {MAX_EXPRESSION_DEPTH}: split it up"
            )));
        }
        let (start, end, interval) = match range {
            // An instant query is a range query of one step; the interval only must not be zero.
            QueryRange::Instant { time_ms } => (time_ms, time_ms, 1),
            QueryRange::Range { start_ms, end_ms, step_ms } => {
                if step_ms <= 0 {
                    return Err(QueryError::BadRequest(
                        "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
                    ));
                }
                if end_ms < start_ms {
                    return Err(QueryError::BadRequest("end timestamp must not be before start time".into()));
                }
                match expr.value_type() {
                    ValueType::Vector | ValueType::Scalar => {}
                    other => {
                        return Err(QueryError::BadRequest(format!(
                            "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                            type_description(other)
                        )));
                    }
                }
                (start_ms, end_ms, step_ms)
            }
        };
        let ctx = QueryContext {
            store: &*self.store,
            lookback_ms: self.lookback_ms,
            query_start_ms: start,
            query_end_ms: end,
            default_subquery_step_ms: self.default_subquery_step_ms,
            max_series: limits.max_series,
            budget: Budget::new(limits),
        };
        let evaluator = Evaluator { ctx: &ctx, start, end, interval };
        let result = evaluator.eval(expr)?;
        let value = match range {
            QueryRange::Instant { time_ms } => instant_value(result, time_ms),
            QueryRange::Range { .. } => range_value(result, &evaluator)?,
        };
        Ok(QueryOutput { value, stats: ctx.budget.stats() })
    }
}

/// Operators and opening parentheses outside string literals: an upper bound
/// on the depth of the tree the query parses into.
fn nesting_tokens(query: &str) -> usize {
    let mut count = 0;
    let mut quote: Option<char> = None;
    let mut word = String::new();
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == '\\' {
                chars.next();
            }
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        count += usize::from(is_operator_word(&word));
        word.clear();
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' => count += 1,
            _ => {}
        }
    }
    count + usize::from(is_operator_word(&word))
}

fn is_operator_word(word: &str) -> bool {
    ["and", "or", "unless", "atan2"].iter().any(|op| word.eq_ignore_ascii_case(op))
}

/// Depth of an expression tree, computed without recursion so that a tree
/// too deep to evaluate can still be measured.
fn expression_depth(expr: &Expr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(expr, 1)];
    while let Some((expr, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        match expr {
            Expr::Aggregate(aggregate) => {
                pending.push((&aggregate.expr, depth + 1));
                if let Some(param) = &aggregate.param {
                    pending.push((param, depth + 1));
                }
            }
            Expr::Unary(unary) => pending.push((&unary.expr, depth + 1)),
            Expr::Binary(binary) => {
                pending.push((&binary.lhs, depth + 1));
                pending.push((&binary.rhs, depth + 1));
            }
            Expr::Paren(paren) => pending.push((&paren.expr, depth + 1)),
            Expr::Subquery(subquery) => pending.push((&subquery.expr, depth + 1)),
            Expr::Call(call) => pending.extend(call.args.args.iter().map(|a| (&**a, depth + 1))),
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    deepest
}

fn type_description(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::Vector => "instant vector",
        ValueType::Scalar => "scalar",
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    }
}

fn instant_value(result: Evaluated, time_ms: i64) -> Value {
    match result {
        Evaluated::Scalar(values) => {
            Value::Scalar(Sample { timestamp_ms: time_ms, value: values.first().copied().unwrap_or(f64::NAN) })
        }
        Evaluated::Vector(series) => Value::Vector(
            series
                .into_iter()
                .filter_map(|s| {
                    let value = s.points.first()?.value;
                    Some((s.labels, Sample { timestamp_ms: time_ms, value }))
                })
                .collect(),
        ),
        Evaluated::Matrix(series) => Value::Matrix(series.into_iter().map(|s| (s.labels, s.points)).collect()),
        Evaluated::String(value) => Value::String { timestamp_ms: time_ms, value },
    }
}

fn range_value(result: Evaluated, evaluator: &Evaluator<'_>) -> Result<Value, QueryError> {
    let mut matrix: Vec<(Arc<Labels>, Vec<Sample>)> = match result {
        Evaluated::Scalar(values) => {
            let points =
                values.iter().enumerate().map(|(k, &value)| Sample { timestamp_ms: evaluator.step_time(k), value });
            vec![(Arc::new(Labels::default()), points.collect())]
        }
        Evaluated::Vector(series) => series.into_iter().map(|s| (s.labels, s.points)).collect(),
        other => {
            return Err(QueryError::BadRequest(format!(
                "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                match other {
                    Evaluated::Matrix(_) => "range vector",
                    _ => "string",
                }
            )));
        }
    };
    matrix.sort_by(|a, b| a.0.cmp(&b.0));
    matrix.retain(|(_, points)| !points.is_empty());
    Ok(Value::Matrix(matrix))
}

/// Parses a series selector as the metadata endpoints' `match[]` takes it
/// (`up{job="node"}`) into store matchers: one set, or one per `or` alternative.
pub fn parse_series_selector(text: &str) -> Result<Vec<Vec<LabelMatcher>>, QueryError> {
    match Engine::parse(text)? {
        Expr::VectorSelector(selector) if selector.offset.is_none() && selector.at.is_none() => {
            eval::selector_matchers(&selector)
        }
        _ => Err(QueryError::Parse(format!("{text:?} is not a series selector (expected e.g. up{{job=\"node\"}})"))),
    }
}

/// A duration as PromQL writes it: `1h30m`, `5m`, `10s`, `100ms`, `2d`,
/// `1w`, `1y`, or `0`; in milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    if text.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms: i64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(unit_ms)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// `holt_winters` was renamed in Prometheus 3 and promql-parser only knows
/// the new name; rule files written for 2.x still use the old one.
fn register_legacy_functions() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        let holt_winters = parser::Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        // Fails only if the parser one day knows the name itself, which is fine.
        let _ = parser::register_extra_functions(vec![holt_winters]);
    });
}

pub use herd_common::metric::format_value;

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
    fn range_query_returns_a_matrix_sorted_by_labels_with_a_point_per_step() {
        let Value::Matrix(m) = engine().range_query("sum by (mode) (cpu)", 0, 60_000, 30_000).unwrap() else {
            panic!()
        };
        let got: Vec<(String, Vec<(i64, f64)>)> =
            m.iter().map(|(l, s)| (l.to_string(), s.iter().map(|p| (p.timestamp_ms, p.value)).collect())).collect();
        assert_eq!(
            got,
            vec![
                (r#"{mode="idle"}"#.into(), vec![(0, 1.0), (30_000, 1.0), (60_000, 2.0)]),
                (r#"{mode="user"}"#.into(), vec![(0, 5.0)]),
            ]
        );
        let Value::Matrix(m) = engine().range_query("time()", 0, 60_000, 60_000).unwrap() else { panic!() };
        assert_eq!(m[0].1.iter().map(|p| p.value).collect::<Vec<_>>(), vec![0.0, 60.0]);
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(engine().instant_query("cpu{", 0), Err(QueryError::Parse(_))));
        assert!(matches!(engine().range_query("cpu[1m]", 0, 1, 1), Err(QueryError::BadRequest(_))));
        assert!(matches!(engine().range_query("cpu", 0, 1, 0), Err(QueryError::BadRequest(_))));
        assert!(matches!(engine().range_query("cpu", 10, 1, 1), Err(QueryError::BadRequest(_))));
        assert!(matches!(engine().instant_query("limitk(1, cpu)", 0), Err(QueryError::Unsupported(_))));
        let small = Engine { limits: Limits { max_series: 1, ..Limits::default() }, ..engine() };
        assert!(matches!(small.instant_query("cpu", 0), Err(QueryError::TooManySeries { found: 2, limit: 1 })));
        let tiny = engine().with_limits(Limits { max_samples: 3, ..Limits::default() });
        assert!(matches!(tiny.range_query("cpu", 0, 60_000, 1000), Err(QueryError::TooManySamples { limit: 3 })));
        assert!(tiny.instant_query("cpu", 20_000).is_ok(), "an instant query fits");
    }

    #[test]
    fn series_selectors_and_durations_parse() {
        assert_eq!(parse_series_selector(r#"up{job="node"}"#).unwrap()[0].len(), 2);
        assert_eq!(parse_series_selector(r#"{a="1" or b="2"}"#).unwrap().len(), 2);
        assert!(parse_series_selector("sum(up)").is_err());
        assert!(parse_series_selector("up offset 5m").is_err());
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms("100ms"), Some(100));
        assert_eq!(parse_duration_ms("5x"), None);
        assert_eq!(parse_duration_ms(""), None);
    }

    #[test]
    fn deep_queries_are_refused_before_they_can_exhaust_the_stack() {
        assert_eq!(nesting_tokens(r#"sum(rate(x{a="(+-"}[5m])) and on() y or z"#), 6);
        assert_eq!(nesting_tokens("1 + 1"), 1);
        // Near the limit: fine in release on any thread; debug frames need a bigger stack.
        let near_limit = std::thread::Builder::new()
            .stack_size(32 << 20)
            .spawn(|| engine().instant_query(&vec!["1"; 999].join(" + "), 0).is_ok())
            .unwrap();
        assert!(near_limit.join().unwrap());
        let deep = vec!["1"; 1500].join(" + ");
        let err = engine().instant_query(&deep, 0).unwrap_err();
        assert!(matches!(&err, QueryError::BadRequest(m) if m.contains("nested 1500 levels")), "{err}");
        let huge = vec!["1"; 20_000].join(" + ");
        assert!(matches!(Engine::parse(&huge), Err(QueryError::BadRequest(_))));
    }

    #[test]
    fn legacy_holt_winters_parses() {
        assert!(Engine::parse("holt_winters(cpu[5m], 0.5, 0.5)").is_ok());
    }

    #[test]
    fn values_format_like_prometheus() {
        for (value, text) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (1e21, "1000000000000000000000"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (-0.25, "-0.25"),
        ] {
            assert_eq!(format_value(value), text);
        }
    }
}
