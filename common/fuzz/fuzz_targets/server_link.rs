//! The aggregator's side of a connection, after a valid preamble, fed a mix of
//! raw bytes and well-formed messages built from the input, in arbitrary
//! chunks, with time moving. Checks that nothing panics, that everything the
//! link transmits is a decodable frame, and, while only well-formed messages
//! were sent, that every batch decodes to exactly the samples encoded.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use herd_common::protocol::frame::{self, FrameDecoder, PROTOCOL_VERSION};
use herd_common::protocol::samples::SampleEncoder;
use herd_common::protocol::{
    ConfigAck, ConfigOutcome, Goodbye, Heartbeat, Hello, Message, MetricBatch, SeriesDefs, ServerEvent, ServerLink, Welcome, codec,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Accept the hello (else refuse it).
    accept: bool,
    heartbeat_interval_ms: u16,
    /// A small series limit, so the limit is reachable.
    max_series: Option<u8>,
    /// Bytes per `handle_bytes` call; 0 means whole messages.
    chunk: u8,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Arbitrary bytes on the stream.
    Raw(Vec<u8>),
    /// An arbitrary payload in a well-formed frame.
    Frame(Vec<u8>),
    Hello { agent_id: String, labels: Vec<(String, String)>, config_version: u64, backlog_batches: u64 },
    /// Series with valid (sorted, non-empty) labels; `skip` breaks the id sequence.
    Defs { skip: u8, series: Vec<BTreeMap<String, String>> },
    /// Series as given, possibly unsorted or empty.
    RawDefs { first_id: u32, series: Vec<Vec<(String, String)>> },
    /// Samples for defined ids (taken modulo the number defined).
    Batch { seq: u64, timestamp_ms: i64, samples: Vec<(u32, f64)> },
    Heartbeat(u64),
    ConfigAck { version: u64, error: Option<String> },
    Goodbye(String),
    /// Moves the clock and runs the link's timers.
    Advance { ms: u16 },
}

/// What the harness believes the link's state is.
struct Agent {
    defined: u32,
    encoder: SampleEncoder,
    /// Set once anything but a well-formed message was sent: the link's
    /// state can then differ from `defined` and `encoder`.
    tainted: bool,
}

fn framed(message: &Message) -> Vec<u8> {
    let mut payload = Vec::new();
    codec::encode(message, &mut payload).expect("harness messages encode");
    let mut bytes = Vec::new();
    // Too large only if the input is, and then nothing is sent.
    let _ = frame::encode_frame(&payload, &mut bytes);
    bytes
}

/// Everything the link transmits must be whole, decodable frames.
fn check_transmit(link: &mut ServerLink, peer: &mut FrameDecoder) {
    while let Some(bytes) = link.poll_transmit() {
        peer.push(&bytes);
        while let Some(payload) = peer.next_frame().expect("the link writes valid frames") {
            codec::decode(payload).expect("the link writes decodable messages");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut now = Instant::now();
    let mut link = ServerLink::new(now);
    if let Some(max) = input.max_series {
        link = link.with_max_series(u32::from(max));
    }
    let mut preamble = Vec::new();
    frame::encode_preamble(PROTOCOL_VERSION, &mut preamble);
    link.handle_bytes(now, &preamble).expect("a valid preamble is accepted");
    let mut peer = FrameDecoder::new();
    let mut agent = Agent { defined: 0, encoder: SampleEncoder::new(), tainted: false };

    for op in input.ops {
        let mut expected_samples = None;
        let bytes = match op {
            Op::Raw(bytes) => {
                agent.tainted = true;
                bytes
            }
            Op::Frame(payload) => {
                agent.tainted = true;
                let mut bytes = Vec::new();
                let _ = frame::encode_frame(&payload, &mut bytes);
                bytes
            }
            Op::Hello { agent_id, labels, config_version, backlog_batches } => framed(&Message::Hello(Hello {
                hostname: agent_id.clone(),
                agent_id,
                agent_version: "fuzz".into(),
                labels,
                config_version,
                backlog_batches,
                ..Hello::default()
            })),
            Op::Defs { skip, series } => {
                let series: Vec<Vec<(String, String)>> = series
                    .into_iter()
                    .map(|labels| labels.into_iter().filter(|(n, v)| !n.is_empty() && !v.is_empty()).collect())
                    .collect();
                let first_id = agent.defined.saturating_add(u32::from(skip));
                if skip == 0 {
                    agent.defined = agent.defined.saturating_add(series.len() as u32);
                } else {
                    agent.tainted = true;
                }
                framed(&Message::SeriesDefs(SeriesDefs { first_id, series }))
            }
            Op::RawDefs { first_id, series } => {
                agent.tainted = true;
                framed(&Message::SeriesDefs(SeriesDefs { first_id, series }))
            }
            Op::Batch { seq, timestamp_ms, samples } => {
                // Ascending, unique, defined ids: what a real agent sends.
                let samples: Vec<(u32, f64)> = if agent.defined == 0 {
                    Vec::new()
                } else {
                    let by_id: BTreeMap<u32, f64> =
                        samples.into_iter().map(|(id, value)| (id % agent.defined, value)).collect();
                    by_id.into_iter().collect()
                };
                let mut packed = Vec::new();
                agent.encoder.encode(&samples, &mut packed);
                let sample_count = samples.len() as u32;
                expected_samples = Some(samples);
                framed(&Message::Batch(MetricBatch { seq, timestamp_ms, sample_count, packed }))
            }
            Op::Heartbeat(backlog_batches) => framed(&Message::Heartbeat(Heartbeat { backlog_batches })),
            Op::ConfigAck { version, error } => framed(&Message::ConfigAck(ConfigAck {
                version,
                outcome: if error.is_some() { ConfigOutcome::Refused } else { ConfigOutcome::Applied },
                running_version: version,
                running_profile: String::new(),
                running_hash: String::new(),
                effective_hash: String::new(),
                error,
                collectors: Vec::new(),
            })),
            Op::Goodbye(reason) => framed(&Message::Goodbye(Goodbye { reason })),
            Op::Advance { ms } => {
                now += Duration::from_millis(u64::from(ms));
                if link.handle_timeout(now).is_err() {
                    return;
                }
                check_transmit(&mut link, &mut peer);
                continue;
            }
        };

        let chunk = if input.chunk == 0 { bytes.len().max(1) } else { usize::from(input.chunk) };
        for piece in bytes.chunks(chunk) {
            if link.handle_bytes(now, piece).is_err() {
                // The stream is dead after an error; events before it stay valid.
                while link.poll_event().is_some() {}
                return;
            }
        }
        while let Some(event) = link.poll_event() {
            match event {
                ServerEvent::Hello(hello) if input.accept => {
                    let welcome = Welcome {
                        aggregator_version: "fuzz".into(),
                        agent_id: hello.agent_id,
                        heartbeat_interval_ms: u32::from(input.heartbeat_interval_ms),
                    };
                    link.accept(now, welcome).expect("welcome encodes");
                }
                ServerEvent::Hello(_) => {
                    link.refuse(now, herd_common::protocol::RefuseReason::Identity, "fuzz".into())
                        .expect("refusal encodes");
                }
                ServerEvent::Batch { samples, .. } if !agent.tainted => {
                    let expected = expected_samples.take().expect("a batch event follows a batch");
                    let bits = |s: &[(u32, f64)]| s.iter().map(|&(id, v)| (id, v.to_bits())).collect::<Vec<_>>();
                    assert_eq!(bits(&samples), bits(&expected), "samples survive the wire bit for bit");
                }
                _ => {}
            }
        }
        check_transmit(&mut link, &mut peer);
    }
});
