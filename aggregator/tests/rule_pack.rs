//! Herd's default rule pack (`packaging/rules/*.yml`) against Prometheus
//! 2.42's own `promtool` (Debian's `prometheus` package) and against the
//! monitoring setup guide it comes from:
//!
//! - every pack file passes `promtool check rules` and `herd-aggregator rules check`;
//! - every unit test file (`packaging/rules/tests/*.yml`) passes
//!   `promtool test rules` and `herd-aggregator rules test`;
//! - the unit tests can fail: moving one rule's threshold so that the rule
//!   never fires, or always fires, makes its area's tests fail, in both tools
//!   alike (so every thresholded rule has a firing and a non-firing case);
//! - every threshold of the guide's tables is a warning or critical alert
//!   over the right metric, with the guide's number.
//!
//! Without `promtool` on PATH the promtool halves say so and are skipped,
//! unless `HERD_REQUIRE_PEERS=1`, which makes a missing promtool a failure.

mod common;

use common::{promtool_available, run};
use std::path::{Path, PathBuf};

use herd_aggregator::rules::{Rule, load_file};
use promql_parser::parser::Expr;
use promql_parser::parser::token::{T_GTR, T_LSS};

const BIN: &str = env!("CARGO_BIN_EXE_herd-aggregator");

/// The areas of the pack: `<area>.yml` and `tests/<area>_test.yml`.
const AREAS: [&str; 7] =
    ["infrastructure", "containers", "postgresql", "redis", "application", "business", "availability"];

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One threshold of the setup guide's tables: the area file, the table row,
/// a fragment the rule's expression must contain (the metric it is about),
/// the comparison, and the warning and critical values as the guide gives
/// them (percentages as ratios, per-minute rates as they are).
struct Threshold {
    area: &'static str,
    row: &'static str,
    fragment: &'static str,
    above: bool,
    warning: Option<f64>,
    critical: Option<f64>,
}

const fn t(
    area: &'static str,
    row: &'static str,
    fragment: &'static str,
    above: bool,
    warning: Option<f64>,
    critical: Option<f64>,
) -> Threshold {
    Threshold { area, row, fragment, above, warning, critical }
}

/// Sections 3.1.3, 3.2.2, 4.2.2, 5.1.2, 5.2.2 and 6.2 of
/// /work/shared/seed/monitoring-setup-guide.md ("Info only" rows have no
/// threshold; the Kubernetes table of 3.3.3 has no Herd collector behind it).
const GUIDE: &[Threshold] = &[
    t("infrastructure", "CPU Utilization", "node_cpu_seconds_total", true, Some(0.70), Some(0.90)),
    t("infrastructure", "Memory Utilization", "node_memory_MemAvailable_bytes", true, Some(0.75), Some(0.90)),
    t("infrastructure", "Disk Usage", "node_filesystem_avail_bytes", true, Some(0.80), Some(0.90)),
    t("infrastructure", "Disk I/O", "node_disk_writes_completed_total", true, Some(5000.0), None),
    t("infrastructure", "Network Traffic (in)", "node_network_receive_bytes_total", true, Some(800e6), None),
    t("infrastructure", "Network Traffic (out)", "node_network_transmit_bytes_total", true, Some(800e6), None),
    t("infrastructure", "Load Average", "node_load", true, Some(10.0), Some(20.0)),
    t("infrastructure", "Swap Usage", "node_memory_SwapFree_bytes", true, Some(0.50), Some(0.80)),
    t("infrastructure", "File Descriptors", "node_filefd_allocated", true, Some(0.80), None),
    t("containers", "Container CPU", "container_cpu_usage_seconds_total", true, Some(0.80), Some(0.95)),
    t("containers", "Container Memory", "container_memory_working_set_bytes", true, Some(0.80), Some(0.95)),
    t("containers", "Container Network", "container_network_transmit_bytes_total", true, Some(100e6), None),
    t("containers", "Container Uptime", "container_start_time_seconds", false, Some(60.0), None),
    t("containers", "Container Restarts", "container_restart_count[1h]", true, Some(3.0), None),
    t("application", "Request Duration", "histogram_quantile(0.95", true, Some(0.5), Some(2.0)),
    t("application", "Request Rate", "rate(http_requests_total[5m])) <", false, Some(50.0), Some(10.0)),
    t("application", "Error Rate", "http_requests_total{status_code=~\"5..\"}", true, Some(0.01), Some(0.05)),
    t("application", "Active Users", "active_users", false, Some(1000.0), None),
    t("application", "Queue Length", "queue", true, Some(100.0), Some(500.0)),
    t("postgresql", "Active Connections", "(pg_stat_database_numbackends) >", true, Some(400.0), Some(450.0)),
    t("postgresql", "Connection Usage", "pg_settings_max_connections", true, Some(0.80), Some(0.90)),
    t("postgresql", "Query Duration", "pg_stat_statements_seconds_total", true, Some(0.1), Some(0.5)),
    t(
        "postgresql",
        "Slow Queries (>1s, per minute)",
        "pg_stat_statements_calls_total[5m]) > 1",
        true,
        Some(10.0),
        None,
    ),
    t("postgresql", "Cache Hit Ratio", "pg_stat_database_blks_hit", false, Some(0.95), Some(0.90)),
    t("postgresql", "Database Size", "pg_database_size_bytes", true, Some(800.0 * GIB), None),
    t("postgresql", "Lock Wait Time", "lock_wait", true, Some(0.1), Some(1.0)),
    t("postgresql", "Replication Lag", "pg_replication_lag_seconds", true, Some(5.0), Some(30.0)),
    t("redis", "Memory Usage", "redis_memory_used_bytes", true, Some(13.0 * GIB), Some(15.0 * GIB)),
    t("redis", "Memory Fragmentation", "redis_mem_fragmentation_ratio", true, Some(1.5), None),
    t("redis", "Keyspace Hits/Misses", "redis_keyspace_misses_total", false, Some(0.80), Some(0.70)),
    t("redis", "Evicted Keys (per minute)", "redis_evicted_keys_total", true, Some(100.0), None),
    t("redis", "Connected Clients", "redis_connected_clients", true, Some(5000.0), None),
    t("business", "Orders per Minute", "smart_dairy_orders_total", false, Some(10.0), None),
    t("business", "Payment Success Rate", "smart_dairy_payments_total", false, Some(0.98), Some(0.95)),
    t("business", "Conversion Rate", "stage=\"homepage\"", false, Some(0.02), None),
    t("business", "Cart Abandonment", "stage=\"add_to_cart\"", true, Some(0.70), None),
    t("business", "Active Users (24h)", "smart_dairy_active_users{time_window=\"24h\"}", false, Some(1000.0), None),
    t("business", "New Registrations (per day)", "smart_dairy_users_registered_total[1d]", false, Some(50.0), None),
];

/// An alerting rule of the pack, as Herd's rule loader reads it.
struct PackRule {
    alert: String,
    expr_text: String,
    severity: String,
    /// The top-level comparison with a number: (is `>`, the number), for
    /// `... > N` and `... < N`.
    threshold: Option<(bool, f64)>,
}

fn pack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules")
}

fn comparison(expr: &Expr) -> Option<(bool, f64)> {
    let number = |e: &Expr| match e {
        Expr::NumberLiteral(n) => Some(n.val),
        Expr::Paren(p) => match &*p.expr {
            Expr::NumberLiteral(n) => Some(n.val),
            _ => None,
        },
        _ => None,
    };
    match expr {
        Expr::Paren(p) => comparison(&p.expr),
        Expr::Binary(b) => {
            let op = b.op.id();
            if op != T_GTR && op != T_LSS {
                return None;
            }
            if let Some(n) = number(&b.rhs) {
                Some((op == T_GTR, n))
            } else {
                // `N < expr` is `expr > N`.
                number(&b.lhs).map(|n| (op == T_LSS, n))
            }
        }
        _ => None,
    }
}

fn pack_rules(area: &str) -> Vec<PackRule> {
    let path = pack_dir().join(format!("{area}.yml"));
    let groups = load_file(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut rules = Vec::new();
    for group in groups {
        for rule in group.rules {
            let Rule::Alerting(rule) = rule else { continue };
            let label = |name: &str| {
                rule.labels.iter().find(|(key, _)| key == name).map(|(_, value)| value.source().to_owned())
            };
            let annotation = |name: &str| rule.annotations.iter().any(|(key, _)| key == name);
            assert!(
                annotation("summary") && annotation("description"),
                "{area}.yml: {} needs a summary and a description",
                rule.alert
            );
            rules.push(PackRule {
                severity: label("severity").unwrap_or_default(),
                threshold: comparison(&rule.expr),
                alert: rule.alert,
                expr_text: rule.expr_text,
            });
        }
    }
    rules
}

#[test]
fn pack_files_pass_promtool_and_herd_checks() {
    let dir = pack_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("packaging/rules")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yml"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = AREAS.iter().map(|area| format!("{area}.yml")).collect();
    expected.sort();
    assert_eq!(files, expected, "pack files (a new area needs its tests and its rows in GUIDE)");
    let with_promtool = promtool_available();
    for file in &files {
        let (code, out) = run(BIN, &["rules", "check", file], &dir);
        assert_eq!(code, 0, "herd-aggregator rules check {file}:\n{out}");
        if with_promtool {
            let (code, out) = run("promtool", &["check", "rules", file], &dir);
            assert_eq!(code, 0, "promtool check rules {file}:\n{out}");
        }
    }
}

#[test]
fn unit_tests_pass_in_promtool_and_herd() {
    let dir = pack_dir();
    let with_promtool = promtool_available();
    for area in AREAS {
        let test = format!("tests/{area}_test.yml");
        let (herd_code, herd) = run(BIN, &["rules", "test", &test], &dir);
        assert_eq!(herd_code, 0, "herd-aggregator rules test {test}:\n{herd}");
        if with_promtool {
            let (promtool_code, promtool) = run("promtool", &["test", "rules", &test], &dir);
            assert_eq!(promtool_code, 0, "promtool test rules {test}:\n{promtool}");
        }
    }
}

/// Copies the pack with the `index`th alerting rule of `area` changed so
/// its comparison holds for every value (`always`) or for none.
fn mutated_pack(area: &str, index: usize, above: bool, always: bool) -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(out.path().join("tests")).expect("mkdir");
    for entry in std::fs::read_dir(pack_dir().join("tests")).expect("tests dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, out.path().join("tests").join(path.file_name().expect("name"))).expect("copy");
    }
    for other in AREAS {
        std::fs::copy(pack_dir().join(format!("{other}.yml")), out.path().join(format!("{other}.yml"))).expect("copy");
    }
    let path = pack_dir().join(format!("{area}.yml"));
    let text = std::fs::read_to_string(&path).expect("read");
    // The rule's text runs from its `- alert:` line to the next rule; its
    // threshold is the last `>`/`<` number before its `for:` or `labels:`.
    let starts: Vec<usize> = text.match_indices("- alert:").map(|(at, _)| at).collect();
    let start = starts[index];
    let end = starts.get(index + 1).copied().unwrap_or(text.len());
    let rule = &text[start..end];
    let expr_end =
        ["\n        for:", "\n        labels:"].iter().filter_map(|key| rule.find(key)).min().expect("expr end");
    let op = if above { '>' } else { '<' };
    let op_at = rule[..expr_end].rfind(op).expect("comparison in the rule text");
    let number_start = op_at + 1 + rule[op_at + 1..].len() - rule[op_at + 1..].trim_start().len();
    let number_len =
        rule[number_start..].find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e')).expect("end of the number");
    let never = if above { "1e300" } else { "-1e300" };
    let every = if above { "-1e300" } else { "1e300" };
    let replacement = if always { every } else { never };
    let mutated = format!(
        "{}{}{}{}",
        &text[..start],
        &rule[..number_start],
        replacement,
        &text[start + number_start + number_len..]
    );
    std::fs::write(out.path().join(format!("{area}.yml")), mutated).expect("write");
    out
}

/// Each thresholded rule is pinned by its tests from both sides: the tests
/// fail when it can never fire (they expect it firing) and when it fires
/// for everything (they expect it silent somewhere), in Herd and promtool
/// alike.
#[test]
fn unit_tests_fail_when_a_threshold_moves() {
    let with_promtool = promtool_available();
    let mut mutants = Vec::new();
    for area in AREAS {
        for (index, rule) in pack_rules(area).into_iter().enumerate() {
            let Some((above, _)) = rule.threshold else { continue };
            for always in [false, true] {
                mutants.push((area, index, above, always, rule.alert.clone(), rule.severity.clone()));
            }
        }
    }
    assert!(mutants.len() >= 2 * GUIDE.len(), "only {} mutants", mutants.len());
    // Each mutant is a few short processes: two workers keep the test near
    // half a minute without taking over a small machine.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some((area, index, above, always, alert, severity)) =
                    mutants.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let test = format!("tests/{area}_test.yml");
                    let dir = mutated_pack(area, *index, *above, *always);
                    let mutated = std::fs::read_to_string(dir.path().join(format!("{area}.yml"))).expect("read");
                    assert!(mutated.contains("1e300"), "{area}.yml rule {index} was not changed");
                    let how = if *always { "always firing" } else { "never firing" };
                    let what = format!("{area}.yml {alert} ({severity}) {how}");
                    let (herd_code, herd) = run(BIN, &["rules", "test", &test], dir.path());
                    assert_eq!(herd_code, 1, "herd-aggregator rules test should fail with {what}:\n{herd}");
                    if with_promtool {
                        let (promtool_code, promtool) = run("promtool", &["test", "rules", &test], dir.path());
                        assert_eq!(promtool_code, 1, "promtool test rules should fail with {what}:\n{promtool}");
                    }
                }
            });
        }
    });
}

#[test]
fn every_guide_threshold_is_an_alert() {
    let mut missing = Vec::new();
    for row in GUIDE {
        let rules = pack_rules(row.area);
        for (severity, value) in [("warning", row.warning), ("critical", row.critical)] {
            let matching: Vec<&PackRule> = rules
                .iter()
                .filter(|rule| rule.severity == severity && rule.expr_text.contains(row.fragment))
                .collect();
            let op = |above: bool| if above { ">" } else { "<" };
            match value {
                Some(value) => {
                    let right = |rule: &&PackRule| {
                        rule.threshold.is_some_and(|(above, threshold)| {
                            above == row.above && (threshold - value).abs() <= value.abs() * 1e-9
                        })
                    };
                    if !matching.iter().any(right) {
                        let found: Vec<String> =
                            matching.iter().map(|rule| format!("{} {:?}", rule.alert, rule.threshold)).collect();
                        missing.push(format!(
                            "{}: no {severity} alert for {} ({} {value}) over {:?}; found {found:?}",
                            row.area,
                            row.row,
                            op(row.above),
                            row.fragment
                        ));
                    }
                }
                // The guide has no such level: none invented either.
                None => {
                    for rule in matching {
                        missing.push(format!(
                            "{}: {} has a {severity} rule {} the guide does not ask for",
                            row.area, row.row, rule.alert
                        ));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
