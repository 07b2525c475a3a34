//! The built-in alert router end to end: a real `herd-aggregator` with a rule
//! file and an Alertmanager configuration, Debian's `amtool` talking to its
//! Alertmanager v2 API, and a webhook receiver recording what it is sent.
//! Without `amtool` on PATH the test says so and passes, unless `HERD_REQUIRE_PEERS=1`.

use std::net::SocketAddr;
use std::time::Duration;

use herd_tests::router::{WebhookRecorder, amtool, amtool_available, start_aggregator_with_router};
use herd_tests::{Pki, aggregator_cli, free_tcp_port, free_udp_port, wait_for};
use serde_json::Value as Json;

const RULES: &str = r#"
groups:
  - name: router-e2e
    rules:
      - alert: HerdRuleAlert
        expr: vector(1)
        labels: {severity: warning}
        annotations: {description: "always firing"}
"#;

fn alert_names(notification: &Json) -> Vec<String> {
    notification["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
        .collect()
}

fn api_alerts(http: SocketAddr) -> Vec<Json> {
    let (status, body) = herd_tests::http_get(&format!("http://{http}/api/v2/alerts")).expect("aggregator reachable");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Json>(&body).expect("JSON").as_array().cloned().unwrap_or_default()
}

#[test]
fn amtool_alerts_and_silences_against_herd() {
    if !amtool_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let hook = WebhookRecorder::start();
    let rules = work.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let router_config = work.path().join("alertmanager.yml");
    std::fs::write(
        &router_config,
        format!(
            "route:\n  receiver: hook\n  group_by: []\n  group_wait: 2s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs: [{{url: '{}'}}]\n",
            hook.url
        ),
    )
    .unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let mut aggregator = start_aggregator_with_router(&pki, work.path(), "agg", http, quic, &rules, &router_config);

    // A silence first, then alerts posted the way Prometheus (and amtool) post them.
    let (ok, out) =
        amtool(http, &["silence", "add", "alertname=Silenced", "--comment=disk swap", "--author=ops", "--duration=1h"]);
    assert!(ok, "amtool silence add: {out}");
    let silence_id = out.trim().to_owned();
    assert_eq!(silence_id.len(), 36, "{out}");
    for name in ["Silenced", "Loud"] {
        let (ok, out) = amtool(http, &["alert", "add", &format!("alertname={name}"), "severity=warning"]);
        assert!(ok, "amtool alert add: {out}");
    }

    // One group (group_by: []): the webhook gets the rule's alert and Loud, never Silenced.
    let notified = wait_for(Duration::from_secs(20), || {
        hook.bodies().into_iter().find(|n| {
            let names = alert_names(n);
            names.contains(&"Loud".to_owned()) && names.contains(&"HerdRuleAlert".to_owned())
        })
    });
    let notified =
        notified.unwrap_or_else(|| panic!("no notification: {:?}\n{}", hook.bodies(), aggregator.process.log()));
    assert_eq!(notified["version"], "4");
    assert_eq!(notified["receiver"], "hook");
    for body in hook.bodies() {
        assert!(!alert_names(&body).contains(&"Silenced".to_owned()), "silenced alert notified: {body}");
    }

    // amtool lists Herd's alerts; the silenced one only when asked for silenced alerts.
    let (ok, out) = amtool(http, &["alert", "query"]);
    assert!(ok, "{out}");
    assert!(out.contains("HerdRuleAlert") && out.contains("Loud") && !out.contains("Silenced"), "{out}");
    let (ok, out) = amtool(http, &["alert", "query", "--silenced"]);
    assert!(ok && out.contains("Silenced"), "{out}");
    let silenced = api_alerts(http).into_iter().find(|a| a["labels"]["alertname"] == "Silenced").expect("listed");
    assert_eq!(silenced["status"]["state"], "suppressed");
    assert_eq!(silenced["status"]["silencedBy"][0], silence_id.as_str());

    // The silence survives a restart; the rule's alert, already notified, is not notified again.
    let (ok, out) = amtool(http, &["silence", "query", "-q"]);
    assert!(ok && out.lines().any(|l| l.trim() == silence_id), "{out}");
    let notifications_before = hook.bodies().len();
    aggregator.process.kill();
    let aggregator = start_aggregator_with_router(&pki, work.path(), "agg", http, quic, &rules, &router_config);
    let (ok, out) = amtool(http, &["silence", "query", "-q"]);
    assert!(ok && out.lines().any(|l| l.trim() == silence_id), "silence lost in the restart: {out}");
    let (ok, out) = amtool(http, &["alert", "add", "alertname=Silenced", "severity=warning"]);
    assert!(ok, "{out}");
    let muted = wait_for(Duration::from_secs(10), || {
        api_alerts(http).into_iter().find(|a| a["labels"]["alertname"] == "Silenced")
    })
    .expect("alert listed after restart");
    assert_eq!(muted["status"]["silencedBy"][0], silence_id.as_str());
    let rule_alert_back = wait_for(Duration::from_secs(10), || {
        api_alerts(http).into_iter().find(|a| a["labels"]["alertname"] == "HerdRuleAlert")
    });
    assert!(rule_alert_back.is_some(), "{}", aggregator.process.log());
    // group_wait (2 s) and a margin: the group flushes, the log says the receiver was told.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(hook.bodies().len(), notifications_before, "re-notified after restart: {:?}", hook.bodies());

    // Expire it: gone from the default query, there with --expired.
    let (ok, out) = amtool(http, &["silence", "expire", &silence_id]);
    assert!(ok, "amtool silence expire: {out}");
    let (ok, out) = amtool(http, &["silence", "query", "-q"]);
    assert!(ok && !out.contains(&silence_id), "{out}");
    let (ok, out) = amtool(http, &["silence", "query", "--expired", "-q"]);
    assert!(ok && out.contains(&silence_id), "{out}");

    // Herd's own CLI speaks the same API.
    let url = format!("http://{http}");
    let id = aggregator_cli(&["silence", "add", "--url", &url, "-c", "deploy", "-a", "ci", "instance=~\"web-.*\""]);
    let id = id.trim();
    assert_eq!(id.len(), 36, "{id}");
    let listed = aggregator_cli(&["silence", "query", "--url", &url]);
    assert!(listed.contains(id) && listed.contains("instance=~\"web-.*\"") && listed.contains("deploy"), "{listed}");
    let (ok, out) = amtool(http, &["silence", "query", "-q", "instance=~web-.*"]);
    assert!(ok && out.contains(id), "{out}");
    aggregator_cli(&["silence", "expire", "--url", &url, id]);
    let listed = aggregator_cli(&["silence", "query", "--url", &url]);
    assert!(!listed.contains(id), "{listed}");
    // Receivers and status as Grafana's data source reads them.
    let (status, body) = herd_tests::http_get(&format!("{url}/api/v2/receivers")).unwrap();
    assert_eq!((status, body.as_str()), (200, r#"[{"name":"hook"}]"#));
    // SIGHUP reloads the router's file.
    let text = std::fs::read_to_string(&router_config).unwrap();
    std::fs::write(&router_config, format!("{text}  - name: second\n    webhook_configs: [{{url: '{}'}}]\n", hook.url))
        .unwrap();
    let pid = aggregator.process.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let reloaded = wait_for(Duration::from_secs(10), || {
        herd_tests::http_get(&format!("{url}/api/v2/receivers")).filter(|(_, body)| body.contains("second"))
    });
    assert!(reloaded.is_some(), "not reloaded:\n{}", aggregator.process.log());
    let (status, body) = herd_tests::http_get(&format!("{url}/api/v2/status")).unwrap();
    assert_eq!(status, 200);
    let status: Json = serde_json::from_str(&body).unwrap();
    assert!(status["config"]["original"].as_str().unwrap().contains("receiver: hook"));
}

#[test]
fn a_broken_router_configuration_is_refused_at_start() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("alertmanager.yml");
    std::fs::write(&config, "route:\n  receiver: nowhere\n  group_wait: [\nreceivers: []\n").unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_server("localhost");
    let toml = work.path().join("aggregator.toml");
    std::fs::write(
        &toml,
        format!(
            "[http]\nanonymous_role = \"admin\"\n[server]\nquic_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\n\
             [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
             [alerting]\nrouter_config = \"{router}\"\n",
            state = work.path().join("state").display(),
            ca = pki.path("ca.pem").display(),
            cert = pki.path("localhost.pem").display(),
            key = pki.path("localhost-key.pem").display(),
            router = config.display(),
        ),
    )
    .unwrap();
    let output = std::process::Command::new(herd_tests::bin("herd-aggregator"))
        .args(["serve", "--config", toml.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("alertmanager.yml") && text.contains("line"), "{text}");
    // check-config reads the router's file too.
    let output = std::process::Command::new(herd_tests::bin("herd-aggregator"))
        .args(["check-config", "--config", toml.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success() && text.contains("alertmanager.yml") && text.contains("line"), "{text}");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../aggregator/src/alertmanager/testdata/seed.yml"), &config)
        .expect("the seed's alertmanager.yml");
    let output = std::process::Command::new(herd_tests::bin("herd-aggregator"))
        .args(["check-config", "--config", toml.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the seed's configuration is refused: {text}");
}

/// Kills the child when dropped, so a failed assertion leaves no Prometheus behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_available() -> bool {
    let found = std::process::Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("HERD_REQUIRE_PEERS").as_deref() != Ok("1"),
            "prometheus is missing: apt-get install prometheus"
        );
        eprintln!("skipped: prometheus is not installed (apt-get install prometheus)");
    }
    found
}

#[test]
fn a_real_prometheus_sends_its_alerts_to_herd() {
    if !prometheus_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let hook = WebhookRecorder::start();
    let herd_rules = work.path().join("herd-rules.yml");
    std::fs::write(&herd_rules, "groups: []\n").unwrap();
    let router_config = work.path().join("alertmanager.yml");
    std::fs::write(
        &router_config,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n\
             receivers:\n  - name: hook\n    webhook_configs: [{{url: '{}'}}]\n",
            hook.url
        ),
    )
    .unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = start_aggregator_with_router(&pki, work.path(), "agg", http, quic, &herd_rules, &router_config);

    std::fs::write(
        work.path().join("prometheus-rules.yml"),
        "groups:\n  - name: p\n    rules:\n      - alert: FromPrometheus\n        expr: vector(1)\n        labels: {severity: page}\n        annotations: {summary: sent by Prometheus}\n",
    )
    .unwrap();
    let prometheus_config = work.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global: {{evaluation_interval: 1s}}\nrule_files: [prometheus-rules.yml]\n\
             alerting:\n  alertmanagers:\n    - api_version: v2\n      static_configs: [{{targets: ['{http}']}}]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(work.path().join("prometheus.log")).unwrap();
    let _prometheus = Child(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", prometheus_config.display()))
            .arg(format!("--storage.tsdb.path={}", work.path().join("tsdb").display()))
            // The first alerts go out before Prometheus has discovered its Alertmanagers
            // (about 5 s): resend every second rather than after the default minute.
            .arg("--rules.alert.resend-delay=1s")
            .arg(format!("--web.listen-address=127.0.0.1:{}", free_tcp_port()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let listed = wait_for(Duration::from_secs(30), || {
        api_alerts(http).into_iter().find(|a| a["labels"]["alertname"] == "FromPrometheus")
    });
    let listed = listed.unwrap_or_else(|| {
        panic!(
            "Prometheus's alert never reached Herd:\n{}\n{}",
            std::fs::read_to_string(work.path().join("prometheus.log")).unwrap_or_default(),
            aggregator.process.log()
        )
    });
    assert_eq!(listed["annotations"]["summary"], "sent by Prometheus");
    assert_eq!(listed["status"]["state"], "active");
    assert_eq!(listed["receivers"][0]["name"], "hook");
    let notified = wait_for(Duration::from_secs(10), || {
        hook.bodies().into_iter().find(|n| alert_names(n).contains(&"FromPrometheus".to_owned()))
    });
    let notified = notified.expect("webhook notified");
    assert_eq!(notified["alerts"][0]["labels"]["severity"], "page");
    assert!(notified["alerts"][0]["generatorURL"].as_str().unwrap().contains("vector"), "{notified}");
    // The router's counters are queryable like every self-metric (written every 5 s).
    let sent = wait_for(Duration::from_secs(12), || {
        herd_tests::latest_value(
            &aggregator,
            r#"herd_router_notifications_total{job="herd-aggregator",receiver="hook",integration="webhook"}"#,
        )
        .filter(|v| *v >= 1.0)
    });
    assert!(sent.is_some(), "herd_router_notifications_total not in the store");
}
