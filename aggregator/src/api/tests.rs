//! The HTTP API through the real router (`tower::ServiceExt::oneshot`) over
//! a real `MemStore`: status codes, error types and JSON shapes as
//! Prometheus 2.42 returns them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use herd_common::metric::Labels;
use serde_json::{Value as Json, json};
use tower::ServiceExt;

use super::{ApiState, router};
use crate::fleet::Fleet;
use crate::ingest::IngestStats;
use crate::promql::{Engine, Limits};
use crate::store::{MemStore, Sample, Storage};

/// `up` for two node instances and one redis, a sample every 15s from 0 to 600s.
fn store() -> Arc<MemStore> {
    let store = Arc::new(MemStore::new());
    for (job, instance, value) in [("node", "a:9100", 1.0), ("node", "b:9100", 0.0), ("redis", "c:9121", 1.0)] {
        let labels = Labels::from_pairs([("__name__", "up"), ("job", job), ("instance", instance)]);
        let series = store.series_ref(&labels);
        for t in (0..=600_000).step_by(15_000) {
            store.append(series, Sample { timestamp_ms: t, value }).unwrap();
        }
    }
    store
}

fn state_with(limits: Limits) -> Arc<ApiState> {
    let store = store();
    let engine =
        Engine::new(Arc::clone(&store) as Arc<dyn Storage>, Duration::from_secs(300), 1000).with_limits(limits);
    Arc::new(ApiState::new(
        engine,
        store,
        Arc::new(Fleet::new()),
        Arc::new(IngestStats::default()),
        Arc::new(AtomicBool::new(true)),
    ))
}

fn state() -> Arc<ApiState> {
    state_with(Limits::default())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_form(uri: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

async fn call(state: Arc<ApiState>, request: Request<Body>) -> (StatusCode, Json) {
    let response = router(state).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into()));
    (status, json)
}

/// Checks status and the whole body.
async fn check(request: Request<Body>, status: StatusCode, body: Json) {
    let uri = request.uri().to_string();
    let (got_status, got_body) = call(state(), request).await;
    assert_eq!((got_status, &got_body), (status, &body), "{uri}");
}

/// Checks an error: status, `errorType` and the start of the message.
async fn check_error(
    state: Arc<ApiState>,
    request: Request<Body>,
    status: StatusCode,
    error_type: &str,
    message: &str,
) {
    let uri = request.uri().to_string();
    let (got_status, body) = call(state, request).await;
    assert_eq!(got_status, status, "{uri}: {body}");
    assert_eq!(body["status"], "error", "{uri}");
    assert_eq!(body["errorType"], error_type, "{uri}: {body}");
    let error = body["error"].as_str().unwrap_or("");
    assert!(error.starts_with(message), "{uri}: {error:?} does not start with {message:?}");
}

#[tokio::test]
async fn instant_queries_return_each_result_type() {
    check(
        get("/api/v1/query?query=up%7Bjob%3D%22node%22%7D&time=600"),
        StatusCode::OK,
        json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "instance": "a:9100", "job": "node"}, "value": [600, "1"]},
            {"metric": {"__name__": "up", "instance": "b:9100", "job": "node"}, "value": [600, "0"]},
        ]}}),
    )
    .await;
    check(
        post_form("/api/v1/query", "query=sum+by+(job)+(up)&time=600.5"),
        StatusCode::OK,
        json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"job": "node"}, "value": [600.5, "1"]},
            {"metric": {"job": "redis"}, "value": [600.5, "1"]},
        ]}}),
    )
    .await;
    check(
        get("/api/v1/query?query=1%2F0&time=10"),
        StatusCode::OK,
        json!({"status": "success", "data": {"resultType": "scalar", "result": [10, "+Inf"]}}),
    )
    .await;
    check(
        get("/api/v1/query?query=%22hello%22&time=10"),
        StatusCode::OK,
        json!({"status": "success", "data": {"resultType": "string", "result": [10, "hello"]}}),
    )
    .await;
    check(
        get("/api/v1/query?query=up%7Bjob%3D%22redis%22%7D%5B20s%5D&time=600"),
        StatusCode::OK,
        json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"__name__": "up", "instance": "c:9121", "job": "redis"}, "values": [[585, "1"], [600, "1"]]},
        ]}}),
    )
    .await;
}

#[tokio::test]
async fn range_queries_return_a_matrix_with_a_point_per_step() {
    check(
        get("/api/v1/query_range?query=sum(up)&start=0&end=60&step=30"),
        StatusCode::OK,
        json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {}, "values": [[0, "2"], [30, "2"], [60, "2"]]},
        ]}}),
    )
    .await;
    // Scalars become one series without labels; RFC 3339 times and duration steps work.
    check(
        post_form("/api/v1/query_range", "query=time()&start=1970-01-01T00:00:00Z&end=1970-01-01T00:01:00Z&step=1m"),
        StatusCode::OK,
        json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {}, "values": [[0, "0"], [60, "60"]]},
        ]}}),
    )
    .await;
    let (status, body) =
        call(state(), get("/api/v1/query_range?query=rate(up[1m])&start=0&end=600&step=15&stats=all")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["result"].as_array().map(Vec::len), Some(3));
    assert!(body["data"]["stats"]["samples"]["totalQueryableSamples"].as_u64().unwrap() > 0);
    assert!(body["data"]["stats"]["timings"]["execTotalTime"].is_number());
}

#[tokio::test]
async fn bad_requests_are_bad_data_with_prometheus_messages() {
    for (request, message) in [
        (get("/api/v1/query?query=up%7B"), "invalid parameter \"query\": "),
        (get("/api/v1/query?time=10"), "invalid parameter \"query\": "),
        (get("/api/v1/query?query=up&time=yesterday"), "invalid parameter \"time\": Invalid time value for 'time'"),
        (get("/api/v1/query?query=up&timeout=soon"), "invalid parameter \"timeout\": cannot parse \"soon\""),
        (get("/api/v1/query_range?query=up&end=10&step=1"), "invalid parameter \"start\": cannot parse \"\""),
        (
            get("/api/v1/query_range?query=up&start=10&end=5&step=1"),
            "invalid parameter \"end\": end timestamp must not be before start time",
        ),
        (get("/api/v1/query_range?query=up&start=0&end=5"), "invalid parameter \"step\": "),
        (
            get("/api/v1/query_range?query=up&start=0&end=5&step=0"),
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted",
        ),
        (
            get("/api/v1/query_range?query=up&start=0&end=11001&step=1"),
            "exceeded maximum resolution of 11,000 points per timeseries",
        ),
        (
            get("/api/v1/query_range?query=up%5B1m%5D&start=0&end=60&step=15"),
            "invalid expression type \"range vector\" for range query",
        ),
        (get("/api/v1/series"), "no match[] parameter provided"),
        (get("/api/v1/series?match[]=up%7B"), "invalid parameter \"match[]\": "),
        (get("/api/v1/series?match[]=sum(up)"), "invalid parameter \"match[]\": "),
        (get("/api/v1/labels?match[]=%7Bjob%3D~%22.*%22%2Cinstance%3D~%22.*%22%7D"), "invalid parameter \"match[]\": "),
        (get("/api/v1/label/not-a-name/values"), "invalid label name: \"not-a-name\""),
        (get("/api/v1/labels?start=never"), "invalid parameter \"start\": "),
        (get("/api/v1/metadata?limit=many"), "limit must be a number"),
    ] {
        check_error(state(), request, StatusCode::BAD_REQUEST, "bad_data", message).await;
    }
}

#[tokio::test]
async fn evaluation_errors_are_execution_errors() {
    for (query, message) in [
        ("vector(1)%20%2B%20on()%20up", "found duplicate series for the match group"),
        (
            "label_replace(up%2C%22instance%22%2C%22%22%2C%22%22%2C%22%22)",
            "vector cannot contain metrics with the same labelset",
        ),
        ("limitk(1%2Cup)", "aggregation limitk is not supported"),
    ] {
        let request = get(&format!("/api/v1/query?query={query}&time=600"));
        check_error(state(), request, StatusCode::UNPROCESSABLE_ENTITY, "execution", message).await;
    }
}

#[tokio::test]
async fn cost_limits_give_prometheus_errors() {
    let small = state_with(Limits { max_samples: 100, ..Limits::default() });
    let request = get("/api/v1/query_range?query=rate(up%5B5m%5D)&start=0&end=600&step=15");
    check_error(
        small,
        request,
        StatusCode::UNPROCESSABLE_ENTITY,
        "execution",
        "query processing would load too many samples into memory",
    )
    .await;

    // Each series is read once for the whole range: 3 series x 41 samples = 123.
    let little_reading = state_with(Limits { max_samples_read: 100, ..Limits::default() });
    let request = get("/api/v1/query_range?query=rate(up%5B5m%5D)&start=0&end=600&step=15");
    check_error(
        little_reading,
        request,
        StatusCode::UNPROCESSABLE_ENTITY,
        "execution",
        "query would read more than 100 samples",
    )
    .await;
    let enough = state_with(Limits { max_samples_read: 123, ..Limits::default() });
    let (status, _) = call(enough, get("/api/v1/query_range?query=rate(up%5B5m%5D)&start=0&end=600&step=15")).await;
    assert_eq!(status, StatusCode::OK, "one read per series, not one per step");

    let few_series = state_with(Limits { max_series: 2, ..Limits::default() });
    check_error(
        few_series,
        get("/api/v1/query?query=up"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "execution",
        "query selects 3 series",
    )
    .await;

    // A request's own timeout applies (here: none left at all).
    check_error(
        state(),
        get("/api/v1/query?query=up&timeout=0"),
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        "query timed out in expression evaluation",
    )
    .await;

    // With every query slot taken, a query waits, then times out in the queue.
    let busy = state();
    let _held =
        Arc::clone(&busy.query_slots).acquire_many_owned(super::DEFAULT_MAX_CONCURRENT_QUERIES as u32).await.unwrap();
    check_error(
        Arc::clone(&busy),
        get("/api/v1/query?query=up&timeout=0.05"),
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        "query timed out in query queue",
    )
    .await;
}

#[tokio::test]
async fn series_labels_and_values_read_the_index() {
    let node_a = json!({"__name__": "up", "instance": "a:9100", "job": "node"});
    let node_b = json!({"__name__": "up", "instance": "b:9100", "job": "node"});
    let redis = json!({"__name__": "up", "instance": "c:9121", "job": "redis"});
    let ok = |data: Json| json!({"status": "success", "data": data});
    check(get("/api/v1/series?match[]=up%7Bjob%3D%22node%22%7D"), StatusCode::OK, ok(json!([node_a, node_b]))).await;
    // Several match[] are a union, without repeats; POST bodies work too.
    check(
        post_form(
            "/api/v1/series",
            "match[]=up{job=\"redis\"}&match[]=up{instance=\"c:9121\"}&match[]=up{instance=\"a:9100\"}",
        ),
        StatusCode::OK,
        ok(json!([node_a, redis])),
    )
    .await;
    check(get("/api/v1/series?match[]=up&start=1000&end=2000"), StatusCode::OK, ok(json!([]))).await;
    check(get("/api/v1/labels"), StatusCode::OK, ok(json!(["__name__", "instance", "job"]))).await;
    check(
        post_form("/api/v1/labels", "match[]=up{job=\"redis\"}"),
        StatusCode::OK,
        ok(json!(["__name__", "instance", "job"])),
    )
    .await;
    check(get("/api/v1/labels?match[]=nothing"), StatusCode::OK, ok(json!([]))).await;
    check(get("/api/v1/label/job/values"), StatusCode::OK, ok(json!(["node", "redis"]))).await;
    check(get("/api/v1/label/__name__/values"), StatusCode::OK, ok(json!(["up"]))).await;
    check(
        get("/api/v1/label/instance/values?match[]=%7Bjob%3D%22node%22%7D"),
        StatusCode::OK,
        ok(json!(["a:9100", "b:9100"])),
    )
    .await;
    check(get("/api/v1/label/zone/values"), StatusCode::OK, ok(json!([]))).await;
    check(get("/api/v1/label/job/values?start=700&end=800"), StatusCode::OK, ok(json!([]))).await;
    check(get("/api/v1/metadata"), StatusCode::OK, ok(json!({}))).await;
}

#[tokio::test]
async fn status_endpoints_describe_the_server() {
    let (status, body) = call(state(), get("/api/v1/status/buildinfo")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["version"], "2.42.0");
    assert!(body["data"]["revision"].as_str().unwrap().starts_with("herd-aggregator"));
    let (status, body) = call(state(), get("/api/v1/status/runtimeinfo")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["data"]["startTime"].as_str().unwrap().contains('T'));
    assert_eq!(body["data"]["reloadConfigSuccess"], true);
    check_error(state(), get("/api/v1/nothing"), StatusCode::NOT_FOUND, "not_found", "no such endpoint").await;
}
