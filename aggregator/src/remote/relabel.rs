//! `write_relabel_configs` with Prometheus's semantics for the actions
//! `replace`, `keep`, `drop`, `labeldrop` and `labelkeep`: source label
//! values joined by the separator are matched against the fully anchored
//! regex; rules apply in order and a dropped series stops there.

use herd_common::config::remote_write::{RelabelAction, RelabelConfig};
use herd_common::metric::Labels;
use regex::Regex;

#[derive(Debug, Clone)]
struct Rule {
    config: RelabelConfig,
    regex: Regex,
}

/// Compiled rules of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct Relabeler {
    rules: Vec<Rule>,
}

impl Relabeler {
    /// Compiles `configs` (validated already, so the regexes compile).
    pub fn new(configs: &[RelabelConfig]) -> Result<Self, regex::Error> {
        let rules = configs
            .iter()
            .map(|config| Ok(Rule { config: config.clone(), regex: Regex::new(&format!("^(?s:{})$", config.regex))? }))
            .collect::<Result<_, regex::Error>>()?;
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The labels to send for a series, or `None` if it is dropped.
    pub fn apply(&self, labels: &Labels) -> Option<Labels> {
        let mut pairs: Vec<(String, String)> = labels.as_pairs().to_vec();
        for rule in &self.rules {
            let config = &rule.config;
            match config.action {
                RelabelAction::LabelDrop => pairs.retain(|(name, _)| !rule.regex.is_match(name)),
                RelabelAction::LabelKeep => pairs.retain(|(name, _)| rule.regex.is_match(name)),
                action => {
                    let mut joined = String::new();
                    for (i, source) in config.source_labels.iter().enumerate() {
                        if i > 0 {
                            joined.push_str(&config.separator);
                        }
                        let value = pairs.iter().find(|(n, _)| n == source).map_or("", |(_, v)| v.as_str());
                        joined.push_str(value);
                    }
                    match action {
                        RelabelAction::Keep if !rule.regex.is_match(&joined) => return None,
                        RelabelAction::Drop if rule.regex.is_match(&joined) => return None,
                        RelabelAction::Replace => {
                            let Some(captures) = rule.regex.captures(&joined) else { continue };
                            let mut value = String::new();
                            captures.expand(&config.replacement, &mut value);
                            let mut target = String::new();
                            captures.expand(&config.target_label, &mut target);
                            pairs.retain(|(name, _)| *name != target);
                            if !value.is_empty() {
                                pairs.push((target, value));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Some(Labels::from_pairs(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: RelabelAction, sources: &[&str], regex: &str) -> RelabelConfig {
        RelabelConfig {
            source_labels: sources.iter().map(|s| s.to_string()).collect(),
            separator: ";".into(),
            regex: regex.into(),
            action,
            target_label: String::new(),
            replacement: "$1".into(),
        }
    }

    fn series(name: &str, job: &str) -> Labels {
        Labels::from_pairs([("__name__", name), ("job", job), ("instance", "web-1")])
    }

    #[test]
    fn keep_is_anchored_and_drop_removes_matches() {
        let keep = Relabeler::new(&[rule(RelabelAction::Keep, &["__name__"], "node_load.*")]).unwrap();
        assert!(keep.apply(&series("node_load1", "node")).is_some());
        // Anchored: "xnode_load1" does not match "node_load.*".
        assert!(keep.apply(&series("xnode_load1", "node")).is_none());
        assert!(keep.apply(&series("up", "node")).is_none());
        let drop = Relabeler::new(&[rule(RelabelAction::Drop, &["__name__", "job"], "up;red.*")]).unwrap();
        assert!(drop.apply(&series("up", "redis")).is_none());
        assert!(drop.apply(&series("up", "node")).is_some());
        // A missing source label reads as "": a rule matching "" catches it.
        let missing = Relabeler::new(&[rule(RelabelAction::Drop, &["absent"], "")]).unwrap();
        assert!(missing.apply(&series("up", "node")).is_none());
    }

    #[test]
    fn replace_and_label_sets() {
        let mut replace = rule(RelabelAction::Replace, &["instance"], "(.*)-(\\d+)");
        replace.target_label = "host_number".into();
        replace.replacement = "n$2".into();
        let labeldrop = rule(RelabelAction::LabelDrop, &[], "job");
        let relabeler = Relabeler::new(&[replace, labeldrop]).unwrap();
        let out = relabeler.apply(&series("up", "node")).unwrap();
        assert_eq!(out.get("host_number"), Some("n1"));
        assert_eq!(out.get("job"), None);
        assert_eq!(out.get("__name__"), Some("up"));
        let keep_only = Relabeler::new(&[rule(RelabelAction::LabelKeep, &[], "__name__|job")]).unwrap();
        assert_eq!(keep_only.apply(&series("up", "node")).unwrap().len(), 2);
    }
}
