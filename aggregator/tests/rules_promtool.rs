//! Differential test against Prometheus 2.42's own `promtool` (Debian's
//! `prometheus` package): the same rule unit test files give the same verdict
//! in `promtool test rules` and `herd-aggregator rules test`, and alert
//! annotations rendered from the same templates are identical, which checks
//! Herd's Go-template subset (`$value` formatting, `humanize*`, `printf`,
//! `if`, comparisons) against Go's text/template.
//!
//! Without `promtool` on PATH the test says so and passes, unless `HERD_REQUIRE_PEERS=1`.

mod common;

use common::{promtool_available, run};

const BIN: &str = env!("CARGO_BIN_EXE_herd-aggregator");

const RULES: &str = r#"groups:
- name: templates
  rules:
  - alert: Rendered
    expr: label_replace(vector(VALUE), "service", "api", "", "")
    labels:
      level: '{{ if gt $value 100.0 }}high{{ else }}low{{ end }}'
    annotations:
      a1: "{{ $value }}"
      a2: "{{ $value | humanize }}"
      a3: "{{ $value | humanizePercentage }}"
      a4: "{{ $value | humanizeDuration }}"
      a5: "{{ printf \"%.2f\" $value }}"
      a6: "{{ if gt $value 80.0 }}high{{ else if gt $value 0.5 }}mid{{ else }}ok{{ end }}"
      a7: "{{ $labels.service | toUpper }} {{ title \"high load\" }}"
      a8: "{{ printf \"%5.1f|%-4s|%d\" 2.71 \"ab\" 3 }}"
      a9: "{{ printf \"%g %e %v\" $value $value $value }}"
      b1: "{{ humanize 0.0012 }} {{ humanizeDuration 0.0015 }} {{ humanizeDuration 65.5 }} {{ humanizePercentage 0.1234567 }}"
      b2: "{{ $labels.missing }}!{{ $labels }}"
      b3: "{{ if eq $labels.service \"api\" \"web\" }}front{{ end }}|{{ not 0 }}|{{ lt 1.0 2.0 }}"
      b4: "{{- if ne $labels.service \"\" -}} on {{ $labels.service }}{{- end }}"
"#;

const TESTS: &str = r#"rule_files: [rules.yml]
tests:
- input_series: []
  alert_rule_test:
  - eval_time: 0m
    alertname: Rendered
    exp_alerts: []
"#;

/// The `Annotations:{...}` of the first alert in a failure report.
fn annotations(report: &str) -> String {
    let start = report.find("Annotations:{").unwrap_or_else(|| panic!("no annotations in:\n{report}"));
    let rest = &report[start..];
    rest[..rest.find("}").expect("closing brace") + 1].to_owned()
}

#[test]
fn templates_render_as_go_does() {
    if !promtool_available() {
        return;
    }
    for value in ["1234567.891", "0.75", "95", "-3", "0", "0.00001234", "NaN", "1e21"] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.yml"), RULES.replace("VALUE", value)).expect("write rules");
        std::fs::write(dir.path().join("test.yml"), TESTS).expect("write tests");
        let (promtool_code, promtool) = run("promtool", &["test", "rules", "test.yml"], dir.path());
        let (herd_code, herd) = run(BIN, &["rules", "test", "test.yml"], dir.path());
        // Both fail (no alert was expected) and show what they got.
        assert_eq!((promtool_code, herd_code), (1, 1), "promtool:\n{promtool}\nherd:\n{herd}");
        assert_eq!(annotations(&herd), annotations(&promtool), "value {value}");
        let level = |report: &str| report.contains("level=\"high\"");
        assert_eq!(level(&herd), level(&promtool), "value {value}:\n{promtool}\n{herd}");
    }
}

#[test]
fn unit_tests_get_the_same_verdict() {
    if !promtool_available() {
        return;
    }
    let rules = "groups:\n- name: node\n  rules:\n  - alert: NodeDown\n    expr: up == 0\n    for: 1m\n    labels:\n      severity: critical\n    annotations:\n      summary: 'Node {{ $labels.instance }} is down'\n";
    let passing = "rule_files: [rules.yml]\nevaluation_interval: 30s\ntests:\n- interval: 30s\n  input_series:\n  - series: 'up{job=\"node\", instance=\"a\"}'\n    values: '1 1 0 0 0 0'\n  alert_rule_test:\n  - eval_time: 1m30s\n    alertname: NodeDown\n    exp_alerts: []\n  - eval_time: 2m\n    alertname: NodeDown\n    exp_alerts:\n    - exp_labels: {severity: critical, job: node, instance: a}\n      exp_annotations: {summary: 'Node a is down'}\n  promql_expr_test:\n  - expr: sum(up)\n    eval_time: 30s\n    exp_samples:\n    - labels: '{}'\n      value: 1\n";
    for (tests, expected) in [
        (passing.to_owned(), 0),
        (passing.replace("eval_time: 1m30s", "eval_time: 2m30s"), 1),
        (passing.replace("value: 1\n", "value: 2\n"), 1),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
        std::fs::write(dir.path().join("test.yml"), &tests).expect("write tests");
        let (promtool_code, promtool) = run("promtool", &["test", "rules", "test.yml"], dir.path());
        let (herd_code, herd) = run(BIN, &["rules", "test", "test.yml"], dir.path());
        assert_eq!(promtool_code, expected, "promtool:\n{promtool}\n{tests}");
        assert_eq!(herd_code, expected, "herd:\n{herd}\n{tests}");
    }
}
