//! remote_write senders for benchmarks that feed Herd and its peers the
//! same stream, on the aggregator's own messages and encoder.

use std::time::Duration;

pub use herd_aggregator::remote::proto::{Label, Sample, TimeSeries, WriteRequest};

/// A label pair.
pub fn label(name: &str, value: impl Into<String>) -> Label {
    Label { name: name.to_owned(), value: value.into() }
}

/// `request`'s body as sent: protobuf, then snappy (block format), with Herd's own encoder.
pub fn body(request: &WriteRequest) -> Vec<u8> {
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    herd_aggregator::remote::proto::encode(request, &mut scratch, &mut out);
    out
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
