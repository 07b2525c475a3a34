//! /proc/diskstats: node_exporter's diskstats collector, one `device` label
//! per block device left after the exclude pattern (by default partitions,
//! RAM, zram and loop devices are left out, as node_exporter does).
//!
//! Not here: the udev properties node_exporter adds to `node_disk_info`
//! (path, wwn, model, serial, revision) and its udev-only families; on a host
//! without /run/udev they are absent from node_exporter's output as well.

use std::path::Path;

use super::{ParseContext, excluded, parse_error, push_info};
use crate::collect::{Batch, CollectError};

/// The kernel counts in 512-byte sectors whatever the device's block size.
const SECTOR_BYTES: f64 = 512.0;
const SECONDS_PER_MS: f64 = 0.001;

/// The statistics after major, minor and name, in the kernel's order
/// (Documentation/admin-guide/iostats.rst), with node_exporter's names.
/// Kernels give 11 (before 4.18), 15 (discards, 4.18) or 17 (flushes, 5.5).
const FIELDS: [(&str, f64); 17] = [
    ("node_disk_reads_completed_total", 1.0),
    ("node_disk_reads_merged_total", 1.0),
    ("node_disk_read_bytes_total", SECTOR_BYTES),
    ("node_disk_read_time_seconds_total", SECONDS_PER_MS),
    ("node_disk_writes_completed_total", 1.0),
    ("node_disk_writes_merged_total", 1.0),
    ("node_disk_written_bytes_total", SECTOR_BYTES),
    ("node_disk_write_time_seconds_total", SECONDS_PER_MS),
    ("node_disk_io_now", 1.0),
    ("node_disk_io_time_seconds_total", SECONDS_PER_MS),
    ("node_disk_io_time_weighted_seconds_total", SECONDS_PER_MS),
    ("node_disk_discards_completed_total", 1.0),
    ("node_disk_discards_merged_total", 1.0),
    // Sectors, not bytes: node_exporter's name and unit, kept for compatibility.
    ("node_disk_discarded_sectors_total", 1.0),
    ("node_disk_discard_time_seconds_total", SECONDS_PER_MS),
    ("node_disk_flush_requests_total", 1.0),
    ("node_disk_flush_requests_time_seconds_total", SECONDS_PER_MS),
];

/// Fewer statistics than this is a format from before Linux 2.6.25.
const MIN_FIELDS: usize = 11;

pub(super) fn parse(
    path: &Path,
    text: &str,
    context: &mut ParseContext<'_>,
    out: &mut Batch,
) -> Result<(), CollectError> {
    let mut first_error = None;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(major), Some(minor), Some(device)) = (fields.next(), fields.next(), fields.next()) else {
            if !line.trim().is_empty() {
                first_error.get_or_insert_with(|| parse_error(path, format!("too few fields in {line:?}")));
            }
            continue;
        };
        if excluded(&context.filters.disk_devices_exclude, device) {
            continue;
        }
        // Parse the whole line before pushing, so a bad line adds nothing.
        let mut values = [0f64; FIELDS.len()];
        let mut count = 0;
        let mut bad = false;
        for (slot, field) in values.iter_mut().zip(fields) {
            match field.parse::<u64>() {
                Ok(value) => *slot = value as f64,
                Err(_) => bad = true,
            }
            count += 1;
        }
        if bad || count < MIN_FIELDS {
            first_error.get_or_insert_with(|| parse_error(path, format!("{device}: malformed statistics in {line:?}")));
            continue;
        }
        push_info(out, "node_disk_info", &[("device", device), ("major", major), ("minor", minor)], 1.0);
        for (&(name, scale), value) in FIELDS.iter().zip(values).take(count) {
            out.push(name, &[("device", device)], value * scale);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;

    #[test]
    fn kernel_formats_and_exclusions() {
        check(
            super::parse,
            "   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
             \x20  8       1 sda1 1 0 2 0 0 0 0 0 0 0 0\n\
             \x20253       0 zram0 1 0 2 0 0 0 0 0 0 0 0\n\
             \x20  8       0 sda 10 1 2048 1500 20 2 4096 2500 1 3000 4000\n\
             \x20259       0 nvme0n1 10 1 2048 1500 20 2 4096 2500 0 3000 4000 5 6 7 8 9 10\n",
            "node_disk_discard_time_seconds_total{device=\"nvme0n1\"} 0.008\n\
             node_disk_discarded_sectors_total{device=\"nvme0n1\"} 7\n\
             node_disk_discards_completed_total{device=\"nvme0n1\"} 5\n\
             node_disk_discards_merged_total{device=\"nvme0n1\"} 6\n\
             node_disk_flush_requests_time_seconds_total{device=\"nvme0n1\"} 0.01\n\
             node_disk_flush_requests_total{device=\"nvme0n1\"} 9\n\
             node_disk_info{device=\"nvme0n1\",major=\"259\",minor=\"0\"} 1\n\
             node_disk_info{device=\"sda\",major=\"8\",minor=\"0\"} 1\n\
             node_disk_io_now{device=\"nvme0n1\"} 0\n\
             node_disk_io_now{device=\"sda\"} 1\n\
             node_disk_io_time_seconds_total{device=\"nvme0n1\"} 3\n\
             node_disk_io_time_seconds_total{device=\"sda\"} 3\n\
             node_disk_io_time_weighted_seconds_total{device=\"nvme0n1\"} 4\n\
             node_disk_io_time_weighted_seconds_total{device=\"sda\"} 4\n\
             node_disk_read_bytes_total{device=\"nvme0n1\"} 1048576\n\
             node_disk_read_bytes_total{device=\"sda\"} 1048576\n\
             node_disk_read_time_seconds_total{device=\"nvme0n1\"} 1.5\n\
             node_disk_read_time_seconds_total{device=\"sda\"} 1.5\n\
             node_disk_reads_completed_total{device=\"nvme0n1\"} 10\n\
             node_disk_reads_completed_total{device=\"sda\"} 10\n\
             node_disk_reads_merged_total{device=\"nvme0n1\"} 1\n\
             node_disk_reads_merged_total{device=\"sda\"} 1\n\
             node_disk_write_time_seconds_total{device=\"nvme0n1\"} 2.5\n\
             node_disk_write_time_seconds_total{device=\"sda\"} 2.5\n\
             node_disk_writes_completed_total{device=\"nvme0n1\"} 20\n\
             node_disk_writes_completed_total{device=\"sda\"} 20\n\
             node_disk_writes_merged_total{device=\"nvme0n1\"} 2\n\
             node_disk_writes_merged_total{device=\"sda\"} 2\n\
             node_disk_written_bytes_total{device=\"nvme0n1\"} 2097152\n\
             node_disk_written_bytes_total{device=\"sda\"} 2097152\n",
        );
    }

    #[test]
    fn bad_lines_add_nothing_and_the_rest_is_kept() {
        check(
            super::parse,
            "8 0 sda 1 2 x 4 5 6 7 8 9 10 11\n8 16 sdb 1 2\n8 32\n8 48 sdd 1 0 0 0 0 0 0 0 0 0 0\n",
            "node_disk_info{device=\"sdd\",major=\"8\",minor=\"48\"} 1\n\
             node_disk_io_now{device=\"sdd\"} 0\n\
             node_disk_io_time_seconds_total{device=\"sdd\"} 0\n\
             node_disk_io_time_weighted_seconds_total{device=\"sdd\"} 0\n\
             node_disk_read_bytes_total{device=\"sdd\"} 0\n\
             node_disk_read_time_seconds_total{device=\"sdd\"} 0\n\
             node_disk_reads_completed_total{device=\"sdd\"} 1\n\
             node_disk_reads_merged_total{device=\"sdd\"} 0\n\
             node_disk_write_time_seconds_total{device=\"sdd\"} 0\n\
             node_disk_writes_completed_total{device=\"sdd\"} 0\n\
             node_disk_writes_merged_total{device=\"sdd\"} 0\n\
             node_disk_written_bytes_total{device=\"sdd\"} 0\n\
             error: /proc/x: unexpected format: sda: malformed statistics in \"8 0 sda 1 2 x 4 5 6 7 8 9 10 11\"\n",
        );
    }
}
