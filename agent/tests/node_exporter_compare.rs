//! Herd's host collector against the real node_exporter (Debian's
//! `prometheus-node-exporter`), on this machine, at the same moment.
//!
//! node_exporter runs on a free loopback port with only the collectors Herd
//! replaces, and with Herd's exclude patterns passed explicitly (Debian's
//! build patches its defaults; Herd follows upstream's). The test reads Herd,
//! scrapes node_exporter, reads Herd again, and for every family both produce
//! checks that they report the same series, and that node_exporter's value
//! lies between Herd's two readings, widened by 2% or by a stated slack where
//! other processes move a value between the reads. Families only one side
//! produces fail the test unless listed below with the reason. Every node_*
//! family the seed's rules and dashboards use must be in Herd's output.
//!
//! Needs `/usr/bin/prometheus-node-exporter` (`apt-get install -y
//! prometheus-node-exporter`); `HERD_NODE_EXPORTER` names another binary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_agent::collect::host::HostCollector;
use herd_agent::collect::{Collector, Scheduler, SharedSeriesTable};
use herd_common::config::agent::{
    DEFAULT_DISK_DEVICES_EXCLUDE, DEFAULT_FS_TYPES_EXCLUDE, DEFAULT_MOUNT_POINTS_EXCLUDE, DEFAULT_NET_DEVICES_EXCLUDE,
};
use herd_common::metric::is_stale;

const DEFAULT_NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// node_exporter's collectors that Herd's host collector replaces.
const COLLECTORS: [&str; 12] = [
    "cpu",
    "stat",
    "meminfo",
    "loadavg",
    "vmstat",
    "filefd",
    "diskstats",
    "netdev",
    "filesystem",
    "time",
    "uname",
    "os",
];

/// node_* families the seed uses: `rules/seed/infrastructure.yml` and the
/// guide's dashboards query the first six; its infrastructure table (load,
/// swap, disk IOPS, network traffic, file descriptors) needs the rest.
const SEED_FAMILIES: [&str; 17] = [
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_disk_io_time_seconds_total",
    "node_load1",
    "node_load5",
    "node_load15",
    "node_memory_SwapTotal_bytes",
    "node_memory_SwapFree_bytes",
    "node_disk_reads_completed_total",
    "node_disk_writes_completed_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_filefd_allocated",
    "node_filefd_maximum",
];

/// Families node_exporter may produce and Herd does not, and why. Some
/// appear only on some hosts or in releases after Debian 12's 1.5.0.
const NOT_IN_HERD: [(&str, &str); 15] = [
    (
        "node_network_receive_nohandler_total",
        "netlink-only counter; Herd reads /proc/net/dev, which has no such column",
    ),
    ("node_time_zone_offset_seconds", "needs the time zone database"),
    ("node_time_clocksource_available_info", "read from sysfs, which Herd does not walk"),
    ("node_time_clocksource_current_info", "read from sysfs, which Herd does not walk"),
    ("node_cpu_core_throttles_total", "read from sysfs thermal_throttle, absent on most VMs"),
    ("node_cpu_package_throttles_total", "read from sysfs thermal_throttle, absent on most VMs"),
    ("node_cpu_isolated", "read from sysfs; only with isolcpus="),
    ("node_cpu_online", "read from sysfs (node_exporter 1.6 and later)"),
    ("node_disk_filesystem_info", "udev properties, which Herd does not read"),
    ("node_disk_device_mapper_info", "udev properties, which Herd does not read"),
    ("node_disk_ata_write_cache", "udev properties, which Herd does not read"),
    ("node_disk_ata_write_cache_enabled", "udev properties, which Herd does not read"),
    ("node_disk_ata_rotation_rate_rpm", "udev properties, which Herd does not read"),
    ("node_filesystem_mount_info", "mountinfo major/minor (node_exporter 1.8 and later)"),
    ("node_os_support_end_timestamp_seconds", "os-release SUPPORT_END (node_exporter 1.7 and later)"),
];

/// Labels node_exporter adds and Herd leaves out, by family name prefix;
/// dropped from node_exporter's series before comparing. `device_error`
/// (node_exporter 1.8 and later) carries error text, unbounded by design;
/// the others come from udev and sysfs and are empty on hosts without them.
const LABELS_NOT_IN_HERD: [(&str, &[&str]); 2] = [
    ("node_disk_info", &["path", "wwn", "model", "serial", "revision", "rotational"]),
    ("node_filesystem_", &["device_error"]),
];

/// How closely node_exporter's value must match Herd's two readings.
#[derive(Debug, Clone, Copy)]
enum Tolerance {
    /// Within [min, max] of Herd's readings, widened by this fraction of the value.
    Relative(f64),
    /// Within [min, max], widened by this fraction or by `slack`, whichever is more.
    RelativeOr { fraction: f64, slack: f64 },
    /// Within [min, max], widened by this amount.
    Absolute(f64),
    /// Not compared; the series sets still are.
    Skip,
}

fn tolerance(family: &str) -> Tolerance {
    match family {
        // A clock, and btime derived from it: a relative 2% of 1.7e9 s would be a year.
        "node_time_seconds" | "node_boot_time_seconds" => Tolerance::Absolute(1.0),
        // Tasks runnable or blocked, and I/Os in flight, at one instant: the
        // scrape itself and anything else running change them from read to read.
        "node_procs_running" | "node_procs_blocked" | "node_disk_io_now" => Tolerance::Skip,
        // Both exporters and this test open and close files and sockets between the reads.
        "node_filefd_allocated" => Tolerance::Absolute(1024.0),
        // Other processes (a parallel build, say) allocate and free memory
        // between the reads, by more than 2% of a small figure.
        family if family.starts_with("node_memory_") && family.ends_with("_bytes") => {
            Tolerance::RelativeOr { fraction: 0.02, slack: 256.0 * 1024.0 * 1024.0 }
        }
        _ => Tolerance::Relative(0.02),
    }
}

/// Label pairs without `job` and `instance`, sorted, empty values dropped.
type LabelSet = Vec<(String, String)>;
/// Family → series → value.
type Families = BTreeMap<String, BTreeMap<LabelSet, f64>>;

/// The node_exporter process; killed when dropped.
struct NodeExporter {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_exporter_binary() -> PathBuf {
    let binary =
        std::env::var_os("HERD_NODE_EXPORTER").map_or_else(|| PathBuf::from(DEFAULT_NODE_EXPORTER), PathBuf::from);
    assert!(
        binary.is_file(),
        "{} not found: this test compares Herd with the real node_exporter. Install it with \
         `apt-get update && apt-get install -y prometheus-node-exporter` (or set HERD_NODE_EXPORTER)",
        binary.display()
    );
    binary
}

fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address of a bound socket").port()
}

fn scrape_agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(SCRAPE_TIMEOUT)).build().into()
}

/// Starts node_exporter and waits until it serves /metrics. Retries on a new
/// port if another process took the one chosen.
fn start_node_exporter() -> NodeExporter {
    let binary = node_exporter_binary();
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("node_exporter.log");
        let port = free_loopback_port();
        let mut command = Command::new(&binary);
        command
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .args(COLLECTORS.iter().map(|c| format!("--collector.{c}")))
            .arg(format!("--collector.filesystem.mount-points-exclude={DEFAULT_MOUNT_POINTS_EXCLUDE}"))
            .arg(format!("--collector.filesystem.fs-types-exclude={DEFAULT_FS_TYPES_EXCLUDE}"))
            .arg(format!("--collector.diskstats.device-exclude={DEFAULT_DISK_DEVICES_EXCLUDE}"))
            .arg(format!("--collector.netdev.device-exclude={DEFAULT_NET_DEVICES_EXCLUDE}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the node_exporter log"));
        let child = command.spawn().unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let mut exporter = NodeExporter { child, url: format!("http://127.0.0.1:{port}/metrics"), log, _dir: dir };
        let agent = scrape_agent();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = exporter.child.try_wait() {
                last_log = std::fs::read_to_string(&exporter.log).unwrap_or_default();
                eprintln!("node_exporter exited ({status}) before serving; retrying on another port");
                break;
            }
            if agent.get(&exporter.url).call().is_ok() {
                return exporter;
            }
            assert!(
                Instant::now() < deadline,
                "node_exporter did not serve {} in time; its log:\n{}",
                exporter.url,
                read_log(&exporter.log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("node_exporter would not start; its last log:\n{last_log}");
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| format!("(cannot read {}: {err})", path.display()))
}

fn scrape(exporter: &NodeExporter) -> Families {
    let mut response = scrape_agent().get(&exporter.url).call().expect("scrape node_exporter");
    let text = response.body_mut().read_to_string().expect("node_exporter's /metrics as text");
    let mut families = Families::new();
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, mut labels, value) =
            parse_sample(line).unwrap_or_else(|| panic!("line {}: cannot parse {line:?}", number + 1));
        // node_exporter's reports about itself have no Herd counterpart.
        if !name.starts_with("node_") || name.starts_with("node_scrape_") || name == "node_exporter_build_info" {
            continue;
        }
        for (_, dropped) in LABELS_NOT_IN_HERD.iter().filter(|(prefix, _)| name.starts_with(prefix)) {
            labels.retain(|(label, _)| !dropped.contains(&label.as_str()));
        }
        families.entry(name).or_default().insert(labels, value);
    }
    families
}

/// One line of the text exposition format: `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Option<(String, LabelSet, f64)> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line.get(..name_end)?.to_owned();
    let mut rest = line.get(name_end..)?;
    let mut labels = LabelSet::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        loop {
            // Label name up to '=', or the closing brace.
            let start = chars.clone().next()?.0;
            let (eq, c) = chars.find(|&(_, c)| c == '=' || c == '}')?;
            if c == '}' {
                rest = inner.get(eq + 1..)?;
                break;
            }
            let label = inner.get(start..eq)?.trim().to_owned();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            if !value.is_empty() {
                labels.push((label, value));
            }
            if chars.clone().next().map(|(_, c)| c) == Some(',') {
                chars.next();
            }
        }
    }
    let value = rest.split_ascii_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    labels.sort();
    Some((name, labels, value))
}

/// One cycle of Herd's host collector, through the agent's own scheduler.
fn read_herd(runtime: &tokio::runtime::Runtime, scheduler: &mut Scheduler, table: &SharedSeriesTable) -> Families {
    let batch = runtime.block_on(scheduler.cycle());
    let table = table.lock().expect("series table lock");
    let mut families = Families::new();
    for &(id, value) in &batch.samples {
        if is_stale(value) {
            continue; // A series gone since the previous cycle.
        }
        let labels = table.labels(id).expect("every sample's series is in the table");
        let Some(name) = labels.metric_name().filter(|name| name.starts_with("node_")) else { continue };
        let mut set: LabelSet = labels
            .iter()
            .filter(|(label, value)| !matches!(*label, "__name__" | "job" | "instance") && !value.is_empty())
            .map(|(label, value)| (label.to_owned(), value.to_owned()))
            .collect();
        set.sort();
        families.entry(name.to_owned()).or_default().insert(set, value);
    }
    families
}

fn show(labels: &LabelSet) -> String {
    let pairs: Vec<String> = labels.iter().map(|(label, value)| format!("{label}={value:?}")).collect();
    format!("{{{}}}", pairs.join(","))
}

/// What [`compare`] found.
struct Comparison {
    problems: Vec<String>,
    families_compared: usize,
    values_compared: usize,
    /// Families only Herd has: reported, not failed, since extra series break no query.
    only_in_herd: Vec<String>,
}

/// Compares node_exporter's reading with Herd's before and after it.
fn compare(before: &Families, node: &Families, after: &Families) -> Comparison {
    let mut problems = Vec::new();
    let (mut families_compared, mut values_compared) = (0, 0);
    let empty = BTreeMap::new();
    let herd_names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in node.keys().filter(|name| !herd_names.contains(name)) {
        if !NOT_IN_HERD.iter().any(|(missing, _)| missing == name) {
            problems.push(format!("{name}: node_exporter has it, Herd does not"));
        }
    }
    let only_in_herd =
        herd_names.iter().filter(|name| !node.contains_key(name.as_str())).map(|name| name.to_string()).collect();
    for (name, node_series) in node {
        if !herd_names.contains(name) {
            continue;
        }
        families_compared += 1;
        let herd_before = before.get(name).unwrap_or(&empty);
        let herd_after = after.get(name).unwrap_or(&empty);
        // Devices and mounts can come and go while the test runs (containers
        // started by other tests): a series must be in one of Herd's readings
        // to count, and in both to be required.
        for labels in node_series.keys() {
            if !herd_before.contains_key(labels) && !herd_after.contains_key(labels) {
                problems.push(format!("{name}{}: node_exporter has this series, Herd does not", show(labels)));
            }
        }
        for labels in herd_before.keys().filter(|labels| herd_after.contains_key(*labels)) {
            if !node_series.contains_key(labels) {
                problems.push(format!("{name}{}: Herd has this series, node_exporter does not", show(labels)));
            }
        }
        let tolerance = tolerance(name);
        if matches!(tolerance, Tolerance::Skip) {
            continue;
        }
        for (labels, &node_value) in node_series {
            let (Some(&first), Some(&second)) = (herd_before.get(labels), herd_after.get(labels)) else { continue };
            values_compared += 1;
            let (low, high) = (first.min(second), first.max(second));
            let magnitude = low.abs().max(high.abs()).max(node_value.abs());
            let slack = match tolerance {
                Tolerance::Relative(fraction) => fraction * magnitude,
                Tolerance::RelativeOr { fraction, slack } => (fraction * magnitude).max(slack),
                Tolerance::Absolute(slack) => slack,
                Tolerance::Skip => unreachable!("skipped above"),
            };
            if node_value < low - slack || node_value > high + slack {
                problems.push(format!(
                    "{name}{}: node_exporter {node_value}, Herd {first} then {second} (allowed slack {slack})",
                    show(labels)
                ));
            }
        }
    }
    Comparison { problems, families_compared, values_compared, only_in_herd }
}

#[test]
fn host_collector_matches_node_exporter() {
    let exporter = start_node_exporter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for Herd's collector");
    let table: SharedSeriesTable = Arc::new(Mutex::default());
    let (batches, _unused) = tokio::sync::mpsc::channel(1);
    let collector: Arc<dyn Collector> = Arc::new(HostCollector::new("/proc".into()));
    let mut scheduler = Scheduler::new(
        vec![collector],
        Duration::from_secs(10),
        Duration::from_secs(10),
        Arc::clone(&table),
        vec![("instance".into(), "compare".into())],
        1,
        batches,
    );

    // Herd's own first cycle warms its buffers; the compared readings follow.
    read_herd(&runtime, &mut scheduler, &table);
    let before = read_herd(&runtime, &mut scheduler, &table);
    let node = scrape(&exporter);
    let after = read_herd(&runtime, &mut scheduler, &table);

    let missing: Vec<&str> =
        SEED_FAMILIES.iter().copied().filter(|family| before.get(*family).is_none_or(BTreeMap::is_empty)).collect();
    assert!(missing.is_empty(), "families the seed's rules and dashboards use are missing from Herd: {missing:?}");

    let Comparison { problems, families_compared, values_compared, only_in_herd } = compare(&before, &node, &after);
    eprintln!(
        "compared {families_compared} families and {values_compared} values; only in node_exporter: {:?}; \
         only in Herd: {only_in_herd:?}",
        node.keys().filter(|name| !before.contains_key(*name) && !after.contains_key(*name)).collect::<Vec<_>>()
    );
    assert!(problems.is_empty(), "Herd differs from node_exporter:\n{}", problems.join("\n"));
    assert!(
        families_compared >= 40,
        "only {families_compared} families in common: is node_exporter running the right collectors?"
    );
}

/// A parsed sample as written in a test: name, label pairs, value.
type Expected<'a> = Option<(&'a str, &'a [(&'a str, &'a str)], f64)>;

#[test]
fn exposition_lines_parse() {
    let check = |line: &str, expected: Expected<'_>| {
        let expected = expected.map(|(name, labels, value)| {
            let labels: LabelSet = labels.iter().map(|&(l, v)| (l.to_owned(), v.to_owned())).collect();
            (name.to_owned(), labels, value)
        });
        assert_eq!(parse_sample(line), expected, "{line:?}");
    };
    check("node_load1 0.52", Some(("node_load1", &[], 0.52)));
    check(
        r#"node_filesystem_size_bytes{device="/dev/vda",fstype="ext4",mountpoint="/"} 2.70553174016e+11"#,
        Some((
            "node_filesystem_size_bytes",
            &[("device", "/dev/vda"), ("fstype", "ext4"), ("mountpoint", "/")],
            2.70553174016e11,
        )),
    );
    check(
        r#"node_disk_info{device="vda",major="254",model="",path="a\"b\\c"} 1 1700000000000"#,
        Some(("node_disk_info", &[("device", "vda"), ("major", "254"), ("path", "a\"b\\c")], 1.0)),
    );
    check("x{} +Inf", Some(("x", &[], f64::INFINITY)));
    check(r#"x{a="unterminated} 1"#, None);
    check("x", None);
}
