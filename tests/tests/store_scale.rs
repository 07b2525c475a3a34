//! The durable store at fleet scale, in process: 100 000 series over a few
//! hours of synthetic samples go through the `Storage` API, the head is cut
//! into blocks, and a query over the whole range returns exactly what was
//! written. Prints bytes per sample in the head and on disk.
//!
//! HERD_SCALE_SERIES and HERD_SCALE_HOURS change the size (defaults 100000 and 3).

use std::sync::Arc;
use std::time::Instant;

use herd_aggregator::store::db::{Db, DbOptions};
use herd_aggregator::store::{LabelMatcher, MatchOp, Sample, Storage};
use herd_common::metric::Labels;

// The allocator herd-aggregator runs with, so the RSS figure is the aggregator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOUR_MS: i64 = 3_600_000;
const STEP_MS: i64 = 60_000;
const START_MS: i64 = 1_764_000_000_000;

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The value series `i` has at step `k`: counters that grow by whole units
/// (bytes, packets, requests) and gauges that sit still or move in steps,
/// as node_exporter's series do.
fn value(i: usize, k: i64) -> f64 {
    match i % 4 {
        0 => (k * (i as i64 % 97 + 1) * 4096) as f64,
        1 => (k * k % 1000 + i as i64) as f64,
        2 => ((k / 10) % 7) as f64 * 0.25,
        _ => 1.0,
    }
}

#[test]
fn a_hundred_thousand_series_read_back_exactly_at_a_few_bytes_per_sample() {
    let series_count = env_or("HERD_SCALE_SERIES", 100_000);
    let hours = env_or("HERD_SCALE_HOURS", 3) as i64;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), DbOptions::new(HOUR_MS, 30 * 24 * HOUR_MS, None)).unwrap());
    let rss_before = rss_bytes();
    let started = Instant::now();
    let refs: Vec<_> = (0..series_count)
        .map(|i| {
            db.series_ref(&Labels::from_pairs([
                ("__name__", format!("m{}", i % 100)),
                ("instance", format!("host-{}", i / 100)),
                ("job", "node".to_owned()),
            ]))
        })
        .collect();
    let steps = hours * HOUR_MS / STEP_MS;
    for k in 0..steps {
        // A few ms of jitter, like a real scrape loop.
        let t = START_MS + k * STEP_MS + (k % 3);
        for (i, &r) in refs.iter().enumerate() {
            db.append(r, Sample { timestamp_ms: t, value: value(i, k) }).unwrap();
        }
        if let Some(before) = db.due_cut() {
            db.cut(before).unwrap();
        }
    }
    let appended = steps as u64 * series_count as u64;
    let ingest_secs = started.elapsed().as_secs_f64();
    let in_blocks = db.block_samples();
    let (blocks, block_bytes) = db.block_stats();
    let in_head = appended - in_blocks;
    let head_bytes = db.head.chunk_bytes() as u64;
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    let disk_per_sample = block_bytes as f64 / in_blocks as f64;
    let head_per_sample = head_bytes as f64 / in_head as f64;
    println!(
        "{series_count} series x {steps} samples = {appended} samples in {ingest_secs:.1} s ({:.0} samples/s); \
         {blocks} blocks, {block_bytes} bytes for {in_blocks} samples = {disk_per_sample:.2} B/sample on disk; \
         head chunks {head_bytes} bytes for {in_head} samples = {head_per_sample:.2} B/sample; \
         process RSS grew {rss_growth} bytes (series table, postings, chunks, allocator slack)",
        appended as f64 / ingest_secs
    );
    assert!(blocks >= 1 && in_blocks > 0);
    assert!(disk_per_sample < 4.0, "{disk_per_sample} B/sample on disk");
    assert!(head_per_sample < 6.0, "{head_per_sample} B/sample in the head");

    // A query over the whole range: every series, every sample, exact values.
    let matcher = LabelMatcher::new(MatchOp::Equal, "job", "node").unwrap();
    let found = db.select_in_range(&[matcher], START_MS, START_MS + hours * HOUR_MS);
    assert_eq!(found.len(), series_count);
    let mut samples = Vec::new();
    let mut read = 0u64;
    for (r, labels) in &found {
        let i: usize = labels.get("instance").unwrap()["host-".len()..].parse::<usize>().unwrap() * 100
            + labels.metric_name().unwrap()[1..].parse::<usize>().unwrap();
        samples.clear();
        db.read(*r, i64::MIN, i64::MAX, &mut samples);
        assert_eq!(samples.len() as i64, steps, "series {labels}");
        for (k, sample) in samples.iter().enumerate() {
            let k = k as i64;
            assert_eq!(sample.timestamp_ms, START_MS + k * STEP_MS + (k % 3), "series {labels}");
            assert_eq!(sample.value.to_bits(), value(i, k).to_bits(), "series {labels} step {k}");
        }
        read += samples.len() as u64;
    }
    assert_eq!(read, appended);
    println!("read back in {:.1} s in total", started.elapsed().as_secs_f64());
}
