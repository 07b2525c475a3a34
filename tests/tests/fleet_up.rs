//! `up{job, instance}` from the fleet, and query cost limits from the
//! config, through the real binaries.

use std::time::{Duration, Instant};

use herd_tests::*;

fn up(aggregator: &Aggregator, job: &str, instance: &str) -> Option<f64> {
    latest_value(aggregator, &format!(r#"up{{job="{job}",instance="{instance}"}}"#))
}

#[test]
fn up_follows_the_agent_and_an_absent_agent_stays_down_across_restarts() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("web-1");
    let (http, quic) = loopback_addresses();
    let aggregator = Aggregator::start_at(&pki, work.path(), "aggregator", http, quic);
    let config = agent_config(work.path(), &pki, "web-1", quic, "1s");
    let mut agent = start_agent(work.path(), "web-1", &config);
    wait_for(Duration::from_secs(15), || (up(&aggregator, "node", "web-1") == Some(1.0)).then_some(()))
        .expect("up{job=node} never became 1");
    assert_eq!(up(&aggregator, "herd", "web-1"), Some(1.0), "every job the agent reports has up");

    // A killed agent says nothing: the link's silence timeout (4 heartbeats of 1 s) ends it.
    agent.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(20), || (up(&aggregator, "node", "web-1") == Some(0.0)).then_some(()))
        .expect("up did not drop to 0 after the agent was killed");
    let elapsed = killed.elapsed();
    assert!(elapsed < Duration::from_secs(10), "up 0 took {elapsed:?}");

    // A restarted aggregator still knows the agent and reports it down.
    drop(aggregator);
    let restart_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let aggregator = Aggregator::start_at(&pki, work.path(), "aggregator", http, quic);
    wait_for(Duration::from_secs(10), || {
        let samples = series_samples(&aggregator, r#"up{job="node",instance="web-1"}"#);
        samples.iter().any(|&(t, v)| t >= restart_ms && v == 0.0).then_some(())
    })
    .expect("the absent agent is not reported down after a restart");

    let _agent = start_agent(work.path(), "web-1", &config);
    wait_for(Duration::from_secs(15), || (up(&aggregator, "node", "web-1") == Some(1.0)).then_some(()))
        .expect("up did not come back to 1 when the agent reconnected");
}

#[test]
fn query_cost_limits_come_from_the_config_and_the_aggregator_keeps_serving() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("web-1");
    let (http, quic) = loopback_addresses();
    let aggregator =
        Aggregator::start_configured(&pki, work.path(), "aggregator", http, quic, "[query]\nmax_series = 20\n");
    let _agent = start_agent(work.path(), "web-1", &agent_config(work.path(), &pki, "web-1", quic, "1s"));
    wait_for(Duration::from_secs(15), || latest_value(&aggregator, "node_load1")).expect("no data");

    let (status, body) =
        aggregator.get(&format!("/api/v1/query?query={}", encode(r#"{__name__=~"node_.+"}"#))).unwrap();
    assert_eq!(status, 422, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["errorType"], "execution", "{body}");
    assert!(error["error"].as_str().unwrap().contains("series"), "{body}");
    // Small queries still answer.
    assert!(latest_value(&aggregator, "node_load1").is_some());
    assert_eq!(aggregator.get("/-/healthy").unwrap().0, 200);
}
