//! `herd-agent`: collects this host's metrics and streams them to the aggregator.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herd_agent::AgentSetup;
use herd_agent::remote_config::{LocalConfig, LogLevelSetter};
use herd_common::config::agent::DEFAULT_PATH;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Herd agent: collects host and service metrics, buffers them, and streams
/// them over QUIC with mutual TLS to a Herd aggregator.
#[derive(Debug, Parser)]
#[command(name = "herd-agent", version, about, long_about = None)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, env = "HERD_AGENT_CONFIG", default_value = DEFAULT_PATH, global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration file and print every problem found.
    CheckConfig,
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (local, config) = LocalConfig::load(&cli.config, &hostname()).map_err(|err| anyhow::anyhow!("{err}"))?;
    if matches!(cli.command, Some(Command::CheckConfig)) {
        println!("{}: ok", cli.config.display());
        return Ok(());
    }
    let set_log_level = init_logging(&config.log_level);

    // The agent shares every host it runs on: one runtime thread does all its
    // async work (each extra thread costs stack, a malloc arena and wake-ups);
    // file system calls that may block go to a small blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            signals.cancel();
        });
        let setup = AgentSetup { local, config, set_log_level };
        herd_agent::run(setup, shutdown).await.context("agent failed to start")
    })
}

/// Logs to stderr at `level`; returns the switch a pushed `agent.log_level`
/// uses, unless RUST_LOG is set: it wins over every configuration, so an
/// operator can turn up logging without editing anything.
fn init_logging(level: &str) -> Option<LogLevelSetter> {
    use tracing_subscriber::prelude::*;
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new(level)));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    if pinned {
        return None;
    }
    Some(std::sync::Arc::new(move |level: &str| {
        handle.reload(EnvFilter::new(level)).map_err(|err| err.to_string())?;
        tracing::info!(level, "log level changed");
        Ok(())
    }))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
