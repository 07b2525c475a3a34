//! `/api/v1/query` and `/api/v1/query_range`: Prometheus's parameters
//! (`query`, `time`, `start`, `end`, `step`, `timeout`, `stats`), checks and
//! messages. Evaluation runs on its own thread with a large stack, a bounded
//! number at a time, each within its timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use promql_parser::parser::Expr;

use super::json::{self, Timings};
use super::params::{ApiError, Params};
use super::{ApiState, json_response, now_ms};
use crate::promql::{Engine, QueryRange};

/// Most points one range query may return per series, as Prometheus.
const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// Stack of a query thread. Evaluation recurses once per level of the
/// expression (at most `promql::MAX_EXPRESSION_DEPTH`); this is room for that
/// many levels many times over, in any build. Untouched pages cost nothing.
const QUERY_STACK_BYTES: usize = 64 << 20;

pub(crate) async fn instant(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    let time_ms = params.time_or("time", now_ms())?;
    let timeout = params.duration("timeout")?;
    let expr = Engine::parse(params.get("query").unwrap_or("")).map_err(|err| ApiError::invalid_param("query", err))?;
    let stats = params.get_non_empty("stats").is_some();
    execute(state, expr, QueryRange::Instant { time_ms }, timeout, stats).await
}

pub(crate) async fn range(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    let start_ms = params.time("start")?;
    let end_ms = params.time("end")?;
    if end_ms < start_ms {
        return Err(ApiError::invalid_param("end", "end timestamp must not be before start time"));
    }
    let step_ms = params
        .duration("step")?
        .ok_or_else(|| ApiError::invalid_param("step", "cannot parse \"\" to a valid duration"))?;
    if step_ms <= 0 {
        return Err(ApiError::invalid_param(
            "step",
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    // For safety, bound the points per series (60s steps for a week, 1h for a year).
    if (end_ms - start_ms) / step_ms > MAX_POINTS_PER_SERIES {
        return Err(ApiError::bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let timeout = params.duration("timeout")?;
    // Unlike an instant query, Prometheus does not prefix this error with the parameter name.
    let expr = Engine::parse(params.get("query").unwrap_or("")).map_err(ApiError::from_query)?;
    let stats = params.get_non_empty("stats").is_some();
    execute(state, expr, QueryRange::Range { start_ms, end_ms, step_ms }, timeout, stats).await
}

async fn execute(
    state: Arc<ApiState>,
    expr: Expr,
    range: QueryRange,
    timeout_ms: Option<i64>,
    with_stats: bool,
) -> Result<Response, ApiError> {
    let mut limits = state.engine.limits();
    if let Some(ms) = timeout_ms {
        let requested = Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0));
        limits.timeout = Some(limits.timeout.map_or(requested, |limit| limit.min(requested)));
    }
    let queued_at = Instant::now();
    let slots = Arc::clone(&state.query_slots);
    // Queries beyond the concurrency limit wait their turn, within their timeout.
    let permit = match limits.timeout {
        Some(timeout) => tokio::time::timeout(timeout, slots.acquire_owned())
            .await
            .map_err(|_| ApiError::timeout("query timed out in query queue"))?,
        None => slots.acquire_owned().await,
    }
    .map_err(|_| ApiError::internal("the query queue is closed (shutting down)"))?;
    let queued = queued_at.elapsed();
    if let Some(timeout) = limits.timeout {
        limits.timeout = Some(timeout.saturating_sub(queued));
    }
    let evaluating = Arc::clone(&state);
    let started = Instant::now();
    let output = on_query_thread(move || {
        let _permit = permit;
        evaluating.engine.query_with_limits(&expr, range, &limits)
    })
    .await?
    .map_err(ApiError::from_query)?;
    let timings = Timings { queue_seconds: queued.as_secs_f64(), eval_seconds: started.elapsed().as_secs_f64() };
    let data = json::query_data(&output.value, with_stats.then_some((&output.stats, &timings)));
    Ok(json_response(json::success(&data)))
}

/// Runs `work` on a new thread with a stack sized for deep expressions, off
/// the I/O threads (evaluation is CPU work), and waits for its result.
pub(crate) async fn on_query_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("herd-query".into())
        .stack_size(QUERY_STACK_BYTES)
        .spawn(move || {
            // The receiver is gone only if the client went away; nothing to do then.
            let _ = done.send(work());
        })
        .map_err(|err| ApiError::internal(format!("cannot start a query thread: {err}")))?;
    result.await.map_err(|_| ApiError::internal("query evaluation failed"))
}

/// `/api/v1/query_exemplars`: Herd stores no exemplars, so the answer is
/// Prometheus's for a store without any, an empty list, after the same
/// checks of `query`, `start` and `end`. Grafana's Prometheus data source
/// asks it to decide whether to offer exemplars.
pub(crate) async fn exemplars(
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    let start_ms = params.time_or("start", i64::MIN)?;
    let end_ms = params.time_or("end", i64::MAX)?;
    if end_ms < start_ms {
        return Err(ApiError::invalid_param("end", "end timestamp must not be before start timestamp"));
    }
    Engine::parse(params.get("query").unwrap_or("")).map_err(|err| ApiError::invalid_param("query", err))?;
    Ok(json_response(json::success("[]")))
}

/// `/api/v1/format_query`: the expression, prettified as Prometheus prints it.
pub(crate) async fn format(
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::new(&method, &headers, raw.as_deref(), &body);
    let expr = Engine::parse(params.get("query").unwrap_or("")).map_err(|err| ApiError::invalid_param("query", err))?;
    let formatted = serde_json::to_string(&expr.prettify()).map_err(|err| ApiError::internal(err.to_string()))?;
    Ok(json_response(json::success(&formatted)))
}
