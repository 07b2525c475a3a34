//! Label-set arithmetic the evaluator needs: dropping the metric name,
//! keeping or removing listed labels, setting one label, and the byte keys
//! that group series (aggregation) or match them (binary operators).
//!
//! Keys are exact bytes, never hashes, so two different label sets can never
//! collide into one group.

use herd_common::metric::{Labels, METRIC_NAME};

/// Separates names and values inside a key; never valid in a label name, and
/// the 0xff byte never occurs in UTF-8 text, so keys cannot be forged by values.
const SEP: u8 = 0xff;

pub(crate) fn without_name(labels: &Labels) -> Labels {
    if labels.get(METRIC_NAME).is_none() {
        return labels.clone();
    }
    Labels::from_pairs(labels.iter().filter(|(n, _)| *n != METRIC_NAME))
}

/// Keeps only the labels named in `names`.
pub(crate) fn keep(labels: &Labels, names: &[String]) -> Labels {
    Labels::from_pairs(labels.iter().filter(|(n, _)| names.iter().any(|k| k == n)))
}

/// Removes the labels named in `names`, and the metric name if `drop_name`.
pub(crate) fn remove(labels: &Labels, names: &[String], drop_name: bool) -> Labels {
    Labels::from_pairs(
        labels.iter().filter(|(n, _)| !(names.iter().any(|k| k == n) || (drop_name && *n == METRIC_NAME))),
    )
}

/// Sets `name` to `value`; an empty value removes the label.
pub(crate) fn set(labels: &Labels, name: &str, value: &str) -> Labels {
    Labels::from_pairs(labels.iter().filter(|(n, _)| *n != name).chain(std::iter::once((name, value))))
}

/// Key of the values of `names` (sorted, deduplicated by the caller); a
/// missing label counts as the empty value.
pub(crate) fn key_on(labels: &Labels, names: &[String], out: &mut Vec<u8>) {
    out.clear();
    for name in names {
        out.extend_from_slice(labels.get(name).unwrap_or("").as_bytes());
        out.push(SEP);
    }
}

/// Key of every label except those in `names` and, if `drop_name`, the metric name.
pub(crate) fn key_without(labels: &Labels, names: &[String], drop_name: bool, out: &mut Vec<u8>) {
    out.clear();
    for (n, v) in labels.iter() {
        if (drop_name && n == METRIC_NAME) || names.iter().any(|k| k == n) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.push(SEP);
        out.extend_from_slice(v.as_bytes());
        out.push(SEP);
    }
}

/// Sorted, deduplicated copy of a label-name list from the parser.
pub(crate) fn sorted_names(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    names
}

/// Whether `name` is a valid Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn keys_separate_names_from_values() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        key_without(&labels(&[("a", "bc")]), &[], true, &mut a);
        key_without(&labels(&[("ab", "c")]), &[], true, &mut b);
        assert_ne!(a, b);
        key_on(&labels(&[("a", "x"), ("b", "y")]), &["a".into(), "b".into()], &mut a);
        key_on(&labels(&[("a", "xy")]), &["a".into(), "b".into()], &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn label_edits() {
        let l = labels(&[("__name__", "up"), ("job", "node"), ("instance", "a")]);
        assert_eq!(without_name(&l).to_string(), r#"{instance="a", job="node"}"#);
        assert_eq!(keep(&l, &["job".into()]).to_string(), r#"{job="node"}"#);
        assert_eq!(remove(&l, &["job".into()], true).to_string(), r#"{instance="a"}"#);
        assert_eq!(set(&l, "job", "").to_string(), r#"up{instance="a"}"#);
        assert_eq!(set(&l, "zone", "z").get("zone"), Some("z"));
        assert!(is_valid_name("_a1") && !is_valid_name("1a") && !is_valid_name("") && !is_valid_name("a-b"));
    }
}
