//! The aggregator at fleet scale, fed by simulated agents (`herd_tests::loadgen`:
//! the real agent's uplink and buffer, one certificate, QUIC connection and
//! buffer per agent) in this process, with the aggregator a separate process.
//!
//!   cargo build --release --workspace --bins
//!   target/release/bench-fleet [--phases ingest,connections,recovery] [--agents 1000 --series 1000 ...]
//!
//! Phases:
//! - ingest: AGENTS x SERIES every INTERVAL; samples/s stored, aggregator CPU
//!   and RSS over REPEATS windows (median and spread), then more agents in
//!   steps until the agents' buffers grow. VictoriaMetrics and Prometheus then
//!   receive the same series at the same rate through remote_write, each
//!   measured the same way; the comparison is samples stored per CPU-second.
//! - connections: CONN_AGENTS x CONN_SERIES held for HOLD seconds, RSS per
//!   agent, then the aggregator is killed and restarted and every agent
//!   reconnects at once with its jittered backoff: handshakes per second.
//! - recovery: REC_AGENTS x REC_SERIES every second, the aggregator down for
//!   OUTAGE seconds: time from its return until the live series are current
//!   (newest sample within 2 s) and until every buffered sample is stored.
//!
//! The generator's own CPU is printed beside each figure: on one box it
//! competes with the aggregator (and, in the peers' runs, the remote_write
//! sender with the peer).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use herd_common::tls::PemPair;
use herd_tests::loadgen::{Fleet, FleetSpec, each_series, next_value, now_ms, own_cpu_seconds, process_cpu_seconds};
use herd_tests::peers::{Peer, start_prometheus, start_victoria_metrics};
use herd_tests::prompb::{Sample, TimeSeries, WriteRequest, body, label, post, sender};
use herd_tests::*;

#[derive(Debug, Parser)]
#[command(name = "bench-fleet")]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "ingest,connections,recovery")]
    phases: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// Seconds between an agent's batches in the ingest and connection phases.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 30)]
    window: u64,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Steps of RAMP_AGENTS more agents at RAMP_INTERVAL, after the first load, until buffers grow.
    #[arg(long, default_value_t = 4)]
    ramp_steps: usize,
    #[arg(long, default_value_t = 500)]
    ramp_agents: usize,
    /// Seconds between the added agents' batches: shorter than INTERVAL, so
    /// the load grows faster than the series count (memory bounds the series).
    #[arg(long, default_value_t = 1)]
    ramp_interval: u64,
    #[arg(long, default_value_t = 10_000)]
    conn_agents: usize,
    #[arg(long, default_value_t = 50)]
    conn_series: usize,
    #[arg(long, default_value_t = 300)]
    hold: u64,
    #[arg(long, default_value_t = 100)]
    rec_agents: usize,
    #[arg(long, default_value_t = 100)]
    rec_series: usize,
    #[arg(long, default_value_t = 600)]
    outage: u64,
}

const MIB: f64 = (1 << 20) as f64;

/// An aggregator (release binary) on fixed ports with the production heartbeat, restartable on the same state.
struct Bench {
    work: tempfile::TempDir,
    pki: Pki,
    ca: PemPair,
    herd: Option<Aggregator>,
    http: SocketAddr,
    quic: SocketAddr,
}

impl Bench {
    fn new() -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        let pki = Pki::create(work.path().join("pki"));
        let ca = herd_common::tls::read_pair(&pki.path("ca.pem"), &pki.path("ca-key.pem")).expect("read the CA");
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
        let mut bench = Self { work, pki, ca, herd: None, http, quic };
        bench.start();
        bench
    }

    fn start(&mut self) {
        let (pki, work) = (&self.pki, self.work.path());
        let ready_within = Duration::from_secs(600);
        self.herd = Some(Aggregator::start_within(pki, work, "agg", self.http, self.quic, "", "", ready_within));
    }

    fn herd(&self) -> &Aggregator {
        self.herd.as_ref().expect("aggregator running")
    }

    fn pid(&self) -> u32 {
        self.herd().process.pid()
    }

    fn rss(&self) -> f64 {
        self.herd().process.rss_bytes().unwrap_or(0) as f64
    }

    fn spec(&self, prefix: &str, agents: usize, series: usize, interval: Duration) -> FleetSpec {
        FleetSpec {
            agents,
            series_per_agent: series,
            interval,
            endpoint: self.quic,
            server_name: "localhost".into(),
            prefix: prefix.into(),
            state_dir: self.work.path().join("agents"),
            uplink_extra: String::new(),
            labels: vec![("role".into(), prefix.into())],
        }
    }
}

/// Figures over one measurement window.
#[derive(Debug, Clone, Copy)]
struct Window {
    stored_per_second: f64,
    generated_per_second: f64,
    /// CPU cores the receiver used.
    cores: f64,
    /// CPU cores the generator (or sender) used.
    load_cores: f64,
    buffered_growth: i64,
}

fn measure_herd(bench: &Bench, fleet: &[Fleet], seconds: u64) -> Window {
    let totals = |fleets: &[Fleet]| {
        fleets.iter().map(Fleet::totals).fold((0, 0), |(g, b), t| (g + t.generated_samples, b + t.buffered_batches))
    };
    let (generated0, buffered0) = totals(fleet);
    let stored0 = bench.herd().self_metric("herd_ingest_samples_total");
    let (cpu0, own0, started) = (process_cpu_seconds(bench.pid()).unwrap_or(0.0), own_cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let (generated1, buffered1) = totals(fleet);
    Window {
        stored_per_second: (bench.herd().self_metric("herd_ingest_samples_total") - stored0) / elapsed,
        generated_per_second: (generated1 - generated0) as f64 / elapsed,
        cores: (process_cpu_seconds(bench.pid()).unwrap_or(0.0) - cpu0) / elapsed,
        load_cores: (own_cpu_seconds() - own0) / elapsed,
        buffered_growth: buffered1 as i64 - buffered0 as i64,
    }
}

/// The aggregator's own metric, `None` if it does not answer (busy) rather than a panic.
fn metric(herd: &Aggregator, name: &str) -> Option<f64> {
    let (_, body) = herd.get("/metrics")?;
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn wait_connected(fleets: &[Fleet], limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let want: usize = fleets.iter().map(Fleet::len).sum();
    wait_for(limit, || {
        (fleets.iter().map(|f| f.totals().connected).sum::<u64>() as usize >= want).then(|| started.elapsed())
    })
}

/// Median and spread (min–max) of `values`.
fn median_spread(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(0.0);
    (median, values.first().copied().unwrap_or(0.0), values.last().copied().unwrap_or(0.0))
}

fn figure(values: impl IntoIterator<Item = f64>, scale: f64, digits: usize) -> String {
    let (median, min, max) = median_spread(values);
    format!("{:.digits$} ({:.digits$}–{:.digits$})", median * scale, min * scale, max * scale)
}

fn ingest(args: &Args, runtime: &tokio::runtime::Runtime) -> String {
    let interval = Duration::from_secs(args.interval);
    let bench = Bench::new();
    let rss_idle = bench.rss();
    let mut fleets = vec![
        runtime
            .block_on(Fleet::start(&bench.spec("web", args.agents, args.series, interval), &bench.ca))
            .expect("start the fleet"),
    ];
    let connected = wait_connected(&fleets, Duration::from_secs(300));
    println!("ingest: {} agents connected in {:?}", args.agents, connected);
    // Warm-up: every series defined and stored once.
    std::thread::sleep(interval * 2);
    let windows: Vec<Window> = (0..args.repeats).map(|_| measure_herd(&bench, &fleets, args.window)).collect();
    let rss = bench.rss();
    let load_samples = args.agents * args.series;

    // More agents until the buffers grow or the stored rate falls behind.
    let mut ramp = Vec::new();
    let mut agents = args.agents;
    for step in 0..args.ramp_steps {
        let more = args.ramp_agents;
        let spec = bench.spec(&format!("web{step}"), more, args.series, Duration::from_secs(args.ramp_interval));
        fleets.push(runtime.block_on(Fleet::start(&spec, &bench.ca)).expect("start more agents"));
        agents += more;
        let _ = wait_connected(&fleets, Duration::from_secs(300));
        std::thread::sleep(interval * 2);
        let window = measure_herd(&bench, &fleets, args.window);
        let sustained = window.buffered_growth <= agents as i64 / 10
            && window.stored_per_second >= 0.95 * window.generated_per_second;
        println!("ingest ramp: {agents} agents: {window:?} sustained={sustained}");
        ramp.push((agents, window, sustained));
        if !sustained {
            break;
        }
    }
    for fleet in fleets {
        runtime.block_on(fleet.stop());
    }
    drop(bench);

    // The same series at the same rate into each peer, over remote_write.
    let peers: Vec<(&str, Vec<Window>, f64)> = ["victoria-metrics", "prometheus"]
        .into_iter()
        .map(|name| {
            let work = tempfile::tempdir().expect("temp dir");
            let peer = match name {
                "prometheus" => {
                    start_prometheus(work.path(), &work.path().join("prom"), "global:\n  scrape_interval: 1m\n", 0)
                }
                _ => start_victoria_metrics(work.path(), &work.path().join("vm"), 0),
            };
            let windows = measure_peer(&peer, args, interval);
            let rss = peer.rss_bytes().unwrap_or(0) as f64;
            (name, windows, rss)
        })
        .collect();

    let per_cpu = |w: &Window| w.stored_per_second / w.cores.max(1e-9);
    let herd_capacity = median_spread(windows.iter().map(per_cpu)).0;
    let mut out = format!(
        "## Fleet ingest (issue: aggregator at fleet scale)\n\n\
         `target/release/bench-fleet --phases ingest --agents {agents0} --series {series} --interval {interval_s} --window {window} --repeats {repeats}`: \
         {agents0} simulated agents x {series} series every {interval_s} s ({rate} samples/s) over QUIC with mTLS, \
         next to the same series sent at the same rate through remote_write. Median (min–max) of {repeats} windows of {window} s.\n\n\
         | receiver | stored samples/s | CPU cores | samples per CPU-second | RSS MiB | generator/sender CPU cores | herd/peer per CPU-second |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n\
         | herd-aggregator | {stored} | {cores} | {capacity} | {rss:.0} | {load} | |\n",
        agents0 = args.agents,
        series = args.series,
        interval_s = args.interval,
        window = args.window,
        repeats = args.repeats,
        rate = load_samples as u64 / args.interval.max(1),
        stored = figure(windows.iter().map(|w| w.stored_per_second), 1.0, 0),
        cores = figure(windows.iter().map(|w| w.cores), 1.0, 3),
        capacity = figure(windows.iter().map(per_cpu), 1.0, 0),
        rss = rss / MIB,
        load = figure(windows.iter().map(|w| w.load_cores), 1.0, 3),
    );
    for (name, peer_windows, peer_rss) in &peers {
        let capacity = median_spread(peer_windows.iter().map(per_cpu)).0;
        out += &format!(
            "| {name} | {} | {} | {} | {:.0} | {} | {:.2} |\n",
            figure(peer_windows.iter().map(|w| w.stored_per_second), 1.0, 0),
            figure(peer_windows.iter().map(|w| w.cores), 1.0, 3),
            figure(peer_windows.iter().map(per_cpu), 1.0, 0),
            peer_rss / MIB,
            figure(peer_windows.iter().map(|w| w.load_cores), 1.0, 3),
            herd_capacity / capacity.max(1e-9),
        );
    }
    out += &format!(
        "\nAggregator RSS: {:.0} MiB idle, {:.0} MiB with {} agents: {:.1} kB per agent with its {} series.\n\n\
         More agents, {} at a time ({} series each, every {} s), until the agents' buffers grow:\n\n\
         | agents | generated samples/s | stored samples/s | aggregator CPU cores | generator CPU cores | buffered batches growth | sustained |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        rss_idle / MIB,
        rss / MIB,
        args.agents,
        (rss - rss_idle) / args.agents as f64 / 1000.0,
        args.series,
        args.ramp_agents,
        args.series,
        args.ramp_interval,
    );
    for (agents, w, sustained) in &ramp {
        out += &format!(
            "| {agents} | {:.0} | {:.0} | {:.3} | {:.3} | {} | {} |\n",
            w.generated_per_second,
            w.stored_per_second,
            w.cores,
            w.load_cores,
            w.buffered_growth,
            if *sustained { "yes" } else { "no" }
        );
    }
    out
}

/// Sends AGENTS x SERIES samples every interval to `peer` (4 sender threads,
/// 2,000 samples per request) and measures it like the aggregator.
fn measure_peer(peer: &Peer, args: &Args, interval: Duration) -> Vec<Window> {
    let url = format!("{}/api/v1/write", peer.url());
    let pid = peer.pid();
    let threads = 4;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (url, stop, sent) = (&url, &stop, &sent);
            scope.spawn(move || {
                let agent = sender();
                let mut rng = fastrand::Rng::new();
                let agents: Vec<usize> = (thread..args.agents).step_by(threads).collect();
                let mut values = vec![0.0; agents.len() * args.series];
                let mut next = Instant::now() + interval.mul_f64(thread as f64 / threads as f64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += interval;
                    let timestamp = now_ms();
                    let mut request = WriteRequest::default();
                    let mut slot = 0;
                    for &agent_index in &agents {
                        let instance = format!("web-{agent_index:05}");
                        each_series(args.series, |name, labels, counter, scale| {
                            values[slot] = next_value(&mut rng, values[slot], counter, scale);
                            let mut series_labels = vec![label("__name__", name)];
                            series_labels.extend(labels.iter().map(|(k, v)| label(k, *v)));
                            series_labels.push(label("instance", instance.clone()));
                            series_labels.push(label("job", "herd"));
                            series_labels.sort_by(|a, b| a.name.cmp(&b.name));
                            request.timeseries.push(TimeSeries {
                                labels: series_labels,
                                samples: vec![Sample { value: values[slot], timestamp }],
                            });
                            slot += 1;
                            if request.timeseries.len() == 2000 {
                                post(&agent, url, None, &body(&request));
                                sent.fetch_add(2000, std::sync::atomic::Ordering::Relaxed);
                                request.timeseries.clear();
                            }
                        });
                    }
                    if !request.timeseries.is_empty() {
                        post(&agent, url, None, &body(&request));
                        sent.fetch_add(request.timeseries.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        // Warm-up: every series created once.
        std::thread::sleep(interval * 2);
        let windows = (0..args.repeats)
            .map(|_| {
                let (sent0, cpu0, own0, t0) = (
                    sent.load(std::sync::atomic::Ordering::Relaxed),
                    process_cpu_seconds(pid).unwrap_or(0.0),
                    own_cpu_seconds(),
                    Instant::now(),
                );
                std::thread::sleep(Duration::from_secs(args.window));
                let elapsed = t0.elapsed().as_secs_f64();
                let rate = (sent.load(std::sync::atomic::Ordering::Relaxed) - sent0) as f64 / elapsed;
                // A request is answered once the peer has taken its samples in.
                Window {
                    stored_per_second: rate,
                    generated_per_second: rate,
                    cores: (process_cpu_seconds(pid).unwrap_or(0.0) - cpu0) / elapsed,
                    load_cores: (own_cpu_seconds() - own0) / elapsed,
                    buffered_growth: 0,
                }
            })
            .collect::<Vec<_>>();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        println!("{}: {windows:?} after {:?}", peer.url(), started.elapsed());
        windows
    })
}

/// Agents per `herd-loadgen` process in the connection phase: each simulated
/// agent holds a UDP socket and two or three buffer files, and one process
/// may open at most 20,000 files on this machine kind.
const AGENTS_PER_PROCESS: usize = 4000;

/// `herd-loadgen` processes together running `agents` agents against `bench`, reporting every second.
fn spawn_loadgens(bench: &Bench, agents: usize, series: usize, interval: Duration) -> Vec<Process> {
    let ca_dir = bench.pki.dir.to_str().expect("utf-8 path").to_owned();
    let aggregator = bench.quic.to_string();
    (0..agents.div_ceil(AGENTS_PER_PROCESS))
        .map(|n| {
            let count = AGENTS_PER_PROCESS.min(agents - n * AGENTS_PER_PROCESS).to_string();
            let state = bench.work.path().join(format!("loadgen-{n}"));
            let (series, interval_ms, prefix) =
                (series.to_string(), interval.as_millis().to_string(), format!("app{n}"));
            let args = [
                "--aggregator",
                &aggregator,
                "--ca-dir",
                &ca_dir,
                "--agents",
                &count,
                "--series",
                &series,
                "--interval-ms",
                &interval_ms,
                "--prefix",
                &prefix,
                "--labels",
                "role=app",
                "--report-every",
                "1",
                "--state-dir",
                state.to_str().expect("utf-8 path"),
            ];
            Process::spawn(&format!("loadgen-{n}"), "herd-loadgen", &args, bench.work.path())
        })
        .collect()
}

/// Agents connected, from each process's latest report line ("connected A/B ...").
fn loadgen_connected(processes: &[Process]) -> u64 {
    processes
        .iter()
        .map(|process| {
            let log = process.log();
            log.lines()
                .rev()
                .find_map(|line| line.strip_prefix("connected ")?.split('/').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn connections(args: &Args) -> String {
    let interval = Duration::from_secs(args.interval);
    let mut bench = Bench::new();
    let rss_idle = bench.rss();
    let n = args.conn_agents as f64;
    let started = Instant::now();
    let loadgens = spawn_loadgens(&bench, args.conn_agents, args.conn_series, interval);
    // 0 while the aggregator is too busy to answer /metrics in time.
    let herd_connected = |bench: &Bench| metric(bench.herd(), "herd_fleet_agents_connected").unwrap_or(0.0) as usize;
    let connected =
        wait_for(Duration::from_secs(900), || (herd_connected(&bench) >= args.conn_agents).then(|| started.elapsed()));
    println!("connections: {} agents connected after {connected:?}", args.conn_agents);
    let generator_cpu = || loadgens.iter().filter_map(|p| process_cpu_seconds(p.pid())).sum::<f64>();
    let held_from = Instant::now();
    let mut windows = Vec::new();
    let mut fewest = usize::MAX;
    while held_from.elapsed() < Duration::from_secs(args.hold) {
        let seconds = args.window.min(args.hold).max(1);
        let (stored0, cpu0, load0, t0) = (
            metric(bench.herd(), "herd_ingest_samples_total").unwrap_or(f64::NAN),
            process_cpu_seconds(bench.pid()).unwrap_or(0.0),
            generator_cpu(),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(seconds));
        let elapsed = t0.elapsed().as_secs_f64();
        fewest = fewest.min(herd_connected(&bench));
        let stored = (metric(bench.herd(), "herd_ingest_samples_total").unwrap_or(f64::NAN) - stored0) / elapsed;
        windows.push(Window {
            stored_per_second: stored,
            generated_per_second: stored,
            cores: (process_cpu_seconds(bench.pid()).unwrap_or(0.0) - cpu0) / elapsed,
            load_cores: (generator_cpu() - load0) / elapsed,
            buffered_growth: 0,
        });
    }
    let rss = bench.rss();
    let generator_rss: f64 = loadgens.iter().filter_map(|p| p.rss_bytes()).sum::<u64>() as f64;

    // Reconnect storm: the aggregator is killed and comes back; every agent reconnects with its backoff.
    let mut herd = bench.herd.take().expect("running");
    herd.process.kill();
    drop(herd);
    let down = wait_for(Duration::from_secs(60), || (loadgen_connected(&loadgens) == 0).then_some(()));
    let restarted = Instant::now();
    bench.start();
    let ready = restarted.elapsed();
    // Connected agents as the aggregator counts them, for the busiest second of the storm.
    let mut trace: Vec<(Instant, usize)> = Vec::new();
    let storm = wait_for(Duration::from_secs(600), || {
        let connected = herd_connected(&bench);
        trace.push((Instant::now(), connected));
        (connected >= args.conn_agents).then(|| restarted.elapsed() - ready)
    });
    let peak = trace
        .iter()
        .enumerate()
        .map(|(i, &(from, before))| {
            let within = trace[i..].iter().take_while(|(t, _)| t.duration_since(from) <= Duration::from_secs(1));
            within.map(|&(_, after)| after.saturating_sub(before)).max().unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let failures = metric(bench.herd(), "herd_ingest_handshake_failures_total").unwrap_or(f64::NAN);
    let abandoned = metric(bench.herd(), "herd_ingest_handshakes_abandoned_total").unwrap_or(f64::NAN);
    let shed = metric(bench.herd(), "herd_ingest_handshakes_shed_total").unwrap_or(f64::NAN);
    drop(loadgens);
    format!(
        "## Connection scale (issue: aggregator at fleet scale)\n\n\
         `target/release/bench-fleet --phases connections --conn-agents {agents} --conn-series {series} --interval {interval_s} --hold {hold}`: \
         {agents} simulated agents x {series} series every {interval_s} s in {processes} `herd-loadgen` processes, held {hold} s; \
         then the aggregator is killed and restarted on the same state.\n\n\
         | figure | value |\n| --- | --- |\n\
         | all connected after the start (certificates issued, buffers opened, handshakes) | {connected} |\n\
         | fewest connected while held | {fewest} |\n\
         | stored samples/s while held, median (min–max) | {stored} |\n\
         | aggregator CPU cores while held | {cores} |\n\
         | aggregator RSS idle → held | {idle:.0} → {held:.0} MiB |\n\
         | aggregator RSS per agent (connection and its {series} series) | {per_agent:.1} kB |\n\
         | generator RSS per simulated agent | {own_per_agent:.1} kB |\n\
         | generator CPU cores while held | {load} |\n\
         | reconnect storm: every agent saw the aggregator gone | {down} |\n\
         | reconnect storm: aggregator ready after restart | {ready:.2} s |\n\
         | reconnect storm: all {agents} reconnected after ready | {storm} |\n\
         | reconnect storm: agents reconnected per second, overall (paced by their probes and backoff) | {rate} |\n\
         | reconnect storm: agents reconnected in the busiest second | {peak} |\n\
         | reconnect storm: handshakes failed; shed (too many in progress); abandoned by agents | {failures}; {shed}; {abandoned} |\n",
        agents = args.conn_agents,
        series = args.conn_series,
        interval_s = args.interval,
        hold = args.hold,
        processes = args.conn_agents.div_ceil(AGENTS_PER_PROCESS),
        connected = connected.map_or("not within 900 s".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        fewest = if fewest == usize::MAX { 0 } else { fewest },
        stored = figure(windows.iter().map(|w| w.stored_per_second), 1.0, 0),
        cores = figure(windows.iter().map(|w| w.cores), 1.0, 3),
        idle = rss_idle / MIB,
        held = rss / MIB,
        per_agent = (rss - rss_idle) / n / 1000.0,
        own_per_agent = generator_rss / n / 1000.0,
        load = figure(windows.iter().map(|w| w.load_cores), 1.0, 3),
        down = if down.is_some() { "yes" } else { "not within 60 s" },
        ready = ready.as_secs_f64(),
        storm = storm.map_or("not within 600 s".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        rate = storm.map_or("-".into(), |d| format!("{:.0}", n / d.as_secs_f64().max(1e-3))),
    )
}

fn recovery(args: &Args, runtime: &tokio::runtime::Runtime) -> String {
    let mut bench = Bench::new();
    let spec = bench.spec("db", args.rec_agents, args.rec_series, Duration::from_secs(1));
    let fleets = vec![runtime.block_on(Fleet::start(&spec, &bench.ca)).expect("start the fleet")];
    let _ = wait_connected(&fleets, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(10));
    let mut herd = bench.herd.take().expect("running");
    herd.process.kill();
    drop(herd);
    let outage_from = Instant::now();
    std::thread::sleep(Duration::from_secs(args.outage));
    let buffered = fleets[0].totals().buffered_batches;
    let backfilled_before = fleets[0].totals().backfilled_batches;
    let restarted = Instant::now();
    bench.start();
    let ready = restarted.elapsed();
    // Live: every agent's newest sample of one series is within 2 s of now.
    let live_query =
        format!("count(timestamp(node_memory_MemAvailable_bytes{{numa=\"0\"}}) > time() - 2) >= {}", args.rec_agents);
    let mut live = None;
    let mut cleared = None;
    let mut first_connected = None;
    let limit = Instant::now() + Duration::from_secs(600);
    while Instant::now() < limit && (live.is_none() || cleared.is_none()) {
        let totals = fleets[0].totals();
        if first_connected.is_none() && totals.connected > 0 {
            first_connected = Some(restarted.elapsed());
        }
        if live.is_none() && !vector_result(&bench.herd().query(&live_query)).is_empty() {
            live = Some(restarted.elapsed());
        }
        if cleared.is_none()
            && totals.buffered_batches <= args.rec_agents as u64 * 2
            && totals.connected as usize == args.rec_agents
        {
            cleared = Some(restarted.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let backfilled = fleets[0].totals().backfilled_batches - backfilled_before;
    // Every sample of the probe series from before the outage to now is stored once.
    let span = outage_from.elapsed().as_secs() + 30;
    let stored = latest_value(
        bench.herd(),
        &format!("sum(count_over_time(node_memory_MemAvailable_bytes{{numa=\"0\"}}[{span}s]))"),
    )
    .unwrap_or(0.0);
    let expected_per_agent = (outage_from.elapsed().as_secs_f64() + 10.0).floor();
    for fleet in fleets {
        runtime.block_on(fleet.stop());
    }
    let seconds = |d: Option<Duration>| d.map_or("not within 600 s".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    format!(
        "## Recovery after an outage (issue: aggregator at fleet scale)\n\n\
         `target/release/bench-fleet --phases recovery --rec-agents {agents} --rec-series {series} --outage {outage}`: \
         {agents} simulated agents x {series} series every second, the aggregator killed for {outage} s, \
         agents on the default reconnect settings (an aggregator that sends nothing back is probed continuously, one packet at most 1.2 s after another) and backfill rate (50 batches/s each).\n\n\
         | figure | value |\n| --- | --- |\n\
         | batches buffered by the agents at the return | {buffered} |\n\
         | aggregator ready after restart | {ready:.2} s |\n\
         | first agent reconnected after restart | {first} |\n\
         | live series current (newest sample within 2 s) after restart | {live} |\n\
         | backlog stored (buffers back to the last few batches) after restart | {cleared} |\n\
         | backfill rate | {rate} samples/s |\n\
         | samples of the probe series stored over the run | {stored:.0} (about {expected:.0} expected) |\n",
        agents = args.rec_agents,
        series = args.rec_series,
        outage = args.outage,
        ready = ready.as_secs_f64(),
        first = seconds(first_connected),
        live = seconds(live),
        cleared = seconds(cleared),
        rate = cleared
            .map_or("-".into(), |d| format!("{:.0}", backfilled as f64 * args.rec_series as f64 / d.as_secs_f64())),
        expected = expected_per_agent * args.rec_agents as f64,
    )
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    for phase in &args.phases {
        let section = match phase.as_str() {
            "ingest" => ingest(&args, &runtime),
            "connections" => connections(&args),
            "recovery" => recovery(&args, &runtime),
            other => panic!("unknown phase {other:?} (ingest, connections, recovery)"),
        };
        bench_report(&section);
    }
}
