//! The HTTP listener, in front of the router: connections are counted
//! against `max_connections` (more are closed as they arrive), optionally
//! wrapped in TLS (rustls; certificate and key from files, read again by
//! [`HttpListener::apply_config`] on SIGHUP; a client certificate, when one
//! is presented, must chain to the fleet CA and is handed to the auth layer
//! as [`ClientCertificate`]), and served by hyper's HTTP/1 with a bounded
//! request head and a header read timeout that also closes idle and slow
//! connections. [`HttpListener::limits`] refuses long query strings and
//! large bodies before any handler reads them.
//!
//! Nothing here knows routes, roles or handlers: the router is given.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herd_common::config::http::HttpListenerConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::auth::ClientCertificate;

/// How long in-flight requests may run after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.tls_cert_file: cannot read {path}: {source}")]
    ReadCert { path: PathBuf, source: std::io::Error },
    #[error("http.tls_key_file: cannot read {path}: {source}")]
    ReadKey { path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no usable PEM: {detail}")]
    Pem { what: &'static str, path: PathBuf, detail: String },
    #[error("http TLS configuration refused: {0}")]
    Config(String),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub open_connections: AtomicU64,
    /// Closed on arrival: `max_connections` were open.
    pub connections_refused: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Requests refused by a limit, by reason (`query_too_long`, `body_too_large`).
    pub requests_refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl HttpStats {
    fn refuse(&self, reason: &'static str) {
        *self.requests_refused.lock().expect("stats lock is never poisoned").entry(reason).or_default() += 1;
    }

    /// The counters in Prometheus text format.
    pub fn write_metrics(&self, out: &mut String) {
        for (name, help, kind, value) in [
            ("herd_http_open_connections", "HTTP connections open.", "gauge", &self.open_connections),
            (
                "herd_http_refused_connections_total",
                "HTTP connections closed on arrival because http.max_connections were open.",
                "counter",
                &self.connections_refused,
            ),
            (
                "herd_http_tls_handshake_failures_total",
                "HTTPS handshakes that failed or timed out.",
                "counter",
                &self.tls_handshake_failures,
            ),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "herd_http_limited_requests_total";
        let _ = writeln!(out, "# HELP {name} HTTP requests refused by a request limit.\n# TYPE {name} counter");
        for (reason, count) in self.requests_refused.lock().expect("stats lock is never poisoned").iter() {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
    }
}

pub struct HttpListener {
    settings: RwLock<HttpListenerConfig>,
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// The fleet CA, which client certificates must chain to.
    fleet_ca_pem: String,
    pub stats: Arc<HttpStats>,
}

fn tls_config(config: &HttpListenerConfig, fleet_ca_pem: &str) -> Result<Option<Arc<rustls::ServerConfig>>, HttpError> {
    let Some((cert_path, key_path)) = &config.tls else { return Ok(None) };
    let cert_pem =
        std::fs::read(cert_path).map_err(|source| HttpError::ReadCert { path: cert_path.clone(), source })?;
    let key_pem = std::fs::read(key_path).map_err(|source| HttpError::ReadKey { path: key_path.clone(), source })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpError::Pem { what: "certificate", path: cert_path.clone(), detail: e.to_string() })?;
    if chain.is_empty() {
        return Err(HttpError::Pem { what: "certificate", path: cert_path.clone(), detail: "no certificate".into() });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| HttpError::Pem {
        what: "key",
        path: key_path.clone(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(fleet_ca_pem.as_bytes()).flatten() {
        roots.add(ca).map_err(|e| HttpError::Config(format!("fleet CA: {e}")))?;
    }
    // Client certificates are optional (bearer tokens work without); one
    // that is presented must chain to the fleet CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| HttpError::Config(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| HttpError::Config(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

impl HttpListener {
    pub fn new(config: &HttpListenerConfig, fleet_ca_pem: String) -> Result<Self, HttpError> {
        let tls = tls_config(config, &fleet_ca_pem)?;
        Ok(Self {
            settings: RwLock::new(config.clone()),
            tls: RwLock::new(tls),
            fleet_ca_pem,
            stats: Arc::new(HttpStats::default()),
        })
    }

    /// Reads the TLS files again (a renewed certificate); on error the ones
    /// in use stay. Limits apply to connections accepted from now on.
    pub fn apply_config(&self, config: &HttpListenerConfig) -> Result<(), HttpError> {
        let tls = tls_config(config, &self.fleet_ca_pem)?;
        *self.tls.write().expect("tls lock is never poisoned") = tls;
        *self.settings.write().expect("settings lock is never poisoned") = config.clone();
        Ok(())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.read().expect("tls lock is never poisoned").is_some()
    }

    fn settings(&self) -> HttpListenerConfig {
        self.settings.read().expect("settings lock is never poisoned").clone()
    }

    /// Puts the request limits in front of `router` (outermost, so they
    /// also hold for requests the auth layer refuses).
    pub fn limits(self: &Arc<Self>, router: axum::Router) -> axum::Router {
        let max_body = self.settings().max_body_bytes;
        router
            .layer(axum::extract::DefaultBodyLimit::max(max_body))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(self), limit_request))
    }

    /// Accepts and serves connections until `shutdown`, then lets requests
    /// in flight finish for a few seconds.
    pub async fn run(self: Arc<Self>, listener: TcpListener, router: axum::Router, shutdown: CancellationToken) {
        let settings = self.settings();
        let slots = Arc::new(Semaphore::new(settings.max_connections));
        loop {
            let (stream, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %err, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                self.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                debug!(%remote, "HTTP connection refused: http.max_connections open");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (listener, router, shutdown) = (Arc::clone(&self), router.clone(), shutdown.child_token());
            tokio::spawn(async move {
                listener.stats.open_connections.fetch_add(1, Ordering::Relaxed);
                listener.serve(stream, remote, router, shutdown).await;
                listener.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
        }
        info!("HTTP listener stopped accepting");
    }

    async fn serve(
        &self,
        stream: tokio::net::TcpStream,
        remote: SocketAddr,
        router: axum::Router,
        shutdown: CancellationToken,
    ) {
        let settings = self.settings();
        let tls = self.tls.read().expect("tls lock is never poisoned").clone();
        let Some(tls) = tls else {
            return serve_http(stream, None, router, &settings, shutdown).await;
        };
        let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
        match tokio::time::timeout(settings.header_read_timeout, handshake).await {
            Ok(Ok(stream)) => {
                let client = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|cert| herd_common::identity::cert_info(cert.as_ref()).ok())
                    .map(ClientCertificate);
                serve_http(stream, client, router, &settings, shutdown).await;
            }
            Ok(Err(err)) => {
                self.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                debug!(%remote, error = %err, "HTTPS handshake failed");
            }
            Err(_) => {
                self.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                debug!(%remote, "HTTPS handshake timed out");
            }
        }
    }
}

/// Serves HTTP/1 on `io` with the head limits, until the peer is done or `shutdown`.
async fn serve_http<I>(
    io: I,
    client: Option<ClientCertificate>,
    router: axum::Router,
    settings: &HttpListenerConfig,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let mut request = request.map(Body::new);
        if let Some(client) = &client {
            request.extensions_mut().insert(client.clone());
        }
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_header_size(settings.max_header_bytes)
        .max_buf_size(settings.max_header_bytes.max(8192) + 8192);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                debug!(error = %err, "HTTP connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}

fn limited(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({"status": "error", "errorType": "bad_data", "error": message});
    (status, axum::Json(body)).into_response()
}

/// Refuses a query string over `max_query_bytes` (414) and a body over
/// `max_body_bytes` (413, from its length or while it is read).
async fn limit_request(State(listener): State<Arc<HttpListener>>, request: Request, next: Next) -> Response {
    let (max_query, max_body) = {
        let settings = listener.settings.read().expect("settings lock is never poisoned");
        (settings.max_query_bytes, settings.max_body_bytes)
    };
    let query_bytes = request.uri().query().map_or(0, str::len);
    if query_bytes > max_query {
        listener.stats.refuse("query_too_long");
        return limited(
            StatusCode::URI_TOO_LONG,
            format!(
                "query string of {query_bytes} bytes exceeds http.max_query_bytes ({max_query}): send long queries as a form POST"
            ),
        );
    }
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body as u64) {
        listener.stats.refuse("body_too_large");
        return limited(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds http.max_body_bytes ({max_body})"),
        );
    }
    // A body without a length (chunked) is cut off at the limit as it is read.
    let request = request.map(|body| Body::new(http_body_util::Limited::new(body, max_body)));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(max_connections: usize) -> (SocketAddr, Arc<HttpListener>, CancellationToken) {
        let config = HttpListenerConfig {
            max_connections,
            max_query_bytes: 1024,
            max_body_bytes: 4096,
            ..HttpListenerConfig::default()
        };
        let http = Arc::new(HttpListener::new(&config, String::new()).unwrap());
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let router = http.limits(
            axum::Router::new()
                .route("/echo", axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() })),
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(Arc::clone(&http).run(socket, router, shutdown.clone()));
        (addr, http, shutdown)
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_the_others_served() {
        let (addr, http, shutdown) = listener(2).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Let the listener take both.
        while http.stats.open_connections.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "closed on arrival");
        assert_eq!(http.stats.connections_refused.load(Ordering::Relaxed), 1);
        drop(held);
        while http.stats.open_connections.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ok =
            request(addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").await;
        assert_eq!(ok, "HTTP/1.1 200 OK");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn long_query_strings_and_large_bodies_are_refused_before_the_handler() {
        let (addr, http, shutdown) = listener(8).await;
        let query = format!(
            "POST /echo?{} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "q".repeat(2000)
        );
        assert_eq!(request(addr, query.as_bytes()).await, "HTTP/1.1 414 URI Too Long");
        let declared = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n";
        assert_eq!(request(addr, declared.as_bytes()).await, "HTTP/1.1 413 Payload Too Large");
        let mut chunked =
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for _ in 0..5 {
            chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 1000, "b".repeat(1000)).as_bytes());
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(request(addr, &chunked).await, "HTTP/1.1 413 Payload Too Large");
        let head = format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "h".repeat(100 << 10));
        assert_eq!(request(addr, head.as_bytes()).await, "HTTP/1.1 431 Request Header Fields Too Large");
        let refused = http.stats.requests_refused.lock().unwrap().clone();
        assert_eq!(refused.get("query_too_long"), Some(&1));
        assert_eq!(refused.get("body_too_large"), Some(&1), "the chunked one is cut off by the body itself");
        shutdown.cancel();
    }
}
