//! Which batch sequence numbers each agent has had stored durably, so a
//! resent batch is acknowledged again but stored once. Kept as ranges per
//! agent: live-first delivery fills gaps from both ends, which merge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A set of u64 kept as disjoint inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqSet {
    /// start → end, inclusive, disjoint and non-adjacent.
    ranges: BTreeMap<u64, u64>,
}

impl SeqSet {
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges.range(..=seq).next_back().is_some_and(|(_, &end)| seq <= end)
    }

    /// Adds `seq`; returns false if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        let mut start = seq;
        let mut end = seq;
        if let Some((&s, &e)) = self.ranges.range(..seq).next_back()
            && e.checked_add(1) == Some(seq)
        {
            start = s;
            self.ranges.remove(&s);
        }
        if let Some(next) = seq.checked_add(1)
            && let Some(e) = self.ranges.remove(&next)
        {
            end = e;
        }
        self.ranges.insert(start, end);
        true
    }

    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Adds every sequence in `start..=end`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        let (mut first, mut last) = (start.min(end), start.max(end));
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=last.saturating_add(1))
            .filter(|&(_, &e)| e.saturating_add(1) >= first)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            first = first.min(s);
            last = last.max(e);
        }
        self.ranges.insert(first, last);
    }

    /// The inclusive ranges, ascending.
    pub fn to_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(&s, &e)| (s, e)).collect()
    }
}

#[derive(Debug, Default)]
pub struct Dedup {
    agents: Mutex<HashMap<String, SeqSet>>,
}

impl Dedup {
    pub fn contains(&self, agent: &str, seq: u64) -> bool {
        self.agents.lock().expect("dedup lock is never poisoned").get(agent).is_some_and(|set| set.contains(seq))
    }

    /// Adds a range of sequences (WAL checkpoint replay).
    pub fn insert_range(&self, agent: &str, start: u64, end: u64) {
        let mut agents = self.agents.lock().expect("dedup lock is never poisoned");
        agents.entry(agent.to_owned()).or_default().insert_range(start, end);
    }

    /// Every agent's ranges (for a WAL checkpoint).
    pub fn snapshot(&self) -> Vec<(String, Vec<(u64, u64)>)> {
        let agents = self.agents.lock().expect("dedup lock is never poisoned");
        agents.iter().map(|(agent, set)| (agent.clone(), set.to_ranges())).collect()
    }

    pub fn insert(&self, agent: &str, seq: u64) -> bool {
        let mut agents = self.agents.lock().expect("dedup lock is never poisoned");
        match agents.get_mut(agent) {
            Some(set) => set.insert(seq),
            None => agents.entry(agent.to_owned()).or_default().insert(seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_from_both_sides() {
        let mut set = SeqSet::default();
        for seq in [10, 12, 20, 11, 21, 19, 5] {
            assert!(set.insert(seq));
        }
        assert!(!set.insert(11));
        assert_eq!(set.ranges(), 3, "{set:?}"); // 5, 10..=12, 19..=21
        for seq in [5, 10, 11, 12, 19, 20, 21] {
            assert!(set.contains(seq));
        }
        for seq in [4, 6, 9, 13, 18, 22, u64::MAX] {
            assert!(!set.contains(seq));
        }
        assert!(set.insert(u64::MAX));
        assert!(set.insert(0));
        let mut ranges = SeqSet::default();
        for (start, end) in [(10, 12), (20, 30), (13, 19), (40, 41), (0, 2)] {
            ranges.insert_range(start, end);
        }
        assert_eq!(ranges.to_ranges(), vec![(0, 2), (10, 30), (40, 41)]);
    }
}
