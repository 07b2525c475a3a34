//! The certificates the aggregator knows and the revocation list, under
//! `state_dir/identity/`: `certificates.json` (every certificate it signed
//! at enrollment or renewal, and those issued by hand that connected) and
//! `revocations.json` (serials, and names with the time before which their
//! certificates are revoked). Both are replaced atomically; a revocation is
//! on disk before it is reported done, so it holds across restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use herd_common::identity::CertInfo;
use serde::{Deserialize, Serialize};

use super::PersistError;

/// Expired certificates stay listed this long.
const KEEP_EXPIRED_MS: i64 = 24 * 3600 * 1000;

pub(crate) fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How a certificate came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CertSource {
    /// Signed at enrollment, paid for by token `token_id`.
    Enrolled { token_id: String },
    /// Signed at renewal, over a connection authenticated by `previous_serial`.
    Renewed { previous_serial: String },
    /// Issued elsewhere (`cert issue --agent`), first seen when it connected.
    Seen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub issued_ms: i64,
    pub not_after_ms: i64,
    pub source: CertSource,
}

impl CertRecord {
    pub fn new(info: &CertInfo, source: CertSource) -> Self {
        Self {
            serial: info.serial.clone(),
            name: info.name.clone(),
            labels: info.labels.clone(),
            issued_ms: unix_ms(info.issued_at()),
            not_after_ms: unix_ms(info.not_after),
            source,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Revocations {
    /// Serial → when it was revoked.
    serials: BTreeMap<String, i64>,
    /// Name → certificates of that name issued at or before this time are revoked.
    names: BTreeMap<String, i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CertFile {
    certificates: Vec<CertRecord>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every certificate of this agent issued until now, known or not.
    Name(String),
    Serial(String),
}

pub struct Inventory {
    certs_path: PathBuf,
    revocations_path: PathBuf,
    certs: BTreeMap<String, CertRecord>,
    revocations: Revocations,
    /// Certificates noted as seen since the file was last written.
    unsaved: bool,
}

impl Inventory {
    pub fn open(dir: &Path) -> Result<Self, PersistError> {
        let certs_path = dir.join("certificates.json");
        let revocations_path = dir.join("revocations.json");
        let certs: CertFile = super::read_json(&certs_path)?.unwrap_or_default();
        let revocations: Revocations = super::read_json(&revocations_path)?.unwrap_or_default();
        Ok(Self {
            certs: certs.certificates.into_iter().map(|c| (c.serial.clone(), c)).collect(),
            certs_path,
            revocations_path,
            revocations,
            unsaved: false,
        })
    }

    fn save_certs(&mut self) -> Result<(), PersistError> {
        self.unsaved = false;
        super::write_json(&self.certs_path, &self.cert_file())
    }

    fn cert_file(&self) -> CertFile {
        CertFile { certificates: self.certs.values().cloned().collect() }
    }

    /// The certificate file to write if certificates were noted since the
    /// last write (its path and contents), taken so it can be written
    /// without holding the inventory; [`Inventory::unsaved_again`] if that fails.
    pub fn take_unsaved(&mut self) -> Option<(PathBuf, CertFile)> {
        std::mem::take(&mut self.unsaved).then(|| (self.certs_path.clone(), self.cert_file()))
    }

    pub fn unsaved_again(&mut self) {
        self.unsaved = true;
    }

    fn issued_ms(&self, info: &CertInfo) -> i64 {
        self.certs.get(&info.serial).map_or_else(|| unix_ms(info.issued_at()), |c| c.issued_ms)
    }

    /// Whether `info`'s certificate is revoked, by serial or by name.
    pub fn is_revoked(&self, info: &CertInfo) -> bool {
        self.revocations.serials.contains_key(&info.serial)
            || self.revocations.names.get(&info.name).is_some_and(|&cutoff| self.issued_ms(info) <= cutoff)
    }

    /// Records a certificate the aggregator just signed.
    pub fn record(&mut self, record: CertRecord, now_ms: i64) -> Result<(), PersistError> {
        self.prune(now_ms);
        self.certs.insert(record.serial.clone(), record);
        self.save_certs()
    }

    /// Records a certificate issued elsewhere the first time it connects.
    /// Written within a second by the manager's housekeeping rather than on
    /// the connection's path: a fleet of such certificates connecting at once
    /// would otherwise rewrite the whole file once per agent. A record lost
    /// to a crash is noted again at the next connection; revocation does not
    /// depend on it (serials and names are checked against the certificate).
    pub fn note_seen(&mut self, info: &CertInfo, now_ms: i64) {
        if self.certs.contains_key(&info.serial) {
            return;
        }
        self.prune(now_ms);
        self.certs.insert(info.serial.clone(), CertRecord::new(info, CertSource::Seen));
        self.unsaved = true;
    }

    /// A certificate of `name` that is neither expired nor revoked, if any.
    pub fn live_holder(&self, name: &str, now_ms: i64) -> Option<&CertRecord> {
        self.certs.values().find(|c| {
            c.name == name
                && c.not_after_ms > now_ms
                && !self.revocations.serials.contains_key(&c.serial)
                && self.revocations.names.get(name).is_none_or(|&cutoff| c.issued_ms > cutoff)
        })
    }

    /// Revokes; returns the known serials it covers (a name may also cover
    /// certificates never seen here). Persisted before returning.
    pub fn revoke(&mut self, target: &RevokeTarget, now_ms: i64) -> Result<Vec<String>, PersistError> {
        let serials: Vec<String> = match target {
            RevokeTarget::Name(name) => {
                let cutoff = self.revocations.names.entry(name.clone()).or_insert(now_ms);
                *cutoff = (*cutoff).max(now_ms);
                self.certs.values().filter(|c| &c.name == name).map(|c| c.serial.clone()).collect()
            }
            RevokeTarget::Serial(serial) => {
                let serial = herd_common::identity::normalize_serial(serial);
                self.revocations.serials.entry(serial.clone()).or_insert(now_ms);
                vec![serial]
            }
        };
        super::write_json(&self.revocations_path, &self.revocations)?;
        Ok(serials)
    }

    /// Every known certificate with when it was revoked (if it was).
    pub fn list(&self) -> Vec<(CertRecord, Option<i64>)> {
        let mut list: Vec<(CertRecord, Option<i64>)> = self
            .certs
            .values()
            .map(|c| {
                let by_serial = self.revocations.serials.get(&c.serial).copied();
                let by_name = self.revocations.names.get(&c.name).copied().filter(|&cutoff| c.issued_ms <= cutoff);
                (c.clone(), by_serial.or(by_name))
            })
            .collect();
        list.sort_by(|a, b| (&a.0.name, a.0.issued_ms).cmp(&(&b.0.name, b.0.issued_ms)));
        list
    }

    /// Forgets certificates expired for a day, and their serial revocations
    /// (an expired certificate is refused anyway).
    fn prune(&mut self, now_ms: i64) {
        let expired: Vec<String> = self
            .certs
            .values()
            .filter(|c| now_ms.saturating_sub(c.not_after_ms) >= KEEP_EXPIRED_MS)
            .map(|c| c.serial.clone())
            .collect();
        for serial in &expired {
            self.certs.remove(serial);
            self.revocations.serials.remove(serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info(name: &str, serial: &str, issued_s: u64) -> CertInfo {
        let issued = UNIX_EPOCH + Duration::from_secs(issued_s);
        CertInfo {
            kind: herd_common::identity::CertKind::Agent,
            name: name.into(),
            labels: vec![],
            serial: serial.into(),
            not_before: issued - Duration::from_secs(1),
            not_after: issued + Duration::from_secs(10),
        }
    }

    #[test]
    fn revocations_by_name_and_serial_persist_and_spare_later_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let mut inventory = Inventory::open(dir.path()).unwrap();
        let (old, renewed, other) = (info("a", "1", 100), info("a", "2", 105), info("b", "3", 100));
        inventory.record(CertRecord::new(&old, CertSource::Seen), 100_000).unwrap();
        inventory
            .record(CertRecord::new(&renewed, CertSource::Renewed { previous_serial: "1".into() }), 105_000)
            .unwrap();
        assert!(inventory.live_holder("a", 106_000).is_some());
        let covered = inventory.revoke(&RevokeTarget::Name("a".into()), 106_000).unwrap();
        assert_eq!(covered, ["1", "2"]);
        assert!(inventory.live_holder("a", 106_000).is_none());
        let never_seen = info("a", "9", 90);
        let later = info("a", "4", 107);
        let inventory = Inventory::open(dir.path()).unwrap();
        assert!(inventory.is_revoked(&old) && inventory.is_revoked(&renewed) && inventory.is_revoked(&never_seen));
        assert!(!inventory.is_revoked(&later), "a certificate issued after the revocation is not covered");
        assert!(!inventory.is_revoked(&other));
        let mut inventory = inventory;
        inventory.revoke(&RevokeTarget::Serial("0003".into()), 106_000).unwrap();
        assert!(Inventory::open(dir.path()).unwrap().is_revoked(&other));
    }

    #[test]
    fn certificates_seen_on_connections_are_written_together_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut inventory = Inventory::open(dir.path()).unwrap();
        for n in 0..100 {
            inventory.note_seen(&info(&format!("agent-{n}"), &format!("{n:04}"), 100), 100_000);
        }
        assert!(!dir.path().join("certificates.json").exists(), "nothing written on the connection path");
        let (path, file) = inventory.take_unsaved().expect("unsaved certificates");
        assert!(inventory.take_unsaved().is_none(), "taken once");
        super::super::write_json(&path, &file).unwrap();
        let reopened = Inventory::open(dir.path()).unwrap();
        assert_eq!(reopened.list().len(), 100);
        inventory.note_seen(&info("agent-0", "0000", 100), 101_000);
        assert!(inventory.take_unsaved().is_none(), "a known certificate changes nothing");
    }
}
