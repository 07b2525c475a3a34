//! /proc/loadavg: the three load averages.

use std::path::Path;

use super::{ParseContext, number};
use crate::collect::{Batch, CollectError};

pub(super) fn parse(path: &Path, text: &str, _: &mut ParseContext<'_>, out: &mut Batch) -> Result<(), CollectError> {
    let mut fields = text.split_ascii_whitespace();
    for name in ["node_load1", "node_load5", "node_load15"] {
        out.push(name, &[], number(path, fields.next(), name)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;

    #[test]
    fn three_averages() {
        check(super::parse, "0.52 0.58 0.59 2/511 1234567\n", "node_load1 0.52\nnode_load15 0.59\nnode_load5 0.58\n");
        check(
            super::parse,
            "0.5\n",
            "node_load1 0.5\nerror: /proc/x: unexpected format: node_load5: expected a number, found None\n",
        );
    }
}
