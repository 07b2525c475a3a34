//! The connection state machines, one per role, in the style of a sans-I/O
//! protocol: the caller feeds received bytes and the current time, and polls
//! for bytes to write, events to act on and the next deadline. No I/O here,
//! no clock read: `now` always comes from the caller.
//!
//! A connection carries one ordered stream. Each side opens it with the
//! preamble; the agent then sends [`Hello`] and the aggregator answers
//! [`Welcome`] or [`Refuse`]. Series are defined once per connection with
//! dense wire ids; batches refer to them by id and pack values against the
//! previous batch (see `samples.rs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::codec::{self, CodecError};
use super::frame::{self, FrameDecoder, FrameError, PROTOCOL_VERSION};
use super::messages::*;
use super::samples::{SampleDecodeError, SampleDecoder, SampleEncoder};
use crate::metric::{Labels, SeriesId, SeriesTable};

/// Default heartbeat interval when the aggregator does not say otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A peer silent for this many heartbeat intervals is considered gone.
const MISSED_HEARTBEATS_BEFORE_TIMEOUT: u32 = 4;
/// Upper bound on series one connection may define, so a hostile or broken
/// agent cannot grow the aggregator's per-connection tables without limit.
pub const MAX_SERIES_PER_CONNECTION: u32 = 4_000_000;
const NO_WIRE_ID: u32 = u32::MAX;

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("batch {seq}: {source}")]
    Samples { seq: u64, source: SampleDecodeError },
    #[error("unexpected {kind} message while {state}")]
    Unexpected { kind: &'static str, state: &'static str },
    #[error("series definitions start at id {got}, expected {expected}")]
    SeriesIdGap { expected: u32, got: u32 },
    #[error("connection defined more than {max} series")]
    TooManySeries { max: u32 },
    #[error("series {id} has invalid labels: {source}")]
    BadLabels { id: u32, source: crate::metric::LabelsError },
    #[error("peer refused the connection ({reason:?}): {message}")]
    Refused { reason: RefuseReason, message: String },
    #[error("peer silent for {silent_ms} ms")]
    TimedOut { silent_ms: u128 },
}

impl ProtocolError {
    /// A fixed label value for counters (`reason="..."`), never error text.
    pub fn reason_code(&self) -> &'static str {
        match self {
            ProtocolError::Frame(FrameError::BadMagic { .. }) => "bad_magic",
            ProtocolError::Frame(FrameError::VersionMismatch { .. }) => "version_mismatch",
            ProtocolError::Frame(FrameError::TooLarge { .. }) => "frame_too_large",
            ProtocolError::Codec(_) => "malformed_message",
            ProtocolError::Samples { .. } => "malformed_samples",
            ProtocolError::Unexpected { .. } => "unexpected_message",
            ProtocolError::SeriesIdGap { .. } => "series_id_gap",
            ProtocolError::TooManySeries { .. } => "too_many_series",
            ProtocolError::BadLabels { .. } => "bad_labels",
            ProtocolError::Refused { .. } => "refused",
            ProtocolError::TimedOut { .. } => "timeout",
        }
    }
}

/// A batch as the agent collected it: agent-local series ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub samples: Vec<(SeriesId, f64)>,
}

/// Bytes, heartbeat timing and framing shared by both roles.
#[derive(Debug)]
struct Wire {
    decoder: FrameDecoder,
    transmit: Vec<u8>,
    scratch: Vec<u8>,
    last_sent: Instant,
    last_received: Instant,
    heartbeat_interval: Duration,
    closed: bool,
}

impl Wire {
    fn new(now: Instant) -> Self {
        let mut transmit = Vec::new();
        frame::encode_preamble(PROTOCOL_VERSION, &mut transmit);
        Self {
            decoder: FrameDecoder::new(),
            transmit,
            scratch: Vec::new(),
            last_sent: now,
            last_received: now,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            closed: false,
        }
    }

    fn send(&mut self, now: Instant, message: &Message) -> Result<(), ProtocolError> {
        self.scratch.clear();
        codec::encode(message, &mut self.scratch)?;
        frame::encode_frame(&self.scratch, &mut self.transmit)?;
        self.last_sent = now;
        Ok(())
    }

    fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        match self.decoder.next_frame()? {
            Some(payload) => Ok(Some(codec::decode(payload)?)),
            None => Ok(None),
        }
    }

    fn timeout_after(&self) -> Duration {
        self.heartbeat_interval * MISSED_HEARTBEATS_BEFORE_TIMEOUT
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        Some((self.last_sent + self.heartbeat_interval).min(self.last_received + self.timeout_after()))
    }

    /// Checks the peer's silence and whether a heartbeat is due.
    fn handle_timeout(&mut self, now: Instant, backlog_batches: u64) -> Result<(), ProtocolError> {
        if self.closed {
            return Ok(());
        }
        let silent = now.saturating_duration_since(self.last_received);
        if silent >= self.timeout_after() {
            self.closed = true;
            return Err(ProtocolError::TimedOut { silent_ms: silent.as_millis() });
        }
        if now.saturating_duration_since(self.last_sent) >= self.heartbeat_interval {
            self.send(now, &Message::Heartbeat(Heartbeat { backlog_batches }))?;
        }
        Ok(())
    }

    fn take_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.transmit.is_empty()).then(|| std::mem::take(&mut self.transmit))
    }
}

/// What the agent's side of a connection reports.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Welcomed(Welcome),
    Acked { ranges: Vec<(u64, u64)> },
    ConfigPushed(ConfigPush),
    AlertInputs(AlertInputs),
    PeerClosing { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    AwaitingWelcome,
    Established,
}

/// The agent's side of one connection.
#[derive(Debug)]
pub struct AgentLink {
    wire: Wire,
    state: AgentState,
    events: VecDeque<AgentEvent>,
    /// Agent series id → wire id on this connection (`NO_WIRE_ID` if not yet defined).
    wire_ids: Vec<u32>,
    next_wire_id: u32,
    encoder: SampleEncoder,
    pending_defs: Vec<Vec<(String, String)>>,
    wire_samples: Vec<(u32, f64)>,
    backlog_batches: u64,
}

impl AgentLink {
    /// Starts a connection: the preamble and `hello` are queued for transmit.
    pub fn new(now: Instant, hello: Hello) -> Result<Self, ProtocolError> {
        let backlog_batches = hello.backlog_batches;
        let mut link = Self {
            wire: Wire::new(now),
            state: AgentState::AwaitingWelcome,
            events: VecDeque::new(),
            wire_ids: Vec::new(),
            next_wire_id: 0,
            encoder: SampleEncoder::new(),
            pending_defs: Vec::new(),
            wire_samples: Vec::new(),
            backlog_batches,
        };
        link.wire.send(now, &Message::Hello(hello))?;
        Ok(link)
    }

    pub fn is_established(&self) -> bool {
        self.state == AgentState::Established
    }

    /// Series defined on this connection so far.
    pub fn defined_series(&self) -> u32 {
        self.next_wire_id
    }

    /// Reported in heartbeats.
    pub fn set_backlog(&mut self, batches: u64) {
        self.backlog_batches = batches;
    }

    /// Queues `batch`, defining first any series this connection has not seen.
    /// Samples whose series is unknown to `table` are skipped.
    pub fn send_batch(&mut self, now: Instant, batch: &SampleBatch, table: &SeriesTable) -> Result<(), ProtocolError> {
        self.wire_samples.clear();
        let first_new = self.next_wire_id;
        for &(series, value) in &batch.samples {
            let slot = series as usize;
            if slot >= self.wire_ids.len() {
                self.wire_ids.resize(slot + 1, NO_WIRE_ID);
            }
            if self.wire_ids[slot] == NO_WIRE_ID {
                let Some(labels) = table.labels(series) else { continue };
                self.wire_ids[slot] = self.next_wire_id;
                self.next_wire_id += 1;
                self.pending_defs.push(labels.as_pairs().to_vec());
            }
            self.wire_samples.push((self.wire_ids[slot], value));
        }
        if !self.pending_defs.is_empty() {
            let series = std::mem::take(&mut self.pending_defs);
            self.wire.send(now, &Message::SeriesDefs(SeriesDefs { first_id: first_new, series }))?;
        }
        self.wire_samples.sort_unstable_by_key(|&(id, _)| id);
        let mut packed = Vec::with_capacity(self.wire_samples.len() * 2);
        self.encoder.encode(&self.wire_samples, &mut packed);
        let message = Message::Batch(MetricBatch {
            seq: batch.seq,
            timestamp_ms: batch.timestamp_ms,
            sample_count: self.wire_samples.len() as u32,
            packed,
        });
        self.wire.send(now, &message)
    }

    /// Reports the outcome of a config push.
    pub fn send_config_ack(&mut self, now: Instant, ack: ConfigAck) -> Result<(), ProtocolError> {
        self.wire.send(now, &Message::ConfigAck(ack))
    }

    /// Queues a goodbye; the caller closes the connection after transmitting.
    pub fn close(&mut self, now: Instant, reason: &str) -> Result<(), ProtocolError> {
        self.wire.send(now, &Message::Goodbye(Goodbye { reason: reason.to_owned() }))?;
        self.wire.closed = true;
        Ok(())
    }

    /// Feeds bytes received from the aggregator.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.wire.decoder.push(bytes);
        self.wire.last_received = now;
        while let Some(message) = self.wire.next_message()? {
            self.handle_message(message)?;
        }
        Ok(())
    }

    fn handle_message(&mut self, message: Message) -> Result<(), ProtocolError> {
        match (self.state, message) {
            (AgentState::AwaitingWelcome, Message::Welcome(welcome)) => {
                if welcome.heartbeat_interval_ms > 0 {
                    self.wire.heartbeat_interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms));
                }
                self.state = AgentState::Established;
                self.events.push_back(AgentEvent::Welcomed(welcome));
            }
            (_, Message::Refuse(refuse)) => {
                self.wire.closed = true;
                return Err(ProtocolError::Refused { reason: refuse.reason, message: refuse.message });
            }
            (AgentState::Established, Message::Ack(ack)) => {
                self.events.push_back(AgentEvent::Acked { ranges: ack.ranges })
            }
            (AgentState::Established, Message::ConfigPush(push)) => {
                self.events.push_back(AgentEvent::ConfigPushed(push))
            }
            (AgentState::Established, Message::AlertInputs(inputs)) => {
                self.events.push_back(AgentEvent::AlertInputs(inputs))
            }
            (_, Message::Heartbeat(_)) => {}
            (_, Message::Goodbye(goodbye)) => {
                self.wire.closed = true;
                self.events.push_back(AgentEvent::PeerClosing { reason: goodbye.reason });
            }
            (state, other) => {
                return Err(ProtocolError::Unexpected {
                    kind: other.kind(),
                    state: if state == AgentState::AwaitingWelcome { "awaiting welcome" } else { "established" },
                });
            }
        }
        Ok(())
    }

    /// Sends a heartbeat if one is due; errors if the aggregator went silent.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtocolError> {
        self.wire.handle_timeout(now, self.backlog_batches)
    }

    /// When `handle_timeout` next needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wire.poll_timeout()
    }

    /// Bytes to write to the stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.wire.take_transmit()
    }

    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }
}

/// What the aggregator's side of a connection reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    Hello(Hello),
    /// Wire id `id` now stands for `labels` on this connection.
    SeriesDefined {
        id: u32,
        labels: Labels,
    },
    Batch {
        seq: u64,
        timestamp_ms: i64,
        samples: Vec<(u32, f64)>,
    },
    Heartbeat {
        backlog_batches: u64,
    },
    ConfigAcked(ConfigAck),
    PeerClosing {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    AwaitingHello,
    AwaitingDecision,
    Established,
}

/// The aggregator's side of one connection.
#[derive(Debug)]
pub struct ServerLink {
    wire: Wire,
    state: ServerState,
    events: VecDeque<ServerEvent>,
    decoder: SampleDecoder,
    max_series: u32,
}

impl ServerLink {
    pub fn new(now: Instant) -> Self {
        Self {
            wire: Wire::new(now),
            state: ServerState::AwaitingHello,
            events: VecDeque::new(),
            decoder: SampleDecoder::new(),
            max_series: MAX_SERIES_PER_CONNECTION,
        }
    }

    /// Lowers the per-connection series limit (tests, small deployments).
    pub fn with_max_series(mut self, max_series: u32) -> Self {
        self.max_series = max_series;
        self
    }

    /// Accepts the agent's hello.
    pub fn accept(&mut self, now: Instant, welcome: Welcome) -> Result<(), ProtocolError> {
        if welcome.heartbeat_interval_ms > 0 {
            self.wire.heartbeat_interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms));
        }
        self.state = ServerState::Established;
        self.wire.send(now, &Message::Welcome(welcome))
    }

    /// Refuses the agent; the caller closes the connection after transmitting.
    pub fn refuse(&mut self, now: Instant, reason: RefuseReason, message: String) -> Result<(), ProtocolError> {
        self.wire.closed = true;
        self.wire.send(now, &Message::Refuse(Refuse { reason, message }))
    }

    /// Acknowledges durably stored batches.
    pub fn ack(&mut self, now: Instant, ranges: Vec<(u64, u64)>) -> Result<(), ProtocolError> {
        self.wire.send(now, &Message::Ack(Ack { ranges }))
    }

    pub fn push_config(&mut self, now: Instant, push: ConfigPush) -> Result<(), ProtocolError> {
        self.wire.send(now, &Message::ConfigPush(push))
    }

    /// Tells the agent which series to sample faster (see [`AlertInputs`]).
    pub fn send_alert_inputs(&mut self, now: Instant, inputs: AlertInputs) -> Result<(), ProtocolError> {
        self.wire.send(now, &Message::AlertInputs(inputs))
    }

    pub fn close(&mut self, now: Instant, reason: &str) -> Result<(), ProtocolError> {
        self.wire.send(now, &Message::Goodbye(Goodbye { reason: reason.to_owned() }))?;
        self.wire.closed = true;
        Ok(())
    }

    /// Feeds bytes received from the agent. After an error the connection
    /// must be closed; events queued before it are still valid.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.wire.decoder.push(bytes);
        self.wire.last_received = now;
        while let Some(message) = self.wire.next_message()? {
            self.handle_message(message)?;
        }
        Ok(())
    }

    fn handle_message(&mut self, message: Message) -> Result<(), ProtocolError> {
        let state_name = match self.state {
            ServerState::AwaitingHello => "awaiting hello",
            ServerState::AwaitingDecision => "awaiting the hello decision",
            ServerState::Established => "established",
        };
        match (self.state, message) {
            (ServerState::AwaitingHello, Message::Hello(hello)) => {
                self.state = ServerState::AwaitingDecision;
                self.events.push_back(ServerEvent::Hello(hello));
            }
            // Agents may pipeline definitions and batches behind the hello.
            (ServerState::AwaitingDecision | ServerState::Established, Message::SeriesDefs(defs)) => {
                let expected = self.decoder.defined() as u32;
                if defs.first_id != expected {
                    return Err(ProtocolError::SeriesIdGap { expected, got: defs.first_id });
                }
                let total = u64::from(expected) + defs.series.len() as u64;
                if total > u64::from(self.max_series) {
                    return Err(ProtocolError::TooManySeries { max: self.max_series });
                }
                for (offset, pairs) in defs.series.into_iter().enumerate() {
                    let id = expected + offset as u32;
                    let labels =
                        Labels::from_sorted(pairs).map_err(|source| ProtocolError::BadLabels { id, source })?;
                    self.decoder.define(id);
                    self.events.push_back(ServerEvent::SeriesDefined { id, labels });
                }
            }
            (ServerState::AwaitingDecision | ServerState::Established, Message::Batch(batch)) => {
                let mut samples = Vec::new();
                self.decoder
                    .decode(&batch.packed, batch.sample_count, &mut samples)
                    .map_err(|source| ProtocolError::Samples { seq: batch.seq, source })?;
                self.events.push_back(ServerEvent::Batch { seq: batch.seq, timestamp_ms: batch.timestamp_ms, samples });
            }
            (ServerState::AwaitingDecision | ServerState::Established, Message::Heartbeat(hb)) => {
                self.events.push_back(ServerEvent::Heartbeat { backlog_batches: hb.backlog_batches });
            }
            (ServerState::Established, Message::ConfigAck(ack)) => self.events.push_back(ServerEvent::ConfigAcked(ack)),
            (_, Message::Goodbye(goodbye)) => {
                self.wire.closed = true;
                self.events.push_back(ServerEvent::PeerClosing { reason: goodbye.reason });
            }
            (_, other) => return Err(ProtocolError::Unexpected { kind: other.kind(), state: state_name }),
        }
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtocolError> {
        self.wire.handle_timeout(now, 0)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wire.poll_timeout()
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.wire.take_transmit()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The protocol version in the agent's preamble, once received.
    pub fn peer_version(&self) -> Option<u16> {
        self.wire.decoder.peer_version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            agent_id: "web-1".into(),
            hostname: "web-1.example".into(),
            agent_version: "0.1.0".into(),
            labels: vec![("env".into(), "prod".into())],
            config_version: 0,
            backlog_batches: 0,
            ..Hello::default()
        }
    }

    fn welcome() -> Welcome {
        Welcome { aggregator_version: "0.1.0".into(), agent_id: "web-1".into(), heartbeat_interval_ms: 1000 }
    }

    /// Moves every pending byte between the two links.
    fn pump(now: Instant, agent: &mut AgentLink, server: &mut ServerLink) -> Result<(), ProtocolError> {
        loop {
            let mut moved = false;
            if let Some(bytes) = agent.poll_transmit() {
                server.handle_bytes(now, &bytes)?;
                moved = true;
            }
            if let Some(bytes) = server.poll_transmit() {
                agent.handle_bytes(now, &bytes)?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn server_events(server: &mut ServerLink) -> Vec<ServerEvent> {
        std::iter::from_fn(|| server.poll_event()).collect()
    }

    fn connected(now: Instant) -> (AgentLink, ServerLink) {
        let mut agent = AgentLink::new(now, hello()).unwrap();
        let mut server = ServerLink::new(now);
        pump(now, &mut agent, &mut server).unwrap();
        assert_eq!(server_events(&mut server), vec![ServerEvent::Hello(hello())]);
        server.accept(now, welcome()).unwrap();
        pump(now, &mut agent, &mut server).unwrap();
        assert_eq!(agent.poll_event(), Some(AgentEvent::Welcomed(welcome())));
        assert!(agent.is_established());
        (agent, server)
    }

    #[test]
    fn series_are_defined_once_per_connection_and_batches_decode() {
        let now = Instant::now();
        let (mut agent, mut server) = connected(now);
        let mut table = SeriesTable::new();
        let mut scratch = String::new();
        let load = table.intern("node_load1", &[("job", "node")], &mut scratch);
        let cpu = table.intern("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")], &mut scratch);

        for (seq, value) in [(1u64, 0.5f64), (2, 0.75)] {
            let batch = SampleBatch {
                seq,
                timestamp_ms: 1000 * seq as i64,
                samples: vec![(cpu, 100.0 * value), (load, value)],
            };
            agent.send_batch(now, &batch, &table).unwrap();
            pump(now, &mut agent, &mut server).unwrap();
            let events = server_events(&mut server);
            let batches: Vec<_> = events.iter().filter(|e| matches!(e, ServerEvent::Batch { .. })).collect();
            let defs: Vec<_> = events.iter().filter(|e| matches!(e, ServerEvent::SeriesDefined { .. })).collect();
            assert_eq!(defs.len(), if seq == 1 { 2 } else { 0 }, "definitions only on first use");
            let ServerEvent::Batch { seq: got_seq, timestamp_ms, samples } = batches[0] else { unreachable!() };
            assert_eq!(*got_seq, seq);
            assert_eq!(*timestamp_ms, 1000 * seq as i64);
            // cpu was interned second but used first: wire ids follow first use.
            assert_eq!(samples, &vec![(0, 100.0 * value), (1, value)]);
        }
        assert_eq!(agent.defined_series(), 2);

        server.ack(now, vec![(1, 2)]).unwrap();
        pump(now, &mut agent, &mut server).unwrap();
        assert_eq!(agent.poll_event(), Some(AgentEvent::Acked { ranges: vec![(1, 2)] }));
    }

    #[test]
    fn refusal_reaches_the_agent_as_an_error() {
        let now = Instant::now();
        let mut agent = AgentLink::new(now, hello()).unwrap();
        let mut server = ServerLink::new(now);
        pump(now, &mut agent, &mut server).unwrap();
        server.refuse(now, RefuseReason::Identity, "certificate names web-2".into()).unwrap();
        let err = pump(now, &mut agent, &mut server).unwrap_err();
        assert!(matches!(err, ProtocolError::Refused { reason: RefuseReason::Identity, .. }), "{err}");
    }

    #[test]
    fn batch_before_hello_is_unexpected() {
        let now = Instant::now();
        let mut server = ServerLink::new(now);
        let mut bytes = Vec::new();
        frame::encode_preamble(PROTOCOL_VERSION, &mut bytes);
        let mut payload = Vec::new();
        codec::encode(
            &Message::Batch(MetricBatch { seq: 1, timestamp_ms: 0, sample_count: 0, packed: vec![] }),
            &mut payload,
        )
        .unwrap();
        frame::encode_frame(&payload, &mut bytes).unwrap();
        let err = server.handle_bytes(now, &bytes).unwrap_err();
        assert_eq!(err.reason_code(), "unexpected_message");
    }

    #[test]
    fn series_limit_is_enforced() {
        let now = Instant::now();
        let mut agent = AgentLink::new(now, hello()).unwrap();
        let mut server = ServerLink::new(now).with_max_series(1);
        pump(now, &mut agent, &mut server).unwrap();
        server.accept(now, welcome()).unwrap();
        pump(now, &mut agent, &mut server).unwrap();
        let mut table = SeriesTable::new();
        let mut scratch = String::new();
        let a = table.intern("a", &[], &mut scratch);
        let b = table.intern("b", &[], &mut scratch);
        agent
            .send_batch(now, &SampleBatch { seq: 1, timestamp_ms: 0, samples: vec![(a, 1.0), (b, 2.0)] }, &table)
            .unwrap();
        let err = pump(now, &mut agent, &mut server).unwrap_err();
        assert_eq!(err.reason_code(), "too_many_series");
    }

    #[test]
    fn heartbeats_flow_and_silence_times_out() {
        let start = Instant::now();
        let (mut agent, mut server) = connected(start);
        let t1 = start + Duration::from_millis(1000);
        assert_eq!(agent.poll_timeout(), Some(t1));
        agent.handle_timeout(t1).unwrap();
        let bytes = agent.poll_transmit().expect("heartbeat queued");
        server.handle_bytes(t1, &bytes).unwrap();
        assert_eq!(server.poll_event(), Some(ServerEvent::Heartbeat { backlog_batches: 0 }));
        // The aggregator never answers: after four intervals the agent gives up.
        let mut now;
        let result = loop {
            now = agent.poll_timeout().unwrap();
            if let Err(err) = agent.handle_timeout(now) {
                break err;
            }
            agent.poll_transmit();
        };
        assert_eq!(result.reason_code(), "timeout");
        assert_eq!(now, start + Duration::from_millis(4000));
    }

    #[test]
    fn goodbye_is_reported() {
        let now = Instant::now();
        let (mut agent, mut server) = connected(now);
        agent.close(now, "agent shutting down").unwrap();
        pump(now, &mut agent, &mut server).unwrap();
        assert_eq!(server.poll_event(), Some(ServerEvent::PeerClosing { reason: "agent shutting down".into() }));
    }
}
