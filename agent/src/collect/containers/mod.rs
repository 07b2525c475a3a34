//! The containers collector: cAdvisor's per-container metrics (job
//! `cadvisor`) for the containers Docker runs, so the seed's container rules
//! and dashboards work without cAdvisor. See `docs/containers.md`.
//!
//! Docker is asked only what it alone knows (which containers, names,
//! images, labels, state, restarts), and follows its event stream
//! (`docker.rs`); the counters come from the kernel: each container's
//! cgroup files (`cgroup.rs`, v1 or v2) and its main process's
//! `/proc/<pid>/net/dev` (`netdev.rs`). A stats request per container per
//! cycle is made only for a container whose cgroup files cannot be read.
//!
//! Per-container state lives in the watcher's inventory and nowhere else: a
//! container that goes away is dropped from it, this collector stops
//! pushing its series, and the scheduler marks them stale.

mod cgroup;
mod docker;
mod netdev;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;
use herd_common::config::agent::ContainersConfig;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Batch, CollectError, Collector};
use cgroup::{CgroupDirs, DeviceIo, Layout, Usage};
use docker::{ContainerInfo, HEALTH_STATES, SharedInventory, TRACKED_STATES};
use netdev::InterfaceCounters;

/// What one cycle read for one container.
struct Reading {
    info: Arc<ContainerInfo>,
    /// `None` when the cgroup files could not be read (the stats API is tried next).
    usage: Option<Usage>,
    network: Vec<InterfaceCounters>,
}

/// Reads where the kernel keeps the counters; kept apart from Docker so the
/// fixture tests need no daemon.
#[derive(Debug, Clone)]
struct Paths {
    cgroup_root: PathBuf,
    sysfs_root: PathBuf,
    procfs_root: PathBuf,
}

pub struct ContainersCollector {
    paths: Paths,
    inventory: SharedInventory,
    /// `/dev/<name>` by (major, minor); devices are few and long-lived.
    device_names: Arc<Mutex<HashMap<(u32, u32), String>>>,
    /// Stops the watcher task when the collector is dropped (config change, shutdown).
    _watcher: DropGuard,
}

impl ContainersCollector {
    /// Starts following Docker in the background; needs a tokio runtime.
    pub fn start(config: &ContainersConfig, shutdown: CancellationToken) -> Self {
        let inventory = SharedInventory::default();
        let watcher_token = shutdown.child_token();
        tokio::spawn(docker::watch(
            config.docker_socket.clone(),
            config.label_allowlist.clone(),
            Arc::clone(&inventory),
            watcher_token.clone(),
        ));
        Self {
            paths: Paths {
                cgroup_root: config.cgroup_root.clone(),
                sysfs_root: config.sysfs_root.clone(),
                procfs_root: config.procfs_root.clone(),
            },
            inventory,
            device_names: Arc::default(),
            _watcher: watcher_token.drop_guard(),
        }
    }
}

#[async_trait]
impl Collector for ContainersCollector {
    fn name(&self) -> &str {
        "containers"
    }

    fn job(&self) -> &str {
        "cadvisor"
    }

    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let (containers, client) = {
            let inventory = self.inventory.lock().expect("inventory lock is never poisoned: no panics while held");
            if let Some(reason) = &inventory.unavailable {
                return Err(CollectError::Unavailable { source_name: "Docker", detail: reason.clone() });
            }
            let containers: Vec<Arc<ContainerInfo>> = inventory.containers.values().cloned().collect();
            (containers, inventory.docker.clone())
        };
        let paths = self.paths.clone();
        // Some hundred small reads of pseudo-files per cycle: off the runtime threads.
        let mut readings = tokio::task::spawn_blocking(move || read_all(&paths, containers))
            .await
            .expect("reading cgroup files does not panic");
        if let Some(client) = client {
            fill_from_stats_api(&client, &mut readings).await;
        }
        let devices = self.device_names_for(&readings).await;
        for reading in &readings {
            push_container(out, reading, &devices);
        }
        Ok(())
    }
}

/// Asks the stats API, all at once, for the running containers whose cgroup
/// files could not be read.
async fn fill_from_stats_api(client: &Docker, readings: &mut [Reading]) {
    let mut requests = tokio::task::JoinSet::new();
    for (index, reading) in readings.iter().enumerate() {
        if reading.usage.is_none() && reading.info.state == "running" {
            let (client, info) = (client.clone(), Arc::clone(&reading.info));
            requests.spawn(async move { (index, stats_fallback(&client, &info).await) });
        }
    }
    while let Some(joined) = requests.join_next().await {
        let Ok((index, Some((usage, network)))) = joined else { continue };
        let Some(reading) = readings.get_mut(index) else { continue };
        reading.usage = Some(usage);
        if reading.network.is_empty() {
            reading.network = network;
        }
    }
}

impl ContainersCollector {
    /// Names of the block devices in `readings`, looked up in sysfs once each.
    async fn device_names_for(&self, readings: &[Reading]) -> HashMap<(u32, u32), String> {
        let wanted: Vec<(u32, u32)> = readings
            .iter()
            .flat_map(|r| r.usage.iter().flat_map(|u| u.io.iter().map(|d| (d.major, d.minor))))
            .collect();
        let missing: Vec<(u32, u32)> = {
            let known = self.device_names.lock().expect("device name lock is never poisoned");
            wanted.iter().filter(|key| !known.contains_key(key)).copied().collect()
        };
        if !missing.is_empty() {
            let sysfs_root = self.paths.sysfs_root.clone();
            let found = tokio::task::spawn_blocking(move || {
                missing
                    .into_iter()
                    .map(|(major, minor)| {
                        // No udev name (a device-mapper node in a container, say): cAdvisor's "major:minor" style.
                        let name = cgroup::device_name(&sysfs_root, major, minor)
                            .unwrap_or_else(|| format!("{major}:{minor}"));
                        ((major, minor), name)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("reading sysfs does not panic");
            self.device_names.lock().expect("device name lock is never poisoned").extend(found);
        }
        self.device_names.lock().expect("device name lock is never poisoned").clone()
    }
}

/// Reads every running container's cgroup and network counters. Blocking.
fn read_all(paths: &Paths, containers: Vec<Arc<ContainerInfo>>) -> Vec<Reading> {
    let layout = Layout::detect(&paths.cgroup_root);
    containers
        .into_iter()
        .map(|info| {
            if info.state != "running" || info.pid == 0 {
                return Reading { info, usage: None, network: Vec::new() };
            }
            let process = paths.procfs_root.join(info.pid.to_string());
            let dirs = find_dirs(layout, &paths.cgroup_root, &process, &info.full_id);
            let usage = dirs.and_then(|dirs| cgroup::read_usage(layout, &dirs).ok());
            let network =
                std::fs::read_to_string(process.join("net/dev")).map(|text| netdev::parse(&text)).unwrap_or_default();
            Reading { info, usage, network }
        })
        .collect()
}

/// The container's cgroup: from its process when visible, else where Docker usually puts it.
fn find_dirs(layout: Layout, cgroup_root: &Path, process: &Path, full_id: &str) -> Option<CgroupDirs> {
    std::fs::read_to_string(process.join("cgroup"))
        .ok()
        .and_then(|text| cgroup::dirs_from_proc_cgroup(layout, cgroup_root, &text))
        .filter(|dirs| dirs.memory.is_dir())
        .or_else(|| cgroup::guess_dirs(layout, cgroup_root, full_id))
}

/// Longest wait for one container's stats.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// One stats request, for a container whose cgroup files cannot be read
/// (an agent in a container without the host's cgroup mount, say).
async fn stats_fallback(client: &Docker, info: &ContainerInfo) -> Option<(Usage, Vec<InterfaceCounters>)> {
    let options = StatsOptions { stream: false, one_shot: true };
    let mut stream = client.stats(&info.full_id, Some(options));
    let stats = tokio::time::timeout(STATS_TIMEOUT, stream.next()).await.ok()??.ok()?;
    let cpu = stats.cpu_stats?.cpu_usage?;
    let memory = stats.memory_stats?;
    let memory_stats = memory.stats.unwrap_or_default();
    let stat = |key: &str| memory_stats.get(key).map(|&v| v as f64);
    let memory_usage_bytes = memory.usage? as f64;
    // Docker reports v1's names or v2's, whichever the host has.
    let inactive_file = stat("total_inactive_file").or_else(|| stat("inactive_file"));
    let mut io: Vec<DeviceIo> = Vec::new();
    for entry in stats.blkio_stats.and_then(|b| b.io_service_bytes_recursive).unwrap_or_default() {
        let (Some(major), Some(minor), Some(op), Some(value)) = (entry.major, entry.minor, entry.op, entry.value)
        else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (u32::try_from(major), u32::try_from(minor)) else { continue };
        let index = match io.iter().position(|d| (d.major, d.minor) == (major, minor)) {
            Some(index) => index,
            None => {
                io.push(DeviceIo { major, minor, read_bytes: 0.0, write_bytes: 0.0 });
                io.len() - 1
            }
        };
        let Some(device) = io.get_mut(index) else { continue };
        match op.to_ascii_lowercase().as_str() {
            "read" => device.read_bytes = value as f64,
            "write" => device.write_bytes = value as f64,
            _ => {}
        }
    }
    let usage = Usage {
        cpu_usage_seconds: cpu.total_usage? as f64 / 1e9,
        cpu_user_seconds: cpu.usage_in_usermode.map(|ns| ns as f64 / 1e9),
        cpu_system_seconds: cpu.usage_in_kernelmode.map(|ns| ns as f64 / 1e9),
        memory_usage_bytes,
        memory_working_set_bytes: inactive_file.map(|inactive| (memory_usage_bytes - inactive).max(0.0)),
        memory_rss_bytes: stat("total_rss").or_else(|| stat("anon")),
        memory_cache_bytes: stat("total_cache").or_else(|| stat("file")),
        memory_limit_bytes: Some(info.memory_limit_bytes),
        io,
    };
    let network = stats
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(interface, n)| InterfaceCounters {
            interface,
            receive_bytes: n.rx_bytes.unwrap_or(0) as f64,
            receive_packets: n.rx_packets.unwrap_or(0) as f64,
            receive_errors: n.rx_errors.unwrap_or(0) as f64,
            transmit_bytes: n.tx_bytes.unwrap_or(0) as f64,
            transmit_packets: n.tx_packets.unwrap_or(0) as f64,
            transmit_errors: n.tx_errors.unwrap_or(0) as f64,
        })
        .collect();
    Some((usage, network))
}

/// Pushes one container's series, labelled `id` (`/docker/<full id>`), `image`, `name` and its allow-listed labels.
fn push_container(out: &mut Batch, reading: &Reading, devices: &HashMap<(u32, u32), String>) {
    let info = &reading.info;
    // cAdvisor's id is the cgroup path; Herd always writes the cgroupfs
    // driver's form so the label is the same whatever the host's driver.
    let id = format!("/docker/{}", info.full_id);
    let mut labels: Vec<(&str, &str)> = vec![("id", &id), ("image", &info.image), ("name", &info.name)];
    labels.extend(info.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let base = labels.len();
    // The common labels, then at most one more; a fn so the lifetimes line up.
    fn push_with<'a>(
        labels: &mut Vec<(&'a str, &'a str)>,
        base: usize,
        out: &mut Batch,
        name: &str,
        extra: Option<(&'a str, &'a str)>,
        value: f64,
    ) {
        labels.truncate(base);
        labels.extend(extra);
        out.push(name, labels, value);
    }
    let mut push = |out: &mut Batch, name: &str, extra, value| push_with(&mut labels, base, out, name, extra, value);

    if let Some(started) = info.started_at_seconds {
        push(out, "container_start_time_seconds", None, started);
    }
    push(out, "container_restart_count", None, info.restart_count as f64);
    for state in TRACKED_STATES {
        push(out, "container_state", Some(("state", state)), if info.state == state { 1.0 } else { 0.0 });
    }
    if let Some(health) = info.health {
        for status in HEALTH_STATES {
            push(out, "container_health_status", Some(("status", status)), if health == status { 1.0 } else { 0.0 });
        }
    }
    if let Some(usage) = &reading.usage {
        // cAdvisor without per-CPU metrics labels the sum cpu="total".
        push(out, "container_cpu_usage_seconds_total", Some(("cpu", "total")), usage.cpu_usage_seconds);
        if let Some(user) = usage.cpu_user_seconds {
            push(out, "container_cpu_user_seconds_total", None, user);
        }
        if let Some(system) = usage.cpu_system_seconds {
            push(out, "container_cpu_system_seconds_total", None, system);
        }
        push(out, "container_memory_usage_bytes", None, usage.memory_usage_bytes);
        let optional = [
            ("container_memory_working_set_bytes", usage.memory_working_set_bytes),
            ("container_memory_rss", usage.memory_rss_bytes),
            ("container_memory_cache", usage.memory_cache_bytes),
            ("container_spec_memory_limit_bytes", usage.memory_limit_bytes),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                push(out, name, None, value);
            }
        }
        for io in &usage.io {
            let Some(device) = devices.get(&(io.major, io.minor)) else { continue };
            push(out, "container_fs_reads_bytes_total", Some(("device", device)), io.read_bytes);
            push(out, "container_fs_writes_bytes_total", Some(("device", device)), io.write_bytes);
        }
    }
    for interface in &reading.network {
        let label = Some(("interface", interface.interface.as_str()));
        let counters = [
            ("container_network_receive_bytes_total", interface.receive_bytes),
            ("container_network_receive_packets_total", interface.receive_packets),
            ("container_network_receive_errors_total", interface.receive_errors),
            ("container_network_transmit_bytes_total", interface.transmit_bytes),
            ("container_network_transmit_packets_total", interface.transmit_packets),
            ("container_network_transmit_errors_total", interface.transmit_errors),
        ];
        for (name, value) in counters {
            push(out, name, label, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::host::tests::{fixtures, new_batch};

    const FULL_ID: &str = "4f1c2a9e0b7d4c3a8e6f5d2b1a0c9e8f7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a";

    fn container(pid: u32) -> Arc<ContainerInfo> {
        Arc::new(ContainerInfo {
            full_id: FULL_ID.into(),
            name: "web".into(),
            image: "nginx:1.27".into(),
            labels: vec![("container_label_team".into(), "edge".into())],
            pid,
            state: "running",
            health: None,
            restart_count: 2,
            started_at_seconds: Some(1_795_596_784.0),
            memory_limit_bytes: 0.0,
        })
    }

    /// Reads a container from a fixture tree (`cgroup/<layout>`, with
    /// `proc/<pid>/{cgroup,net/dev}` beside it and a shared `sys`) and
    /// compares the exposition lines with `expected` (the common labels
    /// `id`, `image`, `name`, `container_label_team` left out for brevity).
    fn check(layout_dir: &str, pid: u32, expected: &str) {
        let root = fixtures().join("cgroup").join(layout_dir);
        let paths = Paths {
            cgroup_root: root.join("fs"),
            sysfs_root: fixtures().join("cgroup/sys"),
            procfs_root: root.join("proc"),
        };
        let readings = read_all(&paths, vec![container(pid)]);
        let mut devices = HashMap::new();
        for reading in &readings {
            for io in reading.usage.iter().flat_map(|u| &u.io) {
                let name = cgroup::device_name(&paths.sysfs_root, io.major, io.minor)
                    .unwrap_or_else(|| format!("{}:{}", io.major, io.minor));
                devices.insert((io.major, io.minor), name);
            }
        }
        let (table, mut batch) = new_batch();
        for reading in &readings {
            push_container(&mut batch, reading, &devices);
        }
        let table = table.lock().unwrap();
        let mut lines: Vec<String> = batch
            .samples
            .iter()
            .map(|&(id, value)| {
                let labels = table.labels(id).unwrap();
                let name = labels.metric_name().unwrap();
                let rest: Vec<String> =
                    labels.iter().filter(|(n, _)| !COMMON.contains(n)).map(|(n, v)| format!("{n}={v:?}")).collect();
                if rest.is_empty() {
                    format!("{name} {value}\n")
                } else {
                    format!("{name}{{{}}} {value}\n", rest.join(","))
                }
            })
            .collect();
        lines.sort();
        assert_eq!(lines.concat(), expected, "\n{}", lines.concat());
        // The common labels, checked once here.
        let first = table.labels(batch.samples[0].0).unwrap().to_string();
        for label in [
            format!("id=\"/docker/{FULL_ID}\""),
            "image=\"nginx:1.27\"".into(),
            "name=\"web\"".into(),
            "container_label_team=\"edge\"".into(),
        ] {
            assert!(first.contains(&label), "{label} in {first}");
        }
    }

    /// Labels on every series of a container, and the scheduler's `job`.
    const COMMON: [&str; 6] = ["__name__", "job", "id", "image", "name", "container_label_team"];

    #[test]
    fn cgroup_v2_fixture() {
        check(
            "v2",
            4242,
            "\
container_cpu_system_seconds_total 1.25
container_cpu_usage_seconds_total{cpu=\"total\"} 12.5
container_cpu_user_seconds_total 11.25
container_fs_reads_bytes_total{device=\"/dev/sda\"} 1048576
container_fs_reads_bytes_total{device=\"253:7\"} 0
container_fs_writes_bytes_total{device=\"/dev/sda\"} 4096
container_fs_writes_bytes_total{device=\"253:7\"} 512
container_memory_cache 16777216
container_memory_rss 67108864
container_memory_usage_bytes 88080384
container_memory_working_set_bytes 79691776
container_network_receive_bytes_total{interface=\"eth0\"} 5000
container_network_receive_errors_total{interface=\"eth0\"} 1
container_network_receive_packets_total{interface=\"eth0\"} 40
container_network_transmit_bytes_total{interface=\"eth0\"} 3000
container_network_transmit_errors_total{interface=\"eth0\"} 0
container_network_transmit_packets_total{interface=\"eth0\"} 30
container_restart_count 2
container_spec_memory_limit_bytes 134217728
container_start_time_seconds 1795596784
container_state{state=\"paused\"} 0
container_state{state=\"restarting\"} 0
container_state{state=\"running\"} 1
",
        );
    }

    #[test]
    fn cgroup_v1_fixture() {
        check(
            "v1",
            4243,
            "\
container_cpu_system_seconds_total 0.5
container_cpu_usage_seconds_total{cpu=\"total\"} 3.25
container_cpu_user_seconds_total 2.5
container_fs_reads_bytes_total{device=\"/dev/sda\"} 8192
container_fs_writes_bytes_total{device=\"/dev/sda\"} 16384
container_memory_cache 4194304
container_memory_rss 33554432
container_memory_usage_bytes 41943040
container_memory_working_set_bytes 39845888
container_network_receive_bytes_total{interface=\"eth0\"} 5000
container_network_receive_errors_total{interface=\"eth0\"} 1
container_network_receive_packets_total{interface=\"eth0\"} 40
container_network_transmit_bytes_total{interface=\"eth0\"} 3000
container_network_transmit_errors_total{interface=\"eth0\"} 0
container_network_transmit_packets_total{interface=\"eth0\"} 30
container_restart_count 2
container_spec_memory_limit_bytes 0
container_start_time_seconds 1795596784
container_state{state=\"paused\"} 0
container_state{state=\"restarting\"} 0
container_state{state=\"running\"} 1
",
        );
    }

    #[test]
    fn a_container_whose_process_is_gone_is_found_by_its_id_or_reports_no_counters() {
        // pid 1 has no fixture: the v1 tree is found by Docker's usual path.
        check(
            "v1",
            1,
            "\
container_cpu_system_seconds_total 0.5
container_cpu_usage_seconds_total{cpu=\"total\"} 3.25
container_cpu_user_seconds_total 2.5
container_fs_reads_bytes_total{device=\"/dev/sda\"} 8192
container_fs_writes_bytes_total{device=\"/dev/sda\"} 16384
container_memory_cache 4194304
container_memory_rss 33554432
container_memory_usage_bytes 41943040
container_memory_working_set_bytes 39845888
container_restart_count 2
container_spec_memory_limit_bytes 0
container_start_time_seconds 1795596784
container_state{state=\"paused\"} 0
container_state{state=\"restarting\"} 0
container_state{state=\"running\"} 1
",
        );
        // v2's fixture uses the systemd driver's path, which the guess finds too; an empty tree finds nothing.
        check(
            "empty",
            1,
            "\
container_restart_count 2
container_start_time_seconds 1795596784
container_state{state=\"paused\"} 0
container_state{state=\"restarting\"} 0
container_state{state=\"running\"} 1
",
        );
    }
}
