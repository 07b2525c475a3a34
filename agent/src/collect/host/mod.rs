//! The host collector: node_exporter's names and labels, read straight from
//! procfs under a configurable root (so tests can point it at fixtures).
//!
//! Each file is read into a buffer kept between cycles; parsing borrows from
//! it, so a cycle allocates only for series seen for the first time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Batch, CollectError, Collector};

/// Clock ticks per second in /proc/stat (USER_HZ), fixed at 100 on Linux for
/// every architecture Herd runs on, as node_exporter assumes.
const USER_HZ: f64 = 100.0;
const CPU_MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

pub struct HostCollector {
    procfs_root: PathBuf,
    buffer: Mutex<String>,
}

impl HostCollector {
    pub fn new(procfs_root: PathBuf) -> Self {
        Self { procfs_root, buffer: Mutex::new(String::with_capacity(16 * 1024)) }
    }

    fn read_into(&self, file: &str, buffer: &mut String) -> Result<PathBuf, CollectError> {
        let path = self.procfs_root.join(file);
        buffer.clear();
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_string(buffer))
            .map_err(|source| CollectError::Read { path: path.display().to_string(), source })?;
        Ok(path)
    }

    /// Collects synchronously: procfs files are in memory and small.
    pub fn collect_now(&self, out: &mut Batch) -> Result<(), CollectError> {
        let mut buffer = self.buffer.lock().expect("host buffer lock is never poisoned");
        let mut first_error = None;
        for (file, parse) in [
            ("stat", parse_stat as fn(&Path, &str, &mut Batch) -> Result<(), CollectError>),
            ("meminfo", parse_meminfo),
            ("loadavg", parse_loadavg),
        ] {
            let result = self.read_into(file, &mut buffer).and_then(|path| parse(&path, &buffer, out));
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
        self.collect_now(out)
    }
}

fn parse_error(path: &Path, detail: impl Into<String>) -> CollectError {
    CollectError::Parse { path: path.display().to_string(), detail: detail.into() }
}

fn number(path: &Path, field: Option<&str>, what: &str) -> Result<f64, CollectError> {
    field
        .and_then(|f| f.parse::<f64>().ok())
        .ok_or_else(|| parse_error(path, format!("{what}: expected a number, found {field:?}")))
}

/// /proc/stat: CPU time per core and mode, context switches, forks, boot time, procs.
fn parse_stat(path: &Path, text: &str, out: &mut Batch) -> Result<(), CollectError> {
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        if let Some(cpu) = key.strip_prefix("cpu") {
            if cpu.is_empty() {
                continue; // The aggregate line; node_exporter reports per core only.
            }
            let mut ticks = [0f64; 10];
            let mut n = 0;
            for (slot, field) in ticks.iter_mut().zip(fields.by_ref()) {
                *slot = number(path, Some(field), key)?;
                n += 1;
            }
            if n < 8 {
                return Err(parse_error(path, format!("{key}: {n} fields, expected at least 8")));
            }
            for (mode, value) in CPU_MODES.iter().zip(ticks) {
                out.push("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)], value / USER_HZ);
            }
            out.push("node_cpu_guest_seconds_total", &[("cpu", cpu), ("mode", "user")], ticks[8] / USER_HZ);
            out.push("node_cpu_guest_seconds_total", &[("cpu", cpu), ("mode", "nice")], ticks[9] / USER_HZ);
            continue;
        }
        let name = match key {
            "ctxt" => "node_context_switches_total",
            "btime" => "node_boot_time_seconds",
            "processes" => "node_forks_total",
            "procs_running" => "node_procs_running",
            "procs_blocked" => "node_procs_blocked",
            "intr" => "node_intr_total",
            _ => continue,
        };
        out.push(name, &[], number(path, fields.next(), key)?);
    }
    Ok(())
}

/// /proc/meminfo: every line, named as node_exporter names it
/// (`Active(anon)` → `node_memory_Active_anon_bytes`).
fn parse_meminfo(path: &Path, text: &str, out: &mut Batch) -> Result<(), CollectError> {
    let mut name = String::with_capacity(64);
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else { continue };
        let key = key.strip_suffix(':').unwrap_or(key);
        let mut value = number(path, Some(value), key)?;
        name.clear();
        name.push_str("node_memory_");
        for c in key.chars() {
            match c {
                '(' => name.push('_'),
                ')' => {}
                c => name.push(c),
            }
        }
        if fields.next() == Some("kB") {
            value *= 1024.0;
            name.push_str("_bytes");
        }
        out.push(&name, &[], value);
    }
    Ok(())
}

/// /proc/loadavg: the three load averages.
fn parse_loadavg(path: &Path, text: &str, out: &mut Batch) -> Result<(), CollectError> {
    let mut fields = text.split_ascii_whitespace();
    for name in ["node_load1", "node_load5", "node_load15"] {
        out.push(name, &[], number(path, fields.next(), name)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::SharedSeriesTable;
    use std::sync::Arc;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// Renders a batch as sorted exposition lines without the job label.
    fn render(table: &SharedSeriesTable, batch: &Batch) -> String {
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
        lines.join("\n") + "\n"
    }

    #[test]
    fn fixture_matches_expected_exposition() {
        let table: SharedSeriesTable = Arc::default();
        let mut batch = Batch::new(Arc::clone(&table), "node".into(), Arc::new(Vec::new()));
        HostCollector::new(fixtures().join("proc")).collect_now(&mut batch).unwrap();
        let expected = std::fs::read_to_string(fixtures().join("expected-host.prom")).unwrap();
        assert_eq!(render(&table, &batch), expected);
    }

    #[test]
    fn missing_files_are_reported_and_the_rest_collected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("loadavg"), "1 2 3 1/1 1\n").unwrap();
        let table: SharedSeriesTable = Arc::default();
        let mut batch = Batch::new(Arc::clone(&table), "node".into(), Arc::new(Vec::new()));
        let err = HostCollector::new(dir.path().into()).collect_now(&mut batch).unwrap_err();
        assert!(err.to_string().contains("stat"), "{err}");
        assert_eq!(render(&table, &batch), "node_load1 1\nnode_load15 3\nnode_load5 2\n");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), "cpu0 1 2\nctxt\n").unwrap();
        std::fs::write(dir.path().join("meminfo"), "MemTotal: lots kB\n").unwrap();
        std::fs::write(dir.path().join("loadavg"), "").unwrap();
        let table: SharedSeriesTable = Arc::default();
        let mut batch = Batch::new(Arc::clone(&table), "node".into(), Arc::new(Vec::new()));
        assert!(HostCollector::new(dir.path().into()).collect_now(&mut batch).is_err());
    }

    #[test]
    fn real_procfs_has_the_required_families() {
        let table: SharedSeriesTable = Arc::default();
        let mut batch = Batch::new(Arc::clone(&table), "node".into(), Arc::new(Vec::new()));
        HostCollector::new("/proc".into()).collect_now(&mut batch).unwrap();
        let text = render(&table, &batch);
        for family in [
            "node_cpu_seconds_total{",
            "node_memory_MemTotal_bytes ",
            "node_memory_MemAvailable_bytes ",
            "node_load1 ",
            "node_load5 ",
            "node_load15 ",
        ] {
            assert!(text.contains(family), "{family} missing");
        }
    }
}
