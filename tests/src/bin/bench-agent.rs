//! Agent cost benchmark: CPU time per collection cycle and peak RSS of the
//! real release `herd-agent` (host collection, streaming to an aggregator),
//! next to node_exporter's CPU per scrape and peak RSS in the same run.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p herd-tests --bin bench-agent [-- SECONDS [CONTAINERS]]
//!
//! With CONTAINERS > 0, that many idle containers are started from the local
//! `herd-test-busybox:latest` image (the containers test imports it) and the
//! agent's container collection is on.
//!
//! Prints figures and ratios; asserts nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herd_tests::*;

/// CPU seconds (user + system) of `pid`, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of `pid` in bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let containers: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let names: Vec<String> = (0..containers).map(|i| format!("herd-bench-{}-{i}", std::process::id())).collect();
    for name in &names {
        let ok = Command::new("docker")
            .args(["run", "-d", "--name", name, "herd-test-busybox:latest", "sleep", "3600"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot start container {name} (is herd-test-busybox:latest imported?)");
    }
    let work = tempfile::tempdir().expect("temp dir");
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("bench");
    let aggregator = Aggregator::start(&pki, work.path());
    let tail = if containers > 0 { "[collect.containers]\nenabled = true\n" } else { "" };
    let config = agent_config_with(work.path(), &pki, "bench", &[aggregator.quic], "1s", "", tail);
    let agent = start_agent(work.path(), "bench", &config);
    wait_for(Duration::from_secs(20), || {
        (!vector_result(&aggregator.query(r#"node_load1{instance="bench"}"#)).is_empty()).then_some(())
    })
    .expect("agent data never arrived");
    let series = vector_result(&aggregator.query(r#"count({instance="bench"})"#))
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .unwrap_or(0.0);

    // node_exporter with Debian's defaults, scraped once a second alongside.
    let port = free_tcp_port();
    let mut exporter = Command::new("/usr/bin/prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start /usr/bin/prometheus-node-exporter (apt-get install prometheus-node-exporter)");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let first = wait_for(Duration::from_secs(10), || http_get(&url)).expect("node_exporter answers");
    let exporter_samples = first.1.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count();

    let agent_cpu0 = cpu_seconds(agent.pid());
    let exporter_cpu0 = cpu_seconds(exporter.id());
    let started = Instant::now();
    let mut scrapes = 0u32;
    while started.elapsed() < Duration::from_secs(seconds) {
        let tick = Instant::now();
        if http_get(&url).is_some() {
            scrapes += 1;
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let agent_cpu = cpu_seconds(agent.pid()) - agent_cpu0;
    let exporter_cpu = cpu_seconds(exporter.id()) - exporter_cpu0;
    let (agent_rss, exporter_rss) = (peak_rss(agent.pid()), peak_rss(exporter.id()));
    let _ = exporter.kill();
    let _ = exporter.wait();
    for name in &names {
        let _ = Command::new("docker").args(["rm", "-f", name]).stdout(Stdio::null()).status();
    }

    let cycles = elapsed; // one collection a second
    let agent_ms = agent_cpu * 1000.0 / cycles;
    let exporter_ms = exporter_cpu * 1000.0 / f64::from(scrapes.max(1));
    println!(
        "run: {elapsed:.0} s, agent at 1 s ({series} series, {containers} containers), node_exporter scraped {scrapes} times ({exporter_samples} samples)"
    );
    println!(
        "CPU per cycle:  herd-agent {agent_ms:.2} ms (collect + buffer + send)   node_exporter {exporter_ms:.2} ms per scrape   ratio {:.3}",
        agent_ms / exporter_ms
    );
    println!(
        "peak RSS:       herd-agent {:.1} MiB   node_exporter {:.1} MiB   ratio {:.3}",
        mib(agent_rss),
        mib(exporter_rss),
        agent_rss as f64 / exporter_rss as f64
    );
}
