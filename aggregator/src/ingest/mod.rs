//! Accepts agents over QUIC with mutual TLS and writes their batches to the
//! store and the write-ahead log. One task per connection drives a
//! `ServerLink`; this module only moves bytes, time and decoded samples.
//!
//! A batch is acknowledged only once its WAL record is synced; a batch whose
//! (agent, sequence) was already stored is acknowledged again and dropped
//! (`dedup`). A bad frame closes its connection with a typed reason and a
//! counter; the listener keeps serving.

pub mod dedup;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use herd_common::protocol::frame::FrameError;
use herd_common::protocol::{AlertInputs, ProtocolError, RefuseReason, ServerEvent, ServerLink, Welcome};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::fleet::Fleet;
use crate::store::{Sample, SeriesRef, Storage};
use crate::wal::{self, Wal};
use dedup::Dedup;
use herd_common::metric::Labels;

/// QUIC application close codes the aggregator uses.
pub const CLOSE_SHUTDOWN: u32 = 0;
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;
pub const CLOSE_VERSION_MISMATCH: u32 = 2;
pub const CLOSE_NO_IDENTITY: u32 = 3;
pub const CLOSE_NOT_DURABLE: u32 = 4;
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes taken from the stream at once. Chunks come from QUIC's own
/// receive buffers, so an idle connection holds no read buffer of its own.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Counters for self-monitoring and the demo's live line.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub batches: AtomicU64,
    pub samples: AtomicU64,
    /// Batches received again after they were stored (resent after a lost ack).
    pub dedup_hits: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Handshakes the agent gave up on (its connect timeout ran out, e.g. an
    /// attempt that began while this aggregator was down): not refusals.
    pub handshakes_abandoned: AtomicU64,
    /// Handshakes refused because [`MAX_HANDSHAKES_IN_FLIGHT`] were in
    /// progress: the agent hears the refusal at once and backs off.
    pub handshakes_shed: AtomicU64,
    /// Connections closed for a protocol error, by `ProtocolError::reason_code`.
    pub protocol_errors: Mutex<HashMap<&'static str, u64>>,
    /// Samples the store refused, by `AppendError::reason_code`.
    pub rejected_samples: Mutex<HashMap<&'static str, u64>>,
}

impl IngestStats {
    pub(crate) fn count(map: &Mutex<HashMap<&'static str, u64>>, reason: &'static str, n: u64) {
        *map.lock().expect("stats lock is never poisoned").entry(reason).or_default() += n;
    }
}

/// Told what ingest stores; the rule manager implements it to evaluate
/// alerting rules as soon as data they read is stored (`rules::trigger`).
pub trait IngestObserver: Send + Sync {
    /// `labels` were resolved to `series` and logged for the first time by this process.
    fn series_resolved(&self, series: SeriesRef, labels: &Labels);
    /// `samples` were appended to the store; note in `pending` what they concern.
    fn samples_appended(&self, samples: &[(SeriesRef, f64)], pending: &mut ObservedSamples);
    /// What `pending` noted is durable now (its WAL record synced); empties `pending`.
    fn samples_durable(&self, pending: &mut ObservedSamples);
}

/// What an `IngestObserver` noted about appended samples until they are
/// durable; its content is the observer's.
#[derive(Debug, Default)]
pub struct ObservedSamples {
    pub generation: u64,
    pub bits: Vec<u64>,
}

/// The one write path into the aggregator, shared by agent batches and
/// remote_write requests: series definitions are logged to the WAL once per
/// process before their first samples, records are synced, samples are
/// appended to the store and refusals counted.
pub struct SeriesLog {
    store: Arc<dyn Storage>,
    wal: Wal,
    stats: Arc<IngestStats>,
    /// Series whose labels this process has written to the WAL.
    logged_series: Mutex<HashSet<SeriesRef>>,
    /// Told what is stored (set once, at start).
    observer: std::sync::OnceLock<Arc<dyn IngestObserver>>,
}

impl SeriesLog {
    pub fn new(store: Arc<dyn Storage>, wal: Wal, stats: Arc<IngestStats>) -> Self {
        Self { store, wal, stats, logged_series: Mutex::new(HashSet::new()), observer: std::sync::OnceLock::new() }
    }

    /// Tells `observer` what is stored from now on (set once; later calls are ignored).
    pub fn set_observer(&self, observer: Arc<dyn IngestObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Lets the observer note what `samples` (just appended) concern.
    pub fn note_appended(&self, samples: &[(SeriesRef, f64)], pending: &mut ObservedSamples) {
        if let Some(observer) = self.observer.get() {
            observer.samples_appended(samples, pending);
        }
    }

    /// Tells the observer that what `pending` noted is durable.
    pub fn note_durable(&self, pending: &mut ObservedSamples) {
        if let Some(observer) = self.observer.get() {
            observer.samples_durable(pending);
        }
    }

    /// The store's series for `labels`; its definition is added to
    /// `wal_bytes` (and the series to `new_series`) unless already logged.
    pub fn resolve(&self, labels: &Labels, wal_bytes: &mut Vec<u8>, new_series: &mut Vec<SeriesRef>) -> SeriesRef {
        let series = self.store.series_ref(labels);
        let logged = self.logged_series.lock().expect("lock is never poisoned").contains(&series);
        if !logged {
            wal::encode_series(series, labels, wal_bytes);
            new_series.push(series);
            if let Some(observer) = self.observer.get() {
                observer.series_resolved(series, labels);
            }
        }
        series
    }

    /// Appends `wal_bytes` to the WAL and waits for the sync; on success the
    /// series in `new_series` count as logged.
    pub async fn sync(&self, wal_bytes: Vec<u8>, new_series: Vec<SeriesRef>) -> Result<(), wal::WalError> {
        if wal_bytes.is_empty() {
            return Ok(());
        }
        self.wal.append(wal_bytes).await?;
        self.logged_series.lock().expect("lock is never poisoned").extend(new_series);
        Ok(())
    }

    /// Appends samples of one timestamp to the store; refusals are counted by
    /// reason and the first is returned.
    pub fn append(&self, timestamp_ms: i64, samples: &[(SeriesRef, f64)]) -> Option<crate::store::AppendError> {
        let mut first: Option<crate::store::AppendError> = None;
        let mut rejected_count = 0u64;
        for &(series, value) in samples {
            if let Err(err) = self.store.append(series, Sample { timestamp_ms, value }) {
                rejected_count += 1;
                first.get_or_insert(err);
            }
        }
        if let Some(err) = &first {
            IngestStats::count(&self.stats.rejected_samples, err.reason_code(), rejected_count);
        }
        first
    }
}

pub struct Ingest {
    fleet: Arc<Fleet>,
    /// Remote configuration: told who connects, hands out their pushes.
    configs: Option<Arc<crate::configs::ConfigManager>>,
    stats: Arc<IngestStats>,
    log: Arc<SeriesLog>,
    dedup: Arc<Dedup>,
    heartbeat_interval: Duration,
    max_series_per_agent: u32,
    /// Enrollment, renewal and revocation; without it agents are admitted
    /// on their certificate alone.
    identity: Option<Arc<crate::identity::IdentityManager>>,
    /// Permits for handshakes in progress, [`MAX_HANDSHAKES_IN_FLIGHT`].
    handshakes: tokio::sync::Semaphore,
    /// What agents are asked to sample between cycles (set once, by the rules).
    alert_inputs: std::sync::OnceLock<AlertInputsWatch>,
}

type AlertInputsWatch = tokio::sync::watch::Receiver<Arc<AlertInputs>>;

/// Handshakes served at once. Past this, a fleet reconnecting together
/// (after an aggregator restart) is refused rather than queued: a refusal is
/// one small packet the agent answers by backing off, while a queue would
/// make every handshake slow, including the ones agents then give up on.
/// At about a millisecond of CPU each, this many are a few hundred
/// milliseconds of work on two cores.
pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 256;
/// A handshake still incomplete after this long (the peer went away during
/// it) gives its place up; agents give up on theirs sooner.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Ingest {
    pub fn new(
        store: Arc<dyn Storage>,
        fleet: Arc<Fleet>,
        stats: Arc<IngestStats>,
        wal: Wal,
        dedup: Arc<Dedup>,
        heartbeat_interval: Duration,
        max_series_per_agent: u32,
    ) -> Self {
        let log = Arc::new(SeriesLog::new(store, wal, Arc::clone(&stats)));
        Self {
            fleet,
            configs: None,
            stats,
            log,
            dedup,
            heartbeat_interval,
            max_series_per_agent,
            identity: None,
            handshakes: tokio::sync::Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT),
            alert_inputs: std::sync::OnceLock::new(),
        }
    }

    /// Hands every agent session the series the rules want sampled between
    /// cycles, now and whenever they change. Set before `run`.
    pub fn set_alert_inputs(&self, inputs: AlertInputsWatch) {
        let _ = self.alert_inputs.set(inputs);
    }

    /// Serves enrollment, renewal and revocation through `identity`.
    pub fn with_identity(mut self, identity: Arc<crate::identity::IdentityManager>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Connects agent sessions to remote configuration.
    pub fn with_configs(mut self, configs: Arc<crate::configs::ConfigManager>) -> Self {
        self.configs = Some(configs);
        self
    }

    /// The write path agent batches take, for other sources of samples.
    pub fn series_log(&self) -> Arc<SeriesLog> {
        Arc::clone(&self.log)
    }

    /// Accepts connections on `endpoint` until `shutdown`.
    pub async fn run(self: Arc<Self>, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let ingest = Arc::clone(&self);
            let shutdown = shutdown.child_token();
            tokio::spawn(async move { ingest.handle_incoming(incoming, shutdown).await });
        }
        endpoint.close(CLOSE_SHUTDOWN.into(), b"aggregator shutting down");
        // Let the close frames leave before the runtime stops.
        let _ = timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }

    async fn handle_incoming(&self, incoming: quinn::Incoming, shutdown: CancellationToken) {
        let remote = incoming.remote_address();
        // Every peer proves it is still there before it gets a handshake: a
        // Retry is one packet and no state here. Handshakes an agent already
        // gave up on (probes it sent while this aggregator was down or still
        // opening its store, queued in the socket) go no further, and a
        // spoofed source gets nothing back bigger than what it sent.
        let incoming = if incoming.may_retry() && !incoming.remote_address_validated() {
            match incoming.retry() {
                Ok(()) => return,
                Err(err) => err.into_incoming(),
            }
        } else {
            incoming
        };
        let Ok(handshake) = self.handshakes.try_acquire() else {
            self.stats.handshakes_shed.fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "too many handshakes in progress: refused, the agent backs off");
            incoming.refuse();
            return;
        };
        let mut connecting = match incoming.accept() {
            Ok(connecting) => connecting,
            Err(err) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                warn!(%remote, error = %err, "agent connection refused");
                return;
            }
        };
        let handshook = timeout(HANDSHAKE_TIMEOUT, async move {
            let enrolling = crate::identity::quic::is_enrollment(connecting.handshake_data().await.ok());
            (enrolling, connecting.await)
        })
        .await;
        drop(handshake);
        let Ok((enrolling, connected)) = handshook else {
            self.stats.handshakes_abandoned.fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "handshake not completed within {} s: dropped", HANDSHAKE_TIMEOUT.as_secs());
            return;
        };
        let connection = match connected {
            Ok(connection) => connection,
            Err(err) if enrolling => {
                if let Some(identity) = &self.identity {
                    identity.enrollment_handshake_failed(remote, &err);
                }
                return;
            }
            Err(err) if handshake_abandoned(&err) => {
                self.stats.handshakes_abandoned.fetch_add(1, Ordering::Relaxed);
                debug!(%remote, error = %err, "agent abandoned its handshake");
                return;
            }
            Err(err) => {
                self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                warn!(%remote, error = %err, "agent handshake failed (certificate not signed by the fleet CA, expired, or none?)");
                return;
            }
        };
        if enrolling {
            match &self.identity {
                Some(identity) => Arc::clone(identity).serve_enrollment(connection).await,
                None => connection.close(CLOSE_NO_IDENTITY.into(), b"enrollment is not served here"),
            }
            return;
        }
        let Some(admission) = crate::identity::Admission::of(&connection).map(Arc::new) else {
            self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            warn!(%remote, "agent presented no certificate with a common name: refused");
            connection.close(CLOSE_NO_IDENTITY.into(), b"a client certificate from the fleet CA is required");
            return;
        };
        let identity = admission.name().to_owned();
        if let Some(manager) = &self.identity {
            if manager.admit(&admission).is_err() {
                warn!(agent = %identity, %remote, serial = %admission.info.serial, "revoked certificate: connection refused");
                connection
                    .close(crate::identity::CLOSE_REVOKED.into(), b"certificate revoked: this agent must re-enroll");
                return;
            }
            manager.guard(connection.clone(), Arc::clone(&admission), shutdown.child_token());
        }
        let streams = tokio::select! {
            _ = shutdown.cancelled() => return,
            streams = timeout(STREAM_OPEN_TIMEOUT, connection.accept_bi()) => streams,
        };
        let (send, recv) = match streams {
            Ok(Ok(streams)) => streams,
            Ok(Err(err)) => {
                debug!(agent = %identity, %remote, error = %err, "connection ended before opening a stream");
                return;
            }
            Err(_) => {
                connection.close(CLOSE_PROTOCOL_ERROR.into(), b"no stream opened");
                return;
            }
        };
        if let Some(manager) = &self.identity {
            manager.serve_renewals(connection.clone(), Arc::clone(&admission), shutdown.child_token());
        }
        let mut session = Session {
            ingest: self,
            identity,
            admission,
            remote,
            connection_id: None,
            series: Vec::new(),
            acks: Vec::new(),
            wal_bytes: Vec::new(),
            awaiting_sync: Vec::new(),
            new_series: Vec::new(),
            wal_samples: Vec::new(),
            observed: ObservedSamples::default(),
            newest_batch_ms: i64::MIN,
            pushes: None,
            alert_inputs: self.alert_inputs.get().cloned(),
        };
        session.serve(&connection, send, recv, shutdown).await;
        if let Some(connection_id) = session.connection_id {
            if let Some(configs) = &self.configs {
                configs.disconnected(&session.identity, connection_id);
            }
            self.fleet.disconnected(&session.identity, connection_id, SystemTime::now());
            info!(agent = %session.identity, %remote, "agent disconnected");
        }
    }
}

/// One agent connection.
struct Session<'a> {
    ingest: &'a Ingest,
    identity: String,
    /// The certificate's identity, stamped on every series.
    admission: Arc<crate::identity::Admission>,
    remote: SocketAddr,
    connection_id: Option<u64>,
    /// Wire id → store series.
    series: Vec<SeriesRef>,
    /// Batches durable since the last ack was sent.
    acks: Vec<(u64, u64)>,
    /// WAL records for what was decoded since the last sync.
    wal_bytes: Vec<u8>,
    /// Sequence numbers whose records are in `wal_bytes`.
    awaiting_sync: Vec<u64>,
    /// Series whose definitions are in `wal_bytes`.
    new_series: Vec<SeriesRef>,
    /// Reused buffer for one batch's (series, value) pairs.
    wal_samples: Vec<(u64, f64)>,
    /// What the batches in `wal_bytes` concern (rules to evaluate once synced).
    observed: ObservedSamples,
    /// Timestamp of the newest batch received on this connection (for the clock offset).
    newest_batch_ms: i64,
    /// Configurations to push to this agent, once it said hello.
    pushes: Option<tokio::sync::mpsc::Receiver<herd_common::protocol::ConfigPush>>,
    /// The series to sample between cycles; sent once welcomed, then on change.
    alert_inputs: Option<AlertInputsWatch>,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        connection: &quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        shutdown: CancellationToken,
    ) {
        let mut link = ServerLink::new(Instant::now().into_std()).with_max_series(self.ingest.max_series_per_agent);
        loop {
            let deadline = link.poll_timeout().map(Instant::from_std);
            let result = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = link.close(Instant::now().into_std(), "aggregator shutting down");
                    if let Some(bytes) = link.poll_transmit() {
                        let _ = timeout(Duration::from_secs(1), send.write_all(&bytes)).await;
                    }
                    connection.close(CLOSE_SHUTDOWN.into(), b"aggregator shutting down");
                    return;
                }
                read = recv.read_chunk(READ_CHUNK_BYTES, true) => match read {
                    Ok(Some(chunk)) => link.handle_bytes(Instant::now().into_std(), &chunk.bytes),
                    Ok(None) => return,
                    Err(err) => {
                        debug!(agent = %self.identity, error = %err, "agent stream ended");
                        return;
                    }
                },
                _ = sleep_or_forever(deadline) => link.handle_timeout(Instant::now().into_std()),
                Some(push) = async { match self.pushes.as_mut() { Some(pushes) => pushes.recv().await, None => std::future::pending().await } } => {
                    link.push_config(Instant::now().into_std(), push)
                }
                Ok(()) = async { match self.alert_inputs.as_mut() { Some(inputs) => inputs.changed().await, None => std::future::pending().await } } => {
                    // Before the welcome the hello's handling sends them.
                    if self.connection_id.is_some() { self.send_alert_inputs(&mut link, true) } else { Ok(()) }
                }
            };
            // Events decoded before an error are still acted on: their batches are valid.
            let handled = self.handle_events(&mut link);
            if let Err(err) = result.and(handled) {
                self.close_for(connection, &mut link, &mut send, &err).await;
                return;
            }
            if let Err(err) = self.sync_wal().await {
                warn!(agent = %self.identity, error = %err, "closing agent connection: cannot persist its batches");
                connection.close(CLOSE_NOT_DURABLE.into(), err.to_string().as_bytes());
                return;
            }
            if !self.acks.is_empty() {
                let ranges = std::mem::take(&mut self.acks);
                if let Err(err) = link.ack(Instant::now().into_std(), ranges) {
                    self.close_for(connection, &mut link, &mut send, &err).await;
                    return;
                }
            }
            if let Some(bytes) = link.poll_transmit()
                && let Err(err) = send.write_all(&bytes).await
            {
                debug!(agent = %self.identity, error = %err, "write to agent failed");
                return;
            }
        }
    }

    /// Sends the current alert inputs: always when they `changed`, else only if there are any.
    fn send_alert_inputs(&mut self, link: &mut ServerLink, changed: bool) -> Result<(), ProtocolError> {
        let Some(watch) = self.alert_inputs.as_mut() else { return Ok(()) };
        let inputs = AlertInputs::clone(&watch.borrow_and_update());
        if changed || inputs.is_active() {
            link.send_alert_inputs(Instant::now().into_std(), inputs)?;
        }
        Ok(())
    }

    fn handle_events(&mut self, link: &mut ServerLink) -> Result<(), ProtocolError> {
        let now = SystemTime::now();
        while let Some(event) = link.poll_event() {
            match event {
                ServerEvent::Hello(hello) => {
                    if hello.agent_id != self.identity {
                        warn!(agent = %self.identity, claimed = %hello.agent_id, "agent's configured id differs from its certificate; using the certificate");
                    }
                    let connection_id = self.ingest.fleet.connected(&self.identity, &hello, self.remote, now);
                    self.connection_id = Some(connection_id);
                    self.ingest.fleet.set_trusted_labels(
                        &self.identity,
                        connection_id,
                        self.admission.trusted_labels(),
                    );
                    if let Some(configs) = &self.ingest.configs {
                        // Selectors match `agent`, its identity, and the trusted labels from its
                        // certificate; what its hello claims is informational. Only an agent whose
                        // certificate carries no labels (issued by hand without `--labels`) is
                        // matched by its claimed labels: nothing else describes it.
                        let trusted = self.admission.trusted_labels();
                        let mut labels: std::collections::BTreeMap<String, String> = if trusted.is_empty() {
                            hello.labels.iter().cloned().collect()
                        } else {
                            trusted.iter().cloned().collect()
                        };
                        labels.insert("agent".to_owned(), self.identity.clone());
                        self.pushes = Some(configs.connected(&self.identity, connection_id, &hello, labels));
                    }
                    info!(agent = %self.identity, remote = %self.remote, version = %hello.agent_version, backlog_batches = hello.backlog_batches, "agent connected");
                    let welcome = Welcome {
                        aggregator_version: herd_common::VERSION.to_owned(),
                        agent_id: self.identity.clone(),
                        heartbeat_interval_ms: self
                            .ingest
                            .heartbeat_interval
                            .as_millis()
                            .try_into()
                            .unwrap_or(u32::MAX),
                    };
                    link.accept(tokio::time::Instant::now().into_std(), welcome)?;
                    self.send_alert_inputs(link, false)?;
                }
                ServerEvent::SeriesDefined { id, labels } => {
                    debug_assert_eq!(id as usize, self.series.len(), "the link enforces dense ids");
                    let labels = self.admission.stamp(labels);
                    let series = self.ingest.log.resolve(&labels, &mut self.wal_bytes, &mut self.new_series);
                    self.series.push(series);
                    if let (Some(job), Some(instance)) = (labels.get("job"), labels.get("instance")) {
                        let is_up = labels.get(herd_common::metric::METRIC_NAME) == Some("up");
                        self.ingest.fleet.note_series(&self.identity, job, instance, is_up);
                    }
                }
                ServerEvent::Batch { seq, timestamp_ms, samples } => self.store_batch(seq, timestamp_ms, &samples, now),
                ServerEvent::Heartbeat { backlog_batches } => {
                    self.update_fleet(|record| {
                        record.backlog_batches = backlog_batches;
                        record.last_seen = now;
                    });
                }
                ServerEvent::ConfigAcked(ack) => {
                    self.update_fleet(|record| record.config_version = ack.running_version);
                    if let Some(configs) = &self.ingest.configs {
                        configs.acked(&self.identity, ack);
                    }
                }
                ServerEvent::PeerClosing { reason } => debug!(agent = %self.identity, %reason, "agent closing"),
            }
        }
        Ok(())
    }

    fn store_batch(&mut self, seq: u64, timestamp_ms: i64, samples: &[(u32, f64)], now: SystemTime) {
        if self.ingest.dedup.contains(&self.identity, seq) || self.awaiting_sync.contains(&seq) {
            self.ingest.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
            push_ack(&mut self.acks, seq);
            return;
        }
        self.wal_samples.clear();
        for &(wire_id, value) in samples {
            // The link only yields ids it saw defined, so the lookup succeeds.
            let Some(&series) = self.series.get(wire_id as usize) else { continue };
            self.wal_samples.push((series, value));
        }
        self.ingest.log.append(timestamp_ms, &self.wal_samples);
        self.ingest.log.note_appended(&self.wal_samples, &mut self.observed);
        if timestamp_ms > self.newest_batch_ms {
            // A batch newer than any before it was collected just now: its age
            // on arrival is the agent's clock offset plus a little transit.
            self.newest_batch_ms = timestamp_ms;
            let arrived_ms = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            self.ingest.fleet.note_clock_offset(&self.identity, arrived_ms - timestamp_ms);
        }
        let stats = &self.ingest.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.samples.fetch_add(samples.len() as u64, Ordering::Relaxed);
        let series_defined = self.series.len() as u64;
        self.update_fleet(|record| {
            record.batches_received += 1;
            record.samples_received += samples.len() as u64;
            record.series_defined = series_defined;
            record.last_seen = now;
        });
        wal::encode_samples(&self.identity, seq, timestamp_ms, &self.wal_samples, &mut self.wal_bytes);
        self.awaiting_sync.push(seq);
    }

    /// Syncs what was decoded to the WAL; only then are its batches acknowledged.
    async fn sync_wal(&mut self) -> Result<(), wal::WalError> {
        if self.wal_bytes.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.wal_bytes);
        let new_series = std::mem::take(&mut self.new_series);
        let result = self.ingest.log.sync(bytes, new_series).await;
        let synced = std::mem::take(&mut self.awaiting_sync);
        result?;
        self.ingest.log.note_durable(&mut self.observed);
        for seq in synced {
            self.ingest.dedup.insert(&self.identity, seq);
            push_ack(&mut self.acks, seq);
        }
        Ok(())
    }

    fn update_fleet(&self, update: impl FnOnce(&mut crate::fleet::AgentRecord)) {
        if let Some(connection_id) = self.connection_id {
            self.ingest.fleet.update(&self.identity, connection_id, update);
        }
    }

    async fn close_for(
        &self,
        connection: &quinn::Connection,
        link: &mut ServerLink,
        send: &mut quinn::SendStream,
        err: &ProtocolError,
    ) {
        IngestStats::count(&self.ingest.stats.protocol_errors, err.reason_code(), 1);
        let (code, reason) = match err {
            ProtocolError::Frame(FrameError::VersionMismatch { peer, ours }) => {
                let _ = link.refuse(Instant::now().into_std(), RefuseReason::ProtocolVersion, err.to_string());
                (
                    CLOSE_VERSION_MISMATCH,
                    format!(
                        "agent speaks Herd protocol version {peer}, aggregator speaks {ours}: upgrade the older side"
                    ),
                )
            }
            other => (CLOSE_PROTOCOL_ERROR, format!("protocol error: {other}")),
        };
        warn!(agent = %self.identity, remote = %self.remote, reason = err.reason_code(), error = %err, "closing agent connection");
        if let Some(bytes) = link.poll_transmit() {
            let _ = timeout(Duration::from_secs(1), send.write_all(&bytes)).await;
        }
        connection.close(code.into(), reason.as_bytes());
    }
}

/// Adds `seq` to ascending ack ranges, extending the last range when adjacent.
fn push_ack(acks: &mut Vec<(u64, u64)>, seq: u64) {
    match acks.last_mut() {
        Some(last) if last.1.checked_add(1) == Some(seq) => last.1 = seq,
        _ => acks.push((seq, seq)),
    }
}

async fn sleep_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Receive buffer asked for on the agents' UDP socket. When a fleet
/// reconnects at once (an aggregator restart), thousands of 1,200-byte
/// handshake packets arrive together; the kernel's default (about 200 KiB)
/// drops most of them and each lost one costs its agent a retransmission
/// timeout or a whole backoff round. The kernel caps the size at
/// `net.core.rmem_max` (raise it for fleets of thousands).
const QUIC_RECEIVE_BUFFER_BYTES: usize = 16 << 20;

/// The agents' UDP socket, bound with a large receive buffer. It is bound
/// at start (so a port in use fails at once) and handed to QUIC by
/// [`quic_endpoint`] only once the store is open: handshakes that arrive
/// while the WAL replays wait in the socket rather than in an endpoint no
/// one accepts from, where they would time out and be refused.
pub fn quic_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if let Err(err) = socket.set_recv_buffer_size(QUIC_RECEIVE_BUFFER_BYTES) {
        warn!(error = %err, "cannot enlarge the QUIC socket's receive buffer");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The QUIC endpoint agents connect to, on `socket` from [`quic_socket`],
/// with stateless resets keyed by [`reset_key`].
pub fn quic_endpoint(
    config: quinn::ServerConfig,
    socket: std::net::UdpSocket,
    reset_key: Arc<ring::hmac::Key>,
) -> std::io::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::new(reset_key), Some(config), socket, runtime)
}

const RESET_KEY_BYTES: usize = 32;

/// The key QUIC derives stateless-reset tokens from, kept at `path` (mode
/// 0600) across restarts. An agent whose connection the previous process
/// held keeps sending on it; with the same key, the restarted aggregator's
/// stateless reset is one the agent accepts, so it reconnects at once
/// instead of waiting out its idle timeout. A missing or malformed file is
/// replaced by a new key.
pub fn reset_key(path: &std::path::Path) -> std::io::Result<Arc<ring::hmac::Key>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) if bytes.len() == RESET_KEY_BYTES => bytes,
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {
            let mut bytes = vec![0u8; RESET_KEY_BYTES];
            getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
            crate::alertmanager::silence::write_atomically(path, &bytes)?;
            bytes
        }
    };
    Ok(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)))
}

/// Whether the agent gave up on the handshake (a QUIC application close during
/// the handshake travels as APPLICATION_ERROR) or went silent, rather than
/// either side refusing the other's certificate.
fn handshake_abandoned(err: &quinn::ConnectionError) -> bool {
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => {
            close.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
        }
        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::TimedOut => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tag(key: &ring::hmac::Key) -> Vec<u8> {
        ring::hmac::sign(key, b"connection id").as_ref().to_vec()
    }

    #[test]
    fn the_reset_key_is_created_once_private_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic-reset-key");
        let first = reset_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(tag(&reset_key(&path).unwrap()), tag(&first), "a restart derives the same reset tokens");

        std::fs::write(&path, b"short").unwrap();
        let replaced = reset_key(&path).unwrap();
        assert_ne!(tag(&replaced), tag(&first));
        assert_eq!(std::fs::read(&path).unwrap().len(), RESET_KEY_BYTES, "a malformed key is replaced");

        let other = tempfile::tempdir().unwrap();
        assert_ne!(tag(&reset_key(&other.path().join("quic-reset-key")).unwrap()), tag(&replaced));
    }
}
