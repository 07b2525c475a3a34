//! Certificate renewal, beside the uplink. Two thirds into the current
//! certificate's lifetime the [`Renewer`] takes the uplink's live
//! connection (which the uplink shares through a [`RenewalLink`]), opens a
//! renewal stream on it and sends a CSR for a new key; the aggregator signs
//! it for the same identity and labels. The new pair is written over the
//! old files, and a client configuration built from it is handed back: the
//! uplink closes the connection and reconnects with it at once (batches not
//! yet acknowledged stay in the buffer and are resent, the aggregator
//! deduplicates them, so nothing is lost or stored twice).
//!
//! A certificate that expired before it could be renewed (the agent was
//! away) cannot be renewed: the agent says so in one log line, keeps
//! collecting into its buffer, and picks up the files `herd-agent enroll`
//! writes without a restart.

use std::time::{Duration, SystemTime};

use herd_common::identity::{self, CertInfo};
use herd_common::protocol::enroll::{self as wire, IssueResponse, RENEW_MAGIC, RenewRequest};
use herd_common::tls::{PemPair, TlsFiles, TlsMaterial};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ExchangeError, read_response, write_replacing};
use crate::uplink::UplinkStats;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Longest one renewal exchange may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the certificate file is checked while it is expired.
const EXPIRED_POLL: Duration = Duration::from_secs(2);
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// The uplink's side: where it publishes its live connection and receives
/// client configurations for new certificates.
#[derive(Debug)]
pub struct RenewalLink {
    pub connection: watch::Sender<Option<quinn::Connection>>,
    pub client_config: watch::Receiver<Option<quinn::ClientConfig>>,
}

pub struct Renewer {
    files: TlsFiles,
    idle_timeout: Duration,
    current: Option<CertInfo>,
    connection: watch::Receiver<Option<quinn::Connection>>,
    client_config: watch::Sender<Option<quinn::ClientConfig>>,
    /// Printed when the certificate expired: how to enroll again.
    enroll_hint: String,
    /// Where the self-metrics read expiry and renewals.
    stats: Arc<UplinkStats>,
}

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("refused ({}): {message}", reason.as_str())]
    Refused { reason: wire::RefusalReason, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Files(#[from] super::IdentityFileError),
}

fn read_info(files: &TlsFiles) -> Option<CertInfo> {
    let pem = std::fs::read_to_string(&files.cert_file).ok()?;
    identity::cert_info_pem(&pem).ok()
}

fn modified(files: &TlsFiles) -> Option<SystemTime> {
    std::fs::metadata(&files.cert_file).and_then(|m| m.modified()).ok()
}

impl Renewer {
    /// The renewer and the uplink's end of their link. `enroll_hint` is the
    /// command line that would enroll this agent again.
    pub fn new(
        files: TlsFiles,
        idle_timeout: Duration,
        enroll_hint: String,
        stats: Arc<UplinkStats>,
    ) -> (Self, RenewalLink) {
        let (connection_tx, connection_rx) = watch::channel(None);
        let (config_tx, config_rx) = watch::channel(None);
        let current = read_info(&files);
        let renewer = Self {
            files,
            idle_timeout,
            current,
            connection: connection_rx,
            client_config: config_tx,
            enroll_hint,
            stats,
        };
        renewer.note_expiry();
        (renewer, RenewalLink { connection: connection_tx, client_config: config_rx })
    }

    fn note_expiry(&self) {
        let seconds = self.current.as_ref().and_then(|c| c.not_after.duration_since(std::time::UNIX_EPOCH).ok());
        self.stats.certificate_expiry_seconds.store(seconds.map_or(0, |d| d.as_secs()), Ordering::Relaxed);
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut expired_logged = false;
        loop {
            let now = SystemTime::now();
            let Some(current) = self.current.clone() else {
                warn!(file = %self.files.cert_file.display(), "cannot read the agent certificate: renewal is off");
                return;
            };
            if current.is_expired(now) {
                if !expired_logged {
                    error!(
                        identity = %current.name,
                        expired = %humantime::format_rfc3339_seconds(current.not_after),
                        "agent certificate expired: this agent must re-enroll: {}",
                        self.enroll_hint
                    );
                    expired_logged = true;
                }
                if self.wait_for_new_files(&shutdown).await.is_none() {
                    return;
                }
                continue;
            }
            expired_logged = false;
            let due = current.renewal_due().duration_since(now).unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(due) => {}
            }
            let Some(connection) = self.live_connection(&shutdown).await else { return };
            match timeout(RENEW_TIMEOUT, self.renew_over(&connection, &current)).await {
                Ok(Ok(renewed)) => {
                    info!(
                        identity = %renewed.name,
                        serial = %renewed.serial,
                        expires = %humantime::format_rfc3339_seconds(renewed.not_after),
                        "agent certificate renewed"
                    );
                    self.current = Some(renewed);
                    self.note_expiry();
                    self.stats.certificate_renewals.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(err)) => self.retry_later(&current, &err.to_string(), &shutdown).await,
                Err(_) => self.retry_later(&current, "timed out", &shutdown).await,
            }
        }
    }

    async fn retry_later(&self, current: &CertInfo, error: &str, shutdown: &CancellationToken) {
        self.stats.certificate_renewal_failures.fetch_add(1, Ordering::Relaxed);
        let left = current.not_after.duration_since(SystemTime::now()).unwrap_or_default();
        let retry = (left / 10).clamp(MIN_RETRY, MAX_RETRY);
        warn!(identity = %current.name, error, retry_in_ms = retry.as_millis() as u64, "certificate renewal failed");
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(retry) => {}
        }
    }

    /// The uplink's connection once it is up; `None` on shutdown.
    async fn live_connection(&mut self, shutdown: &CancellationToken) -> Option<quinn::Connection> {
        loop {
            let live = self.connection.borrow_and_update().clone().filter(|c| c.close_reason().is_none());
            if let Some(connection) = live {
                return Some(connection);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                changed = self.connection.changed() => changed.ok()?,
            }
        }
    }

    /// Waits until the certificate file holds a certificate that has not
    /// expired (written by `herd-agent enroll`), then hands it to the uplink.
    async fn wait_for_new_files(&mut self, shutdown: &CancellationToken) -> Option<()> {
        let before = modified(&self.files);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(EXPIRED_POLL) => {}
            }
            if modified(&self.files) == before {
                continue;
            }
            let Some(info) = read_info(&self.files).filter(|i| !i.is_expired(SystemTime::now())) else { continue };
            match self.client_config_from_files() {
                Ok(config) => {
                    info!(identity = %info.name, "new agent certificate found: reconnecting with it");
                    self.current = Some(info);
                    self.note_expiry();
                    self.client_config.send_replace(Some(config));
                    return Some(());
                }
                Err(err) => warn!(error = %err, "the new agent certificate files cannot be used yet"),
            }
        }
    }

    fn client_config_from_files(&self) -> Result<quinn::ClientConfig, String> {
        let material = TlsMaterial::load(&self.files).map_err(|e| e.to_string())?;
        herd_common::tls::client_config(&material, self.idle_timeout).map_err(|e| e.to_string())
    }

    async fn renew_over(&self, connection: &quinn::Connection, current: &CertInfo) -> Result<CertInfo, RenewError> {
        let request = identity::generate_key_request().map_err(|e| RenewError::Invalid(e.to_string()))?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| ExchangeError::Connection(e.to_string()))?;
        let mut bytes = RENEW_MAGIC.to_vec();
        bytes.extend(
            wire::encode("renew request", &RenewRequest { csr_der: request.csr_der })
                .map_err(|e| RenewError::Invalid(e.to_string()))?,
        );
        send.write_all(&bytes).await.map_err(|e| ExchangeError::Connection(e.to_string()))?;
        let _ = send.finish();
        let issued = match read_response(&mut recv).await? {
            IssueResponse::Issued(issued) => issued,
            IssueResponse::Refused(refusal) => {
                return Err(RenewError::Refused { reason: refusal.reason, message: refusal.message });
            }
        };
        let info = identity::cert_info_pem(&issued.cert_pem).map_err(|e| RenewError::Invalid(e.to_string()))?;
        let pair = PemPair { cert_pem: issued.cert_pem, key_pem: request.key_pem };
        let fits = identity::key_matches_certificate(&pair).unwrap_or(false);
        if info.name != current.name || info.labels != current.labels || !fits {
            return Err(RenewError::Invalid(format!(
                "the renewed certificate names {:?}, not this agent ({:?})",
                info.name, current.name
            )));
        }
        // A configuration is built before anything is replaced, so a bad answer leaves the old files.
        let material = TlsMaterial {
            ca_pem: std::fs::read_to_string(&self.files.ca_file).unwrap_or(issued.ca_pem),
            identity: pair.clone(),
        };
        let config = herd_common::tls::client_config(&material, self.idle_timeout)
            .map_err(|e| RenewError::Invalid(e.to_string()))?;
        write_replacing(&self.files.key_file, pair.key_pem.as_bytes(), 0o600)?;
        write_replacing(&self.files.cert_file, pair.cert_pem.as_bytes(), 0o644)?;
        self.client_config.send_replace(Some(config));
        Ok(info)
    }
}
