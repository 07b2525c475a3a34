//! `up{job, instance}` for every target of every agent, as Prometheus writes
//! it for every scrape target, so rules such as `up{job="node"} == 0` work.
//!
//! A target is a `(job, instance)` pair an agent has sent series for. While
//! the agent is connected its targets are `up 1`, except those the agent
//! reports `up` for itself (scrape jobs, whose targets can fail on their
//! own); while it is away, every one of its targets is `up 0`. Samples are
//! written at the aggregator's clock every `interval`, so a disconnect shows
//! within one interval of the connection's end.
//!
//! The agents and their targets are kept in `state_dir/fleet.json`, so an
//! agent that is still away after an aggregator restart keeps showing
//! `up 0`; an agent away for longer than [`FORGET_AFTER`] is forgotten.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_common::metric::{Labels, METRIC_NAME};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::fleet::{Fleet, KnownAgent};
use crate::store::{Sample, SeriesRef, Storage};

/// How long an agent may be away before its targets stop being reported.
pub const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// `up` series already resolved, by job and then instance, with the trusted
/// labels they were resolved with.
pub type SeriesRefs = HashMap<String, HashMap<String, (Vec<(String, String)>, SeriesRef)>>;

pub struct UpWriter {
    pub store: Arc<dyn Storage>,
    pub fleet: Arc<Fleet>,
    pub interval: Duration,
    /// Where the known agents are kept across restarts.
    pub state_path: PathBuf,
}

impl UpWriter {
    /// Restores the agents of an earlier run from `state_path`; a missing
    /// file is a first start, an unreadable one is logged and ignored.
    pub fn restore(&self) {
        let text = match std::fs::read_to_string(&self.state_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
            Err(err) => {
                warn!(path = %self.state_path.display(), error = %err, "cannot read the known agents; starting without them");
                return;
            }
        };
        match serde_json::from_str::<Vec<KnownAgent>>(&text) {
            Ok(known) => {
                info!(agents = known.len(), "restored known agents: their targets show up 0 until they reconnect");
                self.fleet.restore(known, SystemTime::now());
            }
            Err(err) => warn!(path = %self.state_path.display(), error = %err, "known agents file is damaged; ignored"),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut refs = HashMap::new();
        let mut saved = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    self.write(SystemTime::now(), &mut refs);
                    self.save(&mut saved);
                }
            }
        }
        self.save(&mut saved);
    }

    /// Appends one `up` sample per target at `now`.
    pub fn write(&self, now: SystemTime, refs: &mut SeriesRefs) {
        let timestamp_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for id in self.fleet.forget_away_since(now.checked_sub(FORGET_AFTER).unwrap_or(UNIX_EPOCH)) {
            info!(agent = %id, "forgetting an agent away for longer than {FORGET_AFTER:?}");
        }
        for agent in self.fleet.list() {
            for target in &agent.targets {
                let value = match (agent.connected, target.reports_up) {
                    (true, true) => continue,
                    (true, false) => 1.0,
                    (false, _) => 0.0,
                };
                let known = refs
                    .get(&target.job)
                    .and_then(|by_instance| by_instance.get(&target.instance))
                    .filter(|(trusted, _)| *trusted == agent.trusted_labels);
                let series = match known {
                    Some(&(_, series)) => series,
                    None => {
                        // The agent's trusted labels, as ingest stamps them on its own series.
                        let trusted = agent.trusted_labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                        let series = self.store.series_ref(&Labels::from_pairs(trusted.chain([
                            (METRIC_NAME, "up"),
                            ("job", target.job.as_str()),
                            ("instance", target.instance.as_str()),
                        ])));
                        refs.entry(target.job.clone())
                            .or_default()
                            .insert(target.instance.clone(), (agent.trusted_labels.clone(), series));
                        series
                    }
                };
                let _ = self.store.append(series, Sample { timestamp_ms, value });
            }
        }
    }

    /// Writes the known agents when they changed since `saved` (a fleet
    /// generation), atomically: temp file, rename.
    fn save(&self, saved: &mut Option<u64>) {
        let generation = self.fleet.generation();
        if *saved == Some(generation) {
            return;
        }
        let mut known = self.fleet.known();
        known.sort_by(|a, b| a.id.cmp(&b.id));
        let text = serde_json::to_string_pretty(&known).expect("known agents serialise");
        let tmp = self.state_path.with_extension("json.tmp");
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.state_path));
        match result {
            Ok(()) => *saved = Some(generation),
            Err(err) => warn!(path = %self.state_path.display(), error = %err, "cannot save the known agents"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LabelMatcher, MatchOp, MemStore};
    use herd_common::protocol::Hello;

    fn hello() -> Hello {
        Hello {
            agent_id: "web-1".into(),
            hostname: "web-1".into(),
            agent_version: "0.1.0".into(),
            labels: vec![],
            config_version: 0,
            backlog_batches: 0,
            ..Hello::default()
        }
    }

    fn up_values(store: &MemStore, job: &str) -> Vec<f64> {
        let matchers = [
            LabelMatcher::new(MatchOp::Equal, METRIC_NAME, "up").unwrap(),
            LabelMatcher::new(MatchOp::Equal, "job", job).unwrap(),
        ];
        let mut out = Vec::new();
        for (series, _) in store.select(&matchers) {
            store.read(series, i64::MIN, i64::MAX, &mut out);
        }
        out.iter().map(|s| s.value).collect()
    }

    #[test]
    fn targets_are_up_while_connected_and_down_while_away_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemStore::new());
        let fleet = Arc::new(Fleet::new());
        let writer = UpWriter {
            store: store.clone(),
            fleet: fleet.clone(),
            interval: Duration::from_secs(1),
            state_path: dir.path().join("fleet.json"),
        };
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let connection = fleet.connected("web-1", &hello(), "127.0.0.1:1".parse().unwrap(), t0);
        assert!(fleet.note_series("web-1", "node", "web-1", false));
        assert!(!fleet.note_series("web-1", "node", "web-1", false), "known pairs are not new");
        assert!(fleet.note_series("web-1", "app", "10.0.0.5:8080", true));
        let mut refs = HashMap::new();
        writer.write(t0, &mut refs);
        assert_eq!(up_values(&store, "node"), [1.0]);
        assert_eq!(up_values(&store, "app"), Vec::<f64>::new(), "the agent reports this target's up itself");
        fleet.disconnected("web-1", connection, t0 + Duration::from_secs(1));
        writer.write(t0 + Duration::from_secs(2), &mut refs);
        assert_eq!(up_values(&store, "node"), [1.0, 0.0]);
        assert_eq!(up_values(&store, "app"), [0.0], "an away agent's scrape targets are down too");
        writer.save(&mut None);

        // A restarted aggregator remembers the agent and keeps it down.
        let store = Arc::new(MemStore::new());
        let writer = UpWriter { store: store.clone(), fleet: Arc::new(Fleet::new()), ..writer };
        writer.restore();
        writer.write(t0 + Duration::from_secs(3), &mut HashMap::new());
        assert_eq!(up_values(&store, "node"), [0.0]);
        // ...until it has been away too long.
        writer.write(t0 + FORGET_AFTER + Duration::from_secs(5), &mut HashMap::new());
        assert_eq!(up_values(&store, "node"), [0.0]);
        assert!(writer.fleet.list().is_empty());
    }
}
