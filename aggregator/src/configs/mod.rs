//! Remote configuration: profiles pushed to agents, staged rollouts,
//! rollback, and what each agent runs.
//!
//! A *profile* is a name, a label selector, a priority and a body in the
//! agent's own TOML format (the remotely managed part; see
//! `herd_common::config::pushed`). Each change makes a new immutable
//! version (numbers are monotonic across profiles); old versions stay for
//! rollback. An agent's *desired* configuration is the active version of
//! the highest-priority profile whose selector matches its labels (or its
//! local file alone when none does); two matching profiles of the same
//! priority are refused at push time, never silently picked between.
//!
//! Before anything is stored or sent, a body is validated with the agent's
//! own validation code over every matching agent's reported local file.
//! [`ConfigManager`] (a manager: `run` ticks rollouts, re-sends what an
//! agent lacks, and persists) is fed by ingest sessions: `connected` (the
//! hello says what the agent runs) hands the session a channel of pushes,
//! `acked` records what became of one. State lives in
//! `<state_dir>/configs/state.json` (`store.rs`).

pub mod client;
pub mod rollout;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_common::config::pushed::{self, Body};
use herd_common::protocol::{CollectorHealth, ConfigAck, ConfigOutcome, ConfigPush, Hello};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alertmanager::matcher::{Matcher, all_match, parse_matchers};
pub use rollout::Canary;
use rollout::{AgentProgress, advance};
use store::{KnownAgent, Profile, ProfileVersion, Rollout, RolloutState, State, StoreError};

/// Pushes waiting for one session's connection.
const SESSION_QUEUE: usize = 4;
/// How often rollouts advance, missing pushes are sent and state is saved.
const TICK: Duration = Duration::from_millis(200);
/// Profile names that would shadow API paths.
const RESERVED_NAMES: &[&str] = &["status", "rollouts"];

/// A push request, as the API and CLI make it.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub profile: String,
    pub selector: String,
    pub priority: i64,
    pub body: String,
    pub message: String,
    pub dry_run: bool,
    /// Staged: this many agents first, then `wave_size` at a time.
    pub canary: Option<Canary>,
    pub wave_size: usize,
    pub wait: Duration,
    pub max_failures: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The body, selector or name is wrong, or a matching agent would not accept it.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// Two profiles of the same priority would match one agent.
    #[error("{}", .0.join("\n"))]
    Conflict(Vec<String>),
    #[error("no such profile {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One agent in a dry run: what it runs, and what the push would change.
#[derive(Debug, Clone)]
pub struct DryRunAgent {
    pub agent: String,
    /// The profile and version it should run now (before the push).
    pub current: Option<(String, u64)>,
    /// Unified diff of its effective configuration, before → after.
    pub diff: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum PushOutcome {
    Created {
        version: u64,
        hash: String,
        agents: Vec<String>,
        rollout: Option<u64>,
    },
    /// The active version already has this body, selector and priority.
    Unchanged {
        version: u64,
        hash: String,
        agents: Vec<String>,
    },
    DryRun {
        agents: Vec<DryRunAgent>,
        problems: Vec<String>,
    },
}

/// An agent's configuration state, as `config status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigState {
    /// Runs its desired version.
    Applied,
    /// Sent, not acknowledged yet.
    Applying,
    /// Refused it; runs what it had.
    Refused,
    /// Every collector failed under it; back on what it had.
    RolledBack,
    /// Not connected.
    Offline,
    /// Connected, the push not sent yet.
    Pending,
    /// Two profiles of the same priority match it: nothing is pushed until that is resolved.
    Conflict,
}

impl ConfigState {
    pub const ALL: [ConfigState; 7] = [
        ConfigState::Applied,
        ConfigState::Applying,
        ConfigState::Refused,
        ConfigState::RolledBack,
        ConfigState::Offline,
        ConfigState::Pending,
        ConfigState::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigState::Applied => "applied",
            ConfigState::Applying => "applying",
            ConfigState::Refused => "refused",
            ConfigState::RolledBack => "rolled_back",
            ConfigState::Offline => "offline",
            ConfigState::Pending => "pending",
            ConfigState::Conflict => "conflict",
        }
    }
}

/// One agent in `config status`.
#[derive(Debug, Clone)]
pub struct AgentConfigStatus {
    pub agent: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub connected: bool,
    /// Profile and version it should run (`None`: its local file alone).
    pub desired: Option<(String, u64)>,
    pub desired_hash: String,
    pub applied_version: u64,
    pub applied_profile: String,
    pub applied_hash: String,
    pub effective_hash: String,
    pub state: ConfigState,
    pub last_error: Option<String>,
    /// After the first cycle of the last acknowledged push.
    pub collectors: Vec<CollectorHealth>,
    /// A staged rollout keeps it on the old version.
    pub held_by_rollout: Option<u64>,
}

/// A profile as `config list` shows it.
#[derive(Debug, Clone)]
pub struct ProfileSummary {
    pub profile: Profile,
    /// Agents whose desired configuration is this profile.
    pub agents: usize,
}

/// What the last acknowledgement from an agent said.
#[derive(Debug, Clone)]
struct AckRecord {
    version: u64,
    outcome: ConfigOutcome,
    error: Option<String>,
    collectors: Vec<CollectorHealth>,
}

struct Session {
    connection_id: u64,
    pushes: mpsc::Sender<ConfigPush>,
    /// What was sent last on this connection (version, hash): not sent again on it.
    last_push: Option<(u64, String)>,
}

/// What an agent should run.
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    profile: String,
    /// 0: the local file alone.
    version: u64,
    hash: String,
    body: String,
}

impl Desired {
    fn local() -> Self {
        Desired { profile: String::new(), version: 0, hash: String::new(), body: String::new() }
    }

    fn of(profile: &str, version: &ProfileVersion) -> Self {
        Desired {
            profile: profile.to_owned(),
            version: version.version,
            hash: version.hash.clone(),
            body: version.body.clone(),
        }
    }
}

#[derive(Default)]
struct Inner {
    state: State,
    sessions: HashMap<String, Session>,
    acks: HashMap<String, AckRecord>,
    /// Parsed selectors by (profile, version).
    selectors: HashMap<(String, u64), Vec<Matcher>>,
    dirty: bool,
}

/// `herd_config_pushes_total{result}`.
#[derive(Debug, Default)]
pub struct PushCounters {
    pub created: std::sync::atomic::AtomicU64,
    pub unchanged: std::sync::atomic::AtomicU64,
    pub dry_run: std::sync::atomic::AtomicU64,
    pub invalid: std::sync::atomic::AtomicU64,
    pub conflict: std::sync::atomic::AtomicU64,
}

pub struct ConfigManager {
    path: PathBuf,
    keep_versions: usize,
    inner: Mutex<Inner>,
    pub pushes: PushCounters,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && name.len() <= 64
        && !RESERVED_NAMES.contains(&name)
}

impl Inner {
    fn matchers(&mut self, profile: &str, version: &ProfileVersion) -> &[Matcher] {
        self.selectors
            .entry((profile.to_owned(), version.version))
            .or_insert_with(|| parse_matchers(&version.selector).unwrap_or_default())
    }

    /// The profiles (name, version) matching `labels`, highest priority first.
    fn matching(&mut self, labels: &BTreeMap<String, String>) -> Vec<(String, ProfileVersion)> {
        let active: Vec<(String, ProfileVersion)> = self
            .state
            .profiles
            .values()
            .filter_map(|p| p.active_version().map(|v| (p.name.clone(), v.clone())))
            .collect();
        let mut matching: Vec<(String, ProfileVersion)> =
            active.into_iter().filter(|(name, version)| all_match(self.matchers(name, version), labels)).collect();
        matching.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then_with(|| a.0.cmp(&b.0)));
        matching
    }

    /// What `agent` should run, or the profiles that tie for it.
    fn desired(&mut self, agent: &str) -> Result<Desired, Vec<String>> {
        let labels = self.state.agents.get(agent).map(|a| a.labels.clone()).unwrap_or_default();
        let matching = self.matching(&labels);
        for (name, version) in &matching {
            let tied: Vec<String> = std::iter::once(name.clone())
                .chain(
                    matching
                        .iter()
                        .filter(|(n, v)| n != name && v.priority == version.priority)
                        .map(|(n, _)| n.clone()),
                )
                .collect();
            if tied.len() > 1 {
                return Err(tied);
            }
            let held = self
                .state
                .rollouts
                .iter()
                .find(|r| r.profile == *name && r.version == version.version && r.holds(agent));
            match held {
                None => return Ok(Desired::of(name, version)),
                Some(rollout) if rollout.from_version != 0 => {
                    if let Some(old) = self.state.profiles.get(name).and_then(|p| p.version(rollout.from_version)) {
                        return Ok(Desired::of(name, old));
                    }
                }
                // Held, and the profile had no version before: the next profile decides.
                Some(_) => {}
            }
        }
        Ok(Desired::local())
    }

    fn runs(&self, agent: &str, desired: &Desired) -> bool {
        self.state.agents.get(agent).is_some_and(|known| {
            known.applied_version == desired.version && (desired.version == 0 || known.applied_hash == desired.hash)
        })
    }

    /// Sends `agent` what it lacks, unless that was already sent on this connection.
    fn reconcile(&mut self, agent: &str) {
        if !self.sessions.contains_key(agent) {
            return;
        }
        let Ok(desired) = self.desired(agent) else { return };
        if self.runs(agent, &desired) {
            return;
        }
        let Some(session) = self.sessions.get_mut(agent) else { return };
        let key = (desired.version, desired.hash.clone());
        if session.last_push.as_ref() == Some(&key) {
            return;
        }
        let push =
            ConfigPush { version: desired.version, profile: desired.profile, hash: desired.hash, toml: desired.body };
        // A busy or closed connection gets it on a later tick (or its next connection).
        if session.pushes.try_send(push).is_ok() {
            info!(agent, version = key.0, "configuration pushed");
            session.last_push = Some(key);
        }
    }

    fn reconcile_all(&mut self) {
        let agents: Vec<String> = self.sessions.keys().cloned().collect();
        for agent in agents {
            self.reconcile(&agent);
        }
    }

    fn progress(&self, agent: &str, version: &ProfileVersion) -> AgentProgress {
        let ack = self.acks.get(agent).filter(|ack| ack.version == version.version);
        let runs = self
            .state
            .agents
            .get(agent)
            .is_some_and(|a| a.applied_version == version.version && a.applied_hash == version.hash);
        match ack {
            Some(ack) if ack.outcome != ConfigOutcome::Applied => {
                AgentProgress::Failed(ack.error.clone().unwrap_or_else(|| "refused".to_owned()))
            }
            Some(ack) => {
                let failing: Vec<String> = ack
                    .collectors
                    .iter()
                    .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.name)))
                    .collect();
                if failing.is_empty() {
                    AgentProgress::Healthy
                } else {
                    AgentProgress::Failed(format!("collectors failing their first cycle: {}", failing.join(", ")))
                }
            }
            // Already ran it (an acknowledgement before a restart of the aggregator).
            None if runs => AgentProgress::Healthy,
            None => AgentProgress::Pending,
        }
    }

    fn tick_rollouts(&mut self, now_ms: i64) {
        let mut rollouts = std::mem::take(&mut self.state.rollouts);
        for rollout in rollouts.iter_mut().filter(|r| r.state == RolloutState::Running) {
            let Some(version) =
                self.state.profiles.get(&rollout.profile).and_then(|p| p.version(rollout.version)).cloned()
            else {
                rollout.state = RolloutState::Aborted;
                rollout.reason = "its version no longer exists".to_owned();
                self.dirty = true;
                continue;
            };
            if advance(rollout, now_ms, |agent| self.progress(agent, &version)) {
                self.dirty = true;
                match rollout.state {
                    RolloutState::Halted => {
                        warn!(profile = %rollout.profile, version = rollout.version, reason = %rollout.reason, "rollout halted")
                    }
                    RolloutState::Done => info!(profile = %rollout.profile, version = rollout.version, "rollout done"),
                    _ => {
                        info!(profile = %rollout.profile, version = rollout.version, released = rollout.released, "rollout wave released")
                    }
                }
            }
        }
        self.state.rollouts = rollouts;
    }

    fn status(&mut self, agent: &str) -> AgentConfigStatus {
        let known = self.state.agents.get(agent).cloned().unwrap_or_default();
        let connected = self.sessions.contains_key(agent);
        let desired = self.desired(agent);
        let ack = self.acks.get(agent).cloned();
        let held_by_rollout = self.state.rollouts.iter().find(|r| r.holds(agent)).map(|r| r.id);
        let (desired_pair, desired_hash, state) = match &desired {
            Err(_) => (None, String::new(), ConfigState::Conflict),
            Ok(desired) => {
                let pair = (desired.version != 0).then(|| (desired.profile.clone(), desired.version));
                let acked = ack.as_ref().filter(|a| a.version == desired.version);
                let state = if !connected {
                    ConfigState::Offline
                } else if self.runs(agent, desired) {
                    ConfigState::Applied
                } else if let Some(ack) = acked {
                    match ack.outcome {
                        ConfigOutcome::Refused => ConfigState::Refused,
                        ConfigOutcome::RolledBack => ConfigState::RolledBack,
                        ConfigOutcome::Applied => ConfigState::Applying,
                    }
                } else if self
                    .sessions
                    .get(agent)
                    .and_then(|s| s.last_push.as_ref())
                    .is_some_and(|p| p.0 == desired.version)
                {
                    ConfigState::Applying
                } else {
                    ConfigState::Pending
                };
                (pair, desired.hash.clone(), state)
            }
        };
        let last_error = match &desired {
            Err(tied) => {
                Some(format!("profiles {} match with the same priority: give one a higher priority", tied.join(", ")))
            }
            Ok(_) => ack.as_ref().and_then(|a| a.error.clone()),
        };
        AgentConfigStatus {
            agent: agent.to_owned(),
            hostname: known.hostname,
            labels: known.labels,
            connected,
            desired: desired_pair,
            desired_hash,
            applied_version: known.applied_version,
            applied_profile: known.applied_profile,
            applied_hash: known.applied_hash,
            effective_hash: known.effective_hash,
            state,
            last_error,
            collectors: ack.map(|a| a.collectors).unwrap_or_default(),
            held_by_rollout,
        }
    }
}

impl ConfigManager {
    /// Loads what `state_dir` holds; a damaged file is an error, not a silent reset.
    pub fn open(state_dir: &std::path::Path, keep_versions: usize) -> Result<Self, StoreError> {
        let path = store::path(state_dir);
        let state = store::load(&path)?;
        Ok(Self {
            path,
            keep_versions: keep_versions.max(1),
            inner: Mutex::new(Inner { state, ..Inner::default() }),
            pushes: PushCounters::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("config manager lock is never poisoned")
    }

    /// Advances rollouts, sends agents what they lack and saves changes, until `shutdown`.
    pub async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            {
                let mut inner = self.lock();
                inner.tick_rollouts(now_ms());
                inner.reconcile_all();
            }
            self.save_if_dirty().await;
        }
        self.save_if_dirty().await;
    }

    async fn save_if_dirty(&self) {
        let snapshot = {
            let mut inner = self.lock();
            if !inner.dirty {
                return;
            }
            inner.dirty = false;
            inner.state.clone()
        };
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || store::save(&path, &snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(error = %err, "cannot save remote configuration state; retrying");
                self.lock().dirty = true;
            }
            Err(_) => self.lock().dirty = true,
        }
    }

    /// Saves now (after a change an API caller must be able to rely on).
    async fn save_now(&self) -> Result<(), StoreError> {
        let snapshot = {
            let mut inner = self.lock();
            inner.dirty = false;
            inner.state.clone()
        };
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || store::save(&path, &snapshot)).await.unwrap_or_else(|_| {
            Err(StoreError::Write { path: self.path.clone(), source: std::io::Error::other("save task failed") })
        });
        if result.is_err() {
            self.lock().dirty = true;
        }
        result
    }

    /// An agent connected (`labels`: those selectors match). Returns the
    /// channel its session sends pushes from; what it lacks is queued at once.
    pub fn connected(
        &self,
        agent: &str,
        connection_id: u64,
        hello: &Hello,
        labels: BTreeMap<String, String>,
    ) -> mpsc::Receiver<ConfigPush> {
        let (pushes, receiver) = mpsc::channel(SESSION_QUEUE);
        let mut inner = self.lock();
        let known = inner.state.agents.entry(agent.to_owned()).or_default();
        let effective_hash = if known.applied_version == hello.config_version && known.applied_hash == hello.config_hash
        {
            known.effective_hash.clone()
        } else {
            String::new()
        };
        *known = KnownAgent {
            hostname: hello.hostname.clone(),
            labels,
            local_config: hello.local_config.clone(),
            local_config_dir: hello.local_config_dir.clone(),
            applied_version: hello.config_version,
            applied_profile: hello.config_profile.clone(),
            applied_hash: hello.config_hash.clone(),
            effective_hash,
        };
        inner.dirty = true;
        inner.sessions.insert(agent.to_owned(), Session { connection_id, pushes, last_push: None });
        inner.reconcile(agent);
        receiver
    }

    pub fn disconnected(&self, agent: &str, connection_id: u64) {
        let mut inner = self.lock();
        if inner.sessions.get(agent).is_some_and(|s| s.connection_id == connection_id) {
            inner.sessions.remove(agent);
        }
    }

    pub fn acked(&self, agent: &str, ack: ConfigAck) {
        let mut inner = self.lock();
        match ack.outcome {
            ConfigOutcome::Applied => info!(agent, version = ack.version, "agent applied pushed configuration"),
            ConfigOutcome::Refused => {
                warn!(
                    agent,
                    version = ack.version,
                    error = ack.error.as_deref().unwrap_or(""),
                    "agent refused pushed configuration"
                )
            }
            ConfigOutcome::RolledBack => {
                warn!(
                    agent,
                    version = ack.version,
                    error = ack.error.as_deref().unwrap_or(""),
                    "agent rolled back pushed configuration"
                )
            }
        }
        if let Some(known) = inner.state.agents.get_mut(agent) {
            known.applied_version = ack.running_version;
            known.applied_profile = ack.running_profile.clone();
            known.applied_hash = ack.running_hash.clone();
            known.effective_hash = ack.effective_hash.clone();
        }
        inner.acks.insert(
            agent.to_owned(),
            AckRecord { version: ack.version, outcome: ack.outcome, error: ack.error, collectors: ack.collectors },
        );
        inner.dirty = true;
        inner.tick_rollouts(now_ms());
        inner.reconcile_all();
    }

    /// Validates, stores and sends (or with `dry_run`, only reports) a new profile version.
    pub async fn push(&self, request: PushRequest, author: &str) -> Result<PushOutcome, PushError> {
        let outcome = self.push_locked(request, author);
        match &outcome {
            Ok(PushOutcome::Created { .. }) => {
                self.pushes.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.save_now().await?;
            }
            Ok(PushOutcome::Unchanged { .. }) => {
                self.pushes.unchanged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(PushOutcome::DryRun { .. }) => {
                self.pushes.dry_run.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(PushError::Conflict(_)) => {
                self.pushes.conflict.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => {
                self.pushes.invalid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        outcome
    }

    fn push_locked(&self, request: PushRequest, author: &str) -> Result<PushOutcome, PushError> {
        let mut problems = Vec::new();
        if !valid_name(&request.profile) {
            problems.push(format!(
                "profile {:?}: names are letters, digits, '_', '-' and '.', at most 64, starting with a letter or digit (not {})",
                request.profile,
                RESERVED_NAMES.join(" or ")
            ));
        }
        let matchers = match parse_matchers(&request.selector) {
            Ok(matchers) => matchers,
            Err(err) => {
                problems.push(format!("selector {:?}: {err}", request.selector));
                Vec::new()
            }
        };
        let mut inner = self.lock();
        let next = inner.state.next_version.max(1);
        let name = format!("{}@{next}", request.profile);
        let body = match Body::parse(&name, &request.body) {
            Ok(body) => Some(body),
            Err(err) => {
                problems.extend(err.to_string().lines().map(str::to_owned));
                None
            }
        };
        if !problems.is_empty() {
            return Err(PushError::Invalid(problems));
        }
        let body = body.expect("no problems: the body parsed");
        let mut agents: Vec<String> = inner
            .state
            .agents
            .iter()
            .filter(|(_, known)| all_match(&matchers, &known.labels))
            .map(|(agent, _)| agent.clone())
            .collect();
        // Connected agents first: they are the canaries of a staged rollout.
        agents.sort_by_key(|agent| !inner.sessions.contains_key(agent));
        // Ties with another profile, for every agent this one would match.
        let mut conflicts = Vec::new();
        for agent in &agents {
            let labels = inner.state.agents[agent].labels.clone();
            for (other, version) in inner.matching(&labels) {
                if other != request.profile && version.priority == request.priority {
                    conflicts.push(format!(
                        "{agent}: profiles {other:?} and {:?} would both match it at priority {} (give one a different priority or narrow a selector)",
                        request.profile, request.priority
                    ));
                }
            }
        }
        // The agent's own validation, over every matching agent's local file.
        let mut dry_run = Vec::new();
        for agent in &agents {
            let known = inner.state.agents[agent].clone();
            let current = inner.desired(agent).ok();
            let mut entry = DryRunAgent {
                agent: agent.clone(),
                current: current.as_ref().filter(|d| d.version != 0).map(|d| (d.profile.clone(), d.version)),
                diff: String::new(),
                error: None,
            };
            if known.local_config.is_empty() {
                entry.diff = diff(
                    &current.map(|d| d.body).unwrap_or_default(),
                    &request.body,
                    "current body",
                    &format!("{name} body"),
                );
            } else {
                let dir = (!known.local_config_dir.is_empty()).then(|| std::path::Path::new(&known.local_config_dir));
                let local_name = format!("{agent}'s local file");
                let before = current
                    .as_ref()
                    .map_or_else(Body::empty, |d| Body::parse("current", &d.body).unwrap_or_else(|_| Body::empty()));
                let before = pushed::effective(&local_name, &known.local_config, "current", &before, dir, agent);
                match pushed::effective(&local_name, &known.local_config, &name, &body, dir, agent) {
                    Ok(after) => {
                        let before = before.map(|b| b.text).unwrap_or_default();
                        entry.diff = diff(&before, &after.text, "running", &name);
                    }
                    Err(err) => {
                        let message = err.to_string();
                        problems.extend(message.lines().map(|line| format!("{agent}: {line}")));
                        entry.error = Some(message);
                    }
                }
            }
            dry_run.push(entry);
        }
        problems.extend(conflicts.iter().cloned());
        if request.dry_run {
            return Ok(PushOutcome::DryRun { agents: dry_run, problems });
        }
        if !conflicts.is_empty() {
            return Err(PushError::Conflict(conflicts));
        }
        if !problems.is_empty() {
            return Err(PushError::Invalid(problems));
        }
        let previous = inner.state.profiles.get(&request.profile).and_then(|p| p.active_version().cloned());
        if let Some(active) = &previous
            && active.hash == body.hash()
            && active.selector == request.selector
            && active.priority == request.priority
        {
            return Ok(PushOutcome::Unchanged { version: active.version, hash: active.hash.clone(), agents });
        }
        let now = now_ms();
        let version = ProfileVersion {
            version: next,
            hash: body.hash().to_owned(),
            author: author.to_owned(),
            created_ms: now,
            message: request.message.clone(),
            selector: request.selector.clone(),
            priority: request.priority,
            body: request.body.clone(),
        };
        inner.state.next_version = next + 1;
        let from_version = previous.as_ref().map_or(0, |p| p.version);
        // A newer push supersedes a rollout still going for this profile.
        for rollout in inner.state.rollouts.iter_mut().filter(|r| r.profile == request.profile && r.is_active()) {
            rollout.state = RolloutState::Aborted;
            rollout.reason = format!("superseded by version {next}");
        }
        let profile = inner.state.profiles.entry(request.profile.clone()).or_insert_with(|| Profile {
            name: request.profile.clone(),
            versions: Vec::new(),
            active: 0,
        });
        profile.versions.push(version);
        profile.active = next;
        let rollout = match request.canary {
            Some(canary) if !agents.is_empty() => {
                let id = inner.state.next_rollout.max(1);
                inner.state.next_rollout = id + 1;
                let canary = canary.of(agents.len());
                inner.state.rollouts.push(Rollout {
                    id,
                    profile: request.profile.clone(),
                    version: next,
                    from_version,
                    agents: agents.clone(),
                    canary,
                    wave_size: request.wave_size,
                    wait_ms: u64::try_from(request.wait.as_millis()).unwrap_or(u64::MAX),
                    max_failures: request.max_failures,
                    released: canary,
                    wave_start: 0,
                    wave_started_ms: now,
                    state: RolloutState::Running,
                    reason: String::new(),
                    author: author.to_owned(),
                });
                Some(id)
            }
            _ => None,
        };
        let keep = self.keep_versions;
        inner.state.prune(keep);
        inner.dirty = true;
        info!(profile = %request.profile, version = next, author, agents = agents.len(), rollout, "configuration version created");
        inner.reconcile_all();
        Ok(PushOutcome::Created { version: next, hash: body.hash().to_owned(), agents, rollout })
    }

    /// Makes an older version of `profile` active again (default: the one before the active).
    pub async fn rollback(&self, profile: &str, to: Option<u64>, author: &str) -> Result<u64, PushError> {
        let version = {
            let mut inner = self.lock();
            let Some(entry) = inner.state.profiles.get_mut(profile) else {
                return Err(PushError::NotFound(profile.to_owned()));
            };
            let target = match to {
                Some(version) => entry.version(version).map(|v| v.version).ok_or_else(|| {
                    PushError::Invalid(vec![format!("{profile} has no version {version} (kept: {})", kept(entry))])
                })?,
                None => {
                    entry.versions.iter().rev().map(|v| v.version).find(|&v| v < entry.active).ok_or_else(|| {
                        PushError::Invalid(vec![format!(
                            "{profile}@{} has no earlier version to roll back to",
                            entry.active
                        )])
                    })?
                }
            };
            entry.active = target;
            for rollout in inner.state.rollouts.iter_mut().filter(|r| r.profile == profile && r.is_active()) {
                rollout.state = RolloutState::Aborted;
                rollout.reason = format!("rolled back to version {target} by {author}");
            }
            inner.dirty = true;
            info!(profile, version = target, author, "configuration rolled back");
            inner.reconcile_all();
            target
        };
        self.save_now().await?;
        Ok(version)
    }

    /// Continues a halted rollout of `profile`, accepting the failures so far.
    pub async fn resume(&self, profile: &str, author: &str) -> Result<u64, PushError> {
        let id = {
            let mut inner = self.lock();
            let now = now_ms();
            let acks = inner.acks.clone();
            let Some(rollout) =
                inner.state.rollouts.iter_mut().rev().find(|r| r.profile == profile && r.state == RolloutState::Halted)
            else {
                return Err(PushError::NotFound(format!("halted rollout of {profile}")));
            };
            let failed = rollout.agents[..rollout.released.min(rollout.agents.len())]
                .iter()
                .filter(|a| {
                    acks.get(*a)
                        .is_some_and(|ack| ack.version == rollout.version && ack.outcome != ConfigOutcome::Applied)
                })
                .count();
            rollout.max_failures = rollout.max_failures.max(failed);
            rollout.state = RolloutState::Running;
            rollout.reason = format!("resumed by {author}");
            rollout.wave_started_ms = now;
            let id = rollout.id;
            inner.dirty = true;
            inner.tick_rollouts(now);
            inner.reconcile_all();
            id
        };
        self.save_now().await?;
        Ok(id)
    }

    /// Stops the rollout of `profile` and returns every agent to the version before it.
    pub async fn abort(&self, profile: &str, author: &str) -> Result<u64, PushError> {
        let id = {
            let mut inner = self.lock();
            let Some(rollout) = inner.state.rollouts.iter_mut().rev().find(|r| r.profile == profile && r.is_active())
            else {
                return Err(PushError::NotFound(format!("running or halted rollout of {profile}")));
            };
            rollout.state = RolloutState::Aborted;
            rollout.reason = format!("aborted by {author}");
            let (id, from) = (rollout.id, rollout.from_version);
            if let Some(entry) = inner.state.profiles.get_mut(profile) {
                entry.active = from;
            }
            inner.dirty = true;
            info!(profile, rollout = id, author, "rollout aborted");
            inner.reconcile_all();
            id
        };
        self.save_now().await?;
        Ok(id)
    }

    pub fn profiles(&self) -> Vec<ProfileSummary> {
        let mut inner = self.lock();
        let agents: Vec<String> = inner.state.agents.keys().cloned().collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for agent in agents {
            if let Ok(desired) = inner.desired(&agent)
                && desired.version != 0
            {
                *counts.entry(desired.profile).or_default() += 1;
            }
        }
        inner
            .state
            .profiles
            .values()
            .map(|p| ProfileSummary { agents: counts.get(&p.name).copied().unwrap_or(0), profile: p.clone() })
            .collect()
    }

    pub fn profile(&self, name: &str) -> Option<Profile> {
        self.lock().state.profiles.get(name).cloned()
    }

    /// A unified diff between two versions' bodies.
    pub fn diff(&self, name: &str, from: u64, to: u64) -> Result<String, PushError> {
        let profile = self.profile(name).ok_or_else(|| PushError::NotFound(name.to_owned()))?;
        let body = |version: u64| {
            profile.version(version).map(|v| v.body.clone()).ok_or_else(|| {
                PushError::Invalid(vec![format!("{name} has no version {version} (kept: {})", kept(&profile))])
            })
        };
        Ok(diff(&body(from)?, &body(to)?, &format!("{name}@{from}"), &format!("{name}@{to}")))
    }

    pub fn rollouts(&self) -> Vec<Rollout> {
        self.lock().state.rollouts.clone()
    }

    /// Every known agent matching `selector` (all with `None`).
    pub fn status(&self, selector: Option<&str>) -> Result<Vec<AgentConfigStatus>, PushError> {
        let matchers = match selector {
            Some(text) => {
                parse_matchers(text).map_err(|err| PushError::Invalid(vec![format!("selector {text:?}: {err}")]))?
            }
            None => Vec::new(),
        };
        let mut inner = self.lock();
        let agents: Vec<String> = inner
            .state
            .agents
            .iter()
            .filter(|(_, known)| all_match(&matchers, &known.labels))
            .map(|(agent, _)| agent.clone())
            .collect();
        Ok(agents.iter().map(|agent| inner.status(agent)).collect())
    }

    /// Agents per configuration state, every state present (`herd_fleet_agents{config_state}`).
    pub fn state_counts(&self) -> Vec<(ConfigState, usize)> {
        let statuses = self.status(None).unwrap_or_default();
        ConfigState::ALL.iter().map(|&state| (state, statuses.iter().filter(|s| s.state == state).count())).collect()
    }

    /// `herd_config_pushes_total` by `result`.
    pub fn push_counts(&self) -> [(&'static str, u64); 5] {
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        let p = &self.pushes;
        [
            ("created", load(&p.created)),
            ("unchanged", load(&p.unchanged)),
            ("dry_run", load(&p.dry_run)),
            ("invalid", load(&p.invalid)),
            ("conflict", load(&p.conflict)),
        ]
    }

    /// The status of one agent, for the fleet API.
    pub fn agent_status(&self, agent: &str) -> Option<AgentConfigStatus> {
        let mut inner = self.lock();
        inner.state.agents.contains_key(agent).then(|| inner.status(agent))
    }
}

fn kept(profile: &Profile) -> String {
    profile.versions.iter().map(|v| v.version.to_string()).collect::<Vec<_>>().join(", ")
}

fn diff(before: &str, after: &str, before_name: &str, after_name: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(before_name, after_name)
        .to_string()
}

#[cfg(test)]
mod tests;
