//! Identity end to end: agents enroll with tokens (refused when the token is
//! reused, expired, revoked or the CA fingerprint is wrong), carry the
//! trusted labels bound at enrollment whatever they claim, and cannot write
//! under another agent's identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_tests::{
    Aggregator, HttpToken, Pki, agent_config, free_tcp_port, free_udp_port, latest_value, run_cli, sample_times,
    start_agent, vector_result, wait_for,
};

/// An aggregator with an admin token and `extra` config.
pub fn aggregator_with_admin(pki: &Pki, work: &Path, extra: &str) -> (Aggregator, HttpToken) {
    let (admin, admin_toml) = HttpToken::create(work, "ops", "admin");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = Aggregator::start_configured(pki, work, "aggregator", http, quic, &format!("{admin_toml}{extra}"));
    (aggregator, admin)
}

fn token_create(aggregator: &Aggregator, admin: &HttpToken, args: &[&str]) -> String {
    let url = format!("http://{}", aggregator.http);
    let mut all = vec!["token", "create", "--url", &url, "--token-file", admin.file_arg()];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run_cli("herd-aggregator", &all);
    assert!(ok, "token create failed:\n{stdout}{stderr}");
    stdout.trim().to_owned()
}

struct Enrollment {
    dir: PathBuf,
}

impl Enrollment {
    fn files(&self) -> (PathBuf, PathBuf, PathBuf) {
        (self.dir.join("ca.pem"), self.dir.join("agent.pem"), self.dir.join("agent-key.pem"))
    }
}

/// Runs `herd-agent enroll`; returns the outcome and the directory its files go to.
fn enroll(
    work: &Path,
    aggregator: &Aggregator,
    name: &str,
    token: &str,
    fingerprint: &str,
) -> (bool, String, Enrollment) {
    let attempt = fastrand::u32(..);
    let dir = work.join(format!("{name}-{attempt:x}-pki"));
    let token_file = work.join(format!("{name}-{attempt:x}.enroll-token"));
    std::fs::write(&token_file, token).unwrap();
    let enrollment = Enrollment { dir };
    let (ca, cert, key) = enrollment.files();
    let quic = aggregator.quic.to_string();
    let args = [
        "enroll",
        "--config",
        "/nonexistent/agent.toml",
        "--aggregator",
        &quic,
        "--server-name",
        "localhost",
        "--token-file",
        token_file.to_str().unwrap(),
        "--ca-fingerprint",
        fingerprint,
        "--name",
        name,
        "--ca-file",
        ca.to_str().unwrap(),
        "--cert-file",
        cert.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = run_cli("herd-agent", &args);
    (ok, stdout + &stderr, enrollment)
}

/// An agent config using the enrolled files, with `agent_extra` in `[agent]`.
fn enrolled_config(work: &Path, name: &str, enrollment: &Enrollment, quic: SocketAddr, agent_extra: &str) -> PathBuf {
    let (ca, cert, key) = enrollment.files();
    let config = work.join(format!("agent-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"{name}\"\nstate_dir = \"{state}\"\n{agent_extra}\n\
             [uplink]\nendpoints = [\"{quic}\"]\nserver_name = \"localhost\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
             [collect]\ninterval = \"500ms\"\n",
            state = work.join(format!("agent-{name}-state")).display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    config
}

fn fingerprint(pki: &Pki) -> String {
    let (ok, stdout, stderr) = run_cli("herd-aggregator", &["ca", "fingerprint", "--dir", pki.dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    stdout.trim().to_owned()
}

fn refused_count(aggregator: &Aggregator, reason: &str) -> f64 {
    aggregator.self_metric(&format!("herd_enroll_refused_total{{reason=\"{reason}\"}}"))
}

#[test]
fn enrolled_agents_carry_their_trusted_labels_and_spent_tokens_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let (aggregator, admin) = aggregator_with_admin(&pki, work.path(), "");
    let fingerprint = fingerprint(&pki);
    assert!(fingerprint.starts_with("sha256:") && fingerprint.len() == 71, "{fingerprint}");

    let token =
        token_create(&aggregator, &admin, &["--labels", "role=postgres,env=prod", "--ttl", "1h", "--uses", "1"]);
    let (ok, output, enrollment) = enroll(work.path(), &aggregator, "db-1", &token, &fingerprint);
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

    // Reused past its uses.
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-2", &token, &fingerprint);
    assert!(!ok && output.contains("token_used_up"), "{output}");
    // Expired.
    let short = token_create(&aggregator, &admin, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-3", &short, &fingerprint);
    assert!(!ok && output.contains("token_expired"), "{output}");
    // Revoked.
    let revoked = token_create(&aggregator, &admin, &[]);
    let url = format!("http://{}", aggregator.http);
    let id = revoked.split('.').next().unwrap();
    let (ok, out, err) =
        run_cli("herd-aggregator", &["token", "revoke", "--url", &url, "--token-file", admin.file_arg(), id]);
    assert!(ok, "{out}{err}");
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-4", &revoked, &fingerprint);
    assert!(!ok && output.contains("token_revoked"), "{output}");
    // A wrong fingerprint: the agent does not even send its token.
    let other = Pki::create(work.path().join("other-pki"));
    let good = token_create(&aggregator, &admin, &["--uses", "1"]);
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-5", &good, &self::fingerprint(&other));
    assert!(!ok && output.contains("--ca-fingerprint"), "{output}");
    let (ok, output, enrollment5) = enroll(work.path(), &aggregator, "db-5", &good, &fingerprint);
    assert!(ok, "the token survives a wrong fingerprint unused:\n{output}");
    assert!(enrollment5.files().1.exists());
    // A name that holds a valid certificate cannot be taken.
    let another = token_create(&aggregator, &admin, &[]);
    let (ok, output, _) = enroll(work.path(), &aggregator, "db-1", &another, &fingerprint);
    assert!(!ok && output.contains("name_in_use"), "{output}");

    for reason in ["token_used_up", "token_expired", "token_revoked", "ca_fingerprint", "name_in_use"] {
        assert_eq!(refused_count(&aggregator, reason), 1.0, "{reason}");
    }
    assert_eq!(aggregator.self_metric("herd_enroll_issued_total"), 2.0);
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
