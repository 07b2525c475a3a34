//! LEB128 varints and zigzag, the one implementation every Herd encoding
//! uses (wire samples, the agent buffer, the aggregator WAL). Reads are
//! bounds-checked and never panic.

/// Maps signed to unsigned so small magnitudes stay short.
pub fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Bytes `put` would write for `n`.
pub fn len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

pub fn put(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a varint at `*pos`; `None` if it runs off the end or past 64 bits.
pub fn get(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_lengths() {
        for n in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put(n, &mut out);
            assert_eq!(out.len(), len(n));
            let mut pos = 0;
            assert_eq!(get(&out, &mut pos), Some(n));
            assert_eq!(pos, out.len());
        }
        for n in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(n)), n);
        }
        assert_eq!(get(&[0x80, 0x80], &mut 0), None, "truncated");
        assert_eq!(get(&[0xff; 11], &mut 0), None, "past 64 bits");
    }
}
