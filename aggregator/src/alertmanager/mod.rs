//! Herd's built-in alert router: what Alertmanager does, inside the
//! aggregator, configured by Alertmanager's own file.
//!
//! - `config`: reads `alertmanager.yml` (route tree, inhibit rules, receivers).
//! - `matcher`: label matchers in all their Alertmanager spellings.
//! - `dispatch`: groups, timers, inhibition and the notification log; no I/O, no clock.
//! - `silence`: silences, saved under the state directory.
//! - `delivery`: webhook, Slack and PagerDuty payloads and their HTTP posts; mail over SMTP.
//! - `api`: Alertmanager's v2 HTTP API (amtool, Grafana, Prometheus as a client).
//! - `client`: the `herd-aggregator silence` commands, a client of that API.
//!
//! `Router` ties them together: alerts come in from the rule manager (through
//! `notify::Notifier`) or the API, the dispatcher loop flushes groups when
//! due, and every integration of every receiver has its own task and
//! bounded queue, so a slow or failing one delays no other. Failed sends are
//! retried with exponential backoff and counted.

pub mod api;
pub mod client;
pub mod config;
pub mod delivery;
pub mod dispatch;
pub mod matcher;
pub mod silence;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use config::Integration;
pub use config::{RouterConfig, RouterConfigError};
use dispatch::{Alert, Dispatcher, Nflog, Notification};
use silence::Silences;

use crate::rules::OutgoingAlert;

/// Notifications waiting per integration; beyond this the newest are dropped and counted.
const INTEGRATION_QUEUE: usize = 256;
/// Delivery attempts per notification, and the backoff between them.
pub const MAX_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// Counters of one integration (`herd_router_notifications_total{receiver,integration}` ...).
#[derive(Debug)]
pub struct IntegrationStats {
    pub receiver: String,
    pub integration: &'static str,
    /// Delivery attempts.
    pub notifications: AtomicU64,
    /// Failed attempts.
    pub failed: AtomicU64,
    /// Notifications dropped because the integration's queue was full.
    pub dropped: AtomicU64,
}

struct Queue {
    receiver: String,
    index: usize,
    /// The integration's current configuration, sent along with each notification.
    integration: Arc<Integration>,
    sender: mpsc::Sender<(Notification, Arc<Integration>)>,
    stats: Arc<IntegrationStats>,
}

struct State {
    dispatcher: Dispatcher,
    silences: Silences,
}

pub struct Router {
    config: std::sync::RwLock<Arc<RouterConfig>>,
    state: Mutex<State>,
    wake: Notify,
    queues: Mutex<Vec<Queue>>,
    shutdown: CancellationToken,
    nflog_path: Option<PathBuf>,
    save_lock: Arc<Mutex<()>>,
    pub external_url: String,
    pub started_ms: i64,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Router {
    /// Starts the router: its dispatcher loop and one task per integration.
    /// State (silences, notification log) lives under `state_dir/router/`.
    pub fn start(
        config: RouterConfig,
        state_dir: Option<&Path>,
        external_url: String,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Arc<Router> {
        let dir = state_dir.map(|d| d.join("router"));
        let silences = match &dir {
            Some(dir) => {
                let (silences, problem) = Silences::open(&dir.join("silences.json"));
                if let Some(problem) = problem {
                    warn!(error = %problem, "silences not restored");
                }
                silences
            }
            None => Silences::in_memory(),
        };
        let nflog_path = dir.as_ref().map(|d| d.join("nflog.json"));
        let nflog = nflog_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| match serde_json::from_slice::<Nflog>(&bytes) {
                Ok(nflog) => Some(nflog),
                Err(err) => {
                    warn!(error = %err, "notification log not restored: alerts may be notified again");
                    None
                }
            })
            .unwrap_or_default();
        let router = Arc::new(Router {
            config: std::sync::RwLock::new(Arc::new(config)),
            state: Mutex::new(State { dispatcher: Dispatcher::with_nflog(nflog), silences }),
            wake: Notify::new(),
            queues: Mutex::new(Vec::new()),
            shutdown: shutdown.child_token(),
            nflog_path,
            save_lock: Arc::new(Mutex::new(())),
            external_url,
            started_ms: now_ms(),
        });
        router.update_queues();
        tasks.spawn(Arc::clone(&router).run_dispatcher(shutdown.child_token()));
        info!(receivers = router.config().receivers.len(), "alert router started");
        router
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<RouterConfig> {
        Arc::clone(&self.config.read().expect("router config lock is not poisoned"))
    }

    pub fn stats(&self) -> Vec<Arc<IntegrationStats>> {
        self.queues().iter().map(|q| Arc::clone(&q.stats)).collect()
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Vec<Queue>> {
        self.queues.lock().expect("router queues lock is not poisoned")
    }

    /// Makes the integration queues match the configuration: a task and queue
    /// for each new integration, new settings for kept ones, and removed ones
    /// closed (their task ends once its queue is drained).
    fn update_queues(self: &Arc<Self>) {
        let config = self.config();
        let mut queues = self.queues();
        let mut kept = Vec::new();
        for receiver in &config.receivers {
            for (index, integration) in receiver.integrations.iter().enumerate() {
                let integration = Arc::new(integration.clone());
                let existing = queues.iter().position(|q| {
                    q.receiver == receiver.name && q.index == index && q.stats.integration == integration.kind()
                });
                if let Some(position) = existing {
                    let mut queue = queues.swap_remove(position);
                    queue.integration = integration;
                    kept.push(queue);
                    continue;
                }
                let (sender, rx) = mpsc::channel(INTEGRATION_QUEUE);
                let stats = Arc::new(IntegrationStats {
                    receiver: receiver.name.clone(),
                    integration: integration.kind(),
                    notifications: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                });
                tokio::spawn(Arc::clone(self).run_integration(rx, Arc::clone(&stats), self.shutdown.child_token()));
                kept.push(Queue { receiver: receiver.name.clone(), index, integration, sender, stats });
            }
        }
        *queues = kept;
    }

    /// Reloads the configuration from `path`. A broken file is refused whole
    /// and the running configuration stays. Groups, silences and the
    /// notification log are kept; alerts are re-routed by the new tree.
    pub fn reload(self: &Arc<Self>, path: &Path) -> Result<(), RouterConfigError> {
        let config = Arc::new(config::load(path)?);
        *self.config.write().expect("router config lock is not poisoned") = Arc::clone(&config);
        self.update_queues();
        self.lock().dispatcher.apply_config(&config, now_ms());
        self.wake.notify_one();
        info!(config = %path.display(), receivers = config.receivers.len(), "alert router configuration reloaded");
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("router state lock is not poisoned")
    }

    /// Alerts from Herd's rule manager.
    pub fn receive_rule_alerts(&self, alerts: &[OutgoingAlert]) {
        let converted = alerts
            .iter()
            .map(|a| {
                Alert::new(
                    a.labels.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
                    a.annotations.iter().cloned().collect(),
                    a.starts_at_ms,
                    a.ends_at_ms,
                    a.generator_url.clone(),
                )
            })
            .collect();
        self.receive(converted);
    }

    /// Alerts from any source; ones without an end get `resolve_timeout`.
    pub fn receive(&self, alerts: Vec<Alert>) {
        let now = now_ms();
        let config = self.config();
        {
            let mut state = self.lock();
            for mut alert in alerts {
                if alert.ends_at_ms <= 0 {
                    alert.ends_at_ms = now + config.resolve_timeout.as_millis() as i64;
                }
                state.dispatcher.insert(&config, alert, now);
            }
        }
        self.wake.notify_one();
    }

    /// Runs `f` over the dispatcher and silences (for the API).
    pub fn with_state<T>(&self, f: impl FnOnce(&Dispatcher, &Silences) -> T) -> T {
        let state = self.lock();
        f(&state.dispatcher, &state.silences)
    }

    /// Runs `f` over the silences, mutably; wakes the dispatcher afterwards.
    pub fn with_silences<T>(&self, f: impl FnOnce(&mut Silences) -> T) -> T {
        let out = f(&mut self.lock().silences);
        self.wake.notify_one();
        out
    }

    async fn run_dispatcher(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.lock().dispatcher.next_flush_ms();
            let wait = next.map_or(Duration::from_secs(60), |t| Duration::from_millis((t - now_ms()).max(0) as u64));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            let config = self.config();
            let notifications = {
                let mut guard = self.lock();
                let state = &mut *guard;
                state.dispatcher.flush_due(&config, &state.silences, now_ms())
            };
            let queues = self.queues();
            for notification in notifications {
                let queue =
                    queues.iter().find(|q| q.receiver == notification.receiver && q.index == notification.integration);
                if let Some(queue) = queue
                    && queue.sender.try_send((notification, Arc::clone(&queue.integration))).is_err()
                {
                    queue.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn run_integration(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<(Notification, Arc<Integration>)>,
        stats: Arc<IntegrationStats>,
        shutdown: CancellationToken,
    ) {
        loop {
            let (notification, integration) = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = queue.recv() => match next { Some((n, i)) => (Arc::new(n), i), None => return },
            };
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=MAX_ATTEMPTS {
                stats.notifications.fetch_add(1, Ordering::Relaxed);
                let (integration, sending, url) =
                    (Arc::clone(&integration), Arc::clone(&notification), self.external_url.clone());
                let result = tokio::task::spawn_blocking(move || delivery::deliver(&integration, &sending, &url)).await;
                let error = match result {
                    Ok(Ok(())) => {
                        self.delivered(&notification).await;
                        break;
                    }
                    Ok(Err(err)) => err,
                    Err(join) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %join, "notification task failed");
                        break;
                    }
                };
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let retryable = error.retryable() && attempt < MAX_ATTEMPTS;
                warn!(receiver = %stats.receiver, integration = stats.integration, attempt, retry = retryable, error = %error, "notification failed");
                if !retryable {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Records a delivered notification in the log and saves the log.
    async fn delivered(&self, notification: &Notification) {
        let bytes = {
            let mut state = self.lock();
            state.dispatcher.nflog.record(notification);
            state.dispatcher.nflog.gc(now_ms());
            serde_json::to_vec(&state.dispatcher.nflog).expect("notification log serializes")
        };
        let Some(path) = self.nflog_path.clone() else { return };
        let save_lock = Arc::clone(&self.save_lock);
        let result = tokio::task::spawn_blocking(move || {
            let _guard = save_lock.lock().expect("save lock is not poisoned");
            silence::write_atomically(&path, &bytes).map_err(|e| (e, path))
        })
        .await;
        if let Ok(Err((err, path))) = result {
            warn!(error = %err, path = %path.display(), "notification log not saved: a restart may notify again");
        }
    }

    /// Appends the router's counters to `store` at `timestamp_ms` (`job="herd-aggregator"`).
    pub fn record_metrics(&self, store: &dyn crate::store::Storage, instance: &str, timestamp_ms: i64) {
        use herd_common::metric::{Labels, METRIC_NAME};
        // Sum integrations of the same kind within a receiver.
        let mut sums: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
        let queues = self.queues();
        for queue in queues.iter() {
            let s = &queue.stats;
            for (name, value) in [
                ("herd_router_notifications_total", &s.notifications),
                ("herd_router_notifications_failed_total", &s.failed),
                ("herd_router_notifications_dropped_total", &s.dropped),
            ] {
                *sums.entry((name, s.receiver.as_str(), s.integration)).or_default() += value.load(Ordering::Relaxed);
            }
        }
        for ((name, receiver, integration), value) in sums {
            let labels = Labels::from_pairs([
                (METRIC_NAME, name),
                ("job", "herd-aggregator"),
                ("instance", instance),
                ("receiver", receiver),
                ("integration", integration),
            ]);
            let series = store.series_ref(&labels);
            let _ = store.append(series, crate::store::Sample { timestamp_ms, value: value as f64 });
        }
    }
}
