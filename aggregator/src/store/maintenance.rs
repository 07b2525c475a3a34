//! The store's periodic housekeeping: cut the head into a block when a block
//! boundary is passed, checkpoint and truncate the WAL behind it, compact
//! blocks, and delete blocks past retention. Runs on its own task; the heavy
//! parts run on blocking threads.
//!
//! Order of a cut, and why it is safe to crash anywhere in it:
//! 1. the WAL writer rolls to segment N: every record of an acknowledged
//!    batch appended before is in a segment below N, and its samples were
//!    appended to the store before (ingest appends, then logs);
//! 2. the head's old data is written as a block (`.tmp` + rename);
//! 3. `checkpoint.N` is written (`.tmp` + rename) from the head as it is now
//!    (series, their head samples as compressed chunks) and the per-agent
//!    sequence ranges;
//! 4. segments below N and older checkpoints are deleted.
//!
//! A crash before 3 replays the old checkpoint and all segments: the samples
//! already in the new block are appended to the head again, and reads return
//! an equal timestamp once. A crash after 3 replays the new checkpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::chunk::Chunk;
use super::db::Db;
use crate::ingest::dedup::Dedup;
use crate::wal::{self, Wal, WalError};

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Block(#[from] super::block::BlockError),
}

pub struct Maintenance {
    pub db: Arc<Db>,
    pub wal: Wal,
    pub dedup: Arc<Dedup>,
    pub interval: Duration,
}

impl Maintenance {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    // A failure (disk full) is retried next tick; nothing is lost, the WAL keeps it all.
                    if let Err(err) = self.tick().await {
                        error!(error = %err, "store maintenance failed; retrying next interval");
                    }
                }
            }
        }
    }

    /// One round: cut + checkpoint if due, then compaction and retention.
    pub async fn tick(&self) -> Result<(), MaintenanceError> {
        if let Some(before) = self.db.due_cut() {
            let first_kept = self.wal.roll().await?;
            let (db, dedup, wal) = (Arc::clone(&self.db), Arc::clone(&self.dedup), self.wal.clone());
            tokio::task::spawn_blocking(move || cut_and_checkpoint(&db, &dedup, &wal, before, first_kept))
                .await
                .expect("store maintenance does not panic")?;
        }
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || -> Result<(), MaintenanceError> {
            db.compact()?;
            db.apply_retention();
            db.head.pool.sweep();
            Ok(())
        })
        .await
        .expect("store maintenance does not panic")
    }
}

fn cut_and_checkpoint(db: &Db, dedup: &Dedup, wal: &Wal, before: i64, first_kept: u64) -> Result<(), MaintenanceError> {
    db.cut(before)?;
    let mut chunks = Vec::new();
    let written = wal::write_checkpoint(wal.dir(), first_kept, |w| {
        db.head.snapshot(|series_ref, labels, samples| {
            w.record(|b| wal::encode_series(series_ref, labels, b));
            chunks.clear();
            Chunk::encode_all(samples, &mut chunks);
            for chunk in &chunks {
                w.record(|b| wal::encode_head_chunk(series_ref, chunk.count, &chunk.bytes, b));
            }
        });
        for (agent, ranges) in dedup.snapshot() {
            w.record(|b| wal::encode_seq_ranges(&agent, &ranges, b));
        }
    })?;
    let freed = wal::truncate(wal.dir(), first_kept, &wal.holds)?;
    wal.stats.bytes.fetch_add(written, Ordering::Relaxed);
    let _ = wal.stats.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(freed)));
    debug!(checkpoint = first_kept, checkpoint_bytes = written, freed_bytes = freed, "WAL checkpointed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::DbOptions;
    use crate::store::{Sample, Storage};
    use herd_common::metric::Labels;

    const MINUTE: i64 = 60_000;

    /// Appends like ingest does: to the store, then a WAL record, then dedup.
    async fn ingest(db: &Db, wal: &Wal, dedup: &Dedup, seq: u64, t: i64, logged: &mut bool) {
        let labels = Labels::from_pairs([("__name__", "up"), ("instance", "a")]);
        let r = db.series_ref(&labels);
        db.append(r, Sample { timestamp_ms: t, value: seq as f64 }).unwrap();
        let mut bytes = Vec::new();
        if !*logged {
            wal::encode_series(r, &labels, &mut bytes);
            *logged = true;
        }
        wal::encode_samples("a", seq, t, &[(r, seq as f64)], &mut bytes);
        wal.append(bytes).await.unwrap();
        dedup.insert("a", seq);
    }

    #[tokio::test]
    async fn a_cut_checkpoints_the_wal_and_replay_restores_head_blocks_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let (blocks_dir, wal_dir) = (dir.path().join("blocks"), dir.path().join("wal"));
        let options = DbOptions::new(10 * MINUTE, 1000 * MINUTE, None);
        let db = Arc::new(Db::open(&blocks_dir, options).unwrap());
        let wal = Wal::start(&wal_dir, 0).unwrap();
        let dedup = Arc::new(Dedup::default());
        let maintenance = Maintenance {
            db: Arc::clone(&db),
            wal: wal.clone(),
            dedup: Arc::clone(&dedup),
            interval: Duration::from_secs(1),
        };
        let mut logged = false;
        for seq in 0..60u64 {
            ingest(&db, &wal, &dedup, seq, seq as i64 * MINUTE, &mut logged).await;
            maintenance.tick().await.unwrap();
        }
        // Cut every 10 minutes of data (once 5 more arrived), compacted by 3.
        assert_eq!(db.block_samples(), 50, "{:?}", db.block_ranges());
        assert!(db.block_ranges().iter().any(|b| b.3 == 2), "{:?}", db.block_ranges());
        let checkpoints = wal::checkpoints(&wal_dir).unwrap();
        assert_eq!(checkpoints.len(), 1, "older checkpoints deleted");
        let first_segment = wal::segments(&wal_dir).unwrap()[0].0;
        assert_eq!(first_segment, checkpoints[0].0, "segments below the checkpoint deleted");
        drop((maintenance, wal));

        let reopened = Db::open(&blocks_dir, options).unwrap();
        let replayed = Dedup::default();
        crate::server::replay_wal(&wal_dir, &reopened, &replayed).unwrap();
        let r = reopened.series_ref(&Labels::from_pairs([("__name__", "up"), ("instance", "a")]));
        let mut samples = Vec::new();
        reopened.read(r, i64::MIN, i64::MAX, &mut samples);
        let expected: Vec<Sample> =
            (0..60u64).map(|seq| Sample { timestamp_ms: seq as i64 * MINUTE, value: seq as f64 }).collect();
        assert_eq!(samples, expected);
        assert!((0..60).all(|seq| replayed.contains("a", seq)), "every sequence is remembered");
        assert!(!replayed.contains("a", 60));
    }
}
