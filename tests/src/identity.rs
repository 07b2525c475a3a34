//! Helpers for the identity tests: an aggregator with an admin token, the
//! `token` CLI, `herd-agent enroll`, and configs for enrolled agents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{Aggregator, HttpToken, Pki, free_tcp_port, free_udp_port, run_cli};

/// An aggregator with an admin token and `extra` config.
pub fn aggregator_with_admin(pki: &Pki, work: &Path, extra: &str) -> (Aggregator, HttpToken) {
    let (admin, admin_toml) = HttpToken::create(work, "ops", "admin");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = Aggregator::start_configured(pki, work, "aggregator", http, quic, &format!("{admin_toml}{extra}"));
    (aggregator, admin)
}

pub fn token_create(aggregator: &Aggregator, admin: &HttpToken, args: &[&str]) -> String {
    let url = format!("http://{}", aggregator.http);
    let mut all = vec!["token", "create", "--url", &url, "--token-file", admin.file_arg()];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run_cli("herd-aggregator", &all);
    assert!(ok, "token create failed:\n{stdout}{stderr}");
    stdout.trim().to_owned()
}

pub struct Enrollment {
    pub dir: PathBuf,
}

impl Enrollment {
    pub fn files(&self) -> (PathBuf, PathBuf, PathBuf) {
        (self.dir.join("ca.pem"), self.dir.join("agent.pem"), self.dir.join("agent-key.pem"))
    }
}

/// Runs `herd-agent enroll`; returns the outcome and the directory its files go to.
pub fn enroll(
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
pub fn enrolled_config(
    work: &Path,
    name: &str,
    enrollment: &Enrollment,
    quic: SocketAddr,
    agent_extra: &str,
) -> PathBuf {
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

pub fn fingerprint(pki: &Pki) -> String {
    let (ok, stdout, stderr) = run_cli("herd-aggregator", &["ca", "fingerprint", "--dir", pki.dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    stdout.trim().to_owned()
}

/// Restarts `aggregator` (SIGKILL, then the same config, ports and state).
pub fn restart(pki: &Pki, work: &Path, mut aggregator: Aggregator, admin: &HttpToken, extra: &str) -> Aggregator {
    let (http, quic) = (aggregator.http, aggregator.quic);
    aggregator.process.kill();
    drop(aggregator);
    let admin_toml = format!(
        "[[http.tokens]]\nname = \"{}\"\nrole = \"admin\"\ntoken_file = \"{}\"\n",
        admin.name,
        admin.file.display()
    );
    Aggregator::start_configured(pki, work, "aggregator", http, quic, &format!("{admin_toml}{extra}"))
}

/// Whether the fleet API shows agent `name` connected.
pub fn connected(aggregator: &Aggregator, name: &str) -> Option<bool> {
    let (_, body) = aggregator.get("/api/v1/agents")?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"].as_array()?.iter().find(|a| a["id"] == name).and_then(|a| a["connected"].as_bool())
}
