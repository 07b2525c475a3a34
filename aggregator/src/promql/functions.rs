//! PromQL functions: those over range vectors (`rate`, `*_over_time`, …),
//! evaluated per series on a window sliding over one read of its samples,
//! and those over instant vectors and scalars. The arithmetic follows
//! Prometheus 2.42 (extrapolation in `rate`, Kahan summation in
//! `sum_over_time`, bucket interpolation in `histogram_quantile`).
//!
//! Native-histogram functions return nothing: Herd stores float samples only,
//! which is what Prometheus 2.42 returns for float samples too.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use herd_common::metric::{Labels, METRIC_NAME, is_stale};
use promql_parser::label::MatchOp as ParsedOp;
use promql_parser::parser::{Call, Expr};
use regex::Regex;

use super::aggregate::quantile;
use super::eval::{
    Evaluated, Evaluator, RangeWindow, SelectorValue, Series, SeriesBuilder, StepCursor, check_unique_labels,
    merge_same_labels, unwrap_parens,
};
use super::{QueryError, labels};
use crate::store::Sample;

pub(crate) fn eval_call(ev: &Evaluator<'_>, call: &Call) -> Result<Evaluated, QueryError> {
    let name = call.func.name;
    if let Some(function) = RangeFunction::from_name(name) {
        return eval_range_function(ev, call, function);
    }
    let steps = ev.steps();
    match name {
        "time" => Ok(Evaluated::Scalar((0..steps).map(|k| ev.step_time(k) as f64 / 1000.0).collect())),
        "pi" => Ok(Evaluated::Scalar(vec![std::f64::consts::PI; steps])),
        "vector" => {
            let values = ev.eval(arg(call, 0)?)?.into_scalar()?;
            let points = values.iter().enumerate().map(|(k, &value)| Sample { timestamp_ms: ev.step_time(k), value });
            Ok(Evaluated::Vector(vec![Series { labels: Arc::new(Labels::default()), points: points.collect() }]))
        }
        "scalar" => {
            let input = ev.eval(arg(call, 0)?)?.into_vector()?;
            // NaN unless exactly one element at the step.
            let mut count = vec![0u32; steps];
            let mut value = vec![f64::NAN; steps];
            for point in input.iter().flat_map(|s| &s.points) {
                let step = ev.step_of(point.timestamp_ms);
                count[step] += 1;
                value[step] = point.value;
            }
            Ok(Evaluated::Scalar(count.iter().zip(value).map(|(&n, v)| if n == 1 { v } else { f64::NAN }).collect()))
        }
        "timestamp" => {
            let argument = arg(call, 0)?;
            let input = match unwrap_parens(argument) {
                // The sample's own time, not the step's.
                Expr::VectorSelector(selector) => ev.eval_vector_selector(selector, SelectorValue::Timestamp)?,
                _ => {
                    let mut input = ev.eval(argument)?.into_vector()?;
                    for point in input.iter_mut().flat_map(|s| s.points.iter_mut()) {
                        point.value = point.timestamp_ms as f64 / 1000.0;
                    }
                    input
                }
            };
            map_values(ev, input, true, |_, v| Some(v)).map(Evaluated::Vector)
        }
        "absent" => {
            let argument = arg(call, 0)?;
            let input = ev.eval(argument)?.into_vector()?;
            let mut present = vec![false; steps];
            for point in input.iter().flat_map(|s| &s.points) {
                present[ev.step_of(point.timestamp_ms)] = true;
            }
            Ok(Evaluated::Vector(absent_series(ev, &present, absent_labels(unwrap_parens(argument)))))
        }
        "sort" | "sort_desc" => {
            let mut input = ev.eval(arg(call, 0)?)?.into_vector()?;
            // Order only exists in an instant result; a range result is sorted by labels.
            if steps == 1 {
                let ascending = name == "sort";
                input.sort_by(|a, b| {
                    let (x, y) = (first_value(a), first_value(b));
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => Ordering::Equal,
                        (true, false) => Ordering::Greater,
                        (false, true) => Ordering::Less,
                        (false, false) if ascending => x.total_cmp(&y),
                        (false, false) => y.total_cmp(&x),
                    }
                });
            }
            Ok(Evaluated::Vector(input))
        }
        "label_replace" => label_replace(ev, call).map(Evaluated::Vector),
        "label_join" => label_join(ev, call).map(Evaluated::Vector),
        "histogram_quantile" => histogram_quantile(ev, call).map(Evaluated::Vector),
        "histogram_count" | "histogram_sum" | "histogram_fraction" | "histogram_avg" | "histogram_stddev"
        | "histogram_stdvar" => {
            // Arguments are still evaluated: their errors are the query's errors.
            for argument in &call.args.args {
                ev.eval(argument)?;
            }
            Ok(Evaluated::Vector(Vec::new()))
        }
        "round" => {
            let input = ev.eval(arg(call, 0)?)?.into_vector()?;
            let to_nearest = match call.args.args.get(1) {
                Some(argument) => ev.eval(argument)?.into_scalar()?,
                None => vec![1.0; steps],
            };
            map_values(ev, input, true, |step, v| {
                // Multiplying by the inverse is kinder to float precision (as Prometheus).
                let inverse = 1.0 / to_nearest[step];
                Some((v * inverse + 0.5).floor() / inverse)
            })
            .map(Evaluated::Vector)
        }
        "clamp" => {
            let input = ev.eval(arg(call, 0)?)?.into_vector()?;
            let min = ev.eval(arg(call, 1)?)?.into_scalar()?;
            let max = ev.eval(arg(call, 2)?)?.into_scalar()?;
            map_values(ev, input, true, |step, v| {
                (max[step] >= min[step] || min[step].is_nan() || max[step].is_nan())
                    .then(|| go_max(min[step], go_min(max[step], v)))
            })
            .map(Evaluated::Vector)
        }
        "clamp_min" | "clamp_max" => {
            let input = ev.eval(arg(call, 0)?)?.into_vector()?;
            let bound = ev.eval(arg(call, 1)?)?.into_scalar()?;
            let is_min = name == "clamp_min";
            map_values(ev, input, true, |step, v| {
                Some(if is_min { go_max(bound[step], v) } else { go_min(bound[step], v) })
            })
            .map(Evaluated::Vector)
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute" | "month" | "year" => {
            let part = DatePart::from_name(name);
            match call.args.args.first() {
                Some(argument) => {
                    let input = ev.eval(argument)?.into_vector()?;
                    map_values(ev, input, true, |_, v| Some(part.of_seconds(v))).map(Evaluated::Vector)
                }
                None => {
                    // Without an argument: the step's own time, as `vector(time())`.
                    let points = (0..steps).map(|k| {
                        let ts = ev.step_time(k);
                        Sample { timestamp_ms: ts, value: part.of_seconds((ts / 1000) as f64) }
                    });
                    Ok(Evaluated::Vector(vec![Series {
                        labels: Arc::new(Labels::default()),
                        points: points.collect(),
                    }]))
                }
            }
        }
        _ => match math_function(name) {
            Some(f) => {
                let input = ev.eval(arg(call, 0)?)?.into_vector()?;
                map_values(ev, input, true, |_, v| Some(f(v))).map(Evaluated::Vector)
            }
            None => Err(QueryError::Unsupported(format!("function {name}()"))),
        },
    }
}

fn arg(call: &Call, index: usize) -> Result<&Expr, QueryError> {
    call.args.args.get(index).map(|a| &**a).ok_or_else(|| {
        QueryError::Execution(format!("function {}() is missing argument {}", call.func.name, index + 1))
    })
}

fn first_value(series: &Series) -> f64 {
    series.points.first().map_or(f64::NAN, |p| p.value)
}

/// Go's math.Max/Min: NaN wins (Rust's `f64::max` would drop it).
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}

fn math_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "sgn" => |v: f64| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v // 0 and NaN stay as they are
            }
        },
        _ => return None,
    })
}

/// Applies `f(step, value)` to every point (`None` drops the point), drops
/// the metric name if asked, and merges series that end up with equal labels.
fn map_values(
    ev: &Evaluator<'_>,
    input: Vec<Series>,
    drop_name: bool,
    mut f: impl FnMut(usize, f64) -> Option<f64>,
) -> Result<Vec<Series>, QueryError> {
    let mut out = Vec::with_capacity(input.len());
    for series in input {
        let labels = if drop_name { Arc::new(labels::without_name(&series.labels)) } else { series.labels };
        let points: Vec<Sample> = series
            .points
            .into_iter()
            .filter_map(|p| f(ev.step_of(p.timestamp_ms), p.value).map(|value| Sample { value, ..p }))
            .collect();
        if !points.is_empty() {
            out.push(Series { labels, points });
        }
    }
    merge_same_labels(out)
}

/// Labels of `absent()`'s result: those the selector pins with one `=`.
fn absent_labels(expr: &Expr) -> Arc<Labels> {
    let selector = match expr {
        Expr::VectorSelector(selector) => selector,
        Expr::MatrixSelector(matrix) => &matrix.vs,
        _ => return Arc::new(Labels::default()),
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut pinned: Vec<&str> = Vec::new();
    for matcher in selector.matchers.matchers.iter().filter(|m| m.name != METRIC_NAME) {
        // `x{job="a",job="b"}` yields no job: a second matcher on a name removes it.
        if matcher.op == ParsedOp::Equal && !pinned.contains(&matcher.name.as_str()) {
            pairs.retain(|(n, _)| *n != matcher.name);
            pairs.push((matcher.name.clone(), matcher.value.clone()));
            pinned.push(&matcher.name);
        } else {
            pairs.retain(|(n, _)| *n != matcher.name);
        }
    }
    Arc::new(Labels::from_pairs(pairs))
}

/// A series of 1 at every step not marked present, or nothing if all are.
fn absent_series(ev: &Evaluator<'_>, present: &[bool], labels: Arc<Labels>) -> Vec<Series> {
    let points: Vec<Sample> = present
        .iter()
        .enumerate()
        .filter(|(_, present)| !**present)
        .map(|(k, _)| Sample { timestamp_ms: ev.step_time(k), value: 1.0 })
        .collect();
    if points.is_empty() { Vec::new() } else { vec![Series { labels, points }] }
}

fn string_arg(ev: &Evaluator<'_>, call: &Call, index: usize) -> Result<String, QueryError> {
    ev.eval(arg(call, index)?)?.into_string()
}

fn label_replace(ev: &Evaluator<'_>, call: &Call) -> Result<Vec<Series>, QueryError> {
    let input = ev.eval(arg(call, 0)?)?.into_vector()?;
    let destination = string_arg(ev, call, 1)?;
    let replacement = string_arg(ev, call, 2)?;
    let source = string_arg(ev, call, 3)?;
    let pattern = string_arg(ev, call, 4)?;
    let regex = Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|_| QueryError::Execution(format!("invalid regular expression in label_replace(): {pattern}")))?;
    if !labels::is_valid_name(&destination) {
        return Err(QueryError::Execution(format!("invalid destination label name in label_replace(): {destination}")));
    }
    let mut out = Vec::with_capacity(input.len());
    let mut expanded = String::new();
    for series in input {
        let value = series.labels.get(&source).unwrap_or("");
        let labels = match regex.captures(value) {
            Some(captures) => {
                expanded.clear();
                captures.expand(&replacement, &mut expanded);
                Arc::new(labels::set(&series.labels, &destination, &expanded))
            }
            None => series.labels,
        };
        out.push(Series { labels, points: series.points });
    }
    merge_same_labels(out)
}

fn label_join(ev: &Evaluator<'_>, call: &Call) -> Result<Vec<Series>, QueryError> {
    let input = ev.eval(arg(call, 0)?)?.into_vector()?;
    let destination = string_arg(ev, call, 1)?;
    let separator = string_arg(ev, call, 2)?;
    let mut sources = Vec::new();
    for index in 3..call.args.args.len() {
        let source = string_arg(ev, call, index)?;
        if !labels::is_valid_name(&source) {
            return Err(QueryError::Execution(format!("invalid source label name in label_join(): {source}")));
        }
        sources.push(source);
    }
    if !labels::is_valid_name(&destination) {
        return Err(QueryError::Execution(format!("invalid destination label name in label_join(): {destination}")));
    }
    let mut out = Vec::with_capacity(input.len());
    for series in input {
        let joined: Vec<&str> = sources.iter().map(|s| series.labels.get(s).unwrap_or("")).collect();
        let labels = Arc::new(labels::set(&series.labels, &destination, &joined.join(&separator)));
        out.push(Series { labels, points: series.points });
    }
    merge_same_labels(out)
}

/// Parses a bucket bound as Go's ParseFloat does for the forms exporters write.
fn parse_bound(text: &str) -> Option<f64> {
    match text.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn histogram_quantile(ev: &Evaluator<'_>, call: &Call) -> Result<Vec<Series>, QueryError> {
    let q = ev.eval(arg(call, 0)?)?.into_scalar()?;
    let input = ev.eval(arg(call, 1)?)?.into_vector()?;
    let le = [String::from("le")];
    // Buckets of one histogram share every label but `le` (name included).
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut group_labels: Vec<Arc<Labels>> = Vec::new();
    let mut bucket_of: Vec<Option<(usize, f64)>> = Vec::with_capacity(input.len());
    let mut key = Vec::new();
    for series in &input {
        let Some(bound) = series.labels.get("le").and_then(parse_bound) else {
            bucket_of.push(None);
            continue;
        };
        labels::key_without(&series.labels, &le, false, &mut key);
        let group = match index.get(&key) {
            Some(&group) => group,
            None => {
                index.insert(key.clone(), group_labels.len());
                group_labels.push(Arc::new(labels::remove(&series.labels, &le, true)));
                group_labels.len() - 1
            }
        };
        bucket_of.push(Some((group, bound)));
    }
    let mut buckets: Vec<Vec<(f64, f64)>> = vec![Vec::new(); group_labels.len()];
    let mut bucket_step = vec![0usize; group_labels.len()];
    let mut slots: Vec<Option<usize>> = vec![None; group_labels.len()];
    let mut builder = SeriesBuilder::new(ev.budget());
    let mut cursor = StepCursor::new(input.len());
    let (mut present, mut touched) = (Vec::new(), Vec::new());
    for step in 0..ev.steps() {
        ev.budget().check_deadline()?;
        let ts = ev.step_time(step);
        cursor.gather(&input, ts, &mut present);
        touched.clear();
        for &(i, count) in &present {
            let Some((group, bound)) = bucket_of[i] else { continue };
            if bucket_step[group] != step + 1 {
                bucket_step[group] = step + 1;
                buckets[group].clear();
                touched.push(group);
            }
            buckets[group].push((bound, count));
        }
        let q = q.get(step).copied().unwrap_or(f64::NAN);
        for &group in &touched {
            let value = bucket_quantile(q, &mut buckets[group]);
            let slot = *slots[group].get_or_insert_with(|| builder.slot(Arc::clone(&group_labels[group])));
            builder.push(slot, ts, value)?;
        }
    }
    Ok(builder.finish())
}

/// The φ-quantile of a classic histogram given as (upper bound, cumulative
/// count) buckets, interpolating linearly within the bucket it falls in.
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Equal bounds written differently ("0.2", "2e-1") are one bucket.
    buckets.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 += later.1;
        }
        same
    });
    // Counts must not decrease with the bound; scrapes racing rule
    // evaluation can break that, so take the running maximum.
    let mut max = f64::NEG_INFINITY;
    for bucket in buckets.iter_mut() {
        if bucket.1 > max {
            max = bucket.1;
        } else if bucket.1 < max {
            bucket.1 = max;
        }
    }
    let n = buckets.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = buckets[n - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = buckets[..n - 1].iter().position(|bucket| bucket.1 >= rank).unwrap_or(n - 1);
    if b == n - 1 {
        return buckets[n - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[derive(Clone, Copy)]
enum DatePart {
    DaysInMonth,
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    Hour,
    Minute,
    Month,
    Year,
}

impl DatePart {
    fn from_name(name: &str) -> Self {
        match name {
            "days_in_month" => DatePart::DaysInMonth,
            "day_of_month" => DatePart::DayOfMonth,
            "day_of_week" => DatePart::DayOfWeek,
            "day_of_year" => DatePart::DayOfYear,
            "hour" => DatePart::Hour,
            "minute" => DatePart::Minute,
            "month" => DatePart::Month,
            _ => DatePart::Year,
        }
    }

    /// The part of the UTC date at Unix time `seconds` (truncated to whole seconds).
    fn of_seconds(self, seconds: f64) -> f64 {
        if !seconds.is_finite() {
            return f64::NAN;
        }
        let Ok(t) = time::OffsetDateTime::from_unix_timestamp(seconds as i64) else { return f64::NAN };
        f64::from(match self {
            DatePart::DaysInMonth => u32::from(t.month().length(t.year())),
            DatePart::DayOfMonth => u32::from(t.day()),
            DatePart::DayOfWeek => u32::from(t.weekday().number_days_from_sunday()),
            DatePart::DayOfYear => u32::from(t.ordinal()),
            DatePart::Hour => u32::from(t.hour()),
            DatePart::Minute => u32::from(t.minute()),
            DatePart::Month => u32::from(u8::from(t.month())),
            DatePart::Year => return f64::from(t.year()),
        })
    }
}

/// Functions over a range vector (a range selector or a subquery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeFunction {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Deriv,
    PredictLinear,
    HoltWinters,
    Changes,
    Resets,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    LastOverTime,
    PresentOverTime,
    StddevOverTime,
    StdvarOverTime,
    QuantileOverTime,
    AbsentOverTime,
}

impl RangeFunction {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "rate" => RangeFunction::Rate,
            "increase" => RangeFunction::Increase,
            "delta" => RangeFunction::Delta,
            "irate" => RangeFunction::Irate,
            "idelta" => RangeFunction::Idelta,
            "deriv" => RangeFunction::Deriv,
            "predict_linear" => RangeFunction::PredictLinear,
            // Prometheus 3 renamed holt_winters; both names are accepted.
            "holt_winters" | "double_exponential_smoothing" => RangeFunction::HoltWinters,
            "changes" => RangeFunction::Changes,
            "resets" => RangeFunction::Resets,
            "avg_over_time" => RangeFunction::AvgOverTime,
            "min_over_time" => RangeFunction::MinOverTime,
            "max_over_time" => RangeFunction::MaxOverTime,
            "sum_over_time" => RangeFunction::SumOverTime,
            "count_over_time" => RangeFunction::CountOverTime,
            "last_over_time" => RangeFunction::LastOverTime,
            "present_over_time" => RangeFunction::PresentOverTime,
            "stddev_over_time" => RangeFunction::StddevOverTime,
            "stdvar_over_time" => RangeFunction::StdvarOverTime,
            "quantile_over_time" => RangeFunction::QuantileOverTime,
            "absent_over_time" => RangeFunction::AbsentOverTime,
            _ => return None,
        })
    }

    /// `rate` and `increase`, which correct for counter resets.
    fn is_counter_rate(self) -> bool {
        matches!(self, RangeFunction::Rate | RangeFunction::Increase)
    }

    fn matrix_argument(self) -> usize {
        if self == RangeFunction::QuantileOverTime { 1 } else { 0 }
    }

    /// The function's value over one window; `None` yields no point.
    /// `args` are the scalar arguments at this step, in call order.
    fn apply(self, window: &[Sample], geometry: &WindowGeometry, args: &[f64]) -> Result<Option<f64>, QueryError> {
        let values = || window.iter().map(|s| s.value);
        let arg = |i: usize| args.get(i).copied().unwrap_or(f64::NAN);
        Ok(match self {
            RangeFunction::Rate => extrapolated_rate(window, geometry, true, true),
            RangeFunction::Increase => extrapolated_rate(window, geometry, true, false),
            RangeFunction::Delta => extrapolated_rate(window, geometry, false, false),
            RangeFunction::Irate => instant_value(window, true),
            RangeFunction::Idelta => instant_value(window, false),
            RangeFunction::Deriv => {
                let first = window.first().map_or(0, |s| s.timestamp_ms);
                (window.len() >= 2).then(|| linear_regression(window, first).0)
            }
            RangeFunction::PredictLinear => (window.len() >= 2).then(|| {
                let (slope, intercept) = linear_regression(window, geometry.eval_ms);
                slope * arg(0) + intercept
            }),
            RangeFunction::HoltWinters => holt_winters(window, arg(0), arg(1))?,
            RangeFunction::Changes => {
                Some(count_pairs(window, |prev, cur| cur != prev && !(cur.is_nan() && prev.is_nan())))
            }
            RangeFunction::Resets => Some(count_pairs(window, |prev, cur| cur < prev)),
            RangeFunction::AvgOverTime => Some(avg_over_time(window)),
            RangeFunction::MinOverTime => values().reduce(|min, v| if v < min || min.is_nan() { v } else { min }),
            RangeFunction::MaxOverTime => values().reduce(|max, v| if v > max || max.is_nan() { v } else { max }),
            RangeFunction::SumOverTime => {
                let (sum, c) = values().fold((0.0, 0.0), |(sum, c), v| kahan_add(v, sum, c));
                Some(if sum.is_infinite() { sum } else { sum + c })
            }
            RangeFunction::CountOverTime => Some(window.len() as f64),
            RangeFunction::LastOverTime => window.last().map(|s| s.value),
            RangeFunction::PresentOverTime | RangeFunction::AbsentOverTime => Some(1.0),
            RangeFunction::StddevOverTime => Some(variance_over_time(window).sqrt()),
            RangeFunction::StdvarOverTime => Some(variance_over_time(window)),
            RangeFunction::QuantileOverTime => {
                let mut values: Vec<f64> = values().collect();
                Some(quantile(arg(0), &mut values))
            }
        })
    }
}

/// Where a window lies, for the functions that care.
struct WindowGeometry {
    range_start: i64,
    range_end: i64,
    range_ms: i64,
    eval_ms: i64,
    /// False when the window is known to hold no counter reset.
    resets_in_window: bool,
}

fn eval_range_function(ev: &Evaluator<'_>, call: &Call, function: RangeFunction) -> Result<Evaluated, QueryError> {
    let matrix_index = function.matrix_argument();
    let mut scalar_args = Vec::new();
    for (i, argument) in call.args.args.iter().enumerate() {
        if i != matrix_index {
            scalar_args.push(ev.eval(argument)?.into_scalar()?);
        }
    }
    let source = unwrap_parens(arg(call, matrix_index)?);
    let keep_name = function == RangeFunction::LastOverTime;
    let absent = function == RangeFunction::AbsentOverTime;
    let mut present = if absent { vec![false; ev.steps()] } else { Vec::new() };
    let mut out = Vec::new();
    let mut step_args = Vec::with_capacity(scalar_args.len());
    let mut per_series = |labels: &Arc<Labels>, samples: &[Sample], window: RangeWindow| -> Result<(), QueryError> {
        let mut points = Vec::new();
        // For rate and increase: resets up to each sample, so a window
        // without one skips the per-sample reset scan (same result, O(1)).
        let resets_so_far: Vec<u32> = if function.is_counter_rate() {
            let mut count = 0;
            std::iter::once(0)
                .chain(samples.windows(2).map(|pair| {
                    count += u32::from(pair[1].value < pair[0].value);
                    count
                }))
                .collect()
        } else {
            Vec::new()
        };
        ev.for_each_window(samples, window, |step, indices, end| {
            let in_window = &samples[indices.clone()];
            let resets_in_window =
                resets_so_far.is_empty() || resets_so_far[indices.end - 1] != resets_so_far[indices.start];
            if absent {
                present[step] = true;
                return Ok(());
            }
            step_args.clear();
            step_args.extend(scalar_args.iter().map(|a| a.get(step).copied().unwrap_or(f64::NAN)));
            let ts = ev.step_time(step);
            let geometry = WindowGeometry {
                range_start: end - window.range,
                range_end: end,
                range_ms: window.range,
                eval_ms: ts,
                resets_in_window,
            };
            if let Some(value) = function.apply(in_window, &geometry, &step_args)? {
                points.push(Sample { timestamp_ms: ts, value });
            }
            Ok(())
        })?;
        ev.budget().take(points.len())?;
        if !points.is_empty() {
            let labels = if keep_name { Arc::clone(labels) } else { Arc::new(labels::without_name(labels)) };
            out.push(Series { labels, points });
        }
        Ok(())
    };
    match source {
        Expr::MatrixSelector(matrix) => {
            let window = RangeWindow::for_matrix(ev, matrix);
            let first = window.reference(ev.start).saturating_sub(window.range);
            let last = window.reference(ev.end);
            let mut raw = Vec::new();
            for (series, labels) in ev.select(&matrix.vs)? {
                ev.budget().check_deadline()?;
                raw.clear();
                ev.ctx.store.read(series, first, last, &mut raw);
                ev.budget().note_read(raw.len())?;
                raw.retain(|s| !is_stale(s.value));
                ev.budget().take(raw.len())?;
                per_series(&labels, &raw, window)?;
                ev.budget().give_back(raw.len());
            }
        }
        Expr::Subquery(subquery) => {
            let (series, window) = ev.eval_subquery(subquery)?;
            for s in &series {
                ev.budget().check_deadline()?;
                per_series(&s.labels, &s.points, window)?;
            }
        }
        _ => return Err(QueryError::Execution(format!("{}() needs a range vector argument", call.func.name))),
    }
    if absent {
        return Ok(Evaluated::Vector(absent_series(ev, &present, absent_labels(source))));
    }
    check_unique_labels(&out)?;
    Ok(Evaluated::Vector(out))
}

/// `rate`, `increase` and `delta`: the change over the window, corrected for
/// counter resets, and extrapolated towards the window's edges when the
/// samples come close enough to them.
fn extrapolated_rate(window: &[Sample], geometry: &WindowGeometry, is_counter: bool, is_rate: bool) -> Option<f64> {
    let (first, last) = (window.first()?, window.last()?);
    if window.len() < 2 {
        return None;
    }
    let mut result = last.value - first.value;
    if is_counter && geometry.resets_in_window {
        let mut previous = first.value;
        for sample in &window[1..] {
            if sample.value < previous {
                result += previous;
            }
            previous = sample.value;
        }
    }
    let mut to_start = (first.timestamp_ms - geometry.range_start) as f64 / 1000.0;
    let to_end = (geometry.range_end - last.timestamp_ms) as f64 / 1000.0;
    let sampled = (last.timestamp_ms - first.timestamp_ms) as f64 / 1000.0;
    let average_gap = sampled / (window.len() - 1) as f64;
    if is_counter && result > 0.0 && first.value >= 0.0 {
        // A counter cannot go below zero: do not extrapolate past that.
        let to_zero = sampled * (first.value / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average_gap * 1.1;
    let mut extrapolated = sampled;
    extrapolated += if to_start < threshold { to_start } else { average_gap / 2.0 };
    extrapolated += if to_end < threshold { to_end } else { average_gap / 2.0 };
    let mut factor = extrapolated / sampled;
    if is_rate {
        factor /= geometry.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples.
fn instant_value(window: &[Sample], is_rate: bool) -> Option<f64> {
    let [.., previous, last] = window else { return None };
    let mut result = if is_rate && last.value < previous.value { last.value } else { last.value - previous.value };
    let interval = last.timestamp_ms - previous.timestamp_ms;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Neumaier's improved Kahan summation step: returns the new sum and compensation.
fn kahan_add(increment: f64, sum: f64, compensation: f64) -> (f64, f64) {
    let t = sum + increment;
    let compensation = if sum.abs() >= increment.abs() {
        compensation + ((sum - t) + increment)
    } else {
        compensation + ((increment - t) + sum)
    };
    (t, compensation)
}

/// Least-squares slope and intercept (at `intercept_ms`) of the window.
fn linear_regression(window: &[Sample], intercept_ms: i64) -> (f64, f64) {
    let mut n = 0.0;
    let (mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let initial = window.first().map_or(0.0, |s| s.value);
    let mut constant = true;
    for (i, sample) in window.iter().enumerate() {
        if constant && i > 0 && sample.value != initial {
            constant = false;
        }
        n += 1.0;
        let x = (sample.timestamp_ms - intercept_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_add(x, sum_x, c_x);
        (sum_y, c_y) = kahan_add(sample.value, sum_y, c_y);
        (sum_xy, c_xy) = kahan_add(x * sample.value, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_add(x * x, sum_x2, c_x2);
    }
    if constant {
        // A flat line: slope 0 exactly, not a rounding error.
        return if initial.is_infinite() { (f64::NAN, f64::NAN) } else { (0.0, initial) };
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let covariance = sum_xy - sum_x * sum_y / n;
    let variance = sum_x2 - sum_x * sum_x / n;
    let slope = covariance / variance;
    (slope, sum_y / n - slope * sum_x / n)
}

fn holt_winters(window: &[Sample], smoothing: f64, trend: f64) -> Result<Option<f64>, QueryError> {
    if smoothing <= 0.0 || smoothing >= 1.0 || smoothing.is_nan() {
        return Err(QueryError::Execution(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {smoothing:.6}"
        )));
    }
    if trend <= 0.0 || trend >= 1.0 || trend.is_nan() {
        return Err(QueryError::Execution(format!("invalid trend factor. Expected: 0 < tf < 1, got: {trend:.6}")));
    }
    let [first, second, ..] = window else { return Ok(None) };
    let (mut s0, mut s1, mut b) = (0.0, first.value, second.value - first.value);
    for (i, sample) in window.iter().enumerate().skip(1) {
        let x = smoothing * sample.value;
        if i > 1 {
            b = trend * (s1 - s0) + (1.0 - trend) * b;
        }
        let y = (1.0 - smoothing) * (s1 + b);
        (s0, s1) = (s1, x + y);
    }
    Ok(Some(s1))
}

fn count_pairs(window: &[Sample], counts: impl Fn(f64, f64) -> bool) -> f64 {
    window.windows(2).filter(|pair| counts(pair[0].value, pair[1].value)).count() as f64
}

fn avg_over_time(window: &[Sample]) -> f64 {
    let (mut mean, mut c, mut count) = (0.0_f64, 0.0, 0.0);
    for sample in window {
        let v = sample.value;
        count += 1.0;
        if mean.is_infinite() {
            // An infinite mean stays as it is unless an opposite infinity or NaN arrives.
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if v.is_finite() {
                continue;
            }
        }
        (mean, c) = kahan_add(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

fn variance_over_time(window: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for sample in window {
        count += 1.0;
        let delta = sample.value - (mean + c_mean);
        (mean, c_mean) = kahan_add(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_add(delta * (sample.value - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(points: &[(i64, f64)]) -> Vec<Sample> {
        points.iter().map(|&(timestamp_ms, value)| Sample { timestamp_ms, value }).collect()
    }

    #[test]
    fn bucket_quantile_interpolates_within_the_bucket() {
        for (q, buckets, expected) in [
            (0.5, vec![(1.0, 1.0), (2.0, 3.0), (f64::INFINITY, 4.0)], 1.5),
            (1.0, vec![(1.0, 1.0), (f64::INFINITY, 4.0)], 1.0),
            (0.0, vec![(-1.0, 1.0), (f64::INFINITY, 4.0)], -1.0),
        ] {
            let mut buckets = buckets;
            assert_eq!(bucket_quantile(q, &mut buckets), expected);
        }
        assert!(bucket_quantile(0.5, &mut vec![(1.0, 1.0)]).is_nan(), "no +Inf bucket");
        assert!(bucket_quantile(0.5, &mut vec![(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan(), "no observations");
    }

    #[test]
    fn rate_extrapolates_to_the_window_edges() {
        // 0, 10, …, 60 every 10s over a 60s window ending at 60s: exactly 1/s.
        let window = samples(&(0..=6).map(|i| (i * 10_000, i as f64 * 10.0)).collect::<Vec<_>>());
        let geometry = WindowGeometry {
            range_start: 0,
            range_end: 60_000,
            range_ms: 60_000,
            eval_ms: 60_000,
            resets_in_window: true,
        };
        assert_eq!(extrapolated_rate(&window, &geometry, true, true), Some(1.0));
        // After a reset from 5 to 1 the counter grew by 1, not by -4.
        let reset = samples(&[(0, 5.0), (10_000, 1.0)]);
        let geometry = WindowGeometry {
            range_start: 0,
            range_end: 10_000,
            range_ms: 10_000,
            eval_ms: 10_000,
            resets_in_window: true,
        };
        assert_eq!(extrapolated_rate(&reset, &geometry, true, false), Some(1.0));
        assert_eq!(extrapolated_rate(&reset, &geometry, false, false), Some(-4.0), "delta ignores resets");
        assert_eq!(extrapolated_rate(&reset[..1], &geometry, true, false), None);
    }

    #[test]
    fn regression_and_smoothing() {
        let line = samples(&[(0, 1.0), (1000, 3.0), (2000, 5.0)]);
        assert_eq!(linear_regression(&line, 0), (2.0, 1.0));
        assert_eq!(linear_regression(&samples(&[(0, 4.0), (1000, 4.0)]), 0), (0.0, 4.0));
        assert!(holt_winters(&line, 1.5, 0.5).is_err());
        assert_eq!(holt_winters(&line[..1], 0.5, 0.5).unwrap(), None);
        assert_eq!(instant_value(&samples(&[(0, 10.0), (2000, 4.0)]), true), Some(2.0));
    }

    #[test]
    fn dates_are_utc() {
        // 2023-11-14T22:13:20Z was a Tuesday.
        let t = 1_700_000_000.0;
        for (part, expected) in [
            (DatePart::Year, 2023.0),
            (DatePart::Month, 11.0),
            (DatePart::DayOfMonth, 14.0),
            (DatePart::DayOfWeek, 2.0),
            (DatePart::DayOfYear, 318.0),
            (DatePart::Hour, 22.0),
            (DatePart::Minute, 13.0),
            (DatePart::DaysInMonth, 30.0),
        ] {
            assert_eq!(part.of_seconds(t), expected);
        }
        assert!(DatePart::Year.of_seconds(f64::NAN).is_nan());
    }

    #[test]
    fn bounds_parse_like_go() {
        assert_eq!(parse_bound("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_bound("2e-1"), Some(0.2));
        assert_eq!(parse_bound(".2"), Some(0.2));
        assert_eq!(parse_bound("x"), None);
    }
}
