//! Request parameters as Prometheus reads them: the URL query and, for POST,
//! an `application/x-www-form-urlencoded` body (whose values come first),
//! times as Unix seconds or RFC 3339, durations as seconds or `5m`, and the
//! Prometheus error envelope every failure is answered with.

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::promql::{self, QueryError};
use crate::store::LabelMatcher;

/// A failed API call: Prometheus's `errorType` and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn bad_data(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error_type: "bad_data", message: message.into() }
    }

    /// Prometheus's `invalid parameter "name": …`.
    pub(crate) fn invalid_param(name: &str, message: impl std::fmt::Display) -> Self {
        Self::bad_data(format!("invalid parameter {name:?}: {message}"))
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, error_type: "internal", message: message.into() }
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, error_type: "timeout", message: message.into() }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, error_type: "not_found", message: message.into() }
    }

    /// Maps an evaluation error as Prometheus does: bad queries are
    /// `bad_data` (400), time-outs `timeout` (503), the rest `execution` (422).
    pub(crate) fn from_query(err: QueryError) -> Self {
        match err {
            QueryError::Parse(_) | QueryError::BadRequest(_) => Self::bad_data(err.to_string()),
            QueryError::Timeout { .. } => Self::timeout(err.to_string()),
            QueryError::Unsupported(_)
            | QueryError::Execution(_)
            | QueryError::TooManySamples { .. }
            | QueryError::TooManySamplesRead { .. }
            | QueryError::TooManySeries { .. } => {
                Self { status: StatusCode::UNPROCESSABLE_ENTITY, error_type: "execution", message: err.to_string() }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "errorType": self.error_type, "error": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

/// The parameters of one request, body values before URL values, as Go's
/// `Request.Form` orders them.
#[derive(Debug, Default)]
pub(crate) struct Params {
    values: Vec<(String, String)>,
}

impl Params {
    /// Reads the URL query and, for a POST with a form body, the body. Bodies
    /// of other types are ignored, as Prometheus (Go's `ParseForm`) does.
    pub(crate) fn new(method: &Method, headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Self {
        let mut values: Vec<(String, String)> = Vec::new();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if *method == Method::POST && is_form {
            values.extend(form_urlencoded::parse(body).into_owned());
        }
        values.extend(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned());
        Self { values }
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `name`; Prometheus treats an empty value as absent.
    pub(crate) fn get_non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.values.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    /// A time parameter in milliseconds, or `default` if absent.
    pub(crate) fn time_or(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.get_non_empty(name) {
            None => Ok(default),
            Some(text) => parse_time(text).map_err(|message| {
                ApiError::invalid_param(name, format!("Invalid time value for '{name}': {message}"))
            }),
        }
    }

    /// A required time parameter in milliseconds.
    pub(crate) fn time(&self, name: &str) -> Result<i64, ApiError> {
        parse_time(self.get(name).unwrap_or("")).map_err(|message| ApiError::invalid_param(name, message))
    }

    /// An optional duration parameter in milliseconds.
    pub(crate) fn duration(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get_non_empty(name)
            .map(parse_duration)
            .transpose()
            .map_err(|message| ApiError::invalid_param(name, message))
    }

    /// `match[]` selectors, each as one or more matcher sets.
    pub(crate) fn matcher_sets(&self) -> Result<Vec<Vec<LabelMatcher>>, ApiError> {
        let mut sets = Vec::new();
        for text in self.all("match[]") {
            let alternatives =
                promql::parse_series_selector(text).map_err(|err| ApiError::invalid_param("match[]", err))?;
            for matchers in alternatives {
                // Matching everything by accident (`{job=~".*"}`) is refused, as in Prometheus.
                if matchers.iter().all(|m| m.matches("")) {
                    return Err(ApiError::bad_data("match[] must contain at least one non-empty matcher"));
                }
                sets.push(matchers);
            }
        }
        Ok(sets)
    }
}

/// A Prometheus time: Unix seconds (fractions allowed, kept to the
/// millisecond) or RFC 3339; in milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
        && seconds.abs() < 9.2e15
    {
        return Ok((seconds * 1000.0).round() as i64);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos().div_euclid(1_000_000)) as i64)
        .map_err(|_| format!("cannot parse {text:?} to a valid timestamp"))
}

/// A Prometheus duration: seconds (fractions allowed) or `1m30s`; in milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        let ms = seconds * 1000.0;
        if !ms.is_finite() || ms.abs() > 9.2e15 {
            return Err(format!("cannot parse {text:?} to a valid duration. It overflows int64"));
        }
        return Ok(ms as i64);
    }
    promql::parse_duration_ms(text).ok_or_else(|| format!("cannot parse {text:?} to a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1700000000.123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20.5+01:00"), Ok(1_700_000_000_500));
        assert_eq!(parse_time("-1.5"), Ok(-1500));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("NaN").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn durations_parse_as_seconds_or_promql_durations() {
        assert_eq!(parse_duration("15"), Ok(15_000));
        assert_eq!(parse_duration("0.5"), Ok(500));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert!(parse_duration("1e30").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn body_values_come_before_query_values() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
        let params = Params::new(&Method::POST, &headers, Some("query=a&match[]=x"), b"query=b&match[]=y");
        assert_eq!(params.get("query"), Some("b"));
        assert_eq!(params.all("match[]"), vec!["y", "x"]);
        let ignored = Params::new(&Method::POST, &HeaderMap::new(), Some("query=a"), b"query=b");
        assert_eq!(ignored.get("query"), Some("a"), "a body that is not a form is ignored");
    }
}
