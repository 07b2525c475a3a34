//! Alert state across a crash: the aggregator is SIGKILLed while one alert
//! is pending and another is firing and already notified through the
//! built-in router. After the restart the pending alert fires when its
//! `for:` ends counted from when it became pending before the crash (not
//! from the restart), and the firing one is not notified again before its
//! repeat interval.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_tests::router::{WebhookRecorder, start_aggregator_with_router};
use herd_tests::{Pki, free_tcp_port, free_udp_port, wait_for};
use serde_json::Value as Json;

const RULES: &str = r#"
groups:
  - name: restart
    rules:
      - alert: AlreadyFiring
        expr: vector(1)
        for: 1s
      - alert: StillPending
        expr: vector(1)
        for: 20s
"#;

/// (arrival, alert name) of every firing alert notified so far.
fn firing(hook: &WebhookRecorder) -> Vec<(SystemTime, String)> {
    let mut out = Vec::new();
    for (at, body) in hook.received() {
        for alert in body["alerts"].as_array().into_iter().flatten() {
            if alert["status"] == "firing" {
                out.push((at, alert["labels"]["alertname"].as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    out
}

fn active_at(http: SocketAddr, name: &str) -> Option<SystemTime> {
    let (_, body) = herd_tests::http_get(&format!("http://{http}/api/v1/alerts"))?;
    let json: Json = serde_json::from_str(&body).ok()?;
    let alert = json["data"]["alerts"].as_array()?.iter().find(|a| a["labels"]["alertname"] == name)?.clone();
    let text = alert["activeAt"].as_str()?;
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(parsed.unix_timestamp_nanos() as u64))
}

#[test]
fn a_pending_alert_fires_on_time_and_a_firing_one_is_not_renotified_after_a_kill() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let hook = WebhookRecorder::start();
    let rules = work.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let router_config = work.path().join("alertmanager.yml");
    std::fs::write(&router_config, hook.route_by_alertname("0s", "1s", "1h")).unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let mut aggregator = start_aggregator_with_router(&pki, work.path(), "agg", http, quic, &rules, &router_config);

    wait_for(Duration::from_secs(15), || firing(&hook).iter().any(|(_, name)| name == "AlreadyFiring").then_some(()))
        .expect("AlreadyFiring was never notified");
    let pending_since = wait_for(Duration::from_secs(5), || active_at(http, "StillPending")).expect("no pending alert");
    // Let the notification log and alert state reach the disk, then crash well inside `for:`.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!firing(&hook).iter().any(|(_, name)| name == "StillPending"), "fired too early");
    aggregator.process.kill();
    drop(aggregator);
    std::thread::sleep(Duration::from_secs(2));
    let restarted = SystemTime::now();
    let aggregator = start_aggregator_with_router(&pki, work.path(), "agg", http, quic, &rules, &router_config);

    let (fired_at, _) =
        wait_for(Duration::from_secs(40), || firing(&hook).into_iter().find(|(_, name)| name == "StillPending"))
            .unwrap_or_else(|| panic!("StillPending never fired after the restart:\n{}", aggregator.process.log()));
    let after = fired_at.duration_since(pending_since).unwrap();
    assert!(
        after >= Duration::from_secs(20) && after < Duration::from_secs(24),
        "StillPending fired {after:?} after it became pending (for: 20s); restart was {:?} after that",
        restarted.duration_since(pending_since).unwrap()
    );
    assert_eq!(active_at(http, "StillPending"), Some(pending_since), "activeAt kept across the crash");
    // A few evaluations more: the firing alert is not notified again (repeat_interval 1h).
    std::thread::sleep(Duration::from_secs(3));
    let repeats = firing(&hook).iter().filter(|(_, name)| name == "AlreadyFiring").count();
    assert_eq!(repeats, 1, "AlreadyFiring was notified again after the restart:\n{:#?}", hook.bodies());
}
