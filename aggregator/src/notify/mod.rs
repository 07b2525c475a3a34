//! Sends alerts to Alertmanagers over their v2 API (`POST /api/v2/alerts`),
//! as Prometheus's notifier does: a bounded queue (when full, the oldest
//! alerts are dropped and counted), batches of at most `MAX_BATCH` alerts,
//! each batch posted to every configured Alertmanager with a timeout. Which
//! alerts to send and when to resend them is decided by the rules; this
//! module only delivers. HTTP goes through ureq on a blocking thread.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::rules::OutgoingAlert;

/// Alerts waiting to be sent; Prometheus's default `--alertmanager.notification-queue-capacity`.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Alerts per request, as Prometheus.
const MAX_BATCH: usize = 64;

/// One Alertmanager to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerTarget {
    /// Base URL, e.g. `http://127.0.0.1:9093`; `/api/v2/alerts` is appended.
    pub url: String,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("alertmanager {url} refused the alerts: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("cannot reach alertmanager {url}: {source}")]
    Http { url: String, source: Box<ureq::Error> },
}

/// Counts for self-monitoring (Prometheus's `prometheus_notifications_*`).
#[derive(Debug, Default)]
pub struct NotifierStats {
    pub sent_alerts: AtomicU64,
    pub errors: AtomicU64,
    pub dropped_alerts: AtomicU64,
}

pub struct Notifier {
    targets: Vec<AlertmanagerTarget>,
    queue: Mutex<VecDeque<OutgoingAlert>>,
    wake: Notify,
    pub stats: NotifierStats,
    /// The built-in router, when `alerting.router_config` is set: it gets every alert too.
    router: std::sync::OnceLock<std::sync::Arc<crate::alertmanager::Router>>,
}

/// An alert in Alertmanager's v2 JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert {
    labels: std::collections::BTreeMap<String, String>,
    annotations: std::collections::BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

impl Notifier {
    pub fn new(targets: Vec<AlertmanagerTarget>) -> Self {
        Self {
            targets,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            stats: NotifierStats::default(),
            router: std::sync::OnceLock::new(),
        }
    }

    /// Hands every alert to the built-in router as well (set once, at start).
    pub fn set_router(&self, router: std::sync::Arc<crate::alertmanager::Router>) {
        let _ = self.router.set(router);
    }

    pub fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Queues alerts; never waits. A full queue drops its oldest alerts.
    pub fn send(&self, alerts: Vec<OutgoingAlert>) {
        if let Some(router) = self.router.get()
            && !alerts.is_empty()
        {
            router.receive_rule_alerts(&alerts);
        }
        if alerts.is_empty() || self.targets.is_empty() {
            return;
        }
        {
            let mut queue = self.queue.lock().expect("notifier queue lock is not poisoned");
            queue.extend(alerts);
            let excess = queue.len().saturating_sub(QUEUE_CAPACITY);
            if excess > 0 {
                queue.drain(..excess);
                self.stats.dropped_alerts.fetch_add(excess as u64, Ordering::Relaxed);
            }
        }
        self.wake.notify_one();
    }

    /// Delivers queued alerts until `shutdown`, then tries once more to flush what is queued.
    pub async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        let mut failing = vec![false; self.targets.len()];
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = self.wake.notified() => false,
            };
            loop {
                let batch: Vec<OutgoingAlert> = {
                    let mut queue = self.queue.lock().expect("notifier queue lock is not poisoned");
                    let n = queue.len().min(MAX_BATCH);
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                self.deliver(&batch, &mut failing).await;
            }
            if stopping {
                return;
            }
        }
    }

    async fn deliver(&self, batch: &[OutgoingAlert], failing: &mut [bool]) {
        let body: Vec<PostableAlert> = batch
            .iter()
            .map(|alert| PostableAlert {
                labels: alert.labels.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
                annotations: alert.annotations.iter().cloned().collect(),
                starts_at: rfc3339(alert.starts_at_ms),
                ends_at: rfc3339(alert.ends_at_ms),
                generator_url: alert.generator_url.clone(),
            })
            .collect();
        let body = std::sync::Arc::new(serde_json::to_vec(&body).expect("alerts serialize"));
        let mut posts = tokio::task::JoinSet::new();
        for (index, target) in self.targets.iter().enumerate() {
            let (target, body) = (target.clone(), std::sync::Arc::clone(&body));
            posts.spawn_blocking(move || (index, post(&target, &body)));
        }
        while let Some(joined) = posts.join_next().await {
            let Ok((index, result)) = joined else { continue };
            let url = &self.targets[index].url;
            match result {
                Ok(()) => {
                    self.stats.sent_alerts.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if std::mem::replace(&mut failing[index], false) {
                        info!(alertmanager = %url, "alertmanager reachable again");
                    }
                }
                Err(err) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    // Log once per failure streak; the counter has the rest.
                    if !std::mem::replace(&mut failing[index], true) {
                        warn!(alertmanager = %url, error = %err, alerts = batch.len(), "cannot send alerts");
                    }
                }
            }
        }
    }
}

/// Posts one batch; blocking.
fn post(target: &AlertmanagerTarget, body: &[u8]) -> Result<(), SendError> {
    let url = format!("{}/api/v2/alerts", target.url.trim_end_matches('/'));
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(target.timeout)).http_status_as_error(false).build().into();
    let response = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|source| SendError::Http { url: target.url.clone(), source: Box::new(source) })?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let mut body = response.into_body();
    let text = body.read_to_string().unwrap_or_default();
    Err(SendError::Status { url: target.url.clone(), status, body: text.chars().take(200).collect() })
}
