//! The Herd agent: collectors feed a scheduler, the scheduler hands one batch
//! per cycle to the uplink, the uplink keeps batches until the aggregator
//! acknowledges them and streams them over QUIC with mutual TLS.
//!
//! - `collect`: the `Collector` trait, the scheduler, one module per source.
//! - `buffer`: the durable, bounded sled queue every batch passes through.
//! - `uplink`: the connection to the aggregator (failover, backoff, backfill).
//! - `identity`: enrollment (`herd-agent enroll`) and certificate renewal.
//! - `run`: wires both from an `AgentConfig` and stops on a cancellation token.
#![forbid(unsafe_code)]

pub mod buffer;
pub mod collect;
pub mod exposition;
pub mod identity;
pub mod uplink;

use std::sync::Arc;

use herd_common::config::agent::AgentConfig;
use herd_common::tls::{TlsError, TlsMaterial};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use collect::{Collector, Scheduler, SharedSeriesTable};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the agent's TLS files: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot open a UDP socket for the uplink: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    HostSettings(#[from] collect::host::HostSettingsError),
    #[error(transparent)]
    PostgresSettings(#[from] collect::postgres::PostgresSettingsError),
    #[error(transparent)]
    Buffer(#[from] buffer::BufferError),
}

/// Batches in flight between the scheduler and the uplink task.
const SCHEDULER_CHANNEL_BATCHES: usize = 16;

/// Runs the agent until `shutdown` is cancelled, then closes the uplink.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let material = TlsMaterial::load(&config.uplink.tls)?;
    let client_config = herd_common::tls::client_config(&material, config.uplink.idle_timeout)?;
    let (buffer_dir, max_bytes, memory_batches) =
        (config.state_dir.clone(), config.buffer.max_bytes, config.buffer.memory_batches);
    let recovered = tokio::task::spawn_blocking(move || buffer::Buffer::open(&buffer_dir, max_bytes, memory_batches))
        .await
        .expect("opening the buffer does not panic")?;
    let table: SharedSeriesTable = Arc::new(std::sync::Mutex::new(recovered.table));
    let (tx, rx) = mpsc::channel(SCHEDULER_CHANNEL_BATCHES);
    let buffer_stats = recovered.buffer.stats();
    let enroll_hint = format!(
        "herd-agent enroll --aggregator {} --token-file FILE --ca-fingerprint sha256:... --name {} --force",
        config.uplink.endpoints.first().map(ToString::to_string).unwrap_or_default(),
        config.id
    );
    let (renewer, renewal_link) =
        identity::Renewer::new(config.uplink.tls.clone(), config.uplink.idle_timeout, enroll_hint);
    tokio::spawn(renewer.run(shutdown.child_token()));
    let uplink = uplink::Uplink::new(&config, client_config, Arc::clone(&table), recovered.buffer)
        .map_err(StartError::Socket)?
        .with_renewal(renewal_link);

    let mut collectors: Vec<Arc<dyn Collector>> = Vec::new();
    if let Some(host) = &config.collect.host {
        collectors.push(Arc::new(collect::host::HostCollector::from_config(host, config.collect.timeout)?));
    }
    if let Some(containers) = &config.collect.containers {
        collectors.push(Arc::new(collect::containers::ContainersCollector::start(containers, shutdown.child_token())));
    }
    for (index, postgres) in config.collect.postgres.iter().enumerate() {
        collectors.push(Arc::new(collect::postgres::PostgresCollector::from_config(index, postgres)?));
    }
    for redis in &config.collect.redis {
        collectors.push(Arc::new(collect::redis::RedisCollector::from_config(redis)));
    }
    for probe in &config.collect.probe {
        collectors.push(Arc::new(collect::probe::ProbeCollector::from_config(probe)));
    }
    for scrape in &config.collect.scrape {
        collectors.push(Arc::new(collect::scrape::ScrapeCollector::from_config(scrape)));
    }
    let mut common_labels: Vec<(String, String)> = config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    common_labels.push(("instance".into(), config.instance.clone()));
    collectors.push(Arc::new(collect::herd::SelfCollector::new(buffer_stats, uplink.stats())));
    // The buffer keeps the sequence, so numbers never repeat across restarts.
    let first_seq = recovered.next_seq;
    let scheduler = Scheduler::new(
        collectors,
        config.collect.interval,
        config.collect.timeout,
        Arc::clone(&table),
        common_labels,
        first_seq,
        tx,
    );
    info!(
        agent = %config.id,
        interval_ms = config.collect.interval.as_millis() as u64,
        endpoints = config.uplink.endpoints.len(),
        "agent started"
    );
    let scheduler = match config.metrics_listen {
        Some(addr) => {
            let latest = exposition::Latest::default();
            tokio::spawn(exposition::serve(addr, Arc::clone(&latest), Arc::clone(&table), shutdown.child_token()));
            scheduler.with_latest(latest)
        }
        None => scheduler,
    };
    let scheduler_task = tokio::spawn(scheduler.run(shutdown.child_token()));
    uplink.run(rx, shutdown.clone()).await;
    let _ = scheduler_task.await;
    info!("agent stopped");
    Ok(())
}
