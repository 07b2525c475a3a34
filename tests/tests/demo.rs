//! The README's first command: `herd-aggregator demo` prints the web UI's
//! address first, and within seconds the UI's Overview shows its local agent
//! connected and the API answers with the agent's host metrics.

use std::process::{Command, Stdio};
use std::time::Duration;

use herd_tests::{bin, free_tcp_port, free_udp_port, http_get, vector_result, wait_for};
use serde_json::Value as Json;

#[test]
fn the_demo_prints_the_ui_first_and_serves_its_agent() {
    let work = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (work.path().join("demo.out"), work.path().join("demo.err"));
    let http = format!("127.0.0.1:{}", free_tcp_port());
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let demo = Command::new(bin("herd-aggregator"))
        .args(["demo", "--http-listen", &http, "--quic-listen", &quic, "--interval", "500ms"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start the demo");
    // Killed if an assertion fails first.
    let mut demo = KillOnDrop(demo);
    let printed = || std::fs::read_to_string(&stdout).unwrap_or_default();
    let logs = || std::fs::read_to_string(&stderr).unwrap_or_default();

    let first = wait_for(Duration::from_secs(20), || printed().lines().next().map(str::to_owned))
        .unwrap_or_else(|| panic!("the demo printed nothing:\n{}", logs()));
    assert_eq!(first, format!("Herd demo: open http://{http}/ for the web UI"));

    let query = |expr: &str| {
        let (status, body) = http_get(&format!("http://{http}/api/v1/query?query={}", herd_tests::encode(expr)))?;
        (status == 200).then(|| serde_json::from_str::<Json>(&body).ok()).flatten()
    };
    let load =
        wait_for(Duration::from_secs(20), || query("node_load1").map(|r| vector_result(&r)).filter(|v| !v.is_empty()));
    assert!(load.is_some(), "no host metrics from the demo's agent:\n{}", logs());
    let (status, overview) = http_get(&format!("http://{http}/")).expect("the UI answers");
    assert_eq!(status, 200);
    assert!(overview.contains("<title>Overview"), "{overview}");
    let (_, fleet) = http_get(&format!("http://{http}/fleet")).unwrap();
    assert!(fleet.contains("1 of 1 agents shown") && fleet.contains("badge ok\">connected<"), "{fleet}");

    // SIGTERM ends it cleanly.
    let pid = demo.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = wait_for(Duration::from_secs(10), || demo.0.try_wait().ok().flatten());
    assert!(exited.is_some_and(|s| s.success()), "the demo did not stop cleanly: {exited:?}\n{}", logs());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
