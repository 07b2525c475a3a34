//! Silences: matchers and a time window that mute matching alerts, with who
//! made them and why. Kept in memory and written whole to
//! `<state_dir>/router/silences.json` (tmp file + rename) on every change, so
//! a restart forgets none. Expired silences are kept for five days, as
//! Alertmanager keeps them (`--data.retention`), then dropped.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::matcher::{MatchOp, Matcher, MatcherError};

const RETENTION_MS: i64 = 5 * 24 * 3600 * 1000;
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error("invalid matcher: {0}")]
    Matcher(#[from] MatcherError),
    #[error("a silence needs at least one matcher")]
    NoMatchers,
    #[error("a silence's matchers must not all match the empty string (it would silence every alert)")]
    MatchesEverything,
    #[error("endsAt must be after startsAt")]
    EndsBeforeStart,
    #[error("endsAt is in the past")]
    AlreadyExpired,
    #[error("silence {0} not found")]
    NotFound(String),
    #[error("silence {0} is already expired")]
    Expired(String),
    #[error("cannot write silences to {path}: {source} (is the state directory writable by the herd user?)")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

impl SilenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SilenceMatcher {
    pub name: String,
    pub value: String,
    pub is_regex: bool,
    pub is_equal: bool,
}

impl SilenceMatcher {
    pub fn compile(&self) -> Result<Matcher, MatcherError> {
        let op = match (self.is_regex, self.is_equal) {
            (false, true) => MatchOp::Equal,
            (false, false) => MatchOp::NotEqual,
            (true, true) => MatchOp::Regex,
            (true, false) => MatchOp::NotRegex,
        };
        Matcher::new(&self.name, op, &self.value)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<SilenceMatcher>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub updated_at_ms: i64,
    pub created_by: String,
    pub comment: String,
    #[serde(skip)]
    compiled: Vec<Matcher>,
}

impl Silence {
    pub fn state(&self, now_ms: i64) -> SilenceState {
        if self.ends_at_ms <= now_ms {
            SilenceState::Expired
        } else if self.starts_at_ms > now_ms {
            SilenceState::Pending
        } else {
            SilenceState::Active
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        super::matcher::all_match(&self.compiled, labels)
    }
}

/// What a client asks for; `id` set means replace that silence.
#[derive(Debug, Clone)]
pub struct SilenceRequest {
    pub id: Option<String>,
    pub matchers: Vec<SilenceMatcher>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SilenceFile {
    version: u32,
    silences: Vec<Silence>,
}

#[derive(Debug)]
pub struct Silences {
    path: Option<PathBuf>,
    silences: Vec<Silence>,
}

impl Silences {
    /// In memory only (tests).
    pub fn in_memory() -> Self {
        Self { path: None, silences: Vec::new() }
    }

    /// Reads `path` if it exists; a damaged file is reported and an empty set is used.
    pub fn open(path: &Path) -> (Self, Option<String>) {
        let mut silences = Self { path: Some(path.to_owned()), silences: Vec::new() };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (silences, None),
            Err(err) => return (silences, Some(format!("cannot read silences from {}: {err}", path.display()))),
        };
        match serde_json::from_slice::<SilenceFile>(&bytes) {
            Ok(file) if file.version == FORMAT_VERSION => {
                for mut silence in file.silences {
                    match silence.matchers.iter().map(SilenceMatcher::compile).collect::<Result<Vec<_>, _>>() {
                        Ok(compiled) => {
                            silence.compiled = compiled;
                            silences.silences.push(silence);
                        }
                        Err(err) => tracing::warn!(id = %silence.id, error = %err, "stored silence dropped"),
                    }
                }
                (silences, None)
            }
            Ok(file) => (silences, Some(format!("silences file version {} not understood", file.version))),
            Err(err) => (silences, Some(format!("silences in {} are not valid JSON: {err}", path.display()))),
        }
    }

    pub fn all(&self) -> &[Silence] {
        &self.silences
    }

    pub fn get(&self, id: &str) -> Option<&Silence> {
        self.silences.iter().find(|s| s.id == id)
    }

    /// IDs of the active silences that match `labels`.
    pub fn muting(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> Vec<String> {
        self.silences
            .iter()
            .filter(|s| s.state(now_ms) == SilenceState::Active && s.matches(labels))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Creates or replaces a silence and saves; returns its ID. Like
    /// Alertmanager, changing an active silence's matchers expires it and
    /// creates a new one.
    pub fn set(&mut self, request: SilenceRequest, now_ms: i64) -> Result<String, SilenceError> {
        if request.matchers.is_empty() {
            return Err(SilenceError::NoMatchers);
        }
        let compiled = request.matchers.iter().map(SilenceMatcher::compile).collect::<Result<Vec<_>, _>>()?;
        if compiled.iter().all(|m| m.matches_value("")) {
            return Err(SilenceError::MatchesEverything);
        }
        if request.ends_at_ms <= request.starts_at_ms {
            return Err(SilenceError::EndsBeforeStart);
        }
        if request.ends_at_ms <= now_ms {
            return Err(SilenceError::AlreadyExpired);
        }
        let starts_at_ms = request.starts_at_ms.max(now_ms);
        let mut id = new_id();
        if let Some(existing_id) = &request.id {
            let index = self
                .silences
                .iter()
                .position(|s| &s.id == existing_id)
                .ok_or_else(|| SilenceError::NotFound(existing_id.clone()))?;
            let existing = &mut self.silences[index];
            let same_matchers = existing.compiled == compiled;
            match existing.state(now_ms) {
                SilenceState::Expired => return Err(SilenceError::Expired(existing_id.clone())),
                SilenceState::Pending => id = existing_id.clone(),
                SilenceState::Active if same_matchers => id = existing_id.clone(),
                SilenceState::Active => {
                    existing.ends_at_ms = now_ms;
                    existing.updated_at_ms = now_ms;
                }
            }
            if id == *existing_id {
                self.silences.remove(index);
            }
        }
        self.silences.push(Silence {
            id: id.clone(),
            matchers: request.matchers,
            starts_at_ms,
            ends_at_ms: request.ends_at_ms,
            updated_at_ms: now_ms,
            created_by: request.created_by,
            comment: request.comment,
            compiled,
        });
        self.gc(now_ms);
        self.save()?;
        Ok(id)
    }

    /// Expires a silence now and saves.
    pub fn expire(&mut self, id: &str, now_ms: i64) -> Result<(), SilenceError> {
        let silence =
            self.silences.iter_mut().find(|s| s.id == id).ok_or_else(|| SilenceError::NotFound(id.to_owned()))?;
        match silence.state(now_ms) {
            SilenceState::Expired => return Err(SilenceError::Expired(id.to_owned())),
            SilenceState::Pending => silence.starts_at_ms = now_ms,
            SilenceState::Active => {}
        }
        silence.ends_at_ms = now_ms;
        silence.updated_at_ms = now_ms;
        self.save()
    }

    fn gc(&mut self, now_ms: i64) {
        self.silences.retain(|s| s.ends_at_ms + RETENTION_MS > now_ms);
    }

    fn save(&self) -> Result<(), SilenceError> {
        let Some(path) = &self.path else { return Ok(()) };
        let file = SilenceFile { version: FORMAT_VERSION, silences: self.silences.clone() };
        write_atomically(path, &serde_json::to_vec(&file).expect("silences serialize"))
            .map_err(|source| SilenceError::Write { path: path.clone(), source })
    }
}

/// Writes `bytes` to `path` so a crash leaves the old or the new file, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// A random version-4 UUID, the form Alertmanager's silence IDs take.
fn new_id() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, value: &str, starts: i64, ends: i64) -> SilenceRequest {
        SilenceRequest {
            id: None,
            matchers: vec![SilenceMatcher { name: name.into(), value: value.into(), is_regex: false, is_equal: true }],
            starts_at_ms: starts,
            ends_at_ms: ends,
            created_by: "ops".into(),
            comment: "maintenance".into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn states_muting_and_expiry() {
        let mut silences = Silences::in_memory();
        let now = 1_000_000;
        let active = silences.set(request("alertname", "DiskFull", now - 10, now + 1000), now).unwrap();
        let pending = silences.set(request("alertname", "CpuHigh", now + 500, now + 1000), now).unwrap();
        assert_ne!(active, pending);
        assert_eq!(active.len(), 36);
        assert_eq!(silences.get(&active).unwrap().state(now), SilenceState::Active);
        assert_eq!(silences.get(&pending).unwrap().state(now), SilenceState::Pending);
        assert_eq!(silences.muting(&labels(&[("alertname", "DiskFull")]), now), vec![active.clone()]);
        assert!(silences.muting(&labels(&[("alertname", "CpuHigh")]), now).is_empty(), "pending does not mute");
        assert_eq!(silences.muting(&labels(&[("alertname", "CpuHigh")]), now + 600).len(), 1);
        assert!(silences.muting(&labels(&[("alertname", "DiskFull")]), now + 1000).is_empty(), "expired");
        silences.expire(&active, now + 1).unwrap();
        assert_eq!(silences.get(&active).unwrap().state(now + 1), SilenceState::Expired);
        assert!(matches!(silences.expire(&active, now + 2), Err(SilenceError::Expired(_))));
        assert!(matches!(silences.expire("nope", now), Err(SilenceError::NotFound(_))));
    }

    #[test]
    fn bad_silences_are_refused() {
        let mut silences = Silences::in_memory();
        let now = 1_000_000;
        assert!(matches!(silences.set(request("a", "", now, now + 10), now), Err(SilenceError::MatchesEverything)));
        assert!(matches!(silences.set(request("a", "b", now, now), now), Err(SilenceError::EndsBeforeStart)));
        assert!(matches!(silences.set(request("a", "b", 0, 10), now), Err(SilenceError::AlreadyExpired)));
        let mut bad = request("a", "(", now, now + 10);
        bad.matchers[0].is_regex = true;
        assert!(matches!(silences.set(bad, now), Err(SilenceError::Matcher(_))));
    }

    #[test]
    fn silences_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router/silences.json");
        let now = 1_000_000;
        let id = {
            let (mut silences, err) = Silences::open(&path);
            assert!(err.is_none());
            silences.set(request("alertname", "DiskFull", now, now + 1000), now).unwrap()
        };
        let (reopened, err) = Silences::open(&path);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(reopened.get(&id).unwrap().comment, "maintenance");
        assert_eq!(reopened.muting(&labels(&[("alertname", "DiskFull")]), now + 1), vec![id]);
        std::fs::write(&path, b"{not json").unwrap();
        let (broken, err) = Silences::open(&path);
        assert!(err.is_some() && broken.all().is_empty());
    }
}
