//! The agent's identity: `herd-agent enroll` (`enroll.rs`) gets the first
//! certificate with a token, the [`Renewer`] (`renew.rs`) replaces it over
//! the live connection two thirds into its lifetime. The key is generated
//! here, written with mode 0600, and never sent anywhere.
//!
//! Files are written so that a crash leaves the old pair or the new one:
//! each goes to a temporary file in the same directory, is synced, then
//! renamed over the old one (key first, then certificate).

pub mod enroll;
pub mod renew;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use herd_common::protocol::enroll::{self as wire, IssueResponse, LENGTH_PREFIX_BYTES};

pub use renew::{RenewalLink, Renewer};

#[derive(Debug, thiserror::Error)]
pub enum IdentityFileError {
    #[error("cannot write {path}: {source} (is its directory writable by the agent's user?)")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes `contents` to `path` via a synced temporary file and a rename.
pub(crate) fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityFileError> {
    let err = |source| IdentityFileError::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(err)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(err)?;
    give_to_directory_owner(&tmp, dir).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// `herd-agent enroll` run as root into the agent's directory (owned by the
/// herd-agent user) must leave files the agent can read and replace: a file
/// whose owner differs from its directory's is given to the directory's
/// owner. Only root can; anyone else keeps the file as its own.
fn give_to_directory_owner(file: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (dir_meta, file_meta) = (std::fs::metadata(dir)?, std::fs::metadata(file)?);
    if (dir_meta.uid(), dir_meta.gid()) == (file_meta.uid(), file_meta.gid()) {
        return Ok(());
    }
    match std::os::unix::fs::chown(file, Some(dir_meta.uid()), Some(dir_meta.gid())) {
        // Not root: the file stays the writer's, as any file it writes.
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        other => other,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Connection(String),
    #[error("the aggregator's answer is malformed: {0}")]
    Malformed(String),
    #[error("timed out waiting for the aggregator")]
    Timeout,
}

/// Reads one length-prefixed [`IssueResponse`].
pub(crate) async fn read_response(recv: &mut quinn::RecvStream) -> Result<IssueResponse, ExchangeError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let connection = |e: quinn::ReadExactError| ExchangeError::Connection(e.to_string());
    recv.read_exact(&mut prefix).await.map_err(connection)?;
    let length = wire::message_length(prefix).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    let mut payload = vec![0u8; length];
    recv.read_exact(&mut payload).await.map_err(connection)?;
    wire::decode(&payload).map_err(|e| ExchangeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_written_as_root_belong_to_the_directory_owner_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir(&pki).unwrap();
        // The agent's directory, owned by another user (nobody); the test runs as root, as enrollment does.
        std::os::unix::fs::chown(&pki, Some(65534), Some(65534)).expect("this test needs root");
        let key = pki.join("agent-key.pem");
        write_replacing(&key, b"first", 0o600).unwrap();
        write_replacing(&key, b"second", 0o600).unwrap();
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (65534, 65534, 0o600));
        assert_eq!(std::fs::read(&key).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(&pki).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }
}
