//! The host collector: the node_exporter Linux collectors the seed's rules and
//! dashboards rely on (cpu, stat, meminfo, loadavg, vmstat, filefd, diskstats,
//! netdev, filesystem, time, uname, os), with node_exporter's metric names,
//! label names and default exclusions, read from procfs under a configurable
//! root so tests can point it at fixtures.
//!
//! One file per source. Each parser is handed text and pushes samples; only
//! `filesystem` (statfs) and `os_release` (a file outside procfs) touch the
//! system themselves. Files are read into one buffer kept between cycles and
//! parsers borrow from it, so a steady-state cycle allocates only for series
//! seen for the first time and for the one blocking-pool task of the statfs
//! sweep.
//!
//! The host's root filesystem is taken to be the parent of `procfs_root`
//! (`/proc` → `/`; `/host/proc` → `/host` for an agent in a container with the
//! host's `/` mounted at `/host`): statfs and os-release paths are resolved
//! under it, as node_exporter does with `--path.rootfs`.
//!
//! Deliberately absent: process scans, sysfs walks, udev properties, and any
//! node_exporter collector the seed does not use.

mod diskstats;
mod filefd;
mod filesystem;
mod loadavg;
mod meminfo;
mod netdev;
mod os_release;
mod stat;
mod system;
mod vmstat;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use herd_common::config::agent::{
    DEFAULT_DISK_DEVICES_EXCLUDE, DEFAULT_FS_TYPES_EXCLUDE, DEFAULT_MOUNT_POINTS_EXCLUDE, DEFAULT_NET_DEVICES_EXCLUDE,
    HostConfig,
};
use regex::Regex;

use super::{Batch, CollectError, Collector};
use filesystem::Filesystems;
use os_release::OsRelease;

/// node_exporter's `--collector.filesystem.mount-timeout`: the longest Herd
/// waits for statfs before calling a mount stuck.
const MAX_STATFS_TIMEOUT: Duration = Duration::from_secs(5);

/// The patterns in [`HostConfig`] did not compile.
#[derive(Debug, thiserror::Error)]
pub enum HostSettingsError {
    #[error("collect.host.{key}: invalid regular expression (fix it in agent.toml): {source}")]
    Pattern {
        key: &'static str,
        #[source]
        source: regex::Error,
    },
}

/// What to leave out, as node_exporter's `--collector.*.*-exclude` flags.
/// `None` excludes nothing.
pub(crate) struct HostFilters {
    pub(crate) mount_points_exclude: Option<Regex>,
    pub(crate) fs_types_exclude: Option<Regex>,
    pub(crate) disk_devices_exclude: Option<Regex>,
    pub(crate) net_devices_exclude: Option<Regex>,
}

impl HostFilters {
    fn compile(config: &HostConfig) -> Result<Self, HostSettingsError> {
        let pattern = |key: &'static str, text: &str| -> Result<Option<Regex>, HostSettingsError> {
            if text.is_empty() {
                return Ok(None);
            }
            Regex::new(text).map(Some).map_err(|source| HostSettingsError::Pattern { key, source })
        };
        Ok(Self {
            mount_points_exclude: pattern("mount_points_exclude", &config.mount_points_exclude)?,
            fs_types_exclude: pattern("fs_types_exclude", &config.fs_types_exclude)?,
            disk_devices_exclude: pattern("disk_devices_exclude", &config.disk_devices_exclude)?,
            net_devices_exclude: pattern("net_devices_exclude", &config.net_devices_exclude)?,
        })
    }
}

/// True when `pattern` is set and matches `value`.
fn excluded(pattern: &Option<Regex>, value: &str) -> bool {
    pattern.as_ref().is_some_and(|p| p.is_match(value))
}

/// Sizes from statfs(2), already in node_exporter's units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FsUsage {
    pub(crate) size_bytes: f64,
    pub(crate) free_bytes: f64,
    pub(crate) avail_bytes: f64,
    pub(crate) files: f64,
    pub(crate) files_free: f64,
}

/// uname(2)'s fields.
pub(crate) struct Uname<'a> {
    pub(crate) sysname: &'a str,
    pub(crate) release: &'a str,
    pub(crate) version: &'a str,
    pub(crate) machine: &'a str,
    pub(crate) nodename: &'a str,
    pub(crate) domainname: &'a str,
}

/// What the collector asks the kernel directly rather than through procfs
/// text. A trait so that the fixture test gets fixed answers; [`LiveKernel`]
/// is the real one.
pub(crate) trait Kernel: Send + Sync + 'static {
    /// statfs(2) on `path`. May block for as long as the filesystem does.
    fn statfs(&self, path: &Path) -> std::io::Result<FsUsage>;
    fn now(&self) -> SystemTime;
    /// Calls `visit` with uname(2)'s answer; a callback so nothing is copied.
    fn uname(&self, visit: &mut dyn FnMut(&Uname<'_>));
}

/// The running kernel.
pub(crate) struct LiveKernel;

impl Kernel for LiveKernel {
    fn statfs(&self, path: &Path) -> std::io::Result<FsUsage> {
        let stat = rustix::fs::statfs(path)?;
        // node_exporter multiplies block counts by f_bsize, not f_frsize; the
        // two agree on common filesystems, and Herd's numbers must match its.
        let block_bytes = stat.f_bsize as f64;
        Ok(FsUsage {
            size_bytes: stat.f_blocks as f64 * block_bytes,
            free_bytes: stat.f_bfree as f64 * block_bytes,
            avail_bytes: stat.f_bavail as f64 * block_bytes,
            files: stat.f_files as f64,
            files_free: stat.f_ffree as f64,
        })
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn uname(&self, visit: &mut dyn FnMut(&Uname<'_>)) {
        let uname = rustix::system::uname();
        let (sysname, release, version) =
            (uname.sysname().to_string_lossy(), uname.release().to_string_lossy(), uname.version().to_string_lossy());
        let (machine, nodename, domainname) = (
            uname.machine().to_string_lossy(),
            uname.nodename().to_string_lossy(),
            uname.domainname().to_string_lossy(),
        );
        visit(&Uname {
            sysname: &sysname,
            release: &release,
            version: &version,
            machine: &machine,
            nodename: &nodename,
            domainname: &domainname,
        });
    }
}

/// What a parser gets besides its file's text.
pub(crate) struct ParseContext<'a> {
    filters: &'a HostFilters,
    /// For metric names built from the text (`node_memory_<key>`); kept
    /// between cycles so that building them allocates nothing.
    name: &'a mut String,
}

/// Parses one procfs file's text and pushes its samples.
type Parse = fn(&Path, &str, &mut ParseContext<'_>, &mut Batch) -> Result<(), CollectError>;

/// The procfs files read every cycle, relative to `procfs_root`, and their parsers.
const PROCFS_SOURCES: [(&str, Parse); 7] = [
    ("stat", stat::parse),
    ("meminfo", meminfo::parse),
    ("loadavg", loadavg::parse),
    ("vmstat", vmstat::parse),
    ("sys/fs/file-nr", filefd::parse),
    ("diskstats", diskstats::parse),
    ("net/dev", netdev::parse),
];

/// Room for /proc/stat of a few dozen cores; grows once if a file needs more.
const TEXT_CAPACITY: usize = 16 * 1024;
/// Longer than any meminfo or vmstat metric name.
const NAME_CAPACITY: usize = 64;

/// Reused every cycle.
struct Buffers {
    /// The file being parsed.
    text: String,
    name: String,
}

pub struct HostCollector {
    /// Full paths of [`PROCFS_SOURCES`], joined once.
    sources: Vec<(PathBuf, Parse)>,
    buffers: Mutex<Buffers>,
    filters: Arc<HostFilters>,
    kernel: Arc<dyn Kernel>,
    filesystems: Filesystems,
    os_release: OsRelease,
}

impl HostCollector {
    /// A collector with node_exporter's default exclusions.
    pub fn new(procfs_root: PathBuf) -> Self {
        let defaults = HostConfig {
            procfs_root,
            mount_points_exclude: DEFAULT_MOUNT_POINTS_EXCLUDE.to_owned(),
            fs_types_exclude: DEFAULT_FS_TYPES_EXCLUDE.to_owned(),
            disk_devices_exclude: DEFAULT_DISK_DEVICES_EXCLUDE.to_owned(),
            net_devices_exclude: DEFAULT_NET_DEVICES_EXCLUDE.to_owned(),
        };
        // Timed as under the agent's default 5 s collect timeout.
        Self::from_config(&defaults, Duration::from_secs(5)).expect("node_exporter's default patterns compile")
    }

    /// A collector as configured. `collect_timeout` is the scheduler's limit
    /// per cycle: a hung statfs must be given up on well before it, or the
    /// whole cycle would be lost.
    pub fn from_config(config: &HostConfig, collect_timeout: Duration) -> Result<Self, HostSettingsError> {
        let filters = HostFilters::compile(config)?;
        let statfs_timeout = (collect_timeout / 2).min(MAX_STATFS_TIMEOUT);
        Ok(Self::with_kernel(config.procfs_root.clone(), filters, statfs_timeout, Arc::new(LiveKernel)))
    }

    pub(crate) fn with_kernel(
        procfs_root: PathBuf,
        filters: HostFilters,
        statfs_timeout: Duration,
        kernel: Arc<dyn Kernel>,
    ) -> Self {
        // The host's `/`, under which statfs and os-release paths are taken.
        let rootfs = procfs_root.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let filters = Arc::new(filters);
        Self {
            sources: PROCFS_SOURCES.iter().map(|&(file, parse)| (procfs_root.join(file), parse)).collect(),
            buffers: Mutex::new(Buffers {
                text: String::with_capacity(TEXT_CAPACITY),
                name: String::with_capacity(NAME_CAPACITY),
            }),
            filesystems: Filesystems::new(
                &procfs_root,
                &rootfs,
                Arc::clone(&filters),
                Arc::clone(&kernel),
                statfs_timeout,
            ),
            os_release: OsRelease::new(&rootfs),
            filters,
            kernel,
        }
    }

    /// Reads and parses every procfs file; keeps going past errors and
    /// returns the first.
    fn collect_procfs(&self, out: &mut Batch) -> Result<(), CollectError> {
        let mut buffers = self.buffers.lock().expect("host buffer lock is never poisoned");
        let Buffers { text, name } = &mut *buffers;
        let mut context = ParseContext { filters: &self.filters, name };
        let mut first_error = None;
        for (path, parse) in &self.sources {
            let result = read_into(path, text).and_then(|()| parse(path, text, &mut context, out));
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Collector for HostCollector {
    fn name(&self) -> &str {
        "host"
    }

    fn job(&self) -> &str {
        "node"
    }

    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let procfs = self.collect_procfs(out);
        system::push_time(self.kernel.as_ref(), out);
        system::push_uname(self.kernel.as_ref(), out);
        let os_release = self.os_release.collect(out);
        let filesystems = self.filesystems.collect(out).await;
        procfs.and(os_release).and(filesystems)
    }
}

/// Replaces `buffer` with the file's contents, keeping its capacity.
fn read_into(path: &Path, buffer: &mut String) -> Result<(), CollectError> {
    buffer.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(buffer))
        .map(drop)
        .map_err(|source| CollectError::Read { path: path.display().to_string(), source })
}

fn parse_error(path: &Path, detail: impl Into<String>) -> CollectError {
    CollectError::Parse { path: path.display().to_string(), detail: detail.into() }
}

fn number(path: &Path, field: Option<&str>, what: &str) -> Result<f64, CollectError> {
    field
        .and_then(|f| f.parse::<f64>().ok())
        .ok_or_else(|| parse_error(path, format!("{what}: expected a number, found {field:?}")))
}

/// Most labels an info series here carries (node_os_info has 12).
const MAX_INFO_LABELS: usize = 12;

/// Pushes `name{labels} 1`, leaving out labels with empty values: in
/// Prometheus an empty label is no label, and node_exporter's `path=""` is
/// dropped the same way when scraped.
fn push_info(out: &mut Batch, name: &str, labels: &[(&str, &str)], value: f64) {
    let mut kept: [(&str, &str); MAX_INFO_LABELS] = [("", ""); MAX_INFO_LABELS];
    let mut n = 0;
    for &(label, text) in labels.iter().filter(|(_, text)| !text.is_empty()).take(MAX_INFO_LABELS) {
        kept[n] = (label, text);
        n += 1;
    }
    out.push(name, &kept[..n], value);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::collect::SharedSeriesTable;
    use std::collections::HashMap;

    pub(crate) fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    pub(crate) fn new_batch() -> (SharedSeriesTable, Batch) {
        let table: SharedSeriesTable = Arc::default();
        let batch = Batch::new(Arc::clone(&table), "node".into(), Arc::new(Vec::new()));
        (table, batch)
    }

    /// Renders a batch as sorted exposition lines without the job label.
    pub(crate) fn render(table: &SharedSeriesTable, batch: &Batch) -> String {
        let table = table.lock().unwrap();
        let mut lines: Vec<String> = batch
            .samples
            .iter()
            .map(|&(id, value)| {
                let labels = table.labels(id).unwrap();
                let name = labels.metric_name().unwrap();
                let rest: Vec<String> = labels
                    .iter()
                    .filter(|(n, _)| !matches!(*n, "__name__" | "job"))
                    .map(|(n, v)| format!("{n}={v:?}"))
                    .collect();
                if rest.is_empty() {
                    format!("{name} {value}")
                } else {
                    format!("{name}{{{}}} {value}", rest.join(","))
                }
            })
            .collect();
        lines.sort();
        lines.iter().map(|line| format!("{line}\n")).collect()
    }

    pub(crate) fn default_filters() -> HostFilters {
        let defaults = HostConfig {
            procfs_root: PathBuf::new(),
            mount_points_exclude: DEFAULT_MOUNT_POINTS_EXCLUDE.to_owned(),
            fs_types_exclude: DEFAULT_FS_TYPES_EXCLUDE.to_owned(),
            disk_devices_exclude: DEFAULT_DISK_DEVICES_EXCLUDE.to_owned(),
            net_devices_exclude: DEFAULT_NET_DEVICES_EXCLUDE.to_owned(),
        };
        HostFilters::compile(&defaults).unwrap()
    }

    /// Runs one parser on `text` with the default filters: the rendered
    /// samples, or the error's message after what was pushed before it.
    pub(crate) fn check(parse: Parse, text: &str, expected: &str) {
        let (table, mut batch) = new_batch();
        let (filters, mut name) = (default_filters(), String::new());
        let mut context = ParseContext { filters: &filters, name: &mut name };
        let result = parse(Path::new("/proc/x"), text, &mut context, &mut batch);
        let mut rendered = render(&table, &batch);
        if let Err(err) = result {
            rendered.push_str(&format!("error: {err}\n"));
        }
        assert_eq!(rendered, expected, "for input:\n{text}");
    }

    /// Fixed answers for the fixture test: statfs by mount point (an absent
    /// one fails like an unreachable NFS server), a fixed clock and uname.
    pub(crate) struct FixtureKernel {
        pub(crate) rootfs: PathBuf,
        pub(crate) usage: HashMap<&'static str, FsUsage>,
    }

    impl Kernel for FixtureKernel {
        fn statfs(&self, path: &Path) -> std::io::Result<FsUsage> {
            let mount_point = path.strip_prefix(&self.rootfs).map_err(|_| std::io::ErrorKind::InvalidInput)?;
            let mount_point = format!("/{}", mount_point.display());
            self.usage.get(mount_point.as_str()).copied().ok_or_else(|| std::io::ErrorKind::TimedOut.into())
        }

        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_123_500)
        }

        fn uname(&self, visit: &mut dyn FnMut(&Uname<'_>)) {
            visit(&Uname {
                sysname: "Linux",
                release: "6.1.0-28-amd64",
                version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)",
                machine: "x86_64",
                nodename: "web-01",
                domainname: "(none)",
            });
        }
    }

    fn usage(size_gib: f64, avail_gib: f64) -> FsUsage {
        let gib = 1024.0 * 1024.0 * 1024.0;
        FsUsage {
            size_bytes: size_gib * gib,
            free_bytes: (avail_gib + 1.0) * gib,
            avail_bytes: avail_gib * gib,
            files: 6_553_600.0,
            files_free: 6_000_000.0,
        }
    }

    fn fixture_collector() -> HostCollector {
        let kernel = FixtureKernel {
            rootfs: fixtures(),
            usage: HashMap::from([
                ("/", usage(100.0, 40.0)),
                ("/boot/efi", usage(0.5, 0.4)),
                ("/run", usage(2.0, 1.9)),
                ("/srv/media library", usage(1000.0, 10.0)),
                ("/var/lib/docker", usage(100.0, 40.0)),
                ("/var/lib/postgresql", usage(500.0, 200.0)),
            ]),
        };
        HostCollector::with_kernel(fixtures().join("proc"), default_filters(), Duration::from_secs(5), Arc::new(kernel))
    }

    #[tokio::test]
    async fn fixture_matches_expected_exposition() {
        let (table, mut batch) = new_batch();
        fixture_collector().collect(&mut batch).await.unwrap();
        let expected = std::fs::read_to_string(fixtures().join("expected-host.prom")).unwrap();
        let rendered = render(&table, &batch);
        if rendered != expected && std::env::var_os("HERD_BLESS").is_some() {
            // HERD_BLESS=1 rewrites the expected file; review the diff before committing.
            std::fs::write(fixtures().join("expected-host.prom"), &rendered).unwrap();
        }
        assert_eq!(rendered, expected);
    }

    #[tokio::test]
    async fn a_second_cycle_reports_the_same_series() {
        let collector = fixture_collector();
        let (table, mut first) = new_batch();
        collector.collect(&mut first).await.unwrap();
        let mut second = Batch::new(Arc::clone(&table), "node".into(), Arc::new(Vec::new()));
        collector.collect(&mut second).await.unwrap();
        assert_eq!(render(&table, &first), render(&table, &second));
    }

    #[tokio::test]
    async fn missing_files_are_reported_and_the_rest_collected() {
        let dir = tempfile::tempdir().unwrap();
        let procfs = dir.path().join("proc");
        std::fs::create_dir(&procfs).unwrap();
        std::fs::write(procfs.join("loadavg"), "1 2 3 1/1 1\n").unwrap();
        let (table, mut batch) = new_batch();
        let kernel = FixtureKernel { rootfs: dir.path().into(), usage: HashMap::new() };
        let collector = HostCollector::with_kernel(procfs, default_filters(), Duration::from_secs(1), Arc::new(kernel));
        let err = collector.collect(&mut batch).await.unwrap_err();
        assert!(err.to_string().contains("stat"), "{err}");
        let rendered = render(&table, &batch);
        assert!(rendered.contains("node_load1 1\nnode_load15 3\nnode_load5 2\n"), "{rendered}");
        assert!(rendered.contains("node_time_seconds 1764000123.5\n"), "{rendered}");
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let procfs = dir.path().join("proc");
        std::fs::create_dir_all(procfs.join("sys/fs")).unwrap();
        std::fs::create_dir_all(procfs.join("net")).unwrap();
        for (file, text) in [
            ("stat", "cpu0 1 2\nctxt\n"),
            ("meminfo", "MemTotal: lots kB\n"),
            ("loadavg", ""),
            ("vmstat", "pgfault\n"),
            ("sys/fs/file-nr", "1\n"),
            ("diskstats", "8 0 sda 1 2\n"),
            ("net/dev", "h\nh\neth0 1 2\n"),
            ("mounts", "/dev/sda1\n"),
        ] {
            std::fs::write(procfs.join(file), text).unwrap();
        }
        let (_table, mut batch) = new_batch();
        let kernel = FixtureKernel { rootfs: dir.path().into(), usage: HashMap::new() };
        let collector = HostCollector::with_kernel(procfs, default_filters(), Duration::from_secs(1), Arc::new(kernel));
        assert!(collector.collect(&mut batch).await.is_err());
    }

    #[tokio::test]
    async fn real_procfs_has_the_required_families() {
        let (table, mut batch) = new_batch();
        HostCollector::new("/proc".into()).collect(&mut batch).await.unwrap();
        let text = render(&table, &batch);
        for family in [
            "node_cpu_seconds_total{",
            "node_memory_MemTotal_bytes ",
            "node_memory_MemAvailable_bytes ",
            "node_load1 ",
            "node_filefd_allocated ",
            "node_filesystem_avail_bytes{",
            "node_network_receive_bytes_total{",
            "node_time_seconds ",
            "node_uname_info{",
        ] {
            assert!(text.contains(family), "{family} missing");
        }
    }
}
