//! `/api/v1/identity/...`: enrollment tokens and agent certificates, for
//! `herd-aggregator token ...` and `cert list|revoke`. Every route needs the
//! `admin` role (the authentication layer's policy). Answers use
//! Prometheus's envelope (`{"status":"success","data":...}`).
//!
//! - `POST /api/v1/identity/tokens` `{"labels":{"role":"db"},"ttl":"1h","uses":1}`:
//!   the token text is in the answer and nowhere else, ever.
//! - `GET /api/v1/identity/tokens`, `DELETE /api/v1/identity/tokens/{id}`.
//! - `GET /api/v1/identity/certificates`.
//! - `POST /api/v1/identity/revocations` `{"name":"web-1"}` or `{"serial":"1f..."}`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::ApiError;
use crate::identity::inventory::{CertSource, RevokeTarget};
use crate::identity::tokens::{TokenRecord, TokenSpec};
use crate::identity::{AdminError, IdentityManager};

/// Longest TTL a token may have.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn routes(manager: Arc<IdentityManager>) -> Router {
    Router::new()
        .route("/api/v1/identity/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/identity/tokens/{id}", delete(revoke_token))
        .route("/api/v1/identity/certificates", get(list_certificates))
        .route("/api/v1/identity/revocations", post(revoke))
        .with_state(manager)
}

fn rfc3339_ms(ms: i64) -> String {
    super::rfc3339(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn labels_json(labels: &[(String, String)]) -> Value {
    Value::Object(labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

fn token_json(record: &TokenRecord, now_ms: i64) -> Value {
    json!({
        "id": record.id,
        "labels": labels_json(&record.labels),
        "state": record.state(now_ms),
        "created": rfc3339_ms(record.created_ms),
        "expires": rfc3339_ms(record.expires_ms),
        "maxUses": record.max_uses,
        "uses": record.uses,
        "createdBy": record.created_by,
        "enrolled": record.enrolled,
    })
}

fn success(data: Value) -> Response {
    Json(json!({"status": "success", "data": data})).into_response()
}

fn admin_error(err: AdminError) -> ApiError {
    match err {
        AdminError::Invalid(message) => ApiError::bad_data(message),
        AdminError::NotFound { .. } => ApiError::not_found(err.to_string()),
        AdminError::Persist(err) => ApiError::internal(err.to_string()),
    }
}

/// Runs a blocking admin operation (they write files) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    manager: &Arc<IdentityManager>,
    operation: impl FnOnce(&IdentityManager) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    let manager = Arc::clone(manager);
    tokio::task::spawn_blocking(move || operation(&manager))
        .await
        .map_err(|_| ApiError::internal("identity operation failed"))?
        .map_err(admin_error)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// e.g. "1h"; default 1h.
    ttl: Option<String>,
    /// Omitted or null: any number of agents until it expires.
    uses: Option<u32>,
}

async fn create_token(
    State(manager): State<Arc<IdentityManager>>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return ApiError::bad_data(format!("invalid request body: {rejection}")).into_response(),
    };
    let ttl = match request.ttl.as_deref().map(humantime::parse_duration).transpose() {
        Ok(ttl) => ttl.unwrap_or(Duration::from_secs(3600)),
        Err(err) => return ApiError::invalid_param("ttl", err).into_response(),
    };
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return ApiError::invalid_param("ttl", "must be above zero and at most 365d").into_response();
    }
    let spec = TokenSpec {
        labels: request.labels.into_iter().collect(),
        ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        max_uses: request.uses,
        created_by: principal.map_or_else(|| "anonymous".to_owned(), |p| p.0.name.clone()),
    };
    match blocking(&manager, move |m| m.create_token(spec)).await {
        Ok((token, record)) => {
            let mut data = token_json(&record, record.created_ms);
            data["token"] = Value::String(token);
            (StatusCode::CREATED, Json(json!({"status": "success", "data": data}))).into_response()
        }
        Err(err) => err.into_response(),
    }
}

async fn list_tokens(State(manager): State<Arc<IdentityManager>>) -> Response {
    let now_ms = super::now_ms();
    let tokens: Vec<Value> = manager.list_tokens().iter().map(|t| token_json(t, now_ms)).collect();
    success(Value::Array(tokens))
}

async fn revoke_token(State(manager): State<Arc<IdentityManager>>, Path(id): Path<String>) -> Response {
    match blocking(&manager, move |m| m.revoke_token(&id)).await {
        Ok(()) => success(Value::Null),
        Err(err) => err.into_response(),
    }
}

async fn list_certificates(State(manager): State<Arc<IdentityManager>>) -> Response {
    let now_ms = super::now_ms();
    let certificates: Vec<Value> = manager
        .list_certificates()
        .iter()
        .map(|(cert, revoked_ms)| {
            let (source, detail) = match &cert.source {
                CertSource::Enrolled { token_id } => ("enrolled", json!({"tokenId": token_id})),
                CertSource::Renewed { previous_serial } => ("renewed", json!({"previousSerial": previous_serial})),
                CertSource::Seen => ("seen", json!({})),
            };
            let state = match revoked_ms {
                Some(_) => "revoked",
                None if cert.not_after_ms <= now_ms => "expired",
                None => "valid",
            };
            json!({
                "name": cert.name,
                "serial": cert.serial,
                "labels": labels_json(&cert.labels),
                "issued": rfc3339_ms(cert.issued_ms),
                "expires": rfc3339_ms(cert.not_after_ms),
                "state": state,
                "revoked": revoked_ms.map(rfc3339_ms),
                "source": source,
                "sourceDetail": detail,
            })
        })
        .collect();
    success(Value::Array(certificates))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    name: Option<String>,
    serial: Option<String>,
}

async fn revoke(
    State(manager): State<Arc<IdentityManager>>,
    body: Result<Json<Revoke>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let target = match body {
        Ok(Json(Revoke { name: Some(name), serial: None })) => RevokeTarget::Name(name),
        Ok(Json(Revoke { name: None, serial: Some(serial) })) => RevokeTarget::Serial(serial),
        Ok(_) => return ApiError::bad_data("give exactly one of \"name\" and \"serial\"").into_response(),
        Err(rejection) => return ApiError::bad_data(format!("invalid request body: {rejection}")).into_response(),
    };
    match blocking(&manager, move |m| m.revoke(&target)).await {
        Ok(serials) => success(json!({"serials": serials})),
        Err(err) => err.into_response(),
    }
}
