//! What remote configuration keeps on disk, `<state_dir>/configs/state.json`:
//! profiles with their immutable versions, staged rollouts, and what each
//! agent last reported (its labels, its local file with passwords hidden,
//! what it runs), so validation and status survive a restart. Replaced
//! whole and atomically (write, fsync, rename, fsync the directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One immutable version of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileVersion {
    /// Monotonic across all profiles: a version number names one body.
    pub version: u64,
    /// `content_hash` of `body`.
    pub hash: String,
    /// The name of the token that pushed it.
    pub author: String,
    pub created_ms: i64,
    pub message: String,
    /// Prometheus matcher syntax, e.g. `{role="postgres"}`; `{}` matches every agent.
    pub selector: String,
    /// The highest-priority matching profile decides an agent's configuration.
    pub priority: i64,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// Oldest first; the oldest beyond `keep_versions` are dropped, never the active one.
    pub versions: Vec<ProfileVersion>,
    /// The version in force (a rollback moves it back); 0: the profile is switched off.
    pub active: u64,
}

impl Profile {
    pub fn version(&self, version: u64) -> Option<&ProfileVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn active_version(&self) -> Option<&ProfileVersion> {
        self.version(self.active)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Halted,
    Done,
    Aborted,
}

/// A staged rollout of one profile version: canary agents first, then waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub profile: String,
    pub version: u64,
    /// The profile's active version before the push (0: none).
    pub from_version: u64,
    /// The agents matching at push time, canaries first.
    pub agents: Vec<String>,
    pub canary: usize,
    /// Agents per wave after the canaries (0: all the rest at once).
    pub wave_size: usize,
    /// How long a wave may take to acknowledge and run its first cycle.
    pub wait_ms: u64,
    /// Refusals or failures tolerated before the rollout halts.
    pub max_failures: usize,
    /// `agents[..released]` have been given the new version.
    pub released: usize,
    /// Where the current wave starts in `agents`.
    pub wave_start: usize,
    pub wave_started_ms: i64,
    pub state: RolloutState,
    /// Why it halted or was aborted.
    pub reason: String,
    pub author: String,
}

impl Rollout {
    pub fn is_active(&self) -> bool {
        matches!(self.state, RolloutState::Running | RolloutState::Halted)
    }

    /// Whether `agent` is still held on the old version.
    pub fn holds(&self, agent: &str) -> bool {
        self.is_active() && self.agents[self.released.min(self.agents.len())..].iter().any(|a| a == agent)
    }
}

/// What an agent last reported, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KnownAgent {
    pub hostname: String,
    /// The labels selectors match (with `agent`, its identity).
    pub labels: BTreeMap<String, String>,
    /// Its local file, passwords hidden, and the directory of relative paths.
    pub local_config: String,
    pub local_config_dir: String,
    pub applied_version: u64,
    pub applied_profile: String,
    pub applied_hash: String,
    pub effective_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    pub next_version: u64,
    pub next_rollout: u64,
    pub profiles: BTreeMap<String, Profile>,
    /// Newest last; finished ones are kept for status, a few at most.
    pub rollouts: Vec<Rollout>,
    pub agents: BTreeMap<String, KnownAgent>,
}

/// Finished rollouts kept for `config status`.
const KEEP_FINISHED_ROLLOUTS: usize = 20;

impl State {
    /// Drops versions beyond `keep` per profile (never the active one) and old finished rollouts.
    pub fn prune(&mut self, keep: usize) {
        for profile in self.profiles.values_mut() {
            while profile.versions.len() > keep.max(1) {
                let Some(oldest) = profile.versions.iter().position(|v| v.version != profile.active) else { break };
                profile.versions.remove(oldest);
            }
        }
        let finished = self.rollouts.iter().filter(|r| !r.is_active()).count();
        let mut excess = finished.saturating_sub(KEEP_FINISHED_ROLLOUTS);
        self.rollouts.retain(|r| {
            if excess > 0 && !r.is_active() {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({detail}); move it away to start without profiles")]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("configs").join("state.json")
}

pub fn load(path: &Path) -> Result<State, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(State { next_version: 1, next_rollout: 1, ..State::default() });
        }
        Err(source) => return Err(StoreError::Read { path: path.to_owned(), source }),
    };
    serde_json::from_slice(&bytes).map_err(|err| StoreError::Damaged { path: path.to_owned(), detail: err.to_string() })
}

pub fn save(path: &Path, state: &State) -> Result<(), StoreError> {
    let err = |source| StoreError::Write { path: path.to_owned(), source };
    let dir = path.parent().expect("the path has a directory");
    std::fs::create_dir_all(dir).map_err(err)?;
    let bytes = serde_json::to_vec_pretty(state).expect("plain data serializes");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(&bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(version: u64) -> ProfileVersion {
        ProfileVersion {
            version,
            hash: format!("sha256:{version}"),
            author: "ops".into(),
            created_ms: 0,
            message: String::new(),
            selector: "{}".into(),
            priority: 0,
            body: String::new(),
        }
    }

    #[test]
    fn saves_loads_and_prunes_all_but_the_active_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        assert_eq!(load(&file).unwrap().next_version, 1);
        let mut state = State::default();
        state
            .profiles
            .insert("web".into(), Profile { name: "web".into(), versions: (1..=5).map(version).collect(), active: 1 });
        state.prune(2);
        let kept: Vec<u64> = state.profiles["web"].versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, [1, 5], "the active version survives pruning");
        save(&file, &state).unwrap();
        assert_eq!(load(&file).unwrap(), state);
        std::fs::write(&file, "{").unwrap();
        assert!(load(&file).unwrap_err().to_string().contains("move it away"));
    }
}
