//! Length-prefixed frames on a byte stream, and the stream preamble.
//!
//! A stream starts with an 8-byte preamble (`HERD`, protocol version as u16
//! big-endian, two reserved zero bytes), then carries frames: a u32 big-endian
//! payload length followed by that many payload bytes. The preamble never
//! changes shape, so peers of any version can read each other's version and
//! refuse clearly. No I/O here: bytes in, frames out.

use thiserror::Error;

/// Largest frame payload accepted or produced. A claimed length above this is
/// refused before any buffer grows for it.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;

/// The ALPN token both ends present in the TLS handshake.
pub const ALPN: &[u8] = b"herd";

const MAGIC: [u8; 4] = *b"HERD";
/// Bytes in the stream preamble.
pub const PREAMBLE_BYTES: usize = 8;
const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("peer is not speaking the Herd protocol (stream preamble {found:02x?})")]
    BadMagic { found: [u8; 4] },
    #[error("peer speaks Herd protocol version {peer}, this side speaks {ours}: upgrade the older side")]
    VersionMismatch { peer: u16, ours: u16 },
    #[error("frame of {claimed} bytes exceeds the {max} byte limit")]
    TooLarge { claimed: u64, max: usize },
}

/// Writes the stream preamble for `version` into `out`.
pub fn encode_preamble(version: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// Appends one frame carrying `payload` to `out`.
///
/// # Errors
/// `TooLarge` if the payload exceeds [`MAX_FRAME_BYTES`]; nothing is written then.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge { claimed: payload.len() as u64, max: MAX_FRAME_BYTES })?;
    out.reserve(LENGTH_PREFIX_BYTES + payload.len());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Incremental decoder: feed it whatever bytes arrived, take whole frames out.
///
/// Memory held is bounded by what was actually received, never by what a
/// length prefix claims, and a claim above [`MAX_FRAME_BYTES`] is an error as
/// soon as the four prefix bytes are in.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unread data in `buf`; compacted lazily to avoid a memmove per frame.
    read_pos: usize,
    peer_version: Option<u16>,
    expect_preamble: bool,
}

impl FrameDecoder {
    /// A decoder for a stream that starts with a preamble.
    pub fn new() -> Self {
        Self { buf: Vec::new(), read_pos: 0, peer_version: None, expect_preamble: true }
    }

    /// A decoder for bare frames (no preamble), e.g. for tests and fuzzing.
    pub fn without_preamble() -> Self {
        Self { buf: Vec::new(), read_pos: 0, peer_version: Some(PROTOCOL_VERSION), expect_preamble: false }
    }

    /// The version the peer announced, once its preamble has arrived.
    pub fn peer_version(&self) -> Option<u16> {
        self.peer_version
    }

    /// Buffers `bytes` received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.read_pos > 0 && self.read_pos == self.buf.len() {
            self.buf.clear();
            self.read_pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len() - self.read_pos
    }

    /// Returns the next whole frame's payload, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// A bad preamble, a version mismatch or an oversized length prefix. The
    /// stream cannot be resynchronised after an error: close it.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if self.expect_preamble {
            let Some(preamble) = self.buf.get(self.read_pos..self.read_pos + PREAMBLE_BYTES) else {
                return Ok(None);
            };
            let magic = [preamble[0], preamble[1], preamble[2], preamble[3]];
            if magic != MAGIC {
                return Err(FrameError::BadMagic { found: magic });
            }
            let version = u16::from_be_bytes([preamble[4], preamble[5]]);
            self.peer_version = Some(version);
            if version != PROTOCOL_VERSION {
                return Err(FrameError::VersionMismatch { peer: version, ours: PROTOCOL_VERSION });
            }
            self.read_pos += PREAMBLE_BYTES;
            self.expect_preamble = false;
        }
        let unread = &self.buf[self.read_pos..];
        let Some(prefix) = unread.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let claimed = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if claimed > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { claimed: claimed as u64, max: MAX_FRAME_BYTES });
        }
        let end = LENGTH_PREFIX_BYTES + claimed;
        if unread.len() < end {
            return Ok(None);
        }
        let start = self.read_pos + LENGTH_PREFIX_BYTES;
        self.read_pos += end;
        // Compact once the consumed prefix dominates, so a long-lived stream
        // does not grow its buffer without bound.
        if self.read_pos > 64 * 1024 && self.read_pos * 2 > self.buf.len() {
            self.buf.drain(..start - LENGTH_PREFIX_BYTES);
            let shift = start - LENGTH_PREFIX_BYTES;
            self.read_pos -= shift;
            return Ok(Some(&self.buf[LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + claimed]));
        }
        Ok(Some(&self.buf[start..start + claimed]))
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_preamble(PROTOCOL_VERSION, &mut out);
        for frame in frames {
            encode_frame(frame, &mut out).unwrap();
        }
        out
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            decoder.push(piece);
            while let Some(frame) = decoder.next_frame()? {
                frames.push(frame.to_vec());
            }
        }
        Ok(frames)
    }

    #[test]
    fn frames_survive_any_chunking() {
        let bytes = stream(&[b"one", b"", b"three", &[7u8; 1000]]);
        for chunk in [1, 2, 3, 5, 8, 13, 1024, bytes.len()] {
            let frames = decode_all(&bytes, chunk).unwrap();
            assert_eq!(frames.len(), 4, "chunk {chunk}");
            assert_eq!(frames[0], b"one");
            assert_eq!(frames[1], b"");
            assert_eq!(frames[2], b"three");
            assert_eq!(frames[3], vec![7u8; 1000]);
        }
    }

    #[test]
    fn truncated_frame_waits_for_more() {
        let bytes = stream(&[b"hello world"]);
        let frames = decode_all(&bytes[..bytes.len() - 1], 4).unwrap();
        assert!(frames.is_empty());
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        let mut bytes = Vec::new();
        encode_preamble(PROTOCOL_VERSION, &mut bytes);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        assert_eq!(
            decoder.next_frame().unwrap_err(),
            FrameError::TooLarge { claimed: u64::from(u32::MAX), max: MAX_FRAME_BYTES }
        );
        assert!(decoder.buf.capacity() < 1024, "no buffer was sized from the claim");
    }

    #[test]
    fn wrong_version_is_refused_with_both_versions() {
        let mut bytes = Vec::new();
        encode_preamble(PROTOCOL_VERSION + 1, &mut bytes);
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(err, FrameError::VersionMismatch { peer: PROTOCOL_VERSION + 1, ours: PROTOCOL_VERSION });
        assert_eq!(decoder.peer_version(), Some(PROTOCOL_VERSION + 1));
        assert!(err.to_string().contains("upgrade"));
    }

    #[test]
    fn foreign_protocol_is_refused() {
        let mut decoder = FrameDecoder::new();
        decoder.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(decoder.next_frame(), Err(FrameError::BadMagic { .. })));
    }

    #[test]
    fn encoder_refuses_oversized_payload() {
        let payload = vec![0u8; MAX_FRAME_BYTES + 1];
        let mut out = Vec::new();
        assert!(encode_frame(&payload, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn long_streams_compact_their_buffer() {
        let payload = [9u8; 4096];
        let mut decoder = FrameDecoder::new();
        let mut head = Vec::new();
        encode_preamble(PROTOCOL_VERSION, &mut head);
        decoder.push(&head);
        let mut one = Vec::new();
        encode_frame(&payload, &mut one).unwrap();
        for _ in 0..1000 {
            decoder.push(&one);
            let frame = decoder.next_frame().unwrap().unwrap();
            assert_eq!(frame.len(), payload.len());
        }
        assert!(decoder.buf.len() < 256 * 1024, "buffer stays bounded: {}", decoder.buf.len());
    }
}
