//! Configuration pushed by the aggregator, applied live.
//!
//! The agent always runs its local file overlaid by at most one pushed
//! body (`herd_common::config::pushed`). [`startup`] picks what to run when
//! the agent starts: the local file plus the last-known-good body kept in
//! the state directory, so an agent restarted while the aggregator is away
//! keeps what was pushed to it. [`RemoteConfig`] (the manager) then takes
//! pushes from the uplink, one at a time: it validates the body over the
//! local file with the same code the aggregator used, refuses it when a
//! file it names cannot be read here, hands the collectors to the scheduler
//! (which keeps unchanged ones running), and after the first cycle either
//! keeps it (written atomically as the new last-known-good, the uplink's
//! buffer limits and hello updated, the log level switched) or, when every
//! collector failed that cycle, rolls back to what ran before. Every push
//! is answered with a `ConfigAck`.

mod lkg;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_common::config::ConfigError;
use herd_common::config::agent::{AgentConfig, BufferConfig};
use herd_common::config::pushed::{self, Body, Effective};
use herd_common::protocol::{CollectorHealth, ConfigAck, ConfigOutcome, ConfigPush};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::collect::{CollectorSpec, SchedulerCommand};
pub use lkg::LastKnownGood;

/// The agent's local configuration file, as read when it started.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Names the file in errors.
    pub source_name: String,
    pub text: String,
    /// Relative paths in the file are taken from here.
    pub base_dir: Option<PathBuf>,
    pub hostname: String,
}

impl LocalConfig {
    /// Reads and validates the file (refusing secrets and keys others can read).
    pub fn load(path: &std::path::Path, hostname: &str) -> Result<(Self, AgentConfig), ConfigError> {
        let config = AgentConfig::load(path, hostname)?;
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            source_name: path.display().to_string(),
            problems: vec![format!("cannot read the file: {err}")],
        })?;
        let local = LocalConfig {
            source_name: path.display().to_string(),
            text,
            base_dir: path.parent().map(std::path::Path::to_owned),
            hostname: hostname.to_owned(),
        };
        Ok((local, config))
    }

    fn effective(&self, body_name: &str, body: &Body) -> Result<Effective, ConfigError> {
        pushed::effective(&self.source_name, &self.text, body_name, body, self.base_dir.as_deref(), &self.hostname)
    }

    /// The file as reported to the aggregator, passwords hidden.
    pub fn redacted(&self) -> String {
        pushed::redacted(&self.text)
    }
}

/// What the agent runs: a pushed version over the local file, or the file alone (version 0).
#[derive(Debug, Clone)]
pub struct Running {
    pub version: u64,
    pub profile: String,
    pub body: Body,
    pub effective: Effective,
}

impl Running {
    pub fn config(&self) -> &AgentConfig {
        &self.effective.config
    }
}

/// What the uplink needs to know about the running configuration: its hello
/// reports it, and it owns the buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub labels: Vec<(String, String)>,
    pub version: u64,
    pub profile: String,
    pub hash: String,
    pub buffer: BufferConfig,
}

impl LiveSettings {
    pub fn of(running: &Running) -> Self {
        let config = running.config();
        LiveSettings {
            labels: config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            version: running.version,
            profile: running.profile.clone(),
            hash: if running.version == 0 { String::new() } else { running.body.hash().to_owned() },
            buffer: config.buffer.clone(),
        }
    }
}

/// Figures for the agent's own metrics.
#[derive(Debug, Default)]
pub struct ConfigStats {
    /// `herd_agent_config_version`.
    pub version: AtomicU64,
    /// `herd_agent_config_apply_failures_total`: pushes refused or rolled back.
    pub apply_failures: AtomicU64,
}

/// Switches the log filter at run time.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The configuration to start with: the local file overlaid by the
/// last-known-good body in `state_dir`, if there is one and it is still
/// valid over the file; else the file alone.
pub fn startup(local: &LocalConfig, local_config: AgentConfig) -> Running {
    let alone = |config: AgentConfig| {
        let effective = local.effective(&local.source_name, &Body::empty());
        let effective =
            effective.unwrap_or_else(|_| Effective { text: local.text.clone(), hash: String::new(), config });
        Running { version: 0, profile: String::new(), body: Body::empty(), effective }
    };
    let path = lkg::path(&local_config.state_dir);
    let saved = match LastKnownGood::read(&path) {
        Ok(Some(saved)) => saved,
        Ok(None) => return alone(local_config),
        Err(err) => {
            warn!(path = %path.display(), error = %err, "ignoring the last-known-good configuration; starting on the local file");
            return alone(local_config);
        }
    };
    let name = format!("last-known-good {}@{}", saved.profile, saved.version);
    let body = match Body::parse(&name, &saved.body) {
        Ok(body) if body.hash() == saved.hash => body,
        Ok(_) => {
            warn!(path = %path.display(), "last-known-good configuration does not match its hash; starting on the local file");
            return alone(local_config);
        }
        Err(err) => {
            warn!(error = %err, "last-known-good configuration no longer valid; starting on the local file");
            return alone(local_config);
        }
    };
    match local.effective(&name, &body) {
        Ok(effective) => {
            info!(version = saved.version, profile = %saved.profile, "starting on the last-known-good pushed configuration");
            Running { version: saved.version, profile: saved.profile, body, effective }
        }
        Err(err) => {
            warn!(error = %err, "last-known-good configuration no longer valid over the local file; starting on the local file");
            alone(local_config)
        }
    }
}

/// The `instance` label and the agent's labels, put on every series.
pub fn common_labels(config: &AgentConfig) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.push(("instance".into(), config.instance.clone()));
    labels
}

/// The manager of pushed configuration.
pub struct RemoteConfig {
    pub local: LocalConfig,
    pub running: Running,
    pub scheduler: mpsc::Sender<SchedulerCommand>,
    pub live: watch::Sender<LiveSettings>,
    pub set_log_level: Option<LogLevelSetter>,
    pub stats: Arc<ConfigStats>,
}

impl RemoteConfig {
    /// Applies pushes from `pushes` and answers each on `acks`, until `shutdown`.
    pub async fn run(
        mut self,
        mut pushes: mpsc::Receiver<ConfigPush>,
        acks: mpsc::Sender<ConfigAck>,
        shutdown: CancellationToken,
    ) {
        self.stats.version.store(self.running.version, Ordering::Relaxed);
        loop {
            let push = tokio::select! {
                _ = shutdown.cancelled() => return,
                push = pushes.recv() => match push {
                    Some(push) => push,
                    None => return,
                },
            };
            let ack = self.apply(push).await;
            if !matches!(ack.outcome, ConfigOutcome::Applied) {
                self.stats.apply_failures.fetch_add(1, Ordering::Relaxed);
            }
            // The uplink may be between connections; a full queue drops the
            // answer, and the next hello reports what runs.
            let _ = acks.try_send(ack);
        }
    }

    fn ack(
        &self,
        version: u64,
        outcome: ConfigOutcome,
        error: Option<String>,
        collectors: Vec<CollectorHealth>,
    ) -> ConfigAck {
        let live = LiveSettings::of(&self.running);
        ConfigAck {
            version,
            outcome,
            running_version: live.version,
            running_profile: live.profile,
            running_hash: live.hash,
            effective_hash: self.running.effective.hash.clone(),
            error,
            collectors,
        }
    }

    /// Validates and applies one push; never leaves the agent without a working configuration.
    pub async fn apply(&mut self, push: ConfigPush) -> ConfigAck {
        let name = if push.version == 0 {
            "the local file alone".to_owned()
        } else {
            format!("pushed config {}@{}", push.profile, push.version)
        };
        let refuse = |this: &Self, error: String| {
            warn!(version = push.version, profile = %push.profile, %error, "pushed configuration refused");
            this.ack(push.version, ConfigOutcome::Refused, Some(error), Vec::new())
        };
        let body = if push.version == 0 {
            if !push.toml.trim().is_empty() {
                return refuse(self, format!("{name}: version 0 carries no body"));
            }
            Body::empty()
        } else {
            match Body::parse(&name, &push.toml) {
                Ok(body) => body,
                Err(err) => return refuse(self, err.to_string()),
            }
        };
        if push.version != 0 && body.hash() != push.hash {
            return refuse(self, format!("{name}: its content does not match the hash {} it was sent with", push.hash));
        }
        if push.version == self.running.version && body.hash() == self.running.body.hash() {
            // Sent again (a reconnect, a resend): already running.
            return self.ack(push.version, ConfigOutcome::Applied, None, Vec::new());
        }
        let effective = match self.local.effective(&name, &body) {
            Ok(effective) => effective,
            Err(err) => return refuse(self, err.to_string()),
        };
        let unreadable = effective.config.unreadable_files();
        if !unreadable.is_empty() {
            let problems: Vec<String> = unreadable.into_iter().map(|problem| format!("{name}: {problem}")).collect();
            return refuse(self, problems.join("\n"));
        }
        let health = match self.switch(&effective.config).await {
            Ok(health) => health,
            Err(err) => return refuse(self, format!("{name}: {err}")),
        };
        if !health.is_empty() && health.iter().all(|h| h.error.is_some()) {
            let previous = self.running.effective.config.clone();
            if let Err(err) = self.switch(&previous).await {
                warn!(error = %err, "the previous configuration's collectors could not be rebuilt");
            }
            let failures: Vec<String> =
                health.iter().map(|h| format!("{}: {}", h.name, h.error.as_deref().unwrap_or_default())).collect();
            let error =
                format!("{name}: every collector failed its first cycle ({}); rolled back", failures.join("; "));
            warn!(version = push.version, profile = %push.profile, %error, "pushed configuration rolled back");
            return self.ack(push.version, ConfigOutcome::RolledBack, Some(error), health);
        }
        let running = Running { version: push.version, profile: push.profile.clone(), body, effective };
        let saved = if running.version == 0 {
            LastKnownGood::remove(&lkg::path(&running.config().state_dir))
        } else {
            LastKnownGood {
                version: running.version,
                profile: running.profile.clone(),
                hash: running.body.hash().to_owned(),
                body: running.body.text().to_owned(),
            }
            .write(&lkg::path(&running.config().state_dir))
        };
        if let Err(err) = saved {
            warn!(error = %err, "cannot keep the applied configuration as last-known-good; it runs until the next restart");
        }
        if running.config().log_level != self.running.config().log_level
            && let Some(set) = &self.set_log_level
            && let Err(err) = set(&running.config().log_level)
        {
            warn!(error = %err, "cannot switch the log level");
        }
        self.running = running;
        self.live.send_replace(LiveSettings::of(&self.running));
        self.stats.version.store(self.running.version, Ordering::Relaxed);
        info!(version = push.version, profile = %push.profile, hash = %self.running.body.hash(), "pushed configuration applied");
        self.ack(push.version, ConfigOutcome::Applied, None, health)
    }

    /// Hands `config`'s collectors to the scheduler; their health after the first run.
    async fn switch(&self, config: &AgentConfig) -> Result<Vec<CollectorHealth>, String> {
        let (reply, answer) = oneshot::channel();
        let command = SchedulerCommand::Apply {
            specs: CollectorSpec::all(config),
            interval: config.collect.interval,
            timeout: config.collect.timeout,
            common_labels: common_labels(config),
            reply,
        };
        self.scheduler.send(command).await.map_err(|_| "the agent is shutting down".to_owned())?;
        match answer.await {
            Ok(Ok(health)) => Ok(health),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("the agent is shutting down".to_owned()),
        }
    }
}
