//! Store benchmark: ingest rate, bytes per sample in the head and on disk
//! after compaction, and read rate of Herd's durable store (in process,
//! through the `Storage` API), next to Debian's VictoriaMetrics fed the same
//! samples over its import API in the same run (its disk bytes per sample
//! after a flush and merge). Then head memory per active series: RSS growth
//! of a fresh process holding HEAD_SERIES series with 90 samples each (1.5 h
//! at 60 s, all in the head), next to Debian's Prometheus receiving the same
//! series and samples over remote_write (its RSS growth, and its Go heap in
//! use after a forced GC).
//!
//!   cargo build --release -p herd-tests --bin bench-store
//!   target/release/bench-store [SERIES] [HOURS] [HEAD_SERIES]   (defaults 20000, 4, 100000)
//!
//! Prints figures and ratios (as a markdown section, appended to
//! $HERD_BENCH_REPORT when set); asserts nothing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_aggregator::store::db::{Db, DbOptions};
use herd_aggregator::store::{LabelMatcher, MatchOp, Sample, Storage};
use herd_common::metric::Labels;
use herd_tests::{bench_report, free_tcp_port, http_get, rss_of, wait_for};

// The allocator herd-aggregator runs with, so that in-process memory
// figures are the aggregator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Herd's disk figures.
struct HerdDisk {
    bytes_per_sample: f64,
    blocks: u64,
}

fn herd(series: usize, steps: i64) -> HerdDisk {
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
    // Everything into blocks and compacted, to measure the disk format alone.
    db.cut(i64::MAX).expect("final cut");
    let compact = Instant::now();
    while db.compact().expect("compaction") > 0 {}
    println!("herd: compaction took {:.2} s", compact.elapsed().as_secs_f64());
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
    HerdDisk { bytes_per_sample: herd_disk as f64 / total as f64, blocks }
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

const HEAD_STEP_MS: i64 = 60_000;
const HEAD_SAMPLES: i64 = 90;

/// Resident memory of this process.
fn own_rss() -> u64 {
    rss_of(std::process::id()).unwrap_or(0)
}

/// In a fresh process (`bench-store head N`): N series with 90 samples
/// each in the head; prints the RSS growth per series.
fn head_memory_child(series: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path(), DbOptions::new(2 * HOUR_MS, 30 * 24 * HOUR_MS, None)).expect("open store");
    let before = own_rss();
    let refs: Vec<_> = (0..series).map(|i| db.series_ref(&Labels::from_pairs(labels(i)))).collect();
    let start = START_MS;
    for k in 0..HEAD_SAMPLES {
        for (i, &r) in refs.iter().enumerate() {
            db.append(r, Sample { timestamp_ms: start + k * HEAD_STEP_MS, value: value(i, k) }).expect("append");
        }
    }
    let grown = own_rss().saturating_sub(before);
    println!(
        "HEAD_BYTES_PER_SERIES {:.0} (RSS grew {grown} B for {series} series; chunk bytes {})",
        grown as f64 / series as f64,
        db.head.chunk_bytes()
    );
}

/// Runs the head measurement in a fresh copy of this process.
fn herd_head_memory(series: usize) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let output = Command::new(exe).arg("head").arg(series.to_string()).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("herd head: {text}");
    text.lines().find_map(|l| l.strip_prefix("HEAD_BYTES_PER_SERIES "))?.split_whitespace().next()?.parse().ok()
}

/// Go heap in use of the Prometheus at `base`, after a forced GC.
fn prometheus_heap(base: &str) -> Option<f64> {
    let _ = http_get(&format!("{base}/debug/pprof/heap?gc=1"));
    let (_, metrics) = http_get(&format!("{base}/metrics"))?;
    metrics.lines().find_map(|l| l.strip_prefix("go_memstats_heap_inuse_bytes "))?.trim().parse().ok()
}

/// Prometheus's RSS growth and heap growth per series for the same head
/// load, received over remote_write.
fn prometheus_head_memory(series: usize) -> Option<(f64, f64)> {
    use herd_aggregator::remote::proto;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_tcp_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1h\n").ok()?;
    let mut child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let base = format!("http://127.0.0.1:{port}");
    let result = (|| {
        wait_for(Duration::from_secs(60), || http_get(&format!("{base}/-/ready")).filter(|(s, _)| *s == 200))?;
        std::thread::sleep(Duration::from_secs(2));
        let rss_before = rss_of(child.id())?;
        let heap_before = prometheus_heap(&base)?;
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(120))).build().into();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
        let start = now - now % HEAD_STEP_MS - HEAD_SAMPLES * HEAD_STEP_MS;
        let (mut scratch, mut body) = (Vec::new(), Vec::new());
        for k in 0..HEAD_SAMPLES {
            for batch in (0..series).collect::<Vec<_>>().chunks(5000) {
                let request = proto::WriteRequest {
                    timeseries: batch
                        .iter()
                        .map(|&i| proto::TimeSeries {
                            labels: labels(i).into_iter().map(|(name, value)| proto::Label { name, value }).collect(),
                            samples: vec![proto::Sample { value: value(i, k), timestamp: start + k * HEAD_STEP_MS }],
                        })
                        .collect(),
                };
                body.clear();
                proto::encode(&request, &mut scratch, &mut body);
                agent
                    .post(&format!("{base}/api/v1/write"))
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                    .send(&body[..])
                    .ok()?;
            }
        }
        let heap_after = prometheus_heap(&base)?;
        std::thread::sleep(Duration::from_secs(2));
        let rss_after = rss_of(child.id())?;
        let per_series = |before: f64, after: f64| (after - before).max(0.0) / series as f64;
        println!(
            "prometheus head: RSS grew {} B, Go heap in use grew {:.0} B for {series} series",
            rss_after.saturating_sub(rss_before),
            heap_after - heap_before
        );
        Some((per_series(rss_before as f64, rss_after as f64), per_series(heap_before, heap_after)))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn ratio(herd: f64, peer: Option<f64>) -> String {
    peer.filter(|p| *p > 0.0).map_or("-".to_owned(), |p| format!("{:.2}", herd / p))
}

fn figure(value: Option<f64>, digits: usize) -> String {
    value.map_or("did not run".to_owned(), |v| format!("{v:.digits$}"))
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("head") {
        args.next();
        head_memory_child(args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000));
        return;
    }
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let hours: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let head_series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let steps = hours * HOUR_MS / STEP_MS;
    let disk = herd(series, steps);
    let vm = victoria(series, steps);
    match vm {
        Some(per_sample) => println!("VM_DISK_BYTES_PER_SAMPLE {per_sample:.3}"),
        None => println!("victoria-metrics did not run (is Debian's victoria-metrics installed?)"),
    }
    let head = herd_head_memory(head_series);
    let prometheus = prometheus_head_memory(head_series);
    if prometheus.is_none() {
        println!("prometheus did not run (is Debian's prometheus installed?)");
    }
    // The command as run (the binary's path says which build it was).
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let herd_head = head.unwrap_or(f64::NAN);
    bench_report(&format!(
        "## Store: disk bytes per sample and head memory per series\n\n\
         `{command}`\n\n\
         | figure | Herd | peer | ratio |\n\
         | --- | --- | --- | --- |\n\
         | bytes per sample on disk after compaction ({series} series x {hours} h at 15 s, {blocks} block(s)) | {herd_disk:.3} | VictoriaMetrics {vm} | {vm_ratio} |\n\
         | head bytes per active series, RSS growth ({head_series} series x 90 samples at 60 s) | {herd_head:.0} | Prometheus {prom_rss} | {prom_ratio} |\n\
         | (Prometheus Go heap in use per series, after a forced GC) | | {prom_heap} | {heap_ratio} |\n\n\
         Disk: the same generated samples (node-like whole-unit counters, slow gauges, constants; \
         timestamps with a few ms of jitter) go into Herd's store in process and into VictoriaMetrics \
         over its JSON import API; Herd's figure is its whole blocks directory after the head is cut \
         and blocks compacted, VictoriaMetrics' its data directory once merges settle. Head: Herd's \
         figure is the RSS growth of a fresh process holding the series in its head (series table, \
         postings, labels, chunks, allocator slack; no WAL, no blocks); Prometheus receives the same \
         series and samples over remote_write and its RSS growth includes its WAL buffers and \
         whatever garbage Go has not collected, so its heap in use is shown too. The machine was \
         shared with other builds; sizes are deterministic, memory figures vary by a few %.\n",
        herd_disk = disk.bytes_per_sample,
        blocks = disk.blocks,
        vm = figure(vm, 3),
        vm_ratio = ratio(disk.bytes_per_sample, vm),
        prom_rss = figure(prometheus.map(|p| p.0), 0),
        prom_ratio = ratio(herd_head, prometheus.map(|p| p.0)),
        prom_heap = figure(prometheus.map(|p| p.1), 0),
        heap_ratio = ratio(herd_head, prometheus.map(|p| p.1)),
    ));
}
