//! The one place that knows how messages become bytes. bincode 2.0.1 is
//! pinned and used nowhere else, so the format can move in one place.

use thiserror::Error;

use super::frame::MAX_FRAME_BYTES;
use super::messages::Message;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("cannot encode {kind} message: {detail}")]
    Encode { kind: &'static str, detail: String },
    #[error("malformed message: {detail}")]
    Decode { detail: String },
    #[error("message has {extra} trailing bytes")]
    TrailingBytes { extra: usize },
}

fn config() -> impl bincode::config::Config {
    // The limit bounds every allocation the decoder makes from claimed lengths.
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Encodes `message` and appends the bytes to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(message, out, config())
        .map(|_| ())
        .map_err(|err| CodecError::Encode { kind: message.kind(), detail: err.to_string() })
}

/// Encodes a message of a side protocol (enrollment, renewal) the same way.
pub fn encode_value<T: serde::Serialize>(kind: &'static str, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|err| CodecError::Encode { kind, detail: err.to_string() })
}

/// Decodes exactly one side-protocol message from `bytes`.
pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|err| CodecError::Decode { detail: err.to_string() })?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes { extra: bytes.len() - used });
    }
    Ok(value)
}

/// Decodes exactly one message from `bytes` (a whole frame payload).
pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
    let (message, used) = bincode::serde::decode_from_slice::<Message, _>(bytes, config())
        .map_err(|err| CodecError::Decode { detail: err.to_string() })?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes { extra: bytes.len() - used });
    }
    Ok(message)
}
