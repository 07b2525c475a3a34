//! Packing of one batch's samples against the connection's previous values,
//! so that a sample usually costs one to three bytes on the wire.
//!
//! Samples are written in ascending wire-id order. Each starts with a header
//! byte: the top three bits say how the value is coded, the low five bits hold
//! the gap to the previous sample's id (31 means "gap is 31 plus a varint that
//! follows"). Value codings, relative to the same series' previous value on
//! this connection (0.0 before the first):
//!
//! | kind | meaning                          | payload                           |
//! |------|----------------------------------|-----------------------------------|
//! | 0    | same bits as before              | none                              |
//! | 1    | integer, delta from previous     | zigzag varint                     |
//! | 2    | XOR of the IEEE-754 bits         | 1 byte (zero bytes at each end), then the middle bytes |
//! | 3    | Prometheus staleness marker      | none                              |
//! | 4    | hundredths, delta from previous  | zigzag varint (CPU ticks, USER_HZ)|
//! | 5    | thousandths, delta from previous | zigzag varint (milliseconds)      |
//!
//! Encoder and decoder hold the same state because the stream is ordered and
//! both sides apply every batch in stream order. No I/O here.

use thiserror::Error;

use crate::metric::STALE_NAN_BITS;
use crate::varint::{get as get_varint, len as varint_len, put as put_varint, unzigzag, zigzag};

const KIND_SAME: u8 = 0;
const KIND_INT_DELTA: u8 = 1;
const KIND_XOR: u8 = 2;
const KIND_STALE: u8 = 3;
const KIND_CENTI_DELTA: u8 = 4;
const KIND_MILLI_DELTA: u8 = 5;
const GAP_ESCAPE: u32 = 31;
/// Integers up to 2^53 are exact in an f64.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SampleDecodeError {
    #[error("packed samples end in the middle of sample {index}")]
    Truncated { index: u32 },
    #[error("sample {index} refers to series {id}, which this connection never defined")]
    UnknownSeries { index: u32, id: u64 },
    #[error("sample {index} has unknown value coding {kind}")]
    BadKind { index: u32, kind: u8 },
    #[error("packed samples carry {extra} bytes after the last of {count} samples")]
    TrailingBytes { count: u32, extra: usize },
}

/// Per-connection state of the sending side.
#[derive(Debug, Default)]
pub struct SampleEncoder {
    previous_bits: Vec<u64>,
}

/// Per-connection state of the receiving side.
#[derive(Debug, Default)]
pub struct SampleDecoder {
    previous_bits: Vec<u64>,
}

impl SampleEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Packs `samples` (wire id, value), which must be sorted by id, into `out`.
    pub fn encode(&mut self, samples: &[(u32, f64)], out: &mut Vec<u8>) {
        debug_assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0), "samples sorted by id");
        let mut previous_id = 0u32;
        for (index, &(id, value)) in samples.iter().enumerate() {
            let gap = if index == 0 { id } else { id - previous_id };
            previous_id = id;
            let slot = id as usize;
            if slot >= self.previous_bits.len() {
                self.previous_bits.resize(slot + 1, 0);
            }
            let before = self.previous_bits[slot];
            self.previous_bits[slot] = value.to_bits();
            encode_sample(gap, before, value, out);
        }
    }
}

fn encode_sample(gap: u32, before_bits: u64, value: f64, out: &mut Vec<u8>) {
    let bits = value.to_bits();
    let header = |kind: u8| (kind << 5) | gap.min(GAP_ESCAPE) as u8;
    let push_gap_tail = |out: &mut Vec<u8>| {
        if gap >= GAP_ESCAPE {
            put_varint(u64::from(gap - GAP_ESCAPE), out);
        }
    };
    if bits == before_bits {
        out.push(header(KIND_SAME));
        push_gap_tail(out);
        return;
    }
    if bits == STALE_NAN_BITS {
        out.push(header(KIND_STALE));
        push_gap_tail(out);
        return;
    }
    let before = f64::from_bits(before_bits);
    let xor = bits ^ before_bits;
    let leading = (xor.leading_zeros() / 8) as usize;
    let trailing = (xor.trailing_zeros() / 8) as usize;
    let xor_len = 1 + 8usize.saturating_sub(leading + trailing);
    // Try the decimal codings; each must reproduce the exact bits on decode.
    let mut best: Option<(u8, u64, usize)> = None;
    for (kind, scale) in [(KIND_INT_DELTA, 1.0), (KIND_CENTI_DELTA, 100.0), (KIND_MILLI_DELTA, 1000.0)] {
        if let Some(delta) = scaled_delta(before, value, scale) {
            let zz = zigzag(delta);
            let len = varint_len(zz);
            if best.is_none_or(|(_, _, l)| len < l) {
                best = Some((kind, zz, len));
            }
        }
    }
    match best {
        Some((kind, zz, len)) if len < xor_len => {
            out.push(header(kind));
            push_gap_tail(out);
            put_varint(zz, out);
        }
        _ => {
            out.push(header(KIND_XOR));
            push_gap_tail(out);
            if xor == 0 {
                // Unreachable (equal bits took KIND_SAME) but keep the coding total.
                out.push(0x80);
                return;
            }
            let middle = 8 - leading - trailing;
            out.push(((leading as u8) << 4) | middle as u8);
            let be = xor.to_be_bytes();
            out.extend_from_slice(&be[leading..leading + middle]);
        }
    }
}

/// `round(value*scale) - round(before*scale)` if both sides are exact multiples
/// of `1/scale` (as f64 arithmetic reproduces them) and small enough to be exact.
fn scaled_delta(before: f64, value: f64, scale: f64) -> Option<i64> {
    let units = |v: f64| -> Option<i64> {
        let scaled = (v * scale).round();
        // -0.0 would come back as +0.0.
        if !v.is_finite() || scaled.abs() > MAX_EXACT_INT || (v == 0.0 && v.is_sign_negative()) {
            return None;
        }
        let back = if scale == 1.0 { scaled } else { scaled / scale };
        (back.to_bits() == v.to_bits()).then_some(scaled as i64)
    };
    units(value)?.checked_sub(units(before)?)
}

impl SampleDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for a series the peer just defined.
    pub fn define(&mut self, id: u32) {
        if id as usize >= self.previous_bits.len() {
            self.previous_bits.resize(id as usize + 1, 0);
        }
    }

    /// Number of series defined so far.
    pub fn defined(&self) -> usize {
        self.previous_bits.len()
    }

    /// Unpacks `count` samples from `bytes`, appending (wire id, value) to `out`.
    ///
    /// On error `out` may hold a prefix of the batch and the state is
    /// unusable: the connection must close.
    pub fn decode(&mut self, bytes: &[u8], count: u32, out: &mut Vec<(u32, f64)>) -> Result<(), SampleDecodeError> {
        let mut pos = 0usize;
        let mut id = 0u64;
        // Never trust `count` for allocation: at least one byte per sample.
        out.reserve((count as usize).min(bytes.len()));
        for index in 0..count {
            let header = *bytes.get(pos).ok_or(SampleDecodeError::Truncated { index })?;
            pos += 1;
            let kind = header >> 5;
            let mut gap = u64::from(header & 0x1f);
            if gap == u64::from(GAP_ESCAPE) {
                gap += get_varint(bytes, &mut pos).ok_or(SampleDecodeError::Truncated { index })?;
            }
            id = if index == 0 { gap } else { id.saturating_add(gap) };
            let slot = usize::try_from(id).ok().filter(|&s| s < self.previous_bits.len());
            let Some(slot) = slot else {
                return Err(SampleDecodeError::UnknownSeries { index, id });
            };
            let before = self.previous_bits[slot];
            let bits = match kind {
                KIND_SAME => before,
                KIND_STALE => STALE_NAN_BITS,
                KIND_INT_DELTA | KIND_CENTI_DELTA | KIND_MILLI_DELTA => {
                    let delta = unzigzag(get_varint(bytes, &mut pos).ok_or(SampleDecodeError::Truncated { index })?);
                    let scale = match kind {
                        KIND_INT_DELTA => 1.0,
                        KIND_CENTI_DELTA => 100.0,
                        _ => 1000.0,
                    };
                    let before_units = (f64::from_bits(before) * scale).round() as i64;
                    let units = before_units.wrapping_add(delta) as f64;
                    if scale == 1.0 { units.to_bits() } else { (units / scale).to_bits() }
                }
                KIND_XOR => {
                    let shape = *bytes.get(pos).ok_or(SampleDecodeError::Truncated { index })?;
                    pos += 1;
                    let leading = usize::from(shape >> 4);
                    let middle = usize::from(shape & 0x0f);
                    if leading + middle > 8 {
                        return Err(SampleDecodeError::BadKind { index, kind });
                    }
                    let chunk = bytes.get(pos..pos + middle).ok_or(SampleDecodeError::Truncated { index })?;
                    pos += middle;
                    let mut be = [0u8; 8];
                    be[leading..leading + middle].copy_from_slice(chunk);
                    before ^ u64::from_be_bytes(be)
                }
                other => return Err(SampleDecodeError::BadKind { index, kind: other }),
            };
            self.previous_bits[slot] = bits;
            out.push((slot as u32, f64::from_bits(bits)));
        }
        if pos != bytes.len() {
            return Err(SampleDecodeError::TrailingBytes { count, extra: bytes.len() - pos });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(batches: &[Vec<(u32, f64)>]) -> Vec<usize> {
        let mut encoder = SampleEncoder::new();
        let mut decoder = SampleDecoder::new();
        let mut sizes = Vec::new();
        for batch in batches {
            for &(id, _) in batch {
                decoder.define(id);
            }
            let mut packed = Vec::new();
            encoder.encode(batch, &mut packed);
            sizes.push(packed.len());
            let mut out = Vec::new();
            decoder.decode(&packed, batch.len() as u32, &mut out).unwrap();
            assert_eq!(out.len(), batch.len());
            for (got, want) in out.iter().zip(batch) {
                assert_eq!(got.0, want.0);
                assert_eq!(got.1.to_bits(), want.1.to_bits(), "value of series {}", want.0);
            }
        }
        sizes
    }

    #[test]
    fn typical_host_cycle_costs_under_two_bytes_per_sample() {
        // Ticks-based CPU counters, integer byte counters, constant gauges.
        let cycle = |n: u32| -> Vec<(u32, f64)> {
            let mut samples = Vec::new();
            for id in 0..40 {
                samples.push((id, f64::from(1_000_000 + id * 37 + n * 997) / 100.0));
            }
            for id in 40..80 {
                samples.push((id, f64::from(123_456_789 + n * (id % 5) * 1000)));
            }
            for id in 80..200 {
                samples.push((id, 16_777_216.0 * f64::from(id)));
            }
            samples
        };
        let sizes = roundtrip(&[cycle(0), cycle(1), cycle(2)]);
        let per_sample = sizes[2] as f64 / 200.0;
        assert!(per_sample < 2.0, "{per_sample} bytes per sample");
    }

    #[test]
    fn special_values_roundtrip() {
        let values = [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::from_bits(STALE_NAN_BITS),
            1e300,
            -1e-300,
            0.1,
            0.3,
        ];
        let batches: Vec<Vec<(u32, f64)>> = values.iter().map(|&v| vec![(0, v), (1, -v), (40, v * 3.0)]).collect();
        roundtrip(&batches);
    }

    #[test]
    fn staleness_marker_costs_one_byte() {
        let sizes = roundtrip(&[vec![(0, 5.0)], vec![(0, f64::from_bits(STALE_NAN_BITS))]]);
        assert_eq!(sizes[1], 1);
    }

    #[test]
    fn undefined_series_is_an_error() {
        let mut encoder = SampleEncoder::new();
        let mut packed = Vec::new();
        encoder.encode(&[(3, 1.0)], &mut packed);
        let mut decoder = SampleDecoder::new();
        decoder.define(0);
        let err = decoder.decode(&packed, 1, &mut Vec::new()).unwrap_err();
        assert_eq!(err, SampleDecodeError::UnknownSeries { index: 0, id: 3 });
    }

    #[test]
    fn huge_count_does_not_allocate_from_the_claim() {
        let mut decoder = SampleDecoder::new();
        decoder.define(0);
        let mut out = Vec::new();
        assert!(decoder.decode(&[0], u32::MAX, &mut out).is_err());
        assert!(out.capacity() < 16);
    }

    proptest! {
        #[test]
        fn any_values_roundtrip(batches in prop::collection::vec(
            prop::collection::btree_map(0u32..300, prop_oneof![
                any::<f64>(),
                (0i64..1_000_000).prop_map(|n| n as f64 / 100.0),
                (0i64..1_000_000).prop_map(|n| n as f64),
                (0i64..1_000_000).prop_map(|n| n as f64 / 1000.0),
                Just(f64::from_bits(STALE_NAN_BITS)),
            ], 0..50), 1..6)) {
            let batches: Vec<Vec<(u32, f64)>> = batches.into_iter().map(|m| m.into_iter().collect()).collect();
            roundtrip(&batches);
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), count in 0u32..100, defined in 0u32..50) {
            let mut decoder = SampleDecoder::new();
            if defined > 0 { decoder.define(defined - 1); }
            let _ = decoder.decode(&bytes, count, &mut Vec::new());
        }
    }
}
