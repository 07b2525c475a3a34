//! Harness pieces for the store's tests: an aggregator with a `[storage]`
//! section, and looks at its state directory (blocks, WAL segments, checkpoints).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Aggregator, Pki, Process, wait_for};

/// Starts (or restarts) aggregator `name` with state under `work/name-state`
/// and `storage` (TOML keys) as its `[storage]` section.
pub fn start_aggregator_with_storage(
    pki: &Pki,
    work: &Path,
    name: &str,
    http: SocketAddr,
    quic: SocketAddr,
    storage: &str,
) -> Aggregator {
    if !pki.path("localhost.pem").exists() {
        pki.issue_server("localhost");
    }
    let config = work.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nquic_listen = \"{quic}\"\nhttp_listen = \"{http}\"\nstate_dir = \"{state}\"\nheartbeat_interval = \"1s\"\n\
             [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n[storage]\n{storage}\n",
            state = state_dir(work, name).display(),
            ca = pki.path("ca.pem").display(),
            cert = pki.path("localhost.pem").display(),
            key = pki.path("localhost-key.pem").display(),
        ),
    )
    .expect("write aggregator config");
    let process =
        Process::spawn("aggregator", "herd-aggregator", &["serve", "--config", config.to_str().expect("utf-8")], work);
    let aggregator = Aggregator { process, http, quic };
    let ready = wait_for(Duration::from_secs(20), || aggregator.get("/-/ready").filter(|(status, _)| *status == 200));
    assert!(ready.is_some(), "aggregator not ready within 20 s:\n{}", aggregator.process.log());
    aggregator
}

pub fn state_dir(work: &Path, name: &str) -> PathBuf {
    work.join(format!("{name}-state"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// Complete block directories under `state/blocks`.
pub fn blocks(state: &Path) -> Vec<String> {
    names(&state.join("blocks")).into_iter().filter(|n| !n.ends_with(".tmp")).collect()
}

/// Bytes of every file under `dir`, recursively.
pub fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => tree_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// WAL segment numbers in `state/wal`.
pub fn wal_segments(state: &Path) -> Vec<u64> {
    names(&state.join("wal")).iter().filter_map(|n| n.strip_suffix(".seg")?.parse().ok()).collect()
}

/// Complete WAL checkpoints (`checkpoint.N`) in `state/wal`, by number.
pub fn wal_checkpoints(state: &Path) -> Vec<u64> {
    names(&state.join("wal")).iter().filter_map(|n| n.strip_prefix("checkpoint.")?.parse().ok()).collect()
}
