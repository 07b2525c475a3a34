//! A container's CPU, memory and block I/O counters from its cgroup files,
//! v1 (`cpuacct`, `memory`, `blkio` hierarchies) or v2 (the unified one),
//! under a configurable root so tests can point it at fixtures.
//!
//! Parsers take text and return numbers; only [`read_usage`] and
//! [`find_dirs`] touch files. Nothing here knows Docker or metric names.

use std::path::{Path, PathBuf};

use crate::collect::CollectError;

/// cpuacct.stat counts in USER_HZ, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;
const NANOS_PER_SECOND: f64 = 1e9;
const MICROS_PER_SECOND: f64 = 1e6;
/// Limits above this mean "unlimited" (the kernel rounds `PAGE_COUNTER_MAX`);
/// cAdvisor reports them as 0, and so does Herd.
const UNLIMITED_MEMORY_BYTES: u64 = 1 << 62;

/// Which cgroup version the host mounts at the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    V1,
    V2,
}

impl Layout {
    /// v2 when the root holds the unified hierarchy's `cgroup.controllers`.
    pub(crate) fn detect(cgroup_root: &Path) -> Self {
        if cgroup_root.join("cgroup.controllers").exists() { Layout::V2 } else { Layout::V1 }
    }
}

/// The directories of one container's cgroup, one per v1 controller (all
/// the same directory under v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupDirs {
    pub(crate) cpu: PathBuf,
    pub(crate) memory: PathBuf,
    pub(crate) blkio: PathBuf,
}

/// The v1 hierarchies read, as mounted under the cgroup root.
const V1_CPU: &str = "cpuacct";
const V1_MEMORY: &str = "memory";
const V1_BLKIO: &str = "blkio";

/// Finds a container's cgroup from its main process's `/proc/<pid>/cgroup`
/// text, which is right whatever the cgroup driver (cgroupfs's
/// `/docker/<id>`, systemd's `/system.slice/docker-<id>.scope`).
pub(crate) fn dirs_from_proc_cgroup(layout: Layout, cgroup_root: &Path, text: &str) -> Option<CgroupDirs> {
    let mut dirs = (None, None, None);
    for line in text.lines() {
        // "hierarchy-id:controller,controller:/path"; v2 is "0::/path".
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        match layout {
            Layout::V2 if controllers.is_empty() => {
                let dir = cgroup_root.join(relative);
                return Some(CgroupDirs { cpu: dir.clone(), memory: dir.clone(), blkio: dir });
            }
            Layout::V2 => {}
            Layout::V1 => {
                for controller in controllers.split(',') {
                    match controller {
                        V1_CPU => dirs.0 = Some(cgroup_root.join(V1_CPU).join(relative)),
                        V1_MEMORY => dirs.1 = Some(cgroup_root.join(V1_MEMORY).join(relative)),
                        V1_BLKIO => dirs.2 = Some(cgroup_root.join(V1_BLKIO).join(relative)),
                        _ => {}
                    }
                }
            }
        }
    }
    match dirs {
        (Some(cpu), Some(memory), Some(blkio)) => Some(CgroupDirs { cpu, memory, blkio }),
        _ => None,
    }
}

/// Where Docker puts a container's cgroup with either cgroup driver, for
/// when its process cannot be looked up (an agent without the host's PID
/// namespace). The first that exists wins.
pub(crate) fn guess_dirs(layout: Layout, cgroup_root: &Path, full_id: &str) -> Option<CgroupDirs> {
    let candidates = [format!("docker/{full_id}"), format!("system.slice/docker-{full_id}.scope")];
    candidates.iter().find_map(|relative| {
        let dirs = match layout {
            Layout::V2 => {
                let dir = cgroup_root.join(relative);
                CgroupDirs { cpu: dir.clone(), memory: dir.clone(), blkio: dir }
            }
            Layout::V1 => CgroupDirs {
                cpu: cgroup_root.join(V1_CPU).join(relative),
                memory: cgroup_root.join(V1_MEMORY).join(relative),
                blkio: cgroup_root.join(V1_BLKIO).join(relative),
            },
        };
        dirs.memory.is_dir().then_some(dirs)
    })
}

/// Bytes read and written on one block device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DeviceIo {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) read_bytes: f64,
    pub(crate) write_bytes: f64,
}

/// One container's counters, in cAdvisor's units.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Usage {
    pub(crate) cpu_usage_seconds: f64,
    pub(crate) cpu_user_seconds: Option<f64>,
    pub(crate) cpu_system_seconds: Option<f64>,
    pub(crate) memory_usage_bytes: f64,
    pub(crate) memory_working_set_bytes: Option<f64>,
    pub(crate) memory_rss_bytes: Option<f64>,
    pub(crate) memory_cache_bytes: Option<f64>,
    /// 0 when unlimited, as cAdvisor.
    pub(crate) memory_limit_bytes: Option<f64>,
    pub(crate) io: Vec<DeviceIo>,
}

/// Reads one container's counters. CPU and memory usage are required (an
/// error means the caller should try another source); the rest is filled in
/// where the files exist.
pub(crate) fn read_usage(layout: Layout, dirs: &CgroupDirs) -> Result<Usage, CollectError> {
    let mut usage = Usage::default();
    match layout {
        Layout::V2 => {
            let cpu_stat = read(&dirs.cpu.join("cpu.stat"))?;
            let (total, user, system) = parse_cpu_stat_v2(&cpu_stat);
            usage.cpu_usage_seconds =
                total.ok_or_else(|| parse_error(&dirs.cpu.join("cpu.stat"), "no usage_usec".into()))?;
            (usage.cpu_user_seconds, usage.cpu_system_seconds) = (user, system);
            usage.memory_usage_bytes = read_number(&dirs.memory.join("memory.current"))?;
            if let Ok(stat) = read(&dirs.memory.join("memory.stat")) {
                let value = |key| stat_value(&stat, key);
                usage.memory_working_set_bytes = value("inactive_file").map(|inactive| working_set(&usage, inactive));
                usage.memory_rss_bytes = value("anon");
                usage.memory_cache_bytes = value("file");
            }
            usage.memory_limit_bytes = read(&dirs.memory.join("memory.max")).ok().and_then(|text| limit(&text));
            if let Ok(text) = read(&dirs.blkio.join("io.stat")) {
                usage.io = parse_io_stat_v2(&text);
            }
        }
        Layout::V1 => {
            usage.cpu_usage_seconds = read_number(&dirs.cpu.join("cpuacct.usage"))? / NANOS_PER_SECOND;
            if let Ok(text) = read(&dirs.cpu.join("cpuacct.stat")) {
                usage.cpu_user_seconds = stat_value(&text, "user").map(|ticks| ticks / USER_HZ);
                usage.cpu_system_seconds = stat_value(&text, "system").map(|ticks| ticks / USER_HZ);
            }
            usage.memory_usage_bytes = read_number(&dirs.memory.join("memory.usage_in_bytes"))?;
            if let Ok(stat) = read(&dirs.memory.join("memory.stat")) {
                // The total_* keys include child cgroups, as cAdvisor reads them.
                let value = |key| stat_value(&stat, key);
                usage.memory_working_set_bytes =
                    value("total_inactive_file").map(|inactive| working_set(&usage, inactive));
                usage.memory_rss_bytes = value("total_rss");
                usage.memory_cache_bytes = value("total_cache");
            }
            usage.memory_limit_bytes =
                read(&dirs.memory.join("memory.limit_in_bytes")).ok().and_then(|text| limit(&text));
            // The throttle files count every I/O scheduler; the plain
            // blkio.io_service_bytes only CFQ's.
            for file in ["blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_service_bytes"] {
                if let Ok(text) = read(&dirs.blkio.join(file)) {
                    usage.io = parse_blkio_v1(&text);
                    break;
                }
            }
        }
    }
    Ok(usage)
}

/// cAdvisor's working set: usage less inactive file pages, never below 0.
fn working_set(usage: &Usage, inactive_file: f64) -> f64 {
    (usage.memory_usage_bytes - inactive_file).max(0.0)
}

/// `memory.max` ("max" or bytes) or `memory.limit_in_bytes`; 0 for unlimited.
fn limit(text: &str) -> Option<f64> {
    let text = text.trim();
    if text == "max" {
        return Some(0.0);
    }
    let bytes: u64 = text.parse().ok()?;
    Some(if bytes > UNLIMITED_MEMORY_BYTES { 0.0 } else { bytes as f64 })
}

/// `usage_usec`, `user_usec`, `system_usec` of v2's cpu.stat, in seconds.
pub(crate) fn parse_cpu_stat_v2(text: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let seconds = |key| stat_value(text, key).map(|micros| micros / MICROS_PER_SECOND);
    (seconds("usage_usec"), seconds("user_usec"), seconds("system_usec"))
}

/// The value of `key` in "key value" lines (memory.stat, cpu.stat, cpuacct.stat).
pub(crate) fn stat_value(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse::<u64>().ok().map(|v| v as f64)).flatten()
    })
}

/// v2's io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" per device.
pub(crate) fn parse_io_stat_v2(text: &str) -> Vec<DeviceIo> {
    let mut devices = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some((major, minor)) = fields.next().and_then(parse_device) else { continue };
        let mut io = DeviceIo { major, minor, read_bytes: 0.0, write_bytes: 0.0 };
        for field in fields {
            let Some((key, value)) = field.split_once('=') else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            match key {
                "rbytes" => io.read_bytes = value as f64,
                "wbytes" => io.write_bytes = value as f64,
                _ => {}
            }
        }
        devices.push(io);
    }
    devices
}

/// v1's blkio.throttle.io_service_bytes: "8:0 Read 4096" lines per device
/// and operation, then "Total N".
pub(crate) fn parse_blkio_v1(text: &str) -> Vec<DeviceIo> {
    let mut devices: Vec<DeviceIo> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(device), Some(op), Some(value)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let (Some((major, minor)), Ok(value)) = (parse_device(device), value.parse::<u64>()) else { continue };
        let index = match devices.iter().position(|d| (d.major, d.minor) == (major, minor)) {
            Some(index) => index,
            None => {
                devices.push(DeviceIo { major, minor, read_bytes: 0.0, write_bytes: 0.0 });
                devices.len() - 1
            }
        };
        let Some(entry) = devices.get_mut(index) else { continue };
        match op {
            "Read" => entry.read_bytes = value as f64,
            "Write" => entry.write_bytes = value as f64,
            _ => {}
        }
    }
    devices
}

fn parse_device(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The name udev gives a block device (`/dev/sda`), from
/// `<sysfs>/dev/block/<major>:<minor>/uevent`; `None` if it has none.
pub(crate) fn device_name(sysfs_root: &Path, major: u32, minor: u32) -> Option<String> {
    let text = std::fs::read_to_string(sysfs_root.join(format!("dev/block/{major}:{minor}/uevent"))).ok()?;
    text.lines().find_map(|line| line.strip_prefix("DEVNAME=")).map(|name| format!("/dev/{}", name.trim()))
}

fn read(path: &Path) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|source| CollectError::Read { path: path.display().to_string(), source })
}

fn read_number(path: &Path) -> Result<f64, CollectError> {
    let text = read(path)?;
    text.trim().parse::<u64>().map(|v| v as f64).map_err(|_| parse_error(path, format!("not a number: {text:?}")))
}

fn parse_error(path: &Path, detail: String) -> CollectError {
    CollectError::Parse { path: path.display().to_string(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_cpu_stat_is_in_microseconds() {
        let text = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\n";
        assert_eq!(parse_cpu_stat_v2(text), (Some(2.5), Some(2.0), Some(0.5)));
        assert_eq!(parse_cpu_stat_v2("garbage\n"), (None, None, None));
    }

    #[test]
    fn io_stat_and_blkio_give_bytes_per_device() {
        let v2 = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=2\nbad line\n";
        let device = |major, minor, read_bytes, write_bytes| DeviceIo { major, minor, read_bytes, write_bytes };
        assert_eq!(parse_io_stat_v2(v2), vec![device(8, 0, 4096.0, 8192.0), device(253, 1, 1.0, 2.0)]);
        let v1 = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 0\n8:0 Total 12288\nTotal 12288\n";
        assert_eq!(parse_blkio_v1(v1), vec![device(8, 0, 4096.0, 8192.0)]);
    }

    #[test]
    fn unlimited_memory_is_zero() {
        assert_eq!(limit("max\n"), Some(0.0));
        assert_eq!(limit("9223372036854771712\n"), Some(0.0));
        assert_eq!(limit("67108864\n"), Some(67108864.0));
        assert_eq!(limit("lots"), None);
    }

    #[test]
    fn proc_cgroup_names_the_directories() {
        let root = Path::new("/cg");
        let v1 = "12:memory:/docker/abc\n11:blkio:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(
            dirs_from_proc_cgroup(Layout::V1, root, v1),
            Some(CgroupDirs {
                cpu: "/cg/cpuacct/docker/abc".into(),
                memory: "/cg/memory/docker/abc".into(),
                blkio: "/cg/blkio/docker/abc".into(),
            })
        );
        let v2 = "0::/system.slice/docker-abc.scope\n";
        let dir = PathBuf::from("/cg/system.slice/docker-abc.scope");
        assert_eq!(
            dirs_from_proc_cgroup(Layout::V2, root, v2),
            Some(CgroupDirs { cpu: dir.clone(), memory: dir.clone(), blkio: dir })
        );
        assert_eq!(dirs_from_proc_cgroup(Layout::V1, root, "0::/\n"), None);
    }
}
