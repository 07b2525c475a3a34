//! Probes, as blackbox_exporter's `tcp_connect` and `http_2xx` modules: one
//! target per collector, `probe_success`, `probe_duration_seconds` and, for
//! HTTP, `probe_http_status_code`, labelled with the `target` as configured.
//!
//! HTTP is a plain HTTP/1.1 `GET` with `Connection: close`, reading only the
//! status line: a probe asks "does it answer 2xx", it does not download the
//! page. Every probe runs under its own timeout, below the scheduler's, so a
//! target that hangs reads `probe_success 0` rather than going silent.
//!
//! Deliberately absent for now: https, redirects, DNS, ICMP, body matching.

use std::time::Duration;

use async_trait::async_trait;
use herd_common::config::Endpoint;
use herd_common::config::agent::{ProbeConfig, ProbeKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
        }
    }

    async fn probe(&self) -> Result<Outcome, String> {
        match &self.kind {
            ProbeKind::Tcp { address } => {
                connect(address).await?;
                Ok(Outcome { status: None })
            }
            ProbeKind::Http { address, path } => {
                let mut stream = connect(address).await?;
                let host = if address.port == 80 { address.host.clone() } else { address.to_string() };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: herd-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.map_err(|err| format!("cannot send the request: {err}"))?;
                let mut line = Vec::new();
                BufReader::new(&mut stream)
                    .take(MAX_STATUS_LINE_BYTES)
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|err| format!("no answer: {err}"))?;
                let status = parse_status_line(&line).ok_or("not an HTTP status line")?;
                Ok(Outcome { status: Some(status) })
            }
        }
    }
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
