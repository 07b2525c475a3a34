//! The one place that knows which agents exist and how they are doing:
//! connected since, last seen, version, labels, backlog, applied config
//! version, traffic, and the `(job, instance)` targets each one reports
//! (for `up`). Ingest writes it; the HTTP API, the UI and `up` read it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::SystemTime;

use herd_common::protocol::Hello;

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// From the client certificate.
    pub id: String,
    /// What the agent said in its hello (informational).
    pub claimed_id: String,
    /// Bound to the identity by the fleet CA (enrollment token, or `cert
    /// issue --label`); on every series and `up` of the agent. Unlike
    /// `labels` (the hello's claims), the agent cannot change them.
    pub trusted_labels: Vec<(String, String)>,
    pub hostname: String,
    pub version: String,
    pub labels: Vec<(String, String)>,
    pub remote_addr: SocketAddr,
    pub connected: bool,
    pub connected_since: SystemTime,
    pub last_seen: SystemTime,
    pub config_version: u64,
    pub backlog_batches: u64,
    pub batches_received: u64,
    pub samples_received: u64,
    pub series_defined: u64,
    /// The `(job, instance)` pairs of the agent's series: what `up` is written for.
    pub targets: BTreeSet<Target>,
    /// Distinguishes a reconnect from the connection it replaced.
    connection_id: u64,
}

/// One `(job, instance)` an agent reports series for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub job: String,
    pub instance: String,
    /// The agent sends this target's `up` itself (a scrape job): the
    /// aggregator writes `up` for it only while the agent is away.
    pub reports_up: bool,
}

#[derive(Debug, Default)]
pub struct Fleet {
    agents: RwLock<BTreeMap<String, AgentRecord>>,
    next_connection_id: std::sync::atomic::AtomicU64,
    /// Bumped whenever the set of agents or their targets changes, so the
    /// writer of `fleet.json` knows when there is something new to keep.
    generation: std::sync::atomic::AtomicU64,
    /// Per agent, how far its clock is behind the aggregator's (milliseconds,
    /// negative when ahead), from the age of its newest batch on arrival.
    clock_offsets: RwLock<std::collections::HashMap<String, i64>>,
}

impl Fleet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a new connection; returns its id for later updates.
    pub fn connected(&self, id: &str, hello: &Hello, remote_addr: SocketAddr, now: SystemTime) -> u64 {
        let connection_id = self.next_connection_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut agents = self.agents.write().expect("fleet lock is never poisoned");
        let previous = agents.get(id);
        let record = AgentRecord {
            id: id.to_owned(),
            claimed_id: hello.agent_id.clone(),
            trusted_labels: previous.map(|p| p.trusted_labels.clone()).unwrap_or_default(),
            hostname: hello.hostname.clone(),
            version: hello.agent_version.clone(),
            labels: hello.labels.clone(),
            remote_addr,
            connected: true,
            connected_since: now,
            last_seen: now,
            config_version: hello.config_version,
            backlog_batches: hello.backlog_batches,
            batches_received: previous.map_or(0, |p| p.batches_received),
            samples_received: previous.map_or(0, |p| p.samples_received),
            series_defined: 0,
            targets: previous.map(|p| p.targets.clone()).unwrap_or_default(),
            connection_id,
        };
        agents.insert(id.to_owned(), record);
        connection_id
    }

    /// Applies `update` to the agent's record if `connection_id` is still its current connection.
    pub fn update(&self, id: &str, connection_id: u64, update: impl FnOnce(&mut AgentRecord)) {
        let mut agents = self.agents.write().expect("fleet lock is never poisoned");
        if let Some(record) = agents.get_mut(id).filter(|r| r.connection_id == connection_id) {
            update(record);
        }
    }

    /// Sets the trusted labels of the agent's current connection (from its certificate).
    pub fn set_trusted_labels(&self, id: &str, connection_id: u64, labels: &[(String, String)]) {
        let mut changed = false;
        self.update(id, connection_id, |record| {
            changed = record.trusted_labels != labels;
            record.trusted_labels = labels.to_vec();
        });
        if changed {
            self.changed();
        }
    }

    pub fn disconnected(&self, id: &str, connection_id: u64, now: SystemTime) {
        self.update(id, connection_id, |record| {
            record.connected = false;
            record.last_seen = now;
        });
        // Kept in fleet.json: an agent is forgotten counting from when it went away.
        self.changed();
    }

    /// Notes a series' `job`/`instance` for `up`; returns whether the pair is new.
    /// Cheap for pairs already known (a shared lock and a lookup).
    pub fn note_series(&self, id: &str, job: &str, instance: &str, is_up: bool) -> bool {
        let known = |targets: &BTreeSet<Target>| {
            targets.iter().any(|t| t.job == job && t.instance == instance && (t.reports_up || !is_up))
        };
        if self.agents.read().expect("fleet lock is never poisoned").get(id).is_some_and(|r| known(&r.targets)) {
            return false;
        }
        let mut agents = self.agents.write().expect("fleet lock is never poisoned");
        let Some(record) = agents.get_mut(id) else { return false };
        if known(&record.targets) {
            return false;
        }
        record.targets.retain(|t| !(t.job == job && t.instance == instance));
        record.targets.insert(Target { job: job.to_owned(), instance: instance.to_owned(), reports_up: is_up });
        self.changed();
        true
    }

    /// Adds agents known from an earlier run, as disconnected, so their
    /// targets show `up 0` until they come back.
    pub fn restore(&self, known: Vec<KnownAgent>, now: SystemTime) {
        let mut agents = self.agents.write().expect("fleet lock is never poisoned");
        for agent in known {
            if agents.contains_key(&agent.id) {
                continue;
            }
            let record = AgentRecord {
                id: agent.id.clone(),
                claimed_id: agent.id.clone(),
                trusted_labels: agent.trusted_labels,
                hostname: agent.hostname,
                version: String::new(),
                labels: Vec::new(),
                remote_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                connected: false,
                connected_since: now,
                last_seen: agent.last_seen,
                config_version: 0,
                backlog_batches: 0,
                batches_received: 0,
                samples_received: 0,
                series_defined: 0,
                targets: agent.targets,
                connection_id: u64::MAX,
            };
            agents.insert(agent.id, record);
        }
        self.changed();
    }

    fn changed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes to the agents or their targets so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What [`Fleet::restore`] needs after a restart.
    pub fn known(&self) -> Vec<KnownAgent> {
        let agents = self.agents.read().expect("fleet lock is never poisoned");
        agents
            .values()
            .map(|r| KnownAgent {
                id: r.id.clone(),
                hostname: r.hostname.clone(),
                trusted_labels: r.trusted_labels.clone(),
                last_seen: r.last_seen,
                targets: r.targets.clone(),
            })
            .collect()
    }

    /// Forgets agents that have been away since before `cutoff`.
    pub fn forget_away_since(&self, cutoff: SystemTime) -> Vec<String> {
        let mut agents = self.agents.write().expect("fleet lock is never poisoned");
        let gone: Vec<String> =
            agents.values().filter(|r| !r.connected && r.last_seen < cutoff).map(|r| r.id.clone()).collect();
        let mut offsets = self.clock_offsets.write().expect("fleet lock is never poisoned");
        for id in &gone {
            agents.remove(id);
            offsets.remove(id);
        }
        if !gone.is_empty() {
            self.changed();
        }
        gone
    }

    pub fn list(&self) -> Vec<AgentRecord> {
        self.agents.read().expect("fleet lock is never poisoned").values().cloned().collect()
    }

    /// Records the age on arrival of the agent's newest batch.
    pub fn note_clock_offset(&self, id: &str, offset_ms: i64) {
        let mut offsets = self.clock_offsets.write().expect("fleet lock is never poisoned");
        match offsets.get_mut(id) {
            Some(offset) => *offset = offset_ms,
            None => {
                offsets.insert(id.to_owned(), offset_ms);
            }
        }
    }

    /// The last clock offset seen per agent (see `note_clock_offset`).
    pub fn clock_offsets(&self) -> std::collections::HashMap<String, i64> {
        self.clock_offsets.read().expect("fleet lock is never poisoned").clone()
    }

    pub fn connected_count(&self) -> usize {
        self.agents.read().expect("fleet lock is never poisoned").values().filter(|a| a.connected).count()
    }
}

/// An agent as remembered across restarts (`state_dir/fleet.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnownAgent {
    pub id: String,
    pub hostname: String,
    /// So an away agent's `up 0` carries them too.
    #[serde(default)]
    pub trusted_labels: Vec<(String, String)>,
    #[serde(with = "unix_ms")]
    pub last_seen: SystemTime,
    pub targets: BTreeSet<Target>,
}

mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_connection_cannot_overwrite_its_replacement() {
        let fleet = Fleet::new();
        let hello = Hello {
            agent_id: "web-1".into(),
            hostname: "web-1".into(),
            agent_version: "0.1.0".into(),
            labels: vec![],
            config_version: 0,
            backlog_batches: 0,
            ..Hello::default()
        };
        let addr = "127.0.0.1:1".parse().unwrap();
        let now = SystemTime::now();
        let old = fleet.connected("web-1", &hello, addr, now);
        let new = fleet.connected("web-1", &hello, addr, now);
        fleet.disconnected("web-1", old, now);
        assert!(fleet.list()[0].connected, "the old connection's end does not mark the agent down");
        fleet.disconnected("web-1", new, now);
        assert!(!fleet.list()[0].connected);
        assert_eq!(fleet.connected_count(), 0);
    }
}
