//! How soon agents are back after their aggregator returns: at once after a
//! restart that their connections outlived (the restarted aggregator resets
//! them statelessly, with the reset key kept in its state directory), and
//! within seconds after an outage long enough for their backoff to have
//! grown (they probe an aggregator that sends nothing back continuously).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herd_tests::loadgen::{Fleet, FleetSpec};
use herd_tests::*;

const AGENTS: usize = 5;

struct Setup {
    work: tempfile::TempDir,
    pki: Pki,
    http: SocketAddr,
    quic: SocketAddr,
    runtime: tokio::runtime::Runtime,
    fleet: Fleet,
}

impl Setup {
    fn new(uplink_extra: &str) -> (Self, Aggregator) {
        let work = tempfile::tempdir().unwrap();
        let pki = Pki::create(work.path().join("pki"));
        let ca = herd_common::tls::read_pair(&pki.path("ca.pem"), &pki.path("ca-key.pem")).unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let aggregator = Aggregator::start_at(&pki, work.path(), "agg", http, quic);
        let spec = FleetSpec {
            agents: AGENTS,
            series_per_agent: 10,
            interval: Duration::from_millis(250),
            endpoint: quic,
            server_name: "localhost".into(),
            prefix: "sim".into(),
            state_dir: work.path().join("agents"),
            uplink_extra: uplink_extra.into(),
            labels: vec![],
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let fleet = runtime.block_on(Fleet::start(&spec, &ca)).unwrap();
        let connected = wait_for(Duration::from_secs(30), || (fleet.totals().connected == AGENTS as u64).then_some(()));
        assert!(connected.is_some(), "agents connected: {:?}\n{}", fleet.totals(), aggregator.process.log());
        (Self { work, pki, http, quic, runtime, fleet }, aggregator)
    }

    /// Starts the aggregator again and asserts that every agent has
    /// reconnected (beyond the `before` connects) within `limit` seconds.
    fn restart_and_expect_all_back(self, before: u64, limit: f64, why: &str) {
        let aggregator = Aggregator::start_at(&self.pki, self.work.path(), "agg", self.http, self.quic);
        let started = Instant::now();
        let back = wait_for(Duration::from_secs(40), || {
            (self.fleet.totals().connects >= before + AGENTS as u64).then(|| started.elapsed().as_secs_f64())
        });
        let totals = self.fleet.totals();
        assert!(
            back.is_some_and(|seconds| seconds < limit),
            "every agent is back within {limit} s of the restart, {why}: {back:?} {totals:?}\n{}",
            aggregator.process.log()
        );
        self.runtime.block_on(self.fleet.stop());
    }
}

#[test]
fn agents_reconnect_at_once_after_a_restart_their_connections_outlived() {
    // The agents' idle timeout (30 s by default) outlasts the restart: they
    // learn the old connection is gone from the new process's stateless reset.
    let (setup, mut aggregator) = Setup::new("");
    let before = setup.fleet.totals().connects;
    aggregator.process.kill();
    drop(aggregator);
    setup.restart_and_expect_all_back(before, 5.0, "not at its 30 s idle timeout");
}

#[test]
fn agents_are_back_within_seconds_after_a_long_outage() {
    // A short idle timeout notices the loss quickly; a long backoff would
    // keep the agents away for most of 16 s after their first silent attempt
    // if silent attempts were paced by it.
    let (setup, mut aggregator) =
        Setup::new("idle_timeout = \"2s\"\nbackoff_initial = \"8s\"\nbackoff_max = \"30s\"\n");
    let before = setup.fleet.totals().connects;
    aggregator.process.kill();
    drop(aggregator);
    let lost = wait_for(Duration::from_secs(10), || (setup.fleet.totals().connected == 0).then_some(()));
    assert!(lost.is_some(), "agents notice the loss: {:?}", setup.fleet.totals());
    // Past the first backoff (8 s ± 20 %) and the first silent attempts.
    std::thread::sleep(Duration::from_secs(13));
    setup.restart_and_expect_all_back(before, 3.0, "not after its grown backoff");
}
