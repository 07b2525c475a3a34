//! Identity end to end: agents enroll with tokens (refused when the token is
//! reused, expired, revoked or the CA fingerprint is wrong), carry the
//! trusted labels bound at enrollment whatever they claim, and cannot write
//! under another agent's identity.

use std::time::Duration;

use herd_tests::identity::{aggregator_with_admin, enroll, enrolled_config, fingerprint, token_create};
use herd_tests::{
    Aggregator, Pki, agent_config, latest_value, run_cli, sample_times, start_agent, vector_result, wait_for,
};

fn refused_count(aggregator: &Aggregator, reason: &str) -> f64 {
    aggregator.self_metric(&format!("herd_enroll_refused_total{{reason=\"{reason}\"}}"))
}

#[test]
fn enrolled_agents_carry_their_trusted_labels_and_spent_tokens_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let (aggregator, admin) = aggregator_with_admin(&pki, work.path(), "");
    let pinned = fingerprint(&pki);
    assert!(pinned.starts_with("sha256:") && pinned.len() == 71, "{pinned}");

    let token =
        token_create(&aggregator, &admin, &["--labels", "role=postgres,env=prod", "--ttl", "1h", "--uses", "1"]);
    let (ok, output, enrollment) = enroll(work.path(), &aggregator, "db-1", &token, &pinned);
    assert!(ok, "enrollment failed:\n{output}");
    assert!(output.contains("enrolled as db-1 (trusted labels: env=prod,role=postgres)"), "{output}");
    let (_, _, key) = enrollment.files();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key is private");

    // The agent claims other labels and another instance in its config: the trusted ones win.
    let config = enrolled_config(
        work.path(),
        "db-1",
        &enrollment,
        aggregator.quic,
        "instance = \"web-9\"\nlabels = { role = \"web\", team = \"storage\" }",
    );
    let _agent = start_agent(work.path(), "db-1", &config);
    let series = wait_for(Duration::from_secs(20), || {
        let result = vector_result(&aggregator.query("node_load1"));
        (!result.is_empty()).then_some(result)
    })
    .unwrap_or_else(|| panic!("no data from the enrolled agent:\n{}", aggregator.process.log()));
    assert_eq!(series.len(), 1, "{series:?}");
    let metric = &series[0]["metric"];
    assert_eq!(metric["instance"], "db-1", "{metric}");
    assert_eq!(metric["role"], "postgres", "{metric}");
    assert_eq!(metric["env"], "prod", "{metric}");
    assert_eq!(metric["team"], "storage", "claimed labels that do not conflict stay: {metric}");
    let up =
        wait_for(Duration::from_secs(10), || latest_value(&aggregator, r#"up{job="node",role="postgres",env="prod"}"#));
    assert_eq!(up, Some(1.0), "up carries the trusted labels");
    let (_, agents) = aggregator.get("/api/v1/agents").unwrap();
    assert!(agents.contains(r#""trustedLabels":{"env":"prod","role":"postgres"}"#), "{agents}");
    // The Fleet page shows both kinds of labels, and its filter matches the trusted ones.
    let fleet = |filter: &str| {
        let (status, page) = aggregator.get(&format!("/fleet?match={}", herd_tests::encode(filter))).unwrap();
        assert_eq!(status, 200, "{page}");
        page
    };
    let page = fleet("");
    assert!(page.contains("Trusted labels") && page.contains("Claimed labels"), "{page}");
    let row = page.split("<tbody>").nth(1).unwrap_or_default();
    assert!(row.contains(r#"<span class="k">role</span>=<span class="v">postgres</span>"#), "{row}");
    assert!(row.contains(r#"<span class="k">role</span>=<span class="v">web</span>"#), "the claim is shown: {row}");
    assert!(fleet(r#"{role="postgres"}"#).contains("1 of 1 agents shown"));
    assert!(fleet(r#"{role="web"}"#).contains("0 of 1 agents shown"), "the trusted role wins in the filter");
    // Remote-config selectors see the trusted labels, not the claimed ones.
    let body = work.path().join("body.toml");
    std::fs::write(&body, "[collect]\ninterval = \"1s\"\n").unwrap();
    let url = format!("http://{}", aggregator.http);
    let dry_run = |selector: &str| {
        let args = [
            "config",
            "push",
            "--profile",
            "p",
            "--selector",
            selector,
            "--dry-run",
            "--url",
            &url,
            "--token-file",
            admin.file_arg(),
        ];
        let (ok, out, err) = run_cli("herd-aggregator", &[&args[..], &[body.to_str().unwrap()]].concat());
        assert!(ok, "{out}{err}");
        out
    };
    assert!(dry_run(r#"{role="postgres"}"#).contains("would match 1 agent(s)"));
    assert!(dry_run(r#"{role="web"}"#).contains("would match 0 agent(s)"), "the claimed role does not count");
    assert!(
        dry_run(r#"{team="storage"}"#).contains("would match 0 agent(s)"),
        "a claimed label the certificate does not carry does not count either"
    );

    // Reused past its uses.
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-2", &token, &pinned);
    assert!(!ok && output.contains("token_used_up"), "{output}");
    // Expired.
    let short = token_create(&aggregator, &admin, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-3", &short, &pinned);
    assert!(!ok && output.contains("token_expired"), "{output}");
    // Revoked.
    let revoked = token_create(&aggregator, &admin, &[]);
    let url = format!("http://{}", aggregator.http);
    let id = revoked.split('.').next().unwrap();
    let (ok, out, err) =
        run_cli("herd-aggregator", &["token", "revoke", "--url", &url, "--token-file", admin.file_arg(), id]);
    assert!(ok, "{out}{err}");
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-4", &revoked, &pinned);
    assert!(!ok && output.contains("token_revoked"), "{output}");
    // A wrong fingerprint: the agent does not even send its token.
    let other = Pki::create(work.path().join("other-pki"));
    let good = token_create(&aggregator, &admin, &["--uses", "1"]);
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-5", &good, &fingerprint(&other));
    assert!(!ok && output.contains("--ca-fingerprint"), "{output}");
    let (ok, output, enrollment5) = enroll(work.path(), &aggregator, "db-5", &good, &pinned);
    assert!(ok, "the token survives a wrong fingerprint unused:\n{output}");
    assert!(enrollment5.files().1.exists());
    // A name that holds a valid certificate cannot be taken.
    let another = token_create(&aggregator, &admin, &[]);
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-1", &another, &pinned);
    assert!(!ok && output.contains("name_in_use"), "{output}");

    for reason in ["token_used_up", "token_expired", "token_revoked", "ca_fingerprint", "name_in_use"] {
        assert_eq!(refused_count(&aggregator, reason), 1.0, "{reason}");
    }
    assert_eq!(aggregator.self_metric("herd_enroll_issued_total"), 2.0);
    // In the store too, for rules to alert on.
    let stored = wait_for(Duration::from_secs(10), || {
        latest_value(&aggregator, r#"herd_enroll_refused_total{job="herd-aggregator",reason="ca_fingerprint"}"#)
    });
    assert_eq!(stored, Some(1.0));
    let (ok, list, err) =
        run_cli("herd-aggregator", &["token", "list", "--url", &url, "--token-file", admin.file_arg()]);
    assert!(ok, "{err}");
    assert!(list.contains("used_up") && list.contains("revoked") && list.contains("expired"), "{list}");
    assert!(!list.contains(token.split('.').nth(1).unwrap()), "secrets are never listed");
    let log = aggregator.process.log();
    for secret in [&token, &short, &revoked, &good] {
        assert!(!log.contains(secret.split('.').nth(1).unwrap()), "a token reached the log");
    }
}

#[test]
fn an_agent_cannot_write_under_another_identity_or_change_its_up() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("a");
    pki.issue_agent("b");
    let (aggregator, _admin) = aggregator_with_admin(&pki, work.path(), "");
    let config_b = agent_config(work.path(), &pki, "b", aggregator.quic, "500ms");
    let mut agent_b = start_agent(work.path(), "b", &config_b);
    let b_up = r#"up{job="node",instance="b"}"#;
    assert_eq!(wait_for(Duration::from_secs(20), || latest_value(&aggregator, b_up).filter(|&v| v == 1.0)), Some(1.0));
    agent_b.kill();
    assert_eq!(wait_for(Duration::from_secs(10), || latest_value(&aggregator, b_up).filter(|&v| v == 0.0)), Some(0.0));
    let b_samples_before = sample_times(&aggregator, r#"node_load1{instance="b"}"#, "10m").len();

    // Agent A, with A's certificate, claims to be B in every way its config allows.
    let config_a = work.path().join("agent-a-as-b.toml");
    std::fs::write(
        &config_a,
        std::fs::read_to_string(agent_config(work.path(), &pki, "a", aggregator.quic, "500ms"))
            .unwrap()
            .replace("id = \"a\"", "id = \"b\"\ninstance = \"b\""),
    )
    .unwrap();
    let _agent_a = start_agent(work.path(), "a", &config_a);
    assert!(
        wait_for(Duration::from_secs(20), || latest_value(&aggregator, r#"up{job="node",instance="a"}"#)
            .filter(|&v| v == 1.0))
        .is_some(),
        "A's data arrives under its own identity:\n{}",
        aggregator.process.log()
    );
    // Several heartbeats later, B is still down and got no new samples.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(latest_value(&aggregator, b_up), Some(0.0));
    assert_eq!(sample_times(&aggregator, r#"node_load1{instance="b"}"#, "10m").len(), b_samples_before);
    assert!(aggregator.process.log().contains("agent's instance label differs from its identity"));
}
