//! PostgreSQL's hash functions (Bob Jenkins' lookup3, as `src/common/hashfn.c` uses it), in
//! their 64-bit seeded ("extended") form: the one hash partitioning calls.

/// The seed hash partitioning passes to every key's extended hash function.
pub const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

const INITIAL: u32 = 0x9e37_79b9;
/// PostgreSQL adds this to the initial state (lookup3's `initval`).
const INITVAL: u32 = 3_923_095;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The state after the seed went in.
fn seeded(len: u32, seed: u64) -> (u32, u32, u32) {
    let start = INITIAL.wrapping_add(len).wrapping_add(INITVAL);
    let (mut a, mut b, mut c) = (start, start, start);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

/// `hash_bytes_extended`: a byte string, little-endian words (the byte order of every
/// platform Shoal runs the servers on).
pub fn hash_bytes_extended(bytes: &[u8], seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(bytes.len() as u32, seed);
    let word = |chunk: &[u8]| {
        chunk
            .iter()
            .enumerate()
            .fold(0u32, |w, (i, &byte)| w | (u32::from(byte) << (8 * i)))
    };
    let mut rest = bytes;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 0..=11 bytes: a and b take theirs as words do; c's lowest byte is left for the
    // length, which the initial state holds, so its bytes go in one byte higher.
    let n = rest.len();
    a = a.wrapping_add(word(&rest[..n.min(4)]));
    if n > 4 {
        b = b.wrapping_add(word(&rest[4..n.min(8)]));
    }
    if n > 8 {
        c = c.wrapping_add(word(&rest[8..n]) << 8);
    }
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hash_bytes_uint32_extended`: one 32-bit value (what the integer types hash to).
pub fn hash_uint32_extended(value: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(4, seed);
    a = a.wrapping_add(value);
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hash_combine64`: how a row's key hashes fold into one (a single-column key folds into 0).
pub fn hash_combine64(a: u64, b: u64) -> u64 {
    a ^ b
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Figures from PostgreSQL 15: `SELECT hashint4extended(1, 0)`, and so on.
    #[test]
    fn matches_values_postgresql_computed() {
        assert_eq!(hash_uint32_extended(1, 0) as i64, -3670598878359251130);
        assert_eq!(
            hash_uint32_extended(1, PARTITION_SEED) as i64,
            5968994663651403477
        );
        assert_eq!(
            hash_bytes_extended(b"hello", PARTITION_SEED) as i64,
            -2635279551741001039
        );
        assert_eq!(
            hash_bytes_extended(b"", PARTITION_SEED) as i64,
            -5700645584453517373
        );
        assert_eq!(
            hash_bytes_extended(b"abcdefghijklm", PARTITION_SEED) as i64,
            -6785754114725280077
        );
    }

    #[test]
    fn a_four_byte_string_hashes_like_the_word_it_spells() {
        // hash_bytes_uint32 is documented as hash_bytes of the value's four bytes.
        for value in [0u32, 1, 0xdead_beef, u32::MAX] {
            assert_eq!(
                hash_bytes_extended(&value.to_le_bytes(), PARTITION_SEED),
                hash_uint32_extended(value, PARTITION_SEED)
            );
        }
    }
}
