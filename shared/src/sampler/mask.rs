//! BERT's masking of one sequence: choose positions at a rate, then replace with [MASK], a random
//! token or the original (80/10/10 by default).

use crate::error::{Error, Result};
use rand_core::Rng;
use serde::{Deserialize, Serialize};

/// The label value at positions that are not predicted (PyTorch's `ignore_index`).
pub const IGNORE_LABEL: i32 = -100;

/// How masked positions are chosen and replaced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskingConfig {
    /// Share of chosen positions replaced by [MASK].
    pub mask_fraction: f64,
    /// Share replaced by a random non-special token; the rest keep their token.
    pub random_fraction: f64,
    /// Mask exactly round(rate·n) tokens per sequence instead of independent Bernoulli draws.
    pub exact: bool,
    /// Mask whole words: a `##` continuation piece is chosen together with the piece it continues.
    pub whole_word: bool,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            mask_fraction: 0.8,
            random_fraction: 0.1,
            exact: false,
            whole_word: false,
        }
    }
}

impl MaskingConfig {
    /// Checks that the fractions are probabilities that sum to at most 1.
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f64| (0.0..=1.0).contains(&v);
        if !ok(self.mask_fraction)
            || !ok(self.random_fraction)
            || self.mask_fraction + self.random_fraction > 1.0 + 1e-9
        {
            return Err(Error::Config(format!(
                "--mask-token-fraction {} and --random-token-fraction {} must be in [0, 1] and sum to at most 1 (the rest keep the original token)",
                self.mask_fraction, self.random_fraction
            )));
        }
        Ok(())
    }

    /// Share of chosen positions that keep the original token.
    pub fn keep_fraction(&self) -> f64 {
        (1.0 - self.mask_fraction - self.random_fraction).max(0.0)
    }
}

/// Token facts the masker needs, derived once from the tokenizer.
#[derive(Debug, Clone)]
pub struct MaskVocab {
    /// Id written at masked positions.
    pub mask_id: u32,
    /// Vocabulary size; random replacements are drawn from `0..vocab_size`.
    pub vocab_size: u32,
    /// `is_special[id]`: never masked, never drawn as a replacement.
    pub is_special: Vec<bool>,
    /// `is_continuation[id]`: a WordPiece `##` piece (used by whole-word masking).
    pub is_continuation: Vec<bool>,
}

/// Counts of what masking did, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskCounts {
    /// Positions that could be masked (non-special tokens).
    pub maskable: u64,
    /// Positions chosen for prediction.
    pub chosen: u64,
    /// Chosen positions replaced by [MASK].
    pub as_mask: u64,
    /// Chosen positions replaced by a random token.
    pub as_random: u64,
    /// Chosen positions left unchanged.
    pub as_kept: u64,
}

impl MaskCounts {
    /// Adds another count.
    pub fn add(&mut self, o: &MaskCounts) {
        self.maskable += o.maskable;
        self.chosen += o.chosen;
        self.as_mask += o.as_mask;
        self.as_random += o.as_random;
        self.as_kept += o.as_kept;
    }
}

#[inline]
fn uniform_below<R: Rng>(rng: &mut R, n: u32) -> u32 {
    ((rng.next_u32() as u64 * n as u64) >> 32) as u32
}

#[inline]
fn unit<R: Rng>(rng: &mut R) -> f64 {
    crate::seed::unit_of(rng.next_u64())
}

/// Masks `ids` in place at `rate`, writing originals into `labels` (IGNORE elsewhere) and the
/// chosen positions, ascending, into `chosen`.
///
/// `scratch` is reused between calls to avoid allocation. At least one position is chosen
/// whenever the sequence has a maskable token.
#[allow(clippy::too_many_arguments)]
pub fn mask_sequence<R: Rng + Clone>(
    rng: &mut R,
    ids: &mut [u32],
    labels: &mut [i32],
    rate: f64,
    cfg: &MaskingConfig,
    vocab: &MaskVocab,
    scratch: &mut Vec<u32>,
    chosen: &mut Vec<u32>,
) -> MaskCounts {
    let mut counts = MaskCounts::default();
    labels.fill(IGNORE_LABEL);
    chosen.clear();
    if !cfg.exact && !cfg.whole_word {
        choose_bernoulli(rng, ids, rate, vocab, &mut counts, chosen);
    } else {
        choose_units(rng, ids, rate, cfg, vocab, scratch, &mut counts, chosen);
    }
    if counts.maskable == 0 {
        return counts;
    }
    counts.chosen = chosen.len() as u64;
    replace(rng, ids, labels, cfg, vocab, &mut counts, chosen);
    counts
}

/// Independent draws per token (the common case), in one pass.
fn choose_bernoulli<R: Rng + Clone>(
    rng: &mut R,
    ids: &[u32],
    rate: f64,
    vocab: &MaskVocab,
    counts: &mut MaskCounts,
    chosen: &mut Vec<u32>,
) {
    let threshold = (rate * 4_294_967_296.0) as u64;
    // The loop keeps the generator, the output and the table in locals (registers): through
    // `&mut` the compiler stores the state back on every draw.
    let mut local = rng.clone();
    let special = vocab.is_special.as_slice();
    // Branch-free selection: every maskable position is written at the end of `chosen` and kept
    // (the length advanced) only when drawn; at 15-30% a branch on the draw mispredicts often.
    chosen.resize(ids.len(), 0);
    let out = chosen.as_mut_slice();
    let (mut n, mut maskable) = (0usize, 0u64);
    // Each 64-bit draw serves two tokens: its low half, then its high half.
    let (mut bits, mut high_next) = (0u64, false);
    for (i, &id) in ids.iter().enumerate() {
        if special[id as usize] {
            continue;
        }
        maskable += 1;
        let draw = if high_next {
            bits >> 32
        } else {
            bits = local.next_u64();
            bits & 0xffff_ffff
        };
        high_next = !high_next;
        out[n] = i as u32;
        n += (draw < threshold) as usize;
    }
    *rng = local;
    chosen.truncate(n);
    counts.maskable += maskable;
    if chosen.is_empty() && counts.maskable > 0 {
        // At least one prediction per sequence: the k-th maskable token, k uniform.
        let k = uniform_below(rng, counts.maskable as u32);
        let p = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| !vocab.is_special[id as usize])
            .nth(k as usize)
            .map(|(i, _)| i)
            .expect("k < maskable");
        chosen.push(p as u32);
    }
}

/// Exact counts and/or whole words: choose units (tokens, or words with their ## pieces).
/// Kept whole: grouping into units, counting and drawing are one pass over the sequence.
#[allow(clippy::too_many_arguments)]
fn choose_units<R: Rng>(
    rng: &mut R,
    ids: &[u32],
    rate: f64,
    cfg: &MaskingConfig,
    vocab: &MaskVocab,
    starts: &mut Vec<u32>,
    counts: &mut MaskCounts,
    chosen: &mut Vec<u32>,
) {
    starts.clear();
    for (i, &id) in ids.iter().enumerate() {
        if vocab.is_special[id as usize] {
            continue;
        }
        counts.maskable += 1;
        let continues = cfg.whole_word
            && vocab.is_continuation[id as usize]
            && i > 0
            && !vocab.is_special[ids[i - 1] as usize];
        if !continues {
            starts.push(i as u32);
        }
    }
    if counts.maskable == 0 {
        return;
    }
    let unit_end = |start: usize| -> usize {
        let mut end = start + 1;
        while cfg.whole_word
            && end < ids.len()
            && !vocab.is_special[ids[end] as usize]
            && vocab.is_continuation[ids[end] as usize]
        {
            end += 1;
        }
        end
    };
    let units = starts.len();
    if cfg.exact {
        let target = ((rate * counts.maskable as f64).round() as usize).max(1);
        // Partial Fisher-Yates over units; add units while they fit the target.
        for k in 0..units {
            if chosen.len() >= target {
                break;
            }
            let pick = k + uniform_below(rng, (units - k) as u32) as usize;
            starts.swap(k, pick);
            let (s, e) = (starts[k] as usize, unit_end(starts[k] as usize));
            if !chosen.is_empty() && chosen.len() + (e - s) > target {
                continue;
            }
            chosen.extend(s as u32..e as u32);
        }
        chosen.sort_unstable();
    } else {
        let threshold = (rate * 4_294_967_296.0) as u64;
        for &start in starts.iter() {
            if (rng.next_u32() as u64) < threshold {
                let s = start as usize;
                chosen.extend(s as u32..unit_end(s) as u32);
            }
        }
        if chosen.is_empty() {
            let s = starts[uniform_below(rng, units as u32) as usize] as usize;
            chosen.extend(s as u32..unit_end(s) as u32);
        }
    }
}

/// Applies the mask/random/keep split to the chosen positions and records labels.
fn replace<R: Rng>(
    rng: &mut R,
    ids: &mut [u32],
    labels: &mut [i32],
    cfg: &MaskingConfig,
    vocab: &MaskVocab,
    counts: &mut MaskCounts,
    chosen: &[u32],
) {
    let random_cut = cfg.mask_fraction + cfg.random_fraction;
    for &p in chosen {
        let p = p as usize;
        labels[p] = ids[p] as i32;
        let u = unit(rng);
        if u < cfg.mask_fraction {
            ids[p] = vocab.mask_id;
            counts.as_mask += 1;
        } else if u < random_cut {
            ids[p] = loop {
                let candidate = uniform_below(rng, vocab.vocab_size);
                if !vocab.is_special[candidate as usize] {
                    break candidate;
                }
            };
            counts.as_random += 1;
        } else {
            counts.as_kept += 1;
        }
    }
}
