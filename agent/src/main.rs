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
    /// Get this host's certificate from an aggregator with an enrollment token.
    Enroll(EnrollArgs),
}

#[derive(Debug, clap::Args)]
struct EnrollArgs {
    /// The aggregator's QUIC address (HOST:PORT, default port 7400).
    #[arg(long, value_name = "HOST:PORT")]
    aggregator: String,
    /// A file holding the token `herd-aggregator token create` printed.
    #[arg(long)]
    token_file: PathBuf,
    /// The fleet CA's fingerprint, from `herd-aggregator ca fingerprint`: the
    /// aggregator is trusted only if its CA has it.
    #[arg(long, value_name = "sha256:HEX")]
    ca_fingerprint: String,
    /// The identity to ask for (default: this host's name).
    #[arg(long)]
    name: Option<String>,
    /// TLS name to verify in the aggregator's certificate (default: its host).
    #[arg(long)]
    server_name: Option<String>,
    /// Where to write the files (default: the config's [uplink] paths, else
    /// /var/lib/herd-agent/pki/{ca,agent,agent-key}.pem).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(long)]
    cert_file: Option<PathBuf>,
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Replace an existing certificate and key.
    #[arg(long)]
    force: bool,
}

/// Default paths of the enrolled files: state, so renewal can replace them.
const DEFAULT_PKI_DIR: &str = "/var/lib/herd-agent/pki";

fn enroll(cli_config: &std::path::Path, args: EnrollArgs) -> anyhow::Result<()> {
    use herd_agent::identity::enroll::{EnrollOptions, enroll};
    let from_config = herd_common::config::agent::AgentConfig::load(cli_config, &hostname()).ok().map(|c| c.uplink.tls);
    let default = |file: &str| PathBuf::from(DEFAULT_PKI_DIR).join(file);
    let files = herd_common::tls::TlsFiles {
        ca_file: args.ca_file.or(from_config.as_ref().map(|f| f.ca_file.clone())).unwrap_or_else(|| default("ca.pem")),
        cert_file: args
            .cert_file
            .or(from_config.as_ref().map(|f| f.cert_file.clone()))
            .unwrap_or_else(|| default("agent.pem")),
        key_file: args
            .key_file
            .or(from_config.as_ref().map(|f| f.key_file.clone()))
            .unwrap_or_else(|| default("agent-key.pem")),
    };
    let aggregator =
        if args.aggregator.contains(':') { args.aggregator.clone() } else { format!("{}:7400", args.aggregator) };
    let aggregator =
        herd_common::config::Endpoint::parse(&aggregator).map_err(|e| anyhow::anyhow!("--aggregator: {e}"))?;
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read the token file {}", args.token_file.display()))?;
    let options = EnrollOptions {
        aggregator,
        server_name: args.server_name,
        token,
        ca_fingerprint: args.ca_fingerprint,
        name: args.name.unwrap_or_else(hostname),
        files,
        force: args.force,
        timeout: std::time::Duration::from_secs(15),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let enrolled = runtime.block_on(enroll(&options))?;
    let labels: Vec<String> = enrolled.info.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "enrolled as {} (trusted labels: {}), certificate valid until {}
ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        enrolled.info.name,
        if labels.is_empty() { "none".to_owned() } else { labels.join(",") },
        humantime::format_rfc3339_seconds(enrolled.info.not_after),
        enrolled.files.ca_file.display(),
        enrolled.files.cert_file.display(),
        enrolled.files.key_file.display(),
    );
    Ok(())
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    if let Some(Command::Enroll(args)) = cli.command {
        return enroll(&cli.config, args);
    }
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
        let setup = AgentSetup { local, config, set_log_level, started };
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
