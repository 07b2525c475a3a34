//! The last-known-good pushed configuration, `<state_dir>/config/last-known-good.toml`:
//! the version, profile, hash and body the agent last applied. Written to a
//! temporary file, synced, then renamed over the old one, so a crash leaves
//! either the old or the new file whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastKnownGood {
    pub version: u64,
    pub profile: String,
    pub hash: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LkgError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("config").join("last-known-good.toml")
}

impl LastKnownGood {
    /// `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, LkgError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LkgError::Read { path: path.to_owned(), source }),
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|err| LkgError::Damaged { path: path.to_owned(), detail: err.to_string() })
    }

    pub fn write(&self, path: &Path) -> Result<(), LkgError> {
        let err = |source| LkgError::Write { path: path.to_owned(), source };
        let dir = path.parent().expect("the path has a directory");
        std::fs::create_dir_all(dir).map_err(err)?;
        let text = toml::to_string(self).expect("plain strings and numbers serialize");
        let tmp = path.with_extension("toml.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }

    /// Back to the local file alone: nothing to keep.
    pub fn remove(path: &Path) -> Result<(), LkgError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LkgError::Write { path: path.to_owned(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        assert_eq!(LastKnownGood::read(&file).unwrap(), None);
        let first = LastKnownGood {
            version: 3,
            profile: "db".into(),
            hash: "sha256:1".into(),
            body: "[collect]\ninterval = \"5s\"\n".into(),
        };
        first.write(&file).unwrap();
        assert_eq!(LastKnownGood::read(&file).unwrap(), Some(first.clone()));
        let second = LastKnownGood { version: 4, body: "'''\"\n".into(), ..first };
        second.write(&file).unwrap();
        assert_eq!(LastKnownGood::read(&file).unwrap(), Some(second));
        std::fs::write(&file, "version = ").unwrap();
        assert!(matches!(LastKnownGood::read(&file), Err(LkgError::Damaged { .. })));
        LastKnownGood::remove(&file).unwrap();
        LastKnownGood::remove(&file).unwrap();
        assert_eq!(LastKnownGood::read(&file).unwrap(), None);
    }
}
