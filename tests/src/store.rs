//! Harness pieces for the store's tests: an aggregator with a `[storage]`
//! section, and looks at its state directory (blocks, WAL segments, checkpoints).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Aggregator, Pki};

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
    Aggregator::start_configured(pki, work, name, http, quic, &format!("[storage]\n{storage}\n"))
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

/// A UDP relay to `target` that can be cut (drops everything) and restored:
/// an agent behind it buffers while cut, then backfills.
pub struct SwitchableRelay {
    pub addr: SocketAddr,
    pub open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SwitchableRelay {
    pub fn start(target: SocketAddr, open: bool) -> Self {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind relay front"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind relay back"));
        back.connect(target).expect("connect relay back");
        for socket in [&front, &back] {
            socket.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        }
        let addr = front.local_addr().expect("relay address");
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let open = Arc::new(AtomicBool::new(open));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for to_target in [true, false] {
            let (front, back, client, open, stop) =
                (Arc::clone(&front), Arc::clone(&back), Arc::clone(&client), Arc::clone(&open), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if to_target {
                        if let Ok((n, from)) = front.recv_from(&mut buf) {
                            *client.lock().expect("relay lock") = Some(from);
                            if open.load(Ordering::Relaxed) {
                                let _ = back.send(&buf[..n]);
                            }
                        }
                    } else if let Ok(n) = back.recv(&mut buf) {
                        let to = *client.lock().expect("relay lock");
                        if let Some(to) = to
                            && open.load(Ordering::Relaxed)
                        {
                            let _ = front.send_to(&buf[..n], to);
                        }
                    }
                }
            }));
        }
        Self { addr, open, stop, threads }
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SwitchableRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
