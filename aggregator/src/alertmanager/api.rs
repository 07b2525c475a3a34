//! Alertmanager's v2 HTTP API over the router, with Alertmanager 0.25's JSON
//! shapes, so `amtool`, Grafana's Alertmanager data source and Prometheus
//! (as an alert sender) work against Herd unchanged:
//! `GET/POST /api/v2/alerts`, `GET /api/v2/alerts/groups`,
//! `GET/POST /api/v2/silences`, `GET/DELETE /api/v2/silence/{id}`,
//! `GET /api/v2/status`, `GET /api/v2/receivers`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router as HttpRouter;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::delivery::rfc3339;
use super::dispatch::{Alert, AlertStatus};
use super::matcher::{Matcher, all_match, parse_matchers};
use super::silence::{Silence, SilenceError, SilenceMatcher, SilenceRequest};
use super::{Router, now_ms};

/// Bodies larger than this are refused (a batch of alerts from Prometheus is far smaller).
const MAX_BODY_BYTES: usize = 8 << 20;

pub fn routes(router: Arc<Router>) -> HttpRouter {
    HttpRouter::new()
        .route("/api/v2/alerts", get(get_alerts).post(post_alerts))
        .route("/api/v2/alerts/groups", get(get_groups))
        .route("/api/v2/silences", get(get_silences).post(post_silence))
        .route("/api/v2/silence/{id}", get(get_silence).delete(delete_silence))
        .route("/api/v2/status", get(status))
        .route("/api/v2/receivers", get(receivers))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(router)
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(Json::String(message.to_string()))).into_response()
}

/// Query parameters: repeated `filter`s, and booleans defaulting to true.
struct AlertQuery {
    filters: Vec<Matcher>,
    active: bool,
    silenced: bool,
    inhibited: bool,
    receiver: Option<regex::Regex>,
}

fn parse_query(query: Option<&str>) -> Result<AlertQuery, String> {
    let mut out = AlertQuery { filters: Vec::new(), active: true, silenced: true, inhibited: true, receiver: None };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let flag = || match value.as_ref() {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(format!("{key}: {other:?} is not a boolean")),
        };
        match key.as_ref() {
            "filter" => out.filters.extend(parse_matchers(&value).map_err(|e| e.to_string())?),
            "active" => out.active = flag()?,
            "silenced" => out.silenced = flag()?,
            "inhibited" => out.inhibited = flag()?,
            "unprocessed" => {}
            "receiver" if !value.is_empty() => {
                out.receiver = Some(regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| e.to_string())?);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn gettable_alert(alert: &Alert, status: &AlertStatus, receivers: &[String]) -> Json {
    json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": rfc3339(alert.starts_at_ms),
        "endsAt": rfc3339(alert.ends_at_ms),
        "updatedAt": rfc3339(alert.updated_at_ms),
        "generatorURL": alert.generator_url,
        "fingerprint": format!("{:016x}", alert.fingerprint),
        "receivers": receivers.iter().map(|name| json!({"name": name})).collect::<Vec<_>>(),
        "status": {
            "state": if status.muted() { "suppressed" } else { "active" },
            "silencedBy": status.silenced_by,
            "inhibitedBy": status.inhibited_by,
        },
    })
}

fn receivers_of(router: &Router, alert: &Alert) -> Vec<String> {
    let mut names: Vec<String> =
        router.config().route.matching(&alert.labels).iter().map(|r| r.receiver.clone()).collect();
    names.dedup();
    names
}

/// Whether `alert` passes the query's filters; returns its status if so.
fn selected(router: &Router, query: &AlertQuery, alert: &Alert, status: &AlertStatus, now: i64) -> bool {
    if alert.resolved(now) || !all_match(&query.filters, &alert.labels) {
        return false;
    }
    let silenced = !status.silenced_by.is_empty();
    let inhibited = !status.inhibited_by.is_empty();
    if (!query.active && !status.muted()) || (!query.silenced && silenced) || (!query.inhibited && inhibited) {
        return false;
    }
    match &query.receiver {
        Some(re) => receivers_of(router, alert).iter().any(|r| re.is_match(r)),
        None => true,
    }
}

async fn get_alerts(State(router): State<Arc<Router>>, RawQuery(query): RawQuery) -> Response {
    let query = match parse_query(query.as_deref()) {
        Ok(query) => query,
        Err(message) => return bad_request(message),
    };
    let now = now_ms();
    let mut alerts: Vec<(String, Json)> = router.with_state(|dispatcher, silences| {
        let inhibitions = dispatcher.inhibition_index(&router.config(), now);
        dispatcher
            .alerts()
            .filter_map(|alert| {
                let status = dispatcher.status_with(&router.config(), silences, &inhibitions, alert, now);
                selected(&router, &query, alert, &status, now).then(|| {
                    let receivers = receivers_of(&router, alert);
                    (format!("{:016x}", alert.fingerprint), gettable_alert(alert, &status, &receivers))
                })
            })
            .collect()
    });
    alerts.sort_by(|a, b| a.0.cmp(&b.0));
    axum::Json(alerts.into_iter().map(|(_, a)| a).collect::<Vec<_>>()).into_response()
}

async fn get_groups(State(router): State<Arc<Router>>, RawQuery(query): RawQuery) -> Response {
    let query = match parse_query(query.as_deref()) {
        Ok(query) => query,
        Err(message) => return bad_request(message),
    };
    let now = now_ms();
    let groups: Vec<Json> = router.with_state(|dispatcher, silences| {
        let inhibitions = dispatcher.inhibition_index(&router.config(), now);
        dispatcher
            .groups()
            .into_iter()
            .filter_map(|group| {
                let alerts: Vec<Json> = group
                    .alerts
                    .iter()
                    .filter_map(|alert| {
                        let status = dispatcher.status_with(&router.config(), silences, &inhibitions, alert, now);
                        selected(&router, &query, alert, &status, now)
                            .then(|| gettable_alert(alert, &status, &receivers_of(&router, alert)))
                    })
                    .collect();
                (!alerts.is_empty())
                    .then(|| json!({"labels": group.labels, "receiver": {"name": group.receiver}, "alerts": alerts}))
            })
            .collect()
    });
    axum::Json(groups).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert {
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    #[serde(rename = "generatorURL", default)]
    generator_url: String,
}

fn parse_time(field: &str, text: &Option<String>) -> Result<Option<i64>, String> {
    match text.as_deref() {
        None | Some("") | Some("0001-01-01T00:00:00Z") => Ok(None),
        Some(text) => OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
            .map_err(|e| format!("{field}: {text:?} is not an RFC 3339 time: {e}")),
    }
}

async fn post_alerts(State(router): State<Arc<Router>>, body: axum::body::Bytes) -> Response {
    let posted: Vec<PostableAlert> = match serde_json::from_slice(&body) {
        Ok(posted) => posted,
        Err(err) => return bad_request(format!("alerts are not valid JSON: {err}")),
    };
    let now = now_ms();
    let mut alerts = Vec::with_capacity(posted.len());
    let mut problems = Vec::new();
    for (i, alert) in posted.into_iter().enumerate() {
        let labels: BTreeMap<String, String> = alert.labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        if labels.is_empty() {
            problems.push(format!("alert {i}: at least one label pair is required"));
            continue;
        }
        if let Some(name) = labels.keys().find(|n| !super::matcher::valid_label_name(n)) {
            problems.push(format!("alert {i}: {name:?} is not a valid label name"));
            continue;
        }
        let (starts, ends) = match (parse_time("startsAt", &alert.starts_at), parse_time("endsAt", &alert.ends_at)) {
            (Ok(s), Ok(e)) => (s, e),
            (Err(e), _) | (_, Err(e)) => {
                problems.push(format!("alert {i}: {e}"));
                continue;
            }
        };
        let starts = starts.unwrap_or(now);
        if let Some(ends) = ends
            && ends < starts
        {
            problems.push(format!("alert {i}: endsAt is before startsAt"));
            continue;
        }
        alerts.push(Alert::new(labels, alert.annotations, starts, ends.unwrap_or(0), alert.generator_url));
    }
    // Valid alerts are taken even when others in the batch were not, as Alertmanager does.
    router.receive(alerts);
    if problems.is_empty() { StatusCode::OK.into_response() } else { bad_request(problems.join("; ")) }
}

fn gettable_silence(silence: &Silence, now: i64) -> Json {
    json!({
        "id": silence.id,
        "status": {"state": silence.state(now).as_str()},
        "updatedAt": rfc3339(silence.updated_at_ms),
        "matchers": silence.matchers.iter().map(|m| json!({
            "name": m.name, "value": m.value, "isRegex": m.is_regex, "isEqual": m.is_equal,
        })).collect::<Vec<_>>(),
        "startsAt": rfc3339(silence.starts_at_ms),
        "endsAt": rfc3339(silence.ends_at_ms),
        "createdBy": silence.created_by,
        "comment": silence.comment,
    })
}

async fn get_silences(State(router): State<Arc<Router>>, RawQuery(query): RawQuery) -> Response {
    let mut filters = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if key == "filter" {
            match parse_matchers(&value) {
                Ok(m) => filters.extend(m),
                Err(err) => return bad_request(err),
            }
        }
    }
    let now = now_ms();
    let silences: Vec<Json> = router.with_state(|_, silences| {
        let mut list: Vec<&Silence> = silences
            .all()
            .iter()
            .filter(|s| {
                // A filter selects silences having an equal matcher (as Alertmanager's API does).
                filters.iter().all(|f| s.matchers.iter().any(|m| m.name == f.name && f.matches_value(&m.value)))
            })
            .collect();
        // Active first, then pending, then expired; as Alertmanager sorts them.
        list.sort_by_key(|s| (s.state(now) as u8, s.ends_at_ms));
        list.into_iter().map(|s| gettable_silence(s, now)).collect()
    });
    axum::Json(silences).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableSilence {
    id: Option<String>,
    matchers: Vec<PostableMatcher>,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableMatcher {
    name: String,
    value: String,
    is_regex: bool,
    is_equal: Option<bool>,
}

async fn post_silence(State(router): State<Arc<Router>>, body: axum::body::Bytes) -> Response {
    let posted: PostableSilence = match serde_json::from_slice(&body) {
        Ok(posted) => posted,
        Err(err) => return bad_request(format!("silence is not valid JSON: {err}")),
    };
    let (starts, ends) =
        match (parse_time("startsAt", &Some(posted.starts_at)), parse_time("endsAt", &Some(posted.ends_at))) {
            (Ok(Some(s)), Ok(Some(e))) => (s, e),
            (Err(e), _) | (_, Err(e)) => return bad_request(e),
            _ => return bad_request("startsAt and endsAt are required"),
        };
    if posted.created_by.is_empty() || posted.comment.is_empty() {
        return bad_request("createdBy and comment are required");
    }
    let request = SilenceRequest {
        id: posted.id.filter(|id| !id.is_empty()),
        matchers: posted
            .matchers
            .into_iter()
            .map(|m| SilenceMatcher {
                name: m.name,
                value: m.value,
                is_regex: m.is_regex,
                is_equal: m.is_equal.unwrap_or(true),
            })
            .collect(),
        starts_at_ms: starts,
        ends_at_ms: ends,
        created_by: posted.created_by,
        comment: posted.comment,
    };
    match router.with_silences(|silences| silences.set(request, now_ms())) {
        Ok(id) => axum::Json(json!({"silenceID": id})).into_response(),
        Err(SilenceError::NotFound(id)) => {
            (StatusCode::NOT_FOUND, axum::Json(Json::String(format!("silence {id} not found")))).into_response()
        }
        Err(err @ SilenceError::Write { .. }) => {
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(Json::String(err.to_string()))).into_response()
        }
        Err(err) => bad_request(err),
    }
}

async fn get_silence(State(router): State<Arc<Router>>, Path(id): Path<String>) -> Response {
    let now = now_ms();
    match router.with_state(|_, silences| silences.get(&id).map(|s| gettable_silence(s, now))) {
        Some(silence) => axum::Json(silence).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn delete_silence(State(router): State<Arc<Router>>, Path(id): Path<String>) -> Response {
    match router.with_silences(|silences| silences.expire(&id, now_ms())) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(SilenceError::NotFound(_)) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(Json::String(err.to_string()))).into_response(),
    }
}

async fn status(State(router): State<Arc<Router>>) -> Response {
    axum::Json(json!({
        "cluster": {"name": "herd", "status": "disabled", "peers": []},
        // The Alertmanager API version Herd answers as (amtool warns on a
        // mismatch); what it really is goes in `revision`.
        "versionInfo": {
            "branch": "herd",
            "buildDate": "",
            "buildUser": "",
            "goVersion": "",
            "revision": format!("herd-aggregator {}", env!("CARGO_PKG_VERSION")),
            "version": "0.25.0",
        },
        "config": {"original": router.config().original.clone()},
        "uptime": rfc3339(router.started_ms),
    }))
    .into_response()
}

async fn receivers(State(router): State<Arc<Router>>) -> Response {
    let names: Vec<Json> = router.config().receivers.iter().map(|r| json!({"name": r.name})).collect();
    axum::Json(names).into_response()
}
