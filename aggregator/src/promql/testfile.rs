//! Runs Prometheus's PromQL test files (`load`, `clear`, `eval instant at`,
//! `eval_fail`, `eval_ordered`) against a fresh `MemStore` and `Engine`,
//! checking each eval the way Prometheus's own runner does: as an instant
//! query, as a three-step range query around the same time, and again with
//! every selector pinned by `@` at several other evaluation times.
//!
//! Native-histogram series (`{{…}}` values) cannot be stored by Herd: their
//! loads are dropped and evals touching them are counted as skipped.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_common::metric::{Labels, METRIC_NAME, stale_nan};
use promql_parser::parser::{AtModifier, Expr};

use super::{Engine, Limits, QueryRange, Value, eval, parse_duration_ms};
use crate::store::{MemStore, Sample, Storage};

/// Relative error allowed between expected and computed values, as Prometheus.
const EPSILON: f64 = 0.000001;
/// Subquery step when none is written, as in Prometheus's test runner.
const SUBQUERY_STEP: Duration = Duration::from_secs(60);
const LOOKBACK: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{file}:{line}: {message}")]
    Syntax { file: String, line: usize, message: String },
}

/// The outcome of running one or more test files.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub failures: Vec<Failure>,
    /// Why evals were skipped, one entry per distinct reason.
    pub skip_reasons: Vec<String>,
}

impl Report {
    pub fn merge(&mut self, other: Report) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.failures.extend(other.failures);
        for reason in other.skip_reasons {
            if !self.skip_reasons.contains(&reason) {
                self.skip_reasons.push(reason);
            }
        }
    }

    /// `N passed, M failed`, and `, K skipped` if any were.
    pub fn summary(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            let _ = write!(line, ", {} skipped", self.skipped);
        }
        line
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub file: String,
    pub line: usize,
    pub expr: String,
    pub expected: String,
    pub got: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FAIL {}:{}: {} — expected: {} — got: {}", self.file, self.line, self.expr, self.expected, self.got)
    }
}

pub fn run_file(path: &Path) -> Result<Report, TestFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TestFileError::Read { path: path.display().to_string(), source })?;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    run_text(&name, &text)
}

pub fn run_text(file: &str, text: &str) -> Result<Report, TestFileError> {
    let commands = parse(file, text)?;
    let mut report = Report::default();
    let mut store = Arc::new(MemStore::new());
    let mut histogram_metrics: Vec<String> = Vec::new();
    for command in commands {
        match command {
            Command::Clear => {
                store = Arc::new(MemStore::new());
                histogram_metrics.clear();
            }
            Command::Load(load) => {
                histogram_metrics.extend(load.native_histograms);
                for (labels, values) in load.series {
                    let series = store.series_ref(&labels);
                    for (i, value) in values.iter().enumerate() {
                        let Some(value) = value else { continue };
                        let timestamp_ms = i as i64 * load.interval_ms;
                        // A value loaded earlier at the same time stays; Prometheus refuses it too.
                        let _ = store.append(series, Sample { timestamp_ms, value: *value });
                    }
                }
            }
            Command::Eval(cmd) => {
                if cmd.native_histogram || histogram_metrics.iter().any(|name| cmd.expr.contains(name.as_str())) {
                    report.skipped += 1;
                    let reason = "native histograms: Herd stores float samples only".to_owned();
                    if !report.skip_reasons.contains(&reason) {
                        report.skip_reasons.push(reason);
                    }
                    continue;
                }
                let engine = test_engine(Arc::clone(&store) as Arc<dyn Storage>);
                match check_eval(&engine, &cmd) {
                    Ok(()) => report.passed += 1,
                    Err(got) => {
                        report.failed += 1;
                        report.failures.push(Failure {
                            file: file.to_owned(),
                            line: cmd.line,
                            expr: cmd.expr.clone(),
                            expected: cmd.describe_expected(),
                            got,
                        });
                    }
                }
            }
        }
    }
    Ok(report)
}

fn test_engine(store: Arc<dyn Storage>) -> Engine {
    Engine::new(store, LOOKBACK, usize::MAX)
        .with_limits(Limits { max_series: usize::MAX, timeout: None, ..Limits::default() })
        .with_default_subquery_step(SUBQUERY_STEP)
}

enum Command {
    Clear,
    Load(Load),
    Eval(EvalCommand),
}

struct Load {
    interval_ms: i64,
    /// Values at `i * interval_ms`; `None` where omitted (`_`).
    series: Vec<(Labels, Vec<Option<f64>>)>,
    native_histograms: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EvalKind {
    Normal,
    Fail,
    Ordered,
}

struct EvalCommand {
    line: usize,
    expr: String,
    time_ms: i64,
    kind: EvalKind,
    expected: Expected,
    native_histogram: bool,
}

enum Expected {
    Scalar(f64),
    /// Series and values, in the listed order (checked by `eval_ordered`).
    Vector(Vec<(Labels, f64)>),
}

impl EvalCommand {
    fn describe_expected(&self) -> String {
        if self.kind == EvalKind::Fail {
            return "an error".into();
        }
        match &self.expected {
            Expected::Scalar(v) => format!("scalar {}", super::format_value(*v)),
            Expected::Vector(series) => describe_series(series.iter().map(|(l, v)| (l, *v))),
        }
    }
}

fn describe_series<'l>(series: impl Iterator<Item = (&'l Labels, f64)>) -> String {
    let parts: Vec<String> = series.map(|(l, v)| format!("{l} {}", super::format_value(v))).collect();
    if parts.is_empty() { "no series".into() } else { parts.join(", ") }
}

fn check_eval(engine: &Engine, cmd: &EvalCommand) -> Result<(), String> {
    let expr = match Engine::parse(&cmd.expr) {
        Ok(expr) => expr,
        Err(_) if cmd.kind == EvalKind::Fail => return Ok(()),
        Err(e) => return Err(format!("parse error: {e}")),
    };
    let mut cases = vec![(expr.clone(), cmd.time_ms, String::new())];
    cases.extend(pinned_cases(&expr, cmd.time_ms));
    for (expr, time_ms, variant) in cases {
        let value = match engine.query(&expr, QueryRange::Instant { time_ms }) {
            Err(_) if cmd.kind == EvalKind::Fail => continue,
            Err(e) => return Err(format!("error{variant}: {e}")),
            Ok(_) if cmd.kind == EvalKind::Fail => return Err(format!("no error{variant}")),
            Ok(output) => output.value,
        };
        compare(cmd, &value).map_err(|e| format!("{e}{variant}"))?;
        // The same eval as the middle step of a range query.
        let range = QueryRange::Range { start_ms: time_ms - 60_000, end_ms: time_ms + 60_000, step_ms: 60_000 };
        let ranged = engine.query(&expr, range).map_err(|e| format!("error in range mode{variant}: {e}"))?;
        if cmd.kind == EvalKind::Ordered {
            continue; // a range result has no order
        }
        let Value::Matrix(matrix) = ranged.value else { return Err(format!("range mode{variant}: not a matrix")) };
        let at_time: Vec<(Arc<Labels>, Sample)> = matrix
            .into_iter()
            .filter_map(|(labels, points)| Some((labels, *points.iter().find(|p| p.timestamp_ms == time_ms)?)))
            .collect();
        let as_instant = match value {
            Value::Scalar(_) => match at_time.first() {
                Some((_, sample)) => Value::Scalar(*sample),
                None => return Err(format!("range mode{variant}: no scalar at the evaluation time")),
            },
            _ => Value::Vector(at_time),
        };
        compare(cmd, &as_instant).map_err(|e| format!("{e} in range mode{variant}"))?;
    }
    Ok(())
}

/// Prometheus's runner also evaluates each expression with every selector
/// outside subqueries pinned by `@ <eval time>` at other times, which must
/// give the same result — unless a function depends on the evaluation time.
fn pinned_cases(expr: &Expr, time_ms: i64) -> Vec<(Expr, i64, String)> {
    if calls_time_dependent_function(expr) {
        return Vec::new();
    }
    let mut pinned = expr.clone();
    pin(&mut pinned, at_modifier(time_ms));
    let times: Vec<i64> =
        if time_ms == 0 { vec![-1000, 0, 1000] } else { vec![-10 * time_ms, 0, time_ms / 5, time_ms, 10 * time_ms] };
    times
        .into_iter()
        .map(|t| {
            (pinned.clone(), t, format!(" (with @ {} evaluated at {}s)", time_ms as f64 / 1000.0, t as f64 / 1000.0))
        })
        .collect()
}

fn at_modifier(time_ms: i64) -> AtModifier {
    let magnitude = Duration::from_millis(time_ms.unsigned_abs());
    let time = if time_ms >= 0 { UNIX_EPOCH.checked_add(magnitude) } else { UNIX_EPOCH.checked_sub(magnitude) };
    AtModifier::At(time.unwrap_or(SystemTime::UNIX_EPOCH))
}

fn pin(expr: &mut Expr, at: AtModifier) {
    match expr {
        Expr::VectorSelector(selector) => {
            selector.at.get_or_insert(at);
        }
        Expr::MatrixSelector(matrix) => {
            matrix.vs.at.get_or_insert(at);
        }
        // Selectors inside a subquery keep their own times.
        Expr::Subquery(subquery) => {
            subquery.at.get_or_insert(at);
        }
        Expr::Aggregate(aggregate) => {
            pin(&mut aggregate.expr, at.clone());
            if let Some(param) = &mut aggregate.param {
                pin(param, at);
            }
        }
        Expr::Unary(unary) => pin(&mut unary.expr, at),
        Expr::Binary(binary) => {
            pin(&mut binary.lhs, at.clone());
            pin(&mut binary.rhs, at);
        }
        Expr::Paren(paren) => pin(&mut paren.expr, at),
        Expr::Call(call) => {
            for argument in &mut call.args.args {
                pin(argument, at.clone());
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn calls_time_dependent_function(expr: &Expr) -> bool {
    match expr {
        Expr::Call(call) => {
            eval::TIME_DEPENDENT_FUNCTIONS.contains(&call.func.name)
                || call.args.args.iter().any(|a| calls_time_dependent_function(a))
        }
        Expr::Aggregate(aggregate) => {
            calls_time_dependent_function(&aggregate.expr)
                || aggregate.param.as_deref().is_some_and(calls_time_dependent_function)
        }
        Expr::Unary(unary) => calls_time_dependent_function(&unary.expr),
        Expr::Binary(binary) => {
            calls_time_dependent_function(&binary.lhs) || calls_time_dependent_function(&binary.rhs)
        }
        Expr::Paren(paren) => calls_time_dependent_function(&paren.expr),
        Expr::Subquery(subquery) => calls_time_dependent_function(&subquery.expr),
        _ => false,
    }
}

fn compare(cmd: &EvalCommand, value: &Value) -> Result<(), String> {
    match (value, &cmd.expected) {
        (Value::Matrix(_), _) => Err("a range vector".into()),
        (Value::String { value, .. }, _) => Err(format!("string {value:?}")),
        (Value::Scalar(sample), Expected::Scalar(expected)) => {
            if almost_equal(*expected, sample.value) {
                Ok(())
            } else {
                Err(format!("scalar {}", super::format_value(sample.value)))
            }
        }
        (Value::Scalar(sample), Expected::Vector(_)) => Err(format!("scalar {}", super::format_value(sample.value))),
        (Value::Vector(vector), expected) => {
            let got = || describe_series(vector.iter().map(|(l, s)| (&**l, s.value)));
            let Expected::Vector(expected) = expected else { return Err(format!("vector {}", got())) };
            if vector.len() != expected.len() {
                return Err(got());
            }
            for (position, (labels, sample)) in vector.iter().enumerate() {
                let Some(at) = expected.iter().position(|(l, _)| **labels == *l) else {
                    return Err(format!("{} (unexpected {labels})", got()));
                };
                if cmd.kind == EvalKind::Ordered && at != position {
                    return Err(format!("{} ({labels} at position {} instead of {})", got(), position + 1, at + 1));
                }
                if !almost_equal(expected[at].1, sample.value) {
                    return Err(got());
                }
            }
            Ok(())
        }
    }
}

fn almost_equal(a: f64, b: f64) -> bool {
    // The smallest positive normal f64.
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || diff < MIN_NORMAL {
        return diff < EPSILON * MIN_NORMAL;
    }
    diff / (a.abs() + b.abs()) < EPSILON
}

// ---- Parsing ---------------------------------------------------------------

fn parse(file: &str, text: &str) -> Result<Vec<Command>, TestFileError> {
    let syntax =
        |line: usize, message: String| TestFileError::Syntax { file: file.to_owned(), line: line + 1, message };
    // Comments become blank lines, which end a block, as in Prometheus.
    let lines: Vec<&str> = text.lines().map(str::trim).map(|l| if l.starts_with('#') { "" } else { l }).collect();
    let mut commands = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.is_empty() {
            i += 1;
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
        if word == "clear" {
            commands.push(Command::Clear);
        } else if word == "load" {
            let interval = line["load".len()..].trim();
            let interval_ms = parse_duration_ms(interval)
                .ok_or_else(|| syntax(i, format!("invalid step definition {interval:?}")))?;
            let mut load = Load { interval_ms, series: Vec::new(), native_histograms: Vec::new() };
            while let Some(definition) = lines.get(i + 1).filter(|l| !l.is_empty()) {
                i += 1;
                let (labels, values) = parse_series(definition).map_err(|e| syntax(i, e))?;
                match values {
                    // A later definition of the same series replaces the earlier one.
                    SeriesValues::Floats(values) => match load.series.iter_mut().find(|(l, _)| *l == labels) {
                        Some(existing) => existing.1 = values,
                        None => load.series.push((labels, values)),
                    },
                    SeriesValues::NativeHistogram => {
                        load.native_histograms.push(labels.metric_name().unwrap_or_default().to_owned())
                    }
                }
            }
            commands.push(Command::Load(load));
        } else if word.starts_with("eval") {
            let (cmd, last) = parse_eval(&lines, i).map_err(|e| syntax(i, e))?;
            commands.push(Command::Eval(cmd));
            i = last;
        } else {
            return Err(syntax(i, format!("invalid command {line:?}")));
        }
        i += 1;
    }
    Ok(commands)
}

/// Parses an eval command starting at `lines[start]`; returns it and the index of its last line.
fn parse_eval(lines: &[&str], start: usize) -> Result<(EvalCommand, usize), String> {
    let line = lines[start];
    let pattern = regex::Regex::new(r"^eval(?:_(fail|ordered))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
        .expect("the eval pattern is valid");
    let captures = pattern
        .captures(line)
        .ok_or("invalid evaluation command. (eval[_fail|_ordered] instant [at <offset:duration>] <query>)")?;
    let kind = match captures.get(1).map(|m| m.as_str()) {
        Some("fail") => EvalKind::Fail,
        Some("ordered") => EvalKind::Ordered,
        _ => EvalKind::Normal,
    };
    let at = captures.get(2).map_or("", |m| m.as_str());
    let time_ms = parse_duration_ms(at).ok_or_else(|| format!("invalid evaluation time {at:?}"))?;
    let expr = captures.get(3).map_or("", |m| m.as_str()).to_owned();
    let mut cmd = EvalCommand {
        line: start + 1,
        expr,
        time_ms,
        kind,
        expected: Expected::Vector(Vec::new()),
        native_histogram: false,
    };
    let mut i = start;
    let mut series = Vec::new();
    while let Some(definition) = lines.get(i + 1).filter(|l| !l.is_empty()) {
        i += 1;
        if let Some(value) = parse_number(definition) {
            cmd.expected = Expected::Scalar(value);
            return Ok((cmd, i));
        }
        match parse_series(definition)? {
            (_, SeriesValues::NativeHistogram) => cmd.native_histogram = true,
            (labels, SeriesValues::Floats(values)) => {
                let [Some(value)] = values[..] else {
                    return Err(format!("expected exactly one value in {definition:?}"));
                };
                series.push((labels, value));
            }
        }
    }
    cmd.expected = Expected::Vector(series);
    Ok((cmd, i))
}

/// A number as Prometheus's parser reads it: decimal, hex, `Inf`, `NaN`, signed.
fn parse_number(text: &str) -> Option<f64> {
    let (sign, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (-1.0, &text[1..]),
        Some(b'+') => (1.0, &text[1..]),
        _ => (1.0, text),
    };
    let magnitude = match unsigned.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        lower if lower.starts_with("0x") => i64::from_str_radix(&lower[2..], 16).ok()? as f64,
        _ => {
            // Refuse what Rust would read but Go would not ("1_000", "e5" …).
            if !unsigned.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
                || !unsigned.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
            {
                return None;
            }
            unsigned.parse().ok()?
        }
    };
    Some(sign * magnitude)
}

enum SeriesValues {
    Floats(Vec<Option<f64>>),
    NativeHistogram,
}

/// `metric{label="value", …} values…` with values like `1 _ stale 0+10x5 _x3`.
fn parse_series(definition: &str) -> Result<(Labels, SeriesValues), String> {
    let (labels, rest) = parse_metric(definition)?;
    if rest.contains("{{") {
        return Ok((labels, SeriesValues::NativeHistogram));
    }
    let mut values = Vec::new();
    for item in rest.split_whitespace() {
        parse_value_item(item, &mut values).ok_or_else(|| format!("invalid series value {item:?}"))?;
    }
    Ok((labels, SeriesValues::Floats(values)))
}

fn parse_value_item(item: &str, out: &mut Vec<Option<f64>>) -> Option<()> {
    if item == "_" {
        out.push(None);
        return Some(());
    }
    if let Some(times) = item.strip_prefix("_x") {
        out.extend(std::iter::repeat_n(None, times.parse().ok()?));
        return Some(());
    }
    if item == "stale" {
        out.push(Some(stale_nan()));
        return Some(());
    }
    // `a+bxn` and `a-bxn`: n+1 values from a in steps of b; `axn`: a, n+1 times.
    let (head, times) = match item.rfind('x') {
        Some(at) if at + 1 < item.len() && item[at + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            (&item[..at], Some(item[at + 1..].parse::<usize>().ok()?))
        }
        _ => (item, None),
    };
    let bytes = head.as_bytes();
    let split = (1..bytes.len())
        .find(|&i| matches!(bytes[i], b'+' | b'-') && !matches!(bytes[i - 1], b'e' | b'E' | b'+' | b'-'));
    let (start, step) = match split {
        Some(at) => (parse_number(&head[..at])?, Some(parse_number(&head[at..])?)),
        None => (parse_number(head)?, None),
    };
    match (step, times) {
        (Some(step), Some(times)) => {
            let mut value = start;
            for _ in 0..=times {
                out.push(Some(value));
                value += step;
            }
        }
        (None, Some(times)) => out.extend(std::iter::repeat_n(Some(start), times + 1)),
        (None, None) => out.push(Some(start)),
        (Some(_), None) => return None,
    }
    Some(())
}

/// Reads `name{a="b", …}` (name and braces each optional); returns the labels and the rest.
fn parse_metric(text: &str) -> Result<(Labels, &str), String> {
    let name_end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
    let name = &text[..name_end];
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !name.is_empty() {
        pairs.push((METRIC_NAME.to_owned(), name.to_owned()));
    }
    let mut rest = &text[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        rest = body;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let label_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .ok_or_else(|| format!("unterminated label set in {text:?}"))?;
            let label = &rest[..label_end];
            rest = rest[label_end..].trim_start();
            rest = rest.strip_prefix('=').ok_or_else(|| format!("expected '=' after {label:?} in {text:?}"))?;
            let (value, after) =
                parse_quoted(rest.trim_start()).ok_or_else(|| format!("bad label value in {text:?}"))?;
            pairs.push((label.to_owned(), value));
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            }
        }
    }
    Ok((Labels::from_pairs(pairs), rest.trim()))
}

/// A Go-style quoted string: "…" or '…' with escapes, or `…` raw.
fn parse_quoted(text: &str) -> Option<(String, &str)> {
    let quote = text.chars().next()?;
    let body = &text[quote.len_utf8()..];
    if quote == '`' {
        let end = body.find('`')?;
        return Some((body[..end].to_owned(), &body[end + 1..]));
    }
    if quote != '"' && quote != '\'' {
        return None;
    }
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Some((value, &body[i + 1..])),
            '\\' => {
                let (_, escaped) = chars.next()?;
                value.push(match escaped {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            }
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(item: &str) -> Vec<Option<f64>> {
        let mut out = Vec::new();
        parse_value_item(item, &mut out).unwrap();
        out
    }

    #[test]
    fn series_values_expand_like_prometheus() {
        assert_eq!(values("0+10x2"), vec![Some(0.0), Some(10.0), Some(20.0)]);
        assert_eq!(values("5-1x2"), vec![Some(5.0), Some(4.0), Some(3.0)]);
        assert_eq!(values("-2+4x1"), vec![Some(-2.0), Some(2.0)]);
        assert_eq!(values("1x2"), vec![Some(1.0); 3]);
        assert_eq!(values("_x3"), vec![None; 3]);
        assert_eq!(values("1e3"), vec![Some(1000.0)]);
        assert_eq!(values("-Inf"), vec![Some(f64::NEG_INFINITY)]);
        assert!(values("stale")[0].is_some_and(herd_common::metric::is_stale));
    }

    #[test]
    fn metrics_parse_with_and_without_names() {
        let (labels, rest) = parse_metric(r#"http_requests{job="api", instance='0'} 1 2"#).unwrap();
        assert_eq!(labels.to_string(), r#"http_requests{instance="0", job="api"}"#);
        assert_eq!(rest, "1 2");
        let (labels, _) = parse_metric(r#"{__name__="m", a="x\"y"} 1"#).unwrap();
        assert_eq!(labels.get("a"), Some("x\"y"));
        assert_eq!(labels.metric_name(), Some("m"));
        assert_eq!(parse_metric("up 1").unwrap().0.metric_name(), Some("up"));
    }

    #[test]
    fn numbers_parse_like_go() {
        assert_eq!(parse_number("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_number(".2"), Some(0.2));
        assert_eq!(parse_number("0x10"), Some(16.0));
        assert_eq!(parse_number("{} 1"), None);
        assert!(almost_equal(1.0, 1.0 + 1e-9) && !almost_equal(1.0, 1.001) && almost_equal(f64::NAN, f64::NAN));
    }

    #[test]
    fn a_small_file_runs_with_every_outcome() {
        let text = "load 1m\n  up{job=\"a\"} 1+1x10\n  up{job=\"b\"} 0x10\n\n\
                    eval instant at 5m up\n  up{job=\"a\"} 6\n  up{job=\"b\"} 0\n\n\
                    eval instant at 5m sum(up)\n  {} 6\n\n\
                    eval instant at 5m 1 + 1\n  3\n\n\
                    eval_fail instant at 5m up + on() up\n\n\
                    eval_ordered instant at 5m sort_desc(up)\n  up{job=\"a\"} 6\n  up{job=\"b\"} 0\n";
        let report = run_text("inline.test", text).unwrap();
        assert_eq!((report.passed, report.failed, report.skipped), (4, 1, 0), "{:?}", report.failures);
        assert_eq!(report.failures[0].line, 12);
        assert_eq!(report.failures[0].got, "scalar 2");
        assert_eq!(report.summary(), "4 passed, 1 failed");
    }

    #[test]
    fn native_histograms_are_skipped() {
        let text =
            "load 1m\n  h {{schema:0 sum:1 count:1}}x3\n\neval instant at 1m h\n  {} {{schema:0 sum:1 count:1}}\n";
        let report = run_text("h.test", text).unwrap();
        assert_eq!(report.summary(), "0 passed, 0 failed, 1 skipped");
    }
}
