//! The Herd agent: collectors feed a scheduler, the scheduler hands one batch
//! per cycle to the uplink, the uplink keeps batches until the aggregator
//! acknowledges them and streams them over QUIC with mutual TLS.
//!
//! - `collect`: the `Collector` trait, the scheduler, one module per source.
//! - `buffer`: the durable, bounded sled queue every batch passes through.
//! - `uplink`: the connection to the aggregator (failover, backoff, backfill).
//! - `identity`: enrollment (`herd-agent enroll`) and certificate renewal.
//! - `remote_config`: configuration pushed by the aggregator, applied live, last-known-good.
//! - `run`: wires both from an `AgentConfig` and stops on a cancellation token.
#![forbid(unsafe_code)]

pub mod buffer;
pub mod collect;
pub mod exposition;
pub mod identity;
pub mod remote_config;
pub mod uplink;

use std::sync::Arc;

use herd_common::config::agent::AgentConfig;
use herd_common::tls::{TlsError, TlsMaterial};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use collect::{CollectorSpec, Scheduler, SharedSeriesTable};
use remote_config::{LiveSettings, LocalConfig, LogLevelSetter, RemoteConfig};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the agent's TLS files: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot open a UDP socket for the uplink: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Collector(#[from] collect::BuildError),
    #[error(transparent)]
    Buffer(#[from] buffer::BufferError),
}

/// Batches in flight between the scheduler and the uplink task.
const SCHEDULER_CHANNEL_BATCHES: usize = 16;
/// Pushed configurations waiting to be applied, and their answers.
const CONFIG_CHANNEL: usize = 4;

/// What the agent starts from.
pub struct AgentSetup {
    pub local: LocalConfig,
    /// The local file, validated.
    pub config: AgentConfig,
    /// Switches the log filter when a pushed configuration changes `agent.log_level`.
    pub set_log_level: Option<LogLevelSetter>,
    /// When the process started, for the startup time logged with the first batch sent.
    pub started: std::time::Instant,
}

impl AgentSetup {
    /// An agent configured by TOML text alone (the demo, tests), without a log level switch.
    pub fn from_toml(source_name: &str, text: &str, hostname: &str) -> Result<Self, herd_common::config::ConfigError> {
        let config = AgentConfig::from_toml(source_name, text, None, hostname)?;
        let local = LocalConfig {
            source_name: source_name.to_owned(),
            text: text.to_owned(),
            base_dir: None,
            hostname: hostname.to_owned(),
        };
        Ok(Self { local, config, set_log_level: None, started: std::time::Instant::now() })
    }
}

/// Runs the agent until `shutdown` is cancelled, then closes the uplink.
pub async fn run(setup: AgentSetup, shutdown: CancellationToken) -> Result<(), StartError> {
    let running = remote_config::startup(&setup.local, setup.config.clone());
    if running.config().log_level != setup.config.log_level
        && let Some(set) = &setup.set_log_level
        && let Err(err) = set(&running.config().log_level)
    {
        tracing::warn!(error = %err, "cannot switch the log level");
    }
    let config = running.config().clone();
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
    let (live, live_rx) = watch::channel(LiveSettings::of(&running));
    let (push_tx, push_rx) = mpsc::channel(CONFIG_CHANNEL);
    let (alert_inputs, alert_inputs_rx) = watch::channel(Default::default());
    let (ack_tx, ack_rx) = mpsc::channel(CONFIG_CHANNEL);
    let channels = uplink::ConfigChannels {
        live: live_rx,
        pushes: push_tx,
        acks: ack_rx,
        local_config: setup.local.redacted(),
        local_config_dir: setup.local.base_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
        alert_inputs,
    };
    let uplink = uplink::Uplink::new(&config, client_config, Arc::clone(&table), recovered.buffer, channels)
        .map_err(StartError::Socket)?
        .with_start_time(setup.started);
    let (renewer, renewal_link) =
        identity::Renewer::new(config.uplink.tls.clone(), config.uplink.idle_timeout, enroll_hint, uplink.stats());
    tokio::spawn(renewer.run(shutdown.child_token()));
    let uplink = uplink.with_renewal(renewal_link);

    let config_stats = Arc::new(remote_config::ConfigStats::default());
    let own = Arc::new(collect::herd::SelfCollector::new(buffer_stats, uplink.stats(), Arc::clone(&config_stats)));
    // The buffer keeps the sequence, so numbers never repeat across restarts.
    let first_seq = recovered.next_seq;
    let (commands, command_rx) = mpsc::channel(CONFIG_CHANNEL);
    let scheduler = Scheduler::from_specs(
        &CollectorSpec::all(&config),
        vec![own],
        config.collect.interval,
        config.collect.timeout,
        Arc::clone(&table),
        remote_config::common_labels(&config),
        first_seq,
        tx,
        shutdown.child_token(),
    )?
    .with_commands(command_rx)
    .with_alert_inputs(alert_inputs_rx);
    info!(
        agent = %config.id,
        interval_ms = config.collect.interval.as_millis() as u64,
        endpoints = config.uplink.endpoints.len(),
        config_version = running.version,
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
    let manager = RemoteConfig {
        local: setup.local,
        running,
        scheduler: commands,
        live,
        set_log_level: setup.set_log_level,
        stats: config_stats,
    };
    let manager_task = tokio::spawn(manager.run(push_rx, ack_tx, shutdown.child_token()));
    let scheduler_task = tokio::spawn(scheduler.run(shutdown.child_token()));
    uplink.run(rx, shutdown.clone()).await;
    let _ = scheduler_task.await;
    manager_task.abort();
    info!("agent stopped");
    Ok(())
}
