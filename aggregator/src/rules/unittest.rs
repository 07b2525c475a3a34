//! Rule unit tests in promtool's format (`promtool test rules`): input
//! series in the expanding notation (`0+10x5`, `1x3`, `_`, `stale`), rule
//! files evaluated every `evaluation_interval` from time 0 through the real
//! engine and group evaluation, then firing alerts (`alert_rule_test`) and
//! expression results (`promql_expr_test`) compared at their times. Owns
//! nothing else: the evaluation is `group`'s, the store a fresh `MemStore`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herd_common::metric::{Labels, METRIC_NAME, stale_nan};
use promql_parser::parser::Expr;
use serde::Deserialize;

use super::group::{AlertState, EvalContext, Group};
use super::manager::{expand_files, load_files};
use crate::promql::{Engine, Value, parse_duration_ms};
use crate::store::{MemStore, Sample, Storage};

#[derive(Debug, thiserror::Error)]
pub enum UnitTestError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    evaluation_interval: Option<String>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<RawTestGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTestGroup {
    interval: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input_series: Vec<RawSeries>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    alert_rule_test: Vec<RawAlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<RawExprTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertTest {
    eval_time: String,
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<RawExpAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExprTest {
    expr: String,
    eval_time: String,
    #[serde(default)]
    exp_samples: Vec<RawExpSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpSample {
    labels: String,
    value: f64,
}

/// Runs one test file; returns the failures (empty when it passes).
pub fn run_test_file(path: &Path) -> Result<Vec<String>, UnitTestError> {
    let invalid = |message: String| UnitTestError::Invalid { file: path.to_owned(), message };
    let text = std::fs::read_to_string(path).map_err(|source| UnitTestError::Read { file: path.to_owned(), source })?;
    let raw: RawTestFile = serde_norway::from_str(&text).map_err(|err| invalid(err.to_string()))?;
    let _ = raw.group_eval_order;
    let base = path.parent().unwrap_or(Path::new("."));
    let patterns: Vec<String> = raw
        .rule_files
        .iter()
        .map(|f| if Path::new(f).is_absolute() { f.clone() } else { base.join(f).display().to_string() })
        .collect();
    let rule_groups =
        expand_files(&patterns).and_then(|files| load_files(&files)).map_err(|err| invalid(err.to_string()))?;
    let evaluation_interval = duration(raw.evaluation_interval.as_deref().unwrap_or("1m")).map_err(invalid)?;
    let mut failures = Vec::new();
    for test in raw.tests {
        let interval = match &test.interval {
            Some(text) => duration(text).map_err(invalid)?,
            None => evaluation_interval,
        };
        failures.extend(run_test_group(&test, &rule_groups, evaluation_interval, interval).map_err(invalid)?);
    }
    Ok(failures)
}

fn duration(text: &str) -> Result<Duration, String> {
    match parse_duration_ms(text) {
        Some(ms) if ms >= 0 => Ok(Duration::from_millis(ms as u64)),
        _ => Err(format!("{text:?} is not a duration")),
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

fn run_test_group(
    test: &RawTestGroup,
    rule_groups: &[super::RuleGroup],
    evaluation_interval: Duration,
    interval: Duration,
) -> Result<Vec<String>, String> {
    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    for series in &test.input_series {
        let labels = parse_series_labels(&series.series)?;
        let values = expand_values(&series.values)
            .ok_or_else(|| format!("series {:?}: cannot read values {:?}", series.series, series.values))?;
        let series_ref = store.series_ref(&labels);
        for (i, value) in values.into_iter().enumerate() {
            if let Some(value) = value {
                let timestamp_ms = i as i64 * millis(interval);
                let _ = store.append(series_ref, Sample { timestamp_ms, value });
            }
        }
    }
    let engine = Engine::new(Arc::clone(&store), Duration::from_secs(300), 1_000_000);
    let ctx = EvalContext {
        external_labels: Labels::from_pairs(test.external_labels.clone()),
        external_url: test.external_url.clone(),
        resend_delay: Duration::from_secs(60),
    };
    let mut groups: Vec<Group> = rule_groups.iter().cloned().map(|g| Group::new(g, evaluation_interval)).collect();

    let mut alert_tests: Vec<(i64, &RawAlertTest)> = Vec::new();
    for alert_test in &test.alert_rule_test {
        alert_tests.push((millis(duration(&alert_test.eval_time)?), alert_test));
    }
    alert_tests.sort_by_key(|(t, _)| *t);
    let last_ms = alert_tests.last().map_or(0, |(t, _)| *t);
    let step_ms = millis(evaluation_interval).max(1);
    let prefix = if test.name.is_empty() { String::new() } else { format!("{}: ", test.name) };
    let mut failures = Vec::new();
    let mut pending_tests = alert_tests.into_iter().peekable();
    let mut ts_ms = 0;
    while ts_ms <= last_ms {
        // Every group at every step, as promtool does (groups' own intervals are not simulated).
        for group in &mut groups {
            group.eval(&engine, store.as_ref(), ts_ms, &ctx);
        }
        while let Some((_, alert_test)) = pending_tests.next_if(|(t, _)| *t < ts_ms + step_ms) {
            if let Some(failure) = check_alerts(&groups, alert_test) {
                failures.push(format!("{prefix}{failure}"));
            }
        }
        ts_ms += step_ms;
    }
    for expr_test in &test.promql_expr_test {
        if let Some(failure) = check_expr(&engine, expr_test)? {
            failures.push(format!("{prefix}{failure}"));
        }
    }
    Ok(failures)
}

fn check_alerts(groups: &[Group], test: &RawAlertTest) -> Option<String> {
    let mut got: Vec<(Labels, Vec<(String, String)>)> = groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.rule.name() == test.alertname)
        .flat_map(|r| r.active.values())
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| (a.labels.clone(), a.annotations.clone()))
        .collect();
    let mut expected: Vec<(Labels, Vec<(String, String)>)> = test
        .exp_alerts
        .iter()
        .map(|a| {
            let labels = a
                .exp_labels
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .chain([("alertname".to_owned(), test.alertname.clone())]);
            (Labels::from_pairs(labels), a.exp_annotations.iter().map(|(n, v)| (n.clone(), v.clone())).collect())
        })
        .collect();
    got.sort();
    expected.sort();
    if got == expected {
        return None;
    }
    let show = |alerts: &[(Labels, Vec<(String, String)>)]| -> String {
        let items: Vec<String> = alerts
            .iter()
            .map(|(labels, annotations)| {
                // promtool's notation, so the two tools' reports can be compared.
                let annotations: Vec<String> = annotations.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
                format!("{{Labels:{labels} Annotations:{{{}}}}}", annotations.join(", "))
            })
            .collect();
        format!("[{}]", items.join(", "))
    };
    Some(format!(
        "alertname: {}, time: {},\n        exp:{},\n        got:{}",
        test.alertname,
        test.eval_time,
        show(&expected),
        show(&got)
    ))
}

fn check_expr(engine: &Engine, test: &RawExprTest) -> Result<Option<String>, String> {
    let time_ms = millis(duration(&test.eval_time)?);
    let value = engine.instant_query(&test.expr, time_ms).map_err(|err| format!("expr: {:?}: {err}", test.expr))?;
    let mut got: Vec<(Labels, f64)> = match value {
        Value::Vector(samples) => samples.into_iter().map(|(l, s)| ((*l).clone(), s.value)).collect(),
        Value::Scalar(sample) => vec![(Labels::default(), sample.value)],
        other => return Err(format!("expr: {:?}: a {} cannot be compared", test.expr, other.type_name())),
    };
    let mut expected: Vec<(Labels, f64)> = Vec::new();
    for sample in &test.exp_samples {
        expected.push((parse_series_labels(&sample.labels)?, sample.value));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let same = got.len() == expected.len()
        && got.iter().zip(&expected).all(|(g, e)| g.0 == e.0 && (g.1 == e.1 || (g.1 - e.1).abs() <= 1e-9 * e.1.abs()));
    if same {
        return Ok(None);
    }
    let show = |samples: &[(Labels, f64)]| -> String {
        let items: Vec<String> = samples.iter().map(|(l, v)| format!("{l} {v}")).collect();
        format!("[{}]", items.join(", "))
    };
    Ok(Some(format!(
        "expr: {:?}, time: {},\n        exp: {}\n        got: {}",
        test.expr,
        test.eval_time,
        show(&expected),
        show(&got)
    )))
}

/// `name{a="b"}` or `{__name__="x", a="b"}` into labels (equality matchers only).
fn parse_series_labels(text: &str) -> Result<Labels, String> {
    // promtool takes `{}` (or nothing) for a sample without labels, e.g. of `sum(x)`.
    if matches!(text.trim(), "" | "{}") {
        return Ok(Labels::default());
    }
    let expr = Engine::parse(text).map_err(|err| format!("series {text:?}: {err}"))?;
    let Expr::VectorSelector(selector) = expr else { return Err(format!("{text:?} is not a series")) };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(name) = &selector.name {
        pairs.push((METRIC_NAME.to_owned(), name.clone()));
    }
    for matcher in &selector.matchers.matchers {
        if !matches!(matcher.op, promql_parser::label::MatchOp::Equal) {
            return Err(format!("series {text:?}: only = matchers name a series"));
        }
        pairs.push((matcher.name.clone(), matcher.value.clone()));
    }
    Ok(Labels::from_pairs(pairs))
}

/// promtool's value notation, one entry per interval: `None` where no sample.
fn expand_values(text: &str) -> Option<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for item in text.split_whitespace() {
        if item == "_" {
            out.push(None);
            continue;
        }
        if item == "stale" {
            out.push(Some(stale_nan()));
            continue;
        }
        if let Some(times) = item.strip_prefix("_x") {
            out.extend(std::iter::repeat_n(None, times.parse().ok()?));
            continue;
        }
        let Some((head, times)) = item.rsplit_once('x') else {
            out.push(Some(number(item)?));
            continue;
        };
        let times: usize = times.parse().ok()?;
        // `a+bxn` / `a-bxn`: the operator is the last + or - that is not a sign or an exponent's.
        let split = head.char_indices().rev().find(|&(i, c)| {
            (c == '+' || c == '-') && i > 0 && !matches!(head.as_bytes().get(i - 1), Some(b'e' | b'E'))
        });
        let (start, step) = match split {
            Some((i, op)) => {
                let step = number(head.get(i + 1..)?)?;
                (number(head.get(..i)?)?, if op == '-' { -step } else { step })
            }
            None => (number(head)?, 0.0),
        };
        for k in 0..=times {
            out.push(Some(start + step * k as f64));
        }
    }
    Some(out)
}

fn number(text: &str) -> Option<f64> {
    match text {
        "Inf" | "+Inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[Option<f64>]) {
        let got = expand_values(text).unwrap_or_else(|| panic!("{text:?} does not expand"));
        assert_eq!(got, expected, "{text:?}");
    }

    #[test]
    fn series_values_expand_as_promtool() {
        check("1 2 3", &[Some(1.0), Some(2.0), Some(3.0)]);
        check("0+10x3", &[Some(0.0), Some(10.0), Some(20.0), Some(30.0)]);
        check("10-2x2", &[Some(10.0), Some(8.0), Some(6.0)]);
        check("-1+1x2", &[Some(-1.0), Some(0.0), Some(1.0)]);
        check("1x2 _ _x2 4", &[Some(1.0), Some(1.0), Some(1.0), None, None, None, Some(4.0)]);
        check("1e3+1e3x1", &[Some(1000.0), Some(2000.0)]);
        assert!(expand_values("1 stale").is_some_and(|v| v[1].is_some_and(herd_common::metric::is_stale)));
        assert!(expand_values("abc").is_none());
    }
}
