//! `POST /api/v1/write`: Prometheus remote_write 1.0 into the aggregator.
//!
//! A request is authenticated by the auth layer before it gets here (a
//! bearer token or basic auth from `[remote_write_receiver]`, valid on this
//! route only, or an `editor` token), size-checked, decoded, written to the WAL and
//! synced, and only then appended to the store and answered 204, through
//! the same `SeriesLog` agent batches use: received samples are durable,
//! replayed, queried and alerted on like an agent's.
//!
//! Answers follow Prometheus's receiver: 400 for a body that does not
//! decode and for samples the store refuses (a different value at a stored
//! timestamp; the rest of the request is stored), 401 without valid
//! credentials, 413 for a body over the limit, 500 when the WAL cannot sync
//! (the sender retries).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use herd_common::config::remote_write::ReceiverConfig;
use herd_common::metric::Labels;
use tracing::warn;

use super::ReceiverStats;
use super::proto;
use crate::ingest::SeriesLog;
use crate::store::SeriesRef;
use crate::wal;

/// The WAL's `agent` field for samples that came in over remote_write.
pub const WAL_SOURCE: &str = "remote_write";
/// The WAL's batch sequence for received samples: replay records it for
/// deduplication, and agents count from 0, so no agent's batch is ever
/// mistaken for one already stored.
const RECEIVED_SEQ: u64 = u64::MAX;
/// A request's decompressed size may be this many times its body limit.
const MAX_EXPANSION: usize = 8;

pub struct Receiver {
    log: Arc<SeriesLog>,
    config: ReceiverConfig,
    pub stats: Arc<ReceiverStats>,
}

impl Receiver {
    pub fn new(log: Arc<SeriesLog>, config: ReceiverConfig) -> Self {
        Self { log, config, stats: Arc::new(ReceiverStats::default()) }
    }
}

pub fn routes(receiver: Arc<Receiver>) -> Router {
    Router::new().route("/api/v1/write", post(write)).with_state(receiver)
}

fn refuse(stats: &ReceiverStats, reason: &'static str, status: StatusCode, message: String) -> Response {
    stats.refuse(reason);
    let mut response = (status, message + "\n").into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

async fn write(State(receiver): State<Arc<Receiver>>, body: Body) -> Response {
    let stats = &receiver.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let limit = receiver.config.max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            return refuse(
                stats,
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {limit} bytes (remote_write_receiver.max_body_bytes), or cut off"),
            );
        }
    };
    let request = match proto::decode(&body, limit.saturating_mul(MAX_EXPANSION)) {
        Ok(request) => request,
        Err(err) => return refuse(stats, "malformed", StatusCode::BAD_REQUEST, err.to_string()),
    };
    let mut wal_bytes = Vec::new();
    let mut new_series: Vec<SeriesRef> = Vec::new();
    let mut points: Vec<(i64, SeriesRef, f64)> = Vec::new();
    for series in request.timeseries {
        let labels = match labels(series.labels) {
            Ok(labels) => labels,
            Err(message) => return refuse(stats, "malformed", StatusCode::BAD_REQUEST, message),
        };
        if series.samples.is_empty() {
            continue;
        }
        let series_ref = receiver.log.resolve(&labels, &mut wal_bytes, &mut new_series);
        points.extend(series.samples.iter().map(|s| (s.timestamp, series_ref, s.value)));
    }
    // The WAL holds one timestamp per samples record.
    points.sort_by_key(|&(timestamp_ms, _, _)| timestamp_ms);
    let mut group: Vec<(SeriesRef, f64)> = Vec::new();
    for_each_timestamp(&points, &mut group, |timestamp_ms, group| {
        wal::encode_samples(WAL_SOURCE, RECEIVED_SEQ, timestamp_ms, group, &mut wal_bytes);
    });
    if let Err(err) = receiver.log.sync(wal_bytes, new_series).await {
        warn!(error = %err, "remote_write request not stored: WAL sync failed");
        return refuse(stats, "not_durable", StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
    }
    let mut rejected = 0usize;
    let mut first_error = None;
    let mut observed = crate::ingest::ObservedSamples::default();
    for_each_timestamp(&points, &mut group, |timestamp_ms, group| {
        if let Some(err) = receiver.log.append(timestamp_ms, group) {
            rejected += 1;
            first_error.get_or_insert(err);
        }
        receiver.log.note_appended(group, &mut observed);
    });
    receiver.log.note_durable(&mut observed);
    stats.samples.fetch_add(points.len() as u64, Ordering::Relaxed);
    match first_error {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(err) => refuse(
            stats,
            "rejected_samples",
            StatusCode::BAD_REQUEST,
            format!("samples at {rejected} timestamps refused, the rest stored: {err}"),
        ),
    }
}

/// Calls `f` once per distinct timestamp of `points` (sorted by timestamp).
fn for_each_timestamp(
    points: &[(i64, SeriesRef, f64)],
    group: &mut Vec<(SeriesRef, f64)>,
    mut f: impl FnMut(i64, &[(SeriesRef, f64)]),
) {
    for run in points.chunk_by(|a, b| a.0 == b.0) {
        group.clear();
        group.extend(run.iter().map(|&(_, series, value)| (series, value)));
        f(run[0].0, group);
    }
}

/// Checks a series' labels as Prometheus does: valid, distinct names, a metric name.
fn labels(pairs: Vec<proto::Label>) -> Result<Labels, String> {
    let mut pairs: Vec<(String, String)> =
        pairs.into_iter().filter(|l| !l.value.is_empty()).map(|l| (l.name, l.value)).collect();
    pairs.sort();
    for window in pairs.windows(2) {
        if window[0].0 == window[1].0 {
            return Err(format!("duplicate label name {:?}", window[0].0));
        }
    }
    for (name, _) in &pairs {
        let mut chars = name.chars();
        let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("invalid label name {name:?}"));
        }
    }
    if !pairs.iter().any(|(name, _)| name == herd_common::metric::METRIC_NAME) {
        return Err("a series without a metric name (__name__)".into());
    }
    Labels::from_sorted(pairs).map_err(|err| format!("invalid labels: {err}"))
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use base64::Engine as _;
    use herd_common::config::Secret;
    use tower::ServiceExt;

    use super::*;
    use crate::ingest::IngestStats;
    use crate::store::{LabelMatcher, MatchOp, MemStore, Storage};

    struct Setup {
        _dir: tempfile::TempDir,
        store: Arc<dyn Storage>,
        router: Router,
        wal_dir: std::path::PathBuf,
    }

    fn setup(config: ReceiverConfig) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = crate::wal::Wal::start(&wal_dir, 0).unwrap();
        let store: Arc<dyn Storage> = Arc::new(MemStore::new());
        let log = Arc::new(SeriesLog::new(Arc::clone(&store), wal, Arc::new(IngestStats::default())));
        // Credentials are checked by the auth layer, as in the server.
        let auth = crate::auth::Authenticator::new(&herd_common::config::http::HttpConfig {
            anonymous_role: None,
            tokens: vec![],
            client_certificates: vec![],
        })
        .unwrap();
        auth.set_remote_write_credentials(&config);
        let router = crate::auth::layer(routes(Arc::new(Receiver::new(log, config))), Arc::new(auth));
        Setup { _dir: dir, store, router, wal_dir }
    }

    fn config() -> ReceiverConfig {
        ReceiverConfig {
            enabled: true,
            allow_unauthenticated: false,
            bearer_tokens: vec![Secret::new("t0ken")],
            basic_auth: vec![("prom".into(), Secret::new("pw"))],
            max_body_bytes: 4096,
        }
    }

    fn body(series: &[(&str, &[(i64, f64)])]) -> Vec<u8> {
        let request = proto::WriteRequest {
            timeseries: series
                .iter()
                .map(|(name, samples)| proto::TimeSeries {
                    labels: vec![
                        proto::Label { name: "__name__".into(), value: (*name).into() },
                        proto::Label { name: "job".into(), value: "prometheus".into() },
                    ],
                    samples: samples.iter().map(|&(timestamp, value)| proto::Sample { value, timestamp }).collect(),
                })
                .collect(),
        };
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        proto::encode(&request, &mut scratch, &mut out);
        out
    }

    async fn post(router: &Router, authorization: Option<&str>, body: Vec<u8>) -> (StatusCode, String) {
        let mut request = Request::post("/api/v1/write").header("Content-Encoding", "snappy");
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let response = router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn stored(store: &Arc<dyn Storage>, name: &str) -> Vec<(i64, f64)> {
        let matcher = LabelMatcher::new(MatchOp::Equal, "__name__", name).unwrap();
        let mut out = Vec::new();
        for (series, _) in store.select(&[matcher]) {
            let mut samples = Vec::new();
            store.read(series, i64::MIN, i64::MAX, &mut samples);
            out.extend(samples.iter().map(|s| (s.timestamp_ms, s.value)));
        }
        out
    }

    #[tokio::test]
    async fn credentials_are_required() {
        let s = setup(config());
        let write = body(&[("up", &[(1000, 1.0)])]);
        assert_eq!(post(&s.router, None, write.clone()).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&s.router, Some("Bearer wrong"), write.clone()).await.0, StatusCode::UNAUTHORIZED);
        let bad_basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("prom:nope"));
        assert_eq!(post(&s.router, Some(&bad_basic), write.clone()).await.0, StatusCode::UNAUTHORIZED);
        assert!(stored(&s.store, "up").is_empty(), "nothing stored without credentials");
        assert_eq!(post(&s.router, Some("Bearer t0ken"), write.clone()).await.0, StatusCode::NO_CONTENT);
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("prom:pw"));
        assert_eq!(post(&s.router, Some(&basic), write).await.0, StatusCode::NO_CONTENT);
        assert_eq!(stored(&s.store, "up"), [(1000, 1.0)]);
    }

    #[tokio::test]
    async fn garbage_and_oversized_bodies_get_clear_errors() {
        let s = setup(config());
        let (status, message) = post(&s.router, Some("Bearer t0ken"), b"this is not snappy".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("snappy") || message.contains("protobuf"), "{message}");
        let (status, message) = post(&s.router, Some("Bearer t0ken"), vec![0u8; 5000]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{message}");
        let nameless = {
            let request = proto::WriteRequest {
                timeseries: vec![proto::TimeSeries {
                    labels: vec![proto::Label { name: "job".into(), value: "x".into() }],
                    samples: vec![proto::Sample { value: 1.0, timestamp: 1 }],
                }],
            };
            let (mut scratch, mut out) = (Vec::new(), Vec::new());
            proto::encode(&request, &mut scratch, &mut out);
            out
        };
        let (status, message) = post(&s.router, Some("Bearer t0ken"), nameless).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("metric name"), "{message}");
        // The receiver keeps serving.
        assert_eq!(post(&s.router, Some("Bearer t0ken"), body(&[("up", &[(5, 1.0)])])).await.0, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn samples_are_in_the_wal_and_duplicates_answer_like_prometheus() {
        let s = setup(config());
        let write = body(&[("a", &[(1000, 1.0), (2000, 2.0)]), ("b", &[(1000, 10.0)])]);
        assert_eq!(post(&s.router, Some("Bearer t0ken"), write.clone()).await.0, StatusCode::NO_CONTENT);
        // The same request again (a sender's retry): same values, accepted.
        assert_eq!(post(&s.router, Some("Bearer t0ken"), write).await.0, StatusCode::NO_CONTENT);
        assert_eq!(stored(&s.store, "a"), [(1000, 1.0), (2000, 2.0)]);
        // A different value at a stored timestamp is refused; the other sample is stored.
        let (status, message) =
            post(&s.router, Some("Bearer t0ken"), body(&[("a", &[(1000, 7.0), (3000, 3.0)])])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        assert_eq!(stored(&s.store, "a"), [(1000, 1.0), (2000, 2.0), (3000, 3.0)]);
        // Replaying the WAL finds every sample.
        let mut replayed = Vec::new();
        crate::wal::replay(&s.wal_dir, |record| replayed.push(record)).unwrap();
        let samples: usize = replayed
            .iter()
            .map(|r| match r {
                crate::wal::WalRecord::Samples { agent, samples, .. } => {
                    assert_eq!(agent, WAL_SOURCE);
                    samples.len()
                }
                _ => 0,
            })
            .sum();
        assert_eq!(samples, 3 + 3 + 2);
    }
}
