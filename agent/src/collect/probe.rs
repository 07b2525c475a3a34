//! Probes, as blackbox_exporter's `tcp_connect` and `http_2xx` modules: one
//! target per collector, `probe_success`, `probe_duration_seconds` and, for
//! HTTP, `probe_http_status_code`, labelled with the `target` as configured.
//!
//! HTTP is a plain HTTP/1.1 `GET` with `Connection: close`, reading only the
//! status line: a probe asks "does it answer 2xx", it does not download the
//! page. Every probe runs under its own timeout, below the scheduler's, so a
//! target that hangs reads `probe_success 0` rather than going silent.
//!
//! https targets run the same request over TLS (rustls), verified against
//! the probe's `tls.ca_file` (default: the system's CAs), with a client
//! certificate when one is configured; a failed handshake is
//! `probe_success 0`, `probe_http_status_code 0`.
//!
//! Deliberately absent for now: redirects, DNS, ICMP, body matching.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herd_common::config::Endpoint;
use herd_common::config::agent::{ProbeConfig, ProbeKind};
use herd_common::config::client_tls::ClientTls;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Batch, CollectError, Collector};

/// Longest status line read from an HTTP target.
const MAX_STATUS_LINE_BYTES: u64 = 8 << 10;

pub struct ProbeCollector {
    /// `herd_collector_success{collector=...}`: "probe:" and the target.
    collector_name: String,
    target: String,
    kind: ProbeKind,
    timeout: Duration,
    interval: Duration,
    /// Set for https targets.
    tls: Option<ClientTls>,
    /// Whether the last probe failed, to log once per change rather than per cycle.
    failing: AtomicBool,
}

/// What one probe found: the HTTP status when there was one.
struct Outcome {
    status: Option<u16>,
}

impl ProbeCollector {
    pub fn from_config(config: &ProbeConfig) -> Self {
        Self {
            collector_name: format!("probe:{}", config.target),
            target: config.target.clone(),
            kind: config.kind.clone(),
            timeout: config.timeout,
            interval: config.interval,
            tls: config.tls.clone(),
            failing: AtomicBool::new(false),
        }
    }

    async fn probe(&self) -> Result<Outcome, String> {
        match &self.kind {
            ProbeKind::Tcp { address } => {
                connect(address).await?;
                Ok(Outcome { status: None })
            }
            ProbeKind::Http { address, path } => {
                let stream = connect(address).await?;
                let default_port = if self.tls.is_some() { 443 } else { 80 };
                let host = if address.port == default_port { address.host.clone() } else { address.to_string() };
                let status = match &self.tls {
                    None => status(stream, &host, path).await?,
                    Some(tls) => {
                        let config = super::tls::client_config(tls, super::tls::Verify::Full, &[b"http/1.1"])?;
                        let name = super::tls::server_name(tls, &address.host)?;
                        status(super::tls::handshake(config, name, stream).await?, &host, path).await?
                    }
                };
                Ok(Outcome { status: Some(status) })
            }
        }
    }
}

/// Sends `GET path` and reads the status code.
async fn status<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, host: &str, path: &str) -> Result<u16, String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: herd-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|err| format!("cannot send the request: {err}"))?;
    stream.flush().await.map_err(|err| format!("cannot send the request: {err}"))?;
    let mut line = Vec::new();
    BufReader::new(&mut stream)
        .take(MAX_STATUS_LINE_BYTES)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|err| format!("no answer: {err}"))?;
    Ok(parse_status_line(&line).ok_or("not an HTTP status line")?)
}

async fn connect(address: &Endpoint) -> Result<TcpStream, String> {
    TcpStream::connect((address.host.as_str(), address.port)).await.map_err(|err| format!("cannot connect: {err}"))
}

/// "HTTP/1.1 204 No Content\r\n" → 204.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|version| version.starts_with("HTTP/"))?;
    parts.next()?.parse().ok().filter(|code| (100..1000).contains(code))
}

#[async_trait]
impl Collector for ProbeCollector {
    fn name(&self) -> &str {
        &self.collector_name
    }

    fn job(&self) -> &str {
        "blackbox"
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    /// A failed probe is a result, not a collector failure: it returns Ok
    /// with `probe_success 0`, as blackbox_exporter's scrape succeeds.
    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.probe()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let target = [("target", self.target.as_str())];
        let success = match &result {
            Ok(Outcome { status: Some(code) }) => (200..300).contains(code),
            Ok(Outcome { status: None }) => true,
            Err(_) => false,
        };
        let was_failing = self.failing.swap(!success, Ordering::Relaxed);
        match (&result, success, was_failing) {
            (Err(err), false, false) => tracing::warn!(target = %self.target, error = %err, "probe failing"),
            (Ok(Outcome { status: Some(code) }), false, false) => {
                tracing::warn!(target = %self.target, error = %format!("HTTP status {code}"), "probe failing");
            }
            (_, true, true) => tracing::info!(target = %self.target, "probe recovered"),
            _ => {}
        }
        out.push("probe_success", &target, if success { 1.0 } else { 0.0 });
        out.push("probe_duration_seconds", &target, elapsed);
        if let ProbeKind::Http { .. } = self.kind {
            let code = match result {
                Ok(Outcome { status: Some(code) }) => f64::from(code),
                _ => 0.0, // blackbox_exporter's value when no response came.
            };
            out.push("probe_http_status_code", &target, code);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
