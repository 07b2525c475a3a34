//! remote_write ingest benchmark: the same pre-encoded remote_write stream
//! (snappy + protobuf, 2,000 samples per request like Prometheus's default)
//! is sent to Herd's `/api/v1/write`, Prometheus's and VictoriaMetrics's in
//! one run, each started fresh on loopback; prints samples/s per receiver,
//! Herd's ratio to each, and checks every sample landed.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p herd-tests --bin bench-ingest [SERIES] [ROUNDS]
//!
//! Then a second aggregator receives the same stream and remote-writes it to
//! a second VictoriaMetrics: samples/s from the first write until all of it
//! is queryable there.
//!
//! Defaults: 10,000 series, 60 rounds (600,000 samples). One sender thread per
//! block of 2,000 series sends that block's rounds in order, so every
//! receiver sees each series in time order.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_tests::peers::*;
use herd_tests::prompb::{Sample, TimeSeries, WriteRequest, body, label, post, sender};
use herd_tests::*;

const SAMPLES_PER_REQUEST: usize = 2000;

/// Request bodies per block of series, in round order.
fn build_stream(series: usize, rounds: usize, start_ms: i64) -> Vec<Vec<Vec<u8>>> {
    let blocks = series.div_ceil(SAMPLES_PER_REQUEST);
    (0..blocks)
        .map(|block| {
            let ids = block * SAMPLES_PER_REQUEST..((block + 1) * SAMPLES_PER_REQUEST).min(series);
            (0..rounds)
                .map(|round| {
                    let timestamp = start_ms + round as i64 * 1000;
                    let request = WriteRequest {
                        timeseries: ids
                            .clone()
                            .map(|id| TimeSeries {
                                labels: vec![
                                    label("__name__", format!("bench_metric_{}", id % 50)),
                                    label("id", id.to_string()),
                                    label("instance", format!("host-{}", id / 100)),
                                    label("job", "bench"),
                                ],
                                samples: vec![Sample { value: ((id * 7 + round * 13) % 1000) as f64 * 0.5, timestamp }],
                            })
                            .collect(),
                    };
                    body(&request)
                })
                .collect()
        })
        .collect()
}

/// Sends the stream to `url` (one thread per block); returns the elapsed time.
fn send_stream(url: &str, token: Option<&str>, stream: &[Vec<Vec<u8>>]) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for block in stream {
            scope.spawn(move || {
                let agent = sender();
                for body in block {
                    post(&agent, url, token, body);
                }
            });
        }
    });
    started.elapsed()
}

/// Samples of job "bench" a Prometheus-compatible API holds up to `end_ms`.
fn stored_samples(base: &str, end_ms: i64) -> f64 {
    let query = encode(r#"sum(count_over_time({job="bench"}[1h]))"#);
    let url = format!("{base}/api/v1/query?query={query}&time={:.3}", end_ms as f64 / 1000.0);
    let (_, body) = http_get(&url).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let total = (series * rounds) as f64;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64;
    // Old enough to be complete, young enough for Prometheus's head block.
    let start_ms = now_ms - rounds as i64 * 1000 - 60_000;
    let end_ms = start_ms + (rounds as i64 - 1) * 1000;
    let stream = build_stream(series, rounds, start_ms);
    let body_bytes: usize = stream.iter().flatten().map(Vec::len).sum();
    println!(
        "stream: {series} series x {rounds} rounds = {total} samples in {} requests, {:.2} compressed bytes per sample",
        stream.iter().map(Vec::len).sum::<usize>(),
        body_bytes as f64 / total
    );

    let work = tempfile::tempdir().expect("temp dir");
    let pki = Pki::create(work.path().join("pki"));
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
    let token = "bench-token";
    let herd = Aggregator::start_configured(
        &pki,
        work.path(),
        "agg",
        http,
        quic,
        &format!("[remote_write_receiver]\nenabled = true\nbearer_tokens = [\"{token}\"]\n"),
    );
    let prometheus = start_prometheus(work.path(), &work.path().join("prom"), "global:\n  scrape_interval: 1m\n", 0);
    let vm = start_victoria_metrics(work.path(), &work.path().join("vm"), 0);

    let mut results = Vec::new();
    let mut footprints = Vec::new();
    for (name, base, token) in [
        ("herd", format!("http://{http}"), Some(token)),
        ("prometheus", prometheus.url(), None),
        ("victoria-metrics", vm.url(), None),
    ] {
        let (data_dir, rss) = match name {
            "herd" => (work.path().join("agg-state"), herd.process.rss_bytes()),
            "prometheus" => (work.path().join("prom").join("data"), prometheus.rss_bytes()),
            _ => (work.path().join("vm"), vm.rss_bytes()),
        };
        let (rss_before, disk_before) = (rss.unwrap_or(0), dir_bytes(&data_dir));
        let elapsed = send_stream(&format!("{base}/api/v1/write"), token, &stream);
        if name == "victoria-metrics" {
            let _ = http_get(&format!("{base}/internal/force_flush"));
        }
        let stored = wait_for(Duration::from_secs(30), || {
            let n = stored_samples(&base, end_ms);
            (n >= total).then_some(n)
        })
        .unwrap_or_else(|| stored_samples(&base, end_ms));
        let rate = total / elapsed.as_secs_f64();
        println!(
            "{name:>17}: {rate:>12.0} samples/s ({:.2} s), {stored} of {total} samples queryable",
            elapsed.as_secs_f64()
        );
        results.push((name, rate));
        let rss_after = match name {
            "herd" => herd.process.rss_bytes(),
            "prometheus" => prometheus.rss_bytes(),
            _ => vm.rss_bytes(),
        };
        let memory = rss_after.unwrap_or(0).saturating_sub(rss_before) as f64 / total;
        let disk = dir_bytes(&data_dir).saturating_sub(disk_before) as f64 / total;
        footprints.push((name, memory, disk));
    }
    // Right after ingest every receiver still holds the data in its write
    // path (Herd and Prometheus: head + WAL; VictoriaMetrics: in-memory parts
    // flushed by force_flush), so these compare the same moment, not the
    // compacted on-disk format (for that see bench-store).
    println!("bytes per sample right after ingest (RSS growth, data directory growth):");
    for (name, memory, disk) in &footprints {
        println!(
            "{name:>17}: {memory:>6.2} B/sample in memory, {disk:>6.2} B/sample on disk (herd/{name}: {:.2} memory, {:.2} disk)",
            footprints[0].1 / memory,
            footprints[0].2 / disk
        );
    }
    let herd_rate = results[0].1;
    for (name, rate) in &results[1..] {
        println!("herd / {name}: {:.2}", herd_rate / rate);
    }
    if let Some(rss) = herd.process.rss_bytes() {
        println!("herd-aggregator RSS after the run: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
    drop(herd);

    // Through Herd and out again: a second aggregator receives the stream and
    // remote-writes it to a second VictoriaMetrics; timed until all is queryable there.
    let vm_out = start_victoria_metrics(work.path(), &work.path().join("vm-out"), 0);
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
    let _forwarder = Aggregator::start_configured(
        &pki,
        work.path(),
        "forwarder",
        http,
        quic,
        &format!(
            "[remote_write_receiver]\nenabled = true\nbearer_tokens = [\"{token}\"]\n\
             [[remote_write]]\nname = \"vm\"\nurl = \"{}/api/v1/write\"\n",
            vm_out.url()
        ),
    );
    let started = Instant::now();
    send_stream(&format!("http://{http}/api/v1/write"), Some(token), &stream);
    let forwarded = wait_for(Duration::from_secs(120), || {
        let _ = http_get(&format!("{}/internal/force_flush", vm_out.url()));
        (stored_samples(&vm_out.url(), end_ms) >= total).then_some(started.elapsed())
    });
    match forwarded {
        Some(elapsed) => println!(
            "through herd to victoria-metrics: {:>12.0} samples/s ({:.2} s until all were queryable there)",
            total / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        ),
        None => println!(
            "through herd to victoria-metrics: incomplete after 120 s ({} of {total})",
            stored_samples(&vm_out.url(), end_ms)
        ),
    }
}
