//! Retention by selector: `[[storage.retention]]` rules keep business
//! series a long time while everything else gets the default
//! `retention_time`, applied to blocks of different ages as maintenance
//! does (cut, compact, apply retention); what is left is checked through
//! PromQL. `retention_size` still deletes the oldest blocks first.

use std::sync::Arc;
use std::time::Duration;

use herd_aggregator::promql::{Engine, Value};
use herd_aggregator::store::db::{Db, DbOptions, RetentionRule};
use herd_aggregator::store::{Sample, Storage};
use herd_common::config::storage::{self, parse_selector};
use herd_common::metric::Labels;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const STEP: i64 = 5 * MINUTE;
/// 10 days of data, cut into 6-hour blocks.
const END: i64 = 240 * HOUR;
const DEFAULT_RETENTION: i64 = 48 * HOUR;

fn rule(selector: &str, time: Duration) -> RetentionRule {
    let config =
        storage::RetentionRule { selector: selector.to_owned(), matchers: parse_selector(selector).unwrap(), time };
    RetentionRule::from_config(&config).unwrap()
}

fn load(db: &Db) {
    let series = [
        Labels::from_pairs([("__name__", "smart_dairy_orders_total"), ("job", "app"), ("status", "created")]),
        Labels::from_pairs([("__name__", "node_load1"), ("job", "node"), ("instance", "a")]),
        Labels::from_pairs([("__name__", "up"), ("job", "node"), ("instance", "a")]),
    ];
    let refs: Vec<_> = series.iter().map(|l| db.series_ref(l)).collect();
    let mut t = 0;
    while t <= END {
        for (i, &r) in refs.iter().enumerate() {
            db.append(r, Sample { timestamp_ms: t, value: (t / STEP) as f64 + i as f64 }).unwrap();
        }
        if let Some(before) = db.due_cut() {
            db.cut(before).unwrap();
            db.compact().unwrap();
        }
        t += STEP;
    }
}

/// Samples of `selector` over the 6 hours before `at`, through PromQL.
fn samples_before(engine: &Engine, selector: &str, at: i64) -> usize {
    match engine.instant_query(&format!("{selector}[6h]"), at).unwrap() {
        Value::Matrix(series) => series.iter().map(|(_, samples)| samples.len()).sum(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_selector_keeps_its_series_longer_than_the_default_and_size_still_bounds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), DbOptions::new(6 * HOUR, DEFAULT_RETENTION, None)).unwrap());
    db.set_retention_rules(vec![
        rule(r#"{__name__=~"smart_dairy_.*"}"#, Duration::from_secs(365 * 86_400)),
        rule(r#"up{job="node"}"#, Duration::from_secs(5 * 86_400)),
    ]);
    load(&db);
    let blocks_before = db.block_ranges();
    assert!(blocks_before.len() >= 3, "blocks of different ages: {blocks_before:?}");
    let engine = Engine::new(Arc::clone(&db) as Arc<dyn Storage>, Duration::from_secs(300), 100_000);
    // Samples in a 6 h window (ends included or not, as PromQL counts them).
    let all_six_hours = samples_before(&engine, "node_load1", 12 * HOUR);
    assert!(all_six_hours >= (6 * HOUR / STEP) as usize);
    for selector in ["smart_dairy_orders_total", "node_load1", "up"] {
        assert_eq!(samples_before(&engine, selector, 12 * HOUR), all_six_hours, "{selector} before retention");
    }

    db.apply_retention();

    // The default (48 h) removed old node_load1 data; the 5-day rule kept up's
    // last 5 days only; the business series kept everything.
    let now = END;
    for (selector, kept_for) in [("smart_dairy_orders_total", END), ("node_load1", 48 * HOUR), ("up", 120 * HOUR)] {
        let old = now - kept_for - 12 * HOUR;
        let expected_old = if kept_for == END { all_six_hours } else { 0 };
        if old > 6 * HOUR {
            assert_eq!(samples_before(&engine, selector, old), expected_old, "{selector} at {old}");
        }
        // Recent data of every series stays.
        assert_eq!(samples_before(&engine, selector, now - kept_for / 2), all_six_hours, "{selector} recent");
    }
    assert_eq!(samples_before(&engine, "smart_dairy_orders_total", 6 * HOUR), all_six_hours);
    assert_eq!(samples_before(&engine, "node_load1", 6 * HOUR), 0);
    assert_eq!(samples_before(&engine, "up", 6 * HOUR), 0);
    // The oldest blocks were rewritten (they still hold the business series), not deleted.
    let blocks_after = db.block_ranges();
    assert_eq!(blocks_after.first().map(|b| b.1), blocks_before.first().map(|b| b.1));
    // A second pass has nothing more to do.
    assert_eq!(db.apply_retention(), 0);
    assert_eq!(db.block_ranges(), blocks_after);

    // retention_size bounds the whole store, oldest data first.
    let (_, bytes) = db.block_stats();
    drop(engine);
    drop(db);
    let limited = Arc::new(Db::open(dir.path(), DbOptions::new(6 * HOUR, DEFAULT_RETENTION, Some(bytes / 2))).unwrap());
    limited.set_retention_rules(vec![rule(r#"{__name__=~"smart_dairy_.*"}"#, Duration::from_secs(365 * 86_400))]);
    assert!(limited.apply_retention() > 0);
    assert!(limited.block_stats().1 <= bytes / 2);
    let kept = limited.block_ranges();
    assert!(kept.first().unwrap().1 > blocks_after.first().unwrap().1, "the oldest went first: {kept:?}");
    assert_eq!(kept.last(), blocks_after.last(), "the newest stays");
}
