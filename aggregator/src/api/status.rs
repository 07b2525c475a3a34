//! `/api/v1/status/buildinfo` and `/api/v1/status/runtimeinfo`, which
//! Grafana's Prometheus data source reads to learn what it talks to.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::json;

use super::{ApiState, json_response, rfc3339};

/// The Prometheus API level Herd implements. Grafana reads `version` to pick
/// features, so it names Prometheus's version; Herd's own is in `revision`.
const PROMETHEUS_COMPATIBLE_VERSION: &str = "2.42.0";

pub(crate) async fn buildinfo() -> Response {
    let data = json!({
        "version": PROMETHEUS_COMPATIBLE_VERSION,
        "revision": format!("herd-aggregator {}", env!("CARGO_PKG_VERSION")),
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    });
    json_response(json!({"status": "success", "data": data}).to_string())
}

pub(crate) async fn runtimeinfo(State(state): State<Arc<ApiState>>) -> Response {
    let runtime = tokio::runtime::Handle::try_current().ok().map(|h| h.metrics());
    let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
    let data = json!({
        "startTime": rfc3339(state.started_at),
        "CWD": cwd,
        // Herd has no reloadable configuration yet: the loaded one is the last.
        "reloadConfigSuccess": true,
        "lastConfigTime": rfc3339(state.started_at),
        "corruptionCount": 0,
        // The nearest equivalents of goroutines and GOMAXPROCS.
        "goroutineCount": runtime.as_ref().map_or(0, |m| m.num_alive_tasks()),
        "GOMAXPROCS": runtime.as_ref().map_or(0, |m| m.num_workers()),
        "GOGC": "",
        "GODEBUG": "",
        "storageRetention": "",
    });
    json_response(json!({"status": "success", "data": data}).to_string())
}
