//! The evaluator: walks a parsed expression over a range of evaluation steps
//! (one step for an instant query) and produces, per node, every step's
//! result at once, as Prometheus's engine does. Selectors read each series
//! once for the whole range and slide over it; nothing re-reads per step.
//!
//! This file owns the step loop, selectors, subqueries, `@`/`offset`, the
//! lookback delta, staleness and the step-invariant shortcut. Operators and
//! functions live in `aggregate`, `binary` and `functions`. No HTTP, no JSON.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_common::metric::{Labels, METRIC_NAME, is_stale};
use promql_parser::label::{MatchOp as ParsedOp, Matcher};
use promql_parser::parser::{AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector};

use super::limits::Budget;
use super::{QueryError, aggregate, binary, functions, labels};
use crate::store::{LabelMatcher, MatchOp, Sample, SeriesRef, Storage};

/// One series and its points: at evaluation steps for instant vectors, at
/// sample times for range vectors. Points are in ascending time order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub labels: Arc<Labels>,
    pub points: Vec<Sample>,
}

/// A node's result over all steps of its evaluator.
#[derive(Debug)]
pub(crate) enum Evaluated {
    /// One value per step (scalars are defined at every step).
    Scalar(Vec<f64>),
    /// Series with a point at some of the steps.
    Vector(Vec<Series>),
    /// A range vector: raw samples (or subquery points) per series. Only
    /// produced where the expression's own type is a range vector.
    Matrix(Vec<Series>),
    String(String),
}

impl Evaluated {
    pub(crate) fn sample_count(&self) -> usize {
        match self {
            Evaluated::Scalar(values) => values.len(),
            Evaluated::Vector(series) | Evaluated::Matrix(series) => series.iter().map(|s| s.points.len()).sum(),
            Evaluated::String(_) => 0,
        }
    }

    pub(crate) fn into_vector(self) -> Result<Vec<Series>, QueryError> {
        match self {
            Evaluated::Vector(series) => Ok(series),
            other => Err(type_mismatch("instant vector", &other)),
        }
    }

    pub(crate) fn into_scalar(self) -> Result<Vec<f64>, QueryError> {
        match self {
            Evaluated::Scalar(values) => Ok(values),
            other => Err(type_mismatch("scalar", &other)),
        }
    }

    pub(crate) fn into_string(self) -> Result<String, QueryError> {
        match self {
            Evaluated::String(value) => Ok(value),
            other => Err(type_mismatch("string", &other)),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Evaluated::Scalar(_) => "scalar",
            Evaluated::Vector(_) => "instant vector",
            Evaluated::Matrix(_) => "range vector",
            Evaluated::String(_) => "string",
        }
    }
}

// The parser type-checks every expression, so this only fires on a bug.
fn type_mismatch(expected: &str, got: &Evaluated) -> QueryError {
    QueryError::Execution(format!("internal error: expected {expected}, evaluated {}", got.type_name()))
}

pub(crate) fn duplicate_labelset() -> QueryError {
    QueryError::Execution("vector cannot contain metrics with the same labelset".into())
}

/// What one query shares across all its (sub)evaluators.
pub(crate) struct QueryContext<'a> {
    pub store: &'a dyn Storage,
    pub lookback_ms: i64,
    /// The query's own start and end, for `@ start()` and `@ end()`.
    pub query_start_ms: i64,
    pub query_end_ms: i64,
    /// Step of subqueries written without one (`x[1h:]`).
    pub default_subquery_step_ms: i64,
    pub max_series: usize,
    pub budget: Budget,
}

/// Evaluates expressions at the steps `start, start + interval, …, end`.
#[derive(Clone, Copy)]
pub(crate) struct Evaluator<'a> {
    pub ctx: &'a QueryContext<'a>,
    pub start: i64,
    pub end: i64,
    pub interval: i64,
}

/// What a vector selector yields per step.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SelectorValue {
    Sample,
    /// The selected sample's own timestamp in seconds, for `timestamp()`.
    Timestamp,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn steps(&self) -> usize {
        usize::try_from((self.end - self.start) / self.interval + 1).unwrap_or(0)
    }

    pub(crate) fn step_time(&self, step: usize) -> i64 {
        self.start + step as i64 * self.interval
    }

    /// The step a point of an instant-vector result belongs to.
    pub(crate) fn step_of(&self, timestamp_ms: i64) -> usize {
        usize::try_from((timestamp_ms - self.start) / self.interval).unwrap_or(0)
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.ctx.budget
    }

    /// Capacity hint for one series' points: the step count, bounded so a
    /// long subquery cannot reserve memory it will never fill.
    pub(crate) fn points_hint(&self) -> usize {
        self.steps().min(1024)
    }

    pub(crate) fn eval(&self, expr: &Expr) -> Result<Evaluated, QueryError> {
        self.ctx.budget.check_deadline()?;
        let held_before = self.ctx.budget.current();
        let result = if self.start != self.end && !is_literal(expr) && is_step_invariant(expr) {
            self.eval_step_invariant(expr)?
        } else {
            self.eval_node(expr)?
        };
        // The children's results are gone now; only this node's result is held.
        self.ctx.budget.set_current(held_before + result.sample_count());
        Ok(result)
    }

    fn eval_node(&self, expr: &Expr) -> Result<Evaluated, QueryError> {
        match expr {
            Expr::Paren(paren) => self.eval(&paren.expr),
            Expr::NumberLiteral(number) => {
                self.ctx.budget.take(self.steps())?;
                Ok(Evaluated::Scalar(vec![number.val; self.steps()]))
            }
            Expr::StringLiteral(string) => Ok(Evaluated::String(string.val.clone())),
            Expr::Unary(unary) => self.eval_negation(&unary.expr),
            Expr::VectorSelector(selector) => {
                Ok(Evaluated::Vector(self.eval_vector_selector(selector, SelectorValue::Sample)?))
            }
            Expr::MatrixSelector(matrix) => Ok(Evaluated::Matrix(self.eval_matrix_selector(matrix)?)),
            Expr::Subquery(subquery) => {
                let (series, _) = self.eval_subquery(subquery)?;
                Ok(Evaluated::Matrix(series))
            }
            Expr::Aggregate(aggregate) => aggregate::eval(self, aggregate),
            Expr::Binary(binary) => binary::eval(self, binary),
            Expr::Call(call) => functions::eval_call(self, call),
            Expr::Extension(_) => Err(QueryError::Unsupported("extension expressions".into())),
        }
    }

    /// Evaluates an expression whose value does not depend on the step once,
    /// at the first step, and repeats it: `rate(x[5m] @ 100)` over a day of
    /// steps is computed once.
    fn eval_step_invariant(&self, expr: &Expr) -> Result<Evaluated, QueryError> {
        let single = Evaluator { end: self.start, ..*self };
        let steps = self.steps();
        Ok(match single.eval(expr)? {
            Evaluated::Scalar(values) => {
                let value = values.first().copied().unwrap_or(f64::NAN);
                self.ctx.budget.take(steps.saturating_sub(1))?;
                Evaluated::Scalar(vec![value; steps])
            }
            Evaluated::Vector(series) => {
                let mut out = Vec::with_capacity(series.len());
                for s in series {
                    let Some(first) = s.points.first() else { continue };
                    self.ctx.budget.take(steps.saturating_sub(1))?;
                    let points = (0..steps).map(|k| Sample { timestamp_ms: self.step_time(k), value: first.value });
                    out.push(Series { labels: s.labels, points: points.collect() });
                }
                Evaluated::Vector(out)
            }
            other => other,
        })
    }

    fn eval_negation(&self, inner: &Expr) -> Result<Evaluated, QueryError> {
        match self.eval(inner)? {
            Evaluated::Scalar(values) => Ok(Evaluated::Scalar(values.into_iter().map(|v| -v).collect())),
            Evaluated::Vector(series) => {
                let series: Vec<Series> = series
                    .into_iter()
                    .map(|s| Series {
                        labels: Arc::new(labels::without_name(&s.labels)),
                        points: s.points.into_iter().map(|p| Sample { value: -p.value, ..p }).collect(),
                    })
                    .collect();
                // Prometheus checks the whole result here, not step by step.
                check_unique_labels(&series)?;
                Ok(Evaluated::Vector(series))
            }
            other => Err(type_mismatch("scalar or instant vector", &other)),
        }
    }

    /// The `@` time of a selector or subquery, if it has one.
    pub(crate) fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            None => None,
            Some(AtModifier::At(time)) => Some(system_time_ms(*time)),
            Some(AtModifier::Start) => Some(self.ctx.query_start_ms),
            Some(AtModifier::End) => Some(self.ctx.query_end_ms),
        }
    }

    /// Series selected by a vector selector, in label order.
    pub(crate) fn select(&self, selector: &VectorSelector) -> Result<Vec<(SeriesRef, Arc<Labels>)>, QueryError> {
        let alternatives = selector_matchers(selector)?;
        let found = match &alternatives[..] {
            [matchers] => self.ctx.store.select(matchers),
            _ => {
                // `{a="1" or b="2"}`: the union of each alternative's series.
                let mut union: Vec<(SeriesRef, Arc<Labels>)> =
                    alternatives.iter().flat_map(|matchers| self.ctx.store.select(matchers)).collect();
                union.sort_by(|a, b| a.1.cmp(&b.1));
                union.dedup_by_key(|(series, _)| *series);
                union
            }
        };
        if found.len() > self.ctx.max_series {
            return Err(QueryError::TooManySeries { found: found.len(), limit: self.ctx.max_series });
        }
        Ok(found)
    }

    /// An instant-vector selector at every step: the latest sample at or
    /// before the step (shifted by `offset`, or pinned by `@`) no older than
    /// the lookback delta, unless it is a staleness marker.
    pub(crate) fn eval_vector_selector(
        &self,
        selector: &VectorSelector,
        yields: SelectorValue,
    ) -> Result<Vec<Series>, QueryError> {
        let at = self.at_ms(&selector.at);
        let offset = offset_ms(&selector.offset);
        let reference = |ts: i64| at.unwrap_or(ts).saturating_sub(offset);
        let (first, last) = (reference(self.start), reference(self.end));
        let lookback = self.ctx.lookback_ms;
        let mut out = Vec::new();
        let mut raw = Vec::new();
        for (series, labels) in self.select(selector)? {
            self.ctx.budget.check_deadline()?;
            raw.clear();
            self.ctx.store.read(series, first.saturating_sub(lookback), last, &mut raw);
            self.ctx.budget.note_read(raw.len())?;
            self.ctx.budget.take(raw.len())?;
            let mut points = Vec::with_capacity(self.points_hint());
            let mut next = 0; // index of the first raw sample after the reference time
            for step in 0..self.steps() {
                let ts = self.step_time(step);
                let reference = reference(ts);
                while next < raw.len() && raw[next].timestamp_ms <= reference {
                    next += 1;
                }
                let Some(sample) = next.checked_sub(1).and_then(|i| raw.get(i)) else { continue };
                if sample.timestamp_ms < reference.saturating_sub(lookback) || is_stale(sample.value) {
                    continue;
                }
                let value = match yields {
                    SelectorValue::Sample => sample.value,
                    SelectorValue::Timestamp => sample.timestamp_ms as f64 / 1000.0,
                };
                points.push(Sample { timestamp_ms: ts, value });
            }
            self.ctx.budget.give_back(raw.len());
            self.ctx.budget.take(points.len())?;
            if !points.is_empty() {
                out.push(Series { labels, points });
            }
        }
        Ok(out)
    }

    /// A range-vector selector as a value (an instant query such as `x[5m]`):
    /// the samples in `[t - range, t]`, staleness markers dropped.
    fn eval_matrix_selector(&self, matrix: &MatrixSelector) -> Result<Vec<Series>, QueryError> {
        let reference = self.at_ms(&matrix.vs.at).unwrap_or(self.start).saturating_sub(offset_ms(&matrix.vs.offset));
        let range = duration_ms(matrix.range);
        let mut out = Vec::new();
        for (series, labels) in self.select(&matrix.vs)? {
            self.ctx.budget.check_deadline()?;
            let mut points = Vec::new();
            self.ctx.store.read(series, reference.saturating_sub(range), reference, &mut points);
            self.ctx.budget.note_read(points.len())?;
            points.retain(|s| !is_stale(s.value));
            self.ctx.budget.take(points.len())?;
            if !points.is_empty() {
                out.push(Series { labels, points });
            }
        }
        Ok(out)
    }

    /// Evaluates a subquery's inner expression at its own steps: multiples of
    /// its step covering every window the outer steps ask for. Returns the
    /// series and the window geometry.
    pub(crate) fn eval_subquery(&self, subquery: &SubqueryExpr) -> Result<(Vec<Series>, RangeWindow), QueryError> {
        let window = RangeWindow {
            at: self.at_ms(&subquery.at),
            offset: offset_ms(&subquery.offset),
            range: duration_ms(subquery.range),
        };
        let step = subquery.step.map(duration_ms).filter(|s| *s > 0).unwrap_or(self.ctx.default_subquery_step_ms);
        let first = window.reference(self.start).saturating_sub(window.range);
        let inner_start = first.div_euclid(step).saturating_mul(step);
        let inner_start = if inner_start < first { inner_start.saturating_add(step) } else { inner_start };
        let inner_end = window.reference(self.end);
        if inner_start > inner_end {
            return Ok((Vec::new(), window));
        }
        let inner = Evaluator { ctx: self.ctx, start: inner_start, end: inner_end, interval: step };
        let series = inner.eval(&subquery.expr)?.into_vector()?;
        Ok((series, window))
    }

    /// Runs `per_step` for every step with the samples of `samples` that fall
    /// in that step's window `[ref - range, ref]`. The window slides forward
    /// over one buffer; nothing is copied or re-read.
    pub(crate) fn for_each_window(
        &self,
        samples: &[Sample],
        window: RangeWindow,
        mut per_step: impl FnMut(usize, std::ops::Range<usize>, i64) -> Result<(), QueryError>,
    ) -> Result<(), QueryError> {
        let (mut lo, mut hi) = (0, 0);
        for step in 0..self.steps() {
            let end = window.reference(self.step_time(step));
            let start = end.saturating_sub(window.range);
            while hi < samples.len() && samples[hi].timestamp_ms <= end {
                hi += 1;
            }
            while lo < hi && samples[lo].timestamp_ms < start {
                lo += 1;
            }
            if lo < hi {
                per_step(step, lo..hi, end)?;
            }
        }
        Ok(())
    }
}

/// Where the windows of a range selector or subquery lie relative to a step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RangeWindow {
    pub at: Option<i64>,
    pub offset: i64,
    pub range: i64,
}

impl RangeWindow {
    pub(crate) fn for_matrix(ev: &Evaluator<'_>, matrix: &MatrixSelector) -> Self {
        Self { at: ev.at_ms(&matrix.vs.at), offset: offset_ms(&matrix.vs.offset), range: duration_ms(matrix.range) }
    }

    /// The end of the window evaluated at step time `ts`.
    pub(crate) fn reference(&self, ts: i64) -> i64 {
        self.at.unwrap_or(ts).saturating_sub(self.offset)
    }
}

/// Collects output series by label set, refusing two points of one label set
/// at one step — Prometheus's "vector cannot contain metrics with the same
/// labelset", checked step by step.
pub(crate) struct SeriesBuilder<'b> {
    budget: &'b Budget,
    index: HashMap<Arc<Labels>, usize>,
    series: Vec<Series>,
}

impl<'b> SeriesBuilder<'b> {
    pub(crate) fn new(budget: &'b Budget) -> Self {
        Self { budget, index: HashMap::new(), series: Vec::new() }
    }

    pub(crate) fn slot(&mut self, labels: Arc<Labels>) -> usize {
        if let Some(&slot) = self.index.get(&labels) {
            return slot;
        }
        let slot = self.series.len();
        self.index.insert(Arc::clone(&labels), slot);
        self.series.push(Series { labels, points: Vec::new() });
        slot
    }

    /// Whether `slot` already has a point at `ts`.
    pub(crate) fn has_point_at(&self, slot: usize, ts: i64) -> bool {
        self.series.get(slot).and_then(|s| s.points.last()).is_some_and(|p| p.timestamp_ms == ts)
    }

    pub(crate) fn push(&mut self, slot: usize, ts: i64, value: f64) -> Result<(), QueryError> {
        if self.has_point_at(slot, ts) {
            return Err(duplicate_labelset());
        }
        self.budget.take(1)?;
        if let Some(series) = self.series.get_mut(slot) {
            series.points.push(Sample { timestamp_ms: ts, value });
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Vec<Series> {
        self.series.into_iter().filter(|s| !s.points.is_empty()).collect()
    }
}

/// Per-step access to the points of a list of series: `gather(ts)` must be
/// called for every step in ascending order.
pub(crate) struct StepCursor {
    next: Vec<usize>,
}

impl StepCursor {
    pub(crate) fn new(series: usize) -> Self {
        Self { next: vec![0; series] }
    }

    /// Fills `out` with `(series index, value)` of the series with a point at `ts`.
    pub(crate) fn gather(&mut self, series: &[Series], ts: i64, out: &mut Vec<(usize, f64)>) {
        out.clear();
        for (i, (s, next)) in series.iter().zip(self.next.iter_mut()).enumerate() {
            if let Some(point) = s.points.get(*next)
                && point.timestamp_ms == ts
            {
                out.push((i, point.value));
                *next += 1;
            }
        }
    }
}

/// Combines series whose label sets became equal (say, after dropping the
/// metric name). That is allowed as long as they never have a point at the
/// same step, which is how Prometheus checks it.
pub(crate) fn merge_same_labels(series: Vec<Series>) -> Result<Vec<Series>, QueryError> {
    let mut index: HashMap<Arc<Labels>, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    for s in series {
        match index.get(&s.labels) {
            None => {
                index.insert(Arc::clone(&s.labels), out.len());
                out.push(s);
            }
            Some(&i) => {
                let Some(existing) = out.get_mut(i) else { continue };
                existing.points = merge_points(&existing.points, &s.points)?;
            }
        }
    }
    Ok(out)
}

fn merge_points(a: &[Sample], b: &[Sample]) -> Result<Vec<Sample>, QueryError> {
    let mut out = Vec::with_capacity(a.len() + b.len());
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
            std::cmp::Ordering::Equal => return Err(duplicate_labelset()),
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    Ok(out)
}

/// Refuses a result in which two series have the same labels at all.
pub(crate) fn check_unique_labels(series: &[Series]) -> Result<(), QueryError> {
    let mut seen = std::collections::HashSet::with_capacity(series.len());
    for s in series {
        if !seen.insert(&*s.labels) {
            return Err(duplicate_labelset());
        }
    }
    Ok(())
}

/// Functions whose result depends on the evaluation time even when their
/// arguments do not, so they are never evaluated once for all steps.
pub(crate) const TIME_DEPENDENT_FUNCTIONS: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
];

fn is_literal(expr: &Expr) -> bool {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => true,
        Expr::Paren(paren) => is_literal(&paren.expr),
        _ => false,
    }
}

/// Whether an expression has the same value at every step: every selector
/// and subquery in it is pinned with `@` (outside pinned subqueries), and no
/// time-dependent function is called.
pub(crate) fn is_step_invariant(expr: &Expr) -> bool {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => true,
        Expr::VectorSelector(selector) => selector.at.is_some(),
        Expr::MatrixSelector(matrix) => matrix.vs.at.is_some(),
        Expr::Subquery(subquery) => subquery.at.is_some(),
        Expr::Paren(paren) => is_step_invariant(&paren.expr),
        Expr::Unary(unary) => is_step_invariant(&unary.expr),
        Expr::Binary(binary) => is_step_invariant(&binary.lhs) && is_step_invariant(&binary.rhs),
        // Prometheus 2.42 ignores the parameter here, so `topk(scalar(x), y @ 5)`
        // would use the first step's k at every step; Herd takes k per step.
        Expr::Aggregate(aggregate) => {
            is_step_invariant(&aggregate.expr) && aggregate.param.as_deref().is_none_or(is_step_invariant)
        }
        Expr::Call(call) => {
            !TIME_DEPENDENT_FUNCTIONS.contains(&call.func.name) && call.args.args.iter().all(|a| is_step_invariant(a))
        }
        Expr::Extension(_) => false,
    }
}

pub(crate) fn unwrap_parens(mut expr: &Expr) -> &Expr {
    while let Expr::Paren(paren) = expr {
        expr = &paren.expr;
    }
    expr
}

pub(crate) fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => -duration_ms(*d),
        None => 0,
    }
}

/// Milliseconds of a parsed duration, clamped so step arithmetic on it
/// cannot overflow (the clamp is far beyond any data: ~73 million years).
pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4).min(i64::MAX / 4)
}

pub(crate) fn system_time_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(d),
        Err(e) => -duration_ms(e.duration()),
    }
}

/// The store matchers of a selector: one set, or one per `or` alternative.
pub(crate) fn selector_matchers(selector: &VectorSelector) -> Result<Vec<Vec<LabelMatcher>>, QueryError> {
    let mut base = Vec::with_capacity(selector.matchers.matchers.len() + 1);
    if let Some(name) = &selector.name {
        base.push(convert_matcher_parts(MatchOp::Equal, METRIC_NAME, name)?);
    }
    for matcher in &selector.matchers.matchers {
        base.push(convert_matcher(matcher)?);
    }
    if selector.matchers.or_matchers.is_empty() {
        return Ok(vec![base]);
    }
    selector
        .matchers
        .or_matchers
        .iter()
        .map(|alternative| {
            let mut matchers = base.clone();
            for matcher in alternative {
                matchers.push(convert_matcher(matcher)?);
            }
            Ok(matchers)
        })
        .collect()
}

fn convert_matcher(matcher: &Matcher) -> Result<LabelMatcher, QueryError> {
    let op = match matcher.op {
        ParsedOp::Equal => MatchOp::Equal,
        ParsedOp::NotEqual => MatchOp::NotEqual,
        ParsedOp::Re(_) => MatchOp::RegexMatch,
        ParsedOp::NotRe(_) => MatchOp::RegexNoMatch,
    };
    convert_matcher_parts(op, &matcher.name, &matcher.value)
}

fn convert_matcher_parts(op: MatchOp, name: &str, value: &str) -> Result<LabelMatcher, QueryError> {
    LabelMatcher::new(op, name, value)
        // Go's RE2 takes a `{` that starts no repetition as a literal; Rust's
        // regex refuses it. The parser accepted it, so escape and retry.
        .or_else(|_| LabelMatcher::new(op, name, escape_literal_braces(value)))
        .map_err(|e| QueryError::Parse(format!("invalid regular expression {value:?}: {e}")))
}

/// Escapes each `{` that does not open a repetition like `{2}` or `{2,5}`.
fn escape_literal_braces(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut rest = pattern;
    while let Some(at) = rest.find('{') {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let after = &from[1..];
        let is_repetition = after.find('}').is_some_and(|close| {
            let inner = &after[..close];
            let mut parts = inner.splitn(2, ',');
            let min = parts.next().unwrap_or("");
            let max = parts.next();
            !min.is_empty()
                && min.bytes().all(|b| b.is_ascii_digit())
                && max.is_none_or(|m| m.bytes().all(|b| b.is_ascii_digit()))
        });
        let preceded_by_escape = before.ends_with('\\');
        if !is_repetition && !preceded_by_escape {
            out.push('\\');
        }
        out.push('{');
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_braces_are_escaped_but_repetitions_kept() {
        assert_eq!(escape_literal_braces("a{b}c"), r"a\{b}c");
        assert_eq!(escape_literal_braces("a{2}"), "a{2}");
        assert_eq!(escape_literal_braces("a{2,}b{1,3}"), "a{2,}b{1,3}");
        assert_eq!(escape_literal_braces(r"a\{b}"), r"a\{b}");
    }

    #[test]
    fn merging_refuses_two_points_at_one_step() {
        let p = |t| Sample { timestamp_ms: t, value: 1.0 };
        let series =
            |ts: &[i64]| Series { labels: Arc::new(Labels::default()), points: ts.iter().map(|&t| p(t)).collect() };
        let merged = merge_same_labels(vec![series(&[1, 3]), series(&[2])]).unwrap();
        assert_eq!(merged[0].points.iter().map(|p| p.timestamp_ms).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(merge_same_labels(vec![series(&[1, 3]), series(&[3])]).is_err());
    }
}
