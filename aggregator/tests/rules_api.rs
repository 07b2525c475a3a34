//! `/api/v1/rules` and `/api/v1/alerts` in Prometheus's shapes, served from
//! a running rule manager.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use herd_aggregator::promql::Engine;
use herd_aggregator::rules::{EvalContext, ManagerOptions, RuleManager};
use herd_aggregator::store::{MemStore, Storage};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const RULES: &str = r#"
groups:
  - name: always
    interval: 1s
    rules:
      - record: herd:one
        expr: vector(1)
        labels:
          source: test
      - alert: AlwaysFiring
        expr: vector(2) > 1
        labels:
          severity: page
        annotations:
          summary: "value is {{ $value }}"
      - alert: AlwaysPending
        expr: vector(1)
        for: 1h
"#;

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, Json) {
    let response =
        router.clone().oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_alerts_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("always.yml"), RULES).expect("write rules");
    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    let engine = Arc::new(Engine::new(Arc::clone(&store), Duration::from_secs(300), 10_000));
    let options = ManagerOptions {
        files: vec![dir.path().join("always.yml").display().to_string()],
        default_interval: Duration::from_secs(60),
        state_path: dir.path().join("alerts.json"),
        context: EvalContext::default(),
    };
    let shutdown = CancellationToken::new();
    let manager = Arc::new(RuleManager::new(engine, store, None, options, shutdown.clone()));
    manager.apply_config().await.expect("rules apply");
    let router = herd_aggregator::api::rules::routes(Arc::clone(&manager));

    let started = Instant::now();
    let alerts = loop {
        let (status, body) = get(&router, "/api/v1/alerts").await;
        assert_eq!(status, StatusCode::OK);
        let alerts = body["data"]["alerts"].as_array().cloned().unwrap_or_default();
        if alerts.len() == 2 {
            break alerts;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "alerts never appeared: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let firing = alerts.iter().find(|a| a["labels"]["alertname"] == "AlwaysFiring").expect("firing alert");
    assert_eq!(firing["state"], "firing");
    assert_eq!(firing["value"], "2e+00");
    assert_eq!(firing["annotations"]["summary"], "value is 2");
    assert_eq!(firing["labels"]["severity"], "page");
    assert!(firing["activeAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{firing}");
    let pending = alerts.iter().find(|a| a["labels"]["alertname"] == "AlwaysPending").expect("pending alert");
    assert_eq!(pending["state"], "pending");

    let (status, body) = get(&router, "/api/v1/rules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "success");
    let group = &body["data"]["groups"][0];
    assert_eq!(group["name"], "always");
    assert_eq!(group["interval"], 1.0);
    let rules = group["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0]["type"], "recording");
    assert_eq!(rules[0]["name"], "herd:one");
    assert_eq!(rules[0]["labels"]["source"], "test");
    assert_eq!(rules[0]["health"], "ok");
    assert_eq!(rules[1]["type"], "alerting");
    assert_eq!(rules[1]["state"], "firing");
    assert_eq!(rules[1]["query"], "vector(2) > 1");
    assert_eq!(rules[1]["annotations"]["summary"], "value is {{ $value }}");
    assert_eq!(rules[1]["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(rules[2]["state"], "pending");
    assert_eq!(rules[2]["duration"], 3600.0);

    let (_, body) = get(&router, "/api/v1/rules?type=record").await;
    assert_eq!(body["data"]["groups"][0]["rules"].as_array().map(Vec::len), Some(1));
    let (status, body) = get(&router, "/api/v1/rules?type=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errorType"], "bad_data");

    manager.stop().await;
}
