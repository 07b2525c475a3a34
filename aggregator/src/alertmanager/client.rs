//! The `herd-aggregator silence` commands: a small client of the router's
//! Alertmanager v2 API (the same requests amtool makes).

use std::time::Duration;

use serde_json::{Value as Json, json};

use super::delivery::rfc3339;
use super::matcher::{MatchOp, parse_matchers};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid matcher: {0}")]
    Matcher(#[from] super::matcher::MatcherError),
    #[error("no matchers given (e.g. alertname=DiskFull instance=~\"db-.*\")")]
    NoMatchers,
    #[error("cannot reach {url}: {message} (is the aggregator running with alerting.router_config set?)")]
    Http { url: String, message: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

/// Where the router's API is, and the bearer token to present (the
/// `editor` role adds and expires silences).
#[derive(Debug, Clone)]
pub struct RouterEndpoint {
    pub url: String,
    pub token: Option<String>,
}

fn request(api: &RouterEndpoint, method: &str, url: &str, body: Option<&Json>) -> Result<String, ClientError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let http = |e: ureq::Error| ClientError::Http { url: url.to_owned(), message: e.to_string() };
    let authorization = api.token.as_ref().map(|token| format!("Bearer {token}"));
    let response = match (method, body) {
        ("POST", Some(body)) => {
            let mut request = agent.post(url).header("Content-Type", "application/json");
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.send(&serde_json::to_vec(body).expect("JSON serializes")[..]).map_err(http)?
        }
        ("DELETE", _) => {
            let mut request = agent.delete(url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call().map_err(http)?
        }
        _ => {
            let mut request = agent.get(url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call().map_err(http)?
        }
    };
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(ClientError::Status { url: url.to_owned(), status, body: text })
    }
}

/// Creates a silence; returns its ID.
pub fn add_silence(
    api: &RouterEndpoint,
    matchers: &[String],
    duration: Duration,
    author: &str,
    comment: &str,
) -> Result<String, ClientError> {
    let mut parsed = Vec::new();
    for m in matchers {
        parsed.extend(parse_matchers(m)?);
    }
    if parsed.is_empty() {
        return Err(ClientError::NoMatchers);
    }
    let now = super::now_ms();
    let body = json!({
        "matchers": parsed.iter().map(|m| json!({
            "name": m.name,
            "value": m.value,
            "isRegex": matches!(m.op, MatchOp::Regex | MatchOp::NotRegex),
            "isEqual": matches!(m.op, MatchOp::Equal | MatchOp::Regex),
        })).collect::<Vec<_>>(),
        "startsAt": rfc3339(now),
        "endsAt": rfc3339(now + duration.as_millis() as i64),
        "createdBy": author,
        "comment": comment,
    });
    let url = format!("{}/api/v2/silences", api.url.trim_end_matches('/'));
    let answer: Json = serde_json::from_str(&request(api, "POST", &url, Some(&body))?).unwrap_or(Json::Null);
    Ok(answer["silenceID"].as_str().unwrap_or_default().to_owned())
}

/// Lists silences (all states when `expired`, else active and pending) as a table.
pub fn query_silences(api: &RouterEndpoint, matchers: &[String], expired: bool) -> Result<String, ClientError> {
    let mut url = format!("{}/api/v2/silences", api.url.trim_end_matches('/'));
    let mut query = form_urlencoded::Serializer::new(String::new());
    for m in matchers {
        query.append_pair("filter", m);
    }
    let query = query.finish();
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    let list: Json = serde_json::from_str(&request(api, "GET", &url, None)?).unwrap_or(Json::Null);
    let mut out = format!(
        "{:<36}  {:<8}  {:<25}  {:<12}  {:<40}  {}\n",
        "ID", "STATE", "ENDS AT", "CREATED BY", "MATCHERS", "COMMENT"
    );
    for silence in list.as_array().into_iter().flatten() {
        let state = silence["status"]["state"].as_str().unwrap_or_default();
        if state == "expired" && !expired {
            continue;
        }
        let matchers: Vec<String> = silence["matchers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let op = match (m["isRegex"].as_bool(), m["isEqual"].as_bool()) {
                    (Some(true), Some(false)) => "!~",
                    (Some(true), _) => "=~",
                    (_, Some(false)) => "!=",
                    _ => "=",
                };
                format!("{}{op}{:?}", m["name"].as_str().unwrap_or_default(), m["value"].as_str().unwrap_or_default())
            })
            .collect();
        out.push_str(&format!(
            "{:<36}  {:<8}  {:<25}  {:<12}  {:<40}  {}\n",
            silence["id"].as_str().unwrap_or_default(),
            state,
            silence["endsAt"].as_str().unwrap_or_default(),
            silence["createdBy"].as_str().unwrap_or_default(),
            matchers.join(" "),
            silence["comment"].as_str().unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Expires a silence now.
pub fn expire_silence(api: &RouterEndpoint, id: &str) -> Result<(), ClientError> {
    let url = format!("{}/api/v2/silence/{id}", api.url.trim_end_matches('/'));
    request(api, "DELETE", &url, None).map(|_| ())
}
