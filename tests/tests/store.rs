//! The durable store with the real binaries: a corrupt WAL tail is repaired,
//! data cut into blocks and checkpointed survives SIGKILL, retention deletes
//! old blocks and WAL segments on schedule.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_aggregator::store::chunk::ChunkIter;
use herd_aggregator::wal::{self, WalRecord};
use herd_tests::store::*;
use herd_tests::*;

fn addresses() -> (SocketAddr, SocketAddr) {
    (
        format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
    )
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.metadata().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Timestamps of `node_load1{instance}` samples a WAL directory holds, and its
/// record count (replayed from a copy, so the original is left as it is).
fn wal_times(wal_dir: &Path, instance: &str) -> (BTreeSet<i64>, u64) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(wal_dir, copy.path());
    let mut refs = HashSet::new();
    let mut times = BTreeSet::new();
    let stats = wal::replay(copy.path(), |record| match record {
        WalRecord::Series { series_ref, labels } => {
            if labels.metric_name() == Some("node_load1") && labels.get("instance") == Some(instance) {
                refs.insert(series_ref);
            }
        }
        WalRecord::Samples { timestamp_ms, samples, .. } => {
            if samples.iter().any(|(r, _)| refs.contains(r)) {
                times.insert(timestamp_ms);
            }
        }
        WalRecord::HeadChunk { series_ref, count, bytes } => {
            if refs.contains(&series_ref) {
                times.extend(ChunkIter::new(&bytes, count).map(|s| s.timestamp_ms));
            }
        }
        WalRecord::SeqRanges { .. } => {}
    })
    .unwrap();
    (times, stats.records)
}

fn query_times(aggregator: &Aggregator, instance: &str) -> BTreeSet<i64> {
    sample_times(aggregator, &format!("node_load1{{instance=\"{instance}\"}}"), "30m").into_iter().collect()
}

#[test]
fn a_corrupt_last_wal_record_is_repaired_and_everything_before_it_is_queryable() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("w");
    let (http, quic) = addresses();
    let mut aggregator = start_aggregator_with_storage(&pki, work.path(), "agg", http, quic, "");
    let config = agent_config(work.path(), &pki, "w", quic, "100ms");
    let mut agent = start_agent(work.path(), "w", &config);
    wait_for(Duration::from_secs(15), || (query_times(&aggregator, "w").len() >= 20).then_some(()))
        .unwrap_or_else(|| panic!("no data from the agent:\n{}", aggregator.process.log()));
    agent.kill();
    aggregator.process.kill();

    let state = state_dir(work.path(), "agg");
    let wal_dir = state.join("wal");
    let (intact, intact_records) = wal_times(&wal_dir, "w");
    // Flip the last byte of the newest non-empty segment: its last record's checksum fails.
    let last = wal_segments(&state)
        .into_iter()
        .rev()
        .map(|n| wal_dir.join(format!("{n:08}.seg")))
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .expect("a non-empty WAL segment");
    let mut bytes = std::fs::read(&last).unwrap();
    *bytes.last_mut().unwrap() ^= 0x5a;
    std::fs::write(&last, bytes).unwrap();
    let (expected, records) = wal_times(&wal_dir, "w");
    assert_eq!(records, intact_records - 1, "exactly the last record is lost");
    assert!(expected.len() >= 19 && expected.is_subset(&intact));

    let aggregator = start_aggregator_with_storage(&pki, work.path(), "agg", http, quic, "");
    assert!(aggregator.process.log().contains("cutting off the end of a WAL segment"), "{}", aggregator.process.log());
    assert_eq!(query_times(&aggregator, "w"), expected);
}

#[test]
fn data_cut_into_blocks_and_checkpointed_survives_sigkill() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("w");
    let (http, quic) = addresses();
    let storage = "block_duration = \"2s\"\ncheck_interval = \"200ms\"\nretention_time = \"1h\"\n";
    let mut aggregator = start_aggregator_with_storage(&pki, work.path(), "agg", http, quic, storage);
    let state = state_dir(work.path(), "agg");
    let config = agent_config(work.path(), &pki, "w", quic, "100ms");
    let mut agent = start_agent(work.path(), "w", &config);
    // Wait for two blocks and a checkpoint that replaced the first segment.
    wait_for(Duration::from_secs(30), || {
        (blocks(&state).len() >= 2 && !wal_checkpoints(&state).is_empty() && !wal_segments(&state).contains(&0))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no blocks or checkpoint: {:?}\n{}", blocks(&state), aggregator.process.log()));
    agent.kill();
    // Everything the agent got acknowledged is synced by now; the store holds nothing else.
    std::thread::sleep(Duration::from_millis(1500));
    let before = query_times(&aggregator, "w");
    assert!(before.len() >= 30, "{}", before.len());
    aggregator.process.kill();

    let aggregator = start_aggregator_with_storage(&pki, work.path(), "agg", http, quic, storage);
    let after = query_times(&aggregator, "w");
    let missing: Vec<&i64> = before.difference(&after).collect();
    assert!(missing.is_empty(), "lost after restart: {missing:?}\n{}", aggregator.process.log());
    assert_eq!(after, before, "nothing appears that was not there");
    assert!(aggregator.process.log().contains("blocks loaded"));
}

#[test]
fn retention_deletes_old_blocks_and_wal_segments_and_keeps_recent_data() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("w");
    let (http, quic) = addresses();
    let storage = "block_duration = \"2s\"\ncheck_interval = \"200ms\"\nretention_time = \"6s\"\n";
    let aggregator = start_aggregator_with_storage(&pki, work.path(), "agg", http, quic, storage);
    let state = state_dir(work.path(), "agg");
    let config = agent_config(work.path(), &pki, "w", quic, "100ms");
    let _agent = start_agent(work.path(), "w", &config);
    let started = now_ms();
    let mut max_blocks = 0;
    let mut max_block_bytes = 0;
    // 16 s of data with 6 s of retention: the first samples must be gone.
    let times = wait_for(Duration::from_secs(40), || {
        max_blocks = max_blocks.max(blocks(&state).len());
        max_block_bytes = max_block_bytes.max(tree_bytes(&state.join("blocks")));
        let times = query_times(&aggregator, "w");
        let newest = *times.last()?;
        (newest > started + 16_000).then_some(times)
    })
    .unwrap_or_else(|| panic!("agent data did not arrive:\n{}", aggregator.process.log()));
    let (oldest, newest) = (*times.first().unwrap(), *times.last().unwrap());
    // Whole blocks go: at most retention + one block span + a check interval of margin is kept.
    assert!(oldest > newest - 6_000 - 2_000 - 1_500, "oldest {oldest} newest {newest}");
    assert!(oldest > started + 4_000, "old data still there: oldest {} ms after start", oldest - started);
    // Recent data stays, without gaps.
    assert!(covers(&times.iter().copied().collect::<Vec<_>>(), newest - 5_000, newest, 400), "gaps: {times:?}");
    assert!(max_blocks <= 6, "blocks on disk not bounded: {max_blocks}");
    assert!(max_block_bytes < 2 << 20, "{max_block_bytes} bytes of blocks");
    let segments = wal_segments(&state);
    assert!(!segments.contains(&0) && !wal_checkpoints(&state).is_empty(), "WAL not truncated: {segments:?}");
    // The store reports it in its self-metrics (recorded every 5 s).
    let deleted = wait_for(Duration::from_secs(10), || {
        latest_value(&aggregator, "herd_store_blocks_deleted_total").filter(|&v| v > 0.0)
    });
    assert!(deleted.is_some(), "herd_store_blocks_deleted_total not above 0");
}

#[test]
fn backfill_into_time_already_cut_into_blocks_is_stored_and_survives_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("live");
    pki.issue_agent("late");
    let (http, quic) = addresses();
    let storage = "block_duration = \"2s\"\ncheck_interval = \"200ms\"\nretention_time = \"1h\"\n";
    let mut aggregator = start_aggregator_with_storage(&pki, work.path(), "agg", http, quic, storage);
    let state = state_dir(work.path(), "agg");
    // "live" keeps the head moving (and blocks being cut) while "late" is cut off.
    let live = agent_config(work.path(), &pki, "live", quic, "100ms");
    let _live = start_agent(work.path(), "live", &live);
    let relay = SwitchableRelay::start(quic, false);
    let late = agent_config(work.path(), &pki, "late", relay.addr, "100ms");
    let _late = start_agent(work.path(), "late", &late);
    let cut_off_at = now_ms();
    wait_for(Duration::from_secs(30), || (blocks(&state).len() >= 3).then_some(()))
        .unwrap_or_else(|| panic!("no blocks cut: {}", aggregator.process.log()));
    assert!(query_times(&aggregator, "late").is_empty(), "the relay let something through");
    relay.set_open(true);
    let reconnected_at = now_ms();
    // Everything "late" buffered arrives, although its time range is in blocks already.
    let times = wait_for(Duration::from_secs(40), || {
        let times: Vec<i64> = query_times(&aggregator, "late").into_iter().collect();
        (times.first().is_some_and(|&t| t < cut_off_at + 1_000) && covers(&times, times[0], reconnected_at, 400))
            .then_some(times)
    })
    .unwrap_or_else(|| {
        panic!(
            "backfill incomplete: {:?}",
            gaps(&query_times(&aggregator, "late").into_iter().collect::<Vec<_>>(), 400)
        )
    });
    assert!(times.len() >= 30, "{} samples", times.len());
    // The backfilled samples get cut into blocks of their own and survive SIGKILL.
    wait_for(Duration::from_secs(20), || {
        let log = aggregator.process.log();
        (log.matches("head cut into a block").count() >= 6).then_some(())
    })
    .unwrap_or_else(|| panic!("no further cuts: {}", aggregator.process.log()));
    drop(relay);
    aggregator.process.kill();
    let aggregator = start_aggregator_with_storage(&pki, work.path(), "agg", http, quic, storage);
    let after = query_times(&aggregator, "late");
    let missing: Vec<&i64> = times.iter().filter(|t| !after.contains(t)).collect();
    assert!(missing.is_empty(), "backfilled samples lost after restart: {missing:?}");
}
