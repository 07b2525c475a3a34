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

// mimalloc instead of glibc's malloc: the store holds many small objects per
// series (label strings, per-series state), which glibc rounds up to 32
// bytes each and spreads over per-thread arenas; `bench-store` measures the
// head with this allocator (about 700 instead of 850 bytes per series).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Certificates: issue by hand, list and revoke agents' (through the HTTP API).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Enrollment tokens for `herd-agent enroll` (through the HTTP API, admin role).
    #[command(subcommand)]
    Token(TokenCommand),
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
    /// Remote configuration of the fleet's agents (through the HTTP API).
    #[command(subcommand)]
    Config(ConfigCommand),
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

/// Where the aggregator's HTTP API is, and the token to call it with.
#[derive(Debug, Args)]
struct ApiArgs {
    /// The aggregator's HTTP address.
    #[arg(long, env = "HERD_URL", default_value = "http://127.0.0.1:7401", global = true)]
    url: String,
    /// A file holding a bearer token (an admin's, for changes).
    #[arg(long, env = "HERD_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// A bearer token (prefer --token-file: a command line is visible to others).
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The CA of the aggregator's HTTPS certificate, for https:// URLs (default: the system's).
    #[arg(long, env = "HERD_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<herd_aggregator::client::ApiClient> {
        Ok(herd_aggregator::client::ApiClient::new(&self.url, self.token_file.as_deref(), self.token.clone())?
            .with_ca_file(self.ca_file.as_deref())?)
    }

    /// Calls the admin API; returns the answer's `data`.
    fn admin(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> anyhow::Result<serde_json::Value> {
        let (status, text) = self.client()?.call(method, path, body)?;
        herd_aggregator::api::client::data(status, &text)
            .with_context(|| format!("{method} {}", self.client().map(|c| c.url(path)).unwrap_or_default()))
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Push a profile version: a body in the agent's TOML format for the agents matching a selector.
    Push {
        #[command(flatten)]
        api: ApiArgs,
        /// The profile's name.
        #[arg(long)]
        profile: String,
        /// Agents it is for, in Prometheus matcher syntax (`{}`: all).
        #[arg(long, default_value = "{}")]
        selector: String,
        /// The highest-priority matching profile decides an agent's configuration.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// What changed and why.
        #[arg(short, long, default_value = "")]
        message: String,
        /// Show which agents match and what would change, without storing or sending anything.
        #[arg(long)]
        dry_run: bool,
        /// Staged: this many agents (or percent, e.g. 10%) first.
        #[arg(long)]
        canary: Option<String>,
        /// After the canaries, this many agents per wave (default: all the rest).
        #[arg(long, default_value_t = 0)]
        wave_size: usize,
        /// How long a wave may take to acknowledge and run healthy.
        #[arg(long)]
        wait: Option<String>,
        /// Agents that may refuse or fail before the rollout halts.
        #[arg(long, default_value_t = 0)]
        max_failures: usize,
        /// The body (`-`: standard input).
        file: PathBuf,
    },
    /// List profiles.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a version's body: NAME (the active one) or NAME@VERSION.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        reference: String,
    },
    /// Diff two versions: NAME@A NAME@B.
    Diff {
        #[command(flatten)]
        api: ApiArgs,
        from: String,
        to: String,
    },
    /// Per agent: desired and applied version, hash, state, last error, collectors.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Only agents matching this selector.
        #[arg(long)]
        selector: Option<String>,
    },
    /// Make an older version active again on every matching agent.
    Rollback {
        #[command(flatten)]
        api: ApiArgs,
        profile: String,
        /// The version (default: the one before the active).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Continue a halted rollout, accepting its failures so far.
    Resume {
        #[command(flatten)]
        api: ApiArgs,
        profile: String,
    },
    /// Stop a rollout and return its agents to the version before it.
    Abort {
        #[command(flatten)]
        api: ApiArgs,
        profile: String,
    },
}

#[derive(Debug, Args)]
struct RouterApi {
    /// The aggregator's HTTP address.
    #[arg(long, env = "HERD_ROUTER_URL", default_value = "http://127.0.0.1:7401")]
    url: String,
    /// A file holding a bearer token (adding and expiring silences needs the editor role).
    #[arg(long, env = "HERD_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl RouterApi {
    fn endpoint(&self) -> anyhow::Result<herd_aggregator::alertmanager::client::RouterEndpoint> {
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(herd_aggregator::alertmanager::client::RouterEndpoint { url: self.url.clone(), token })
    }
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
    /// Print the CA's fingerprint, for `herd-agent enroll --ca-fingerprint`.
    Fingerprint {
        /// The CA certificate (default: ca.pem in --dir).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(long, default_value = pki::DEFAULT_PKI_DIR)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints it alone on stdout (save it to a file for the agent).
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// Trusted labels bound to every agent enrolled with it: role=postgres,env=prod.
        #[arg(long, default_value = "")]
        labels: String,
        /// How long it can be used.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many agents may enroll with it (default: any number until it expires).
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token by its ID.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a key pair: NAME.pem and NAME-key.pem.
    Issue(IssueArgs),
    /// List agent certificates: identities, serials, expiry, revocation.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke an agent's certificates (all issued until now), or one by serial:
    /// its connection is closed and reconnects are refused.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// The agent's name.
        #[arg(required_unless_present = "serial", conflicts_with = "serial")]
        name: Option<String>,
        /// One certificate's serial (hex, as `cert list` shows it).
        #[arg(long)]
        serial: Option<String>,
    },
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
    /// A client certificate for the HTTP API (role from `[[http.client_certificates]]`); never an agent's.
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
}

#[derive(Debug, Args)]
struct IssueArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// Extra DNS names or IP addresses for a server certificate.
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    extra_names: Vec<String>,
    /// Trusted labels of an agent certificate (role=postgres,env=prod); default none.
    #[arg(long, default_value = "")]
    labels: String,
    /// Lifetime of an agent certificate.
    #[arg(long, default_value = "825d", value_parser = humantime::parse_duration)]
    lifetime: Duration,
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
        // Logs on stderr: stdout is for what a command prints (the demo's banner, CLI results).
        .with_writer(std::io::stderr)
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
            let out_dir = args.out_dir.unwrap_or_else(|| args.ca_dir.clone());
            let (cert, key) = match (args.role.agent, args.role.server, args.role.client) {
                (Some(name), None, None) => {
                    let labels = herd_common::identity::parse_labels(&args.labels)?;
                    pki::issue_agent(&args.ca_dir, &out_dir, &name, &labels, args.lifetime, args.force)?
                }
                (None, Some(name), None) => {
                    pki::issue(&args.ca_dir, &out_dir, Role::Server, &name, &args.extra_names, args.force)?
                }
                (None, None, Some(name)) => {
                    pki::issue_client(&args.ca_dir, &out_dir, &name, args.lifetime, args.force)?
                }
                _ => unreachable!("clap enforces exactly one of --agent, --server and --client"),
            };
            println!("certificate: {}\nkey:         {} (mode 0600)", cert.display(), key.display());
            Ok(())
        }
        Command::Ca(CaCommand::Fingerprint { ca_file, dir }) => {
            let path = ca_file.unwrap_or_else(|| dir.join("ca.pem"));
            let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            println!("{}", herd_common::identity::ca_fingerprint(&pem)?);
            Ok(())
        }
        Command::Cert(CertCommand::List { api }) => {
            let certificates = api.admin("GET", "/api/v1/identity/certificates", None)?;
            print!("{}", herd_aggregator::api::client::format_certificates(&certificates));
            Ok(())
        }
        Command::Cert(CertCommand::Revoke { api, name, serial }) => {
            let body = match (name, serial) {
                (Some(name), None) => serde_json::json!({ "name": name }),
                (None, Some(serial)) => serde_json::json!({ "serial": serial }),
                _ => unreachable!("clap enforces exactly one of NAME and --serial"),
            };
            let answer = api.admin("POST", "/api/v1/identity/revocations", Some(&body))?;
            let serials = answer["serials"].as_array().map_or(0, Vec::len);
            println!("revoked ({serials} known certificates); live connections are closed");
            Ok(())
        }
        Command::Token(TokenCommand::Create { api, labels, ttl, uses }) => {
            let labels: serde_json::Map<String, serde_json::Value> = herd_common::identity::parse_labels(&labels)?
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let body = serde_json::json!({ "labels": labels, "ttl": ttl, "uses": uses });
            let token = api.admin("POST", "/api/v1/identity/tokens", Some(&body))?;
            eprintln!(
                "token {} expires {} ({} uses); give it to `herd-agent enroll --token-file`",
                token["id"].as_str().unwrap_or_default(),
                token["expires"].as_str().unwrap_or_default(),
                uses.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
            );
            println!("{}", token["token"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Token(TokenCommand::List { api }) => {
            let tokens = api.admin("GET", "/api/v1/identity/tokens", None)?;
            print!("{}", herd_aggregator::api::client::format_tokens(&tokens));
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { api, id }) => {
            api.admin("DELETE", &format!("/api/v1/identity/tokens/{id}"), None)?;
            println!("token {id} revoked");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = AggregatorConfig::load(&config).map_err(|err| anyhow::anyhow!("{err}"))?;
            if let Some(router_config) = &loaded.alerting.router_config {
                herd_aggregator::alertmanager::config::load(router_config)?;
                println!("{}: ok", router_config.display());
            }
            if let Some((cert, _)) = &loaded.http_listener.tls {
                let ca = std::fs::read_to_string(&loaded.tls.ca_file)
                    .with_context(|| format!("cannot read {}", loaded.tls.ca_file.display()))?;
                herd_aggregator::http::HttpListener::new(&loaded.http_listener, ca)?;
                println!("{}: ok (HTTPS)", cert.display());
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
                    println!("{}", client::add_silence(&api.endpoint()?, &matchers, duration, &author, &comment)?);
                }
                SilenceCommand::Query { api, matchers, expired } => {
                    print!("{}", client::query_silences(&api.endpoint()?, &matchers, expired)?);
                }
                SilenceCommand::Expire { api, ids } => {
                    let endpoint = api.endpoint()?;
                    for id in ids {
                        client::expire_silence(&endpoint, &id)?;
                    }
                }
            }
            Ok(())
        }
        Command::Config(command) => {
            use herd_aggregator::configs::client;
            let printed = match command {
                ConfigCommand::Push {
                    api,
                    profile,
                    selector,
                    priority,
                    message,
                    dry_run,
                    canary,
                    wave_size,
                    wait,
                    max_failures,
                    file,
                } => {
                    let body = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin()).context("cannot read the body from standard input")?
                    } else {
                        std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
                    };
                    let args = client::PushArgs {
                        profile,
                        selector,
                        priority,
                        body,
                        message,
                        dry_run,
                        canary,
                        wave_size,
                        wait,
                        max_failures,
                    };
                    client::push(&api.client()?, &args)?
                }
                ConfigCommand::List { api } => client::list(&api.client()?)?,
                ConfigCommand::Show { api, reference } => client::show(&api.client()?, &reference)?,
                ConfigCommand::Diff { api, from, to } => client::diff(&api.client()?, &from, &to)?,
                ConfigCommand::Status { api, selector } => client::status(&api.client()?, selector.as_deref())?,
                ConfigCommand::Rollback { api, profile, to } => {
                    client::action(&api.client()?, &profile, "rollback", to)?
                }
                ConfigCommand::Resume { api, profile } => client::action(&api.client()?, &profile, "resume", None)?,
                ConfigCommand::Abort { api, profile } => client::action(&api.client()?, &profile, "abort", None)?,
            };
            if printed.ok {
                print!("{}", printed.text);
                Ok(())
            } else {
                eprint!("{}", printed.text);
                std::process::exit(1);
            }
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
            // The demo speaks through its banner and live line; logs only for
            // what goes wrong (RUST_LOG=info shows everything).
            init_logging("warn");
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
