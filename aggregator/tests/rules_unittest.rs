//! Rule unit tests in promtool's format through `herd-aggregator rules test`:
//! the seed's NodeDown and DiskSpaceLow rules (copied here unchanged) pass
//! their tests, and a wrong expectation fails with what was expected and got.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_herd-aggregator");

const RULES: &str = r#"groups:
  - name: infrastructure_alerts
    interval: 30s
    rules:
      - alert: DiskSpaceLow
        expr: (node_filesystem_avail_bytes / node_filesystem_size_bytes) * 100 < 10
        for: 5m
        labels:
          severity: critical
          team: devops
        annotations:
          summary: "Disk space low on {{ $labels.instance }}"
          description: "Disk {{ $labels.mountpoint }} has only {{ $value }}% available"
      - alert: NodeDown
        expr: up{job="node-exporter"} == 0
        for: 1m
        labels:
          severity: critical
          team: devops
        annotations:
          summary: "Node {{ $labels.instance }} is down"
          description: "Node {{ $labels.instance }} has been down for more than 1 minute"
"#;

const TESTS: &str = r#"rule_files:
  - infrastructure.yml
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: 'up{job="node-exporter", instance="web-1"}'
        values: '1 1 0 0 0 0 0'
      - series: 'node_filesystem_avail_bytes{instance="db-1", mountpoint="/var"}'
        values: '50+0x5 5x20'
      - series: 'node_filesystem_size_bytes{instance="db-1", mountpoint="/var"}'
        values: '100x30'
    alert_rule_test:
      # Down from 1m: pending at 1m30s, firing from 2m.
      - eval_time: 1m30s
        alertname: NodeDown
        exp_alerts: []
      - eval_time: 2m
        alertname: NodeDown
        exp_alerts:
          - exp_labels: {severity: critical, team: devops, job: node-exporter, instance: web-1}
            exp_annotations:
              summary: "Node web-1 is down"
              description: "Node web-1 has been down for more than 1 minute"
      # Below 10% from 3m; fires 5m later.
      - eval_time: 7m30s
        alertname: DiskSpaceLow
        exp_alerts: []
      - eval_time: 8m
        alertname: DiskSpaceLow
        exp_alerts:
          - exp_labels: {severity: critical, team: devops, instance: db-1, mountpoint: /var}
            exp_annotations:
              summary: "Disk space low on db-1"
              description: "Disk /var has only 5% available"
    promql_expr_test:
      - expr: up == 0
        eval_time: 1m
        exp_samples:
          - labels: 'up{job="node-exporter", instance="web-1"}'
            value: 0
"#;

fn run_tests(tests: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("infrastructure.yml"), RULES).expect("write rules");
    let test_file = dir.path().join("infrastructure_test.yml");
    std::fs::write(&test_file, tests).expect("write tests");
    let output = Command::new(BIN).args(["rules", "test"]).arg(&test_file).output().expect("run herd-aggregator");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn seed_rules_pass_their_unit_tests() {
    let (code, out) = run_tests(TESTS);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("  SUCCESS"), "{out}");
}

#[test]
fn a_wrong_expectation_fails_with_expected_and_got() {
    let (code, out) = run_tests(&TESTS.replace("eval_time: 1m30s", "eval_time: 2m30s"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains("alertname: NodeDown, time: 2m30s"), "{out}");
    assert!(out.contains("got:[{Labels:{alertname=\"NodeDown\""), "{out}");
}
