//! PromQL does not know where data lives: the same samples (with backfill
//! arriving late, staleness markers, series that stop) loaded into the
//! in-memory `MemStore` and into the durable store, whose data ends up in
//! compacted blocks, level-1 blocks and the head, give identical answers
//! to range and instant queries.

use std::sync::Arc;
use std::time::Duration;

use herd_aggregator::promql::Engine;
use herd_aggregator::store::db::{Db, DbOptions};
use herd_aggregator::store::{MemStore, Sample, Storage};
use herd_common::metric::{Labels, stale_nan};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const STEP: i64 = 15_000;
const END: i64 = 7 * HOUR;

/// (labels, samples) of the test data, in the order they are appended.
fn data() -> Vec<(Labels, Vec<Sample>)> {
    let mut out = Vec::new();
    for instance in 0..20 {
        let instance_name = format!("host-{instance}");
        for code in ["200", "500"] {
            let labels = Labels::from_pairs([
                ("__name__", "http_requests_total"),
                ("instance", instance_name.as_str()),
                ("code", code),
                ("job", "web"),
            ]);
            let mut total = 0.0;
            let samples = (0..END / STEP)
                .map(|k| {
                    total += ((k * 7 + instance) % 13) as f64;
                    if k % 997 == 0 && code == "500" {
                        total = 0.0; // counter reset
                    }
                    Sample { timestamp_ms: k * STEP, value: total }
                })
                .collect();
            out.push((labels, samples));
        }
        // A gauge that stops with a staleness marker after 2 h on some hosts.
        let labels =
            Labels::from_pairs([("__name__", "mem_bytes"), ("instance", instance_name.as_str()), ("job", "node")]);
        let stops = instance % 3 == 0;
        let mut samples: Vec<Sample> = (0..END / STEP)
            .take_while(|k| !stops || k * STEP < 2 * HOUR)
            .map(|k| Sample { timestamp_ms: k * STEP, value: (1e9 as i64 + (k * 4096 * instance) % 7_000_000) as f64 })
            .collect();
        if stops {
            samples.push(Sample { timestamp_ms: 2 * HOUR, value: stale_nan() });
        }
        out.push((labels, samples));
    }
    out
}

fn load(store: &dyn Storage, db: Option<&Db>) {
    let data = data();
    let refs: Vec<_> = data.iter().map(|(labels, _)| store.series_ref(labels)).collect();
    // Live data in time order, except that host-5 and host-6 were cut off
    // from 1 h to 3 h and backfill their samples after 4 h of live data.
    let late = |labels: &Labels, t: i64| {
        matches!(labels.get("instance"), Some("host-5" | "host-6")) && (HOUR..3 * HOUR).contains(&t)
    };
    for k in 0..END / STEP {
        let t = k * STEP;
        for ((labels, samples), &r) in data.iter().zip(&refs) {
            if let Some(sample) = samples.iter().find(|s| s.timestamp_ms == t)
                && !late(labels, t)
            {
                store.append(r, *sample).unwrap();
            }
        }
        if t == 4 * HOUR {
            for ((labels, samples), &r) in data.iter().zip(&refs) {
                for sample in samples.iter().filter(|s| late(labels, s.timestamp_ms)) {
                    store.append(r, *sample).unwrap();
                }
            }
        }
        if let Some(db) = db
            && let Some(before) = db.due_cut()
        {
            db.cut(before).unwrap();
            db.compact().unwrap();
        }
    }
}

#[test]
fn promql_answers_are_the_same_from_blocks_and_head_as_from_memory() {
    let memory = Arc::new(MemStore::new());
    load(memory.as_ref(), None);
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), DbOptions::new(HOUR, 100 * HOUR, None)).unwrap());
    load(db.as_ref(), Some(&db));
    let levels: Vec<u32> = db.block_ranges().iter().map(|b| b.3).collect();
    assert!(levels.iter().any(|&l| l >= 2), "compacted blocks: {levels:?}");
    assert!(db.head.series_count() > 0, "some data stays in the head");

    let lookback = Duration::from_secs(300);
    let on_memory = Engine::new(memory, lookback, 100_000);
    let on_db = Engine::new(db, lookback, 100_000);
    let queries = [
        "http_requests_total",
        "rate(http_requests_total[5m])",
        "sum by (code) (rate(http_requests_total{job=\"web\"}[10m]))",
        "increase(http_requests_total{instance=~\"host-(5|6)\"}[1h])",
        "mem_bytes",
        "count(mem_bytes)",
        "max_over_time(mem_bytes{instance!=\"host-1\"}[30m])",
        "resets(http_requests_total{code=\"500\"}[2h])",
        "absent(mem_bytes{instance=\"host-0\"})",
        "{job=~\"web|node\", instance=\"host-6\"}",
    ];
    let mut compared = 0;
    for query in queries {
        let expected = on_memory.range_query(query, 0, END, 5 * MINUTE).unwrap();
        let got = on_db.range_query(query, 0, END, 5 * MINUTE).unwrap();
        assert_eq!(format!("{got:?}"), format!("{expected:?}"), "range query {query}");
        for t in [30 * MINUTE, 90 * MINUTE, 2 * HOUR + MINUTE, 5 * HOUR, END - STEP] {
            let expected = on_memory.instant_query(query, t).unwrap();
            let got = on_db.instant_query(query, t).unwrap();
            assert_eq!(format!("{got:?}"), format!("{expected:?}"), "instant query {query} at {t}");
        }
        compared += 1;
    }
    // A raw range selector returns every sample, backfill included.
    let expected = on_memory.instant_query("http_requests_total{instance=\"host-5\"}[7h]", END).unwrap();
    let got = on_db.instant_query("http_requests_total{instance=\"host-5\"}[7h]", END).unwrap();
    assert_eq!(format!("{got:?}"), format!("{expected:?}"));
    assert!(format!("{got:?}").len() > 10_000);
    assert_eq!(compared, queries.len());
}
