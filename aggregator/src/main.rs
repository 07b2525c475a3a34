//! `herd-aggregator`: the central side of Herd, and its admin CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herd_aggregator::{demo, pki, server};
use herd_common::config::aggregator::{AggregatorConfig, DEFAULT_PATH};
use herd_common::tls::{Role, TlsMaterial};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Herd aggregator: accepts agents over QUIC with mutual TLS, stores their
/// samples, and answers PromQL over a Prometheus-compatible HTTP API.
#[derive(Debug, Parser)]
#[command(name = "herd-aggregator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator with a configuration file.
    Serve {
        /// Configuration file.
        #[arg(short, long, env = "HERD_AGGREGATOR_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Run an aggregator and a local agent on loopback with throw-away certificates.
    Demo {
        /// HTTP address of the demo's API.
        #[arg(long, default_value = "127.0.0.1:7401")]
        http_listen: SocketAddr,
        /// UDP address the demo's aggregator accepts agents on.
        #[arg(long, default_value = "127.0.0.1:7400")]
        quic_listen: SocketAddr,
        /// Collection interval of the demo's agent.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Manage the fleet's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue certificates signed by the fleet CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Validate a configuration file and print every problem found.
    CheckConfig {
        #[arg(short, long, env = "HERD_AGGREGATOR_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Prometheus rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Silences in the built-in alert router (through its Alertmanager v2 API).
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// Run PromQL test files in Prometheus's format (load, clear, eval instant at, eval_fail, eval_ordered).
    PromqlTest {
        /// Test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SilenceCommand {
    /// Silence the alerts matching all the given matchers; prints the new silence's ID.
    Add {
        #[command(flatten)]
        api: RouterApi,
        /// Matchers: `alertname=DiskFull`, `instance=~"db-.*"`, `env!=dev`.
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long the silence lasts.
        #[arg(short, long, default_value = "1h", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Who made it (default: $USER).
        #[arg(short, long, env = "USER", default_value = "herd")]
        author: String,
        /// Why.
        #[arg(short, long)]
        comment: String,
    },
    /// List active and pending silences (those with every given matcher).
    Query {
        #[command(flatten)]
        api: RouterApi,
        matchers: Vec<String>,
        /// Include expired silences.
        #[arg(long)]
        expired: bool,
    },
    /// Expire silences now.
    Expire {
        #[command(flatten)]
        api: RouterApi,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct RouterApi {
    /// The aggregator's HTTP address.
    #[arg(long, env = "HERD_ROUTER_URL", default_value = "http://127.0.0.1:7401")]
    url: String,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Check rule files as `promtool check rules` does; exits 1 if any is invalid.
    Check {
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests in promtool's format (`promtool test rules`); exits 1 if any fails.
    Test {
        /// Test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a new CA (ca.pem and ca-key.pem) in DIR.
    Init {
        #[arg(long, default_value = pki::DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Herd fleet CA")]
        name: String,
        /// Replace an existing CA (every issued certificate stops working).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a key pair: NAME.pem and NAME-key.pem.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "role")]
struct RoleArgs {
    /// An agent's client certificate; NAME becomes the agent's identity.
    #[arg(long, value_name = "NAME")]
    agent: Option<String>,
    /// The aggregator's server certificate; NAME is the host name agents connect to.
    #[arg(long, value_name = "NAME")]
    server: Option<String>,
}

#[derive(Debug, Args)]
struct IssueArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// Extra DNS names or IP addresses for a server certificate.
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    extra_names: Vec<String>,
    /// Where the CA is.
    #[arg(long, default_value = pki::DEFAULT_PKI_DIR)]
    ca_dir: PathBuf,
    /// Where to write the pair (default: the CA's directory).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Overwrite an existing pair of the same name.
    #[arg(long)]
    force: bool,
}

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ca(CaCommand::Init { dir, name, force }) => {
            let (cert, key) = pki::init_ca(&dir, &name, force)?;
            println!(
                "CA certificate: {}\nCA key:         {} (mode 0600: keep it off agents)",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        Command::Cert(CertCommand::Issue(args)) => {
            let (role, name) = match (args.role.agent, args.role.server) {
                (Some(name), None) => (Role::Agent, name),
                (None, Some(name)) => (Role::Server, name),
                _ => unreachable!("clap enforces exactly one of --agent and --server"),
            };
            let out_dir = args.out_dir.unwrap_or_else(|| args.ca_dir.clone());
            let (cert, key) = pki::issue(&args.ca_dir, &out_dir, role, &name, &args.extra_names, args.force)?;
            println!("certificate: {}\nkey:         {} (mode 0600)", cert.display(), key.display());
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = AggregatorConfig::load(&config).map_err(|err| anyhow::anyhow!("{err}"))?;
            if let Some(router_config) = &loaded.alerting.router_config {
                herd_aggregator::alertmanager::config::load(router_config)?;
                println!("{}: ok", router_config.display());
            }
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Rules(RulesCommand::Check { files }) => {
            let mut failed = false;
            for file in &files {
                let (report, ok) = herd_aggregator::rules::check_file(file);
                print!("{report}");
                failed |= !ok;
            }
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Rules(RulesCommand::Test { files }) => {
            let mut failed = false;
            for file in &files {
                println!("Unit Testing: {}", file.display());
                match herd_aggregator::rules::unittest::run_test_file(file) {
                    Ok(failures) if failures.is_empty() => println!("  SUCCESS\n"),
                    Ok(failures) => {
                        failed = true;
                        println!("  FAILED:");
                        for failure in failures {
                            println!("    {failure}");
                        }
                        println!();
                    }
                    Err(err) => {
                        failed = true;
                        println!("  FAILED:\n    {err}\n");
                    }
                }
            }
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::PromqlTest { files } => {
            let mut report = herd_aggregator::promql::testfile::Report::default();
            let mut unreadable = 0;
            for file in &files {
                match herd_aggregator::promql::testfile::run_file(file) {
                    Ok(file_report) => report.merge(file_report),
                    Err(err) => {
                        // One bad file must not hide the results of the others.
                        println!("ERROR {err}");
                        unreadable += 1;
                    }
                }
            }
            for failure in &report.failures {
                println!("{failure}");
            }
            for reason in &report.skip_reasons {
                println!("skipped: {reason}");
            }
            println!("{}", report.summary());
            if report.failed > 0 || unreadable > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Silence(command) => {
            use herd_aggregator::alertmanager::client;
            match command {
                SilenceCommand::Add { api, matchers, duration, author, comment } => {
                    println!("{}", client::add_silence(&api.url, &matchers, duration, &author, &comment)?);
                }
                SilenceCommand::Query { api, matchers, expired } => {
                    print!("{}", client::query_silences(&api.url, &matchers, expired)?);
                }
                SilenceCommand::Expire { api, ids } => {
                    for id in ids {
                        client::expire_silence(&api.url, &id)?;
                    }
                }
            }
            Ok(())
        }
        Command::Serve { config } => {
            let config = AggregatorConfig::load(&config).map_err(|err| anyhow::anyhow!("{err}"))?;
            init_logging(&config.log_level);
            let material = TlsMaterial::load(&config.tls).map_err(server::StartError::Tls)?;
            runtime()?.block_on(async {
                let shutdown = shutdown_on_signal();
                let running = server::start(&config, &material, shutdown).await?;
                running.wait().await;
                Ok(())
            })
        }
        Command::Demo { http_listen, quic_listen, interval } => {
            init_logging("warn,herd_aggregator=info,herd_agent=info");
            runtime()?.block_on(async {
                let shutdown = shutdown_on_signal();
                demo::run(demo::DemoOptions { http_listen, quic_listen, interval }, shutdown)
                    .await
                    .context("demo failed")
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}
