//! Wires the aggregator together: binds the QUIC and HTTP listeners, starts
//! ingest and the API over one store and one fleet registry, and stops them
//! on a cancellation token. Used by `serve` and by the demo.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use herd_common::config::aggregator::AggregatorConfig;
use herd_common::tls::{TlsError, TlsMaterial};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::{self, ApiState};
use crate::fleet::Fleet;
use crate::ingest::dedup::Dedup;
use crate::ingest::{Ingest, IngestStats};
use crate::notify::{AlertmanagerTarget, Notifier};
use crate::promql::{Engine, Limits};
use crate::rules::{ApplyError, EvalContext, ManagerOptions, RuleManager};
use crate::store::{MemStore, Storage};
use crate::store::{Sample, SeriesRef};
use crate::wal::{self, Wal, WalError, WalRecord};

/// How often the aggregator records its own metrics in the store.
const SELF_MONITOR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Series one query may select before it is refused.
const MAX_QUERY_SERIES: usize = 500_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot load the aggregator's TLS files: {0} (create them with `herd-aggregator ca init` and `herd-aggregator cert issue --server NAME`)"
    )]
    Tls(#[from] TlsError),
    #[error("cannot listen for agents on udp/{addr}: {source}")]
    Quic { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for HTTP on tcp/{addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot load the rule files: {0}")]
    Rules(#[from] ApplyError),
    #[error(transparent)]
    RemoteWrite(#[from] crate::remote::queue::QueueError),
}

/// Replays the WAL into `store` and `dedup`; returns the bytes replayed.
fn replay_wal(dir: &std::path::Path, store: &dyn Storage, dedup: &Dedup) -> Result<u64, WalError> {
    let started = std::time::Instant::now();
    // WAL refs are those of the process that wrote them: map them to this one's.
    let mut refs: std::collections::HashMap<u64, SeriesRef> = std::collections::HashMap::new();
    let mut samples = 0u64;
    let stats = wal::replay(dir, |record| match record {
        WalRecord::Series { series_ref, labels } => {
            refs.insert(series_ref, store.series_ref(&labels));
        }
        WalRecord::Samples { agent, seq, timestamp_ms, samples: values } => {
            for (series_ref, value) in values {
                if let Some(&series) = refs.get(&series_ref) {
                    let _ = store.append(series, Sample { timestamp_ms, value });
                    samples += 1;
                }
            }
            dedup.insert(&agent, seq);
        }
    })?;
    info!(
        segments = stats.segments,
        records = stats.records,
        samples,
        bytes = stats.bytes,
        truncated_segments = stats.truncated_segments,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "WAL replayed"
    );
    Ok(stats.bytes)
}

/// A started aggregator.
pub struct Running {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: Arc<dyn Storage>,
    pub fleet: Arc<Fleet>,
    pub ingest: Arc<IngestStats>,
    pub rules: Arc<RuleManager>,
    pub notifier: Arc<Notifier>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits for every task to finish (after the shutdown token is cancelled).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        info!("aggregator stopped");
    }
}

pub async fn start(
    config: &AggregatorConfig,
    material: &TlsMaterial,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let server_config = herd_common::tls::server_config(material, config.heartbeat_interval * 6)?;
    let endpoint = quinn::Endpoint::server(server_config, config.quic_listen)
        .map_err(|source| StartError::Quic { addr: config.quic_listen, source })?;
    let quic_addr = endpoint.local_addr().map_err(|source| StartError::Quic { addr: config.quic_listen, source })?;
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Http { addr: config.http_listen, source })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Http { addr: config.http_listen, source })?;

    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    let dedup = Arc::new(Dedup::default());
    let wal_dir = config.state_dir.join("wal");
    let replayed_bytes = {
        let (store, dedup, dir) = (Arc::clone(&store), Arc::clone(&dedup), wal_dir.clone());
        tokio::task::spawn_blocking(move || replay_wal(&dir, store.as_ref(), &dedup))
            .await
            .expect("WAL replay does not panic")?
    };
    let wal = Wal::start(&wal_dir, replayed_bytes)?;
    let fleet = Arc::new(Fleet::new());
    let stats = Arc::new(IngestStats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let ingest = Arc::new(Ingest::new(
        Arc::clone(&store),
        Arc::clone(&fleet),
        Arc::clone(&stats),
        wal.clone(),
        Arc::clone(&dedup),
        config.heartbeat_interval,
        config.max_series_per_agent,
    ));
    // Query cost limits, Prometheus's defaults (`--query.max-samples`,
    // `--query.timeout`, `--query.max-concurrency`) until the config has keys for them.
    let query_limits = Limits {
        max_samples: 50_000_000,
        max_samples_read: 1_000_000_000,
        max_series: MAX_QUERY_SERIES,
        timeout: Some(std::time::Duration::from_secs(120)),
    };
    let engine = Engine::new(Arc::clone(&store), config.lookback_delta, MAX_QUERY_SERIES).with_limits(query_limits);
    let state = Arc::new(
        ApiState::new(engine, Arc::clone(&store), Arc::clone(&fleet), Arc::clone(&stats), Arc::clone(&ready))
            .with_max_concurrent_queries(api::DEFAULT_MAX_CONCURRENT_QUERIES),
    );

    let mut tasks = JoinSet::new();
    let (notifier, rules) = start_rules(config, &store, query_limits, http_addr, &shutdown, &mut tasks).await?;
    let (remote_routes, remote_figures) = start_remote(config, &ingest, &wal, &wal_dir, &shutdown, &mut tasks)?;
    tasks.spawn(ingest.run(endpoint, shutdown.child_token()));
    let monitor = crate::selfmon::SelfMonitor {
        store: Arc::clone(&store),
        fleet: Arc::clone(&fleet),
        ingest: Arc::clone(&stats),
        wal: Arc::clone(&wal.stats),
        instance: format!("{}:{}", crate::selfmon::hostname(), http_addr.port()),
        interval: SELF_MONITOR_INTERVAL,
        remote: remote_figures,
    };
    tasks.spawn(monitor.run(shutdown.child_token()));
    let http_shutdown = shutdown.child_token();
    let http_rules = Arc::clone(&rules);
    tasks.spawn(async move {
        let serve =
            axum::serve(listener, api::router(state).merge(api::rules::routes(http_rules)).merge(remote_routes))
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "HTTP server failed");
        }
    });
    ready.store(true, Ordering::Release);
    info!(%quic_addr, %http_addr, "aggregator listening");
    Ok(Running { quic_addr, http_addr, store, fleet, ingest: stats, rules, notifier, tasks })
}

// ---- remote_write (aggregator/src/remote/) ----
/// Starts one WAL-tailing queue per `[[remote_write]]` endpoint and returns
/// the receiver's `POST /api/v1/write` route (empty unless
/// `[remote_write_receiver] enabled`), with the figures `selfmon` records.
fn start_remote(
    config: &AggregatorConfig,
    ingest: &Ingest,
    wal: &Wal,
    wal_dir: &std::path::Path,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(axum::Router, crate::remote::RemoteFigures), StartError> {
    let mut figures = crate::remote::RemoteFigures::default();
    for endpoint in &config.remote.write {
        let queue =
            crate::remote::queue::Queue::new(endpoint.clone(), wal_dir, &config.state_dir, Arc::clone(&wal.holds))?;
        figures.queues.push(Arc::clone(&queue.stats));
        tasks.spawn(queue.run(shutdown.child_token()));
    }
    let mut routes = axum::Router::new();
    if config.remote.receiver.enabled {
        let receiver = crate::remote::receiver::Receiver::new(ingest.series_log(), config.remote.receiver.clone());
        figures.receiver = Some(Arc::clone(&receiver.stats));
        routes = crate::remote::receiver::routes(Arc::new(receiver));
        info!("remote_write receiver enabled at POST /api/v1/write");
    }
    Ok((routes, figures))
}
// ---- end remote_write ----

/// Starts the notifier and the rule manager (rules evaluate through their own
/// engine, so a slow rule never waits for API queries' concurrency slots), and
/// reloads the rule files on SIGHUP.
async fn start_rules(
    config: &AggregatorConfig,
    store: &Arc<dyn Storage>,
    query_limits: Limits,
    http_addr: SocketAddr,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(Arc<Notifier>, Arc<RuleManager>), StartError> {
    let targets = config
        .alerting
        .alertmanagers
        .iter()
        .map(|am| AlertmanagerTarget { url: am.url.clone(), timeout: am.timeout })
        .collect();
    let notifier = Arc::new(Notifier::new(targets));
    tasks.spawn(Arc::clone(&notifier).run(shutdown.child_token()));
    let engine = Engine::new(Arc::clone(store), config.lookback_delta, MAX_QUERY_SERIES)
        .with_limits(query_limits)
        .with_default_subquery_step(config.rules.evaluation_interval);
    let external_url = config
        .alerting
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", crate::selfmon::hostname(), http_addr.port()));
    let options = ManagerOptions {
        files: config.rules.files.clone(),
        default_interval: config.rules.evaluation_interval,
        state_path: config.state_dir.join("alerts.json"),
        context: EvalContext {
            external_labels: herd_common::metric::Labels::from_pairs(config.rules.external_labels.clone()),
            external_url,
            resend_delay: config.alerting.resend_delay,
        },
    };
    let rules = Arc::new(RuleManager::new(
        Arc::new(engine),
        Arc::clone(store),
        Some(Arc::clone(&notifier)),
        options,
        shutdown.child_token(),
    ));
    rules.apply_config().await?;
    let (manager, stop) = (Arc::clone(&rules), shutdown.child_token());
    // Installed before `start` returns: a SIGHUP that arrived before the
    // handler would end the process (the default action).
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            tracing::warn!(error = %err, "SIGHUP handler not installed: rule files reload only on restart");
            None
        }
    };
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    info!("SIGHUP: reloading rule files");
                    // A broken file is refused whole; the running rules keep going.
                    if let Err(err) = manager.apply_config().await {
                        tracing::error!(error = %err, "rule reload refused, previous rules keep running");
                    }
                }
            }
        }
        manager.stop().await;
    });
    Ok((notifier, rules))
}
