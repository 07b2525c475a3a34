//! The chunk encoding of blocks: byte-aligned columns that zstd (in
//! `block.rs`) compresses well, where the head's Gorilla chunks
//! (`chunk.rs`) pack bits that a byte compressor cannot see through. Bit-exact
//! like the head's chunks; no I/O here.
//!
//! Layout of a column chunk of `count` samples (the count lives in the block
//! index):
//! - a mode byte: `0` integers, `1..=9` decimals with that many digits after
//!   the point (`value = m / 10^d`, every value converting back to the same
//!   bits), `0x40` raw bits;
//! - a varint: the byte length of the timestamp column;
//! - timestamps: the first as a zigzag varint, then the first delta, then
//!   the delta of the delta, zigzag varints;
//! - values: in integer and decimal modes the first integer, its delta, then
//!   deltas of deltas, zigzag varints (a steady counter is a run of zero
//!   bytes); in raw mode per value a control byte then the bytes of the XOR
//!   with the previous value's bits that are not zero (`0x80` = the same
//!   value, else leading zero bytes × 8 + trailing zero bytes).
//!
//! Columns of series scraped together are byte-for-byte alike (the same
//! timestamps, the same steps), which is what zstd finds across series.

use herd_common::varint::{self, put as put_varint, unzigzag, zigzag};

use super::Sample;

/// A block chunk holds at most this many samples.
pub const MAX_SAMPLES_PER_COLUMN_CHUNK: usize = 240;

const MODE_INTEGER: u8 = 0;
const MAX_DECIMALS: u8 = 9;
const MODE_RAW: u8 = 0x40;
const RAW_SAME: u8 = 0x80;
const POW10: [f64; MAX_DECIMALS as usize + 1] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Integers beyond this do not all convert back exactly.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// `value * 10^digits` as an integer that converts back to the same bits.
fn scaled(value: f64, digits: u8) -> Option<i64> {
    let scale = POW10[usize::from(digits)];
    let product = if digits == 0 { value } else { (value * scale).round() };
    if !product.is_finite() || product.abs() >= MAX_EXACT_INTEGER {
        return None;
    }
    let integer = product as i64;
    let back = if digits == 0 { integer as f64 } else { integer as f64 / scale };
    (back.to_bits() == value.to_bits()).then_some(integer)
}

/// The fewest digits after the point that hold every value exactly, if any.
fn common_digits(samples: &[Sample]) -> Option<u8> {
    let mut digits = 0u8;
    for sample in samples {
        while scaled(sample.value, digits).is_none() {
            digits += 1;
            if digits > MAX_DECIMALS {
                return None;
            }
        }
    }
    Some(digits)
}

/// Appends the column chunk of `samples` (time-ordered, at most
/// [`MAX_SAMPLES_PER_COLUMN_CHUNK`]) to `out`.
pub fn encode(samples: &[Sample], out: &mut Vec<u8>) {
    let digits = common_digits(samples);
    out.push(digits.unwrap_or(MODE_RAW));
    let mut timestamps = Vec::with_capacity(samples.len() + 8);
    let (mut last_t, mut last_delta) = (0i64, 0i64);
    for (i, sample) in samples.iter().enumerate() {
        let t = sample.timestamp_ms;
        match i {
            0 => put_varint(zigzag(t), &mut timestamps),
            _ => {
                let delta = t.wrapping_sub(last_t);
                put_varint(zigzag(delta.wrapping_sub(last_delta)), &mut timestamps);
                last_delta = delta;
            }
        }
        last_t = t;
    }
    put_varint(timestamps.len() as u64, out);
    out.extend_from_slice(&timestamps);
    match digits {
        Some(digits) => {
            let (mut last, mut last_delta) = (0i64, 0i64);
            for (i, sample) in samples.iter().enumerate() {
                let value = scaled(sample.value, digits).expect("checked by common_digits");
                let delta = value.wrapping_sub(last);
                put_varint(zigzag(if i == 0 { value } else { delta.wrapping_sub(last_delta) }), out);
                if i > 0 {
                    last_delta = delta;
                }
                last = value;
            }
        }
        None => {
            let mut last = 0u64;
            for sample in samples {
                let bits = sample.value.to_bits();
                let xor = bits ^ last;
                if xor == 0 {
                    out.push(RAW_SAME);
                } else {
                    let leading = xor.leading_zeros() / 8;
                    let trailing = xor.trailing_zeros() / 8;
                    out.push((leading << 3 | trailing) as u8);
                    out.extend_from_slice(&xor.to_be_bytes()[leading as usize..(8 - trailing) as usize]);
                }
                last = bits;
            }
        }
    }
}

/// Decodes a column chunk's samples in order; stops early (without
/// panicking) on bytes that do not hold `count` samples.
pub struct ColumnIter<'a> {
    timestamps: &'a [u8],
    t_pos: usize,
    values: &'a [u8],
    v_pos: usize,
    mode: u8,
    remaining: u16,
    first: bool,
    t: i64,
    t_delta: i64,
    integer: i64,
    integer_delta: i64,
    bits: u64,
}

impl<'a> ColumnIter<'a> {
    pub fn new(bytes: &'a [u8], count: u16) -> Self {
        let mut pos = 1;
        let mode = bytes.first().copied().unwrap_or(u8::MAX);
        let valid_mode = mode <= MAX_DECIMALS || mode == MODE_RAW;
        let split = varint::get(bytes, &mut pos)
            .and_then(|len| usize::try_from(len).ok())
            .and_then(|len| Some((pos, pos.checked_add(len)?)))
            .filter(|&(_, end)| end <= bytes.len() && valid_mode);
        let (timestamps, values, remaining) = match split {
            Some((start, end)) => (&bytes[start..end], &bytes[end..], count),
            None => (&[][..], &[][..], 0),
        };
        Self {
            timestamps,
            t_pos: 0,
            values,
            v_pos: 0,
            mode,
            remaining,
            first: true,
            t: 0,
            t_delta: 0,
            integer: 0,
            integer_delta: 0,
            bits: 0,
        }
    }

    fn decode_next(&mut self) -> Option<Sample> {
        let t_code = unzigzag(varint::get(self.timestamps, &mut self.t_pos)?);
        let first = std::mem::take(&mut self.first);
        if first {
            self.t = t_code;
        } else {
            self.t_delta = self.t_delta.wrapping_add(t_code);
            self.t = self.t.wrapping_add(self.t_delta);
        }
        let value = if self.mode == MODE_RAW {
            let control = *self.values.get(self.v_pos)?;
            self.v_pos += 1;
            if control != RAW_SAME {
                let leading = usize::from(control >> 3);
                let trailing = usize::from(control & 7);
                let len = 8usize.checked_sub(leading + trailing).filter(|&l| l > 0)?;
                let part = self.values.get(self.v_pos..self.v_pos + len)?;
                self.v_pos += len;
                let mut xor = [0u8; 8];
                xor[leading..leading + len].copy_from_slice(part);
                self.bits ^= u64::from_be_bytes(xor);
            }
            f64::from_bits(self.bits)
        } else {
            let code = unzigzag(varint::get(self.values, &mut self.v_pos)?);
            if first {
                self.integer = code;
            } else {
                self.integer_delta = self.integer_delta.wrapping_add(code);
                self.integer = self.integer.wrapping_add(self.integer_delta);
            }
            if self.mode == MODE_INTEGER {
                self.integer as f64
            } else {
                self.integer as f64 / POW10[usize::from(self.mode)]
            }
        };
        Some(Sample { timestamp_ms: self.t, value })
    }
}

impl Iterator for ColumnIter<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let sample = self.decode_next();
        if sample.is_none() {
            self.remaining = 0;
        }
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_common::metric::stale_nan;
    use proptest::prelude::*;

    fn check(samples: &[Sample], max_bytes_per_sample: f64) {
        let mut bytes = Vec::new();
        encode(samples, &mut bytes);
        let decoded: Vec<(i64, u64)> =
            ColumnIter::new(&bytes, samples.len() as u16).map(|s| (s.timestamp_ms, s.value.to_bits())).collect();
        let expected: Vec<(i64, u64)> = samples.iter().map(|s| (s.timestamp_ms, s.value.to_bits())).collect();
        assert_eq!(decoded, expected);
        let per_sample = bytes.len() as f64 / samples.len().max(1) as f64;
        assert!(per_sample <= max_bytes_per_sample, "{per_sample} bytes per sample");
    }

    fn value_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            (0u32..1000).prop_map(f64::from),
            (-100_000i32..100_000, 0i32..12).prop_map(|(m, d)| f64::from(m) / 10f64.powi(d)),
            Just(stale_nan()),
            Just(-0.0),
            Just(f64::INFINITY),
            Just(9.007_199_254_740_993e15),
        ]
    }

    proptest! {
        #[test]
        fn any_sequence_round_trips_bit_exactly(
            start in any::<i64>(),
            steps in proptest::collection::vec((prop_oneof![1i64..=3, 14_990i64..15_010, any::<i64>()], value_strategy()), 0..240),
        ) {
            let mut t = start;
            let samples: Vec<Sample> = steps.iter().map(|&(step, value)| { t = t.wrapping_add(step); Sample { timestamp_ms: t, value } }).collect();
            // Worst case: 10 bytes of timestamp varint and 9 of raw value, plus the header.
            check(&samples, 32.0);
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), count in any::<u16>()) {
            prop_assert!(ColumnIter::new(&bytes, count).count() <= count as usize);
        }
    }

    #[test]
    fn steady_series_are_a_byte_or_two_per_sample() {
        let t = |k: i64| 1_764_000_000_000 + k * 15_000 + k % 3;
        let counter: Vec<Sample> = (0..240).map(|k| Sample { timestamp_ms: t(k), value: (k * 4096) as f64 }).collect();
        check(&counter, 2.1);
        let quarters: Vec<Sample> =
            (0..240).map(|k| Sample { timestamp_ms: t(k), value: ((k / 10) % 7) as f64 * 0.25 }).collect();
        check(&quarters, 2.1);
        let mut with_stale = quarters.clone();
        with_stale[200].value = stale_nan();
        check(&with_stale, 4.0);
        let random: Vec<Sample> =
            (0..240).map(|k| Sample { timestamp_ms: t(k), value: (k as f64 * 0.7311).sin() * 1e6 }).collect();
        check(&random, 10.0);
    }
}
