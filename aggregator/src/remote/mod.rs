//! Prometheus remote_write, out of and into the aggregator.
//!
//! - `queue`: one queue per `[[remote_write]]` endpoint. It tails the WAL
//!   (series records build a ref → labels map, samples records are sent), so
//!   ingestion never waits for a receiver and a receiver that is down loses
//!   nothing: the queue's position is persisted under
//!   `state_dir/remote_write/NAME.position` and a `SegmentHolds` entry keeps
//!   the segments it still needs. Samples of one series always go to the same
//!   shard, in WAL order.
//! - `receiver`: `POST /api/v1/write`, authenticated; requests go through the
//!   same WAL-then-store path as agent batches (`ingest::SeriesLog`).
//! - `proto`: the protobuf messages and snappy framing; `relabel`: write_relabel_configs.
//!
//! **Invariant:** a sample leaves the queue only when the receiver accepted
//! it (2xx), refused it for good (4xx other than 429, counted as failed), or
//! when the endpoint fell more than `max_backlog_bytes` of WAL behind
//! (counted as dropped). 5xx, 429 and connection errors are retried forever.

pub mod proto;
pub mod queue;
pub mod receiver;
pub mod relabel;

use std::sync::atomic::{AtomicI64, AtomicU64};

/// Figures of one endpoint, written to the store by `selfmon`.
#[derive(Debug, Default)]
pub struct RemoteStats {
    pub name: String,
    pub url: String,
    pub samples_sent: AtomicU64,
    /// Refused by the receiver with a 4xx other than 429: not retried.
    pub samples_failed: AtomicU64,
    /// Sent again after a 5xx, a 429 or a connection error.
    pub samples_retried: AtomicU64,
    /// Dropped unsent because the endpoint fell too far behind.
    pub samples_dropped: AtomicU64,
    /// Newest sample timestamp read from the WAL for this endpoint (ms).
    pub highest_read_timestamp_ms: AtomicI64,
    /// Newest sample timestamp the receiver accepted (ms).
    pub highest_sent_timestamp_ms: AtomicI64,
    pub shards: AtomicU64,
    /// Samples read but not yet sent.
    pub pending_samples: AtomicU64,
}

/// Every remote_write figure `selfmon` records.
#[derive(Debug, Default, Clone)]
pub struct RemoteFigures {
    pub queues: Vec<std::sync::Arc<RemoteStats>>,
    pub receiver: Option<std::sync::Arc<ReceiverStats>>,
}

/// Figures of the receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub requests: AtomicU64,
    pub samples: AtomicU64,
    /// Requests answered with an error, by reason.
    pub refused: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl ReceiverStats {
    pub(crate) fn refuse(&self, reason: &'static str) {
        *self.refused.lock().expect("stats lock is never poisoned").entry(reason).or_default() += 1;
    }
}
