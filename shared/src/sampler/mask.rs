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
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Masks `ids[..len]` in place at `rate`, writing originals into `labels` (IGNORE elsewhere).
///
/// `scratch` is reused between calls to avoid allocation. At least one position is chosen
/// whenever the sequence has a maskable token.
pub fn mask_sequence<R: Rng>(
    rng: &mut R,
    ids: &mut [u32],
    labels: &mut [i32],
    rate: f64,
    cfg: &MaskingConfig,
    vocab: &MaskVocab,
    scratch: &mut Vec<u32>,
) -> MaskCounts {
    let mut counts = MaskCounts::default();
    labels.fill(IGNORE_LABEL);
    // Units that are chosen together: single tokens, or words (a start and its ## continuations).
    // `scratch` holds unit start positions; a unit ends where the next starts or at a special token.
    scratch.clear();
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
            scratch.push(i as u32);
        }
    }
    if counts.maskable == 0 {
        return counts;
    }
    let unit_end = |u: usize, starts: &[u32]| -> usize {
        let start = starts[u] as usize;
        let mut end = start + 1;
        while end < ids.len()
            && cfg.whole_word
            && !vocab.is_special[ids[end] as usize]
            && vocab.is_continuation[ids[end] as usize]
        {
            end += 1;
        }
        end
    };
    let units = scratch.len();
    // Mark chosen units by setting the label; originals are still in `ids`.
    let choose = |u: usize, labels: &mut [i32], starts: &[u32]| -> u64 {
        let (s, e) = (starts[u] as usize, unit_end(u, starts));
        for p in s..e {
            labels[p] = ids[p] as i32;
        }
        (e - s) as u64
    };
    if cfg.exact {
        let target = ((rate * counts.maskable as f64).round() as u64).max(1);
        // Partial Fisher-Yates over units; add units while they fit the target.
        for k in 0..units {
            if counts.chosen >= target {
                break;
            }
            let pick = k + uniform_below(rng, (units - k) as u32) as usize;
            scratch.swap(k, pick);
            let len = (unit_end(k, scratch) - scratch[k] as usize) as u64;
            if counts.chosen > 0 && counts.chosen + len > target {
                continue;
            }
            counts.chosen += choose(k, labels, scratch);
        }
    } else {
        let threshold = (rate * 4_294_967_296.0) as u64;
        for u in 0..units {
            if (rng.next_u32() as u64) < threshold {
                counts.chosen += choose(u, labels, scratch);
            }
        }
        if counts.chosen == 0 {
            let u = uniform_below(rng, units as u32) as usize;
            counts.chosen += choose(u, labels, scratch);
        }
    }
    // Replace chosen positions.
    let random_cut = cfg.mask_fraction + cfg.random_fraction;
    for p in 0..ids.len() {
        if labels[p] == IGNORE_LABEL {
            continue;
        }
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
    counts
}
