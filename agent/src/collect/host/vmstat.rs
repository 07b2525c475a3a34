//! /proc/vmstat: the fields node_exporter exports by default, as
//! `node_vmstat_<field>` (paging, swapping, page faults, OOM kills).

use std::path::Path;

use super::{ParseContext, number};
use crate::collect::{Batch, CollectError};

/// node_exporter's default `--collector.vmstat.fields`,
/// `^(oom_kill|pgpg|pswp|pg.*fault).*`, without a regex engine.
fn exported(field: &str) -> bool {
    field.starts_with("oom_kill")
        || field.starts_with("pgpg")
        || field.starts_with("pswp")
        || field.strip_prefix("pg").is_some_and(|rest| rest.contains("fault"))
}

pub(super) fn parse(
    path: &Path,
    text: &str,
    context: &mut ParseContext<'_>,
    out: &mut Batch,
) -> Result<(), CollectError> {
    let name = &mut *context.name;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(field) = fields.next() else { continue };
        if !exported(field) {
            continue;
        }
        let value = number(path, fields.next(), field)?;
        name.clear();
        name.push_str("node_vmstat_");
        name.push_str(field);
        out.push(name, &[], value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;

    #[test]
    fn only_the_default_fields() {
        check(
            super::parse,
            "nr_free_pages 1\npgpgin 2\npgpgout 3\npswpin 4\npswpout 5\npgfault 6\npgmajfault 7\noom_kill 8\n\
             thp_fault_alloc 9\npgsteal_kswapd 10\n",
            "node_vmstat_oom_kill 8\nnode_vmstat_pgfault 6\nnode_vmstat_pgmajfault 7\nnode_vmstat_pgpgin 2\n\
             node_vmstat_pgpgout 3\nnode_vmstat_pswpin 4\nnode_vmstat_pswpout 5\n",
        );
        check(
            super::parse,
            "pgfault many\n",
            "error: /proc/x: unexpected format: pgfault: expected a number, found Some(\"many\")\n",
        );
    }
}
