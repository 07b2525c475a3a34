//! node_exporter's time and uname collectors: the wall clock (with
//! node_boot_time_seconds it gives uptime) and uname(2) as labels.
//!
//! Not here: node_time_zone_offset_seconds and the clocksource info series,
//! which need the zone database and sysfs.

use std::time::UNIX_EPOCH;

use super::{Kernel, push_info};
use crate::collect::Batch;

pub(super) fn push_time(kernel: &dyn Kernel, out: &mut Batch) {
    let seconds = kernel.now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
    out.push("node_time_seconds", &[], seconds);
}

pub(super) fn push_uname(kernel: &dyn Kernel, out: &mut Batch) {
    kernel.uname(&mut |uname| {
        push_info(
            out,
            "node_uname_info",
            &[
                ("domainname", uname.domainname),
                ("machine", uname.machine),
                ("nodename", uname.nodename),
                ("release", uname.release),
                ("sysname", uname.sysname),
                ("version", uname.version),
            ],
            1.0,
        );
    });
}
