//! The messages agents and the aggregator exchange. Plain data: encoding is
//! `codec.rs`'s job, sequencing is `link.rs`'s.

use serde::{Deserialize, Serialize};

/// Agent → aggregator, first message on a stream. Its claims are
/// informational: the agent's identity is its client certificate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Hello {
    /// Agent id as configured; the aggregator compares it with the certificate.
    pub agent_id: String,
    pub hostname: String,
    pub agent_version: String,
    /// Labels the agent attaches to all of its series (e.g. `env`, `role`).
    pub labels: Vec<(String, String)>,
    /// Version of the pushed configuration the agent is running, 0 for its local file alone.
    pub config_version: u64,
    /// The profile that version belongs to ("" for none).
    pub config_profile: String,
    /// Hash of the pushed body it runs (`config::pushed::content_hash`; "" for none).
    pub config_hash: String,
    /// The agent's local configuration file, passwords replaced by `***`
    /// (`config::pushed::redacted`), so the aggregator can validate what a
    /// push would make of it and show the difference.
    pub local_config: String,
    /// Directory relative paths in `local_config` are taken from.
    pub local_config_dir: String,
    /// Batches waiting in the agent's buffer when it connected.
    pub backlog_batches: u64,
}

/// Aggregator → agent, answer to a hello that was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub aggregator_version: String,
    /// The identity the aggregator established from the client certificate.
    pub agent_id: String,
    /// How often each side sends a heartbeat when it has nothing else to say.
    pub heartbeat_interval_ms: u32,
}

/// Aggregator → agent: the hello was refused; the stream closes after this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refuse {
    pub reason: RefuseReason,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    ProtocolVersion,
    Identity,
    Overloaded,
}

/// Series definitions: a wire id stands for a label set from here on, for the
/// rest of the connection. Ids are dense per connection, starting at 0, and a
/// definition always takes the next free id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesDefs {
    pub first_id: u32,
    /// Each label set, sorted by name, `__name__` included.
    pub series: Vec<Vec<(String, String)>>,
}

/// One collection cycle's samples, all at one timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricBatch {
    /// Per-agent sequence number, assigned when the batch was collected; the
    /// aggregator acknowledges and deduplicates by it.
    pub seq: u64,
    pub timestamp_ms: i64,
    pub sample_count: u32,
    /// Samples packed by `samples::SampleEncoder` against this connection's
    /// previous values.
    pub packed: Vec<u8>,
}

/// Aggregator → agent: these sequence numbers are stored durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Inclusive ranges, ascending.
    pub ranges: Vec<(u64, u64)>,
}

/// Either side, when it has been quiet for a heartbeat interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Batches waiting in the sender's buffer (agent) or 0 (aggregator).
    pub backlog_batches: u64,
}

/// Aggregator → agent: a configuration to validate and apply: the agent
/// overlays `toml`, a profile body in its own file format, on its local
/// file. Version 0 with an empty body returns the agent to its local file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPush {
    pub version: u64,
    pub profile: String,
    /// `content_hash` of `toml`, for the acknowledgement.
    pub hash: String,
    pub toml: String,
}

/// Agent → aggregator: what became of a [`ConfigPush`], sent after the
/// first collection cycle under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigAck {
    /// The version pushed.
    pub version: u64,
    pub outcome: ConfigOutcome,
    /// The version, profile and body hash the agent runs now (the pushed
    /// one when applied, the previous one otherwise).
    pub running_version: u64,
    pub running_profile: String,
    pub running_hash: String,
    /// Hash of the whole effective configuration it runs now.
    pub effective_hash: String,
    /// Why it was refused or rolled back: every problem, with its key path.
    pub error: Option<String>,
    /// Each collector after its first cycle under the pushed configuration.
    pub collectors: Vec<CollectorHealth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigOutcome {
    /// Running it.
    Applied,
    /// Not applied (invalid here, or unappliable); the previous one keeps running.
    Refused,
    /// Applied, every collector failed its first cycle, the previous one restored.
    RolledBack,
}

/// One collector's first cycle under a pushed configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorHealth {
    /// As in `herd_collector_success{collector=...}`.
    pub name: String,
    /// `None` when the cycle succeeded.
    pub error: Option<String>,
}

/// Aggregator → agent: sample the series its alerting rules compare
/// directly more often than the collection interval. The agent re-runs the
/// collectors that report series of these `names` every `interval_ms`
/// between its regular cycles and sends a sample of such a series only when
/// its value changed; everything else keeps its own interval. An empty list
/// (or `interval_ms` 0) ends it. Sent after the welcome and whenever the
/// rules change; it holds for the connection only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AlertInputs {
    pub interval_ms: u32,
    /// Metric names, sorted.
    pub names: Vec<String>,
}

impl AlertInputs {
    pub fn is_active(&self) -> bool {
        self.interval_ms > 0 && !self.names.is_empty()
    }
}

/// Either side, before closing on purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goodbye {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Refuse(Refuse),
    SeriesDefs(SeriesDefs),
    Batch(MetricBatch),
    Ack(Ack),
    Heartbeat(Heartbeat),
    ConfigPush(ConfigPush),
    ConfigAck(ConfigAck),
    Goodbye(Goodbye),
    AlertInputs(AlertInputs),
}

impl Message {
    /// A fixed name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Refuse(_) => "refuse",
            Message::SeriesDefs(_) => "series_defs",
            Message::Batch(_) => "batch",
            Message::Ack(_) => "ack",
            Message::Heartbeat(_) => "heartbeat",
            Message::ConfigPush(_) => "config_push",
            Message::ConfigAck(_) => "config_ack",
            Message::Goodbye(_) => "goodbye",
            Message::AlertInputs(_) => "alert_inputs",
        }
    }
}
