//! /proc/net/dev: node_exporter's netdev collector with its default (legacy)
//! names, `node_network_{receive,transmit}_<column>_total{device}`.
//!
//! node_exporter reads the same counters over netlink by default; the kernel
//! fills /proc/net/dev from the same per-device statistics, folding the
//! detailed error counters into `drop`, `frame` and `carrier` exactly as
//! node_exporter's legacy names do. Only netlink's `receive_nohandler` has no
//! column here.

use std::path::Path;

use super::{ParseContext, excluded, parse_error};
use crate::collect::{Batch, CollectError};

/// The columns after `<device>:`, in the kernel's order.
const COLUMNS: [&str; 16] = [
    "node_network_receive_bytes_total",
    "node_network_receive_packets_total",
    "node_network_receive_errs_total",
    "node_network_receive_drop_total",
    "node_network_receive_fifo_total",
    "node_network_receive_frame_total",
    "node_network_receive_compressed_total",
    "node_network_receive_multicast_total",
    "node_network_transmit_bytes_total",
    "node_network_transmit_packets_total",
    "node_network_transmit_errs_total",
    "node_network_transmit_drop_total",
    "node_network_transmit_fifo_total",
    "node_network_transmit_colls_total",
    "node_network_transmit_carrier_total",
    "node_network_transmit_compressed_total",
];

/// Two header lines precede the devices.
const HEADER_LINES: usize = 2;

pub(super) fn parse(
    path: &Path,
    text: &str,
    context: &mut ParseContext<'_>,
    out: &mut Batch,
) -> Result<(), CollectError> {
    let mut first_error = None;
    for line in text.lines().skip(HEADER_LINES) {
        // Large counters run into the colon: "eth0:126934476 4485 ...".
        let Some((device, counters)) = line.split_once(':') else {
            if !line.trim().is_empty() {
                first_error.get_or_insert_with(|| parse_error(path, format!("no device name in {line:?}")));
            }
            continue;
        };
        let device = device.trim();
        if excluded(&context.filters.net_devices_exclude, device) {
            continue;
        }
        let mut values = [0f64; COLUMNS.len()];
        let mut count = 0;
        for (slot, field) in values.iter_mut().zip(counters.split_ascii_whitespace()) {
            let Ok(value) = field.parse::<u64>() else { break };
            *slot = value as f64;
            count += 1;
        }
        if count < COLUMNS.len() {
            first_error.get_or_insert_with(|| parse_error(path, format!("{device}: malformed counters in {line:?}")));
            continue;
        }
        for (name, value) in COLUMNS.iter().zip(values) {
            out.push(name, &[("device", device)], value);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n \
        face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    #[test]
    fn every_column_of_every_device() {
        check(
            super::parse,
            &format!("{HEADER}eth0:126934476 4485 1 2 3 4 5 6 279348 3142 7 8 9 10 11 12\n"),
            "node_network_receive_bytes_total{device=\"eth0\"} 126934476\n\
             node_network_receive_compressed_total{device=\"eth0\"} 5\n\
             node_network_receive_drop_total{device=\"eth0\"} 2\n\
             node_network_receive_errs_total{device=\"eth0\"} 1\n\
             node_network_receive_fifo_total{device=\"eth0\"} 3\n\
             node_network_receive_frame_total{device=\"eth0\"} 4\n\
             node_network_receive_multicast_total{device=\"eth0\"} 6\n\
             node_network_receive_packets_total{device=\"eth0\"} 4485\n\
             node_network_transmit_bytes_total{device=\"eth0\"} 279348\n\
             node_network_transmit_carrier_total{device=\"eth0\"} 11\n\
             node_network_transmit_colls_total{device=\"eth0\"} 10\n\
             node_network_transmit_compressed_total{device=\"eth0\"} 12\n\
             node_network_transmit_drop_total{device=\"eth0\"} 8\n\
             node_network_transmit_errs_total{device=\"eth0\"} 7\n\
             node_network_transmit_fifo_total{device=\"eth0\"} 9\n\
             node_network_transmit_packets_total{device=\"eth0\"} 3142\n",
        );
    }

    #[test]
    fn short_lines_are_errors() {
        check(
            super::parse,
            &format!("{HEADER}  eth0: 1 2 3\nbogus\n"),
            "error: /proc/x: unexpected format: eth0: malformed counters in \"  eth0: 1 2 3\"\n",
        );
    }
}
