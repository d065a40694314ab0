//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
//! Random123 library's `philox4x32_10`): a counter-based generator. Any element's bits are a pure
//! function of (key, counter), so a CPU loop and a GPU kernel produce the same stream without
//! sharing state, a resumed run draws the same values, and any slice of a stream can be drawn on
//! its own. The foundation of device-side dropout masks: keyed by `seed_of(&[seed, step,
//! micro-batch, layer, site])`, indexed by element.

/// Random123's known-answer vectors for philox4x32_10 (its `kat_vectors` file): counter, key,
/// expected output.
pub const KNOWN_ANSWERS: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    (
        [0; 4],
        [0; 2],
        [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
    ),
    (
        [u32::MAX; 4],
        [u32::MAX; 2],
        [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
    ),
    (
        [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
        [0xa409_3822, 0x299f_31d0],
        [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
    ),
];

/// Multipliers of the two products per round.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
/// Weyl increments of the key between rounds.
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox round: two 32x32 -> 64-bit products, their halves crossed and keyed.
#[inline]
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let p0 = u64::from(M0) * u64::from(c[0]);
    let p1 = u64::from(M1) * u64::from(c[2]);
    [
        (p1 >> 32) as u32 ^ c[1] ^ k[0],
        p1 as u32,
        (p0 >> 32) as u32 ^ c[3] ^ k[1],
        p0 as u32,
    ]
}

/// Philox4x32-10 of `counter` under `key`: four 32-bit words.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for r in 0..10 {
        if r > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        c = round(c, k);
    }
    c
}

/// An indexed stream of 32-bit words under one 64-bit key: word `i` is word `i mod 4` of the
/// block at counter `(i div 4)` (the low and high 32 bits of the block index in the counter's
/// first two words, the last two zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhiloxStream {
    key: [u32; 2],
}

impl PhiloxStream {
    /// The stream keyed by `key` (e.g. a `seed_of` value).
    pub fn new(key: u64) -> Self {
        PhiloxStream {
            key: [key as u32, (key >> 32) as u32],
        }
    }

    /// The four words of block `block` (words `4·block .. 4·block + 4`).
    #[inline]
    pub fn block(&self, block: u64) -> [u32; 4] {
        philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], self.key)
    }

    /// Word `i` of the stream.
    #[inline]
    pub fn word(&self, i: u64) -> u32 {
        self.block(i / 4)[(i % 4) as usize]
    }

    /// Inverted-dropout factors of elements `first .. first + out.len()`: 0 where word `i` falls
    /// below `p · 2^32` (dropped with probability `p`), else `1 / (1 - p)`. The same values
    /// whatever slice is asked for, so chunks may be filled in parallel.
    pub fn dropout_factors(&self, p: f64, first: u64, out: &mut [f32]) {
        let threshold = (p * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        let keep = (1.0 / (1.0 - p)) as f32;
        // One block per four elements: the first block may start mid-way (at `first mod 4`).
        let mut i = first;
        let mut rest = &mut out[..];
        while !rest.is_empty() {
            let lane = (i % 4) as usize;
            let take = (4 - lane).min(rest.len());
            let words = self.block(i / 4);
            let (head, tail) = rest.split_at_mut(take);
            for (o, &w) in head.iter_mut().zip(&words[lane..lane + take]) {
                *o = if w < threshold { 0.0 } else { keep };
            }
            i += take as u64;
            rest = tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors.
    #[test]
    fn known_answers() {
        for (counter, key, want) in KNOWN_ANSWERS {
            assert_eq!(philox4x32_10(counter, key), want, "{counter:x?} {key:x?}");
        }
    }

    /// Words are addressed by index: block `b`'s words are words `4b..4b+4`, the key's halves
    /// are the 64-bit key's, and a slice of factors equals the same slice of the whole.
    #[test]
    fn words_are_addressed_by_index_and_slices_agree() {
        let s = PhiloxStream::new(0x299f_31d0_a409_3822);
        assert_eq!(s.key, [0xa409_3822, 0x299f_31d0]);
        let block = s.block(5);
        assert_eq!((20..24).map(|i| s.word(i)).collect::<Vec<_>>(), block);
        let big = PhiloxStream::new(7).block(1 << 33);
        assert_eq!(big, philox4x32_10([0, 2, 0, 0], [7, 0]));
        let mut whole = vec![0f32; 1000];
        s.dropout_factors(0.1, 0, &mut whole);
        let mut part = vec![0f32; 337];
        s.dropout_factors(0.1, 401, &mut part);
        assert_eq!(part, whole[401..738]);
    }

    /// The dropped share of 10^6 elements is within 5 standard deviations of p, kept values are
    /// 1/(1-p), another key gives another mask, and p = 0 drops nothing.
    #[test]
    fn dropout_drops_at_rate_p() {
        let (n, p) = (1_000_000usize, 0.1);
        let mut f = vec![0f32; n];
        PhiloxStream::new(42).dropout_factors(p, 0, &mut f);
        let dropped = f.iter().filter(|&&x| x == 0.0).count() as f64;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!((dropped - n as f64 * p).abs() < 5.0 * sd, "{dropped}");
        assert!(f.iter().all(|&x| x == 0.0 || x == (1.0 / 0.9) as f32));
        let mut g = vec![0f32; n];
        PhiloxStream::new(43).dropout_factors(p, 0, &mut g);
        assert_ne!(f, g);
        let mut none = vec![0f32; 100];
        PhiloxStream::new(42).dropout_factors(0.0, 0, &mut none);
        assert!(none.iter().all(|&x| x == 1.0));
    }
}
