//! The fleet's PKI: a CA, certificates for agents and aggregators, and the
//! rustls/quinn configurations for mutual TLS. Keys on disk are mode 0600.
//!
//! An agent's identity is the common name of its client certificate, which
//! `issue` also puts in the subject alternative names.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::protocol::frame::ALPN;

/// How long issued certificates are valid.
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 825;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("{what} holds no certificate")]
    NoCertificate { what: &'static str },
    #[error("{path} already exists: remove it first to replace it")]
    Exists { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").field("cert_pem", &self.cert_pem).field("key_pem", &"***").finish()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Server,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // Tolerate clocks a little behind the issuer's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Creates a new fleet CA.
pub fn generate_ca(common_name: &str) -> Result<PemPair, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Herd");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(PemPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues a certificate for `name` signed by `ca`. Server certificates also
/// carry `extra_names` (DNS names or IP addresses) as alternative names.
pub fn issue(ca: &PemPair, role: Role, name: &str, extra_names: &[String]) -> Result<PemPair, TlsError> {
    let issuer = issuer(ca)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Herd");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Agent => ExtendedKeyUsagePurpose::ClientAuth,
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    for san in std::iter::once(name).chain(extra_names.iter().map(String::as_str)) {
        let san = match san.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(san.try_into()?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    validity(&mut params, LEAF_VALIDITY_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The CA as an rcgen issuer.
pub(crate) fn issuer(ca: &PemPair) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| TlsError::Pem { what: "CA key", detail: e.to_string() })?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| TlsError::Pem { what: "CA certificate", detail: e.to_string() })
}

/// Writes `pair` as `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem` (mode
/// 0600), refusing to overwrite unless `overwrite`. Returns both paths.
pub fn write_pair(dir: &Path, stem: &str, pair: &PemPair, overwrite: bool) -> Result<(PathBuf, PathBuf), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    for path in [&cert_path, &key_path] {
        if !overwrite && path.exists() {
            return Err(TlsError::Exists { path: path.clone() });
        }
    }
    write_file(&key_path, pair.key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, pair.cert_pem.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(err)?;
    // `mode` applies only on creation; tighten an existing file too.
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Reads a PEM pair from files.
pub fn read_pair(cert_path: &Path, key_path: &Path) -> Result<PemPair, TlsError> {
    let read = |what, path: &Path| {
        fs::read_to_string(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
    };
    Ok(PemPair { cert_pem: read("certificate", cert_path)?, key_pem: read("private key", key_path)? })
}

/// The paths of a PEM-encoded identity and the CA that verifies the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// PEM material loaded in memory.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub identity: PemPair,
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca_pem = fs::read_to_string(&files.ca_file).map_err(|source| TlsError::Read {
            what: "CA certificate",
            path: files.ca_file.clone(),
            source,
        })?;
        Ok(Self { ca_pem, identity: read_pair(&files.cert_file, &files.key_file)? })
    }
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem { what: "private key", detail: e.to_string() })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("CA certificate", ca_pem)? {
        roots.add(cert).map_err(|e| TlsError::Config(format!("CA certificate rejected: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC transport settings shared by both ends.
fn transport(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(idle_timeout))
}

fn transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle_timeout.try_into().expect("idle timeout fits QUIC's varint")));
    transport.keep_alive_interval(Some(idle_timeout / 3));
    // One bidirectional stream per connection carries the protocol.
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_concurrent_bidi_streams(4u8.into());
    transport
}

/// The aggregator's QUIC server configuration, for two ALPNs: `herd`
/// (agents, mutual TLS) and `herd-enroll` (agents without a certificate yet).
/// A client certificate, when presented, must chain to the fleet CA or the
/// handshake fails; it is optional at the TLS layer only so that enrollment
/// can share the port, and ingest closes every `herd` connection that did
/// not present one. The CA certificate is sent after the server's, so an
/// enrolling agent can check it against the fingerprint it pinned.
pub fn server_config(material: &TlsMaterial, idle_timeout: Duration) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&material.ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut chain = certs("server certificate", &material.identity.cert_pem)?;
    for ca in certs("CA certificate", &material.ca_pem)? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key(&material.identity.key_pem)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    crypto.alpn_protocols = vec![ALPN.to_vec(), crate::protocol::enroll::ENROLL_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    Ok(config)
}

/// The agent's QUIC client configuration: presents its certificate and
/// trusts only aggregators signed by the fleet CA.
pub fn client_config(material: &TlsMaterial, idle_timeout: Duration) -> Result<quinn::ClientConfig, TlsError> {
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&material.ca_pem)?)
        .with_client_auth_cert(
            certs("agent certificate", &material.identity.cert_pem)?,
            private_key(&material.identity.key_pem)?,
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(idle_timeout);
    // Before the first RTT sample QUIC resends the opening packet after 3 x
    // this (then doubling): after 0.3, 0.9 and 2.1 s rather than 1 and 3 s,
    // so an aggregator that returns hears from a probing agent within about
    // 1.2 s. Real RTT samples replace it from the first answer on.
    transport.initial_rtt(CLIENT_INITIAL_RTT);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

const CLIENT_INITIAL_RTT: Duration = Duration::from_millis(100);

/// The client configuration of `herd-agent enroll`: no client certificate,
/// ALPN `herd-enroll`, and the aggregator trusted only if the chain it sends
/// holds a CA certificate with the pinned fingerprint that signed the
/// server's certificate for the name connected to (no trust on first use).
pub fn enrollment_client_config(
    pinned_fingerprint: &str,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier { fingerprint: pinned_fingerprint.to_owned(), provider: provider() });
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![crate::protocol::enroll::ENROLL_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    Ok(config)
}

/// Verifies a server chain against the one CA certificate in it whose
/// SHA-256 is the pinned fingerprint; every other check is webpki's.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|cert| crate::identity::fingerprint_der(cert.as_ref()) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The ALPN a QUIC connection negotiated.
pub fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

/// The verified peer chain of a QUIC connection (empty if none was presented).
pub fn peer_chain(connection: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
        .unwrap_or_default()
}

/// The common name of the first certificate in a verified peer chain.
pub fn common_name(chain: &[CertificateDer<'_>]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// The identity of the peer of a QUIC connection: its certificate's common name.
pub fn peer_common_name(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    common_name(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_name_and_chain_to_the_ca() {
        let ca = generate_ca("test fleet").unwrap();
        let agent = issue(&ca, Role::Agent, "web-1", &[]).unwrap();
        let chain = certs("agent", &agent.cert_pem).unwrap();
        assert_eq!(common_name(&chain).as_deref(), Some("web-1"));
        let server = issue(&ca, Role::Server, "aggregator", &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let material = TlsMaterial { ca_pem: ca.cert_pem.clone(), identity: server };
        server_config(&material, Duration::from_secs(10)).unwrap();
        let material = TlsMaterial { ca_pem: ca.cert_pem, identity: agent };
        client_config(&material, Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn keys_are_written_private_and_never_overwritten_silently() {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca("test fleet").unwrap();
        let (cert, key) = write_pair(dir.path(), "ca", &ca, false).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);
        assert!(matches!(write_pair(dir.path(), "ca", &ca, false), Err(TlsError::Exists { .. })));
        let back = read_pair(&cert, &key).unwrap();
        assert_eq!(back.cert_pem, ca.cert_pem);
    }

    #[test]
    fn debug_never_prints_the_key() {
        let ca = generate_ca("test fleet").unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
