//! Enrollment connections and renewal streams, over the aggregator's QUIC
//! port. Only bytes and time here; the decisions are the manager's
//! (`decide_enrollment`, `decide_renewal`), run on the blocking pool since
//! they write the token store and the inventory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use herd_common::identity;
use herd_common::protocol::enroll::{
    self, EnrollRequest, IssueResponse, Issued, LENGTH_PREFIX_BYTES, RENEW_MAGIC, Refusal, RefusalReason, RenewRequest,
};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::inventory::{CertRecord, CertSource, unix_ms};
use super::{Admission, IdentityManager, IdentityStats};

/// Longest an enrollment or renewal exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC close code of a finished enrollment connection.
const CLOSE_ENROLLED: u32 = 0;

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("timed out")]
    Timeout,
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("not a renewal stream")]
    BadMagic,
    #[error(transparent)]
    Codec(#[from] enroll::EnrollCodecError),
}

async fn read_message<T: serde::de::DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, ExchangeError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await?;
    let mut payload = vec![0u8; enroll::message_length(prefix)?];
    recv.read_exact(&mut payload).await?;
    Ok(enroll::decode(&payload)?)
}

async fn write_response(send: &mut quinn::SendStream, response: &IssueResponse) -> Result<(), ExchangeError> {
    send.write_all(&enroll::encode("issue response", response)?).await?;
    let _ = send.finish();
    Ok(())
}

fn refused(reason: RefusalReason, message: impl Into<String>) -> IssueResponse {
    IssueResponse::Refused(Refusal { reason, message: message.into() })
}

/// Whether a handshake's data (from `Connecting::handshake_data`) names the enrollment ALPN.
pub fn is_enrollment(handshake_data: Option<Box<dyn std::any::Any>>) -> bool {
    handshake_data
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == enroll::ENROLL_ALPN)
}

impl IdentityManager {
    /// Serves one enrollment connection: one request, one answer.
    pub async fn serve_enrollment(self: Arc<Self>, connection: quinn::Connection) {
        let remote = connection.remote_address();
        let exchange = async {
            let (mut send, mut recv) = connection.accept_bi().await?;
            let request: EnrollRequest = match read_message(&mut recv).await {
                Ok(request) => request,
                Err(err) => {
                    self.count_enroll_refusal(RefusalReason::InvalidRequest);
                    let _ = write_response(&mut send, &refused(RefusalReason::InvalidRequest, err.to_string())).await;
                    return Err(err);
                }
            };
            let manager = Arc::clone(&self);
            let response = tokio::task::spawn_blocking(move || manager.decide_enrollment(request, remote))
                .await
                .unwrap_or_else(|_| refused(RefusalReason::Unavailable, "enrollment failed on the aggregator"));
            write_response(&mut send, &response).await?;
            // The agent closes once it has read the answer.
            let _ = timeout(EXCHANGE_TIMEOUT, connection.closed()).await;
            Ok::<(), ExchangeError>(())
        };
        match timeout(EXCHANGE_TIMEOUT, exchange).await.unwrap_or(Err(ExchangeError::Timeout)) {
            Ok(()) => {}
            Err(err) => debug!(%remote, error = %err, "enrollment connection ended early"),
        }
        connection.close(CLOSE_ENROLLED.into(), b"enrollment done");
    }

    fn count_enroll_refusal(&self, reason: RefusalReason) {
        IdentityStats::count(&self.stats.enroll_refused, reason.as_str());
    }

    /// An enrollment handshake that failed: the agent refused our chain,
    /// which it does when the CA is not the one it pinned.
    pub fn enrollment_handshake_failed(&self, remote: std::net::SocketAddr, error: &quinn::ConnectionError) {
        self.count_enroll_refusal(RefusalReason::CaFingerprint);
        warn!(%remote, %error, reason = RefusalReason::CaFingerprint.as_str(), "enrollment refused: the agent did not accept this aggregator's CA (wrong --ca-fingerprint?)");
    }

    /// The enrollment decision: token, fingerprint, name, CSR; then the use
    /// is counted, the certificate signed and recorded.
    fn decide_enrollment(&self, request: EnrollRequest, remote: std::net::SocketAddr) -> IssueResponse {
        let now = SystemTime::now();
        let response = self.enrollment_response(&request, now);
        match &response {
            IssueResponse::Issued(issued) => {
                self.stats.enrolled.fetch_add(1, Ordering::Relaxed);
                info!(agent = %issued.name, %remote, labels = ?issued.labels, "agent enrolled");
            }
            IssueResponse::Refused(refusal) => {
                self.count_enroll_refusal(refusal.reason);
                // The token is never logged.
                warn!(%remote, name = %request.name, reason = refusal.reason.as_str(), "enrollment refused");
            }
        }
        response
    }

    fn enrollment_response(&self, request: &EnrollRequest, now: SystemTime) -> IssueResponse {
        let now_ms = unix_ms(now);
        let mut state = self.lock();
        if !state.enrollment {
            return refused(RefusalReason::Unavailable, "enrollment is off on this aggregator ([identity] enrollment)");
        }
        let token = match state.tokens.check(&request.token, now_ms) {
            Ok(token) => token.clone(),
            Err(reason) => {
                let message = match reason {
                    RefusalReason::TokenExpired => {
                        "the token has expired: create a new one with `herd-aggregator token create`"
                    }
                    RefusalReason::TokenUsedUp => {
                        "the token has been used as many times as it allows: create a new one"
                    }
                    RefusalReason::TokenRevoked => "the token was revoked: create a new one",
                    _ => "unknown token: check the token file (as `herd-aggregator token create` printed it)",
                };
                return refused(reason, message);
            }
        };
        let pinned = identity::parse_fingerprint(&request.ca_fingerprint).ok();
        if pinned.is_none() || pinned != state.ca_fingerprint {
            return refused(
                RefusalReason::CaFingerprint,
                "the CA fingerprint does not match this aggregator's CA: check it with `herd-aggregator ca fingerprint`",
            );
        }
        if let Err(err) = identity::check_name(&request.name) {
            return refused(RefusalReason::InvalidRequest, err.to_string());
        }
        if state.inventory.live_holder(&request.name, now_ms).is_some() {
            return refused(
                RefusalReason::NameInUse,
                format!(
                    "an agent named {:?} holds a valid certificate: revoke it first (`herd-aggregator cert revoke {}`) or enroll under another --name",
                    request.name, request.name
                ),
            );
        }
        let Some(signer) = state.signer.as_ref() else {
            return refused(RefusalReason::Unavailable, "this aggregator has no CA key ([identity] ca_key_file)");
        };
        let (cert_pem, info) = match signer.sign(&request.csr_der, &request.name, &token.labels, now) {
            Ok(signed) => signed,
            Err(err) => return refused(RefusalReason::InvalidRequest, err.to_string()),
        };
        let ca_pem = signer.ca_pem().to_owned();
        // The use is on disk before the certificate leaves.
        if let Err(err) = state.tokens.consume(&token.id, &request.name) {
            warn!(error = %err, "cannot record a token use: enrollment refused");
            return refused(RefusalReason::Unavailable, "the aggregator cannot write its state");
        }
        let record = CertRecord::new(&info, CertSource::Enrolled { token_id: token.id.clone() });
        if let Err(err) = state.inventory.record(record, now_ms) {
            warn!(error = %err, "cannot record an enrolled certificate: enrollment refused");
            return refused(RefusalReason::Unavailable, "the aggregator cannot write its state");
        }
        IssueResponse::Issued(Issued { name: info.name, labels: info.labels, cert_pem, ca_pem })
    }

    /// Serves renewal streams on an admitted agent connection until it ends.
    /// Called after ingest accepted the connection's first (protocol) stream.
    pub fn serve_renewals(
        self: &Arc<Self>,
        connection: quinn::Connection,
        admission: Arc<Admission>,
        shutdown: CancellationToken,
    ) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (mut send, mut recv) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    streams = connection.accept_bi() => match streams {
                        Ok(streams) => streams,
                        Err(_) => return,
                    },
                };
                let exchange = async {
                    let mut magic = [0u8; 4];
                    recv.read_exact(&mut magic).await?;
                    if magic != RENEW_MAGIC {
                        return Err(ExchangeError::BadMagic);
                    }
                    let request: RenewRequest = read_message(&mut recv).await?;
                    let (manager, admission) = (Arc::clone(&manager), Arc::clone(&admission));
                    let response = tokio::task::spawn_blocking(move || manager.decide_renewal(&request, &admission))
                        .await
                        .unwrap_or_else(|_| refused(RefusalReason::Unavailable, "renewal failed on the aggregator"));
                    write_response(&mut send, &response).await
                };
                if let Err(err) = timeout(EXCHANGE_TIMEOUT, exchange).await.unwrap_or(Err(ExchangeError::Timeout)) {
                    IdentityStats::count(&manager.stats.renew_refused, RefusalReason::InvalidRequest.as_str());
                    warn!(agent = %admission.name(), error = %err, "renewal stream failed");
                }
            }
        });
    }

    fn decide_renewal(&self, request: &RenewRequest, admission: &Admission) -> IssueResponse {
        let now = SystemTime::now();
        let response = self.renewal_response(request, admission, now);
        match &response {
            IssueResponse::Issued(_) => {
                self.stats.renewed.fetch_add(1, Ordering::Relaxed);
                info!(agent = %admission.name(), previous_serial = %admission.info.serial, "agent certificate renewed");
            }
            IssueResponse::Refused(refusal) => {
                IdentityStats::count(&self.stats.renew_refused, refusal.reason.as_str());
                warn!(agent = %admission.name(), reason = refusal.reason.as_str(), "renewal refused");
            }
        }
        response
    }

    fn renewal_response(&self, request: &RenewRequest, admission: &Admission, now: SystemTime) -> IssueResponse {
        let mut state = self.lock();
        if state.inventory.is_revoked(&admission.info) {
            return refused(RefusalReason::Revoked, "this certificate is revoked: re-enroll the agent");
        }
        if admission.renewed.load(Ordering::Relaxed) {
            return refused(
                RefusalReason::AlreadyRenewed,
                "one renewal per connection: reconnect with the new certificate",
            );
        }
        let Some(signer) = state.signer.as_ref() else {
            return refused(RefusalReason::Unavailable, "this aggregator has no CA key ([identity] ca_key_file)");
        };
        let info = &admission.info;
        let (cert_pem, issued) = match signer.sign(&request.csr_der, &info.name, &info.labels, now) {
            Ok(signed) => signed,
            Err(err) => return refused(RefusalReason::InvalidRequest, err.to_string()),
        };
        let ca_pem = signer.ca_pem().to_owned();
        let record = CertRecord::new(&issued, CertSource::Renewed { previous_serial: info.serial.clone() });
        if let Err(err) = state.inventory.record(record, unix_ms(now)) {
            warn!(error = %err, "cannot record a renewed certificate: renewal refused");
            return refused(RefusalReason::Unavailable, "the aggregator cannot write its state");
        }
        admission.renewed.store(true, Ordering::Relaxed);
        IssueResponse::Issued(Issued { name: issued.name, labels: issued.labels, cert_pem, ca_pem })
    }
}
