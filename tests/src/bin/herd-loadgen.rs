//! Simulated agents against a real aggregator: N agents x S series every
//! interval, each with its own certificate from the fleet CA, QUIC + mTLS
//! connection, durable buffer, sequence numbers and acks (the real agent's
//! uplink). Prints a line per report period: agents connected, samples
//! acknowledged per second, batches buffered (a growing figure means the
//! aggregator does not keep up) and the generator's own CPU.
//!
//!   herd-aggregator ca init --dir ca
//!   herd-aggregator cert issue --server localhost --san 127.0.0.1 --ca-dir ca
//!   herd-loadgen --aggregator 127.0.0.1:7400 --ca-dir ca --agents 1000 --series 1000 --interval-ms 10000
//!
//! Stop the aggregator while it runs to see the agents buffer, reconnect
//! with backoff and backfill when it returns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use herd_tests::loadgen::{Fleet, FleetSpec, own_cpu_seconds};

#[derive(Debug, Parser)]
#[command(name = "herd-loadgen", about = "Simulated Herd agents over QUIC with mutual TLS")]
struct Args {
    /// The aggregator's QUIC address.
    #[arg(long)]
    aggregator: SocketAddr,
    /// The name the aggregator's certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Directory holding the fleet CA (ca.pem and ca-key.pem), as `ca init` writes it.
    #[arg(long)]
    ca_dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Series per agent.
    #[arg(long, default_value_t = 1000)]
    series: usize,
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
    /// Seconds to run; 0 runs until interrupted.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Where the agents' buffers live (a temporary directory by default).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long, default_value = "loadgen")]
    prefix: String,
    /// Trusted labels in every agent's certificate, as k=v,k=v.
    #[arg(long, default_value = "role=loadgen")]
    labels: String,
    #[arg(long, default_value_t = 10)]
    report_every: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca = herd_common::tls::read_pair(&args.ca_dir.join("ca.pem"), &args.ca_dir.join("ca-key.pem"))?;
    let temporary = tempfile::tempdir()?;
    let spec = FleetSpec {
        agents: args.agents,
        series_per_agent: args.series,
        interval: Duration::from_millis(args.interval_ms),
        endpoint: args.aggregator,
        server_name: args.server_name,
        prefix: args.prefix,
        state_dir: args.state_dir.unwrap_or_else(|| temporary.path().to_owned()),
        uplink_extra: String::new(),
        labels: args
            .labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("--labels must be k=v,k=v"))?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let fleet = Fleet::start(&spec, &ca).await?;
        println!(
            "{} agents x {} series every {} ms started in {:.1} s",
            fleet.len(),
            spec.series_per_agent,
            args.interval_ms,
            started.elapsed().as_secs_f64()
        );
        let mut last = (Instant::now(), fleet.totals(), own_cpu_seconds());
        let deadline = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_secs(args.report_every)) => {}
            }
            let (now, totals, cpu) = (Instant::now(), fleet.totals(), own_cpu_seconds());
            let seconds = now.duration_since(last.0).as_secs_f64();
            let acked = totals.acked_batches - last.1.acked_batches;
            println!(
                "connected {}/{}  acked {:.0} batches/s  sent {:.0} samples/s  buffered {} batches  dropped {}  loadgen CPU {:.0} %",
                totals.connected,
                fleet.len(),
                acked as f64 / seconds,
                (totals.sent_samples - last.1.sent_samples) as f64 / seconds,
                totals.buffered_batches,
                totals.dropped_batches,
                (cpu - last.2) / seconds * 100.0,
            );
            last = (now, totals, cpu);
            if deadline.is_some_and(|deadline| now >= deadline) {
                break;
            }
        }
        fleet.stop().await;
        anyhow::Ok(())
    })
}
