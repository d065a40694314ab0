//! Seed derivation: every random stream in maskrate (data order, masks, initial weights,
//! dropout, fine-tuning order) is keyed by a tuple of words hashed here, never by a counter.

/// Mixes 64 bits (SplitMix64's finalizer): the building block of every seed.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash's 53 high bits as a number in [0, 1): a uniform draw keyed like every stream here.
#[inline]
pub fn unit_of(hash: u64) -> f64 {
    (hash >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Hashes a tuple of words (the run seed, a domain tag, then the stream's coordinates) into one seed.
#[inline]
pub fn seed_of(words: &[u64]) -> u64 {
    words.iter().fold(0x6a09_e667_f3bc_c908, |acc, &w| {
        mix64(acc ^ w.wrapping_add(0x9e37_79b9_7f4a_7c15))
    })
}
