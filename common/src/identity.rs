//! An agent's identity as its certificate carries it: the name (the common
//! name) and the **trusted labels**, bound by the fleet CA at enrollment and
//! written as one subject alternative name URI,
//! `herd://agent/<name>?role=postgres&env=prod`. Both ends read them from
//! the verified certificate, so any aggregator holding the fleet CA sees the
//! same identity; the labels an agent claims in its hello are informational.
//!
//! Also here: CA fingerprints (`sha256:<hex>` of the CA certificate), key
//! and CSR generation on the agent (the key never leaves the host), and the
//! signing of an agent's CSR with a lifetime. No I/O, no clock: `now` is
//! passed in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use thiserror::Error;

use crate::tls::{PemPair, TlsError};

/// Scheme and authority of the identity URI in an agent certificate.
pub const IDENTITY_URI_PREFIX: &str = "herd://agent/";
/// The identity URI of a client certificate for the HTTP API (`cert issue
/// --client`): such a certificate is never an agent's, and enrollment never
/// makes one.
pub const CLIENT_URI_PREFIX: &str = "herd://client/";
/// Longest agent name accepted.
pub const MAX_NAME_BYTES: usize = 128;
/// Most trusted labels one identity may carry.
pub const MAX_TRUSTED_LABELS: usize = 32;
/// Longest trusted label value.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Certificates are valid from a little before they are issued, for clocks
/// slightly behind the issuer's: a tenth of the lifetime, at most this.
const MAX_BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("certificate has no common name (the agent's identity)")]
    NoName,
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What a certificate is for, from its identity URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// `herd://agent/NAME`: signed at enrollment, renewal or by `cert issue --agent`.
    Agent,
    /// `herd://client/NAME`: an HTTP API client (`cert issue --client`).
    Client,
    /// No identity URI (certificates from before identity URIs): an agent's.
    Plain,
}

/// What Herd reads from a verified agent certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub kind: CertKind,
    /// The common name: the agent's identity.
    pub name: String,
    /// Trusted labels from the identity URI, sorted by name; empty if none.
    pub labels: Vec<(String, String)>,
    /// Lower-case hex, without leading zeros (`normalize_serial`).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// When the agent renews: two thirds into the certificate's validity.
    pub fn renewal_due(&self) -> SystemTime {
        let span = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + span.mul_f64(2.0 / 3.0)
    }

    /// When it was issued, undoing the backdating of `not_before` that Herd
    /// applies (a tenth of the lifetime, at most five minutes). Certificates
    /// from elsewhere with a longer backdate look issued earlier than they
    /// were, which errs towards revocation.
    pub fn issued_at(&self) -> SystemTime {
        let span = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + (span / 11).min(MAX_BACKDATE)
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// A serial as Herd shows and compares it: lower-case hex without leading zeros.
pub fn normalize_serial(hex_digits: &str) -> String {
    let trimmed = hex_digits.trim().trim_start_matches('0').to_ascii_lowercase();
    if trimmed.is_empty() { "0".into() } else { trimmed }
}

/// `sha256:<64 hex digits>` of a certificate's DER bytes.
pub fn fingerprint_der(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    format!("sha256:{}", hex(digest.as_ref()))
}

/// The fingerprint of the first certificate in `ca_pem`.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String, IdentityError> {
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .ok_or_else(|| IdentityError::Parse("no certificate in the CA file".into()))?
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    Ok(fingerprint_der(der.as_ref()))
}

/// Normalises a fingerprint as an operator may paste it (`sha256:AB:CD...`,
/// any case, with or without colons) to `sha256:<lower hex>`.
pub fn parse_fingerprint(text: &str) -> Result<String, IdentityError> {
    let bad = || {
        IdentityError::Invalid(format!(
            "{text:?} is not a CA fingerprint (expected sha256:<64 hex digits>, as `herd-aggregator ca fingerprint` prints)"
        ))
    };
    let digits = text.trim().strip_prefix("sha256:").or_else(|| text.trim().strip_prefix("SHA256:")).ok_or_else(bad)?;
    let digits: String = digits.chars().filter(|&c| c != ':').collect::<String>().to_ascii_lowercase();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(format!("sha256:{digits}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` may be an agent's identity: 1 to 128 of `A-Z a-z 0-9 . _ -`,
/// starting with a letter or digit (it becomes the `instance` label and a file name).
pub fn check_name(name: &str) -> Result<(), IdentityError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(IdentityError::Invalid(format!(
            "{name:?} cannot be an agent name (1 to {MAX_NAME_BYTES} letters, digits, '.', '_' or '-', starting with a letter or digit)"
        )))
    }
}

/// Checks trusted labels: Prometheus label names, not `job`, `instance` or
/// `__*` (the aggregator sets those), values at most 256 bytes, at most 32.
pub fn check_labels(labels: &[(String, String)]) -> Result<(), IdentityError> {
    if labels.len() > MAX_TRUSTED_LABELS {
        return Err(IdentityError::Invalid(format!("at most {MAX_TRUSTED_LABELS} trusted labels")));
    }
    for (i, (name, value)) in labels.iter().enumerate() {
        if !crate::config::agent::is_label_name(name) {
            return Err(IdentityError::Invalid(format!("{name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")));
        }
        if name.starts_with("__") || name == "job" || name == "instance" {
            return Err(IdentityError::Invalid(format!(
                "label {name:?} is set by the aggregator and cannot be a trusted label"
            )));
        }
        if value.is_empty() || value.len() > MAX_LABEL_VALUE_BYTES {
            return Err(IdentityError::Invalid(format!(
                "label {name}: value must be 1 to {MAX_LABEL_VALUE_BYTES} bytes"
            )));
        }
        if labels[..i].iter().any(|(other, _)| other == name) {
            return Err(IdentityError::Invalid(format!("label {name} is given twice")));
        }
    }
    Ok(())
}

/// Parses `role=postgres,env=prod` (the CLI's `--labels`), sorted by name.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, IdentityError> {
    let mut labels = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| IdentityError::Invalid(format!("{pair:?} is not name=value (e.g. role=postgres)")))?;
        labels.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    check_labels(&labels)?;
    labels.sort();
    Ok(labels)
}

/// The identity URI for `name` with `labels`.
pub fn identity_uri(name: &str, labels: &[(String, String)]) -> String {
    let mut uri = format!("{IDENTITY_URI_PREFIX}{name}");
    if !labels.is_empty() {
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(labels).finish();
        uri.push('?');
        uri.push_str(&query);
    }
    uri
}

/// The name and labels of an identity URI; `None` if it is not one.
fn parse_identity_uri(uri: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = uri.strip_prefix(IDENTITY_URI_PREFIX)?;
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut labels: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    labels.sort();
    Some((name.to_owned(), labels))
}

fn system_time(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

/// Reads name, trusted labels, serial and validity from a DER certificate.
/// Labels are taken only from an identity URI naming the same agent as the
/// common name; a certificate without one has no trusted labels.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or(IdentityError::NoName)?;
    let mut labels = Vec::new();
    let mut kind = CertKind::Plain;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            let x509_parser::extensions::GeneralName::URI(uri) = general else { continue };
            if let Some((uri_name, uri_labels)) = parse_identity_uri(uri)
                && uri_name == name
            {
                labels = uri_labels;
                kind = CertKind::Agent;
            } else if uri.strip_prefix(CLIENT_URI_PREFIX) == Some(name.as_str()) {
                kind = CertKind::Client;
            }
        }
    }
    Ok(CertInfo {
        kind,
        name,
        labels,
        serial: normalize_serial(&hex(cert.raw_serial())),
        not_before: system_time(cert.validity().not_before.timestamp()),
        not_after: system_time(cert.validity().not_after.timestamp()),
    })
}

/// [`cert_info`] of the first certificate in a PEM text.
pub fn cert_info_pem(pem: &str) -> Result<CertInfo, IdentityError> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| IdentityError::Parse("no certificate in PEM text".into()))?
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    cert_info(der.as_ref())
}

/// Whether the key of `pair` is the one its (first) certificate certifies.
pub fn key_matches_certificate(pair: &PemPair) -> Result<bool, IdentityError> {
    let der = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
        .next()
        .ok_or_else(|| IdentityError::Parse("no certificate in PEM text".into()))?
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let key = KeyPair::from_pem(&pair.key_pem).map_err(|e| IdentityError::Parse(format!("private key: {e}")))?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// A fresh key and a certificate signing request for it.
pub struct KeyRequest {
    pub csr_der: Vec<u8>,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRequest").field("csr_der", &self.csr_der.len()).field("key_pem", &"***").finish()
    }
}

/// Generates a key pair and a CSR proving possession of it. The subject is
/// left for the signer to set: the aggregator decides name and labels.
pub fn generate_key_request() -> Result<KeyRequest, IdentityError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Herd");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(KeyRequest { csr_der: csr.der().to_vec(), key_pem: key.serialize_pem() })
}

/// Random positive 16-byte serial.
fn random_serial() -> Result<SerialNumber, IdentityError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Invalid("the system's random number generator failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn agent_params(
    name: &str,
    labels: &[(String, String)],
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertificateParams, IdentityError> {
    check_name(name)?;
    check_labels(labels)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Herd");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let uri = identity_uri(name, labels);
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.serial_number = Some(random_serial()?);
    let backdate = (lifetime / 10).min(MAX_BACKDATE);
    let to_time = |t: SystemTime| {
        let nanos = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|e| IdentityError::Invalid(format!("time out of range: {e}")))
    };
    params.not_before = to_time(now - backdate)?;
    params.not_after = to_time(now + lifetime)?;
    Ok(params)
}

/// Signs an agent's CSR: the certificate names `name`, carries `labels` as
/// its identity URI and is valid for `lifetime` from `now`. Whatever subject
/// or extensions the CSR asked for are ignored; its signature (proof that
/// the requester holds the key) is checked.
pub fn sign_agent_csr(
    ca: &PemPair,
    csr_der: &[u8],
    name: &str,
    labels: &[(String, String)],
    lifetime: Duration,
    now: SystemTime,
) -> Result<String, IdentityError> {
    let mut csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    csr.params = agent_params(name, labels, lifetime, now)?;
    Ok(csr.signed_by(&crate::tls::issuer(ca)?)?.pem())
}

/// Issues a client certificate for the HTTP API (`cert issue --client`):
/// no trusted labels, and a client identity URI, so it never passes for an agent.
pub fn issue_client(ca: &PemPair, name: &str, lifetime: Duration, now: SystemTime) -> Result<PemPair, IdentityError> {
    let key = KeyPair::generate()?;
    let mut params = agent_params(name, &[], lifetime, now)?;
    params.subject_alt_names = vec![SanType::URI(format!("{CLIENT_URI_PREFIX}{name}").try_into()?)];
    let cert = params.signed_by(&key, &crate::tls::issuer(ca)?)?;
    Ok(PemPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues a key pair for agent `name` on the CA's host (`cert issue --agent`):
/// the key is generated here, so it has to be copied to the agent.
pub fn issue_agent(
    ca: &PemPair,
    name: &str,
    labels: &[(String, String)],
    lifetime: Duration,
    now: SystemTime,
) -> Result<PemPair, IdentityError> {
    let key = KeyPair::generate()?;
    let cert = agent_params(name, labels, lifetime, now)?.signed_by(&key, &crate::tls::issuer(ca)?)?;
    Ok(PemPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_signed_csr_carries_the_name_labels_and_lifetime_the_signer_chose() {
        let ca = crate::tls::generate_ca("test fleet").unwrap();
        let request = generate_key_request().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let trusted = labels(&[("env", "prod & co"), ("role", "postgres")]);
        let pem = sign_agent_csr(&ca, &request.csr_der, "db-1", &trusted, Duration::from_secs(60), now).unwrap();
        let info = cert_info_pem(&pem).unwrap();
        assert_eq!((info.name.as_str(), info.kind), ("db-1", CertKind::Agent));
        assert_eq!(info.labels, trusted);
        assert_eq!(info.not_after, now + Duration::from_secs(60));
        assert_eq!(info.not_before, now - Duration::from_secs(6));
        assert_eq!(info.renewal_due(), now + Duration::from_secs(38));
        assert_eq!(info.issued_at(), now);
        // The key the agent generated matches the certificate it got.
        let material = crate::tls::TlsMaterial {
            ca_pem: ca.cert_pem.clone(),
            identity: PemPair { cert_pem: pem, key_pem: request.key_pem },
        };
        crate::tls::client_config(&material, Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = crate::tls::generate_ca("test fleet").unwrap();
        let mut request = generate_key_request().unwrap();
        let last = request.csr_der.len() - 1;
        request.csr_der[last] ^= 0xff;
        let refused = sign_agent_csr(&ca, &request.csr_der, "db-1", &[], Duration::from_secs(60), SystemTime::now());
        assert!(matches!(refused, Err(IdentityError::Csr(_))), "{refused:?}");
        assert!(sign_agent_csr(&ca, b"junk", "db-1", &[], Duration::from_secs(60), SystemTime::now()).is_err());
    }

    #[test]
    fn labels_of_another_name_are_not_trusted() {
        assert_eq!(parse_identity_uri("herd://agent/a?x=1"), Some(("a".into(), labels(&[("x", "1")]))));
        assert_eq!(parse_identity_uri("https://agent/a"), None);
        // A certificate from `tls::issue` has no identity URI: no trusted labels.
        let ca = crate::tls::generate_ca("test fleet").unwrap();
        let plain = crate::tls::issue(&ca, crate::tls::Role::Agent, "web-1", &[]).unwrap();
        let info = cert_info_pem(&plain.cert_pem).unwrap();
        assert_eq!((info.name.as_str(), info.labels.len(), info.kind), ("web-1", 0, CertKind::Plain));
        let client = issue_client(&ca, "ops", Duration::from_secs(60), SystemTime::now()).unwrap();
        let info = cert_info_pem(&client.cert_pem).unwrap();
        assert_eq!((info.name.as_str(), info.labels.len(), info.kind), ("ops", 0, CertKind::Client));
    }

    #[test]
    fn fingerprints_are_normalised_and_checked() {
        let hex64 = "AB".repeat(32);
        let expected = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_fingerprint(&format!("sha256:{hex64}")).unwrap(), expected);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(parse_fingerprint(&format!("SHA256:{}", colons.join(":"))).unwrap(), expected);
        assert!(parse_fingerprint("sha256:abc").is_err());
        assert!(parse_fingerprint(&"ab".repeat(32)).is_err(), "the algorithm is required");
        let ca = crate::tls::generate_ca("test fleet").unwrap();
        assert!(ca_fingerprint(&ca.cert_pem).unwrap().starts_with("sha256:"));
        assert!(key_matches_certificate(&ca).unwrap());
        let other = crate::tls::generate_ca("other fleet").unwrap();
        let mixed = PemPair { cert_pem: ca.cert_pem, key_pem: other.key_pem };
        assert!(!key_matches_certificate(&mixed).unwrap());
    }

    #[test]
    fn names_and_labels_are_checked() {
        assert!(check_name("db-1.example_2").is_ok());
        for bad in ["", "-db", "db/1", "db 1", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_labels("role=postgres, env=prod").unwrap(), labels(&[("env", "prod"), ("role", "postgres")]));
        for bad in ["instance=x", "job=x", "__name__=x", "1x=y", "a", "a=", "a=1,a=2"] {
            assert!(parse_labels(bad).is_err(), "{bad:?}");
        }
    }
}
