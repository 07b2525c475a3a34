//! Prometheus rule files, read unchanged: YAML with `groups:` of alerting and
//! recording rules. Owns parsing and every check `promtool check rules` makes
//! (expressions parse, names are valid, templates parse); yields typed
//! `RuleGroup`s. It evaluates nothing and reads no clock.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_common::metric::Labels;
use promql_parser::parser::Expr;
use serde::Deserialize;

use super::template::Template;
use crate::promql::{Engine, parse_duration_ms};

/// One problem in a rule file, with the line (and column) where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Everything wrong with one rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleFileError {
    pub file: PathBuf,
    pub problems: Vec<RuleProblem>,
}

impl fmt::Display for RuleFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
                if let Some(column) = problem.column {
                    write!(f, ":{column}")?;
                }
            }
            write!(f, ": {}", problem.message)?;
        }
        Ok(())
    }
}

/// A validated rule group.
#[derive(Debug, Clone)]
pub struct RuleGroup {
    pub name: String,
    pub file: PathBuf,
    /// The group's own `interval`, if it sets one.
    pub interval: Option<Duration>,
    /// Alerts (or series, for recording rules) one evaluation may produce; 0 is no limit.
    pub limit: usize,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub enum Rule {
    Recording(RecordingRule),
    Alerting(AlertingRule),
}

impl Rule {
    pub fn name(&self) -> &str {
        match self {
            Rule::Recording(rule) => &rule.record,
            Rule::Alerting(rule) => &rule.alert,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecordingRule {
    pub record: String,
    pub expr_text: String,
    pub expr: Expr,
    pub labels: Labels,
}

#[derive(Debug, Clone)]
pub struct AlertingRule {
    pub alert: String,
    pub expr_text: String,
    pub expr: Expr,
    pub hold: Duration,
    pub keep_firing_for: Duration,
    /// Label templates, rendered per alert.
    pub labels: Vec<(String, Template)>,
    pub annotations: Vec<(String, Template)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: String,
    interval: Option<String>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    record: Option<String>,
    alert: Option<String>,
    // Prometheus accepts a bare number (`expr: 1`) as an expression.
    expr: Option<serde_norway::Value>,
    #[serde(rename = "for")]
    hold: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads and validates one rule file.
pub fn load_file(path: &Path) -> Result<Vec<RuleGroup>, RuleFileError> {
    let text = std::fs::read_to_string(path).map_err(|err| RuleFileError {
        file: path.to_owned(),
        problems: vec![RuleProblem { line: None, column: None, message: format!("cannot read the file: {err}") }],
    })?;
    parse_rule_file(path, &text)
}

/// Parses and validates rule file text; `path` only names it in errors.
pub fn parse_rule_file(path: &Path, text: &str) -> Result<Vec<RuleGroup>, RuleFileError> {
    let fail = |problems| RuleFileError { file: path.to_owned(), problems };
    // An empty file (or one of comments) is a valid file with no groups.
    let raw: RawFile = if text.trim().is_empty() || only_comments(text) {
        RawFile { groups: Vec::new() }
    } else {
        serde_norway::from_str(text).map_err(|err| {
            let location = err.location();
            let mut message = err.to_string();
            // The location is reported as `file:line:column`; drop the parser's own copy of it.
            if let Some(location) = &location {
                let suffix = format!(" at line {} column {}", location.line(), location.column());
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_owned();
                }
            }
            fail(vec![RuleProblem {
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message,
            }])
        })?
    };
    // serde does not keep positions: find each rule's line by its key, in order.
    let mut rule_lines = rule_start_lines(text).into_iter();
    let mut problems = Vec::new();
    let mut groups = Vec::new();
    let mut group_names = HashSet::new();
    for raw_group in raw.groups {
        let mut push =
            |line: Option<usize>, message: String| problems.push(RuleProblem { line, column: None, message });
        if raw_group.name.is_empty() {
            push(None, "group name must not be empty".into());
        } else if !group_names.insert(raw_group.name.clone()) {
            push(None, format!("groupname: \"{}\" is repeated in the same file", raw_group.name));
        }
        let interval = match raw_group.interval.as_deref().map(parse_duration) {
            None => None,
            Some(Ok(d)) if !d.is_zero() => Some(d),
            Some(Ok(_)) => {
                push(None, format!("group {:?}: interval must be above zero", raw_group.name));
                None
            }
            Some(Err(err)) => {
                push(None, format!("group {:?}: interval: {err}", raw_group.name));
                None
            }
        };
        let mut rules = Vec::new();
        for (index, raw_rule) in raw_group.rules.into_iter().enumerate() {
            let line = rule_lines.next();
            let name = raw_rule.alert.clone().or_else(|| raw_rule.record.clone()).unwrap_or_default();
            match validate_rule(raw_rule) {
                Ok(rule) => rules.push(rule),
                Err(messages) => {
                    for message in messages {
                        let message = format!("group {:?}, rule {}, {:?}: {message}", raw_group.name, index + 1, name);
                        push(line, message);
                    }
                }
            }
        }
        groups.push(RuleGroup { name: raw_group.name, file: path.to_owned(), interval, limit: raw_group.limit, rules });
    }
    if problems.is_empty() { Ok(groups) } else { Err(fail(problems)) }
}

fn only_comments(text: &str) -> bool {
    text.lines().all(|line| line.trim().is_empty() || line.trim_start().starts_with('#') || line.trim() == "---")
}

/// 1-based lines on which a rule starts (`- alert:` or `- record:`, or a
/// rule whose first key is another one), in file order.
fn rule_start_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut in_rules = false;
    let mut rules_indent = 0;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with("rules:") {
            in_rules = true;
            rules_indent = indent;
            continue;
        }
        if in_rules && indent <= rules_indent && !trimmed.starts_with('-') {
            in_rules = false;
        }
        if in_rules && indent >= rules_indent && trimmed.starts_with("- ") {
            lines.push(number + 1);
        } else if in_rules && indent < rules_indent {
            in_rules = false;
        }
    }
    lines
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match parse_duration_ms(text) {
        Some(ms) if ms >= 0 => Ok(Duration::from_millis(ms as u64)),
        _ => Err(format!("not a valid duration string: {text:?} (expected e.g. \"30s\", \"5m\", \"1h30m\")")),
    }
}

pub(crate) fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn expr_text(value: Option<serde_norway::Value>) -> Result<String, String> {
    match value {
        None | Some(serde_norway::Value::Null) => Err("field 'expr' must be set in rule".into()),
        Some(serde_norway::Value::String(text)) if text.trim().is_empty() => {
            Err("field 'expr' must be set in rule".into())
        }
        Some(serde_norway::Value::String(text)) => Ok(text),
        Some(serde_norway::Value::Number(number)) => Ok(number.to_string()),
        Some(serde_norway::Value::Bool(value)) => Ok(value.to_string()),
        Some(_) => Err("field 'expr' must be a string".into()),
    }
}

/// A rule, or every message about what is wrong with it.
fn validate_rule(raw: RawRule) -> Result<Rule, Vec<String>> {
    let mut errors = Vec::new();
    let expr_text = expr_text(raw.expr).map_err(|e| errors.push(e)).ok();
    let expr = expr_text.as_deref().and_then(|text| {
        Engine::parse(text).map_err(|err| errors.push(format!("could not parse expression: {err}"))).ok()
    });
    for name in raw.labels.keys() {
        if !is_valid_label_name(name) {
            errors.push(format!("invalid label name: {name}"));
        }
    }
    let rule = match (raw.record, raw.alert) {
        (Some(_), Some(_)) => {
            errors.push("only one of 'record' and 'alert' must be set".into());
            None
        }
        (None, None) => {
            errors.push("one of 'record' or 'alert' must be set".into());
            None
        }
        (Some(record), None) => {
            if !is_valid_metric_name(&record) {
                errors.push(format!("invalid recording rule name: {record}"));
            }
            if !raw.annotations.is_empty() {
                errors.push("invalid field 'annotations' in recording rule".into());
            }
            if raw.hold.is_some() {
                errors.push("invalid field 'for' in recording rule".into());
            }
            if raw.keep_firing_for.is_some() {
                errors.push("invalid field 'keep_firing_for' in recording rule".into());
            }
            let labels = Labels::from_pairs(raw.labels);
            match (expr_text, expr) {
                (Some(expr_text), Some(expr)) => {
                    Some(Rule::Recording(RecordingRule { record, expr_text, expr, labels }))
                }
                _ => None,
            }
        }
        (None, Some(alert)) => {
            if alert.is_empty() {
                errors.push("invalid alert name: must not be empty".into());
            }
            let mut duration = |key: &str, value: Option<String>| match value.as_deref().map(parse_duration) {
                None => Duration::ZERO,
                Some(Ok(d)) => d,
                Some(Err(err)) => {
                    errors.push(format!("{key}: {err}"));
                    Duration::ZERO
                }
            };
            let hold = duration("for", raw.hold);
            let keep_firing_for = duration("keep_firing_for", raw.keep_firing_for);
            let mut templates = |kind: &str, map: BTreeMap<String, String>| -> Vec<(String, Template)> {
                let mut out = Vec::new();
                for (name, text) in map {
                    if kind == "annotation" && !is_valid_label_name(&name) {
                        errors.push(format!("invalid annotation name: {name}"));
                    }
                    match Template::parse(&text) {
                        Ok(template) => out.push((name, template)),
                        Err(err) => errors.push(format!("{kind} {name:?}: template: {err}")),
                    }
                }
                out
            };
            let labels = templates("label", raw.labels);
            let annotations = templates("annotation", raw.annotations);
            match (expr_text, expr) {
                (Some(expr_text), Some(expr)) => Some(Rule::Alerting(AlertingRule {
                    alert,
                    expr_text,
                    expr,
                    hold,
                    keep_firing_for,
                    labels,
                    annotations,
                })),
                _ => None,
            }
        }
    };
    match rule {
        Some(rule) if errors.is_empty() => Ok(rule),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`; returns the rule count or the error text.
    fn check(text: &str, expected: Result<usize, &[&str]>) {
        let result = parse_rule_file(Path::new("r.yml"), text);
        match (result, expected) {
            (Ok(groups), Ok(count)) => assert_eq!(groups.iter().map(|g| g.rules.len()).sum::<usize>(), count),
            (Err(err), Err(fragments)) => {
                let text = err.to_string();
                for fragment in fragments {
                    assert!(text.contains(fragment), "{text:?} lacks {fragment:?}");
                }
            }
            (got, want) => panic!("got {:?}, want {want:?}", got.map(|g| g.len()).map_err(|e| e.to_string())),
        }
    }

    #[test]
    fn rule_files() {
        check("", Ok(0));
        check("# nothing\n", Ok(0));
        check("groups: []\n", Ok(0));
        check(
            "groups:\n- name: g\n  interval: 15s\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    keep_firing_for: 1m\n    labels: {severity: page}\n    annotations: {summary: '{{ $labels.instance }} down'}\n",
            Ok(2),
        );
        check("groups:\n- name: g\n  rules:\n  - record: x\n    expr: 1\n", Ok(1));
        check(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up ==\n",
            Err(&["r.yml:4: group \"g\", rule 1, \"A\": could not parse expression"]),
        );
        check(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    exp: up\n",
            Err(&["r.yml:5:5: groups[0].rules[0]: unknown field `exp`"]),
        );
        check(
            "groups:\n- name: g\n  rules:\n  - record: 'bad name'\n    expr: up\n    for: 1m\n",
            Err(&["invalid recording rule name: bad name", "invalid field 'for' in recording rule"]),
        );
        check(
            "groups:\n- name: g\n  rules: []\n- name: g\n  rules: []\n",
            Err(&["groupname: \"g\" is repeated in the same file"]),
        );
        check(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n  - alert: B\n    expr: up\n    for: 5x\n",
            Err(&["r.yml:6: group \"g\", rule 2, \"B\": for: not a valid duration"]),
        );
        check(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    record: B\n    expr: up\n",
            Err(&["only one of 'record' and 'alert' must be set"]),
        );
        check(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    annotations:\n      s: '{{ $value '\n",
            Err(&["annotation \"s\": template"]),
        );
    }

    #[test]
    fn seed_rule_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rules/seed");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipped: {} is not here", dir.display());
            return;
        };
        let mut rules = 0;
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let groups = load_file(&path).unwrap_or_else(|err| panic!("{err}"));
            assert!(groups.iter().all(|g| g.interval.is_some()), "{}", path.display());
            rules += groups.iter().map(|g| g.rules.len()).sum::<usize>();
        }
        assert_eq!(rules, 19);
    }
}
