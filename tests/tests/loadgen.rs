//! The load generator against a real aggregator: its simulated agents are
//! real fleet members (their own certificates and trusted labels, sequence
//! numbers and acks), and an aggregator restart loses none of their samples.

use std::net::SocketAddr;
use std::time::Duration;

use herd_tests::loadgen::{Fleet, FleetSpec};
use herd_tests::*;

const AGENTS: usize = 20;
const SERIES: usize = 40;

#[test]
fn simulated_agents_deliver_every_sample_across_an_aggregator_restart() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let ca = herd_common::tls::read_pair(&pki.path("ca.pem"), &pki.path("ca-key.pem")).unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let mut aggregator = Aggregator::start_at(&pki, work.path(), "agg", http, quic);
    let spec = FleetSpec {
        agents: AGENTS,
        series_per_agent: SERIES,
        interval: Duration::from_millis(250),
        endpoint: quic,
        server_name: "localhost".into(),
        prefix: "sim".into(),
        state_dir: work.path().join("agents"),
        uplink_extra: "backoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n".into(),
        labels: vec![("role".into(), "postgres".into())],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fleet = runtime.block_on(Fleet::start(&spec, &ca)).unwrap();

    let connected = wait_for(Duration::from_secs(30), || (fleet.totals().connected == AGENTS as u64).then_some(()));
    assert!(connected.is_some(), "agents connected: {:?}\n{}", fleet.totals(), aggregator.process.log());
    // Every agent's series arrive under its certificate's name and trusted labels.
    let series = wait_for(Duration::from_secs(20), || {
        let count = latest_value(
            &aggregator,
            r#"count({__name__=~"node_.*|pg_.*|http_.*|redis_.*", instance=~"sim-.*", role="postgres"})"#,
        )?;
        (count as usize >= AGENTS * SERIES).then_some(count)
    });
    assert_eq!(series, Some((AGENTS * SERIES) as f64), "series stored: {:?}", fleet.totals());
    let per_agent = latest_value(
        &aggregator,
        r#"count(count by (instance) ({__name__=~"pg_.*", instance=~"sim-.*", role="postgres"}))"#,
    );
    assert_eq!(per_agent, Some(AGENTS as f64));

    // The aggregator goes away for a few seconds; the agents buffer, reconnect and backfill.
    aggregator.process.kill();
    drop(aggregator);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        fleet.totals().buffered_batches >= AGENTS as u64 * 4,
        "agents buffer while it is away: {:?}",
        fleet.totals()
    );
    let aggregator = Aggregator::start_at(&pki, work.path(), "agg", http, quic);
    std::thread::sleep(Duration::from_secs(2));
    fleet.stop_generating();
    let drained = wait_for(Duration::from_secs(30), || {
        let totals = fleet.totals();
        (totals.buffered_batches == 0 && totals.connected == AGENTS as u64).then_some(totals)
    });
    let totals = drained.unwrap_or_else(|| panic!("batches left unacknowledged: {:?}", fleet.totals()));
    assert!(totals.backfilled_batches > 0, "the backlog was backfilled: {totals:?}");

    // Stored exactly what was generated: one probe series per agent, none lost, none twice.
    let batches = totals.generated_samples / SERIES as u64;
    let stored = latest_value(
        &aggregator,
        r#"sum(count_over_time(node_memory_MemAvailable_bytes{numa="0", instance=~"sim-.*"}[10m]))"#,
    );
    assert_eq!(stored, Some(batches as f64), "{totals:?}");
    runtime.block_on(fleet.stop());
}
