//! /proc/stat: node_exporter's cpu and stat collectors (CPU time per core and
//! mode, interrupts, context switches, forks, boot time, runnable and blocked
//! processes).

use std::path::Path;

use super::{ParseContext, number, parse_error};
use crate::collect::{Batch, CollectError};

/// Clock ticks per second in /proc/stat (USER_HZ), fixed at 100 on Linux for
/// every architecture Herd runs on, as node_exporter assumes.
const USER_HZ: f64 = 100.0;
const CPU_MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

pub(super) fn parse(path: &Path, text: &str, _: &mut ParseContext<'_>, out: &mut Batch) -> Result<(), CollectError> {
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
            // Guest time is also counted in user and nice; node_exporter reports it apart too.
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

#[cfg(test)]
mod tests {
    use super::super::tests::check;

    #[test]
    fn cores_and_counters() {
        check(
            super::parse,
            "cpu  2 0 0 0 0 0 0 0 0 0\ncpu3 100 1 2 3 4 5 6 7 8 9\nintr 55 1 2\nbtime 1700000000\nsoftirq 1 2\n",
            "node_boot_time_seconds 1700000000\n\
             node_cpu_guest_seconds_total{cpu=\"3\",mode=\"nice\"} 0.09\n\
             node_cpu_guest_seconds_total{cpu=\"3\",mode=\"user\"} 0.08\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"idle\"} 0.03\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"iowait\"} 0.04\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"irq\"} 0.05\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"nice\"} 0.01\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"softirq\"} 0.06\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"steal\"} 0.07\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"system\"} 0.02\n\
             node_cpu_seconds_total{cpu=\"3\",mode=\"user\"} 1\n\
             node_intr_total 55\n",
        );
    }

    #[test]
    fn short_cpu_line_is_an_error() {
        check(super::parse, "cpu0 1 2\n", "error: /proc/x: unexpected format: cpu0: 2 fields, expected at least 8\n");
    }
}
