//! Store benchmark: ingest rate, bytes per sample in the head and on disk,
//! and read rate of Herd's durable store (in process, through the `Storage`
//! API), next to Debian's VictoriaMetrics fed the same samples over its
//! import API in the same run (its disk bytes per sample after a flush).
//!
//!   cargo build --release -p herd-tests --bin bench-store
//!   target/release/bench-store [SERIES] [HOURS]      (defaults 20000 and 4)
//!
//! Prints figures and ratios; asserts nothing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_aggregator::store::db::{Db, DbOptions};
use herd_aggregator::store::{LabelMatcher, MatchOp, Sample, Storage};
use herd_common::metric::Labels;
use herd_tests::{free_tcp_port, http_get, wait_for};

const HOUR_MS: i64 = 3_600_000;
const STEP_MS: i64 = 15_000;
const START_MS: i64 = 1_764_000_000_000;

/// Node-like series: whole-unit counters, slow gauges, constants.
fn value(i: usize, k: i64) -> f64 {
    match i % 4 {
        0 => (k * (i as i64 % 97 + 1) * 4096) as f64,
        1 => (k * k % 1000 + i as i64) as f64,
        2 => ((k / 10) % 7) as f64 * 0.25,
        _ => 1.0,
    }
}

fn timestamp(k: i64) -> i64 {
    START_MS + k * STEP_MS + (k % 3)
}

fn labels(i: usize) -> [(String, String); 3] {
    [
        ("__name__".to_owned(), format!("m{}", i % 100)),
        ("instance".to_owned(), format!("host-{}", i / 100)),
        ("job".to_owned(), "node".to_owned()),
    ]
}

fn dir_bytes(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().expect("run du");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn herd(series: usize, steps: i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(Db::open(dir.path(), DbOptions::new(2 * HOUR_MS, 30 * 24 * HOUR_MS, None)).expect("open store"));
    let refs: Vec<_> = (0..series).map(|i| db.series_ref(&Labels::from_pairs(labels(i)))).collect();
    let started = Instant::now();
    let mut cut_time = Duration::ZERO;
    for k in 0..steps {
        let t = timestamp(k);
        for (i, &r) in refs.iter().enumerate() {
            db.append(r, Sample { timestamp_ms: t, value: value(i, k) }).expect("append");
        }
        if let Some(before) = db.due_cut() {
            let cut = Instant::now();
            db.cut(before).expect("cut");
            cut_time += cut.elapsed();
        }
    }
    let elapsed = started.elapsed();
    let total = series as u64 * steps as u64;
    let head_samples = total - db.block_samples();
    let head_bytes = db.head.chunk_bytes();
    println!(
        "herd: {total} samples ({series} series x {steps}) appended in {:.2} s = {:.0} samples/s (block cuts {:.2} s of it)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        cut_time.as_secs_f64()
    );
    println!(
        "herd: head chunks {:.2} B/sample ({head_bytes} B for {head_samples} samples)",
        head_bytes as f64 / head_samples as f64
    );
    // Everything into blocks, to measure the disk format alone.
    db.cut(i64::MAX).expect("final cut");
    let (blocks, block_bytes) = db.block_stats();
    let herd_disk = dir_bytes(dir.path());
    println!(
        "herd: {blocks} blocks, {block_bytes} B of chunks+index = {:.2} B/sample; directory {herd_disk} B = {:.2} B/sample",
        block_bytes as f64 / total as f64,
        herd_disk as f64 / total as f64
    );
    let matcher = LabelMatcher::new(MatchOp::Equal, "job", "node").expect("matcher");
    let started = Instant::now();
    let mut read = 0usize;
    let mut samples = Vec::new();
    for (r, _) in db.select(&[matcher]) {
        samples.clear();
        db.read(r, i64::MIN, i64::MAX, &mut samples);
        read += samples.len();
    }
    let elapsed = started.elapsed();
    println!(
        "herd: read back {read} samples in {:.2} s = {:.0} samples/s",
        elapsed.as_secs_f64(),
        read as f64 / elapsed.as_secs_f64()
    );
    println!("HERD_DISK_BYTES_PER_SAMPLE {:.3}", herd_disk as f64 / total as f64);
}

fn victoria(series: usize, steps: i64) -> Option<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_tcp_port();
    let mut child = Command::new("victoria-metrics")
        .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=100y")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(20), || http_get(&format!("{base}/health")).filter(|(s, _)| *s == 200))?;
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(600))).build().into();
    let started = Instant::now();
    let mut body = Vec::new();
    for i in 0..series {
        let [(_, name), (_, instance), (_, job)] = labels(i);
        let values: Vec<String> = (0..steps).map(|k| format!("{}", value(i, k))).collect();
        let times: Vec<String> = (0..steps).map(|k| timestamp(k).to_string()).collect();
        writeln!(
            body,
            "{{\"metric\":{{\"__name__\":\"{name}\",\"instance\":\"{instance}\",\"job\":\"{job}\"}},\"values\":[{}],\"timestamps\":[{}]}}",
            values.join(","),
            times.join(",")
        )
        .expect("write to memory");
        if body.len() > 32 << 20 || i + 1 == series {
            agent.post(&format!("{base}/api/v1/import")).send(&body[..]).ok()?;
            body.clear();
        }
    }
    let _ = http_get(&format!("{base}/internal/force_flush"));
    let _ = http_get(&format!("{base}/internal/force_merge"));
    let elapsed = started.elapsed();
    // Merges run in the background: take the size once it stops changing.
    let mut last = 0;
    let bytes = wait_for(Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_secs(2));
        let now = dir_bytes(&dir.path().join("data"));
        let stable = now == last;
        last = now;
        stable.then_some(now)
    })
    .unwrap_or(last);
    let _ = child.kill();
    let _ = child.wait();
    let total = series as u64 * steps as u64;
    println!(
        "victoria-metrics: imported {total} samples over HTTP in {:.2} s = {:.0} samples/s; data directory {bytes} B = {:.2} B/sample",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        bytes as f64 / total as f64
    );
    Some(bytes as f64 / total as f64)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let hours: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let steps = hours * HOUR_MS / STEP_MS;
    herd(series, steps);
    match victoria(series, steps) {
        Some(per_sample) => println!("VM_DISK_BYTES_PER_SAMPLE {per_sample:.3}"),
        None => println!("victoria-metrics did not run (is Debian's victoria-metrics installed?)"),
    }
}
