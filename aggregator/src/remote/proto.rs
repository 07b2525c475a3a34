//! Prometheus remote_write 1.0 messages (`prometheus/prompb/types.proto`,
//! `remote.proto`), the fields Herd uses, derived by hand with prost, and
//! the snappy block framing of request bodies.

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

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("body is not snappy block-compressed data: {0}")]
    Snappy(String),
    #[error("body decompresses to {decoded_bytes} bytes, more than the limit of {max_bytes}")]
    TooLarge { decoded_bytes: usize, max_bytes: usize },
    #[error("body is not a protobuf WriteRequest: {0}")]
    Protobuf(String),
}

/// Encodes and snappy-compresses `request` into `out` (cleared first);
/// `scratch` is reused for the uncompressed bytes.
pub fn encode(request: &WriteRequest, scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
    scratch.clear();
    request.encode(scratch).expect("a Vec grows as needed");
    out.clear();
    out.resize(snap::raw::max_compress_len(scratch.len()), 0);
    let written = snap::raw::Encoder::new().compress(scratch, out).expect("output sized by max_compress_len");
    out.truncate(written);
}

/// Decompresses and decodes a request body; the decompressed size is
/// checked against `max_decoded_bytes` before anything is allocated.
pub fn decode(body: &[u8], max_decoded_bytes: usize) -> Result<WriteRequest, DecodeError> {
    let decoded_bytes = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if decoded_bytes > max_decoded_bytes {
        return Err(DecodeError::TooLarge { decoded_bytes, max_bytes: max_decoded_bytes });
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    WriteRequest::decode(raw.as_slice()).map_err(|e| DecodeError::Protobuf(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> WriteRequest {
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label { name: "__name__".into(), value: "node_load1".into() },
                    Label { name: "instance".into(), value: "web-1".into() },
                ],
                samples: vec![
                    Sample { value: 0.25, timestamp: 1_700_000_000_000 },
                    Sample { value: f64::from_bits(herd_common::metric::STALE_NAN_BITS), timestamp: -5 },
                ],
            }],
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let (mut scratch, mut body) = (Vec::new(), Vec::new());
        encode(&request(), &mut scratch, &mut body);
        let back = decode(&body, 1 << 20).unwrap();
        assert_eq!(back.timeseries[0].labels, request().timeseries[0].labels);
        assert_eq!(back.timeseries[0].samples[0], request().timeseries[0].samples[0]);
        // NaN != NaN: compare the stale marker's bits.
        assert_eq!(back.timeseries[0].samples[1].value.to_bits(), herd_common::metric::STALE_NAN_BITS);
        assert_eq!(back.timeseries[0].samples[1].timestamp, -5);
    }

    #[test]
    fn known_bytes_from_the_protobuf_spec_decode() {
        // Hand-assembled per the protobuf wire format: WriteRequest.timeseries (field 1)
        // holding one TimeSeries with a label {1:"a", 2:"bc"} and a sample {1: 1.0 (fixed64), 2: 42 (varint)}.
        let label = [0x0a, 0x01, b'a', 0x12, 0x02, b'b', b'c'];
        let sample = [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x2a]; // value 1.0, timestamp 42
        let mut series = vec![0x0a, label.len() as u8];
        series.extend_from_slice(&label);
        series.extend_from_slice(&[0x12, sample.len() as u8]);
        series.extend_from_slice(&sample);
        let mut raw = vec![0x0a, series.len() as u8];
        raw.extend_from_slice(&series);
        let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let decoded = decode(&body, 1024).unwrap();
        assert_eq!(decoded.timeseries[0].labels, [Label { name: "a".into(), value: "bc".into() }]);
        assert_eq!(decoded.timeseries[0].samples, [Sample { value: 1.0, timestamp: 42 }]);
    }

    #[test]
    fn garbage_and_oversized_bodies_are_refused() {
        assert!(matches!(decode(b"\xff\xff\xff\xff\xff\xff", 1 << 20), Err(DecodeError::Snappy(_))));
        let not_protobuf = snap::raw::Encoder::new().compress_vec(b"\x0a\xff\xff\xff\xff\x0f").unwrap();
        assert!(matches!(decode(&not_protobuf, 1 << 20), Err(DecodeError::Protobuf(_))));
        let big = snap::raw::Encoder::new().compress_vec(&vec![0u8; 4096]).unwrap();
        assert_eq!(decode(&big, 1000), Err(DecodeError::TooLarge { decoded_bytes: 4096, max_bytes: 1000 }));
    }
}
