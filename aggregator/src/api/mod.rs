//! The HTTP API: Prometheus-compatible query and metadata endpoints (what
//! Grafana's Prometheus data source calls), the fleet API, health and
//! readiness, and the aggregator's own `/metrics`. The only module that knows
//! HTTP and JSON; store and PromQL types are converted here.
//!
//! - `query`: `/api/v1/query`, `/api/v1/query_range`, `/api/v1/query_exemplars`
//!   (always empty: Herd keeps no exemplars), `/api/v1/format_query`.
//! - `series`: `/api/v1/series`, `/labels`, `/label/<name>/values`, `/metadata`.
//! - `status`: `/api/v1/status/buildinfo`, `/runtimeinfo`.
//! - `rules`: `/api/v1/rules`, `/api/v1/alerts` (routes of their own, merged in by `server`).
//! - `configs`: `/api/v1/configs...`, remote configuration (routes of their own).
//! - `params`: parameters, times, durations, the error envelope; `json`: result encoding.

pub mod client;
pub mod configs;
pub mod identity;
mod json;
mod params;
mod query;
pub mod rules;
mod series;
mod status;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};
use tokio::sync::Semaphore;

use crate::fleet::Fleet;
use crate::ingest::IngestStats;
use crate::promql::Engine;
use crate::store::Storage;
pub use params::{parse_duration, parse_time};
pub(crate) use query::on_query_thread;

/// Queries evaluated at once before others wait, as Prometheus's
/// `--query.max-concurrency` default.
pub const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 20;

pub struct ApiState {
    pub engine: Engine,
    pub store: Arc<dyn Storage>,
    pub fleet: Arc<Fleet>,
    pub ingest: Arc<IngestStats>,
    pub ready: Arc<AtomicBool>,
    started_at: SystemTime,
    query_slots: Arc<Semaphore>,
    /// For `/metrics`' refusal counters.
    auth: Option<Arc<crate::auth::Authenticator>>,
    /// For `/metrics`' enrollment and renewal counters.
    identity: Option<Arc<crate::identity::IdentityStats>>,
    /// For `/metrics`' connection and request-limit counters.
    http: Option<Arc<crate::http::HttpStats>>,
    /// For each agent's configuration state in `/api/v1/agents` and `/metrics`.
    configs: Option<Arc<crate::configs::ConfigManager>>,
}

impl ApiState {
    pub fn new(
        engine: Engine,
        store: Arc<dyn Storage>,
        fleet: Arc<Fleet>,
        ingest: Arc<IngestStats>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            engine,
            store,
            fleet,
            ingest,
            ready,
            started_at: SystemTime::now(),
            query_slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT_QUERIES)),
            auth: None,
            identity: None,
            http: None,
            configs: None,
        }
    }

    /// The HTTP listener's counters, for `/metrics`.
    pub fn with_http_stats(mut self, stats: Arc<crate::http::HttpStats>) -> Self {
        self.http = Some(stats);
        self
    }

    /// Remote configuration, whose per-agent state the fleet API and `/metrics` show.
    pub fn with_configs(mut self, configs: Arc<crate::configs::ConfigManager>) -> Self {
        self.configs = Some(configs);
        self
    }

    /// The identity manager's counters, for `/metrics`.
    pub fn with_identity(mut self, stats: Arc<crate::identity::IdentityStats>) -> Self {
        self.identity = Some(stats);
        self
    }

    /// The authentication layer whose refusals `/metrics` reports.
    pub fn with_auth(mut self, auth: Arc<crate::auth::Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Bounds the queries evaluated at once (each may hold up to the engine's
    /// sample limit in memory); at least one.
    pub fn with_max_concurrent_queries(mut self, queries: usize) -> Self {
        self.query_slots = Arc::new(Semaphore::new(queries.max(1)));
        self
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/query", get(query::instant).post(query::instant))
        .route("/api/v1/query_range", get(query::range).post(query::range))
        .route("/api/v1/query_exemplars", get(query::exemplars).post(query::exemplars))
        .route("/api/v1/format_query", get(query::format).post(query::format))
        .route("/api/v1/series", get(series::series).post(series::series))
        .route("/api/v1/labels", get(series::labels).post(series::labels))
        .route("/api/v1/label/{name}/values", get(series::label_values))
        .route("/api/v1/metadata", get(series::metadata))
        .route("/api/v1/status/buildinfo", get(status::buildinfo))
        .route("/api/v1/status/runtimeinfo", get(status::runtimeinfo))
        .route("/api/v1/agents", get(agents))
        .route("/-/healthy", get(|| async { "Herd is Healthy.\n" }))
        .route("/-/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// A JSON body already encoded.
fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> Response {
    params::ApiError::not_found("no such endpoint").into_response()
}

async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "Herd is Ready.\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Herd is not ready yet.\n").into_response()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
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
                "trustedLabels": a.trusted_labels.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
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
                "config": state
                    .configs
                    .as_ref()
                    .and_then(|c| c.agent_status(&a.id))
                    .map_or(Json::Null, |s| configs::status_json(&s)),
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
    gauge(
        "herd_ingest_handshakes_abandoned_total",
        "Agent handshakes the agent gave up on before they completed (its probe window or connect timeout).",
        "counter",
        ingest.handshakes_abandoned.load(Ordering::Relaxed),
    );
    gauge(
        "herd_ingest_handshakes_shed_total",
        "Agent handshakes refused because too many were in progress; the agent backs off and retries.",
        "counter",
        ingest.handshakes_shed.load(Ordering::Relaxed),
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
    if let Some(auth) = &state.auth {
        auth.write_metrics(&mut out);
    }
    if let Some(identity) = &state.identity {
        identity.write_metrics(&mut out);
    }
    if let Some(http) = &state.http {
        http.write_metrics(&mut out);
    }
    if let Some(configs) = &state.configs {
        let name = "herd_config_pushes_total";
        let _ = writeln!(out, "# HELP {name} Configuration pushes, by result.\n# TYPE {name} counter");
        for (result, count) in configs.push_counts() {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {count}");
        }
        let name = "herd_fleet_agents";
        let _ = writeln!(out, "# HELP {name} Known agents, by configuration state.\n# TYPE {name} gauge");
        for (config_state, count) in configs.state_counts() {
            let _ = writeln!(out, "{name}{{config_state=\"{}\"}} {count}", config_state.as_str());
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

#[cfg(test)]
mod tests;
