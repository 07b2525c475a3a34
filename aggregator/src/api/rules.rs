//! `/api/v1/rules` and `/api/v1/alerts` in Prometheus's shapes, from
//! snapshots of the rule manager's groups, and `POST /-/reload` (Prometheus's
//! lifecycle endpoint, `editor` role): the rule files are read again, and a
//! broken one keeps the running rules and is answered 500 with the errors.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value as Json, json};

use crate::rules::{Alert, AlertState, Group, Health, Rule, RuleManager};

/// The routes, with their own state: merge them into the API's router.
pub fn routes(rules: Arc<RuleManager>) -> Router {
    Router::new()
        .route("/api/v1/rules", get(rules_handler))
        .route("/api/v1/alerts", get(alerts_handler))
        .route("/-/reload", post(reload))
        .with_state(rules)
}

async fn reload(State(rules): State<Arc<RuleManager>>) -> Response {
    match rules.apply_config().await {
        Ok(groups) => {
            tracing::info!(groups, "rule files reloaded over HTTP");
            format!("reloaded {groups} rule groups\n").into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "rule reload refused, previous rules keep running");
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("failed to reload config: {err}\n")).into_response()
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct RulesParams {
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn rules_handler(State(rules): State<Arc<RuleManager>>, Query(params): Query<RulesParams>) -> Response {
    let (alerting, recording) = match params.kind.as_deref() {
        None | Some("") => (true, true),
        Some("alert") => (true, false),
        Some("record") => (false, true),
        Some(other) => {
            let body = json!({"status": "error", "errorType": "bad_data", "error": format!("invalid rule type {other:?}: must be \"alert\" or \"record\"")});
            return (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let groups: Vec<Json> = rules.groups().await.iter().map(|g| group_json(g, alerting, recording)).collect();
    axum::Json(json!({"status": "success", "data": {"groups": groups}})).into_response()
}

async fn alerts_handler(State(rules): State<Arc<RuleManager>>) -> Response {
    let alerts: Vec<Json> = rules
        .groups()
        .await
        .iter()
        .flat_map(|g| g.rules.iter())
        .flat_map(|r| r.active.values())
        .filter(|a| a.state != AlertState::Inactive)
        .map(alert_json)
        .collect();
    axum::Json(json!({"status": "success", "data": {"alerts": alerts}})).into_response()
}

fn group_json(group: &Group, alerting: bool, recording: bool) -> Json {
    let rules: Vec<Json> = group
        .rules
        .iter()
        .filter_map(|state| {
            let health = match state.health {
                Health::Ok => "ok",
                Health::Err => "err",
                Health::Unknown => "unknown",
            };
            let mut rule = match &state.rule {
                Rule::Alerting(rule) if alerting => {
                    let alerts: Vec<&Alert> =
                        state.active.values().filter(|a| a.state != AlertState::Inactive).collect();
                    let rule_state = if alerts.iter().any(|a| a.state == AlertState::Firing) {
                        "firing"
                    } else if alerts.is_empty() {
                        "inactive"
                    } else {
                        "pending"
                    };
                    json!({
                        "state": rule_state,
                        "name": rule.alert,
                        "query": rule.expr_text,
                        "duration": rule.hold.as_secs_f64(),
                        "keepFiringFor": rule.keep_firing_for.as_secs_f64(),
                        "labels": pairs(rule.labels.iter().map(|(n, t)| (n.as_str(), t.source()))),
                        "annotations": pairs(rule.annotations.iter().map(|(n, t)| (n.as_str(), t.source()))),
                        "alerts": alerts.into_iter().map(alert_json).collect::<Vec<_>>(),
                        "type": "alerting",
                    })
                }
                Rule::Recording(rule) if recording => json!({
                    "name": rule.record,
                    "query": rule.expr_text,
                    "labels": pairs(rule.labels.iter()),
                    "type": "recording",
                }),
                _ => return None,
            };
            let object = rule.as_object_mut().expect("built as an object");
            object.insert("health".into(), health.into());
            if let Some(error) = &state.last_error {
                object.insert("lastError".into(), error.clone().into());
            }
            object.insert("evaluationTime".into(), state.last_eval_duration.as_secs_f64().into());
            object.insert("lastEvaluation".into(), time_json(state.last_eval_ms).into());
            Some(rule)
        })
        .collect();
    json!({
        "name": group.name,
        "file": group.file.display().to_string(),
        "rules": rules,
        "interval": group.interval.as_secs_f64(),
        "limit": group.limit,
        "evaluationTime": group.last_eval_duration.as_secs_f64(),
        "lastEvaluation": time_json(group.last_eval_ms),
    })
}

fn alert_json(alert: &Alert) -> Json {
    let mut out = json!({
        "labels": pairs(alert.labels.iter()),
        "annotations": pairs(alert.annotations.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        "state": alert.state.as_str(),
        "activeAt": time_json(Some(alert.active_at_ms)),
        "value": go_exponent(alert.value),
    });
    if let Some(since) = alert.keep_firing_since_ms {
        out.as_object_mut()
            .expect("built as an object")
            .insert("keepFiringSince".into(), time_json(Some(since)).into());
    }
    out
}

fn pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Json {
    Json::Object(pairs.map(|(n, v)| (n.to_owned(), Json::String(v.to_owned()))).collect::<Map<_, _>>())
}

/// RFC 3339 with milliseconds; Go's zero time when never.
fn time_json(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "0001-01-01T00:00:00Z".to_owned() };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, as Prometheus prints an alert's value.
fn go_exponent(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let text = format!("{v:e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let exponent: i32 = exponent.parse().unwrap_or(0);
            format!("{mantissa}e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs())
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_prometheus_does() {
        for (value, expected) in
            [(1.0, "1e+00"), (35.5, "3.55e+01"), (0.001, "1e-03"), (-2.0, "-2e+00"), (f64::NAN, "NaN")]
        {
            assert_eq!(go_exponent(value), expected);
        }
        assert_eq!(time_json(None), "0001-01-01T00:00:00Z");
        assert_eq!(time_json(Some(1_500)), "1970-01-01T00:00:01.5Z");
    }
}
