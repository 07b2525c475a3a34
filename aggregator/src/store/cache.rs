//! Decompressed block frames kept in memory for reads, bounded in bytes and
//! shared by every block of a store. Eviction is CLOCK (a frame read since
//! the hand last passed gets a second chance), which keeps hot frames
//! through a scan without an ordered list to update on every hit. No I/O
//! here: `block.rs` reads and decompresses, this only keeps the results.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// (block number, frame number).
pub type FrameKey = (u64, u32);

struct Entry {
    bytes: Arc<[u8]>,
    referenced: bool,
}

#[derive(Default)]
struct Frames {
    map: HashMap<FrameKey, Entry>,
    /// The clock: keys in insertion order, the hand at the front.
    clock: VecDeque<FrameKey>,
    bytes: u64,
}

/// Cache figures for self-monitoring.
#[derive(Debug, Default)]
pub struct FrameCacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

pub struct FrameCache {
    capacity_bytes: u64,
    frames: Mutex<Frames>,
    next_block: AtomicU64,
    pub counters: FrameCacheCounters,
}

impl FrameCache {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_bytes,
            frames: Mutex::default(),
            next_block: AtomicU64::new(0),
            counters: FrameCacheCounters::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.frames.lock().expect("frame cache lock is never poisoned")
    }

    /// A number no other open block has, for its keys.
    pub fn block_number(&self) -> u64 {
        self.next_block.fetch_add(1, Ordering::Relaxed)
    }

    pub fn get(&self, key: FrameKey) -> Option<Arc<[u8]>> {
        let mut frames = self.lock();
        let found = frames.map.get_mut(&key).map(|entry| {
            entry.referenced = true;
            Arc::clone(&entry.bytes)
        });
        drop(frames);
        let counter = if found.is_some() { &self.counters.hits } else { &self.counters.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `bytes` under `key`, evicting other frames to stay within the
    /// capacity. A frame larger than the whole capacity is not kept.
    pub fn insert(&self, key: FrameKey, bytes: Arc<[u8]>) {
        let size = bytes.len() as u64;
        if size > self.capacity_bytes {
            return;
        }
        let mut frames = self.lock();
        if frames.map.contains_key(&key) {
            return;
        }
        while frames.bytes + size > self.capacity_bytes {
            let Some(hand) = frames.clock.pop_front() else { break };
            match frames.map.get_mut(&hand) {
                Some(entry) if entry.referenced => {
                    entry.referenced = false;
                    frames.clock.push_back(hand);
                }
                Some(_) => {
                    let entry = frames.map.remove(&hand).expect("present above");
                    frames.bytes -= entry.bytes.len() as u64;
                }
                None => {}
            }
        }
        frames.bytes += size;
        frames.map.insert(key, Entry { bytes, referenced: false });
        frames.clock.push_back(key);
    }

    /// Drops the frames of a block that is gone.
    pub fn forget_block(&self, block: u64) {
        let mut frames = self.lock();
        let mut freed = 0;
        frames.map.retain(|key, entry| {
            let keep = key.0 != block;
            if !keep {
                freed += entry.bytes.len() as u64;
            }
            keep
        });
        frames.bytes -= freed;
        frames.clock.retain(|key| key.0 != block);
    }

    /// Bytes of frames held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_again_survive_a_scan_and_the_capacity_holds() {
        let cache = FrameCache::new(1000);
        let frame = |n: usize| Arc::<[u8]>::from(vec![0u8; n]);
        cache.insert((0, 0), frame(300));
        cache.insert((0, 1), frame(300));
        assert!(cache.get((0, 0)).is_some());
        for i in 2..10 {
            cache.insert((0, i), frame(300));
            assert!(cache.bytes() <= 1000);
        }
        assert!(cache.get((0, 1)).is_none(), "evicted");
        cache.insert((1, 0), frame(2000));
        assert!(cache.get((1, 0)).is_none(), "larger than the whole cache");
        cache.forget_block(0);
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.counters.misses.load(Ordering::Relaxed), 2);
    }
}
