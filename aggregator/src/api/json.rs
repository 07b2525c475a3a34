//! Writes query results as Prometheus's JSON, by hand into one buffer: large
//! range results would otherwise become a tree of `serde_json::Value`s first.
//! Timestamps are written as Prometheus writes them (`1700000000`,
//! `1700000000.5` as `1700000000.500`), values as strings (`"NaN"`, `"+Inf"`).

use std::fmt::Write as _;

use herd_common::metric::Labels;

use crate::promql::{QueryStats, Value, format_value};
use crate::store::Sample;

/// `{"status":"success","data":…}` around already-written `data`.
pub(crate) fn success(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    out.push_str(r#"{"status":"success","data":"#);
    out.push_str(data);
    out.push('}');
    out
}

/// The `data` of a query response.
pub(crate) fn query_data(value: &Value, stats: Option<(&QueryStats, &Timings)>) -> String {
    let mut out = String::new();
    out.push_str(r#"{"resultType":""#);
    out.push_str(value.type_name());
    out.push_str(r#"","result":"#);
    match value {
        Value::Vector(vector) => {
            out.push('[');
            for (i, (labels, sample)) in vector.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                push_labels(&mut out, labels);
                out.push_str(r#","value":"#);
                push_sample(&mut out, sample);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(matrix) => {
            out.push('[');
            for (i, (labels, samples)) in matrix.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                push_labels(&mut out, labels);
                out.push_str(r#","values":["#);
                for (j, sample) in samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    push_sample(&mut out, sample);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
        Value::Scalar(sample) => push_sample(&mut out, sample),
        Value::String { timestamp_ms, value } => {
            out.push('[');
            push_timestamp(&mut out, *timestamp_ms);
            out.push(',');
            push_string(&mut out, value);
            out.push(']');
        }
    }
    if let Some((stats, timings)) = stats {
        let _ = write!(
            out,
            r#","stats":{{"timings":{{"evalTotalTime":{eval},"resultSortTime":0,"queryPreparationTime":0,"innerEvalTime":{eval},"execQueueTime":{queue},"execTotalTime":{total}}},"samples":{{"totalQueryableSamples":{read},"peakSamples":{peak}}}}}"#,
            eval = timings.eval_seconds,
            queue = timings.queue_seconds,
            total = timings.eval_seconds + timings.queue_seconds,
            read = stats.samples_read,
            peak = stats.peak_samples,
        );
    }
    out.push('}');
    out
}

/// Wall-clock phases of a query, for `stats`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timings {
    pub queue_seconds: f64,
    pub eval_seconds: f64,
}

/// `[{"__name__":"up",…},…]`
pub(crate) fn label_sets<'a>(sets: impl Iterator<Item = &'a Labels>) -> String {
    let mut out = String::from("[");
    for (i, labels) in sets.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_labels(&mut out, labels);
    }
    out.push(']');
    out
}

/// `["a","b",…]`
pub(crate) fn strings<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, value) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(&mut out, value);
    }
    out.push(']');
    out
}

fn push_labels(out: &mut String, labels: &Labels) {
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(out, name);
        out.push(':');
        push_string(out, value);
    }
    out.push('}');
}

fn push_sample(out: &mut String, sample: &Sample) {
    out.push('[');
    push_timestamp(out, sample.timestamp_ms);
    out.push_str(",\"");
    out.push_str(&format_value(sample.value));
    out.push_str("\"]");
}

/// Seconds with the milliseconds written only when non-zero, always three digits.
fn push_timestamp(out: &mut String, timestamp_ms: i64) {
    let sign = if timestamp_ms < 0 { "-" } else { "" };
    let magnitude = timestamp_ms.unsigned_abs();
    let (seconds, millis) = (magnitude / 1000, magnitude % 1000);
    if millis == 0 {
        let _ = write!(out, "{sign}{seconds}");
    } else {
        let _ = write!(out, "{sign}{seconds}.{millis:03}");
    }
}

fn push_string(out: &mut String, value: &str) {
    // serde_json's escaping is the reference; writing to a String cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| String::from("\"\"")));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn timestamps_are_written_as_prometheus_writes_them() {
        for (ms, text) in [(1_700_000_000_000, "1700000000"), (1_500, "1.500"), (1_005, "1.005"), (-1_500, "-1.500")] {
            let mut out = String::new();
            push_timestamp(&mut out, ms);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn results_have_prometheus_shapes() {
        let labels = Arc::new(Labels::from_pairs([("__name__", "up"), ("job", "a\"b")]));
        let sample = Sample { timestamp_ms: 1000, value: f64::NAN };
        let vector = Value::Vector(vec![(Arc::clone(&labels), sample)]);
        assert_eq!(
            query_data(&vector, None),
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a\"b"},"value":[1,"NaN"]}]}"#
        );
        let matrix = Value::Matrix(vec![(labels, vec![sample, Sample { timestamp_ms: 2500, value: 1.5 }])]);
        assert_eq!(
            query_data(&matrix, None),
            r#"{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a\"b"},"values":[[1,"NaN"],[2.500,"1.5"]]}]}"#
        );
        let scalar = Value::Scalar(Sample { timestamp_ms: 0, value: f64::INFINITY });
        assert_eq!(query_data(&scalar, None), r#"{"resultType":"scalar","result":[0,"+Inf"]}"#);
        let string = Value::String { timestamp_ms: 0, value: "x".into() };
        assert_eq!(query_data(&string, None), r#"{"resultType":"string","result":[0,"x"]}"#);
        let parsed: serde_json::Value = serde_json::from_str(&success(&query_data(&matrix, None))).unwrap();
        assert_eq!(parsed["data"]["result"][0]["values"][1][0], serde_json::json!(2.5));
    }
}
