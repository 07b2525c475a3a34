//! The one place that knows which agents exist and how they are doing:
//! connected since, last seen, version, labels, backlog, applied config
//! version, traffic. Ingest writes it; the HTTP API and the UI read it.

use std::collections::BTreeMap;
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
    /// Distinguishes a reconnect from the connection it replaced.
    connection_id: u64,
}

#[derive(Debug, Default)]
pub struct Fleet {
    agents: RwLock<BTreeMap<String, AgentRecord>>,
    next_connection_id: std::sync::atomic::AtomicU64,
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

    pub fn disconnected(&self, id: &str, connection_id: u64, now: SystemTime) {
        self.update(id, connection_id, |record| {
            record.connected = false;
            record.last_seen = now;
        });
    }

    pub fn list(&self) -> Vec<AgentRecord> {
        self.agents.read().expect("fleet lock is never poisoned").values().cloned().collect()
    }

    pub fn connected_count(&self) -> usize {
        self.agents.read().expect("fleet lock is never poisoned").values().filter(|a| a.connected).count()
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
