//! `/api/v1/configs...`: remote configuration over HTTP, in Prometheus's
//! JSON envelope (`{"status": "success", "data": ...}` or
//! `{"status": "error", "errorType": ..., "error": ...}`). Every call that
//! changes something needs the admin role (`auth/policy.rs`); the caller's
//! token name is recorded as the author.
//!
//! - `GET  /api/v1/configs`: profiles, their active version and agent counts.
//! - `POST /api/v1/configs`: push a version (`dryRun` reports without storing).
//! - `GET  /api/v1/configs/status[?selector=...]`: per agent, what it should run and runs.
//! - `GET  /api/v1/configs/rollouts`: staged rollouts.
//! - `GET  /api/v1/configs/{name}`, `/{name}/versions/{version}`, `/{name}/diff?from=&to=`.
//! - `POST /api/v1/configs/{name}/rollback` (`{"to": N}` optional), `/resume`, `/abort`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};

use crate::auth::Principal;
use crate::configs::store::{Profile, ProfileVersion, Rollout};
use crate::configs::{AgentConfigStatus, Canary, ConfigManager, PushError, PushOutcome, PushRequest};

/// Longest pushed body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub fn routes(configs: Arc<ConfigManager>) -> Router {
    Router::new()
        .route("/api/v1/configs", get(list).post(push))
        .route("/api/v1/configs/status", get(status))
        .route("/api/v1/configs/rollouts", get(rollouts))
        .route("/api/v1/configs/{name}", get(profile))
        .route("/api/v1/configs/{name}/versions/{version}", get(version))
        .route("/api/v1/configs/{name}/diff", get(diff))
        .route("/api/v1/configs/{name}/rollback", post(rollback))
        .route("/api/v1/configs/{name}/resume", post(resume))
        .route("/api/v1/configs/{name}/abort", post(abort))
        .with_state(configs)
}

fn success(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn failure(status: StatusCode, error_type: &str, message: String, problems: &[String]) -> Response {
    (status, axum::Json(json!({"status": "error", "errorType": error_type, "error": message, "problems": problems})))
        .into_response()
}

fn push_error(err: PushError) -> Response {
    match err {
        PushError::Invalid(problems) => failure(StatusCode::BAD_REQUEST, "bad_data", problems.join("\n"), &problems),
        PushError::Conflict(problems) => failure(StatusCode::CONFLICT, "conflict", problems.join("\n"), &problems),
        PushError::NotFound(what) => failure(StatusCode::NOT_FOUND, "not_found", format!("no {what}"), &[]),
        PushError::Store(err) => failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string(), &[]),
    }
}

fn author(principal: Option<axum::Extension<Principal>>) -> String {
    principal.map_or_else(|| "anonymous".to_owned(), |p| p.0.name)
}

fn version_json(v: &ProfileVersion, with_body: bool) -> Json {
    let mut out = json!({
        "version": v.version,
        "hash": v.hash,
        "author": v.author,
        "created": super::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(v.created_ms).unwrap_or(0))),
        "message": v.message,
        "selector": v.selector,
        "priority": v.priority,
    });
    if with_body {
        out["body"] = Json::String(v.body.clone());
    }
    out
}

fn profile_json(p: &Profile, agents: Option<usize>) -> Json {
    let active = p.active_version();
    let mut out = json!({
        "name": p.name,
        "activeVersion": p.active,
        "selector": active.map(|v| v.selector.clone()),
        "priority": active.map(|v| v.priority),
        "versions": p.versions.iter().map(|v| version_json(v, false)).collect::<Vec<_>>(),
    });
    if let Some(agents) = agents {
        out["agents"] = json!(agents);
    }
    out
}

fn rollout_json(r: &Rollout) -> Json {
    json!({
        "id": r.id,
        "profile": r.profile,
        "version": r.version,
        "fromVersion": r.from_version,
        "state": match r.state {
            crate::configs::store::RolloutState::Running => "running",
            crate::configs::store::RolloutState::Halted => "halted",
            crate::configs::store::RolloutState::Done => "done",
            crate::configs::store::RolloutState::Aborted => "aborted",
        },
        "reason": r.reason,
        "agents": r.agents,
        "released": r.released,
        "canary": r.canary,
        "waveSize": r.wave_size,
        "waitSeconds": r.wait_ms as f64 / 1000.0,
        "maxFailures": r.max_failures,
        "author": r.author,
    })
}

pub(crate) fn status_json(s: &AgentConfigStatus) -> Json {
    json!({
        "agent": s.agent,
        "hostname": s.hostname,
        "labels": s.labels,
        "connected": s.connected,
        "desiredProfile": s.desired.as_ref().map(|d| d.0.clone()),
        "desiredVersion": s.desired.as_ref().map_or(0, |d| d.1),
        "desiredHash": s.desired_hash,
        "appliedVersion": s.applied_version,
        "appliedProfile": s.applied_profile,
        "appliedHash": s.applied_hash,
        "effectiveHash": s.effective_hash,
        "state": s.state.as_str(),
        "lastError": s.last_error,
        "collectors": s.collectors.iter().map(|c| json!({"name": c.name, "ok": c.error.is_none(), "error": c.error})).collect::<Vec<_>>(),
        "heldByRollout": s.held_by_rollout,
    })
}

async fn list(State(configs): State<Arc<ConfigManager>>) -> Response {
    let profiles: Vec<Json> = configs.profiles().iter().map(|s| profile_json(&s.profile, Some(s.agents))).collect();
    success(json!(profiles))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PushBody {
    profile: String,
    #[serde(default = "all_agents")]
    selector: String,
    #[serde(default)]
    priority: i64,
    body: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    dry_run: bool,
    /// "1" or "20%".
    canary: Option<String>,
    #[serde(default)]
    wave_size: usize,
    /// e.g. "60s".
    wait: Option<String>,
    #[serde(default)]
    max_failures: usize,
}

fn all_agents() -> String {
    "{}".to_owned()
}

/// How long a wave may take when `wait` is not given.
const DEFAULT_WAVE_WAIT: Duration = Duration::from_secs(60);

async fn push(
    State(configs): State<Arc<ConfigManager>>,
    principal: Option<axum::Extension<Principal>>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_BODY_BYTES {
        return failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_data",
            format!("a push is at most {MAX_BODY_BYTES} bytes"),
            &[],
        );
    }
    let request: PushBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return failure(StatusCode::BAD_REQUEST, "bad_data", format!("invalid push request: {err}"), &[]),
    };
    let canary = match request.canary.as_deref().map(Canary::parse).transpose() {
        Ok(canary) => canary,
        Err(err) => return failure(StatusCode::BAD_REQUEST, "bad_data", format!("canary: {err}"), &[]),
    };
    let wait = match request.wait.as_deref().map(humantime::parse_duration).transpose() {
        Ok(wait) => wait.unwrap_or(DEFAULT_WAVE_WAIT),
        Err(err) => return failure(StatusCode::BAD_REQUEST, "bad_data", format!("wait: {err}"), &[]),
    };
    let request = PushRequest {
        profile: request.profile,
        selector: request.selector,
        priority: request.priority,
        body: request.body,
        message: request.message,
        dry_run: request.dry_run,
        canary,
        wave_size: request.wave_size,
        wait,
        max_failures: request.max_failures,
    };
    match configs.push(request, &author(principal)).await {
        Ok(PushOutcome::Created { version, hash, agents, rollout }) => success(
            json!({"result": "created", "version": version, "hash": hash, "agents": agents, "rollout": rollout}),
        ),
        Ok(PushOutcome::Unchanged { version, hash, agents }) => {
            success(json!({"result": "unchanged", "version": version, "hash": hash, "agents": agents}))
        }
        Ok(PushOutcome::DryRun { agents, problems }) => {
            let agents: Vec<Json> = agents
                .iter()
                .map(|a| {
                    json!({
                        "agent": a.agent,
                        "currentProfile": a.current.as_ref().map(|c| c.0.clone()),
                        "currentVersion": a.current.as_ref().map_or(0, |c| c.1),
                        "diff": a.diff,
                        "error": a.error,
                    })
                })
                .collect();
            success(json!({"result": "dry_run", "agents": agents, "problems": problems}))
        }
        Err(err) => push_error(err),
    }
}

#[derive(Debug, serde::Deserialize)]
struct StatusParams {
    selector: Option<String>,
}

async fn status(State(configs): State<Arc<ConfigManager>>, Query(params): Query<StatusParams>) -> Response {
    match configs.status(params.selector.as_deref().filter(|s| !s.trim().is_empty())) {
        Ok(statuses) => success(json!(statuses.iter().map(status_json).collect::<Vec<_>>())),
        Err(err) => push_error(err),
    }
}

async fn rollouts(State(configs): State<Arc<ConfigManager>>) -> Response {
    success(json!(configs.rollouts().iter().map(rollout_json).collect::<Vec<_>>()))
}

async fn profile(State(configs): State<Arc<ConfigManager>>, Path(name): Path<String>) -> Response {
    match configs.profile(&name) {
        Some(profile) => success(profile_json(&profile, None)),
        None => push_error(PushError::NotFound(format!("profile {name:?}"))),
    }
}

async fn version(State(configs): State<Arc<ConfigManager>>, Path((name, version)): Path<(String, String)>) -> Response {
    let Some(profile) = configs.profile(&name) else {
        return push_error(PushError::NotFound(format!("profile {name:?}")));
    };
    let wanted = if version == "active" { Some(profile.active) } else { version.parse().ok() };
    match wanted.and_then(|v| profile.version(v)) {
        Some(v) => success(version_json(v, true)),
        None => push_error(PushError::NotFound(format!("version {version:?} of {name}"))),
    }
}

#[derive(Debug, serde::Deserialize)]
struct DiffParams {
    from: u64,
    to: u64,
}

async fn diff(
    State(configs): State<Arc<ConfigManager>>,
    Path(name): Path<String>,
    params: Result<Query<DiffParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return failure(StatusCode::BAD_REQUEST, "bad_data", "diff needs ?from=VERSION&to=VERSION".into(), &[]);
    };
    match configs.diff(&name, params.from, params.to) {
        Ok(diff) => success(json!({"diff": diff})),
        Err(err) => push_error(err),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<u64>,
}

async fn rollback(
    State(configs): State<Arc<ConfigManager>>,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let request: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(err) => {
                return failure(StatusCode::BAD_REQUEST, "bad_data", format!("invalid rollback request: {err}"), &[]);
            }
        }
    };
    match configs.rollback(&name, request.to, &author(principal)).await {
        Ok(version) => success(json!({"profile": name, "activeVersion": version})),
        Err(err) => push_error(err),
    }
}

async fn resume(
    State(configs): State<Arc<ConfigManager>>,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
) -> Response {
    match configs.resume(&name, &author(principal)).await {
        Ok(id) => success(json!({"rollout": id, "state": "running"})),
        Err(err) => push_error(err),
    }
}

async fn abort(
    State(configs): State<Arc<ConfigManager>>,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
) -> Response {
    match configs.abort(&name, &author(principal)).await {
        Ok(id) => success(json!({"rollout": id, "state": "aborted"})),
        Err(err) => push_error(err),
    }
}
