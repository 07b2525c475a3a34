//! /proc/meminfo: every line, named as node_exporter names it
//! (`Active(anon):  12 kB` → `node_memory_Active_anon_bytes 12288`).

use std::path::Path;

use super::{ParseContext, number};
use crate::collect::{Batch, CollectError};

pub(super) fn parse(
    path: &Path,
    text: &str,
    context: &mut ParseContext<'_>,
    out: &mut Batch,
) -> Result<(), CollectError> {
    let name = &mut *context.name;
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
        out.push(name, &[], value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;

    #[test]
    fn units_and_parentheses() {
        check(
            super::parse,
            "MemTotal:  2 kB\nActive(anon):   1 kB\nHugePages_Total:   3\n",
            "node_memory_Active_anon_bytes 1024\nnode_memory_HugePages_Total 3\nnode_memory_MemTotal_bytes 2048\n",
        );
        check(
            super::parse,
            "MemTotal: x kB\n",
            "error: /proc/x: unexpected format: MemTotal: expected a number, found Some(\"x\")\n",
        );
    }
}
