//! The agent's connection to the aggregator: QUIC with mutual TLS, one
//! bidirectional stream driven through `herd_common::protocol::AgentLink`.
//!
//! Every batch from the scheduler goes into the durable [`Buffer`] (flushed)
//! before it is sent, and leaves it when the aggregator acknowledges it.
//! After a (re)connect the newest batch goes first, then new batches as they
//! are collected, and the backlog is resent oldest first behind them at
//! `backfill_batches_per_second`, so the aggregator's "now" recovers at once.
//!
//! Endpoints are tried in order of preference, with capped exponential
//! backoff and jitter between rounds. An endpoint reached before that sends
//! nothing back at all (its aggregator is down, not refusing) is instead
//! tried again at once, attempt after attempt, each given up after a few
//! seconds without an answer; within an attempt QUIC resends the opening
//! packet (after 0.3, 0.9 and 2.1 s), so live data resumes about a second
//! after the aggregator returns however long it was away. While connected to a fallback, the preferred
//! ones are probed every `failback_interval` and the uplink moves back as
//! soon as one answers. The scheduler's channel is drained in every
//! state, so collection never waits for the network.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herd_common::config::Endpoint;
use herd_common::config::agent::AgentConfig;
use herd_common::protocol::{
    AgentEvent, AgentLink, ConfigAck, ConfigOutcome, ConfigPush, Hello, ProtocolError, SampleBatch,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::Buffer;
use crate::collect::SharedSeriesTable;
use crate::remote_config::LiveSettings;

/// How the uplink talks with the agent's configuration manager.
pub struct ConfigChannels {
    /// The running configuration's labels, version and buffer limits.
    pub live: watch::Receiver<LiveSettings>,
    /// Pushes received from the aggregator, to apply.
    pub pushes: mpsc::Sender<ConfigPush>,
    /// Their outcomes, to send back.
    pub acks: mpsc::Receiver<ConfigAck>,
    /// The local file as reported in the hello (passwords hidden), and its directory.
    pub local_config: String,
    pub local_config_dir: String,
    /// What the connected aggregator asks the scheduler to sample between cycles.
    pub alert_inputs: watch::Sender<herd_common::protocol::AlertInputs>,
}

/// QUIC application close codes the agent uses.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_PROTOCOL_ERROR: u32 = 1;
const CLOSE_FAILBACK: u32 = 5;
/// The certificate was renewed: the agent reconnects with the new one.
const CLOSE_RENEWED: u32 = 8;
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// An attempt at an endpoint reached before waits at least this long for the
/// aggregator's first answer before it counts as silent: time for QUIC's
/// resends at 0.3, 0.9 and 2.1 s, and for an aggregator busy with a
/// reconnecting fleet to answer the handshakes it admitted.
const PROBE_ANSWER_FLOOR: Duration = Duration::from_millis(2500);

/// Figures the self-metrics collector reads.
#[derive(Debug, Default)]
pub struct UplinkStats {
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub sent_batches: AtomicU64,
    pub sent_samples: AtomicU64,
    /// Bytes written to the QUIC stream (before QUIC's own overhead).
    pub sent_bytes: AtomicU64,
    pub backfilled_batches: AtomicU64,
    pub acked_batches: AtomicU64,
    /// The agent certificate's `not_after`, Unix seconds (kept by the renewer).
    pub certificate_expiry_seconds: AtomicU64,
    pub certificate_renewals: AtomicU64,
    pub certificate_renewal_failures: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot resolve {endpoint}: {detail}")]
    Resolve { endpoint: String, detail: String },
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("connecting to {endpoint} timed out after {timeout_ms} ms")]
    Timeout { endpoint: String, timeout_ms: u128 },
    #[error("no answer from {endpoint}; is its aggregator running?")]
    Silent { endpoint: String },
    #[error("{endpoint} is busy with other handshakes and refused this one; retrying with backoff")]
    Busy { endpoint: String },
}

/// Why a connection ended.
enum Ended {
    Shutdown,
    Lost(String),
    /// A preferred endpoint answered: continue there.
    Failback(quinn::Connection, usize),
    /// A new certificate was installed: reconnect with it now.
    Renewed,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Connection(String),
}

pub struct Uplink {
    agent_id: String,
    hostname: String,
    config: ConfigChannels,
    endpoints: Vec<Endpoint>,
    server_name: Option<String>,
    connect_timeout: Duration,
    write_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// Each endpoint's round-trip time on its last connection: known, it lets
    /// an attempt the endpoint does not answer be given up early.
    rtts: Vec<Option<Duration>>,
    backfill_period: Duration,
    failback_interval: Duration,
    quic: quinn::Endpoint,
    table: SharedSeriesTable,
    buffer: Buffer,
    stats: Arc<UplinkStats>,
    last_failure: Option<String>,
    /// Shares the live connection with the certificate renewer and brings back new client configurations.
    renewal: Option<crate::identity::RenewalLink>,
    /// The process's start, until the first batch is sent (then `None`).
    started: Option<std::time::Instant>,
}

impl Uplink {
    pub fn new(
        config: &AgentConfig,
        client_config: quinn::ClientConfig,
        table: SharedSeriesTable,
        buffer: Buffer,
        channels: ConfigChannels,
    ) -> std::io::Result<Self> {
        let bind: SocketAddr = "[::]:0".parse().expect("literal address");
        let mut quic = quinn::Endpoint::client(bind)
            .or_else(|_| quinn::Endpoint::client("0.0.0.0:0".parse().expect("literal address")))?;
        quic.set_default_client_config(client_config);
        Ok(Self {
            agent_id: config.id.clone(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            config: channels,
            endpoints: config.uplink.endpoints.clone(),
            server_name: config.uplink.server_name.clone(),
            connect_timeout: config.uplink.connect_timeout,
            write_timeout: config.uplink.idle_timeout,
            backoff_initial: config.uplink.backoff_initial,
            backoff_max: config.uplink.backoff_max,
            rtts: vec![None; config.uplink.endpoints.len()],
            backfill_period: Duration::from_secs(1) / config.uplink.backfill_batches_per_second.max(1),
            failback_interval: config.uplink.failback_interval,
            quic,
            table,
            buffer,
            stats: Arc::new(UplinkStats::default()),
            last_failure: None,
            renewal: None,
            started: None,
        })
    }

    /// Lets `link`'s renewer use the live connection and switch certificates.
    pub fn with_renewal(mut self, link: crate::identity::RenewalLink) -> Self {
        self.renewal = Some(link);
        self
    }

    /// Logs the time from `started` to the first batch sent.
    pub fn with_start_time(mut self, started: std::time::Instant) -> Self {
        self.started = Some(started);
        self
    }

    /// Installs a client configuration the renewer made since the last connect, if any.
    fn take_renewed_client_config(&mut self) {
        let Some(link) = self.renewal.as_mut() else { return };
        if link.client_config.has_changed().unwrap_or(false)
            && let Some(config) = link.client_config.borrow_and_update().clone()
        {
            self.quic.set_default_client_config(config);
        }
    }

    pub fn stats(&self) -> Arc<UplinkStats> {
        Arc::clone(&self.stats)
    }

    /// Delivers batches from `rx` until `shutdown`, reconnecting as needed.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SampleBatch>, shutdown: CancellationToken) {
        let mut backoff = self.backoff_initial;
        'rounds: loop {
            self.take_renewed_client_config();
            let mut renewed = false;
            // Whether every endpoint this round was silent (down, not refusing).
            let mut all_silent = !self.endpoints.is_empty();
            // Whether an endpoint refused for being busy with other handshakes.
            let mut busy = false;
            for index in 0..self.endpoints.len() {
                let connecting = connect(
                    self.quic.clone(),
                    self.endpoints[index].clone(),
                    self.server_name.clone(),
                    self.connect_timeout,
                    self.probe_window(index),
                );
                let Some(result) = self.while_collecting(&mut rx, &shutdown, connecting).await else {
                    break 'rounds;
                };
                let mut current = match result {
                    Ok(connection) => Some((connection, index)),
                    Err(err) => {
                        all_silent &= matches!(err, ConnectError::Silent { .. });
                        busy |= matches!(err, ConnectError::Busy { .. });
                        self.report_failure(err.to_string());
                        continue;
                    }
                };
                all_silent = false;
                while let Some((connection, index)) = current.take() {
                    let started = Instant::now();
                    let endpoint = self.endpoints[index].clone();
                    let ended = self.serve(&connection, index, &mut rx, &shutdown).await;
                    self.rtts[index] = Some(connection.rtt());
                    match ended {
                        Ended::Shutdown => break 'rounds,
                        Ended::Failback(better, better_index) => {
                            info!(from = %endpoint, to = %self.endpoints[better_index], "returning to a preferred aggregator");
                            connection.close(CLOSE_FAILBACK.into(), b"returning to a preferred aggregator");
                            current = Some((better, better_index));
                        }
                        Ended::Renewed => {
                            info!(endpoint = %endpoint, "reconnecting with the renewed certificate");
                            connection.close(CLOSE_RENEWED.into(), b"certificate renewed");
                            renewed = true;
                        }
                        Ended::Lost(reason) => {
                            self.report_failure(format!("connection to {endpoint} lost: {reason}"));
                            if started.elapsed() >= STABLE_CONNECTION {
                                backoff = self.backoff_initial;
                            }
                        }
                    }
                }
                // Start again from the preferred endpoint.
                break;
            }
            if renewed {
                continue 'rounds;
            }
            if all_silent {
                // Nobody answered: try again at once (each silent attempt took a
                // few seconds), without growing the backoff that paces attempts
                // an aggregator refuses.
                debug!(buffered_batches = self.buffer.len(), "uplink probing");
                continue;
            }
            // Agents a busy aggregator refused together would come back together,
            // in waves it refuses again: theirs retry anywhere within the backoff.
            let wait = if busy { fully_jittered(backoff) } else { jittered(backoff) };
            debug!(wait_ms = wait.as_millis() as u64, buffered_batches = self.buffer.len(), "uplink backing off");
            if self.while_collecting(&mut rx, &shutdown, tokio::time::sleep(wait)).await.is_none() {
                break;
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
        self.stats.connected.store(0, Ordering::Relaxed);
        self.flush_buffer().await;
        let _ = timeout(Duration::from_secs(2), self.quic.wait_idle()).await;
        if !self.buffer.is_empty() {
            info!(
                buffered_batches = self.buffer.len(),
                "agent stopped; unacknowledged batches stay buffered for the next start"
            );
        }
    }

    /// How long an attempt on endpoint `index` waits for a first answer before
    /// it counts as silent, or `None` (wait the whole connect timeout) for an
    /// endpoint never reached, whose round-trip time is unknown.
    fn probe_window(&self, index: usize) -> Option<Duration> {
        let rtt = self.rtts[index]?;
        Some((rtt * 4).max(PROBE_ANSWER_FLOOR).min(self.connect_timeout))
    }

    fn report_failure(&mut self, message: String) {
        self.stats.connected.store(0, Ordering::Relaxed);
        if self.last_failure.as_deref() != Some(message.as_str()) {
            warn!(error = %message, buffered_batches = self.buffer.len(), "uplink unavailable");
            self.last_failure = Some(message);
        }
    }

    /// Runs `fut` while still buffering batches; `None` on shutdown.
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
                    Some(batch) => self.store(&batch).await,
                    None => return None,
                },
            }
        }
    }

    /// Writes `batch` to the buffer and makes it durable before anything sends it.
    async fn store(&mut self, batch: &SampleBatch) {
        if self.config.live.has_changed().unwrap_or(false) {
            let limits = self.config.live.borrow_and_update().buffer.clone();
            self.buffer.set_limits(limits.max_bytes, limits.memory_batches);
        }
        {
            let table = self.table.lock().expect("series table lock is never poisoned");
            self.buffer.push(batch, &table);
        }
        self.flush_buffer().await;
    }

    async fn flush_buffer(&mut self) {
        let files = self.buffer.flush_handle();
        // The flush is an fsync: keep it off the runtime's thread.
        match tokio::task::spawn_blocking(move || files.flush()).await {
            Ok(result) => self.buffer.flushed(result),
            Err(_) => self.buffer.flushed(Err(std::io::Error::other("buffer flush task panicked"))),
        }
    }

    async fn serve(
        &mut self,
        connection: &quinn::Connection,
        index: usize,
        rx: &mut mpsc::Receiver<SampleBatch>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let ended = self.serve_stream(connection, index, rx, shutdown).await;
        self.buffer.set_draining(false);
        // What an aggregator asked for holds while connected to it.
        self.set_alert_inputs(Default::default());
        match ended {
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

    /// Hands the scheduler what to sample between cycles; it wakes only on a change.
    fn set_alert_inputs(&self, inputs: herd_common::protocol::AlertInputs) {
        self.config.alert_inputs.send_if_modified(|current| {
            let changed = *current != inputs;
            *current = inputs;
            changed
        });
    }

    /// Sends the buffered batch `seq`, if still held.
    fn send_buffered(&mut self, link: &mut AgentLink, seq: u64) -> Result<(), ProtocolError> {
        let Some(batch) = self.buffer.get(seq) else { return Ok(()) };
        self.send(link, &batch)
    }

    fn send(&mut self, link: &mut AgentLink, batch: &SampleBatch) -> Result<(), ProtocolError> {
        let table = self.table.lock().expect("series table lock is never poisoned");
        link.send_batch(Instant::now().into_std(), batch, &table)?;
        if let Some(started) = self.started.take() {
            info!(startup_ms = started.elapsed().as_millis() as u64, samples = batch.samples.len(), "first batch sent");
        }
        self.stats.sent_batches.fetch_add(1, Ordering::Relaxed);
        self.stats.sent_samples.fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn serve_stream(
        &mut self,
        connection: &quinn::Connection,
        index: usize,
        rx: &mut mpsc::Receiver<SampleBatch>,
        shutdown: &CancellationToken,
    ) -> Result<Ended, StreamError> {
        let endpoint = self.endpoints[index].clone();
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|e| StreamError::Connection(describe_connection_error(&e)))?;
        let hello = {
            let live = self.config.live.borrow();
            Hello {
                agent_id: self.agent_id.clone(),
                hostname: self.hostname.clone(),
                agent_version: herd_common::VERSION.to_owned(),
                labels: live.labels.clone(),
                config_version: live.version,
                config_profile: live.profile.clone(),
                config_hash: live.hash.clone(),
                local_config: self.config.local_config.clone(),
                local_config_dir: self.config.local_config_dir.clone(),
                backlog_batches: self.buffer.len() as u64,
            }
        };
        let mut link = AgentLink::new(Instant::now().into_std(), hello)?;

        // Live first: the newest batch now, the rest behind it at the backfill rate.
        let newest = self.buffer.newest();
        if let Some(newest) = newest {
            self.send_buffered(&mut link, newest)?;
        }
        let mut backfill_next = 0u64;
        let backfill_end = newest.unwrap_or(0);
        let mut backfilling = self.buffer.next_at_or_after(0, backfill_end).is_some();
        let mut next_backfill = Instant::now();
        let backlog = self.buffer.len().saturating_sub(1);

        let mut renewed_config = self.renewal.as_ref().map(|link| link.client_config.clone());
        let mut next_probe = Instant::now() + self.failback_interval;
        let mut probe: Option<JoinHandle<Option<(quinn::Connection, usize)>>> = None;
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        loop {
            self.flush_link(&mut link, &mut send).await?;
            while let Some(event) = link.poll_event() {
                match event {
                    AgentEvent::Welcomed(welcome) => {
                        info!(
                            endpoint = %endpoint,
                            identity = %welcome.agent_id,
                            aggregator_version = %welcome.aggregator_version,
                            backlog_batches = backlog,
                            "uplink connected"
                        );
                        self.last_failure = None;
                        if let Some(link) = &self.renewal {
                            link.connection.send_replace(Some(connection.clone()));
                        }
                        self.stats.connected.store(1, Ordering::Relaxed);
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        self.buffer.set_draining(true);
                    }
                    AgentEvent::Acked { ranges } => {
                        let before = self.buffer.len();
                        self.buffer.acknowledge(&ranges);
                        self.stats.acked_batches.fetch_add((before - self.buffer.len()) as u64, Ordering::Relaxed);
                        link.set_backlog(self.buffer.len() as u64);
                    }
                    AgentEvent::ConfigPushed(push) => {
                        let version = push.version;
                        if self.config.pushes.try_send(push).is_err() {
                            let ack = self.busy_ack(version);
                            link.send_config_ack(Instant::now().into_std(), ack)?;
                        }
                    }
                    AgentEvent::AlertInputs(inputs) => self.set_alert_inputs(inputs),
                    AgentEvent::PeerClosing { reason } => {
                        return Ok(Ended::Lost(format!("aggregator closing: {reason}")));
                    }
                }
            }
            self.flush_link(&mut link, &mut send).await?;
            let deadline = link.poll_timeout().map(Instant::from_std);
            let probing = index > 0 && probe.is_none();
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
                    self.store(&batch).await;
                    self.send(&mut link, &batch)?;
                }
                Some(ack) = self.config.acks.recv() => {
                    link.send_config_ack(Instant::now().into_std(), ack)?;
                }
                read = recv.read(&mut buffer) => match read {
                    Ok(Some(n)) => link.handle_bytes(Instant::now().into_std(), &buffer[..n])?,
                    Ok(None) => return Ok(Ended::Lost("aggregator closed the stream".into())),
                    Err(err) => return Err(StreamError::Connection(describe_read_error(&err))),
                },
                _ = sleep_or_forever(deadline) => link.handle_timeout(Instant::now().into_std())?,
                _ = client_config_changed(&mut renewed_config) => {
                    let _ = link.close(Instant::now().into_std(), "certificate renewed");
                    let _ = self.flush_link(&mut link, &mut send).await;
                    let _ = send.finish();
                    return Ok(Ended::Renewed);
                }
                _ = sleep_until(next_backfill), if backfilling => {
                    match self.buffer.next_at_or_after(backfill_next, backfill_end) {
                        Some(seq) => {
                            self.send_buffered(&mut link, seq)?;
                            self.stats.backfilled_batches.fetch_add(1, Ordering::Relaxed);
                            backfill_next = seq + 1;
                            next_backfill += self.backfill_period;
                        }
                        None => {
                            backfilling = false;
                            debug!(endpoint = %endpoint, "backfill sent");
                        }
                    }
                }
                _ = sleep_until(next_probe), if probing => {
                    probe = Some(tokio::spawn(probe_preferred(
                        self.quic.clone(),
                        self.endpoints[..index].to_vec(),
                        self.server_name.clone(),
                        self.connect_timeout,
                    )));
                }
                found = async { probe.as_mut().expect("guarded by is_some").await }, if probe.is_some() => {
                    probe = None;
                    next_probe = Instant::now() + self.failback_interval;
                    if let Ok(Some((better, better_index))) = found {
                        let _ = link.close(Instant::now().into_std(), "returning to a preferred aggregator");
                        let _ = self.flush_link(&mut link, &mut send).await;
                        let _ = send.finish();
                        return Ok(Ended::Failback(better, better_index));
                    }
                }
            }
        }
    }

    /// The answer to a push that arrived while another was being applied.
    fn busy_ack(&self, version: u64) -> ConfigAck {
        let live = self.config.live.borrow();
        ConfigAck {
            version,
            outcome: ConfigOutcome::Refused,
            running_version: live.version,
            running_profile: live.profile.clone(),
            running_hash: live.hash.clone(),
            effective_hash: String::new(),
            error: Some("another pushed configuration is being applied; send it again".to_owned()),
            collectors: Vec::new(),
        }
    }

    async fn flush_link(&self, link: &mut AgentLink, send: &mut quinn::SendStream) -> Result<(), StreamError> {
        let Some(bytes) = link.poll_transmit() else { return Ok(()) };
        match timeout(self.write_timeout, send.write_all(&bytes)).await {
            Ok(Ok(())) => {
                self.stats.sent_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(err)) => Err(StreamError::Connection(format!("write failed: {err}"))),
            Err(_) => Err(StreamError::Connection("write timed out".into())),
        }
    }
}

/// Tries each preferred endpoint in order; the first that connects wins.
async fn probe_preferred(
    quic: quinn::Endpoint,
    endpoints: Vec<Endpoint>,
    server_name: Option<String>,
    connect_timeout: Duration,
) -> Option<(quinn::Connection, usize)> {
    for (index, endpoint) in endpoints.into_iter().enumerate() {
        if let Ok(connection) = connect(quic.clone(), endpoint, server_name.clone(), connect_timeout, None).await {
            return Some((connection, index));
        }
    }
    None
}

/// Resolves when the renewer publishes a new client configuration; never without a renewer.
async fn client_config_changed(receiver: &mut Option<tokio::sync::watch::Receiver<Option<quinn::ClientConfig>>>) {
    if let Some(receiver) = receiver
        && receiver.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
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
    probe_window: Option<Duration>,
) -> Result<quinn::Connection, ConnectError> {
    let name = endpoint.to_string();
    let attempt = async {
        let addr = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| ConnectError::Resolve { endpoint: name.clone(), detail: e.to_string() })?
            .next()
            .ok_or_else(|| ConnectError::Resolve { endpoint: name.clone(), detail: "no addresses".into() })?;
        let server_name = server_name.as_deref().unwrap_or(&endpoint.host);
        let mut connecting = quic
            .connect(addr, server_name)
            .map_err(|e| ConnectError::Connect { endpoint: name.clone(), detail: e.to_string() })?;
        // The aggregator's first answer carries its handshake data; a failure
        // ends this wait too, and is reported by `connecting` below.
        if let Some(window) = probe_window
            && timeout(window, connecting.handshake_data()).await.is_err()
        {
            return Err(ConnectError::Silent { endpoint: name.clone() });
        }
        connecting.await.map_err(|e| match e {
            // QUIC's idle timeout, when shorter than the window, ends a silent attempt first.
            quinn::ConnectionError::TimedOut if probe_window.is_some() => {
                ConnectError::Silent { endpoint: name.clone() }
            }
            quinn::ConnectionError::ConnectionClosed(close)
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                ConnectError::Busy { endpoint: name.clone() }
            }
            e => ConnectError::Connect { endpoint: name.clone(), detail: describe_connection_error(&e) },
        })
    };
    timeout(connect_timeout, attempt).await.unwrap_or_else(|_| {
        Err(ConnectError::Timeout { endpoint: name.clone(), timeout_ms: connect_timeout.as_millis() })
    })
}

/// `base` ± 20%, so a fleet that lost its aggregator does not reconnect in lockstep.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Anywhere from a tenth of `base` to `base`: spreads the retries of agents refused at the same moment.
fn fully_jittered(base: Duration) -> Duration {
    base.mul_f64(0.1 + 0.9 * fastrand::f64())
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

    #[test]
    fn full_jitter_spreads_over_the_whole_backoff() {
        let waits: Vec<Duration> = (0..1000).map(|_| fully_jittered(Duration::from_secs(10))).collect();
        assert!(waits.iter().all(|&d| d >= Duration::from_secs(1) && d <= Duration::from_secs(10)));
        assert!(waits.iter().any(|&d| d < Duration::from_secs(3)) && waits.iter().any(|&d| d > Duration::from_secs(8)));
    }
}
