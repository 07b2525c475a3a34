//! Who agents are, and who may become one.
//!
//! - `tokens`: enrollment tokens, stored only as hashes.
//! - `signer`: the fleet CA's key, signing certificates at enrollment and renewal.
//! - `inventory`: the certificates known and the revocation list, persisted.
//! - `quic`: enrollment connections (ALPN `herd-enroll`) and renewal streams
//!   on agent connections.
//!
//! The admin HTTP routes (`/api/v1/identity/...`) that the CLI's `token` and
//! `cert` commands call are in `api/identity.rs`; this module knows no HTTP.
//!
//! [`IdentityManager`] owns them (`apply_config`, `run`, `stop`). Ingest
//! asks it to [`admit`](IdentityManager::admit) every agent connection
//! (revoked certificates are closed at once) and to
//! [`guard`](IdentityManager::guard) the ones it admitted: a connection is
//! closed within moments of its certificate being revoked, and when the
//! certificate expires. [`Admission::stamp`] applies the identity to every
//! series an agent defines: `instance` is the agent's name and its trusted
//! labels override whatever the agent put on the series. This module knows
//! no store and no PromQL.

pub mod inventory;
pub mod quic;
pub mod signer;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use herd_common::config::aggregator::AggregatorConfig;
use herd_common::config::identity::IdentityConfig;
use herd_common::identity::CertInfo;
use herd_common::metric::Labels;
use herd_common::protocol::enroll::RefusalReason;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use inventory::{CertRecord, Inventory, RevokeTarget, unix_ms};
use signer::Signer;
use tokens::{TokenRecord, TokenSpec, TokenStore};

/// QUIC close codes of identity decisions (ingest's are 0 to 4, the agent's failback 5).
pub const CLOSE_REVOKED: u32 = 6;
pub const CLOSE_CERT_EXPIRED: u32 = 7;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({detail}): fix or remove it")]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the system's random number generator failed")]
    Random,
}

/// How often certificates first seen on agent connections are written.
const SEEN_WRITE_PERIOD: Duration = Duration::from_secs(1);

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, PersistError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PersistError::Damaged { path: path.to_owned(), detail: e.to_string() }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PersistError::Read { path: path.to_owned(), source }),
    }
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), PersistError> {
    let bytes = serde_json::to_vec_pretty(value).expect("identity state serialises");
    crate::alertmanager::silence::write_atomically(path, &bytes)
        .map_err(|source| PersistError::Write { path: path.to_owned(), source })
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityStartError {
    #[error("identity state under {dir}: {source}")]
    State { dir: PathBuf, source: PersistError },
}

/// Errors of the admin operations.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such {what}: {id}")]
    NotFound { what: &'static str, id: String },
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// Counters for `/metrics` and the store.
#[derive(Debug, Default)]
pub struct IdentityStats {
    pub enrolled: AtomicU64,
    pub renewed: AtomicU64,
    /// Enrollment refusals by reason.
    pub enroll_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Renewal refusals by reason.
    pub renew_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Agent connections closed for their certificate (`revoked`, `expired`), at connect or later.
    pub connections_closed: Mutex<BTreeMap<&'static str, u64>>,
}

impl IdentityStats {
    fn count(map: &Mutex<BTreeMap<&'static str, u64>>, reason: &'static str) {
        *map.lock().expect("stats lock is never poisoned").entry(reason).or_default() += 1;
    }

    /// Every counter as (metric, reason label, value), for the store.
    pub fn figures(&self) -> Vec<(&'static str, Option<&'static str>, u64)> {
        let mut figures = vec![
            ("herd_enroll_issued_total", None, self.enrolled.load(Ordering::Relaxed)),
            ("herd_cert_renewals_total", None, self.renewed.load(Ordering::Relaxed)),
        ];
        for (name, map) in [
            ("herd_enroll_refused_total", &self.enroll_refused),
            ("herd_cert_renewals_refused_total", &self.renew_refused),
            ("herd_identity_connections_closed_total", &self.connections_closed),
        ] {
            for (reason, count) in map.lock().expect("stats lock is never poisoned").iter() {
                figures.push((name, Some(*reason), *count));
            }
        }
        figures
    }

    /// The counters in Prometheus text format, for `/metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, value) in [
            ("herd_enroll_issued_total", "Agent certificates signed at enrollment.", &self.enrolled),
            ("herd_cert_renewals_total", "Agent certificates signed at renewal.", &self.renewed),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        for (name, help, map) in [
            ("herd_enroll_refused_total", "Enrollments refused, by reason.", &self.enroll_refused),
            ("herd_cert_renewals_refused_total", "Renewals refused, by reason.", &self.renew_refused),
            (
                "herd_identity_connections_closed_total",
                "Agent connections closed or refused for their certificate (revoked, expired).",
                &self.connections_closed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (reason, count) in map.lock().expect("stats lock is never poisoned").iter() {
                let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
            }
        }
    }
}

/// The identity of one admitted agent connection, from its verified certificate.
#[derive(Debug)]
pub struct Admission {
    pub info: CertInfo,
    /// Set once the connection renewed its certificate (one renewal per connection).
    renewed: AtomicBool,
    /// Set once a claimed `instance` other than the name was logged.
    claim_logged: AtomicBool,
}

impl Admission {
    /// The identity of `connection`'s client certificate; `None` without one
    /// (or with an HTTP client's, which is not an agent's).
    pub fn of(connection: &quinn::Connection) -> Option<Self> {
        let chain = herd_common::tls::peer_chain(connection);
        let info = herd_common::identity::cert_info(chain.first()?.as_ref()).ok()?;
        if info.kind == herd_common::identity::CertKind::Client {
            warn!(name = %info.name, "an HTTP client certificate was presented as an agent's: refused");
            return None;
        }
        Some(Self::new(info))
    }

    pub fn new(info: CertInfo) -> Self {
        Self { info, renewed: AtomicBool::new(false), claim_logged: AtomicBool::new(false) }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn trusted_labels(&self) -> &[(String, String)] {
        &self.info.labels
    }

    /// The series as stored: `instance` is the agent's name and every
    /// trusted label has its trusted value, whatever the agent sent.
    pub fn stamp(&self, labels: Labels) -> Labels {
        let claimed = labels.get("instance").filter(|&claimed| claimed != self.info.name);
        if let Some(claimed) = claimed
            && !self.claim_logged.swap(true, Ordering::Relaxed)
        {
            warn!(agent = %self.info.name, claimed, "agent's instance label differs from its identity; using the identity");
        }
        let trusted = self.info.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let overrides = trusted.chain(std::iter::once(("instance", self.info.name.as_str())));
        // Later pairs win in `from_pairs`.
        let pairs = labels.into_pairs().into_iter().chain(overrides.map(|(k, v)| (k.to_owned(), v.to_owned())));
        Labels::from_pairs(pairs)
    }
}

struct State {
    tokens: TokenStore,
    inventory: Inventory,
    signer: Option<Signer>,
    ca_fingerprint: Option<String>,
    enrollment: bool,
}

pub struct IdentityManager {
    dir: PathBuf,
    state: Mutex<State>,
    /// Bumped on every revocation: guards of live connections re-check.
    revocations: tokio::sync::watch::Sender<u64>,
    stats: Arc<IdentityStats>,
}

/// A token as `token list` shows it (never the secret).
pub type TokenView = TokenRecord;
/// A certificate as `cert list` shows it, with its revocation time.
pub type CertView = (CertRecord, Option<i64>);

impl IdentityManager {
    /// Opens the identity state under `state_dir/identity` and applies `config`.
    pub fn open(config: &AggregatorConfig) -> Result<Arc<Self>, IdentityStartError> {
        let dir = config.state_dir.join("identity");
        let err = |source| IdentityStartError::State { dir: dir.clone(), source };
        let tokens = TokenStore::open(&dir.join("tokens.json")).map_err(err)?;
        let inventory = Inventory::open(&dir).map_err(err)?;
        let manager = Arc::new(Self {
            dir: dir.clone(),
            state: Mutex::new(State { tokens, inventory, signer: None, ca_fingerprint: None, enrollment: false }),
            revocations: tokio::sync::watch::Sender::new(0),
            stats: Arc::new(IdentityStats::default()),
        });
        manager.apply_config(&config.identity, &config.tls.ca_file);
        Ok(manager)
    }

    /// Loads the CA key and settings; without a usable key, enrollment and
    /// renewal are refused (and said so once here) while admission goes on.
    pub fn apply_config(&self, config: &IdentityConfig, ca_file: &Path) {
        let fingerprint =
            std::fs::read_to_string(ca_file).ok().and_then(|pem| herd_common::identity::ca_fingerprint(&pem).ok());
        let signer = match Signer::load(ca_file, &config.ca_key_file, config.agent_cert_lifetime) {
            Ok(signer) => {
                info!(
                    enrollment = config.enrollment,
                    lifetime_s = config.agent_cert_lifetime.as_secs(),
                    "agent certificates are signed here (enrollment and renewal)"
                );
                Some(signer)
            }
            Err(err) => {
                warn!(error = %err, key = %config.ca_key_file.display(), "no usable CA key: enrollment and renewal are refused on this aggregator");
                None
            }
        };
        let mut state = self.lock();
        state.signer = signer;
        state.ca_fingerprint = fingerprint;
        state.enrollment = config.enrollment;
    }

    /// Housekeeping until `shutdown`: certificates first seen on agent
    /// connections are written once a second. Everything else is driven by
    /// ingest and the API, and written as it changes.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SEEN_WRITE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let manager = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || manager.write_seen()).await;
        }
        self.stop();
    }

    /// Writes what is left to write.
    pub fn stop(&self) {
        self.write_seen();
        info!(dir = %self.dir.display(), "identity manager stopped");
    }

    /// Writes the certificate inventory if connections noted new certificates (blocking).
    fn write_seen(&self) {
        let Some((path, file)) = self.lock().inventory.take_unsaved() else { return };
        if let Err(err) = write_json(&path, &file) {
            self.lock().inventory.unsaved_again();
            warn!(error = %err, "cannot record the agents' certificates in the inventory; will retry");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("identity lock is never poisoned")
    }

    pub fn stats(&self) -> Arc<IdentityStats> {
        Arc::clone(&self.stats)
    }

    // ---- agent connections ----

    /// Whether an agent connection with this certificate may proceed; notes
    /// certificates issued elsewhere in the inventory.
    pub fn admit(&self, admission: &Admission) -> Result<(), RefusalReason> {
        let mut state = self.lock();
        if state.inventory.is_revoked(&admission.info) {
            IdentityStats::count(&self.stats.connections_closed, "revoked");
            return Err(RefusalReason::Revoked);
        }
        state.inventory.note_seen(&admission.info, unix_ms(SystemTime::now()));
        Ok(())
    }

    /// Whether this certificate is revoked (by serial or by name).
    pub fn is_revoked(&self, info: &CertInfo) -> bool {
        self.lock().inventory.is_revoked(info)
    }

    /// Closes `connection` when its certificate is revoked or expires.
    pub fn guard(
        self: &Arc<Self>,
        connection: quinn::Connection,
        admission: Arc<Admission>,
        shutdown: CancellationToken,
    ) {
        let manager = Arc::clone(self);
        let mut revocations = self.revocations.subscribe();
        tokio::spawn(async move {
            let expires_in = admission.info.not_after.duration_since(SystemTime::now()).unwrap_or_default();
            let expiry = tokio::time::sleep(expires_in);
            tokio::pin!(expiry);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = connection.closed() => return,
                    _ = &mut expiry => {
                        IdentityStats::count(&manager.stats.connections_closed, "expired");
                        info!(agent = %admission.name(), serial = %admission.info.serial, "agent certificate expired: connection closed");
                        connection.close(CLOSE_CERT_EXPIRED.into(), b"certificate expired: renew earlier or re-enroll this agent");
                        return;
                    }
                    changed = revocations.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if manager.is_revoked(&admission.info) {
                            IdentityStats::count(&manager.stats.connections_closed, "revoked");
                            info!(agent = %admission.name(), serial = %admission.info.serial, "agent certificate revoked: connection closed");
                            connection.close(CLOSE_REVOKED.into(), b"certificate revoked: this agent must re-enroll");
                            return;
                        }
                    }
                }
            }
        });
    }

    // ---- admin operations (blocking: they write files; call from spawn_blocking) ----

    pub fn create_token(&self, spec: TokenSpec) -> Result<(String, TokenRecord), AdminError> {
        herd_common::identity::check_labels(&spec.labels).map_err(|e| AdminError::Invalid(e.to_string()))?;
        if spec.ttl_ms <= 0 {
            return Err(AdminError::Invalid("ttl must be above zero".into()));
        }
        if spec.max_uses == Some(0) {
            return Err(AdminError::Invalid("uses must be at least 1".into()));
        }
        let created_by = spec.created_by.clone();
        let (token, record) = self.lock().tokens.create(spec, unix_ms(SystemTime::now()))?;
        info!(token_id = %record.id, by = %created_by, uses = ?record.max_uses, "enrollment token created");
        Ok((token, record))
    }

    pub fn list_tokens(&self) -> Vec<TokenView> {
        self.lock().tokens.list().to_vec()
    }

    pub fn revoke_token(&self, id: &str) -> Result<(), AdminError> {
        if self.lock().tokens.revoke(id, unix_ms(SystemTime::now()))? {
            info!(token_id = %id, "enrollment token revoked");
            Ok(())
        } else {
            Err(AdminError::NotFound { what: "token", id: id.to_owned() })
        }
    }

    pub fn list_certificates(&self) -> Vec<CertView> {
        self.lock().inventory.list()
    }

    /// Revokes, persists, then closes the live connections it covers.
    pub fn revoke(&self, target: &RevokeTarget) -> Result<Vec<String>, AdminError> {
        match target {
            RevokeTarget::Name(name) => {
                herd_common::identity::check_name(name).map_err(|e| AdminError::Invalid(e.to_string()))?
            }
            RevokeTarget::Serial(serial) if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Err(AdminError::Invalid(format!(
                    "{serial:?} is not a serial (hex digits, as `cert list` shows)"
                )));
            }
            RevokeTarget::Serial(_) => {}
        }
        let serials = self.lock().inventory.revoke(target, unix_ms(SystemTime::now()))?;
        info!(target = ?target, serials = serials.len(), "certificates revoked");
        self.revocations.send_modify(|generation| *generation += 1);
        Ok(serials)
    }

    pub fn ca_fingerprint(&self) -> Option<String> {
        self.lock().ca_fingerprint.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn admission(labels: &[(&str, &str)]) -> Admission {
        Admission::new(CertInfo {
            kind: herd_common::identity::CertKind::Agent,
            name: "db-1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            serial: "01".into(),
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH + Duration::from_secs(1),
        })
    }

    fn check(admission: &Admission, sent: &[(&str, &str)], stored: &[(&str, &str)]) {
        assert_eq!(
            admission.stamp(Labels::from_pairs(sent.iter().copied())),
            Labels::from_pairs(stored.iter().copied())
        );
    }

    #[test]
    fn trusted_labels_and_the_name_override_what_the_agent_claims() {
        let trusted = admission(&[("role", "postgres")]);
        check(
            &trusted,
            &[("__name__", "up"), ("instance", "db-2"), ("role", "web"), ("env", "dev")],
            &[("__name__", "up"), ("instance", "db-1"), ("role", "postgres"), ("env", "dev")],
        );
        check(&trusted, &[("__name__", "x")], &[("__name__", "x"), ("instance", "db-1"), ("role", "postgres")]);
        check(
            &trusted,
            &[("__name__", "x"), ("instance", "db-1"), ("role", "postgres")],
            &[("__name__", "x"), ("instance", "db-1"), ("role", "postgres")],
        );
        check(&admission(&[]), &[("__name__", "x"), ("instance", "web-9")], &[("__name__", "x"), ("instance", "db-1")]);
    }
}
