//! /proc/sys/fs/file-nr: allocated and maximum file handles, as node_exporter's
//! filefd collector (the middle field, always 0 since Linux 2.6, is unused).

use std::path::Path;

use super::{ParseContext, number};
use crate::collect::{Batch, CollectError};

pub(super) fn parse(path: &Path, text: &str, _: &mut ParseContext<'_>, out: &mut Batch) -> Result<(), CollectError> {
    let mut fields = text.split_ascii_whitespace();
    let allocated = number(path, fields.next(), "allocated")?;
    let maximum = number(path, fields.nth(1), "maximum")?;
    out.push("node_filefd_allocated", &[], allocated);
    out.push("node_filefd_maximum", &[], maximum);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;

    #[test]
    fn allocated_and_maximum() {
        check(
            super::parse,
            "1344\t0\t9223372036854775807\n",
            "node_filefd_allocated 1344\nnode_filefd_maximum 9223372036854776000\n",
        );
        check(super::parse, "1344 0\n", "error: /proc/x: unexpected format: maximum: expected a number, found None\n");
    }
}
