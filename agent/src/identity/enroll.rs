//! `herd-agent enroll`: a fresh key, a CSR, and a token, sent over a QUIC
//! connection with ALPN `herd-enroll` to an aggregator whose CA must have
//! the fingerprint given on the command line (nothing is sent to an
//! aggregator that fails that check). The answer's certificate, its key and
//! the CA are written where the agent's `[uplink]` reads them.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use herd_common::config::Endpoint;
use herd_common::identity::{self, CertInfo};
use herd_common::protocol::enroll::{self as wire, EnrollRequest, IssueResponse, RefusalReason};
use herd_common::tls::{PemPair, TlsFiles};
use tokio::time::timeout;

use super::{ExchangeError, IdentityFileError, read_response, write_replacing};

#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub aggregator: Endpoint,
    /// The TLS name to verify; default: the aggregator's host.
    pub server_name: Option<String>,
    pub token: String,
    /// `sha256:<hex>`, as `herd-aggregator ca fingerprint` prints it.
    pub ca_fingerprint: String,
    /// The identity to ask for.
    pub name: String,
    /// Where to write the CA, the certificate and the key.
    pub files: TlsFiles,
    /// Replace existing files.
    pub force: bool,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path} exists: this host is already enrolled (pass --force to replace its identity)")]
    Exists { path: std::path::PathBuf },
    #[error("cannot resolve {endpoint}: {detail}")]
    Resolve { endpoint: String, detail: String },
    #[error(
        "cannot connect to {endpoint}: {detail}\n(if the handshake failed, the aggregator's CA may not match --ca-fingerprint: print the right one with `herd-aggregator ca fingerprint` on the aggregator)"
    )]
    Connect { endpoint: String, detail: String },
    #[error("enrollment refused ({}): {message}", reason.as_str())]
    Refused { reason: RefusalReason, message: String },
    #[error("enrollment failed: {0}")]
    Exchange(#[from] ExchangeError),
    #[error("the aggregator sent a certificate that does not fit: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    Files(#[from] IdentityFileError),
}

/// What enrollment gave.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub info: CertInfo,
    pub files: TlsFiles,
}

/// Enrolls this host; see the module documentation.
pub async fn enroll(options: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    let fingerprint =
        identity::parse_fingerprint(&options.ca_fingerprint).map_err(|e| EnrollError::Invalid(e.to_string()))?;
    identity::check_name(&options.name).map_err(|e| EnrollError::Invalid(e.to_string()))?;
    if !options.force {
        for path in [&options.files.cert_file, &options.files.key_file] {
            if path.exists() {
                return Err(EnrollError::Exists { path: path.clone() });
            }
        }
    }
    let request_key = identity::generate_key_request().map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let endpoint = options.aggregator.to_string();
    let addr: SocketAddr = tokio::net::lookup_host((options.aggregator.host.as_str(), options.aggregator.port))
        .await
        .map_err(|e| EnrollError::Resolve { endpoint: endpoint.clone(), detail: e.to_string() })?
        .next()
        .ok_or_else(|| EnrollError::Resolve { endpoint: endpoint.clone(), detail: "no addresses".into() })?;
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal address");
    let connect_error = |detail: String| EnrollError::Connect { endpoint: endpoint.clone(), detail };
    let mut quic = quinn::Endpoint::client(bind).map_err(|e| connect_error(e.to_string()))?;
    let client_config = herd_common::tls::enrollment_client_config(&fingerprint, options.timeout)
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    quic.set_default_client_config(client_config);
    let server_name = options.server_name.as_deref().unwrap_or(&options.aggregator.host);
    let request = EnrollRequest {
        token: options.token.trim().to_owned(),
        name: options.name.clone(),
        ca_fingerprint: fingerprint.clone(),
        csr_der: request_key.csr_der,
        agent_version: herd_common::VERSION.to_owned(),
    };
    let exchange = async {
        let connection = quic
            .connect(addr, server_name)
            .map_err(|e| connect_error(e.to_string()))?
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| connect_error(e.to_string()))?;
        let bytes = wire::encode("enroll request", &request).map_err(|e| EnrollError::Invalid(e.to_string()))?;
        send.write_all(&bytes).await.map_err(|e| ExchangeError::Connection(e.to_string()))?;
        let _ = send.finish();
        let response = read_response(&mut recv).await?;
        connection.close(0u32.into(), b"enrolled");
        Ok::<IssueResponse, EnrollError>(response)
    };
    let response = timeout(options.timeout, exchange).await.map_err(|_| ExchangeError::Timeout)??;
    let _ = timeout(Duration::from_secs(1), quic.wait_idle()).await;
    let issued = match response {
        IssueResponse::Issued(issued) => issued,
        IssueResponse::Refused(refusal) => {
            return Err(EnrollError::Refused { reason: refusal.reason, message: refusal.message });
        }
    };
    // The pinned CA, and nothing else, is what the agent will trust.
    let ca_fingerprint = identity::ca_fingerprint(&issued.ca_pem).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    if ca_fingerprint != fingerprint {
        return Err(EnrollError::BadAnswer("the CA sent is not the pinned one".into()));
    }
    let info = identity::cert_info_pem(&issued.cert_pem).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    let pair = PemPair { cert_pem: issued.cert_pem, key_pem: request_key.key_pem };
    if info.name != options.name
        || !identity::key_matches_certificate(&pair).map_err(|e| EnrollError::BadAnswer(e.to_string()))?
        || info.is_expired(SystemTime::now())
    {
        return Err(EnrollError::BadAnswer(format!("certificate for {:?} does not match this request", info.name)));
    }
    write_replacing(&options.files.key_file, pair.key_pem.as_bytes(), 0o600)?;
    write_replacing(&options.files.cert_file, pair.cert_pem.as_bytes(), 0o644)?;
    write_replacing(&options.files.ca_file, issued.ca_pem.as_bytes(), 0o644)?;
    Ok(Enrolled { info, files: options.files.clone() })
}
