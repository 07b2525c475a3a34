//! `herd-aggregator demo`: an aggregator and a local agent on loopback, with
//! a throw-away CA and state directory, and a live line of what arrives.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_common::config::aggregator::AggregatorConfig;
use herd_common::metric::METRIC_NAME;
use herd_common::tls::{self, Role, TlsError, TlsMaterial};
use tokio_util::sync::CancellationToken;

use crate::server;
use crate::store::{LabelMatcher, MatchOp, Storage};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub http_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot create the demo's state directory: {0}")]
    StateDir(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Aggregator(#[from] server::StartError),
    #[error("the demo agent failed: {0}")]
    Agent(#[from] herd_agent::StartError),
    #[error("demo configuration: {0}")]
    Config(#[from] herd_common::config::ConfigError),
}

pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    let state = tempfile::Builder::new().prefix("herd-demo-").tempdir().map_err(DemoError::StateDir)?;
    let pki = state.path().join("pki");
    let hostname = crate::selfmon::hostname();
    let ca = tls::generate_ca("Herd demo CA")?;
    let server_pair = tls::issue(&ca, Role::Server, "localhost", &["127.0.0.1".into(), "::1".into()])?;
    let agent_pair = tls::issue(&ca, Role::Agent, &hostname, &[])?;
    let (ca_file, _) = tls::write_pair(&pki, "ca", &ca, true)?;
    let (server_cert, server_key) = tls::write_pair(&pki, "aggregator", &server_pair, true)?;
    let (agent_cert, agent_key) = tls::write_pair(&pki, "agent", &agent_pair, true)?;

    // The demo goes through the same loaders and defaults as real config files.
    // A throw-away aggregator on loopback: anyone on this host may use all of it.
    let aggregator_toml = format!(
        "[http]\nanonymous_role = \"admin\"\n[server]\nquic_listen = \"{quic}\"\nhttp_listen = \"{http}\"\nstate_dir = \"{state}\"\n\
         [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n",
        quic = options.quic_listen,
        http = options.http_listen,
        state = state.path().join("aggregator").display(),
        ca = ca_file.display(),
        cert = server_cert.display(),
        key = server_key.display(),
    );
    let aggregator_config = AggregatorConfig::from_toml("demo aggregator config", &aggregator_toml, None)?;
    let material = TlsMaterial::load(&aggregator_config.tls)?;
    let running = server::start(&aggregator_config, &material, shutdown.child_token()).await?;

    let agent_toml = format!(
        "[agent]\nid = \"{hostname}\"\nlabels = {{ env = \"demo\" }}\nstate_dir = \"{state}\"\n\
         [uplink]\nendpoints = [\"{endpoint}\"]\nserver_name = \"localhost\"\nbackoff_initial = \"200ms\"\nbackoff_max = \"5s\"\n\
         ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         [collect]\ninterval = \"{interval}\"\n",
        state = state.path().join("agent").display(),
        endpoint = running.quic_addr,
        ca = ca_file.display(),
        cert = agent_cert.display(),
        key = agent_key.display(),
        interval = humantime::format_duration(options.interval),
    );
    let agent_setup = herd_agent::AgentSetup::from_toml("demo agent config", &agent_toml, &hostname)?;
    let agent = tokio::spawn(herd_agent::run(agent_setup, shutdown.child_token()));

    let http = running.http_addr;
    println!("Herd demo: open http://{http}/ for the web UI");
    println!("  an aggregator and a local agent on loopback");
    println!("  state      {} (removed on exit)", state.path().display());
    println!("  agents     udp/{} (mutual TLS, throw-away CA)", running.quic_addr);
    println!("  HTTP API   http://{http}");
    println!("  try        curl -s 'http://{http}/api/v1/query?query=node_load1'");
    println!("             curl -s 'http://{http}/api/v1/agents'");
    println!("             curl -s 'http://{http}/metrics'");
    println!("Ctrl-C to stop.");

    live_line(&running.store, &running.ingest, &running.fleet, &shutdown).await;
    if let Ok(Err(err)) = agent.await {
        return Err(err.into());
    }
    running.wait().await;
    drop(state);
    Ok(())
}

/// Prints what arrives until shutdown: in place on a terminal, every 10 s otherwise.
async fn live_line(
    store: &Arc<dyn Storage>,
    ingest: &crate::ingest::IngestStats,
    fleet: &crate::fleet::Fleet,
    shutdown: &CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let terminal = std::io::stdout().is_terminal();
    let period = if terminal { Duration::from_secs(1) } else { Duration::from_secs(10) };
    let mut ticker = tokio::time::interval(period);
    let mut last_samples = 0u64;
    let load = LabelMatcher::new(MatchOp::Equal, METRIC_NAME, "node_load1").expect("literal matcher");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let samples = ingest.samples.load(Ordering::Relaxed);
        let rate = (samples - last_samples) as f64 / period.as_secs_f64();
        last_samples = samples;
        let mut latest = Vec::new();
        if let Some((series, _)) = store.select(std::slice::from_ref(&load)).first() {
            store.read(*series, i64::MIN, i64::MAX, &mut latest);
        }
        let load1 = latest.last().map_or("-".to_owned(), |s| s.value.to_string());
        let line = format!(
            "agents {} · series {} · samples {} ({rate:.0}/s) · batches {} · node_load1 {load1}",
            fleet.connected_count(),
            store.stats().series,
            samples,
            ingest.batches.load(Ordering::Relaxed),
        );
        let mut stdout = std::io::stdout().lock();
        if terminal {
            let _ = write!(stdout, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = stdout.flush();
    }
    if terminal {
        println!();
    }
}
