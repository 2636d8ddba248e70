//! Helpers the unit tests of several folders share (compiled for tests
//! only): whatever two folders' tests would otherwise each write again.
//!
//! Uses: nothing of the crate. Must not be used outside `#[cfg(test)]` code.

/// `len` deterministic, irregular bytes (xorshift64 from `seed`, mixed so
/// that small seeds differ at once): no run of them repeats at a buffer- or
/// pipe-sized period, and none looks like a framed record by accident, so a
/// misplaced or corrupt chunk changes what a test compares.
pub(crate) fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
