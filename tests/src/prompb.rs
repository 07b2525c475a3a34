//! Prometheus remote_write 1.0 messages (snappy-compressed protobuf) and a
//! sender, for benchmarks that feed Herd and its peers the same stream.

use std::time::Duration;

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

impl Label {
    pub fn new(name: &str, value: impl Into<String>) -> Self {
        Self { name: name.to_owned(), value: value.into() }
    }
}

impl WriteRequest {
    /// The request's body as sent: protobuf, then snappy (block format).
    pub fn body(&self) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(&self.encode_to_vec()).expect("snappy encodes")
    }
}

/// An HTTP client for remote_write senders (statuses are returned, not errors).
pub fn sender() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// POSTs one remote_write body to `url`; panics on a refusal (the benchmark's data is valid).
pub fn post(agent: &ureq::Agent, url: &str, token: Option<&str>, body: &[u8]) {
    let mut request = agent
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0");
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body).expect("receiver reachable");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    assert!((200..300).contains(&status), "{url} answered {status}: {text}");
}
