//! Delivery benchmark: bytes on the wire per sample, sled bytes on disk per
//! buffered sample, and backfill rate, with the real release binaries, next
//! to node_exporter's exposition size for the same host in the same run.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p herd-tests --bin bench-delivery
//!
//! Prints figures and ratios; asserts nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_tests::*;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

fn dir_bytes(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().expect("run du");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn value(aggregator: &Aggregator, selector: &str) -> f64 {
    latest_value(aggregator, selector).unwrap_or(0.0)
}

/// Bytes per sample of node_exporter's text exposition (what a Prometheus scrape pulls).
fn node_exporter_bytes_per_sample(work: &Path) -> Option<(f64, usize)> {
    let binary = Path::new("/usr/bin/prometheus-node-exporter");
    if !binary.exists() {
        return None;
    }
    let port = free_tcp_port();
    let mut child = Command::new(binary)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work.join("node_exporter.log")).ok()?)
        .spawn()
        .ok()?;
    let body = wait_for(Duration::from_secs(10), || http_get(&format!("http://127.0.0.1:{port}/metrics")).map(|r| r.1));
    let _ = child.kill();
    let _ = child.wait();
    let body = body?;
    let samples = body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count();
    Some((body.len() as f64 / samples as f64, samples))
}

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("bench");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
    let mut aggregator = Aggregator::start_at(&pki, work.path(), "agg", http, quic);

    // 1. Steady state at 1 s: wire bytes per sample.
    let config =
        agent_config_with(work.path(), &pki, "bench", &[quic], "1s", "backfill_batches_per_second = 100000", "");
    let agent = start_agent(work.path(), "bench", &config);
    let sent_bytes = r#"herd_agent_uplink_sent_bytes_total{instance="bench"}"#;
    let sent_samples = r#"herd_agent_uplink_sent_samples_total{instance="bench"}"#;
    wait_for(Duration::from_secs(20), || (value(&aggregator, sent_samples) > 0.0).then_some(()))
        .expect("agent data never arrived");
    std::thread::sleep(Duration::from_secs(5));
    let (bytes0, samples0) = (value(&aggregator, sent_bytes), value(&aggregator, sent_samples));
    std::thread::sleep(Duration::from_secs(30));
    let (bytes1, samples1) = (value(&aggregator, sent_bytes), value(&aggregator, sent_samples));
    let wire = (bytes1 - bytes0) / (samples1 - samples0);
    let series = vector_result(&aggregator.query(r#"count({instance="bench"})"#))
        .first()
        .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0);
    println!("agent series per cycle:              {series}");
    println!("wire bytes per sample (steady, 1 s):  {wire:.2}  ({} samples over 30 s)", samples1 - samples0);
    if let Some((peer, peer_samples)) = node_exporter_bytes_per_sample(work.path()) {
        println!(
            "node_exporter text bytes per sample: {peer:.2}  ({peer_samples} samples per scrape, uncompressed)  ratio herd/node_exporter = {:.3}",
            wire / peer
        );
    }
    drop(agent);

    // 2. Outage: buffer at 100 ms for 30 s, measure sled's footprint, then the backfill rate.
    let config =
        agent_config_with(work.path(), &pki, "fast", &[quic], "100ms", "backfill_batches_per_second = 100000", "");
    pki.issue_agent("fast");
    let _fast = start_agent(work.path(), "fast", &config);
    wait_for(Duration::from_secs(20), || {
        (!vector_result(&aggregator.query(r#"node_load1{instance="fast"}"#)).is_empty()).then_some(())
    })
    .expect("fast agent data never arrived");
    let per_batch = vector_result(&aggregator.query(r#"count({instance="fast"})"#))
        .first()
        .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0);
    aggregator.process.kill();
    let down_at = now_ms();
    let buffer_dir = work.path().join("agent-fast-state").join("buffer");
    let empty_bytes = dir_bytes(&buffer_dir);
    std::thread::sleep(Duration::from_secs(30));
    let up_at = now_ms();
    let buffered_bytes = dir_bytes(&buffer_dir);
    let aggregator = Aggregator::start_at(&pki, work.path(), "agg", http, quic);
    let started = Instant::now();
    let filled = wait_for(Duration::from_secs(120), || {
        let times = sample_times(&aggregator, r#"node_load1{instance="fast"}"#, "30m");
        let window: Vec<i64> = times.iter().copied().filter(|&t| t >= down_at && t <= up_at).collect();
        (window.len() >= 280 && gaps(&window, 150).is_empty()).then_some(window.len())
    });
    let elapsed = started.elapsed();
    let Some(batches) = filled else {
        println!("backfill did not complete within 120 s");
        return;
    };
    let samples = batches as f64 * per_batch;
    println!("buffered during the outage:          {batches} batches, {samples} samples");
    println!(
        "sled bytes on disk per buffered sample: {:.2}  ({} bytes on disk, {} before the outage)",
        (buffered_bytes.saturating_sub(empty_bytes)) as f64 / samples,
        buffered_bytes,
        empty_bytes
    );
    println!(
        "backfill: {:.0} samples/s ({batches} batches in {:.2} s, reconnect and QUIC handshake included)",
        samples / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
