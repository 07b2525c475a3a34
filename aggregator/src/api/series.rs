//! Series metadata endpoints: `/api/v1/series`, `/api/v1/labels`,
//! `/api/v1/label/<name>/values` and `/api/v1/metadata`, with Prometheus's
//! `match[]`, `start` and `end` (default: all time). They read the store's
//! index through `Storage::select_in_range`, `label_names` and `label_values`.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use herd_common::metric::Labels;

use super::params::{ApiError, Params};
use super::{ApiState, json, json_response};
use crate::store::LabelMatcher;

/// The request parts every metadata endpoint reads.
struct Selection {
    matcher_sets: Vec<Vec<LabelMatcher>>,
    start_ms: i64,
    end_ms: i64,
}

impl Selection {
    fn from_params(params: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            start_ms: params.time_or("start", i64::MIN)?,
            end_ms: params.time_or("end", i64::MAX)?,
            matcher_sets: params.matcher_sets()?,
        })
    }
}

/// Runs store work on the blocking pool: a large index walk must not stall I/O.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| ApiError::internal("store lookup failed"))
}

pub(crate) async fn series(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    if params.all("match[]").is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let selection = Selection::from_params(&params)?;
    let data = blocking(move || {
        let mut found: BTreeSet<Arc<Labels>> = BTreeSet::new();
        for matchers in &selection.matcher_sets {
            for (_, labels) in state.store.select_in_range(matchers, selection.start_ms, selection.end_ms) {
                found.insert(labels);
            }
        }
        json::label_sets(found.iter().map(|l| &**l))
    })
    .await?;
    Ok(json_response(json::success(&data)))
}

pub(crate) async fn labels(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    let selection = Selection::from_params(&params)?;
    let data = blocking(move || {
        let names: BTreeSet<String> = if selection.matcher_sets.is_empty() {
            state.store.label_names(&[], selection.start_ms, selection.end_ms).into_iter().collect()
        } else {
            selection
                .matcher_sets
                .iter()
                .flat_map(|matchers| state.store.label_names(matchers, selection.start_ms, selection.end_ms))
                .collect()
        };
        json::strings(names.iter().map(String::as_str))
    })
    .await?;
    Ok(json_response(json::success(&data)))
}

pub(crate) async fn label_values(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !is_valid_label_name(&name) {
        return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
    }
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    let selection = Selection::from_params(&params)?;
    let data = blocking(move || {
        let values: BTreeSet<String> = if selection.matcher_sets.is_empty() {
            state.store.label_values(&name, &[], selection.start_ms, selection.end_ms).into_iter().collect()
        } else {
            selection
                .matcher_sets
                .iter()
                .flat_map(|matchers| state.store.label_values(&name, matchers, selection.start_ms, selection.end_ms))
                .collect()
        };
        json::strings(values.iter().map(String::as_str))
    })
    .await?;
    Ok(json_response(json::success(&data)))
}

/// Metric metadata (HELP, TYPE, UNIT) per metric name. Herd's agents do not
/// send metadata yet, so the map is empty — what Prometheus answers when no
/// target has reported any. The parameters are still checked.
pub(crate) async fn metadata(
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    if let Some(limit) = params.get_non_empty("limit")
        && limit.parse::<i64>().is_err()
    {
        return Err(ApiError::bad_data("limit must be a number"));
    }
    Ok(json_response(json::success("{}")))
}

fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
