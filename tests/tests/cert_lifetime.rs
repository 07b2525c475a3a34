//! Short-lived agent certificates: rotation during a run without a gap or a
//! duplicate, the re-enroll instruction after an expiry while away, and
//! revocation of a connected agent (closed within a second, refused after,
//! still refused after an aggregator restart).

use std::time::{Duration, Instant};

use herd_tests::identity::{
    aggregator_with_admin, connected, enroll, enrolled_config, fingerprint, restart, token_create,
};
use herd_tests::{Pki, latest_value, run_cli, sample_times, start_agent, wait_for};

#[test]
fn certificates_rotate_without_a_gap_and_an_expired_one_must_re_enroll() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    // A documented key, shortened: renewal every four seconds or so.
    let (aggregator, admin) = aggregator_with_admin(&pki, work.path(), "[identity]\nagent_cert_lifetime = \"6s\"\n");
    let token = token_create(&aggregator, &admin, &["--labels", "role=web", "--uses", "1"]);
    let (ok, output, enrollment) = enroll(work.path(), &aggregator, "rot-1", &token, &fingerprint(&pki));
    assert!(ok, "{output}");
    let first_cert = std::fs::read_to_string(enrollment.files().1).unwrap();
    let config = enrolled_config(work.path(), "rot-1", &enrollment, aggregator.quic, "");
    let mut agent = start_agent(work.path(), "rot-1", &config);

    let started = Instant::now();
    let renewed = wait_for(Duration::from_secs(40), || {
        let signed = aggregator.self_metric("herd_cert_renewals_total") >= 3.0;
        (signed && agent.log().matches("agent certificate renewed").count() >= 3).then_some(())
    });
    assert!(renewed.is_some(), "fewer than 3 renewals in 40 s:\n{}\n{}", agent.log(), aggregator.process.log());
    assert_ne!(std::fs::read_to_string(enrollment.files().1).unwrap(), first_cert, "the files were replaced");
    // Every sample of the run is there once, at the collection interval.
    std::thread::sleep(Duration::from_secs(1));
    let times = sample_times(&aggregator, r#"node_load1{instance="rot-1",role="web"}"#, "5m");
    assert!(times.windows(2).all(|w| w[0] < w[1]), "a timestamp stored twice: {times:?}");
    // Resent batches are recognised by sequence number and stored once; a sample
    // that reached the store twice anyway would be counted here.
    let duplicates = wait_for(Duration::from_secs(10), || {
        latest_value(&aggregator, r#"herd_store_duplicate_samples_ignored_total{job="herd-aggregator"}"#)
    });
    assert_eq!(duplicates, Some(0.0), "samples were sent twice across the renewals");
    let run_ms = started.elapsed().as_millis() as i64;
    let expected = run_ms / 500;
    assert!(times.len() as i64 >= expected - 2, "{} samples over {run_ms} ms at 500 ms: {times:?}", times.len());
    assert!(herd_tests::gaps(&times, 1500).is_empty(), "gaps: {:?}", herd_tests::gaps(&times, 1500));
    assert_eq!(aggregator.self_metric(r#"herd_cert_renewals_refused_total{reason="already_renewed"}"#), 0.0);

    // Away for longer than the lifetime: refused, and the log says what to do.
    agent.kill();
    std::thread::sleep(Duration::from_secs(7));
    let agent = start_agent(work.path(), "rot-1", &config);
    let told = wait_for(Duration::from_secs(10), || agent.log().contains("this agent must re-enroll").then_some(()));
    assert!(told.is_some(), "{}", agent.log());
    let line = agent.log().lines().find(|l| l.contains("must re-enroll")).unwrap().to_owned();
    assert!(line.contains("herd-agent enroll --aggregator"), "one line with the instruction: {line}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(connected(&aggregator, "rot-1"), Some(false), "the expired certificate is refused");
    assert!(aggregator.self_metric("herd_ingest_handshake_failures_total") >= 1.0);
}

#[test]
fn a_revoked_agent_is_disconnected_within_a_second_and_stays_refused_after_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let (aggregator, admin) = aggregator_with_admin(&pki, work.path(), "");
    let token = token_create(&aggregator, &admin, &["--uses", "1"]);
    let (ok, output, enrollment) = enroll(work.path(), &aggregator, "rv-1", &token, &fingerprint(&pki));
    assert!(ok, "{output}");
    let config = enrolled_config(work.path(), "rv-1", &enrollment, aggregator.quic, "");
    let agent = start_agent(work.path(), "rv-1", &config);
    assert!(wait_for(Duration::from_secs(20), || connected(&aggregator, "rv-1").filter(|&c| c)).is_some());

    let url = format!("http://{}", aggregator.http);
    let (ok, out, err) =
        run_cli("herd-aggregator", &["cert", "revoke", "--url", &url, "--token-file", admin.file_arg(), "rv-1"]);
    assert!(ok, "{out}{err}");
    let revoked_at = Instant::now();
    let gone = wait_for(Duration::from_secs(3), || connected(&aggregator, "rv-1").filter(|&c| !c));
    assert!(
        gone.is_some() && revoked_at.elapsed() < Duration::from_secs(1),
        "still connected after {:?}",
        revoked_at.elapsed()
    );
    let closed = r#"herd_identity_connections_closed_total{reason="revoked"}"#;
    // The agent keeps trying (backoff at most 500 ms) and is refused each time.
    assert!(wait_for(Duration::from_secs(5), || (aggregator.self_metric(closed) >= 3.0).then_some(())).is_some());
    assert_eq!(connected(&aggregator, "rv-1"), Some(false));
    let (ok, list, _) = run_cli("herd-aggregator", &["cert", "list", "--url", &url, "--token-file", admin.file_arg()]);
    assert!(ok && list.lines().any(|l| l.starts_with("rv-1") && l.contains("revoked")), "{list}");

    let aggregator = restart(&pki, work.path(), aggregator, &admin, "");
    assert!(
        wait_for(Duration::from_secs(5), || (aggregator.self_metric(closed) >= 2.0).then_some(())).is_some(),
        "refused after the restart too:\n{}",
        aggregator.process.log()
    );
    assert_ne!(connected(&aggregator, "rv-1"), Some(true));
    assert!(agent.log().contains("certificate revoked"), "{}", agent.log());
}
