//! Alertmanager's dispatching, without I/O or a clock (`now_ms` is passed
//! in): alerts are matched down the route tree and aggregated into groups by
//! their route and `group_by` labels; a new group is flushed after
//! `group_wait`, then every `group_interval`. At a flush each integration of
//! the group's receiver gets a notification if the notification log says it
//! needs one: a firing alert it has not been told about, a newly resolved
//! alert (with `send_resolved`), or `repeat_interval` passed since the last
//! notification of a still-firing group. Silenced and inhibited alerts are
//! left out. Resolved alerts leave their groups once flushed; empty groups go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
#[cfg(test)]
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{GroupBy, Route, RouterConfig};
use super::silence::Silences;

/// Notification log entries are forgotten after this long (Alertmanager's `--data.retention`).
const NFLOG_RETENTION_MS: i64 = 5 * 24 * 3600 * 1000;

/// An alert as the router holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at_ms: i64,
    /// When it resolves (or resolved); alerts without one get `resolve_timeout` from their last update.
    pub ends_at_ms: i64,
    pub updated_at_ms: i64,
    pub generator_url: String,
    pub fingerprint: u64,
}

impl Alert {
    pub fn new(
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        starts_at_ms: i64,
        ends_at_ms: i64,
        generator_url: String,
    ) -> Self {
        let fingerprint = fingerprint(&labels);
        Self { labels, annotations, starts_at_ms, ends_at_ms, updated_at_ms: 0, generator_url, fingerprint }
    }

    pub fn resolved(&self, now_ms: i64) -> bool {
        self.ends_at_ms <= now_ms
    }
}

/// Prometheus's label-set fingerprint: FNV-1a over names and values, 0xff-separated.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for (name, value) in labels {
        for b in name.bytes().chain([0xff]).chain(value.bytes()).chain([0xff]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// `{a="b", c="d"}`, as Alertmanager prints label sets in group keys.
pub fn label_set_string(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// One notification for one integration of a receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub receiver: String,
    /// Index of the integration in the receiver's list.
    pub integration: usize,
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    /// Firing alerts, then (with `send_resolved`) resolved ones.
    pub alerts: Vec<Alert>,
    pub firing: BTreeSet<u64>,
    pub resolved: BTreeSet<u64>,
    /// When this notification counts as sent, for the log.
    pub created_ms: i64,
}

impl Notification {
    pub fn status(&self) -> &'static str {
        if self.firing.is_empty() { "resolved" } else { "firing" }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NflogEntry {
    pub firing: BTreeSet<u64>,
    pub resolved: BTreeSet<u64>,
    pub timestamp_ms: i64,
}

/// What was last sent to each integration of each group (`group key`, receiver, integration).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Nflog {
    pub entries: BTreeMap<String, NflogEntry>,
}

impl Nflog {
    fn key(group_key: &str, receiver: &str, integration: usize) -> String {
        format!("{group_key}\u{1f}{receiver}\u{1f}{integration}")
    }

    pub fn record(&mut self, notification: &Notification) {
        let key = Self::key(&notification.group_key, &notification.receiver, notification.integration);
        self.entries.insert(
            key,
            NflogEntry {
                firing: notification.firing.clone(),
                resolved: notification.resolved.clone(),
                timestamp_ms: notification.created_ms,
            },
        );
    }

    pub fn gc(&mut self, now_ms: i64) {
        self.entries.retain(|_, e| e.timestamp_ms + NFLOG_RETENTION_MS > now_ms);
    }

    /// Alertmanager's `DedupStage.needsUpdate`.
    fn needs_update(
        &self,
        key: &str,
        firing: &BTreeSet<u64>,
        resolved: &BTreeSet<u64>,
        send_resolved: bool,
        repeat_ms: i64,
        now_ms: i64,
    ) -> bool {
        let Some(entry) = self.entries.get(key) else { return !firing.is_empty() };
        if !firing.is_subset(&entry.firing) {
            return true;
        }
        if firing.is_empty() {
            // Everything resolved: tell those who were told it fired.
            return !entry.firing.is_empty();
        }
        if send_resolved && !resolved.is_subset(&entry.resolved) {
            return true;
        }
        entry.timestamp_ms + repeat_ms <= now_ms
    }
}

#[derive(Debug, Clone)]
struct AggrGroup {
    receiver: String,
    group_labels: BTreeMap<String, String>,
    alerts: BTreeSet<u64>,
    group_interval_ms: i64,
    repeat_interval_ms: i64,
    next_flush_ms: i64,
}

/// A group as the API shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub receiver: String,
    pub labels: BTreeMap<String, String>,
    pub alerts: Vec<Alert>,
}

/// Why an alert is muted, if it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertStatus {
    pub silenced_by: Vec<String>,
    pub inhibited_by: Vec<String>,
}

impl AlertStatus {
    pub fn muted(&self) -> bool {
        !self.silenced_by.is_empty() || !self.inhibited_by.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Dispatcher {
    alerts: HashMap<u64, Alert>,
    groups: BTreeMap<String, AggrGroup>,
    pub nflog: Nflog,
}

impl Dispatcher {
    /// A dispatcher that remembers what was sent before (a restored log).
    pub fn with_nflog(nflog: Nflog) -> Self {
        Self { nflog, ..Self::default() }
    }

    /// Takes in an alert (from the rules or the API): stores or merges it and
    /// puts it into the group of every route it matches.
    pub fn insert(&mut self, config: &RouterConfig, mut alert: Alert, now_ms: i64) {
        alert.updated_at_ms = now_ms;
        if let Some(previous) = self.alerts.get(&alert.fingerprint)
            && !previous.resolved(now_ms)
            && previous.starts_at_ms < alert.starts_at_ms
        {
            // The same alert still firing: keep when it started.
            alert.starts_at_ms = previous.starts_at_ms;
        }
        let resolved = alert.resolved(now_ms);
        for route in config.route.matching(&alert.labels) {
            let group_labels = group_labels(&route.group_by, &alert.labels);
            let key = format!("{}:{}", route.key, label_set_string(&group_labels));
            if resolved && !self.groups.contains_key(&key) {
                // A resolved alert does not open a group.
                continue;
            }
            let group = self.groups.entry(key).or_insert_with(|| new_group(route, group_labels, now_ms));
            group.alerts.insert(alert.fingerprint);
        }
        self.alerts.insert(alert.fingerprint, alert);
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// When the next group is due, if any.
    pub fn next_flush_ms(&self) -> Option<i64> {
        self.groups.values().map(|g| g.next_flush_ms).min()
    }

    /// Silences and inhibitions muting `alert` now (builds the inhibition
    /// index: to check many alerts, build it once with `inhibition_index`).
    pub fn status(&self, config: &RouterConfig, silences: &Silences, alert: &Alert, now_ms: i64) -> AlertStatus {
        let index = self.inhibition_index(config, now_ms);
        self.status_with(config, silences, &index, alert, now_ms)
    }

    /// For each inhibit rule, its firing source alerts by their `equal` label
    /// values: checking a target is then a lookup, not a scan of every alert.
    pub fn inhibition_index(&self, config: &RouterConfig, now_ms: i64) -> InhibitionIndex {
        let rules = config
            .inhibit_rules
            .iter()
            .map(|rule| {
                let mut sources: HashMap<Vec<String>, Vec<u64>> = HashMap::new();
                for source in self.alerts.values() {
                    if !source.resolved(now_ms) && super::matcher::all_match(&rule.source_matchers, &source.labels) {
                        sources.entry(equal_values(&rule.equal, &source.labels)).or_default().push(source.fingerprint);
                    }
                }
                sources
            })
            .collect();
        InhibitionIndex { rules }
    }

    /// Silences and inhibitions muting `alert` now, with a prebuilt index.
    pub fn status_with(
        &self,
        config: &RouterConfig,
        silences: &Silences,
        index: &InhibitionIndex,
        alert: &Alert,
        now_ms: i64,
    ) -> AlertStatus {
        let silenced_by = silences.muting(&alert.labels, now_ms);
        let mut inhibited_by = Vec::new();
        for (rule, sources) in config.inhibit_rules.iter().zip(&index.rules) {
            if sources.is_empty() || !super::matcher::all_match(&rule.target_matchers, &alert.labels) {
                continue;
            }
            // An alert does not inhibit itself.
            if let Some(fingerprints) = sources.get(&equal_values(&rule.equal, &alert.labels)) {
                inhibited_by
                    .extend(fingerprints.iter().filter(|fp| **fp != alert.fingerprint).map(|fp| format!("{fp:016x}")));
            }
        }
        inhibited_by.sort();
        inhibited_by.dedup();
        AlertStatus { silenced_by, inhibited_by }
    }

    /// Flushes every group due at `now_ms`; returns the notifications to send.
    pub fn flush_due(&mut self, config: &RouterConfig, silences: &Silences, now_ms: i64) -> Vec<Notification> {
        let due: Vec<String> =
            self.groups.iter().filter(|(_, g)| g.next_flush_ms <= now_ms).map(|(k, _)| k.clone()).collect();
        let mut out = Vec::new();
        if due.is_empty() {
            return out;
        }
        let inhibitions = self.inhibition_index(config, now_ms);
        for key in due {
            let Some(group) = self.groups.get(&key).cloned() else { continue };
            let mut firing_alerts = Vec::new();
            let mut resolved_alerts = Vec::new();
            for fp in &group.alerts {
                let Some(alert) = self.alerts.get(fp) else { continue };
                if self.status_with(config, silences, &inhibitions, alert, now_ms).muted() {
                    continue;
                }
                if alert.resolved(now_ms) {
                    resolved_alerts.push(alert.clone());
                } else {
                    firing_alerts.push(alert.clone());
                }
            }
            let firing: BTreeSet<u64> = firing_alerts.iter().map(|a| a.fingerprint).collect();
            let resolved: BTreeSet<u64> = resolved_alerts.iter().map(|a| a.fingerprint).collect();
            if let Some(receiver) = config.receivers.iter().find(|r| r.name == group.receiver) {
                for (index, integration) in receiver.integrations.iter().enumerate() {
                    let send_resolved = integration.send_resolved();
                    let nflog_key = Nflog::key(&key, &receiver.name, index);
                    if !self.nflog.needs_update(
                        &nflog_key,
                        &firing,
                        &resolved,
                        send_resolved,
                        group.repeat_interval_ms,
                        now_ms,
                    ) {
                        continue;
                    }
                    let mut alerts = firing_alerts.clone();
                    if send_resolved {
                        alerts.extend(resolved_alerts.iter().cloned());
                    }
                    let notification = Notification {
                        receiver: receiver.name.clone(),
                        integration: index,
                        group_key: key.clone(),
                        group_labels: group.group_labels.clone(),
                        alerts,
                        firing: firing.clone(),
                        resolved: if send_resolved { resolved.clone() } else { BTreeSet::new() },
                        created_ms: now_ms,
                    };
                    if notification.alerts.is_empty() {
                        // Only resolved alerts, and this integration does not send
                        // those: log them as told, as Alertmanager does, send nothing.
                        self.nflog.record(&notification);
                    } else {
                        out.push(notification);
                    }
                }
            }
            // Resolved alerts have been notified (or need not be): they leave the group.
            let group = self.groups.get_mut(&key).expect("group exists: it was just read");
            group.alerts.retain(|fp| self.alerts.get(fp).is_some_and(|a| !a.resolved(now_ms)));
            group.next_flush_ms = now_ms + group.group_interval_ms;
            if group.alerts.is_empty() {
                self.groups.remove(&key);
            }
        }
        self.gc(now_ms);
        out
    }

    /// Drops resolved alerts no group holds any more.
    fn gc(&mut self, now_ms: i64) {
        let held: BTreeSet<u64> = self.groups.values().flat_map(|g| g.alerts.iter().copied()).collect();
        self.alerts.retain(|fp, alert| held.contains(fp) || !alert.resolved(now_ms));
    }

    pub fn groups(&self) -> Vec<GroupView> {
        self.groups
            .values()
            .map(|g| GroupView {
                receiver: g.receiver.clone(),
                labels: g.group_labels.clone(),
                alerts: g.alerts.iter().filter_map(|fp| self.alerts.get(fp).cloned()).collect(),
            })
            .collect()
    }

    /// Re-files every alert after a configuration change; the log is kept.
    pub fn apply_config(&mut self, config: &RouterConfig, now_ms: i64) {
        let alerts: Vec<Alert> = self.alerts.drain().map(|(_, a)| a).collect();
        let old_groups = std::mem::take(&mut self.groups);
        for alert in alerts {
            self.insert(config, alert, now_ms);
        }
        // Groups that existed keep their timers.
        for (key, group) in &mut self.groups {
            if let Some(old) = old_groups.get(key) {
                group.next_flush_ms = old.next_flush_ms;
            }
        }
    }
}

/// Firing source alerts of each inhibit rule, by their `equal` label values.
#[derive(Debug, Default)]
pub struct InhibitionIndex {
    rules: Vec<HashMap<Vec<String>, Vec<u64>>>,
}

/// The values of `names` (missing labels are "", as Alertmanager compares them).
fn equal_values(names: &[String], labels: &BTreeMap<String, String>) -> Vec<String> {
    names.iter().map(|n| labels.get(n).cloned().unwrap_or_default()).collect()
}

pub fn group_labels(group_by: &GroupBy, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    match group_by {
        GroupBy::All => labels.clone(),
        GroupBy::Labels(names) => names.iter().filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone()))).collect(),
    }
}

fn new_group(route: &Route, group_labels: BTreeMap<String, String>, now_ms: i64) -> AggrGroup {
    AggrGroup {
        receiver: route.receiver.clone(),
        group_labels,
        alerts: BTreeSet::new(),
        group_interval_ms: route.group_interval.as_millis() as i64,
        repeat_interval_ms: route.repeat_interval.as_millis() as i64,
        next_flush_ms: now_ms + route.group_wait.as_millis() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::parse;
    use super::super::silence::{SilenceMatcher, SilenceRequest};
    use super::*;

    const CONFIG: &str = r#"
route:
  receiver: team
  group_by: [alertname]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 1h
  routes:
    - matchers: ['severity="page"']
      receiver: pager
      continue: true
inhibit_rules:
  - source_matchers: ['severity="critical"']
    target_matchers: ['severity="warning"']
    equal: [instance]
receivers:
  - name: team
    webhook_configs: [{url: "http://127.0.0.1:1/hook"}]
    slack_configs: [{api_url: "http://127.0.0.1:1/slack"}]
  - name: pager
    webhook_configs: [{url: "http://127.0.0.1:1/page"}]
"#;

    const S: i64 = 1000;
    const T0: i64 = 1_700_000_000_000;

    fn alert(name: &str, instance: &str, severity: &str, ends_at_ms: i64) -> Alert {
        let labels = [("alertname", name), ("instance", instance), ("severity", severity)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Alert::new(labels, BTreeMap::new(), T0, ends_at_ms, String::new())
    }

    fn sent(notifications: &[Notification]) -> Vec<(String, usize, usize, usize)> {
        notifications.iter().map(|n| (n.receiver.clone(), n.integration, n.firing.len(), n.resolved.len())).collect()
    }

    /// Flushes and records everything as delivered, as the receivers would.
    fn flush(d: &mut Dispatcher, config: &RouterConfig, silences: &Silences, now: i64) -> Vec<Notification> {
        let out = d.flush_due(config, silences, now);
        for n in &out {
            d.nflog.record(n);
        }
        out
    }

    #[test]
    fn group_wait_interval_repeat_and_resolve() {
        let config = parse("t.yml", CONFIG).unwrap();
        let silences = Silences::in_memory();
        let mut d = Dispatcher::default();
        let forever = i64::MAX;
        d.insert(&config, alert("DiskFull", "a", "warning", forever), T0);
        assert_eq!(d.next_flush_ms(), Some(T0 + 30 * S));
        assert!(flush(&mut d, &config, &silences, T0 + 29 * S).is_empty(), "not before group_wait");
        d.insert(&config, alert("DiskFull", "b", "warning", forever), T0 + 10 * S);
        let first = flush(&mut d, &config, &silences, T0 + 30 * S);
        assert_eq!(sent(&first), [("team".into(), 0, 2, 0), ("team".into(), 1, 2, 0)], "both alerts, one group");
        assert_eq!(first[0].group_key, r#"{}:{alertname="DiskFull"}"#);
        // Nothing new: the next interval sends nothing.
        assert!(flush(&mut d, &config, &silences, T0 + 330 * S).is_empty());
        // A new alert waits for the group interval, not group_wait.
        d.insert(&config, alert("DiskFull", "c", "warning", forever), T0 + 340 * S);
        assert!(flush(&mut d, &config, &silences, T0 + 369 * S).is_empty());
        assert_eq!(sent(&flush(&mut d, &config, &silences, T0 + 630 * S)).len(), 2);
        // Unchanged and firing: repeated after repeat_interval (1h after the last send).
        assert!(flush(&mut d, &config, &silences, T0 + 3930 * S).is_empty());
        assert_eq!(sent(&flush(&mut d, &config, &silences, T0 + 4230 * S)).len(), 2);
        // Resolving one: the webhook (send_resolved) hears of it, Slack (not) does not.
        d.insert(&config, alert("DiskFull", "c", "warning", T0 + 4300 * S), T0 + 4300 * S);
        let resolved = flush(&mut d, &config, &silences, T0 + 4530 * S);
        assert_eq!(sent(&resolved), [("team".into(), 0, 2, 1)]);
        assert_eq!(resolved[0].alerts.len(), 3);
        assert_eq!(d.groups()[0].alerts.len(), 2, "the resolved alert left the group");
        // All resolved: both integrations are told, and the group goes.
        d.insert(&config, alert("DiskFull", "a", "warning", T0 + 4600 * S), T0 + 4600 * S);
        d.insert(&config, alert("DiskFull", "b", "warning", T0 + 4600 * S), T0 + 4600 * S);
        let all_resolved = flush(&mut d, &config, &silences, T0 + 4830 * S);
        assert_eq!(sent(&all_resolved), [("team".into(), 0, 0, 2)], "Slack does not send resolved");
        assert_eq!(all_resolved[0].status(), "resolved");
        assert!(d.groups().is_empty() && d.next_flush_ms().is_none());
        assert_eq!(d.alerts().count(), 0);
    }

    #[test]
    fn a_matching_child_replaces_its_parent() {
        // As in Alertmanager, `continue` lets later siblings match too; the
        // parent is the match only when no child matched.
        let config = parse("t.yml", CONFIG).unwrap();
        let silences = Silences::in_memory();
        let mut d = Dispatcher::default();
        d.insert(&config, alert("Down", "a", "page", i64::MAX), T0);
        let out = flush(&mut d, &config, &silences, T0 + 30 * S);
        let receivers: BTreeSet<String> = out.iter().map(|n| n.receiver.clone()).collect();
        assert_eq!(receivers, BTreeSet::from(["pager".to_owned()]));
        assert_eq!(out.len(), 1);
        assert!(out[0].group_key.starts_with(r#"{}/{severity="page"}/0:"#), "{}", out[0].group_key);
    }

    #[test]
    fn inhibition_mutes_targets_with_equal_labels() {
        let config = parse("t.yml", CONFIG).unwrap();
        let silences = Silences::in_memory();
        let mut d = Dispatcher::default();
        d.insert(&config, alert("HostDown", "a", "critical", i64::MAX), T0);
        d.insert(&config, alert("DiskFull", "a", "warning", i64::MAX), T0);
        d.insert(&config, alert("DiskFull", "b", "warning", i64::MAX), T0);
        let out = flush(&mut d, &config, &silences, T0 + 30 * S);
        let disk: Vec<&Notification> = out.iter().filter(|n| n.group_key.contains("DiskFull")).collect();
        assert_eq!(disk[0].alerts.len(), 1, "warning on a is inhibited by critical on a");
        assert_eq!(disk[0].alerts[0].labels["instance"], "b");
        let target = d.alerts().find(|a| a.labels["instance"] == "a" && a.labels["severity"] == "warning").unwrap();
        assert_eq!(d.status(&config, &silences, target, T0 + 30 * S).inhibited_by.len(), 1);
        // Once the source resolves, the target is no longer inhibited.
        d.insert(&config, alert("HostDown", "a", "critical", T0 + 40 * S), T0 + 40 * S);
        let target = d.alerts().find(|a| a.labels["instance"] == "a" && a.labels["severity"] == "warning").unwrap();
        assert!(!d.status(&config, &silences, target, T0 + 41 * S).muted());
    }

    #[test]
    fn silenced_alerts_are_not_notified() {
        let config = parse("t.yml", CONFIG).unwrap();
        let mut silences = Silences::in_memory();
        let mut d = Dispatcher::default();
        silences
            .set(
                SilenceRequest {
                    id: None,
                    matchers: vec![SilenceMatcher {
                        name: "instance".into(),
                        value: "a".into(),
                        is_regex: false,
                        is_equal: true,
                    }],
                    starts_at_ms: T0,
                    ends_at_ms: T0 + 100 * S,
                    created_by: "ops".into(),
                    comment: "reboot".into(),
                },
                T0,
            )
            .unwrap();
        d.insert(&config, alert("DiskFull", "a", "warning", i64::MAX), T0);
        assert!(flush(&mut d, &config, &silences, T0 + 30 * S).is_empty(), "only alert silenced");
        // When the silence ends, the next flush notifies.
        assert_eq!(flush(&mut d, &config, &silences, T0 + 330 * S).len(), 2);
    }

    #[test]
    fn the_log_prevents_renotifying_after_a_restart() {
        let config = parse("t.yml", CONFIG).unwrap();
        let silences = Silences::in_memory();
        let mut d = Dispatcher::default();
        d.insert(&config, alert("DiskFull", "a", "warning", i64::MAX), T0);
        assert_eq!(flush(&mut d, &config, &silences, T0 + 30 * S).len(), 2);
        let saved = serde_json::to_vec(&d.nflog).unwrap();
        let mut restarted = Dispatcher::with_nflog(serde_json::from_slice(&saved).unwrap());
        restarted.insert(&config, alert("DiskFull", "a", "warning", i64::MAX), T0 + 60 * S);
        assert!(flush(&mut restarted, &config, &silences, T0 + 90 * S).is_empty(), "told within repeat_interval");
        assert_eq!(flush(&mut restarted, &config, &silences, T0 + 3690 * S).len(), 2, "repeated after it");
    }

    #[test]
    fn fingerprints_are_stable() {
        let a = alert("X", "a", "warning", 0);
        let b = alert("X", "a", "warning", 5);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, alert("X", "b", "warning", 0).fingerprint);
    }

    #[test]
    fn twenty_thousand_alerts_in_two_thousand_groups() {
        let config = parse("t.yml", CONFIG).unwrap();
        let silences = Silences::in_memory();
        let mut d = Dispatcher::default();
        let started = std::time::Instant::now();
        // 2000 alert names on 10 hosts each; Alert0 is critical on hosts 0 to 4.
        for i in 0..20_000 {
            let (name, host) = (i % 2000, i / 2000);
            let severity = if name == 0 && host < 5 { "critical" } else { "warning" };
            d.insert(&config, alert(&format!("Alert{name}"), &format!("host-{host}"), severity, i64::MAX), T0);
        }
        assert_eq!(d.alerts().count(), 20_000);
        let inserted = started.elapsed();
        let started = std::time::Instant::now();
        let out = flush(&mut d, &config, &silences, T0 + 30 * S);
        let flushed = started.elapsed();
        eprintln!("20000 alerts: inserted in {inserted:?}, 2000 groups flushed in {flushed:?}");
        // Two integrations of the `team` receiver per group.
        assert_eq!(out.len(), 4000);
        // Warnings on hosts 0 to 4 are inhibited by Alert0's criticals there: 1999 names x 5 hosts.
        let notified: usize = out.iter().filter(|n| n.integration == 0).map(|n| n.alerts.len()).sum();
        assert_eq!(notified, 20_000 - 1999 * 5);
        assert!(inserted + flushed < Duration::from_secs(20), "{inserted:?} + {flushed:?}");
    }
}
