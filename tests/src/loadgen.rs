//! A fleet of simulated agents in one process, for load on a real aggregator.
//!
//! Each simulated agent is the real agent's delivery path: its own
//! certificate issued from the fleet CA, its own QUIC endpoint and mTLS
//! connection, its own durable buffer on disk, per-agent sequence numbers
//! and acknowledgements, jittered reconnect backoff and newest-first
//! backfill (`herd_agent::uplink::Uplink`). Only the collectors are
//! replaced: a generator hands the uplink one batch per interval of
//! node-, PostgreSQL- and application-shaped series whose values change
//! every cycle (counters grow, gauges wander).
//!
//! `herd-loadgen` runs one from the command line; `bench-fleet` drives it
//! next to a real aggregator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_agent::buffer::{Buffer, BufferStats};
use herd_agent::remote_config::LiveSettings;
use herd_agent::uplink::{ConfigChannels, Uplink, UplinkStats};
use herd_common::config::agent::AgentConfig;
use herd_common::metric::SeriesTable;
use herd_common::protocol::SampleBatch;
use herd_common::tls::{PemPair, TlsMaterial};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub agents: usize,
    pub series_per_agent: usize,
    pub interval: Duration,
    /// The aggregator's QUIC address; its certificate must name `server_name`.
    pub endpoint: SocketAddr,
    pub server_name: String,
    /// Agent ids are `PREFIX-00000`, `PREFIX-00001`, ...
    pub prefix: String,
    /// Each agent's buffer lives under `state_dir/ID`.
    pub state_dir: PathBuf,
    /// Extra `[uplink]` TOML lines for every agent (backoff, backfill rate).
    pub uplink_extra: String,
    /// Trusted labels in every agent's certificate.
    pub labels: Vec<(String, String)>,
}

/// The simulated agents, running until [`Fleet::stop`].
pub struct Fleet {
    shutdown: CancellationToken,
    generating: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    agents: Vec<AgentHandle>,
    generated_samples: Arc<AtomicU64>,
}

struct AgentHandle {
    uplink: Arc<UplinkStats>,
    buffer: Arc<BufferStats>,
}

/// Totals over the fleet at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetTotals {
    pub connected: u64,
    pub connects: u64,
    pub generated_samples: u64,
    pub sent_samples: u64,
    pub sent_bytes: u64,
    pub acked_batches: u64,
    pub backfilled_batches: u64,
    /// Batches held in the agents' buffers, not yet acknowledged.
    pub buffered_batches: u64,
    pub dropped_batches: u64,
}

/// One series shape: metric name, fixed labels, an index label, and how its value moves.
struct Family {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    index_label: &'static str,
    counter: bool,
    scale: f64,
}

/// The series an agent reports, cycled until `series_per_agent` are defined.
const FAMILIES: &[Family] = &[
    Family {
        name: "node_cpu_seconds_total",
        labels: &[("mode", "user")],
        index_label: "cpu",
        counter: true,
        scale: 0.4,
    },
    Family {
        name: "node_cpu_seconds_total",
        labels: &[("mode", "system")],
        index_label: "cpu",
        counter: true,
        scale: 0.1,
    },
    Family {
        name: "node_cpu_seconds_total",
        labels: &[("mode", "idle")],
        index_label: "cpu",
        counter: true,
        scale: 0.5,
    },
    Family { name: "node_memory_MemAvailable_bytes", labels: &[], index_label: "numa", counter: false, scale: 1e9 },
    Family {
        name: "node_filesystem_avail_bytes",
        labels: &[("fstype", "ext4")],
        index_label: "mountpoint",
        counter: false,
        scale: 5e10,
    },
    Family { name: "node_network_receive_bytes_total", labels: &[], index_label: "device", counter: true, scale: 1e6 },
    Family { name: "node_network_transmit_bytes_total", labels: &[], index_label: "device", counter: true, scale: 8e5 },
    Family { name: "node_disk_io_time_seconds_total", labels: &[], index_label: "device", counter: true, scale: 0.2 },
    Family {
        name: "pg_stat_database_xact_commit",
        labels: &[("server", "localhost:5432")],
        index_label: "datname",
        counter: true,
        scale: 300.0,
    },
    Family {
        name: "pg_stat_user_tables_n_live_tup",
        labels: &[("datname", "app")],
        index_label: "relname",
        counter: false,
        scale: 1e5,
    },
    Family {
        name: "pg_stat_activity_count",
        labels: &[("state", "active")],
        index_label: "datname",
        counter: false,
        scale: 20.0,
    },
    Family {
        name: "http_requests_total",
        labels: &[("method", "GET"), ("status", "200")],
        index_label: "handler",
        counter: true,
        scale: 150.0,
    },
    Family {
        name: "http_request_duration_seconds_sum",
        labels: &[("method", "GET")],
        index_label: "handler",
        counter: true,
        scale: 4.0,
    },
    Family { name: "redis_connected_clients", labels: &[], index_label: "db", counter: false, scale: 50.0 },
];

impl Fleet {
    /// Issues a certificate per agent from `ca` and starts every agent on the current runtime.
    /// Agents start spread over one interval, as a real fleet's clocks are.
    pub async fn start(spec: &FleetSpec, ca: &PemPair) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let generating = shutdown.child_token();
        let generated_samples = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(spec.agents * 2);
        let mut agents = Vec::with_capacity(spec.agents);
        std::fs::create_dir_all(&spec.state_dir)?;
        for index in 0..spec.agents {
            let id = format!("{}-{index:05}", spec.prefix);
            let identity = herd_common::identity::issue_agent(
                ca,
                &id,
                &spec.labels,
                Duration::from_secs(30 * 86_400),
                std::time::SystemTime::now(),
            )?;
            let material = TlsMaterial { ca_pem: ca.cert_pem.clone(), identity };
            let config = agent_config(spec, &id)?;
            let client = herd_common::tls::client_config(&material, config.uplink.idle_timeout)?;
            let dir = config.state_dir.clone();
            let recovered = tokio::task::spawn_blocking(move || Buffer::open(&dir, 256 << 20, 64)).await??;
            let buffer_stats = recovered.buffer.stats();
            let mut table = recovered.table;
            let ids = define_series(&mut table, spec.series_per_agent);
            let table = Arc::new(Mutex::new(table));
            let channels = idle_config_channels(&config, &shutdown);
            let uplink = Uplink::new(&config, client, Arc::clone(&table), recovered.buffer, channels)?;
            agents.push(AgentHandle { uplink: uplink.stats(), buffer: buffer_stats });
            let (tx, rx) = mpsc::channel(16);
            let offset = spec.interval.mul_f64(index as f64 / spec.agents.max(1) as f64);
            tasks.push(tokio::spawn(generate(
                ids,
                recovered.next_seq,
                spec.interval,
                offset,
                tx,
                Arc::clone(&generated_samples),
                (generating.child_token(), shutdown.child_token()),
            )));
            tasks.push(tokio::spawn(uplink.run(rx, shutdown.child_token())));
        }
        Ok(Self { shutdown, generating, tasks, agents, generated_samples })
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn totals(&self) -> FleetTotals {
        let mut totals =
            FleetTotals { generated_samples: self.generated_samples.load(Ordering::Relaxed), ..Default::default() };
        for agent in &self.agents {
            let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            totals.connected += load(&agent.uplink.connected);
            totals.connects += load(&agent.uplink.connects);
            totals.sent_samples += load(&agent.uplink.sent_samples);
            totals.sent_bytes += load(&agent.uplink.sent_bytes);
            totals.acked_batches += load(&agent.uplink.acked_batches);
            totals.backfilled_batches += load(&agent.uplink.backfilled_batches);
            totals.buffered_batches += load(&agent.buffer.batches);
            totals.dropped_batches += load(&agent.buffer.dropped_batches);
        }
        totals
    }

    /// Stops producing batches; the agents stay connected and deliver what they hold.
    pub fn stop_generating(&self) {
        self.generating.cancel();
    }

    /// Stops every agent (closing its connection) and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn agent_config(spec: &FleetSpec, id: &str) -> anyhow::Result<AgentConfig> {
    // The TLS material is handed over in memory; the paths only satisfy the schema.
    let text = format!(
        "[agent]\nid = \"{id}\"\nstate_dir = \"{state}\"\n\
         [uplink]\nendpoints = [\"{endpoint}\"]\nserver_name = \"{server}\"\n\
         ca_file = \"ca.pem\"\ncert_file = \"{id}.pem\"\nkey_file = \"{id}-key.pem\"\n{extra}\n\
         [collect]\ninterval = \"{interval}ms\"\n",
        state = spec.state_dir.join(id).display(),
        endpoint = spec.endpoint,
        server = spec.server_name,
        extra = spec.uplink_extra,
        interval = spec.interval.as_millis(),
    );
    Ok(AgentConfig::from_toml("herd-loadgen", &text, Some(Path::new("/")), id)?)
}

/// Configuration channels for an agent that never applies a push: pushes are
/// drained (and left unanswered) so the uplink never blocks on them.
fn idle_config_channels(config: &AgentConfig, shutdown: &CancellationToken) -> ConfigChannels {
    let settings = LiveSettings {
        labels: Vec::new(),
        version: 0,
        profile: String::new(),
        hash: String::new(),
        buffer: config.buffer.clone(),
    };
    let (live_tx, live) = watch::channel(settings);
    let (pushes, mut push_rx) = mpsc::channel(4);
    let (ack_tx, acks) = mpsc::channel(4);
    let shutdown = shutdown.child_token();
    tokio::spawn(async move {
        let _keep = (live_tx, ack_tx);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                push = push_rx.recv() => if push.is_none() { break },
            }
        }
    });
    // Loaded agents send what they are given each cycle: alert inputs are ignored.
    let alert_inputs = watch::Sender::new(Default::default());
    ConfigChannels { live, pushes, acks, local_config: String::new(), local_config_dir: String::new(), alert_inputs }
}

/// A defined series: its id in the agent's table, whether it is a counter, its scale.
type Series = (u32, bool, f64);

/// Calls `f` with the metric name, sorted labels, kind and scale of each of
/// an agent's first `count` series (the same for every agent).
pub fn each_series(count: usize, mut f: impl FnMut(&str, &[(&str, &str)], bool, f64)) {
    for n in 0..count {
        let family = &FAMILIES[n % FAMILIES.len()];
        let index = (n / FAMILIES.len()).to_string();
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(family.labels.len() + 1);
        labels.extend_from_slice(family.labels);
        labels.push((family.index_label, &index));
        labels.sort_unstable();
        f(family.name, &labels, family.counter, family.scale);
    }
}

fn define_series(table: &mut SeriesTable, count: usize) -> Vec<Series> {
    let mut scratch = String::new();
    let mut series = Vec::with_capacity(count);
    each_series(count, |name, labels, counter, scale| {
        series.push((table.intern(name, labels, &mut scratch), counter, scale));
    });
    series
}

/// The next value of a series: counters grow by a whole step, gauges wander around their scale.
pub fn next_value(rng: &mut fastrand::Rng, value: f64, counter: bool, scale: f64) -> f64 {
    if counter { value + (scale * rng.f64()).round() } else { (value + scale * 0.05 * (rng.f64() - 0.5)).max(0.0) }
}

/// Hands the uplink one batch per interval until `stop`, then holds the
/// channel open until `shutdown`.
async fn generate(
    series: Vec<Series>,
    first_seq: u64,
    interval: Duration,
    offset: Duration,
    tx: mpsc::Sender<SampleBatch>,
    generated: Arc<AtomicU64>,
    (stop, shutdown): (CancellationToken, CancellationToken),
) {
    let mut rng = fastrand::Rng::new();
    let mut values: Vec<f64> = series.iter().map(|&(_, _, scale)| scale * rng.f64()).collect();
    let mut seq = first_seq;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // The uplink takes a closed channel for the agent's shutdown:
                // keep it open so the agent stays connected and delivers what it holds.
                shutdown.cancelled().await;
                return;
            }
            _ = ticker.tick() => {}
        }
        let mut samples = Vec::with_capacity(series.len());
        for (value, &(id, counter, scale)) in values.iter_mut().zip(&series) {
            *value = next_value(&mut rng, *value, counter, scale);
            samples.push((id, *value));
        }
        let batch = SampleBatch { seq, timestamp_ms: now_ms(), samples };
        seq += 1;
        generated.fetch_add(series.len() as u64, Ordering::Relaxed);
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// CPU seconds (user + system) this process has used.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("self").unwrap_or(0.0)
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_of(&pid.to_string())
}

fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on.
    100.0
}
