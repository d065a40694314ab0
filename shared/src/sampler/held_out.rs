//! The held-out evaluation batches: the held-out sequences masked at a constant 15% with a fixed
//! seed, so runs with different schedules are scored on the same masked tokens (the paper's
//! protocol). The trainer's evaluator and the Python package both take them from here.

use super::{
    Batch, BatchOut, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences,
    WrittenBatch,
};
use crate::error::Result;
use crate::schedule::MaskSchedule;

/// The fixed evaluation masking rate.
pub const EVAL_RATE: f64 = 0.15;
/// The fixed evaluation mask seed.
pub const EVAL_SEED: u64 = 0x00e7_a15e;
/// The fixed seed of the held-out ELBO's draws.
pub const ELBO_SEED: u64 = 0x00e1_b0e1;

/// The held-out sequences in batches of a fixed size, each masked the same way every time.
pub struct HeldOutBatches {
    sampler: MaskingSampler,
    batches: u64,
}

impl HeldOutBatches {
    /// Batches of `batch` sequences (at most all of them; a last partial batch is left out).
    pub fn new(sequences: Sequences, vocab: MaskVocab, batch: usize) -> Result<Self> {
        let batch = batch.min(sequences.len() as usize).max(1);
        let batches = sequences.len() / batch as u64;
        let cfg = SamplerConfig {
            seed: EVAL_SEED,
            global_batch: batch,
            total_steps: batches.max(1),
            schedule: MaskSchedule::constant(EVAL_RATE),
            masking: MaskingConfig::default(),
            order: Default::default(),
            rate_dist: Default::default(),
            rate_per_document: false,
        };
        Ok(HeldOutBatches {
            sampler: MaskingSampler::new(sequences, vocab, cfg)?,
            batches,
        })
    }

    /// The held-out ELBO's draws: `draws` passes over the held-out sequences in batches of
    /// `batch`, each row masked all-[MASK] at exactly m = round(t·n) of its n maskable tokens (at
    /// least one), t stratified over each batch (`stratified:0:1`), with a fixed seed: every
    /// run's ELBO is scored on the same (t, mask) draws.
    pub fn elbo_draws(
        sequences: Sequences,
        vocab: MaskVocab,
        batch: usize,
        draws: usize,
    ) -> Result<Self> {
        let batch = batch.min(sequences.len() as usize).max(1);
        let batches = sequences.len() / batch as u64 * draws as u64;
        let cfg = SamplerConfig {
            seed: ELBO_SEED,
            global_batch: batch,
            total_steps: batches.max(1),
            schedule: MaskSchedule::constant(EVAL_RATE),
            masking: MaskingConfig {
                mask_fraction: 1.0,
                random_fraction: 0.0,
                exact: true,
                whole_word: false,
            },
            order: Default::default(),
            rate_dist: "stratified:0:1".parse().expect("a valid distribution"),
            rate_per_document: false,
        };
        Ok(HeldOutBatches {
            sampler: MaskingSampler::new(sequences, vocab, cfg)?,
            batches,
        })
    }

    /// Number of batches.
    pub fn len(&self) -> u64 {
        self.batches
    }

    /// Whether there is no batch.
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }

    /// Batch `i`, `0..len()`.
    pub fn batch(&self, i: u64) -> Result<Batch> {
        self.sampler.global_batch(i)
    }

    /// Sequences per batch.
    pub fn rows(&self) -> usize {
        self.sampler.config().global_batch
    }

    /// Sequence length.
    pub fn seq_len(&self) -> usize {
        self.sampler.sequences().seq_len()
    }

    /// Batch `i` written into caller-owned arrays ([`MaskingSampler::batch_into`]).
    pub fn batch_into(&self, i: u64, out: BatchOut<'_>) -> Result<WrittenBatch> {
        self.sampler.batch_into(i, 0..self.rows(), out)
    }

    /// Every batch, in evaluation order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Batch>> + '_ {
        (0..self.batches).map(|i| self.batch(i))
    }
}
