//! The agent's connection to the aggregator: QUIC with mutual TLS, one
//! bidirectional stream driven through `herd_common::protocol::AgentLink`.
//!
//! Batches stay in `pending` until the aggregator acknowledges them and are
//! sent again on the next connection. Endpoints are tried in order of
//! preference; between rounds the uplink waits with capped exponential
//! backoff and jitter, and keeps accepting batches from the scheduler the
//! whole time so collection never stalls on the network.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use herd_common::config::Endpoint;
use herd_common::config::agent::AgentConfig;
use herd_common::protocol::{AgentEvent, AgentLink, ConfigAck, Hello, ProtocolError, SampleBatch};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::collect::SharedSeriesTable;

/// QUIC application close codes the agent uses.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_PROTOCOL_ERROR: u32 = 1;
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
const READ_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot resolve {endpoint}: {detail}")]
    Resolve { endpoint: String, detail: String },
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("connecting to {endpoint} timed out after {timeout_ms} ms")]
    Timeout { endpoint: String, timeout_ms: u128 },
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    Lost(String),
}

pub struct Uplink {
    agent_id: String,
    hostname: String,
    labels: Vec<(String, String)>,
    endpoints: Vec<Endpoint>,
    server_name: Option<String>,
    connect_timeout: Duration,
    write_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    quic: quinn::Endpoint,
    table: SharedSeriesTable,
    pending: VecDeque<SampleBatch>,
    max_pending: usize,
    dropped_samples: u64,
    last_failure: Option<String>,
}

impl Uplink {
    pub fn new(
        config: &AgentConfig,
        client_config: quinn::ClientConfig,
        table: SharedSeriesTable,
    ) -> std::io::Result<Self> {
        let bind: SocketAddr = "[::]:0".parse().expect("literal address");
        let mut quic = quinn::Endpoint::client(bind)
            .or_else(|_| quinn::Endpoint::client("0.0.0.0:0".parse().expect("literal address")))?;
        quic.set_default_client_config(client_config);
        Ok(Self {
            agent_id: config.id.clone(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            labels: config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            endpoints: config.uplink.endpoints.clone(),
            server_name: config.uplink.server_name.clone(),
            connect_timeout: config.uplink.connect_timeout,
            write_timeout: config.uplink.idle_timeout,
            backoff_initial: config.uplink.backoff_initial,
            backoff_max: config.uplink.backoff_max,
            quic,
            table,
            pending: VecDeque::new(),
            max_pending: config.uplink.max_pending_batches,
            dropped_samples: 0,
            last_failure: None,
        })
    }

    /// Delivers batches from `rx` until `shutdown`, reconnecting as needed.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SampleBatch>, shutdown: CancellationToken) {
        let mut backoff = self.backoff_initial;
        'rounds: loop {
            for index in 0..self.endpoints.len() {
                let endpoint = self.endpoints[index].clone();
                let connecting =
                    connect(self.quic.clone(), endpoint.clone(), self.server_name.clone(), self.connect_timeout);
                let Some(result) = self.while_collecting(&mut rx, &shutdown, connecting).await else {
                    break 'rounds;
                };
                let connection = match result {
                    Ok(connection) => connection,
                    Err(err) => {
                        self.report_failure(err.to_string());
                        continue;
                    }
                };
                let started = Instant::now();
                match self.serve(&connection, &endpoint, &mut rx, &shutdown).await {
                    Ended::Shutdown => break 'rounds,
                    Ended::Lost(reason) => {
                        self.report_failure(format!("connection to {endpoint} lost: {reason}"));
                        if started.elapsed() >= STABLE_CONNECTION {
                            backoff = self.backoff_initial;
                        }
                    }
                }
                // Start again from the preferred endpoint.
                break;
            }
            let wait = jittered(backoff);
            debug!(wait_ms = wait.as_millis() as u64, pending_batches = self.pending.len(), "uplink backing off");
            if self.while_collecting(&mut rx, &shutdown, tokio::time::sleep(wait)).await.is_none() {
                break;
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
        self.quic.wait_idle().await;
        if !self.pending.is_empty() {
            warn!(pending_batches = self.pending.len(), "agent stopped with unacknowledged batches");
        }
    }

    fn report_failure(&mut self, message: String) {
        if self.last_failure.as_deref() != Some(message.as_str()) {
            warn!(error = %message, pending_batches = self.pending.len(), "uplink unavailable");
            self.last_failure = Some(message);
        }
    }

    /// Runs `fut` while still accepting batches; `None` on shutdown.
    async fn while_collecting<F: Future>(
        &mut self,
        rx: &mut mpsc::Receiver<SampleBatch>,
        shutdown: &CancellationToken,
        fut: F,
    ) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                output = &mut fut => return Some(output),
                batch = rx.recv() => match batch {
                    Some(batch) => self.enqueue(batch),
                    None => return None,
                },
            }
        }
    }

    /// Keeps `batch` until acknowledged; drops the oldest when over the limit.
    fn enqueue(&mut self, batch: SampleBatch) {
        self.pending.push_back(batch);
        while self.pending.len() > self.max_pending {
            if let Some(dropped) = self.pending.pop_front() {
                self.dropped_samples += dropped.samples.len() as u64;
                warn!(
                    seq = dropped.seq,
                    dropped_samples_total = self.dropped_samples,
                    "uplink backlog full: dropped the oldest batch"
                );
            }
        }
    }

    fn acknowledge(&mut self, ranges: &[(u64, u64)]) {
        self.pending.retain(|batch| !ranges.iter().any(|&(first, last)| (first..=last).contains(&batch.seq)));
    }

    async fn serve(
        &mut self,
        connection: &quinn::Connection,
        endpoint: &Endpoint,
        rx: &mut mpsc::Receiver<SampleBatch>,
        shutdown: &CancellationToken,
    ) -> Ended {
        match self.serve_stream(connection, endpoint, rx, shutdown).await {
            Ok(Ended::Shutdown) => {
                connection.close(CLOSE_SHUTDOWN.into(), b"agent shutting down");
                Ended::Shutdown
            }
            Ok(ended) => ended,
            Err(StreamError::Protocol(err)) => {
                // The aggregator's close reason says more than our view of it.
                if let Some(reason) = connection.close_reason() {
                    return Ended::Lost(describe_connection_error(&reason));
                }
                connection.close(CLOSE_PROTOCOL_ERROR.into(), err.reason_code().as_bytes());
                Ended::Lost(err.to_string())
            }
            Err(StreamError::Connection(reason)) => Ended::Lost(reason),
        }
    }

    async fn serve_stream(
        &mut self,
        connection: &quinn::Connection,
        endpoint: &Endpoint,
        rx: &mut mpsc::Receiver<SampleBatch>,
        shutdown: &CancellationToken,
    ) -> Result<Ended, StreamError> {
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|e| StreamError::Connection(describe_connection_error(&e)))?;
        let now = Instant::now().into_std();
        let hello = Hello {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            agent_version: herd_common::VERSION.to_owned(),
            labels: self.labels.clone(),
            config_version: 0,
            backlog_batches: self.pending.len() as u64,
        };
        let mut link = AgentLink::new(now, hello)?;
        {
            let table = self.table.lock().expect("series table lock is never poisoned");
            for batch in &self.pending {
                link.send_batch(now, batch, &table)?;
            }
        }
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        loop {
            flush(&mut link, &mut send, self.write_timeout).await?;
            while let Some(event) = link.poll_event() {
                match event {
                    AgentEvent::Welcomed(welcome) => {
                        info!(
                            endpoint = %endpoint,
                            identity = %welcome.agent_id,
                            aggregator_version = %welcome.aggregator_version,
                            pending_batches = self.pending.len(),
                            "uplink connected"
                        );
                        self.last_failure = None;
                    }
                    AgentEvent::Acked { ranges } => self.acknowledge(&ranges),
                    AgentEvent::ConfigPushed(push) => {
                        let error = Some("this agent version does not apply pushed configuration yet".to_owned());
                        link.send_config_ack(Instant::now().into_std(), ConfigAck { version: push.version, error })?;
                    }
                    AgentEvent::PeerClosing { reason } => {
                        return Ok(Ended::Lost(format!("aggregator closing: {reason}")));
                    }
                }
            }
            flush(&mut link, &mut send, self.write_timeout).await?;
            let deadline = link.poll_timeout().map(Instant::from_std);
            tokio::select! {
                _ = shutdown.cancelled() => {
                    link.close(Instant::now().into_std(), "agent shutting down")?;
                    if let Some(bytes) = link.poll_transmit() {
                        let _ = timeout(Duration::from_secs(1), send.write_all(&bytes)).await;
                    }
                    let _ = send.finish();
                    return Ok(Ended::Shutdown);
                }
                batch = rx.recv() => {
                    let Some(batch) = batch else { return Ok(Ended::Shutdown) };
                    {
                        let table = self.table.lock().expect("series table lock is never poisoned");
                        link.send_batch(Instant::now().into_std(), &batch, &table)?;
                    }
                    self.enqueue(batch);
                }
                read = recv.read(&mut buffer) => match read {
                    Ok(Some(n)) => link.handle_bytes(Instant::now().into_std(), &buffer[..n])?,
                    Ok(None) => return Ok(Ended::Lost("aggregator closed the stream".into())),
                    Err(err) => return Err(StreamError::Connection(describe_read_error(&err))),
                },
                _ = sleep_or_forever(deadline) => link.handle_timeout(Instant::now().into_std())?,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Connection(String),
}

async fn flush(link: &mut AgentLink, send: &mut quinn::SendStream, write_timeout: Duration) -> Result<(), StreamError> {
    let Some(bytes) = link.poll_transmit() else { return Ok(()) };
    match timeout(write_timeout, send.write_all(&bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(StreamError::Connection(format!("write failed: {err}"))),
        Err(_) => Err(StreamError::Connection("write timed out".into())),
    }
}

async fn sleep_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn describe_connection_error(err: &quinn::ConnectionError) -> String {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            format!("aggregator closed the connection: {}", String::from_utf8_lossy(&close.reason))
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            format!(
                "connection closed by the aggregator ({close}); is this agent's certificate signed by the fleet CA?"
            )
        }
        other => other.to_string(),
    }
}

fn describe_read_error(err: &quinn::ReadError) -> String {
    match err {
        quinn::ReadError::ConnectionLost(err) => describe_connection_error(err),
        other => other.to_string(),
    }
}

async fn connect(
    quic: quinn::Endpoint,
    endpoint: Endpoint,
    server_name: Option<String>,
    connect_timeout: Duration,
) -> Result<quinn::Connection, ConnectError> {
    let name = endpoint.to_string();
    let attempt = async {
        let addr = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| ConnectError::Resolve { endpoint: name.clone(), detail: e.to_string() })?
            .next()
            .ok_or_else(|| ConnectError::Resolve { endpoint: name.clone(), detail: "no addresses".into() })?;
        let server_name = server_name.as_deref().unwrap_or(&endpoint.host);
        let connecting = quic
            .connect(addr, server_name)
            .map_err(|e| ConnectError::Connect { endpoint: name.clone(), detail: e.to_string() })?;
        connecting
            .await
            .map_err(|e| ConnectError::Connect { endpoint: name.clone(), detail: describe_connection_error(&e) })
    };
    timeout(connect_timeout, attempt).await.unwrap_or_else(|_| {
        Err(ConnectError::Timeout { endpoint: name.clone(), timeout_ms: connect_timeout.as_millis() })
    })
}

/// `base` ± 20%, so a fleet that lost its aggregator does not reconnect in lockstep.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12), "{d:?}");
        }
    }
}
