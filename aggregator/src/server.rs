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
use crate::store::Storage;
use crate::store::db::{Db, DbOptions, RetentionRule};
use crate::store::maintenance::Maintenance;
use crate::store::{Sample, SeriesRef};
use crate::wal::{self, Wal, WalError, WalRecord};

/// How often the aggregator records its own metrics in the store.
const SELF_MONITOR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the rules' trigger index is rebuilt from the store.
const TRIGGER_REINDEX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

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
    #[error("cannot read or create the QUIC reset key {}: {source}", path.display())]
    ResetKey { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot open the store's blocks: {0}")]
    Blocks(#[from] crate::store::block::BlockError),
    #[error("cannot load the rule files: {0}")]
    Rules(#[from] ApplyError),
    #[error("cannot load the alert router's configuration: {0}")]
    Router(#[from] crate::alertmanager::RouterConfigError),
    #[error(transparent)]
    RemoteWrite(#[from] crate::remote::queue::QueueError),
    #[error("cannot load the HTTP API's credentials: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityStartError),
    #[error("cannot start the HTTP listener: {0}")]
    HttpListener(#[from] crate::http::HttpError),
    #[error("cannot load remote configuration: {0}")]
    Configs(#[from] crate::configs::store::StoreError),
}

/// Replays the WAL (latest checkpoint, then newer segments) into the
/// store's head and `dedup`; returns the bytes replayed.
pub(crate) fn replay_wal(dir: &std::path::Path, db: &Db, dedup: &Dedup) -> Result<u64, WalError> {
    let started = std::time::Instant::now();
    // Replay keeps the WAL's refs where it can (WAL readers resolve segment
    // records with the checkpoint's series); a clash maps to a new ref.
    let mut refs: std::collections::HashMap<u64, SeriesRef> = std::collections::HashMap::new();
    let mut samples = 0u64;
    let stats = wal::replay(dir, |record| match record {
        WalRecord::Series { series_ref, labels } => {
            refs.insert(series_ref, db.head.series_ref_for_replay(series_ref, &labels));
        }
        WalRecord::Samples { agent, seq, timestamp_ms, samples: values } => {
            for (series_ref, value) in values {
                if let Some(&series) = refs.get(&series_ref) {
                    let _ = db.append(series, Sample { timestamp_ms, value });
                    samples += 1;
                }
            }
            dedup.insert(&agent, seq);
        }
        WalRecord::HeadChunk { series_ref, count, bytes } => {
            if let Some(&series) = refs.get(&series_ref) {
                for sample in crate::store::chunk::ChunkIter::new(&bytes, count) {
                    let _ = db.append(series, sample);
                    samples += 1;
                }
            }
        }
        WalRecord::SeqRanges { agent, ranges } => {
            for (start, end) in ranges {
                dedup.insert_range(&agent, start, end);
            }
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

/// Opens the durable store (blocks under `<state_dir>/blocks`, head replayed
/// from `<state_dir>/wal`), starts the WAL writer and the store's maintenance
/// task (head cuts, WAL checkpoints, compaction, retention).
async fn open_store(
    config: &AggregatorConfig,
    dedup: &Arc<Dedup>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(Arc<Db>, Wal), StartError> {
    let storage = &config.storage;
    let as_ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let options =
        DbOptions::new(as_ms(storage.block_duration), as_ms(storage.retention_time), storage.retention_size_bytes)
            .with_block_cache_bytes(storage.block_cache_bytes);
    // The config validated every selector: a rule that still fails is skipped with an error.
    let retention_rules: Vec<RetentionRule> = storage
        .retention_rules
        .iter()
        .filter_map(|rule| {
            RetentionRule::from_config(rule)
                .inspect_err(|error| tracing::error!(selector = %rule.selector, %error, "skipping a retention rule"))
                .ok()
        })
        .collect();
    let wal_dir = config.state_dir.join("wal");
    let blocks_dir = config.state_dir.join("blocks");
    let (db, replayed_bytes) = {
        let dedup = Arc::clone(dedup);
        tokio::task::spawn_blocking(move || -> Result<(Arc<Db>, u64), StartError> {
            let db = Arc::new(Db::open(&blocks_dir, options)?);
            db.set_retention_rules(retention_rules);
            let bytes = replay_wal(&wal_dir, &db, &dedup)?;
            Ok((db, bytes))
        })
        .await
        .expect("store opening does not panic")?
    };
    let wal = Wal::start(&config.state_dir.join("wal"), replayed_bytes)?;
    let maintenance = Maintenance {
        db: Arc::clone(&db),
        wal: wal.clone(),
        dedup: Arc::clone(dedup),
        interval: storage.check_interval,
    };
    tasks.spawn(maintenance.run(shutdown.child_token()));
    Ok((db, wal))
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
    let quic_error = |source| StartError::Quic { addr: config.quic_listen, source };
    let quic_socket = crate::ingest::quic_socket(config.quic_listen).map_err(quic_error)?;
    let quic_addr = quic_socket.local_addr().map_err(quic_error)?;
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Http { addr: config.http_listen, source })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Http { addr: config.http_listen, source })?;

    let auth = Arc::new(crate::auth::Authenticator::new(&config.http)?);
    if config.remote.receiver.enabled {
        auth.set_remote_write_credentials(&config.remote.receiver);
    }
    let dedup = Arc::new(Dedup::default());
    let mut tasks = JoinSet::new();
    let http_listener = start_http_listener(config, material, &shutdown, &mut tasks)?;
    let (db, wal) = open_store(config, &dedup, &shutdown, &mut tasks).await?;
    let store: Arc<dyn Storage> = Arc::clone(&db) as Arc<dyn Storage>;
    let fleet = Arc::new(Fleet::new());
    let up = crate::up::UpWriter {
        store: Arc::clone(&store),
        fleet: Arc::clone(&fleet),
        interval: config.heartbeat_interval,
        state_path: config.state_dir.join("fleet.json"),
    };
    up.restore();
    let stats = Arc::new(IngestStats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let identity = start_identity(config, &shutdown, &mut tasks)?;
    let revocations = Arc::clone(&identity);
    auth.set_revocation_check(Arc::new(move |info| revocations.is_revoked(info)));
    let configs = Arc::new(crate::configs::ConfigManager::open(&config.state_dir, config.keep_config_versions)?);
    tasks.spawn(Arc::clone(&configs).run(shutdown.child_token()));
    let ingest = Arc::new(
        Ingest::new(
            Arc::clone(&store),
            Arc::clone(&fleet),
            Arc::clone(&stats),
            wal.clone(),
            Arc::clone(&dedup),
            config.heartbeat_interval,
            config.max_series_per_agent,
        )
        .with_identity(Arc::clone(&identity))
        .with_configs(Arc::clone(&configs)),
    );
    let limits = &config.query_limits;
    let max_series = usize::try_from(limits.max_series).unwrap_or(usize::MAX);
    let query_limits = Limits {
        max_samples: usize::try_from(limits.max_samples).unwrap_or(usize::MAX),
        max_samples_read: limits.max_samples_read,
        max_series,
        timeout: Some(limits.timeout),
    };
    let engine = Engine::new(Arc::clone(&store), config.lookback_delta, max_series).with_limits(query_limits);
    let state = Arc::new(
        ApiState::new(engine, Arc::clone(&store), Arc::clone(&fleet), Arc::clone(&stats), Arc::clone(&ready))
            .with_max_concurrent_queries(usize::try_from(limits.max_concurrency).unwrap_or(usize::MAX))
            .with_auth(Arc::clone(&auth))
            .with_identity(identity.stats())
            .with_http_stats(Arc::clone(&http_listener.stats))
            .with_configs(Arc::clone(&configs)),
    );

    let (notifier, rules) = start_rules(config, &store, query_limits, http_addr, &auth, &shutdown, &mut tasks).await?;
    if let Some(observer) = rules.ingest_observer() {
        ingest.series_log().set_observer(observer);
        ingest.set_alert_inputs(rules.alert_inputs());
    }
    let (router_routes, alert_router) = start_router(config, &store, &notifier, http_addr, &shutdown, &mut tasks)?;
    let (remote_routes, remote_figures) =
        start_remote(config, &ingest, &wal, &config.state_dir.join("wal"), &shutdown, &mut tasks)?;
    let reset_key_path = config.state_dir.join("quic-reset-key");
    let reset_key = crate::ingest::reset_key(&reset_key_path)
        .map_err(|source| StartError::ResetKey { path: reset_key_path, source })?;
    let endpoint = crate::ingest::quic_endpoint(server_config, quic_socket, reset_key).map_err(quic_error)?;
    tasks.spawn(ingest.run(endpoint, shutdown.child_token()));
    tasks.spawn(up.run(shutdown.child_token()));
    let monitor = crate::selfmon::SelfMonitor {
        store: Arc::clone(&store),
        fleet: Arc::clone(&fleet),
        ingest: Arc::clone(&stats),
        wal: Arc::clone(&wal.stats),
        db: Some(Arc::clone(&db)),
        instance: format!("{}:{}", crate::selfmon::hostname(), http_addr.port()),
        interval: SELF_MONITOR_INTERVAL,
        remote: remote_figures,
        identity: Some(identity.stats()),
        configs: Some(Arc::clone(&configs)),
    };
    tasks.spawn(monitor.run(shutdown.child_token()));
    let ui = crate::ui::Ui::new(crate::ui::UiSources {
        fleet: Arc::clone(&fleet),
        store: Arc::clone(&store),
        db: Some(Arc::clone(&db)),
        engine: Arc::new(Engine::new(Arc::clone(&store), config.lookback_delta, max_series).with_limits(query_limits)),
        rules: Arc::clone(&rules),
        router: alert_router,
        ingest: Arc::clone(&stats),
        wal: Arc::clone(&wal.stats),
        // `Secret`s print as `***`.
        config_text: format!("{config:#?}"),
        auth: Some(Arc::clone(&auth)),
        configs: Some(Arc::clone(&configs)),
    });
    let routes = api::router(state)
        .merge(api::rules::routes(Arc::clone(&rules)))
        .merge(api::configs::routes(configs))
        .merge(router_routes)
        .merge(remote_routes)
        .merge(api::identity::routes(Arc::clone(&identity)))
        .merge(crate::ui::routes(ui));
    let routes = http_listener.limits(crate::auth::layer(routes, auth));
    tasks.spawn(Arc::clone(&http_listener).run(listener, routes, shutdown.child_token()));
    ready.store(true, Ordering::Release);
    info!(%quic_addr, %http_addr, "aggregator listening");
    Ok(Running { quic_addr, http_addr, store, fleet, ingest: stats, rules, notifier, tasks })
}

// ---- HTTP listener (aggregator/src/http/) ----
/// The HTTP listener's TLS (read again on SIGHUP) and request limits.
fn start_http_listener(
    config: &AggregatorConfig,
    material: &TlsMaterial,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Arc<crate::http::HttpListener>, StartError> {
    let listener = Arc::new(crate::http::HttpListener::new(&config.http_listener, material.ca_pem.clone())?);
    if !listener.is_tls() && !config.http_listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.http_listen,
            "HTTP without TLS on a non-loopback address: bearer tokens cross the network in clear (set [http] tls_cert_file and tls_key_file)"
        );
    }
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            let (reloading, settings, stop) =
                (Arc::clone(&listener), config.http_listener.clone(), shutdown.child_token());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        Some(()) = hangup.recv() => match reloading.apply_config(&settings) {
                            Ok(()) if reloading.is_tls() => info!("HTTPS certificate reloaded"),
                            Ok(()) => {}
                            Err(err) => tracing::error!(error = %err, "HTTPS certificate reload refused, the previous one stays in use"),
                        },
                    }
                }
            });
        }
        Err(err) => {
            tracing::warn!(error = %err, "SIGHUP handler not installed: the HTTPS certificate reloads only on restart")
        }
    }
    Ok(listener)
}
// ---- end HTTP listener ----

// ---- identity (aggregator/src/identity/) ----
/// Opens the identity state (tokens, certificates, revocations), loads the
/// CA key that signs enrolled and renewed certificates, and reloads the key
/// file on SIGHUP.
fn start_identity(
    config: &AggregatorConfig,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Arc<crate::identity::IdentityManager>, StartError> {
    let identity = crate::identity::IdentityManager::open(config)?;
    tasks.spawn(Arc::clone(&identity).run(shutdown.child_token()));
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            let (manager, stop) = (Arc::clone(&identity), shutdown.child_token());
            let (identity_config, ca_file) = (config.identity.clone(), config.tls.ca_file.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        Some(()) = hangup.recv() => manager.apply_config(&identity_config, &ca_file),
                    }
                }
            });
        }
        Err(err) => tracing::warn!(error = %err, "SIGHUP handler not installed: the CA key reloads only on restart"),
    }
    Ok(identity)
}
// ---- end identity ----

// ---- built-in alert router ----

/// Starts the built-in alert router when `alerting.router_config` is set: the
/// rule manager's alerts are handed to it (besides any external
/// Alertmanagers), SIGHUP reloads its file, its counters are written to the store with the other
/// self-metrics, and its Alertmanager v2 API routes are returned to be served
/// on the HTTP port (empty when no router is configured), with the router for the web UI.
fn start_router(
    config: &AggregatorConfig,
    store: &Arc<dyn Storage>,
    notifier: &Arc<Notifier>,
    http_addr: SocketAddr,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(axum::Router, Option<Arc<crate::alertmanager::Router>>), StartError> {
    let Some(path) = &config.alerting.router_config else { return Ok((axum::Router::new(), None)) };
    let router_config = crate::alertmanager::config::load(path)?;
    let external_url = config
        .alerting
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", crate::selfmon::hostname(), http_addr.port()));
    let router =
        crate::alertmanager::Router::start(router_config, Some(&config.state_dir), external_url, shutdown, tasks);
    notifier.set_router(Arc::clone(&router));
    // SIGHUP reloads the router's file along with the rule files; a broken file keeps the running one.
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            let (reloading, path, stop) = (Arc::clone(&router), path.clone(), shutdown.child_token());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        Some(()) = hangup.recv() => {
                            if let Err(err) = reloading.reload(&path) {
                                tracing::error!(error = %err, "router reload refused, previous configuration keeps running");
                            }
                        }
                    }
                }
            });
        }
        Err(err) => tracing::warn!(error = %err, "SIGHUP handler not installed: the router reloads only on restart"),
    }
    let (metrics_router, metrics_store, stop) = (Arc::clone(&router), Arc::clone(store), shutdown.child_token());
    let instance = format!("{}:{}", crate::selfmon::hostname(), http_addr.port());
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(SELF_MONITOR_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {
                    metrics_router.record_metrics(metrics_store.as_ref(), &instance, crate::alertmanager::now_ms());
                }
            }
        }
    });
    info!(config = %path.display(), "built-in alert router serving Alertmanager's v2 API");
    Ok((crate::alertmanager::api::routes(Arc::clone(&router)), Some(router)))
}
// ---- end of built-in alert router ----
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
    auth: &Arc<crate::auth::Authenticator>,
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
    let engine = Engine::new(Arc::clone(store), config.lookback_delta, query_limits.max_series)
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
    let mut manager = RuleManager::new(
        Arc::new(engine),
        Arc::clone(store),
        Some(Arc::clone(&notifier)),
        options,
        shutdown.child_token(),
    );
    if config.rules.evaluate_on_ingest {
        manager = manager.with_ingest_triggers(crate::rules::IngestTriggerOptions {
            min_eval_spacing: config.rules.min_eval_spacing,
            min_eval_spacing_by_group: config.rules.min_eval_spacing_by_group.clone(),
            alert_input_interval: config.rules.alert_input_interval,
        });
    }
    let rules = Arc::new(manager);
    rules.apply_config().await?;
    let (recording, metrics_store, stop) = (Arc::clone(&rules), Arc::clone(store), shutdown.child_token());
    let instance = format!("{}:{}", crate::selfmon::hostname(), http_addr.port());
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(SELF_MONITOR_INTERVAL);
        // The trigger index forgets series the store dropped only when rebuilt.
        let mut reindex = tokio::time::interval_at(tokio::time::Instant::now() + TRIGGER_REINDEX_INTERVAL, TRIGGER_REINDEX_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => recording.record_metrics(metrics_store.as_ref(), &instance, crate::alertmanager::now_ms()).await,
                _ = reindex.tick() => recording.refresh_triggers().await,
            }
        }
    });
    let (manager, stop) = (Arc::clone(&rules), shutdown.child_token());
    let (auth, http_config) = (Arc::clone(auth), config.http.clone());
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
                    // Token files are read again (rotated tokens); a broken one keeps those in use.
                    if let Err(err) = auth.apply_config(&http_config) {
                        tracing::error!(error = %err, "HTTP credentials reload refused, previous tokens stay in use");
                    }
                }
            }
        }
        manager.stop().await;
    });
    Ok((notifier, rules))
}
