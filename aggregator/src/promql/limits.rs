//! What one query may cost: samples held in memory at once, samples read in
//! all, series one selector may select, and wall-clock time. The evaluator asks here before it
//! grows; nothing here allocates or knows about expressions.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::QueryError;

/// Per-query limits. Defaults follow Prometheus's flags
/// (`--query.max-samples=50000000`, `--query.timeout=2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Samples (raw samples being read plus result points) one query may hold in memory at once.
    pub max_samples: usize,
    /// Samples one query may read from the store in all: a month of every
    /// series streams through little memory but costs its time.
    pub max_samples_read: u64,
    /// Series one selector may select.
    pub max_series: usize,
    /// Wall-clock time one query may take; `None` for no limit.
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_samples: 50_000_000,
            max_samples_read: 1_000_000_000,
            max_series: 500_000,
            timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// What a finished query cost, for `stats` in the HTTP API and for logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Samples read from the store.
    pub samples_read: u64,
    /// Most samples held in memory at once.
    pub peak_samples: usize,
}

/// Counts samples held by one evaluation. Single-threaded: a query is
/// evaluated on one thread, so plain cells suffice.
#[derive(Debug)]
pub(crate) struct Budget {
    max_samples: usize,
    max_samples_read: u64,
    current: Cell<usize>,
    peak: Cell<usize>,
    read: Cell<u64>,
    deadline: Option<(Instant, Duration)>,
    checks: Cell<u32>,
}

impl Budget {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            max_samples: limits.max_samples,
            max_samples_read: limits.max_samples_read,
            current: Cell::new(0),
            peak: Cell::new(0),
            read: Cell::new(0),
            deadline: limits.timeout.map(|t| (Instant::now() + t, t)),
            checks: Cell::new(0),
        }
    }

    /// Accounts for `n` more samples in memory.
    pub(crate) fn take(&self, n: usize) -> Result<(), QueryError> {
        let current = self.current.get().saturating_add(n);
        if current > self.max_samples {
            return Err(QueryError::TooManySamples { limit: self.max_samples });
        }
        self.current.set(current);
        if current > self.peak.get() {
            self.peak.set(current);
        }
        Ok(())
    }

    /// Returns `n` samples that are no longer held.
    pub(crate) fn give_back(&self, n: usize) {
        self.current.set(self.current.get().saturating_sub(n));
    }

    pub(crate) fn current(&self) -> usize {
        self.current.get()
    }

    /// Sets the samples held after a node's inputs were dropped.
    pub(crate) fn set_current(&self, n: usize) {
        self.current.set(n);
    }

    /// Counts samples read from the store, refusing past the limit.
    pub(crate) fn note_read(&self, n: usize) -> Result<(), QueryError> {
        let read = self.read.get().saturating_add(n as u64);
        self.read.set(read);
        if read > self.max_samples_read {
            return Err(QueryError::TooManySamplesRead { limit: self.max_samples_read });
        }
        Ok(())
    }

    /// Fails once the query has run out of time. Cheap enough to call per
    /// series or per step: the clock is read every 64th call.
    pub(crate) fn check_deadline(&self) -> Result<(), QueryError> {
        let Some((deadline, timeout)) = self.deadline else { return Ok(()) };
        let n = self.checks.get().wrapping_add(1);
        self.checks.set(n);
        if n % 64 == 1 && Instant::now() >= deadline {
            return Err(QueryError::Timeout { timeout });
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> QueryStats {
        QueryStats { samples_read: self.read.get(), peak_samples: self.peak.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_past_the_limit_and_tracks_the_peak() {
        let budget = Budget::new(&Limits { max_samples: 10, ..Limits::default() });
        budget.take(6).unwrap();
        budget.give_back(4);
        budget.take(8).unwrap();
        assert_eq!(budget.take(1), Err(QueryError::TooManySamples { limit: 10 }));
        assert_eq!(budget.stats().peak_samples, 10);
        let reader = Budget::new(&Limits { max_samples_read: 5, ..Limits::default() });
        reader.note_read(5).unwrap();
        assert_eq!(reader.note_read(1), Err(QueryError::TooManySamplesRead { limit: 5 }));
    }

    #[test]
    fn an_expired_deadline_is_reported() {
        let budget = Budget::new(&Limits { timeout: Some(Duration::ZERO), ..Limits::default() });
        std::thread::sleep(Duration::from_millis(1));
        assert!(matches!(budget.check_deadline(), Err(QueryError::Timeout { .. })));
    }
}
