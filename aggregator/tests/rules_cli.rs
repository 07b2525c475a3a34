//! The real `herd-aggregator` binary: `rules check` output and exit codes as
//! promtool's, and `serve` with rule files: a SIGHUP reload that meets a
//! broken file keeps the old rules, a fixed file is picked up, and a restart
//! keeps a pending alert's activeAt.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_herd-aggregator");
const DEADLINE: Duration = Duration::from_secs(30);

const GOOD: &str = "groups:\n- name: first\n  interval: 1s\n  rules:\n  - record: herd:one\n    expr: vector(1)\n  - alert: Slow\n    expr: vector(1)\n    for: 1h\n";
const BROKEN: &str = "groups:\n- name: second\n  rules:\n  - alert: Broken\n    expr: sum(\n";
const FIXED: &str = "groups:\n- name: second\n  rules:\n  - alert: Fixed\n    expr: vector(0) > 1\n";

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN).args(args).output().expect("run herd-aggregator");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn rules_check_reports_like_promtool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yml");
    let broken = dir.path().join("broken.yml");
    std::fs::write(&good, GOOD).expect("write");
    std::fs::write(&broken, BROKEN).expect("write");
    let (code, out) = run(&["rules", "check", good.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("Checking {}\n  SUCCESS: 2 rules found\n\n", good.display()));
    let (code, out) = run(&["rules", "check", good.to_str().expect("utf-8"), broken.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SUCCESS: 2 rules found"), "{out}");
    assert!(
        out.contains(&format!("Checking {}\n  FAILED:\n{}:4: group \"second\"", broken.display(), broken.display())),
        "{out}"
    );
}

/// Kills the aggregator when the test ends, however it ends.
struct Aggregator(Child);

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
    let body = agent.get(url).call().ok()?.into_body().read_to_string().ok()?;
    serde_json::from_str(&body).ok()
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > DEADLINE {
            let log =
                what.split_once("(log: ").and_then(|(_, p)| std::fs::read_to_string(p.trim_end_matches(')')).ok());
            panic!("timed out waiting for {what}\n{}", log.unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn group_names(http: &str) -> Vec<String> {
    get(&format!("{http}/api/v1/rules"))
        .and_then(|body| {
            body["data"]["groups"]
                .as_array()
                .map(|groups| groups.iter().filter_map(|g| g["name"].as_str().map(str::to_owned)).collect())
        })
        .unwrap_or_default()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
}

fn serve(config: &Path, log: &Path) -> Aggregator {
    let log = std::fs::File::create(log).expect("log file");
    Aggregator(
        Command::new(BIN)
            .args(["serve", "--config", config.to_str().expect("utf-8 path")])
            .env("RUST_LOG", "info")
            // tracing's fmt subscriber logs to stdout.
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .expect("start herd-aggregator serve"),
    )
}

#[test]
fn serve_reloads_rules_on_sighup_and_keeps_alert_state_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("state/pki");
    let pki = pki.to_str().expect("utf-8 path");
    assert_eq!(run(&["ca", "init", "--dir", pki]).0, 0);
    assert_eq!(run(&["cert", "issue", "--server", "aggregator", "--ca-dir", pki]).0, 0);
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    std::fs::write(rules.join("first.yml"), GOOD).expect("write");
    let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let http = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nquic_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n\
             [rules]\nfiles = [\"rules/*.yml\"]\n"
        ),
    )
    .expect("write config");
    let log = dir.path().join("aggregator.log");
    let aggregator = serve(&config, &log);
    wait_for(|| group_names(&http) == ["first"], "the first group");

    std::fs::write(rules.join("second.yml"), BROKEN).expect("write");
    signal(&aggregator.0, "HUP");
    wait_for(
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("rule reload refused")),
        &format!("the reload to be refused (log: {})", log.display()),
    );
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("second.yml:4"), "{logged}");
    assert_eq!(group_names(&http), ["first"]);

    std::fs::write(rules.join("second.yml"), FIXED).expect("write");
    signal(&aggregator.0, "HUP");
    wait_for(|| group_names(&http) == ["first", "second"], "the fixed group");

    let pending_since = |http: &str| -> Option<String> {
        let body = get(&format!("{http}/api/v1/alerts"))?;
        let alert = body["data"]["alerts"].as_array()?.iter().find(|a| a["labels"]["alertname"] == "Slow")?.clone();
        alert["activeAt"].as_str().map(str::to_owned)
    };
    let mut active_at = None;
    wait_for(
        || {
            active_at = pending_since(&http);
            active_at.is_some()
        },
        "the pending alert",
    );
    signal(&aggregator.0, "TERM");
    drop(aggregator);

    let aggregator = serve(&config, &log);
    let mut restored = None;
    wait_for(
        || {
            restored = pending_since(&http);
            restored.is_some()
        },
        "the pending alert after a restart",
    );
    assert_eq!(restored, active_at, "the pending alert's timer survives the restart");
    drop(aggregator);
}
