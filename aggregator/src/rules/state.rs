//! Alert state on disk: every group's active alerts (state, activeAt,
//! firedAt, resolvedAt, keep-firing timer) in one small JSON file under the
//! state directory, replaced atomically (write, fsync, rename) whenever an
//! evaluation changed state, and read once on start. So a restart neither
//! re-fires a firing alert (its startsAt is kept) nor restarts a pending
//! alert's `for` timer. It does blocking file I/O: call it off the runtime.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use herd_common::metric::Labels;
use serde::{Deserialize, Serialize};

use super::file::Rule;
use super::group::{Alert, AlertState, Group};

/// Bump when the layout changes; a file of another version is ignored (with a warning).
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write alert state to {path}: {source} (is the state directory writable by the herd user?)")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read alert state from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("alert state in {path} is not valid ({source}): it is ignored and rewritten on the next change")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// By group key (`file;name`), then rule name.
    groups: BTreeMap<String, BTreeMap<String, Vec<PersistedAlert>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PersistedAlert {
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    state: String,
    value: f64,
    active_at_ms: i64,
    fired_at_ms: Option<i64>,
    resolved_at_ms: Option<i64>,
    keep_firing_since_ms: Option<i64>,
}

impl PersistedAlert {
    fn from_alert(alert: &Alert) -> Self {
        Self {
            labels: alert.labels.as_pairs().to_vec(),
            annotations: alert.annotations.clone(),
            state: alert.state.as_str().to_owned(),
            // JSON has no NaN: an alert's value is informational, 0 stands in.
            value: if alert.value.is_finite() { alert.value } else { 0.0 },
            active_at_ms: alert.active_at_ms,
            fired_at_ms: alert.fired_at_ms,
            resolved_at_ms: alert.resolved_at_ms,
            keep_firing_since_ms: alert.keep_firing_since_ms,
        }
    }

    fn into_alert(self) -> Option<Alert> {
        let state = match self.state.as_str() {
            "inactive" => AlertState::Inactive,
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            _ => return None,
        };
        Some(Alert {
            labels: Labels::from_pairs(self.labels),
            annotations: self.annotations,
            state,
            value: self.value,
            active_at_ms: self.active_at_ms,
            fired_at_ms: self.fired_at_ms,
            resolved_at_ms: self.resolved_at_ms,
            last_sent_ms: None,
            valid_until_ms: 0,
            keep_firing_since_ms: self.keep_firing_since_ms,
        })
    }
}

/// The persisted alerts of every group, kept in memory and written whole.
#[derive(Debug)]
pub struct AlertStateStore {
    path: PathBuf,
    file: StateFile,
}

impl AlertStateStore {
    /// Reads `path` if it exists. A corrupt file yields an empty state and the error, to be logged.
    pub fn open(path: &Path) -> (Self, Option<StateError>) {
        let empty = |error| (Self { path: path.to_owned(), file: StateFile::default() }, error);
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return empty(None),
            Err(source) => return empty(Some(StateError::Read { path: path.to_owned(), source })),
        };
        match serde_json::from_slice::<StateFile>(&text) {
            Ok(file) if file.version == FORMAT_VERSION => (Self { path: path.to_owned(), file }, None),
            Ok(_) => empty(None),
            Err(source) => empty(Some(StateError::Corrupt { path: path.to_owned(), source })),
        }
    }

    /// Puts the persisted alerts of `group`'s alerting rules back into it.
    pub fn restore(&self, group: &mut Group) {
        let Some(saved) = self.file.groups.get(&group.key()) else { return };
        for rule in &mut group.rules {
            if !matches!(rule.rule, Rule::Alerting(_)) {
                continue;
            }
            for alert in saved.get(rule.rule.name()).into_iter().flatten().cloned() {
                if let Some(alert) = alert.into_alert() {
                    rule.active.insert(alert.labels.clone(), alert);
                }
            }
        }
    }

    /// Records `group`'s alerts (in memory; `save` writes them).
    pub fn update(&mut self, group: &Group) {
        let mut rules: BTreeMap<String, Vec<PersistedAlert>> = BTreeMap::new();
        for rule in &group.rules {
            if matches!(rule.rule, Rule::Alerting(_)) && !rule.active.is_empty() {
                rules
                    .entry(rule.rule.name().to_owned())
                    .or_default()
                    .extend(rule.active.values().map(PersistedAlert::from_alert));
            }
        }
        if rules.is_empty() {
            self.file.groups.remove(&group.key());
        } else {
            self.file.groups.insert(group.key(), rules);
        }
    }

    /// Keeps only the groups whose keys are given (after a reload removed some).
    pub fn retain_groups(&mut self, keys: &std::collections::HashSet<String>) {
        self.file.groups.retain(|key, _| keys.contains(key));
    }

    /// Writes the file atomically: a crash leaves the old or the new file, never half of one.
    pub fn save(&mut self) -> Result<(), StateError> {
        self.file.version = FORMAT_VERSION;
        let err = |source| StateError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let bytes = serde_json::to_vec(&self.file).expect("alert state serializes");
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        tmp.write_all(&bytes).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}
