//! Arbitrary bytes, cut into arbitrary chunks, through `FrameDecoder`, and
//! each frame through `codec::decode`. Checks that nothing panics, that the
//! decoder holds no more than it was given, that chunking never changes the
//! frames or the error, and that a decoded message re-encodes to itself.
#![no_main]

use arbitrary::Arbitrary;
use herd_common::protocol::codec;
use herd_common::protocol::frame::{FrameDecoder, FrameError, MAX_FRAME_BYTES};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Bare frames spare the fuzzer from finding the preamble first.
    with_preamble: bool,
    chunks: Vec<Vec<u8>>,
}

fn new_decoder(with_preamble: bool) -> FrameDecoder {
    if with_preamble { FrameDecoder::new() } else { FrameDecoder::without_preamble() }
}

/// Drains whole frames; `Err` ends the stream, as it does for the real links.
fn drain(decoder: &mut FrameDecoder, frames: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
    while let Some(payload) = decoder.next_frame()? {
        assert!(payload.len() <= MAX_FRAME_BYTES);
        frames.push(payload.to_vec());
    }
    Ok(())
}

fuzz_target!(|input: Input| {
    let mut decoder = new_decoder(input.with_preamble);
    let mut frames = Vec::new();
    let mut pushed = 0usize;
    let mut outcome = Ok(());
    for chunk in &input.chunks {
        decoder.push(chunk);
        pushed += chunk.len();
        assert!(decoder.buffered_bytes() <= pushed);
        outcome = drain(&mut decoder, &mut frames);
        if outcome.is_err() {
            break;
        }
    }

    // The same bytes in one piece give the same frames and the same error.
    let mut whole = new_decoder(input.with_preamble);
    whole.push(&input.chunks.concat());
    let mut whole_frames = Vec::new();
    let whole_outcome = drain(&mut whole, &mut whole_frames);
    assert_eq!(frames, whole_frames);
    assert_eq!(outcome, whole_outcome);

    for payload in &frames {
        if let Ok(message) = codec::decode(payload) {
            let mut again = Vec::new();
            codec::encode(&message, &mut again).expect("a decoded message encodes");
            assert_eq!(codec::decode(&again).expect("re-encoded message decodes"), message);
        }
    }
});
