//! node_exporter's os collector: `node_os_info` and `node_os_version` from
//! `<rootfs>/etc/os-release`, or `<rootfs>/usr/lib/os-release` when the first
//! is missing. The file changes only on upgrades, so it is parsed again only
//! when its modification time does.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{parse_error, push_info, read_into};
use crate::collect::{Batch, CollectError};

/// os-release keys, and the label each becomes, in node_exporter's order.
const FIELDS: [(&str, &str); 12] = [
    ("BUILD_ID", "build_id"),
    ("ID", "id"),
    ("ID_LIKE", "id_like"),
    ("IMAGE_ID", "image_id"),
    ("IMAGE_VERSION", "image_version"),
    ("NAME", "name"),
    ("PRETTY_NAME", "pretty_name"),
    ("VARIANT", "variant"),
    ("VARIANT_ID", "variant_id"),
    ("VERSION", "version"),
    ("VERSION_CODENAME", "version_codename"),
    ("VERSION_ID", "version_id"),
];
const ID: usize = 1;
const ID_LIKE: usize = 2;
const NAME: usize = 5;
const VERSION_ID: usize = 11;

pub(super) struct OsRelease {
    paths: [PathBuf; 2],
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// Which of `paths` was parsed, and its modification time then.
    source: Option<(usize, Option<SystemTime>)>,
    values: [String; FIELDS.len()],
    /// The major.minor part of VERSION_ID; 0 when it has none.
    version: f64,
    text: String,
}

impl OsRelease {
    pub(super) fn new(rootfs: &Path) -> Self {
        Self { paths: [rootfs.join("etc/os-release"), rootfs.join("usr/lib/os-release")], cache: Mutex::default() }
    }

    /// Pushes the two series; a host without os-release has none, as with node_exporter.
    pub(super) fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let mut cache = self.cache.lock().expect("os-release cache lock is never poisoned");
        let Some((index, modified)) = self.find()? else { return Ok(()) };
        if cache.source != Some((index, modified)) {
            let path = &self.paths[index];
            let Cache { values, version, text, source } = &mut *cache;
            *source = None;
            read_into(path, text)?;
            parse(path, text, values)?;
            *version = major_minor(&values[VERSION_ID]);
            *source = Some((index, modified));
        }
        let values = &cache.values;
        let mut labels = [("", ""); FIELDS.len()];
        for (slot, (&(_, label), value)) in labels.iter_mut().zip(FIELDS.iter().zip(values)) {
            *slot = (label, value.as_str());
        }
        push_info(out, "node_os_info", &labels, 1.0);
        if cache.version > 0.0 {
            let labels =
                [("id", values[ID].as_str()), ("id_like", values[ID_LIKE].as_str()), ("name", values[NAME].as_str())];
            push_info(out, "node_os_version", &labels, cache.version);
        }
        Ok(())
    }

    /// The first os-release file that exists, and its modification time.
    fn find(&self) -> Result<Option<(usize, Option<SystemTime>)>, CollectError> {
        for (index, path) in self.paths.iter().enumerate() {
            match std::fs::metadata(path) {
                Ok(meta) => return Ok(Some((index, meta.modified().ok()))),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CollectError::Read { path: path.display().to_string(), source }),
            }
        }
        Ok(None)
    }
}

/// Parses os-release(5): `KEY=value` lines, values optionally quoted, with
/// shell-style backslash escapes inside double quotes.
fn parse(path: &Path, text: &str, values: &mut [String; FIELDS.len()]) -> Result<(), CollectError> {
    values.iter_mut().for_each(String::clear);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            return Err(parse_error(path, format!("expected KEY=value, found {line:?}")));
        };
        let Some(index) = FIELDS.iter().position(|&(name, _)| name == key.trim()) else { continue };
        let value = &mut values[index];
        value.clear();
        unquote(raw.trim(), value).map_err(|detail| parse_error(path, format!("{key}: {detail}")))?;
    }
    Ok(())
}

fn unquote(raw: &str, value: &mut String) -> Result<(), &'static str> {
    let mut chars = raw.chars();
    match chars.next() {
        Some('\'') => {
            let inner = chars.as_str().strip_suffix('\'').ok_or("unterminated single quote")?;
            value.push_str(inner);
        }
        Some('"') => {
            let inner = chars.as_str().strip_suffix('"').ok_or("unterminated double quote")?;
            let mut inner = inner.chars();
            while let Some(c) = inner.next() {
                match c {
                    // Inside double quotes a backslash escapes only these (os-release(5), sh).
                    '\\' => match inner.next() {
                        Some(escaped @ ('\\' | '"' | '$' | '`')) => value.push(escaped),
                        Some(other) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => value.push('\\'),
                    },
                    c => value.push(c),
                }
            }
        }
        _ => value.push_str(raw),
    }
    Ok(())
}

/// node_exporter's `^[0-9]+\.?[0-9]*` of VERSION_ID as a number ("22.04.3" → 22.04).
fn major_minor(version_id: &str) -> f64 {
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let major = digits(version_id);
    if major == 0 {
        return 0.0;
    }
    let mut end = major;
    if let Some(rest) = version_id[major..].strip_prefix('.') {
        end += 1 + digits(rest);
    }
    version_id[..end].trim_end_matches('.').parse().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[(&str, &str)]) {
        let mut values: [String; FIELDS.len()] = Default::default();
        let result = parse(Path::new("/etc/os-release"), text, &mut values).map_err(|e| e.to_string());
        let found: Vec<(&str, &str)> = FIELDS
            .iter()
            .zip(&values)
            .filter(|(_, v)| !v.is_empty())
            .map(|(&(_, label), v)| (label, v.as_str()))
            .collect();
        match result {
            Ok(()) => assert_eq!(found, expected, "for {text:?}"),
            Err(err) => assert_eq!(vec![("error", err.as_str())], expected, "for {text:?}"),
        }
    }

    #[test]
    fn quoting_styles() {
        check(
            "# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID='12'\n\
             NAME=\"say \\\"hi\\\" \\$HOME \\n\"\nHOME_URL=\"https://www.debian.org/\"\n",
            &[
                ("id", "debian"),
                ("name", "say \"hi\" $HOME \\n"),
                ("pretty_name", "Debian GNU/Linux 12 (bookworm)"),
                ("version_id", "12"),
            ],
        );
        check("ID=\"debian\n", &[("error", "/etc/os-release: unexpected format: ID: unterminated double quote")]);
        check(
            "just words\n",
            &[("error", "/etc/os-release: unexpected format: expected KEY=value, found \"just words\"")],
        );
    }

    #[test]
    fn version_numbers() {
        for (version_id, expected) in
            [("12", 12.0), ("22.04", 22.04), ("3.18.4", 3.18), ("rolling", 0.0), ("", 0.0), ("7.", 7.0)]
        {
            assert_eq!(major_minor(version_id), expected, "{version_id:?}");
        }
    }
}
