//! Compressed sample chunks, Gorilla style: timestamps as delta-of-delta in
//! variable-width buckets, values as the XOR with the previous value (a
//! repeated value costs one bit, a slowly moving one a few). Bit-exact: every
//! value, NaN payloads and the staleness marker included, decodes to the same
//! 64 bits. No I/O here; the head and the blocks own the bytes.
//!
//! Layout of a chunk (the sample count lives beside the bytes, in the head or
//! the block index):
//! - sample 0: timestamp (64 bits), value (64 bits);
//! - every later sample: the delta of the delta to the previous timestamp
//!   (`0` = same spacing, `10`+14 bits, `110`+17 bits, `1110`+20 bits,
//!   `1111`+64 bits), then the value: `0` = same value; `10` = XOR with the
//!   previous value, inside the previous window of meaningful bits; `110` =
//!   XOR with a new window (6 bits of leading zeros, 6 bits of meaningful
//!   length, then the bits); `111` = for integer values (counters of bytes,
//!   packets, requests), the delta of the delta to the previous integer
//!   value (`0` = the same delta, else `1` + 6 bits of length + the zigzag
//!   bits). The encoder picks the shorter of XOR and integer per sample.
//!
//! Timestamps must strictly increase within a chunk; arithmetic wraps, so any
//! i64 sequence round-trips.

use herd_common::varint::{unzigzag, zigzag};

use super::Sample;

/// `value` as an integer when the integer converts back to the same bits
/// (so not -0.0, NaN, infinities or anything beyond 2^53).
fn as_integer(value: f64) -> Option<i64> {
    if !value.is_finite() || value.fract() != 0.0 || value.abs() >= 9_007_199_254_740_992.0 {
        return None;
    }
    let integer = value as i64;
    ((integer as f64).to_bits() == value.to_bits()).then_some(integer)
}

/// Integer state shared by encoder and decoder, updated after every sample.
#[derive(Debug, Clone, Copy, Default)]
struct IntegerState {
    last: Option<i64>,
    delta: i64,
}

impl IntegerState {
    fn update(&mut self, value: f64) {
        let current = as_integer(value);
        self.delta = match (self.last, current) {
            (Some(a), Some(b)) => b.wrapping_sub(a),
            _ => 0,
        };
        self.last = current;
    }
}

/// A chunk is closed after this many samples, so reads decode little beyond
/// what they need and a block cut re-encodes little.
pub const MAX_SAMPLES_PER_CHUNK: u16 = 120;

/// Appends bits, most significant first.
#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Unused low bits of the last byte.
    free: u32,
}

impl BitWriter {
    fn bit(&mut self, bit: bool) {
        self.bits(u64::from(bit), 1);
    }

    fn bits(&mut self, value: u64, mut count: u32) {
        while count > 0 {
            if self.free == 0 {
                // Grow by a quarter, not double: an open chunk lives in the
                // head of every active series, so slack counts per series.
                if self.bytes.len() == self.bytes.capacity() {
                    self.bytes.reserve_exact((self.bytes.len() / 4).max(16));
                }
                self.bytes.push(0);
                self.free = 8;
            }
            let take = count.min(self.free);
            let shift = count - take;
            let part = ((value >> shift) & ((1u64 << take) - 1)) as u8;
            *self.bytes.last_mut().expect("a byte was pushed above") |= part << (self.free - take);
            self.free -= take;
            count -= take;
        }
    }
}

/// Reads bits, most significant first; `None` past the end.
struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        Some(self.bits(1)? == 1)
    }

    fn bits(&mut self, mut count: u32) -> Option<u64> {
        let mut value = 0u64;
        while count > 0 {
            let byte = *self.bytes.get(self.position / 8)?;
            let available = 8 - (self.position % 8) as u32;
            let take = count.min(available);
            let part = (byte >> (available - take)) & (((1u16 << take) - 1) as u8);
            value = (value << take) | u64::from(part);
            self.position += take as usize;
            count -= take;
        }
        Some(value)
    }
}

/// Timestamp buckets: (prefix bits, prefix length, payload bits).
const DOD_BUCKETS: [(u64, u32, u32); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];

fn fits(value: i64, bits: u32) -> bool {
    let half = 1i64 << (bits - 1);
    (-half..half).contains(&value)
}

/// An open chunk that samples are appended to.
#[derive(Debug, Clone, Default)]
pub struct ChunkEncoder {
    writer: BitWriter,
    count: u16,
    min_t: i64,
    last_t: i64,
    last_delta: i64,
    last_bits: u64,
    leading: u32,
    /// Meaningful bits of the previous XOR window; 0 = no window yet.
    significant: u32,
    integer: IntegerState,
}

impl ChunkEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u16 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.count >= MAX_SAMPLES_PER_CHUNK
    }

    pub fn min_t(&self) -> i64 {
        self.min_t
    }

    /// The last sample appended, if any.
    pub fn last(&self) -> Option<Sample> {
        (self.count > 0).then(|| Sample { timestamp_ms: self.last_t, value: f64::from_bits(self.last_bits) })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.writer.bytes
    }

    /// Appends a sample newer than the last one (the caller checks).
    pub fn append(&mut self, sample: Sample) {
        let bits = sample.value.to_bits();
        let w = &mut self.writer;
        if self.count == 0 {
            w.bits(sample.timestamp_ms as u64, 64);
            w.bits(bits, 64);
            self.min_t = sample.timestamp_ms;
        } else {
            let delta = sample.timestamp_ms.wrapping_sub(self.last_t);
            let dod = delta.wrapping_sub(self.last_delta);
            if dod == 0 {
                w.bit(false);
            } else if let Some(&(prefix, prefix_len, payload)) = DOD_BUCKETS.iter().find(|b| fits(dod, b.2)) {
                w.bits(prefix, prefix_len);
                w.bits(dod as u64, payload);
            } else {
                w.bits(0b1111, 4);
                w.bits(dod as u64, 64);
            }
            self.last_delta = delta;
            let xor = bits ^ self.last_bits;
            if xor == 0 {
                w.bit(false);
            } else {
                let leading = xor.leading_zeros().min(63);
                let trailing = xor.trailing_zeros();
                let window_trailing = 64 - self.leading - self.significant;
                let reuse = self.significant > 0 && leading >= self.leading && trailing >= window_trailing;
                let xor_cost = if reuse { 2 + self.significant } else { 3 + 12 + (64 - leading - trailing) };
                // The integer encoding: the delta of the delta, zigzagged.
                let integer = match (self.integer.last, as_integer(sample.value)) {
                    (Some(last), Some(current)) => {
                        let dod = current.wrapping_sub(last).wrapping_sub(self.integer.delta);
                        let zz = zigzag(dod);
                        let length = 64 - zz.leading_zeros();
                        Some((zz, length, if zz == 0 { 4 } else { 4 + 6 + length }))
                    }
                    _ => None,
                };
                match integer {
                    Some((zz, length, cost)) if cost < xor_cost => {
                        w.bits(0b111, 3);
                        if zz == 0 {
                            w.bit(false);
                        } else {
                            w.bit(true);
                            w.bits(u64::from(length - 1), 6);
                            w.bits(zz, length);
                        }
                    }
                    _ if reuse => {
                        w.bits(0b10, 2);
                        w.bits(xor >> window_trailing, self.significant);
                    }
                    _ => {
                        let significant = 64 - leading - trailing;
                        w.bits(0b110, 3);
                        w.bits(u64::from(leading), 6);
                        // 64 meaningful bits are written as 0 (6 bits hold 0..=63).
                        w.bits(u64::from(significant & 63), 6);
                        w.bits(xor >> trailing, significant);
                        self.leading = leading;
                        self.significant = significant;
                    }
                }
            }
        }
        self.last_t = sample.timestamp_ms;
        self.last_bits = bits;
        self.integer.update(sample.value);
        self.count += 1;
    }

    /// Closes the chunk.
    pub fn seal(self) -> Chunk {
        Chunk { bytes: self.writer.bytes.into_boxed_slice(), count: self.count, min_t: self.min_t, max_t: self.last_t }
    }

    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.writer.bytes, self.count)
    }
}

/// A closed chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub bytes: Box<[u8]>,
    pub count: u16,
    pub min_t: i64,
    pub max_t: i64,
}

impl Chunk {
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.bytes, self.count)
    }

    /// Encodes time-ordered samples (strictly increasing timestamps) into chunks.
    pub fn encode_all(samples: &[Sample], out: &mut Vec<Chunk>) {
        for part in samples.chunks(MAX_SAMPLES_PER_CHUNK as usize) {
            let mut encoder = ChunkEncoder::new();
            for &sample in part {
                encoder.append(sample);
            }
            out.push(encoder.seal());
        }
    }
}

/// Decodes a chunk's samples in order; stops early (without panicking) on
/// bytes that do not hold `count` samples.
pub struct ChunkIter<'a> {
    reader: BitReader<'a>,
    remaining: u16,
    first: bool,
    t: i64,
    delta: i64,
    bits: u64,
    leading: u32,
    significant: u32,
    integer: IntegerState,
}

impl<'a> ChunkIter<'a> {
    pub fn new(bytes: &'a [u8], count: u16) -> Self {
        Self {
            reader: BitReader { bytes, position: 0 },
            remaining: count,
            first: true,
            t: 0,
            delta: 0,
            bits: 0,
            leading: 0,
            significant: 0,
            integer: IntegerState::default(),
        }
    }

    fn decode_next(&mut self) -> Option<Sample> {
        let r = &mut self.reader;
        if self.first {
            self.first = false;
            self.t = r.bits(64)? as i64;
            self.bits = r.bits(64)?;
        } else {
            let mut prefix = 0;
            while prefix < 4 && r.bit()? {
                prefix += 1;
            }
            let dod = match prefix {
                0 => 0,
                4 => r.bits(64)? as i64,
                n => {
                    let payload = DOD_BUCKETS[n - 1].2;
                    let raw = r.bits(payload)?;
                    // Sign-extend the payload.
                    ((raw << (64 - payload)) as i64) >> (64 - payload)
                }
            };
            self.delta = self.delta.wrapping_add(dod);
            self.t = self.t.wrapping_add(self.delta);
            if r.bit()? {
                if !r.bit()? {
                    if self.significant == 0 {
                        return None;
                    }
                    let trailing = 64 - self.leading - self.significant;
                    self.bits ^= r.bits(self.significant)? << trailing;
                } else if !r.bit()? {
                    self.leading = r.bits(6)? as u32;
                    let significant = r.bits(6)? as u32;
                    self.significant = if significant == 0 { 64 } else { significant };
                    if self.leading + self.significant > 64 {
                        return None;
                    }
                    let trailing = 64 - self.leading - self.significant;
                    self.bits ^= r.bits(self.significant)? << trailing;
                } else {
                    let last = self.integer.last?;
                    let dod = if r.bit()? {
                        let length = r.bits(6)? as u32 + 1;
                        unzigzag(r.bits(length)?)
                    } else {
                        0
                    };
                    let current = last.wrapping_add(self.integer.delta).wrapping_add(dod);
                    self.bits = (current as f64).to_bits();
                }
            }
        }
        self.integer.update(f64::from_bits(self.bits));
        Some(Sample { timestamp_ms: self.t, value: f64::from_bits(self.bits) })
    }
}

impl Iterator for ChunkIter<'_> {
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

    fn round_trip(samples: &[Sample]) -> Vec<Sample> {
        let mut chunks = Vec::new();
        Chunk::encode_all(samples, &mut chunks);
        chunks.iter().flat_map(|c| c.iter()).collect()
    }

    fn bits(samples: &[Sample]) -> Vec<(i64, u64)> {
        samples.iter().map(|s| (s.timestamp_ms, s.value.to_bits())).collect()
    }

    fn value_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            (0u32..1000).prop_map(f64::from),
            Just(stale_nan()),
            Just(f64::NAN),
            Just(f64::from_bits(0x7ff8_dead_beef_0001)),
            Just(-0.0),
            Just(f64::INFINITY),
        ]
    }

    proptest! {
        #[test]
        fn any_increasing_sequence_round_trips_bit_exactly(
            start in any::<i64>(),
            steps in proptest::collection::vec((prop_oneof![1i64..=3, 14_990i64..15_010, any::<i64>().prop_map(|d| d.unsigned_abs().max(1) as i64)], value_strategy()), 0..400),
        ) {
            let mut t = start;
            let samples: Vec<Sample> = steps.iter().map(|&(step, value)| { t = t.wrapping_add(step); Sample { timestamp_ms: t, value } }).collect();
            prop_assert_eq!(bits(&round_trip(&samples)), bits(&samples));
        }

        #[test]
        fn integer_valued_sequences_round_trip_bit_exactly(
            start in -(1i64 << 53)..(1i64 << 53),
            steps in proptest::collection::vec(prop_oneof![Just(0i64), 0i64..10, -1000i64..1000, any::<i64>().prop_map(|d| d >> 8)], 0..400),
            odd in proptest::collection::vec(prop_oneof![Just(-0.0f64), Just(0.5), Just(9.007_199_254_740_993e15), Just(stale_nan())], 0..5),
        ) {
            let mut value = start;
            let mut samples: Vec<Sample> = steps.iter().enumerate().map(|(k, &step)| {
                value = value.wrapping_add(step);
                Sample { timestamp_ms: k as i64 * 15_000, value: value as f64 }
            }).collect();
            // Non-integers in between switch the integer state off and on.
            for (i, &v) in odd.iter().enumerate() {
                if let Some(s) = samples.get_mut(i * 37 % 400) {
                    s.value = v;
                }
            }
            prop_assert_eq!(bits(&round_trip(&samples)), bits(&samples));
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), count in any::<u16>()) {
            let decoded = ChunkIter::new(&bytes, count).count();
            prop_assert!(decoded <= count as usize);
        }
    }

    #[test]
    fn open_chunk_reads_what_was_appended() {
        let mut encoder = ChunkEncoder::new();
        for i in 0..5 {
            encoder.append(Sample { timestamp_ms: 1000 * i, value: i as f64 });
        }
        assert_eq!(encoder.iter().map(|s| s.value).collect::<Vec<_>>(), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(encoder.last(), Some(Sample { timestamp_ms: 4000, value: 4.0 }));
    }

    #[test]
    fn realistic_series_take_a_few_bytes_per_sample() {
        // A counter growing irregularly and a gauge wandering, scraped every
        // 15 s with a few ms of jitter, like a node's CPU and memory series.
        let mut counter = Vec::new();
        let mut gauge = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut c, mut g) = (1_000_000.0f64, 8.0e9f64);
        for i in 0..12_000i64 {
            let t = 1_700_000_000_000 + i * 15_000 + (next() % 5) as i64;
            c += (next() % 1500) as f64 / 100.0;
            if next() % 4 == 0 {
                g += ((next() % 2001) as f64 - 1000.0) * 4096.0;
            }
            counter.push(Sample { timestamp_ms: t, value: c });
            gauge.push(Sample { timestamp_ms: t, value: g });
        }
        for (name, samples, bound) in [("counter", &counter, 8.0), ("gauge", &gauge, 4.0)] {
            let mut chunks = Vec::new();
            Chunk::encode_all(samples, &mut chunks);
            let bytes: usize = chunks.iter().map(|c| c.bytes.len()).sum();
            let per_sample = bytes as f64 / samples.len() as f64;
            println!("{name}: {per_sample:.2} bytes/sample");
            assert!(per_sample < bound, "{name}: {per_sample} bytes/sample");
            assert_eq!(bits(&round_trip(samples)), bits(samples));
        }
        // A whole-number counter at a steady rate (bytes sent by an idle
        // service) costs a few bits: the integer encoding.
        let steady: Vec<Sample> =
            (0..1200).map(|i| Sample { timestamp_ms: i * 15_000, value: (5_000_000_000 + i * 4_608) as f64 }).collect();
        let mut chunks = Vec::new();
        Chunk::encode_all(&steady, &mut chunks);
        let bytes: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        assert!((bytes as f64) / 1200.0 < 0.8, "{bytes} bytes");
        assert_eq!(bits(&round_trip(&steady)), bits(&steady));
        // A constant value at a steady interval is nearly free.
        let flat: Vec<Sample> = (0..1200).map(|i| Sample { timestamp_ms: i * 15_000, value: 1.0 }).collect();
        let mut chunks = Vec::new();
        Chunk::encode_all(&flat, &mut chunks);
        let bytes: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        assert!((bytes as f64) / 1200.0 < 0.5, "{bytes} bytes");
    }
}
