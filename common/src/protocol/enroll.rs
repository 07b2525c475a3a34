//! Enrollment and renewal: one request, one answer, no I/O here.
//!
//! - **Enrollment** runs on its own QUIC connection with ALPN
//!   [`ENROLL_ALPN`], authenticated by the server only (the agent pins the
//!   fleet CA by fingerprint; it has no certificate yet). The agent opens one
//!   bidirectional stream, writes an [`EnrollRequest`] (token, wanted name,
//!   the fingerprint it pinned, a CSR) and reads an [`IssueResponse`].
//! - **Renewal** runs on an agent's live mutual-TLS connection: the agent
//!   opens another bidirectional stream, writes [`RENEW_MAGIC`] and a
//!   [`RenewRequest`] (a CSR for a new key) and reads an [`IssueResponse`].
//!   The identity and labels are the connection's; the request cannot ask
//!   for others.
//!
//! Each message is a u32 big-endian length, then that many bytes from
//! `codec::encode_value`. A length above [`MAX_MESSAGE_BYTES`] is refused
//! before anything is allocated for it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::codec::{self, CodecError};

/// The ALPN of enrollment connections.
pub const ENROLL_ALPN: &[u8] = b"herd-enroll";
/// First bytes of a renewal stream on an agent connection.
pub const RENEW_MAGIC: [u8; 4] = *b"HRNW";
/// Largest enrollment or renewal message (a CSR and a certificate are ~1 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;
pub const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, Error)]
pub enum EnrollCodecError {
    #[error("message of {claimed} bytes exceeds the {max} byte limit")]
    TooLarge { claimed: usize, max: usize },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// An agent asking for its first certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The enrollment token, as `herd-aggregator token create` printed it.
    pub token: String,
    /// The identity the agent asks for (its host name unless told otherwise).
    pub name: String,
    /// The CA fingerprint the agent pinned (`sha256:<hex>`).
    pub ca_fingerprint: String,
    /// A PKCS#10 request for the key the agent generated.
    pub csr_der: Vec<u8>,
    pub agent_version: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"***")
            .field("name", &self.name)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("csr_bytes", &self.csr_der.len())
            .field("agent_version", &self.agent_version)
            .finish()
    }
}

/// A connected agent asking for a certificate for a new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_der: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IssueResponse {
    Issued(Issued),
    Refused(Refusal),
}

/// A certificate issued for the requester's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub name: String,
    /// The trusted labels bound to the identity (also in the certificate).
    pub labels: Vec<(String, String)>,
    pub cert_pem: String,
    /// The fleet CA, for the agent to trust aggregators with.
    pub ca_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: RefusalReason,
    /// What to do about it, for the operator.
    pub message: String,
}

/// Why a request was refused; a fixed set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RefusalReason {
    TokenUnknown,
    TokenExpired,
    TokenUsedUp,
    TokenRevoked,
    CaFingerprint,
    NameInUse,
    InvalidRequest,
    Revoked,
    AlreadyRenewed,
    Unavailable,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 10] = [
        Self::TokenUnknown,
        Self::TokenExpired,
        Self::TokenUsedUp,
        Self::TokenRevoked,
        Self::CaFingerprint,
        Self::NameInUse,
        Self::InvalidRequest,
        Self::Revoked,
        Self::AlreadyRenewed,
        Self::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenUnknown => "token_unknown",
            Self::TokenExpired => "token_expired",
            Self::TokenUsedUp => "token_used_up",
            Self::TokenRevoked => "token_revoked",
            Self::CaFingerprint => "ca_fingerprint",
            Self::NameInUse => "name_in_use",
            Self::InvalidRequest => "invalid_request",
            Self::Revoked => "revoked",
            Self::AlreadyRenewed => "already_renewed",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A length-prefixed message, ready to write.
pub fn encode<T: Serialize>(kind: &'static str, message: &T) -> Result<Vec<u8>, EnrollCodecError> {
    let mut payload = Vec::new();
    codec::encode_value(kind, message, &mut payload)?;
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(EnrollCodecError::TooLarge { claimed: payload.len(), max: MAX_MESSAGE_BYTES });
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The payload length a prefix announces, refused above the limit.
pub fn message_length(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, EnrollCodecError> {
    let claimed = u32::from_be_bytes(prefix) as usize;
    if claimed > MAX_MESSAGE_BYTES {
        return Err(EnrollCodecError::TooLarge { claimed, max: MAX_MESSAGE_BYTES });
    }
    Ok(claimed)
}

/// Decodes one payload (without its prefix).
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, EnrollCodecError> {
    Ok(codec::decode_value(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_and_debug_hides_the_token() {
        let request = EnrollRequest {
            token: "abc.secret".into(),
            name: "db-1".into(),
            ca_fingerprint: "sha256:00".into(),
            csr_der: vec![1, 2, 3],
            agent_version: "0.1.0".into(),
        };
        let bytes = encode("enroll request", &request).unwrap();
        let length = message_length(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(length, bytes.len() - 4);
        assert_eq!(decode::<EnrollRequest>(&bytes[4..]).unwrap(), request);
        assert!(!format!("{request:?}").contains("secret"));
        let refused = IssueResponse::Refused(Refusal { reason: RefusalReason::TokenUsedUp, message: "x".into() });
        let bytes = encode("issue response", &refused).unwrap();
        assert_eq!(decode::<IssueResponse>(&bytes[4..]).unwrap(), refused);
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading() {
        assert!(message_length(((MAX_MESSAGE_BYTES + 1) as u32).to_be_bytes()).is_err());
        assert!(message_length(u32::MAX.to_be_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<EnrollRequest>(&bytes);
            let _ = decode::<IssueResponse>(&bytes);
            let _ = decode::<RenewRequest>(&bytes);
        }
    }
}
