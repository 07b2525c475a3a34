//! The aggregator's own metrics, appended to the store every interval like
//! any agent's (`job="herd-aggregator"`), so they can be queried and alerted
//! on. They are not written to the WAL: after a crash they restart from the
//! process's counters, as any scraped target's would.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_common::metric::{Labels, METRIC_NAME};
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::ingest::IngestStats;
use crate::store::db::Db;
use crate::store::{Sample, Storage};
use crate::wal::WalStats;

pub struct SelfMonitor {
    pub store: Arc<dyn Storage>,
    pub fleet: Arc<Fleet>,
    pub ingest: Arc<IngestStats>,
    pub wal: Arc<WalStats>,
    /// The durable store's own figures (head, blocks, compactions, rejects).
    pub db: Option<Arc<Db>>,
    pub instance: String,
    pub interval: Duration,
    pub remote: crate::remote::RemoteFigures,
    /// Enrollment, renewal and certificate refusals, when identity is served.
    pub identity: Option<Arc<crate::identity::IdentityStats>>,
    /// Remote configuration: pushes by result, agents by configuration state.
    pub configs: Option<Arc<crate::configs::ConfigManager>>,
}

impl SelfMonitor {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.record(),
            }
        }
    }

    /// Appends one sample of each self-metric at the current time.
    pub fn record(&self) {
        let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed) as f64;
        let store_stats = self.store.stats();
        let figures = [
            ("herd_ingest_batches_total", load(&self.ingest.batches)),
            ("herd_ingest_samples_total", load(&self.ingest.samples)),
            ("herd_ingest_dedup_hits_total", load(&self.ingest.dedup_hits)),
            ("herd_ingest_handshake_failures_total", load(&self.ingest.handshake_failures)),
            ("herd_ingest_handshakes_abandoned_total", load(&self.ingest.handshakes_abandoned)),
            ("herd_ingest_handshakes_shed_total", load(&self.ingest.handshakes_shed)),
            ("herd_wal_bytes", load(&self.wal.bytes)),
            ("herd_wal_syncs_total", load(&self.wal.syncs)),
            ("herd_store_series", store_stats.series as f64),
            ("herd_store_samples_appended_total", store_stats.samples as f64),
            ("herd_fleet_agents_connected", self.fleet.connected_count() as f64),
        ];
        for (name, value) in figures {
            self.put(timestamp_ms, name, &[], value);
        }
        if let Some(db) = &self.db {
            let head = &db.head.counters;
            let (blocks, block_bytes) = db.block_stats();
            let store_figures = [
                ("herd_store_head_series", None, db.head.series_count() as f64),
                ("herd_store_head_chunk_bytes", None, db.head.chunk_bytes() as f64),
                ("herd_store_out_of_order_samples_total", None, load(&head.out_of_order_samples)),
                ("herd_store_series_created_total", None, load(&head.series_created)),
                ("herd_store_series_released_total", None, load(&head.series_released)),
                ("herd_store_blocks", None, blocks as f64),
                ("herd_store_blocks_bytes", None, block_bytes as f64),
                ("herd_store_head_cuts_total", None, load(&db.counters.head_cuts)),
                ("herd_store_compactions_total", None, load(&db.counters.compactions)),
                ("herd_store_compaction_duration_seconds_total", None, load(&db.counters.compaction_micros) / 1e6),
                ("herd_store_blocks_deleted_total", None, load(&db.counters.blocks_deleted_retention)),
                (
                    "herd_store_rejected_samples_total",
                    Some("duplicate_timestamp"),
                    load(&head.rejected_duplicate_timestamp),
                ),
                ("herd_store_rejected_samples_total", Some("unknown_series"), load(&head.rejected_unknown_series)),
                // A sample repeated with the same timestamp and value (a replay or a resend
                // below the batch level): stored once, counted here.
                ("herd_store_duplicate_samples_ignored_total", None, load(&head.duplicate_samples_ignored)),
            ];
            for (name, reason, value) in store_figures {
                let extra: &[(&str, &str)] = match &reason {
                    Some(reason) => &[("reason", reason)],
                    None => &[],
                };
                self.put(timestamp_ms, name, extra, value);
            }
        }
        self.record_remote(timestamp_ms);
        if let Some(identity) = &self.identity {
            for (name, reason, value) in identity.figures() {
                let extra: &[(&str, &str)] = match &reason {
                    Some(reason) => &[("reason", reason)],
                    None => &[],
                };
                self.put(timestamp_ms, name, extra, value as f64);
            }
        }
        if let Some(configs) = &self.configs {
            for (result, count) in configs.push_counts() {
                self.put(timestamp_ms, "herd_config_pushes_total", &[("result", result)], count as f64);
            }
            for (state, count) in configs.state_counts() {
                self.put(timestamp_ms, "herd_fleet_agents", &[("config_state", state.as_str())], count as f64);
            }
        }
    }

    /// Appends one sample of `name{job, instance, extra...}`.
    fn put(&self, timestamp_ms: i64, name: &str, extra: &[(&str, &str)], value: f64) {
        let mut pairs = vec![(METRIC_NAME, name), ("job", "herd-aggregator"), ("instance", self.instance.as_str())];
        pairs.extend_from_slice(extra);
        let series = self.store.series_ref(&Labels::from_pairs(pairs));
        let _ = self.store.append(series, Sample { timestamp_ms, value });
    }

    /// remote_write figures, labelled like Prometheus's `prometheus_remote_storage_*`.
    fn record_remote(&self, timestamp_ms: i64) {
        // (metric name, labels beyond job and instance, value)
        type Figure<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);
        let mut figures: Vec<Figure> = Vec::new();
        for queue in &self.remote.queues {
            let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed) as f64;
            let labels = vec![("remote_name", queue.name.as_str()), ("url", queue.url.as_str())];
            let sent_ms = queue.highest_sent_timestamp_ms.load(Ordering::Relaxed);
            let read_ms = queue.highest_read_timestamp_ms.load(Ordering::Relaxed);
            let sent_seconds = if sent_ms == i64::MIN { 0.0 } else { sent_ms as f64 / 1000.0 };
            let lag_seconds = if read_ms == i64::MIN { 0.0 } else { (read_ms as f64 / 1000.0 - sent_seconds).max(0.0) };
            for (name, value) in [
                ("herd_remote_write_samples_sent_total", load(&queue.samples_sent)),
                ("herd_remote_write_samples_failed_total", load(&queue.samples_failed)),
                ("herd_remote_write_samples_retried_total", load(&queue.samples_retried)),
                ("herd_remote_write_samples_dropped_total", load(&queue.samples_dropped)),
                ("herd_remote_write_samples_pending", load(&queue.pending_samples)),
                ("herd_remote_write_shards", load(&queue.shards)),
                ("herd_remote_write_highest_sent_timestamp_seconds", sent_seconds),
                ("herd_remote_write_lag_seconds", lag_seconds),
            ] {
                figures.push((name, labels.clone(), value));
            }
        }
        let refused: Vec<(&'static str, u64)>;
        if let Some(receiver) = &self.remote.receiver {
            figures.push((
                "herd_remote_write_receiver_requests_total",
                Vec::new(),
                receiver.requests.load(Ordering::Relaxed) as f64,
            ));
            figures.push((
                "herd_remote_write_receiver_samples_total",
                Vec::new(),
                receiver.samples.load(Ordering::Relaxed) as f64,
            ));
            refused =
                receiver.refused.lock().expect("stats lock is never poisoned").iter().map(|(r, n)| (*r, *n)).collect();
            for (reason, count) in &refused {
                figures.push((
                    "herd_remote_write_receiver_refused_requests_total",
                    vec![("reason", reason)],
                    *count as f64,
                ));
            }
        }
        for (name, extra, value) in figures {
            self.put(timestamp_ms, name, &extra, value);
        }
    }
}

/// This machine's host name, for the `instance` label.
pub fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() { "localhost".to_owned() } else { name.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LabelMatcher, MatchOp, MemStore};

    #[test]
    fn every_figure_lands_in_the_store() {
        let store: Arc<dyn Storage> = Arc::new(MemStore::new());
        let ingest = Arc::new(IngestStats::default());
        ingest.dedup_hits.store(3, Ordering::Relaxed);
        let monitor = SelfMonitor {
            store: Arc::clone(&store),
            fleet: Arc::new(Fleet::new()),
            ingest,
            wal: Arc::new(WalStats::default()),
            db: None,
            instance: "agg:7401".into(),
            interval: Duration::from_secs(5),
            remote: Default::default(),
            identity: None,
            configs: None,
        };
        monitor.record();
        let matcher = LabelMatcher::new(MatchOp::Equal, METRIC_NAME, "herd_ingest_dedup_hits_total").unwrap();
        let found = store.select(&[matcher]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.get("job"), Some("herd-aggregator"));
        let mut samples = Vec::new();
        store.read(found[0].0, i64::MIN, i64::MAX, &mut samples);
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(store.stats().series, 11);
    }

    #[test]
    fn the_durable_store_reports_its_own_figures() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path(), crate::store::db::DbOptions::new(3_600_000, 86_400_000, None)).unwrap());
        let x = db.series_ref(&Labels::from_pairs([(METRIC_NAME, "x")]));
        db.append(x, Sample { timestamp_ms: 10, value: 1.0 }).unwrap();
        db.append(x, Sample { timestamp_ms: 5, value: 1.0 }).unwrap();
        assert!(db.append(x, Sample { timestamp_ms: 10, value: 2.0 }).is_err());
        db.cut(11).unwrap();
        let store: Arc<dyn Storage> = Arc::clone(&db) as Arc<dyn Storage>;
        let monitor = SelfMonitor {
            store: Arc::clone(&store),
            fleet: Arc::new(Fleet::new()),
            ingest: Arc::new(IngestStats::default()),
            wal: Arc::new(WalStats::default()),
            db: Some(db),
            instance: "agg:7401".into(),
            interval: Duration::from_secs(5),
            remote: Default::default(),
            identity: None,
            configs: None,
        };
        monitor.record();
        let value = |name: &str, reason: Option<&str>| {
            let mut matchers = vec![LabelMatcher::new(MatchOp::Equal, METRIC_NAME, name).unwrap()];
            if let Some(reason) = reason {
                matchers.push(LabelMatcher::new(MatchOp::Equal, "reason", reason).unwrap());
            }
            let found = store.select(&matchers);
            assert_eq!(found.len(), 1, "{name}");
            let mut samples = Vec::new();
            store.read(found[0].0, i64::MIN, i64::MAX, &mut samples);
            samples[0].value
        };
        assert_eq!(value("herd_store_blocks", None), 1.0);
        assert!(value("herd_store_blocks_bytes", None) > 0.0);
        assert_eq!(value("herd_store_out_of_order_samples_total", None), 1.0);
        assert_eq!(value("herd_store_rejected_samples_total", Some("duplicate_timestamp")), 1.0);
        assert_eq!(value("herd_store_head_cuts_total", None), 1.0);
        assert_eq!(value("herd_store_series_released_total", None), 1.0);
    }
}
