//! Scrape targets end to end: a real agent binary scrapes Debian's
//! node_exporter over https (mutual TLS, certificates made by the test) and
//! a target that is down, and the aggregator answers `up{job,instance}` for
//! both, with the scraped series and `scrape_samples_scraped` next to them.
//!
//! Needs `/usr/bin/prometheus-node-exporter` (`HERD_NODE_EXPORTER` names
//! another binary); a missing binary fails the test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herd_common::tls::{Role, generate_ca, issue, write_pair};
use herd_tests::*;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn up_for_scrape_targets_is_queryable_at_the_aggregator() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("web-1");
    let aggregator = Aggregator::start(&pki, work.path());

    // The exporter's own CA, unrelated to the fleet's.
    let exporter_pki = work.path().join("exporter-pki");
    let ca = generate_ca("exporters").unwrap();
    write_pair(&exporter_pki, "ca", &ca, false).unwrap();
    write_pair(&exporter_pki, "server", &issue(&ca, Role::Server, "localhost", &["127.0.0.1".into()]).unwrap(), false)
        .unwrap();
    write_pair(&exporter_pki, "client", &issue(&ca, Role::Agent, "web-1", &[]).unwrap(), false).unwrap();
    let file = |name: &str| exporter_pki.join(name).display().to_string();
    let web_config = work.path().join("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            file("server.pem"),
            file("server-key.pem"),
            file("ca.pem")
        ),
    )
    .unwrap();
    let binary = std::env::var("HERD_NODE_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-node-exporter".to_owned());
    let port = free_tcp_port();
    let _exporter = KillOnDrop(
        Command::new(&binary)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--web.config.file={}", web_config.display()))
            .args(["--collector.disable-defaults", "--collector.loadavg"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {binary}: {err} (apt-get install -y prometheus-node-exporter)")),
    );
    wait_for(Duration::from_secs(15), || std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .expect("node_exporter did not start");

    let down = free_tcp_port();
    let tail = format!(
        "[collect.host]\nenabled = false\n\
         [[collect.scrape]]\njob = \"app-node\"\nurl = \"https://127.0.0.1:{port}/metrics\"\n\
         tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}\n\
         [[collect.scrape]]\njob = \"gone\"\nurl = \"http://127.0.0.1:{down}/metrics\"\n",
        file("ca.pem"),
        file("client.pem"),
        file("client-key.pem"),
    );
    let config = agent_config_with(work.path(), &pki, "web-1", &[aggregator.quic], "1s", "", &tail);
    let agent = start_agent(work.path(), "web-1", &config);

    let up = |job: &str| latest_value(&aggregator, &format!(r#"up{{job="{job}",instance="web-1"}}"#));
    let both = wait_for(Duration::from_secs(15), || Some((up("app-node")?, up("gone")?)));
    assert_eq!(both, Some((1.0, 0.0)), "agent log:\n{}", agent.log());
    let load = latest_value(&aggregator, r#"node_load1{job="app-node",instance="web-1"}"#).expect("scraped series");
    assert!(load >= 0.0);
    let scraped = latest_value(&aggregator, r#"scrape_samples_scraped{job="app-node"}"#).unwrap();
    assert!(scraped > 10.0, "{scraped}");
    assert_eq!(latest_value(&aggregator, r#"scrape_samples_scraped{job="gone"}"#), Some(0.0));
    // PromQL over the target series works as with Prometheus's own.
    let down_targets = vector_result(&aggregator.query("up == 0"));
    assert_eq!(down_targets.len(), 1, "{down_targets:?}");
    assert_eq!(down_targets[0]["metric"]["job"], "gone");
    // One line for the down target, not one per cycle.
    std::thread::sleep(Duration::from_millis(2100));
    let log = agent.log();
    assert_eq!(log.matches("collector failing").count(), 1, "{log}");
    assert!(log.contains("scrape:gone"), "{log}");
}
