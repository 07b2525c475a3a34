//! Delivery benchmark: bytes on the wire per sample (host, PostgreSQL with
//! `pg_stat_statements` and Redis collection), bytes on disk per buffered
//! sample, and backfill rate, with the real release binaries, next to
//! node_exporter's exposition size for the same host in the same run.
//!
//!   cargo build --release -p herd-agent -p herd-aggregator -p herd-tests --bins
//!   target/release/bench-delivery
//!
//! Prints figures and ratios (and appends them to `HERD_BENCH_REPORT` if
//! set); asserts nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_tests::servers::{PASSWORD, Postgres, Redis, secret_file};
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

    // 1. Steady state at 1 s: wire bytes per sample, with PostgreSQL and Redis series.
    let postgres = Postgres::start_with(&["shared_preload_libraries=pg_stat_statements"]);
    postgres.psql("postgres", "CREATE EXTENSION pg_stat_statements");
    let redis = Redis::start();
    let password = secret_file(&work.path().join("servers.password"), PASSWORD);
    let servers = format!(
        "[[collect.postgres]]\ndsn = \"{}\"\npassword_file = \"{}\"\n\
         [[collect.redis]]\naddress = \"{}\"\npassword_file = \"{}\"\n",
        postgres.dsn("postgres"),
        password.display(),
        redis.address(),
        password.display()
    );
    let config =
        agent_config_with(work.path(), &pki, "bench", &[quic], "1s", "backfill_batches_per_second = 100000", &servers);
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
    let servers_series = vector_result(&aggregator.query(r#"count({instance="bench",job=~"postgres|redis"})"#))
        .first()
        .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0);
    let mut report = format!(
        "## Delivery: wire and disk bytes per sample, backfill\n\n\
         Measured {} with `{}` (release build).\n\n\
         | figure | Herd | peer | ratio |\n| --- | --- | --- | --- |\n",
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    report.push_str(&format!(
        "| wire bytes per sample, steady state at 1 s ({series} series, {servers_series} of them PostgreSQL and Redis; {} samples over 30 s) | {wire:.2} |",
        samples1 - samples0
    ));
    match node_exporter_bytes_per_sample(work.path()) {
        Some((peer, peer_samples)) => report.push_str(&format!(
            " {peer:.2} (node_exporter text, uncompressed, {peer_samples} samples) | {:.3} |\n",
            wire / peer
        )),
        None => report.push_str(" | |\n"),
    }
    drop(agent);
    drop((postgres, redis));

    // 2. Outage: buffer at 100 ms for 30 s, measure the buffer's footprint, then the backfill rate.
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
    let buffer_dir = work.path().join("agent-fast-state").join("spool");
    let empty_bytes = dir_bytes(&buffer_dir);
    std::thread::sleep(Duration::from_secs(30));
    let up_at = now_ms();
    let buffered_bytes = dir_bytes(&buffer_dir);
    let aggregator = Aggregator::start_at(&pki, work.path(), "agg", http, quic);
    let started = Instant::now();
    // One `herd_collector_success{collector="agent"}` sample per batch, whatever the host collector did.
    let per_batch_selector = r#"herd_collector_success{instance="fast",collector="agent"}"#;
    let in_outage = |aggregator: &Aggregator| -> Vec<i64> {
        let times = sample_times(aggregator, per_batch_selector, "30m");
        times.iter().copied().filter(|&t| t >= down_at && t <= up_at).collect()
    };
    let filled = wait_for(Duration::from_secs(120), || {
        let window = in_outage(&aggregator);
        (window.len() >= 280 && gaps(&window, 150).is_empty()).then_some(window.len())
    });
    let elapsed = started.elapsed();
    let batches = match filled {
        Some(batches) => batches,
        None => {
            let window = in_outage(&aggregator);
            report.push_str(&format!(
                "\nThe backfill did not complete within 120 s: {} batches of the outage arrived, gaps {:?}.\n",
                window.len(),
                gaps(&window, 150)
            ));
            window.len()
        }
    };
    // Batches the agent made during the outage, by its own count, against those that arrived.
    let pushed = series_samples(&aggregator, r#"herd_agent_buffer_pushed_batches_total{instance="fast"}"#);
    let at = |t: i64| pushed.iter().rev().find(|(time, _)| *time <= t).map_or(0.0, |&(_, v)| v);
    let made = at(up_at) - at(down_at);
    let accounting = format!(
        "\nBatches the agent pushed into its buffer between the outage's first and last sample: {made:.0}; \
         arrived in that window: {batches}.\n"
    );
    let samples = batches as f64 * per_batch;
    report.push_str(&format!(
        "| bytes on disk per buffered sample (100 ms for 30 s: {batches} batches, {samples} samples; {buffered_bytes} bytes, {empty_bytes} before the outage) | {:.2} | | |\n",
        (buffered_bytes.saturating_sub(empty_bytes)) as f64 / samples,
    ));
    report.push_str(&format!(
        "| backfill, samples/s (reconnect and QUIC handshake included: {batches} batches in {:.2} s) | {:.0} | | |\n",
        elapsed.as_secs_f64(),
        samples / elapsed.as_secs_f64()
    ));
    report.push_str(&accounting);
    report.push_str(
        "\nWire bytes are what the agent writes to its QUIC stream (frames, series definitions, packed samples), \
         before QUIC's own overhead; node_exporter's figure is its uncompressed text exposition of the same host. \
         Disk bytes are the agent's buffer directory (`spool/`: packed segments and the series log) during an \
         aggregator outage, host collection only. The machine was shared with other builds.\n",
    );
    bench_report(&report);
}
