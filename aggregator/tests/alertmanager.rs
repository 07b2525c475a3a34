//! Alerts from Herd's rule manager reach a real Alertmanager (Debian's
//! `prometheus-alertmanager`, started here on a free loopback port with
//! clustering off and its storage in a temporary directory) through its v2
//! API, appear in its `/api/v2/alerts` with their labels, annotations and
//! start time, and disappear from it once resolved.
//!
//! Needs `/usr/bin/prometheus-alertmanager` (`apt-get install -y
//! prometheus-alertmanager`); `HERD_ALERTMANAGER` names another binary.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_aggregator::notify::{AlertmanagerTarget, Notifier};
use herd_aggregator::promql::Engine;
use herd_aggregator::rules::{EvalContext, ManagerOptions, RuleManager};
use herd_aggregator::store::{MemStore, Sample, Storage};
use herd_common::metric::Labels;
use tokio_util::sync::CancellationToken;

const DEFAULT_ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const DEADLINE: Duration = Duration::from_secs(30);

const RULES: &str = r#"
groups:
  - name: checkout
    interval: 1s
    rules:
      - alert: CheckoutErrors
        expr: herd_test_errors > 0
        labels:
          severity: critical
        annotations:
          summary: "{{ $value }} errors on {{ $labels.instance }}"
"#;

/// Kills the Alertmanager when the test ends, however it ends.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

fn start_alertmanager() -> Alertmanager {
    let binary = std::env::var("HERD_ALERTMANAGER").unwrap_or_else(|_| DEFAULT_ALERTMANAGER.to_owned());
    assert!(
        std::path::Path::new(&binary).exists(),
        "{binary} is missing: `apt-get update && apt-get install -y prometheus-alertmanager` (or set HERD_ALERTMANAGER)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(&config, "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n")
        .expect("write alertmanager config");
    let port = free_port();
    let child = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {binary}: {err}"));
    let alertmanager = Alertmanager { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
    wait_for(|| get(&format!("{}/-/ready", alertmanager.url)).is_some(), "alertmanager ready");
    alertmanager
}

fn get(url: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
    agent.get(url).call().ok()?.into_body().read_to_string().ok()
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The alerts Alertmanager holds that are not resolved.
fn active_alerts(url: &str) -> Vec<serde_json::Value> {
    get(&format!("{url}/api/v2/alerts"))
        .and_then(|body| serde_json::from_str::<Vec<serde_json::Value>>(&body).ok())
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_resolve_in_a_real_alertmanager() {
    let alertmanager = start_alertmanager();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("checkout.yml"), RULES).expect("write rules");

    let store: Arc<dyn Storage> = Arc::new(MemStore::new());
    let errors = store.series_ref(&Labels::from_pairs([
        ("__name__", "herd_test_errors"),
        ("instance", "shop-1"),
        ("job", "checkout"),
    ]));
    store.append(errors, Sample { timestamp_ms: now_ms(), value: 3.0 }).expect("append");

    let shutdown = CancellationToken::new();
    let notifier = Arc::new(Notifier::new(vec![AlertmanagerTarget {
        url: alertmanager.url.clone(),
        timeout: Duration::from_secs(5),
    }]));
    let notifier_task = tokio::spawn(Arc::clone(&notifier).run(shutdown.child_token()));
    let engine = Arc::new(Engine::new(Arc::clone(&store), Duration::from_secs(300), 10_000));
    let options = ManagerOptions {
        files: vec![dir.path().join("*.yml").display().to_string()],
        default_interval: Duration::from_secs(60),
        state_path: dir.path().join("alerts.json"),
        context: EvalContext {
            external_labels: Labels::from_pairs([("cluster", "test")]),
            external_url: "http://herd.test:7401".into(),
            resend_delay: Duration::from_secs(60),
        },
    };
    let manager = RuleManager::new(engine, Arc::clone(&store), Some(notifier), options, shutdown.child_token());
    manager.apply_config().await.expect("rules apply");

    let url = alertmanager.url.clone();
    let fired = tokio::task::spawn_blocking(move || {
        let mut found = None;
        wait_for(
            || {
                found = active_alerts(&url).into_iter().find(|a| a["labels"]["alertname"] == "CheckoutErrors");
                found.is_some()
            },
            "the alert in alertmanager",
        );
        found.expect("found")
    })
    .await
    .expect("waiting does not panic");
    assert_eq!(fired["labels"]["severity"], "critical");
    assert_eq!(fired["labels"]["instance"], "shop-1");
    assert_eq!(fired["labels"]["cluster"], "test", "external labels are added");
    assert_eq!(fired["annotations"]["summary"], "3 errors on shop-1");
    assert_eq!(fired["status"]["state"], "active");
    assert_eq!(fired["generatorURL"], "http://herd.test:7401/graph?g0.expr=herd_test_errors+%3E+0&g0.tab=1");
    let starts_at = fired["startsAt"].as_str().expect("startsAt").to_owned();

    // The errors stop: the alert resolves and Alertmanager drops it from its active alerts.
    store.append(errors, Sample { timestamp_ms: now_ms(), value: 0.0 }).expect("append");
    let url = alertmanager.url.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            || !active_alerts(&url).iter().any(|a| a["labels"]["alertname"] == "CheckoutErrors"),
            "the alert to resolve in alertmanager",
        )
    })
    .await
    .expect("waiting does not panic");
    assert!(!starts_at.is_empty());

    manager.stop().await;
    shutdown.cancel();
    notifier_task.await.expect("notifier stops");
}
