//! TLS for the agent's own connections to the servers it watches (Redis,
//! PostgreSQL, https probes and scrape jobs), over the workspace's rustls
//! with the ring provider. The files of a `tls` table are read at each
//! connection attempt, so renewed certificates need no restart; a private
//! key readable by others is refused, as at config load.
//!
//! `insecure_skip_verify` (and PostgreSQL's `prefer`/`require`, as libpq)
//! keep the handshake's signature checks but accept any certificate chain.
//!
//! Must not: put key material in an error message.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use herd_common::config::client_tls::ClientTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How a server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Chain against the CA, name against the host (or `server_name`).
    Full,
    /// Chain against the CA; any name (libpq's `verify-ca`, used for `require` with a CA file).
    ChainOnly,
    /// Any certificate: encrypted, not authenticated.
    Nothing,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why no TLS client could be set up from the files.
fn file_error(what: &str, path: &Path, err: impl std::fmt::Display) -> String {
    format!("TLS: cannot use {what} {}: {err}", path.display())
}

/// The CA certificates of `tls` (or the system bundle).
pub fn load_roots(tls: &ClientTls) -> Result<Vec<CertificateDer<'static>>, String> {
    let path = tls.ca_file();
    let pem = std::fs::read(path).map_err(|err| file_error("ca_file", path, err))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error("ca_file", path, err))?;
    if certs.is_empty() {
        return Err(file_error("ca_file", path, "no certificate in it"));
    }
    Ok(certs)
}

/// The client certificate chain and key of `tls`, if it has one.
pub fn load_identity(
    tls: &ClientTls,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(files) = &tls.client_cert else { return Ok(None) };
    let pem = std::fs::read(&files.cert_file).map_err(|err| file_error("cert_file", &files.cert_file, err))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error("cert_file", &files.cert_file, err))?;
    if chain.is_empty() {
        return Err(file_error("cert_file", &files.cert_file, "no certificate in it"));
    }
    let metadata = std::fs::metadata(&files.key_file).map_err(|err| file_error("key_file", &files.key_file, err))?;
    let mode = metadata.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(file_error(
            "key_file",
            &files.key_file,
            format!("it is readable by others (mode {:o}): chmod o-r it", mode & 0o777),
        ));
    }
    // The parser's errors name the PEM section, never the key's bytes.
    let key =
        PrivateKeyDer::from_pem_file(&files.key_file).map_err(|err| file_error("key_file", &files.key_file, err))?;
    Ok(Some((chain, key)))
}

/// A rustls client configuration for `tls` with the given verification.
pub fn client_config(tls: &ClientTls, verify: Verify, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let verify = if tls.insecure_skip_verify { Verify::Nothing } else { verify };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS: {err}"))?;
    let builder = match verify {
        Verify::Full => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(load_roots(tls)?);
            if added == 0 {
                return Err(file_error("ca_file", tls.ca_file(), "no usable CA certificate in it"));
            }
            builder.with_root_certificates(roots)
        }
        Verify::ChainOnly => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(load_roots(tls)?);
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|err| format!("TLS: {err}"))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyName { inner }))
        }
        Verify::Nothing => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))),
    };
    let mut config = match load_identity(tls)? {
        Some((chain, key)) => {
            builder.with_client_auth_cert(chain, key).map_err(|err| format!("TLS: client certificate: {err}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to verify: `server_name` if set, else `host`.
pub fn server_name(tls: &ClientTls, host: &str) -> Result<ServerName<'static>, String> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|_| format!("TLS: {name:?} is not a valid server name"))
}

/// Runs the TLS handshake over `stream`.
pub async fn handshake(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, String> {
    TlsConnector::from(config).connect(name, stream).await.map_err(|err| format!("TLS handshake failed: {err}"))
}

/// Accepts any certificate, still checking the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies the chain against the CA but accepts any name on it.
#[derive(Debug)]
struct AnyName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// tokio-postgres's TLS hook over rustls: `make_tls_connect` gets the DSN's
/// host, which is verified unless `tls.server_name` overrides it.
#[derive(Clone)]
pub struct PostgresTls {
    config: Arc<ClientConfig>,
    tls: ClientTls,
}

impl PostgresTls {
    pub fn new(tls: &ClientTls, verify: Verify) -> Result<Self, String> {
        Ok(Self { config: client_config(tls, verify, &[])?, tls: tls.clone() })
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PostgresTlsConnect, io::Error> {
        let name = server_name(&self.tls, domain).map_err(io::Error::other)?;
        Ok(PostgresTlsConnect { config: Arc::clone(&self.config), name })
    }
}

pub struct PostgresTlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PostgresTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<PostgresTlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(PostgresTlsStream(stream))
        })
    }
}

/// A TLS stream to PostgreSQL (no channel binding: SCRAM without `-PLUS`).
pub struct PostgresTlsStream<S>(TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// ureq's TLS settings for an https scrape job.
pub fn ureq_tls(tls: &ClientTls) -> Result<ureq::tls::TlsConfig, String> {
    let mut builder = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider())
        .disable_verification(tls.insecure_skip_verify);
    if !tls.insecure_skip_verify {
        let roots: Vec<ureq::tls::Certificate<'static>> =
            load_roots(tls)?.into_iter().map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned()).collect();
        builder = builder.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    }
    if let (Some((chain, _)), Some(files)) = (load_identity(tls)?, &tls.client_cert) {
        let chain: Vec<ureq::tls::Certificate<'static>> =
            chain.iter().map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned()).collect();
        // load_identity checked the key file's mode and syntax; ureq wants its own key type.
        let pem = std::fs::read(&files.key_file).map_err(|err| file_error("key_file", &files.key_file, err))?;
        let key = ureq::tls::PrivateKey::from_pem(&pem)
            .map_err(|_| file_error("key_file", &files.key_file, "no private key in it"))?;
        builder = builder.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}
