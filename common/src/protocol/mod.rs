//! The agent ↔ aggregator protocol, without I/O. See `link.rs` for the
//! conversation, `frame.rs` for the byte layout and limits.

pub mod codec;
pub mod enroll;
pub mod frame;
pub mod link;
pub mod messages;
pub mod samples;

pub use frame::{ALPN, MAX_FRAME_BYTES, PROTOCOL_VERSION};
pub use link::{AgentEvent, AgentLink, ProtocolError, SampleBatch, ServerEvent, ServerLink};
pub use messages::*;

#[cfg(test)]
mod tests {
    use super::codec::{decode, encode};
    use super::*;
    use proptest::prelude::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                agent_id: "db-1".into(),
                hostname: "db-1.example".into(),
                agent_version: "0.1.0".into(),
                labels: vec![("role".into(), "postgres".into())],
                config_version: 7,
                config_profile: "postgres".into(),
                config_hash: "sha256:00".into(),
                local_config: "[collect]\n".into(),
                local_config_dir: "/etc/herd".into(),
                backlog_batches: 12,
            }),
            Message::Welcome(Welcome {
                aggregator_version: "0.1.0".into(),
                agent_id: "db-1".into(),
                heartbeat_interval_ms: 5000,
            }),
            Message::Refuse(Refuse { reason: RefuseReason::ProtocolVersion, message: "upgrade".into() }),
            Message::SeriesDefs(SeriesDefs {
                first_id: 3,
                series: vec![vec![("__name__".into(), "up".into()), ("job".into(), "node".into())]],
            }),
            Message::Batch(MetricBatch { seq: u64::MAX, timestamp_ms: -5, sample_count: 2, packed: vec![1, 2, 3] }),
            Message::Ack(Ack { ranges: vec![(1, 5), (9, 9)] }),
            Message::Heartbeat(Heartbeat { backlog_batches: 3 }),
            Message::ConfigPush(ConfigPush {
                version: 2,
                profile: "web".into(),
                hash: "sha256:ab".into(),
                toml: "[collect]\ninterval = \"1s\"\n".into(),
            }),
            Message::ConfigAck(ConfigAck {
                version: 2,
                outcome: ConfigOutcome::RolledBack,
                running_version: 1,
                running_profile: "web".into(),
                running_hash: "sha256:cd".into(),
                effective_hash: "sha256:ef".into(),
                error: Some("collect.interval: too short".into()),
                collectors: vec![CollectorHealth { name: "host".into(), error: Some("timed out".into()) }],
            }),
            Message::Goodbye(Goodbye { reason: "shutting down".into() }),
        ]
    }

    #[test]
    fn every_message_roundtrips() {
        for message in all_messages() {
            let mut bytes = Vec::new();
            encode(&message, &mut bytes).unwrap();
            assert_eq!(decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for message in all_messages() {
            let mut bytes = Vec::new();
            encode(&message, &mut bytes).unwrap();
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{} cut at {cut}", message.kind());
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = Vec::new();
        encode(&Message::Heartbeat(Heartbeat { backlog_batches: 0 }), &mut bytes).unwrap();
        bytes.push(0);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn huge_claimed_lengths_inside_a_message_do_not_allocate() {
        // A Batch whose `packed` claims 4 GiB, then a SeriesDefs claiming 2^60
        // label sets: both must fail on the byte limit, not try to allocate.
        for variant in [4u8, 3u8] {
            let mut bytes = vec![variant];
            if variant == 4 {
                bytes.extend_from_slice(&[1, 0, 2]); // seq, timestamp, count
            } else {
                bytes.push(0); // first_id
            }
            bytes.push(0xfd); // u64 length follows
            bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
            assert!(decode(&bytes).is_err());
        }
        let mut bytes = vec![4u8, 1, 0, 2, 0xfc];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn frame_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
            let mut decoder = frame::FrameDecoder::new();
            for piece in bytes.chunks(chunk) {
                decoder.push(piece);
                while let Ok(Some(payload)) = decoder.next_frame() {
                    let _ = decode(payload);
                }
            }
        }

        #[test]
        fn server_link_survives_random_streams(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let now = std::time::Instant::now();
            let mut link = ServerLink::new(now);
            let mut stream = Vec::new();
            frame::encode_preamble(PROTOCOL_VERSION, &mut stream);
            stream.extend_from_slice(&bytes);
            let _ = link.handle_bytes(now, &stream);
            while link.poll_event().is_some() {}
        }

        #[test]
        fn hello_roundtrips(agent_id in ".{0,40}", labels in prop::collection::vec((".{0,10}", ".{0,10}"), 0..5), version in any::<u64>()) {
            let message = Message::Hello(Hello {
                agent_id: agent_id.clone(), hostname: agent_id, agent_version: "x".into(),
                labels, config_version: version, backlog_batches: version, ..Hello::default()
            });
            let mut bytes = Vec::new();
            encode(&message, &mut bytes).unwrap();
            prop_assert_eq!(decode(&bytes).unwrap(), message);
        }
    }
}
