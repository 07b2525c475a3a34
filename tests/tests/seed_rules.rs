//! The seed's rule files (`../shared/rules/seed/*.yml`) in a real aggregator,
//! fed by a real agent that scrapes synthetic application, host, database
//! and business metrics: every alert fires while the data crosses its
//! threshold and resolves when the data is healthy again.
//!
//! Only time is changed, so the test takes seconds rather than the seed's
//! minutes: every duration in the files (`for:`, group intervals, range
//! selectors such as `[5m]`) runs 60 times faster (`5m` becomes `5s`), and
//! rules are evaluated every second. Everything else is the files' own.
//!
//! The seed's HighConnectionUsage divides two series whose label sets differ
//! (`datid`, `datname` on one side only), so it matches nothing with the
//! label sets postgres_exporter and Herd's agent write; the test asserts that
//! it stays silent (Herd's rule pack has the working form).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_tests::*;

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Bad,
    Good,
}

/// A counter: (name with labels, slope per second while bad, while good).
const COUNTERS: &[(&str, &str, f64, f64)] = &[
    ("node", r#"node_cpu_seconds_total{cpu="0",mode="idle"}"#, 0.05, 1.0),
    ("node", r#"node_disk_io_time_seconds_total{device="vda"}"#, 1.0, 0.0),
    ("api", r#"http_requests_total{service="api",status="200"}"#, 10.0, 5000.0),
    ("api", r#"http_requests_total{service="api",status="500"}"#, 5.0, 0.0),
    ("api", r#"http_requests_total{service="web",status="200"}"#, 1.0, 5000.0),
    ("api", r#"http_request_duration_seconds_bucket{service="api",le="0.5"}"#, 0.0, 5000.0),
    ("api", r#"http_request_duration_seconds_bucket{service="api",le="2.5"}"#, 0.0, 5000.0),
    ("api", r#"http_request_duration_seconds_bucket{service="api",le="5"}"#, 15.0, 5000.0),
    ("api", r#"http_request_duration_seconds_bucket{service="api",le="+Inf"}"#, 15.0, 5000.0),
    ("api", "auth_login_failures_total", 20.0, 0.0),
    ("api", "auth_account_lockouts_total", 10.0, 0.0),
    ("api", "authz_access_denied_total", 40.0, 0.0),
    ("db", r#"pg_stat_statements_calls_total{queryid="42"}"#, 200.0, 0.0),
    ("business", r#"smart_dairy_orders_total{order_type="subscription"}"#, 0.1, 100.0),
    ("business", r#"smart_dairy_payments_total{gateway="bkash",status="success"}"#, 5.0, 10000.0),
    ("business", r#"smart_dairy_payments_total{gateway="bkash",status="failed"}"#, 5.0, 0.0),
];

/// A gauge: (name with labels, value while bad, while good).
const GAUGES: &[(&str, &str, f64, f64)] = &[
    ("node", "node_memory_MemTotal_bytes", 8e9, 8e9),
    ("node", "node_memory_MemAvailable_bytes", 5e8, 6e9),
    ("node", r#"node_filesystem_size_bytes{mountpoint="/"}"#, 1e11, 1e11),
    ("node", r#"node_filesystem_avail_bytes{mountpoint="/"}"#, 5e9, 6e10),
    ("db", "pg_settings_max_connections", 100.0, 100.0),
    ("db", r#"pg_stat_database_numbackends{datid="16384",datname="smart_dairy"}"#, 95.0, 10.0),
    ("db", r#"pg_stat_statements_mean_exec_time_ms{queryid="42"}"#, 800.0, 10.0),
    ("db", "pg_replication_lag_seconds", 60.0, 1.0),
    ("db", r#"pg_stat_database_blks_hit{datname="smart_dairy"}"#, 100.0, 1e9),
    ("db", r#"pg_stat_database_blks_read{datname="smart_dairy"}"#, 900.0, 900.0),
];

struct Source {
    phase: Phase,
    last: Instant,
    counters: Vec<f64>,
}

impl Source {
    /// Moves the counters on to now at the current phase's slopes.
    fn advance(&mut self) {
        let elapsed = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        for (value, (_, _, bad, good)) in self.counters.iter_mut().zip(COUNTERS) {
            *value += elapsed * if self.phase == Phase::Bad { *bad } else { *good };
        }
    }

    /// The exposition for `path` (`/node`, `/api`, `/db`, `/business`), or
    /// `None` for a status 500 (`/down` while bad).
    fn render(&mut self, path: &str) -> Option<String> {
        self.advance();
        let area = path.trim_start_matches('/');
        if area == "down" {
            return (self.phase == Phase::Good).then(String::new);
        }
        let mut text = String::new();
        for ((group, series, _, _), value) in COUNTERS.iter().zip(&self.counters) {
            if *group == area {
                text.push_str(&format!("{series} {value}\n"));
            }
        }
        for (group, series, bad, good) in GAUGES {
            if *group == area {
                text.push_str(&format!("{series} {}\n", if self.phase == Phase::Bad { bad } else { good }));
            }
        }
        Some(text)
    }
}

/// Seed time runs this many times faster in the test.
const SPEEDUP: u64 = 60;

/// `5m` → `5s`: a duration divided by [`SPEEDUP`], at least a second.
fn faster(duration: &str) -> Option<String> {
    let (number, unit) = duration.split_at(duration.len().checked_sub(1)?);
    let seconds = number.parse::<u64>().ok()?
        * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return None,
        };
    Some(format!("{}s", (seconds / SPEEDUP).max(1)))
}

/// One line of a rule file with its durations (`for:`, `interval:`, and
/// range selectors `[5m]`) divided by [`SPEEDUP`].
fn speed_up(line: &str) -> String {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    for key in ["for: ", "interval: "] {
        if let Some(value) = trimmed.strip_prefix(key)
            && let Some(scaled) = faster(value.trim())
        {
            return format!("{indent}{key}{scaled}");
        }
    }
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']') else { break };
        out.push_str(&rest[..=open]);
        let inside = &rest[open + 1..open + close];
        out.push_str(&faster(inside).unwrap_or_else(|| inside.to_owned()));
        out.push(']');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Writes the seed's rule files, sped up, into `dir`; returns their alert names.
fn seed_rules(dir: &std::path::Path) -> Vec<String> {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rules/seed");
    let mut alerts = Vec::new();
    for entry in std::fs::read_dir(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display())) {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            if let Some(name) = line.trim_start().strip_prefix("- alert: ") {
                alerts.push(name.trim().to_owned());
            }
            out.push_str(&speed_up(line));
            out.push('\n');
        }
        std::fs::write(dir.join(path.file_name().unwrap()), out).unwrap();
    }
    alerts
}

#[test]
fn durations_are_sped_up_and_nothing_else_changes() {
    assert_eq!(speed_up("        for: 5m"), "        for: 5s");
    assert_eq!(speed_up("    interval: 30s"), "    interval: 1s");
    assert_eq!(
        speed_up(r#"        expr: sum(rate(http_requests_total{status=~"5.."}[5m])) by (service) > 5"#),
        r#"        expr: sum(rate(http_requests_total{status=~"5.."}[5s])) by (service) > 5"#
    );
    assert_eq!(speed_up("x[10m] / y[1h]"), "x[10s] / y[60s]");
    assert_eq!(speed_up("description: \"[not a duration]\""), "description: \"[not a duration]\"");
}

/// Names of the alerts in `state` ("firing" or "pending") per `/api/v1/alerts`.
fn alerts_in(aggregator: &Aggregator, state: &str) -> BTreeSet<String> {
    let (_, body) = aggregator.get("/api/v1/alerts").expect("aggregator reachable");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == state)
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_seed_rules_fire_and_resolve_on_agent_data() {
    let work = tempfile::tempdir().unwrap();
    let rules_dir = work.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    let all_alerts: BTreeSet<String> = seed_rules(&rules_dir).into_iter().collect();
    assert!(all_alerts.len() >= 19, "seed alerts: {all_alerts:?}");

    let source = Arc::new(Mutex::new(Source {
        phase: Phase::Bad,
        last: Instant::now(),
        counters: vec![1000.0; COUNTERS.len()],
    }));
    let served = Arc::clone(&source);
    let target = serve_text(move |path| served.lock().unwrap().render(path));
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("app-1");
    let http = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = Aggregator::start_configured(
        &pki,
        work.path(),
        "aggregator",
        http,
        quic,
        &format!("[rules]\nfiles = [\"{}/*.yml\"]\nevaluation_interval = \"1s\"\n", rules_dir.display()),
    );
    // Scrape jobs named as the seed's rules expect (`node-exporter`,
    // `smart-dairy-api` for `up`); the metrics themselves come from other jobs.
    let jobs: String = [
        ("node-metrics", "node"),
        ("node-exporter", "down"),
        ("api-metrics", "api"),
        ("smart-dairy-api", "down"),
        ("postgres", "db"),
        ("business", "business"),
    ]
    .iter()
    .map(|(job, path)| format!("[[collect.scrape]]\njob = \"{job}\"\nurl = \"http://{target}/{path}\"\n"))
    .collect();
    let config = agent_config_with(
        work.path(),
        &pki,
        "app-1",
        &[quic],
        "1s",
        "",
        &format!("[collect.host]\nenabled = false\n{jobs}"),
    );
    let _agent = start_agent(work.path(), "app-1", &config);

    // The seed's HighConnectionUsage cannot match (see the module comment).
    let expected: BTreeSet<String> = all_alerts.iter().filter(|a| *a != "HighConnectionUsage").cloned().collect();
    let fired = wait_for(Duration::from_secs(90), || {
        let firing = alerts_in(&aggregator, "firing");
        expected.is_subset(&firing).then_some(firing)
    });
    let firing = fired.unwrap_or_else(|| {
        panic!(
            "not every seed alert fired; missing {:?}\n{}",
            expected.difference(&alerts_in(&aggregator, "firing")).collect::<Vec<_>>(),
            aggregator.process.log()
        )
    });
    assert!(
        !firing.contains("HighConnectionUsage") && !alerts_in(&aggregator, "pending").contains("HighConnectionUsage")
    );

    source.lock().unwrap().phase = Phase::Good;
    let resolved = wait_for(Duration::from_secs(90), || {
        let active: BTreeSet<String> =
            alerts_in(&aggregator, "firing").union(&alerts_in(&aggregator, "pending")).cloned().collect();
        active.is_empty().then_some(())
    });
    assert!(
        resolved.is_some(),
        "still active with healthy data: {:?}",
        alerts_in(&aggregator, "firing").union(&alerts_in(&aggregator, "pending")).collect::<Vec<_>>()
    );
}
