//! The HTTP API: Prometheus-compatible query endpoints, the fleet API,
//! health and readiness, and the aggregator's own `/metrics`. The only module
//! that knows HTTP and JSON; store and PromQL types are converted here.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use crate::fleet::Fleet;
use crate::ingest::IngestStats;
use crate::promql::{Engine, QueryError, Value};
use crate::store::{Sample, Storage};

pub struct ApiState {
    pub engine: Engine,
    pub store: Arc<dyn Storage>,
    pub fleet: Arc<Fleet>,
    pub ingest: Arc<IngestStats>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/agents", get(agents))
        .route("/-/healthy", get(|| async { "Herd is Healthy.\n" }))
        .route("/-/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Prometheus's error envelope.
fn error(status: StatusCode, error_type: &str, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({"status": "error", "errorType": error_type, "error": message.to_string()})))
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "Herd is Ready.\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Herd is not ready yet.\n").into_response()
    }
}

/// Query-string and, for POST, form-body parameters; the body wins, as in Prometheus.
fn params(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<HashMap<String, String>, Box<Response>> {
    let mut params: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
    if method == Method::POST && !body.is_empty() {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            let message = "POST bodies must be application/x-www-form-urlencoded";
            return Err(Box::new(error(StatusCode::BAD_REQUEST, "bad_data", message)));
        }
        params.extend(form_urlencoded::parse(body).into_owned());
    }
    Ok(params)
}

/// Parses a Prometheus time parameter: Unix seconds (fractions allowed) or RFC 3339.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
        && seconds.abs() < 9.2e15
    {
        return Ok((seconds * 1000.0).round() as i64);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("cannot parse {text:?} to a valid timestamp"))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn query(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let params = match params(&method, &headers, raw.as_deref(), &body) {
        Ok(params) => params,
        Err(response) => return *response,
    };
    let Some(expr) = params.get("query") else {
        return error(StatusCode::BAD_REQUEST, "bad_data", "invalid parameter \"query\": no query given");
    };
    let time_ms = match params.get("time").filter(|t| !t.is_empty()) {
        Some(text) => match parse_time(text) {
            Ok(t) => t,
            Err(message) => {
                return error(StatusCode::BAD_REQUEST, "bad_data", format!("invalid parameter \"time\": {message}"));
            }
        },
        None => now_ms(),
    };
    let engine_state = Arc::clone(&state);
    let expr = expr.clone();
    // Evaluation is CPU work: keep it off the I/O threads.
    let result = tokio::task::spawn_blocking(move || engine_state.engine.instant_query(&expr, time_ms)).await;
    match result {
        Ok(Ok(value)) => axum::Json(
            json!({"status": "success", "data": {"resultType": value.type_name(), "result": value_json(&value)}}),
        )
        .into_response(),
        Ok(Err(err)) => query_error(err),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "query evaluation failed"),
    }
}

fn query_error(err: QueryError) -> Response {
    match err {
        QueryError::Parse(message) | QueryError::BadRequest(message) => {
            error(StatusCode::BAD_REQUEST, "bad_data", format!("invalid parameter \"query\": {message}"))
        }
        QueryError::Timeout { .. } => error(StatusCode::SERVICE_UNAVAILABLE, "timeout", err),
        QueryError::Unsupported(_)
        | QueryError::Execution(_)
        | QueryError::TooManySamples { .. }
        | QueryError::TooManySeries { .. } => error(StatusCode::UNPROCESSABLE_ENTITY, "execution", err),
    }
}

/// Formats a sample value as Prometheus does (shortest round-trip, no exponent).
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

fn timestamp_json(timestamp_ms: i64) -> Json {
    // Seconds with millisecond precision, as a JSON number.
    json!(timestamp_ms as f64 / 1000.0)
}

fn sample_json(sample: &Sample) -> Json {
    json!([timestamp_json(sample.timestamp_ms), format_value(sample.value)])
}

fn labels_json(labels: &herd_common::metric::Labels) -> Json {
    Json::Object(labels.iter().map(|(n, v)| (n.to_owned(), Json::String(v.to_owned()))).collect())
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Vector(vector) => vector.iter().map(|(labels, sample)| json!({"metric": labels_json(labels), "value": sample_json(sample)})).collect(),
        Value::Matrix(matrix) => matrix
            .iter()
            .map(|(labels, samples)| json!({"metric": labels_json(labels), "values": samples.iter().map(sample_json).collect::<Vec<_>>()}))
            .collect(),
        Value::Scalar(sample) => sample_json(sample),
        Value::String { timestamp_ms, value } => json!([timestamp_json(*timestamp_ms), value]),
    }
}

fn rfc3339(time: SystemTime) -> String {
    let nanos = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

async fn agents(State(state): State<Arc<ApiState>>) -> Response {
    let agents: Vec<Json> = state
        .fleet
        .list()
        .into_iter()
        .map(|a| {
            json!({
                "id": a.id,
                "claimedId": a.claimed_id,
                "hostname": a.hostname,
                "version": a.version,
                "labels": a.labels.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                "remoteAddr": a.remote_addr.to_string(),
                "connected": a.connected,
                "connectedSince": rfc3339(a.connected_since),
                "lastSeen": rfc3339(a.last_seen),
                "configVersion": a.config_version,
                "backlogBatches": a.backlog_batches,
                "batchesReceived": a.batches_received,
                "samplesReceived": a.samples_received,
                "seriesDefined": a.series_defined,
            })
        })
        .collect();
    axum::Json(json!({"status": "success", "data": agents})).into_response()
}

/// The aggregator's own metrics in Prometheus text format.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut out = String::new();
    let stats = state.store.stats();
    let ingest = &state.ingest;
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    gauge("herd_store_series", "Series in the store.", "gauge", stats.series);
    gauge("herd_store_samples_appended_total", "Samples appended to the store.", "counter", stats.samples);
    gauge(
        "herd_ingest_batches_total",
        "Batches received from agents.",
        "counter",
        ingest.batches.load(Ordering::Relaxed),
    );
    gauge(
        "herd_ingest_samples_total",
        "Samples received from agents.",
        "counter",
        ingest.samples.load(Ordering::Relaxed),
    );
    gauge(
        "herd_ingest_handshake_failures_total",
        "Agent connections refused during the TLS handshake or for a missing identity.",
        "counter",
        ingest.handshake_failures.load(Ordering::Relaxed),
    );
    gauge("herd_fleet_agents_connected", "Agents currently connected.", "gauge", state.fleet.connected_count() as u64);
    for (name, help, map) in [
        (
            "herd_ingest_protocol_errors_total",
            "Agent connections closed for a protocol error.",
            &ingest.protocol_errors,
        ),
        ("herd_store_rejected_samples_total", "Samples the store refused.", &ingest.rejected_samples),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let map = map.lock().expect("stats lock is never poisoned");
        let mut reasons: Vec<_> = map.iter().collect();
        reasons.sort();
        for (reason, count) in reasons {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn times_parse_as_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1700000000.123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20+01:00"), Ok(1_700_000_000_000));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("NaN").is_err());
    }
}
