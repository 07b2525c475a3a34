//! What Docker says about containers: which exist, their names, images,
//! labels, main process, state and restart count. A watcher task lists the
//! containers once per connection, then follows Docker's event stream and
//! re-inspects a container when an event names it, so a cycle never waits on
//! Docker for the list. Reading counters is not done here.
//!
//! Docker unreachable (no socket, no permission, daemon down) is a state,
//! not a crash: the inventory says so, the collector reports it as its error
//! (the scheduler logs that once, and again on recovery), and the watcher
//! retries with exponential backoff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, EventMessage, EventMessageTypeEnum, HealthStatusEnum,
};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Longest wait for one request (not the event stream, which stays open).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// States in which a container is tracked; others (created, exited, dead)
/// have no processes and so no counters, like in cAdvisor.
pub(crate) const TRACKED_STATES: [&str; 3] = ["running", "paused", "restarting"];
/// Health states reported as `container_health_status{status=...}`.
pub(crate) const HEALTH_STATES: [&str; 3] = ["starting", "healthy", "unhealthy"];

/// One container, as last inspected.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerInfo {
    pub(crate) full_id: String,
    /// Without Docker's leading `/`, as cAdvisor.
    pub(crate) name: String,
    /// The image as the container was created with it (`Config.Image`).
    pub(crate) image: String,
    /// Allow-listed labels as (`container_label_<sanitized key>`, value), sorted.
    pub(crate) labels: Vec<(String, String)>,
    /// Main process in the host's PID namespace; 0 when not running.
    pub(crate) pid: u32,
    /// One of [`TRACKED_STATES`].
    pub(crate) state: &'static str,
    /// One of [`HEALTH_STATES`]; `None` without a health check.
    pub(crate) health: Option<&'static str>,
    /// Restarts by Docker's restart policy (`docker restart` by hand resets it, as Docker does).
    pub(crate) restart_count: i64,
    pub(crate) started_at_seconds: Option<f64>,
    /// `HostConfig.Memory`; 0 when unlimited. For the stats fallback only.
    pub(crate) memory_limit_bytes: f64,
}

/// Whether Docker answers, and what it runs.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub(crate) docker: Option<Docker>,
    /// Why Docker cannot be used; `None` while connected (or before the first try).
    pub(crate) unavailable: Option<String>,
    pub(crate) containers: HashMap<String, Arc<ContainerInfo>>,
}

pub(crate) type SharedInventory = Arc<Mutex<Inventory>>;

fn lock(inventory: &SharedInventory) -> std::sync::MutexGuard<'_, Inventory> {
    inventory.lock().expect("inventory lock is never poisoned: no panics while held")
}

/// Keeps `inventory` up to date until `shutdown` is cancelled.
pub(crate) async fn watch(
    socket: PathBuf,
    label_allowlist: Vec<String>,
    inventory: SharedInventory,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_INITIAL;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = follow(&socket, &label_allowlist, &inventory) => result,
        };
        let reason = match result {
            Ok(()) => "Docker closed the event stream".to_owned(),
            Err(err) => err.to_string(),
        };
        {
            // Without events the list would go stale: report nothing rather than old containers.
            let mut inventory = lock(&inventory);
            if inventory.docker.is_some() {
                // Reset only after a connection that worked, so a flapping daemon still backs off.
                backoff = BACKOFF_INITIAL;
            }
            inventory.docker = None;
            inventory.containers.clear();
            inventory.unavailable = Some(reason.clone());
        }
        debug!(socket = %socket.display(), error = %reason, retry_in_ms = backoff.as_millis() as u64, "Docker unavailable");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jittered(backoff)) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error(
        "cannot use the Docker socket {socket} (does it exist, and can the herd-agent user read it? \
         add the user to the docker group or set collect.containers.docker_socket): {source}"
    )]
    Connect {
        socket: String,
        #[source]
        source: DockerError,
    },
    #[error("Docker at {socket}: {source}")]
    Api {
        socket: String,
        #[source]
        source: DockerError,
    },
}

/// One connection: list, then follow events until the stream ends or fails.
async fn follow(socket: &Path, allowlist: &[String], inventory: &SharedInventory) -> Result<(), WatchError> {
    let socket_text = socket.display().to_string();
    let connect_error = |source| WatchError::Connect { socket: socket_text.clone(), source };
    let api_error = |source| WatchError::Api { socket: socket_text.clone(), source };
    let docker = Docker::connect_with_unix(&socket_text, REQUEST_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
        .map_err(connect_error)?;
    // Speak the daemon's API version when it is older than bollard's.
    let docker = docker.negotiate_version().await.map_err(connect_error)?;
    // Events from this moment on are replayed to the stream opened below, so
    // nothing that happens while the list is read is missed.
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
    let listed = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "status".to_owned(),
                TRACKED_STATES.iter().map(|s| (*s).to_owned()).collect(),
            )])),
            ..Default::default()
        }))
        .await
        .map_err(api_error)?;
    let mut containers = HashMap::new();
    for summary in listed {
        let Some(id) = summary.id else { continue };
        // A container removed since the list was read is simply not added.
        if let Some(info) = inspect(&docker, &id, allowlist).await.map_err(api_error)? {
            containers.insert(id, Arc::new(info));
        }
    }
    let count = containers.len();
    {
        let mut inventory = lock(inventory);
        let recovered = inventory.unavailable.take().is_some();
        inventory.containers = containers;
        inventory.docker = Some(docker.clone());
        if recovered {
            info!(socket = %socket_text, containers = count, "Docker reachable again");
        } else {
            info!(socket = %socket_text, containers = count, "following Docker events");
        }
    }
    let mut events = docker.events(Some(EventsOptions {
        since: Some(since),
        until: None,
        filters: Some(HashMap::from([("type".to_owned(), vec!["container".to_owned()])])),
    }));
    while let Some(event) = events.next().await {
        let event = event.map_err(api_error)?;
        let Some(id) = container_of(&event) else { continue };
        let action = event.action.as_deref().unwrap_or("");
        let info = if action == "destroy" { None } else { inspect(&docker, id, allowlist).await.map_err(api_error)? };
        let mut inventory = lock(inventory);
        match info {
            Some(info) => inventory.containers.insert(id.to_owned(), Arc::new(info)),
            None => inventory.containers.remove(id),
        };
    }
    Ok(())
}

/// The container an event is about, if it may change what is reported.
fn container_of(event: &EventMessage) -> Option<&str> {
    if event.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let action = event.action.as_deref()?;
    // "exec_start: sh -c ..." and "health_status: healthy" carry details after the colon.
    let action = action.split_once(':').map_or(action, |(name, _)| name);
    let relevant = matches!(
        action,
        "start"
            | "restart"
            | "die"
            | "stop"
            | "kill"
            | "pause"
            | "unpause"
            | "rename"
            | "update"
            | "destroy"
            | "health_status"
            | "oom"
    );
    relevant.then(|| event.actor.as_ref()?.id.as_deref()).flatten()
}

/// The container as Docker sees it now; `None` when it is gone or in a state not tracked.
async fn inspect(docker: &Docker, id: &str, allowlist: &[String]) -> Result<Option<ContainerInfo>, DockerError> {
    match docker.inspect_container(id, None).await {
        Ok(response) => Ok(describe(response, allowlist)),
        Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Turns Docker's answer into what the collector needs.
pub(crate) fn describe(response: ContainerInspectResponse, allowlist: &[String]) -> Option<ContainerInfo> {
    let full_id = response.id?;
    let state = response.state.unwrap_or_default();
    let tracked = match state.status? {
        ContainerStateStatusEnum::RUNNING => TRACKED_STATES[0],
        ContainerStateStatusEnum::PAUSED => TRACKED_STATES[1],
        ContainerStateStatusEnum::RESTARTING => TRACKED_STATES[2],
        _ => return None,
    };
    let health = state.health.and_then(|health| match health.status? {
        HealthStatusEnum::STARTING => Some(HEALTH_STATES[0]),
        HealthStatusEnum::HEALTHY => Some(HEALTH_STATES[1]),
        HealthStatusEnum::UNHEALTHY => Some(HEALTH_STATES[2]),
        _ => None,
    });
    let config = response.config.unwrap_or_default();
    let container_labels = config.labels.unwrap_or_default();
    let mut labels: Vec<(String, String)> =
        allowlist.iter().filter_map(|key| Some((label_name(key), container_labels.get(key)?.clone()))).collect();
    labels.sort();
    labels.dedup_by(|a, b| a.0 == b.0);
    let name = response.name.unwrap_or_default();
    Some(ContainerInfo {
        name: name.strip_prefix('/').unwrap_or(&name).to_owned(),
        image: config.image.unwrap_or_default(),
        labels,
        pid: state.pid.and_then(|pid| u32::try_from(pid).ok()).unwrap_or(0),
        state: tracked,
        health,
        restart_count: response.restart_count.unwrap_or(0),
        started_at_seconds: state.started_at.as_deref().and_then(parse_rfc3339_seconds),
        memory_limit_bytes: response.host_config.and_then(|h| h.memory).unwrap_or(0).max(0) as f64,
        full_id,
    })
}

/// cAdvisor's `container_label_<key>`, with every character outside
/// `[a-zA-Z0-9_]` replaced by `_`.
pub(crate) fn label_name(key: &str) -> String {
    let sanitized: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("container_label_{sanitized}")
}

/// Docker's `StartedAt` ("2026-11-25T08:53:04.123456789Z"); Docker writes
/// "0001-01-01T00:00:00Z" for never, which is no time at all.
fn parse_rfc3339_seconds(text: &str) -> Option<f64> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = time.unix_timestamp_nanos();
    (nanos > 0).then(|| nanos as f64 / 1e9)
}

/// Up to a quarter more, so agents restarted together do not knock together.
fn jittered(delay: Duration) -> Duration {
    delay + delay.mul_f64(fastrand::f64() / 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, Health};

    #[test]
    fn label_keys_are_sanitized_like_cadvisor() {
        assert_eq!(label_name("com.docker.compose.service"), "container_label_com_docker_compose_service");
        assert_eq!(label_name("team"), "container_label_team");
    }

    #[test]
    fn started_at_parses_and_never_is_none() {
        assert_eq!(parse_rfc3339_seconds("2026-11-25T08:53:04.5Z"), Some(1795596784.5));
        assert_eq!(parse_rfc3339_seconds("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_seconds("yesterday"), None);
    }

    #[test]
    fn inspect_answers_become_container_info() {
        let response = ContainerInspectResponse {
            id: Some("abc".into()),
            name: Some("/web".into()),
            restart_count: Some(3),
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                pid: Some(4242),
                started_at: Some("2026-11-25T08:53:04Z".into()),
                health: Some(Health { status: Some(HealthStatusEnum::HEALTHY), ..Default::default() }),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                image: Some("nginx:1.27".into()),
                labels: Some(HashMap::from([
                    ("com.example.team".to_owned(), "web".to_owned()),
                    ("secret.not.listed".to_owned(), "x".to_owned()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let allowlist = vec!["com.example.team".to_owned(), "absent".to_owned()];
        let info = describe(response.clone(), &allowlist).unwrap();
        assert_eq!(
            info,
            ContainerInfo {
                full_id: "abc".into(),
                name: "web".into(),
                image: "nginx:1.27".into(),
                labels: vec![("container_label_com_example_team".into(), "web".into())],
                pid: 4242,
                state: "running",
                health: Some("healthy"),
                restart_count: 3,
                started_at_seconds: Some(1795596784.0),
                memory_limit_bytes: 0.0,
            }
        );
        let mut exited = response;
        exited.state.as_mut().unwrap().status = Some(ContainerStateStatusEnum::EXITED);
        assert_eq!(describe(exited, &allowlist), None);
    }
}
