//! The step-aware masking sampler: batch = f(seed, step, slot).
//!
//! Global batch *t* holds the sample-stream positions `t·B .. (t+1)·B`. Position *g* is sequence
//! `perm_epoch(g mod N)` of epoch `g div N`. Slot *k* of the batch is masked at the schedule's rate
//! for step *t* with an RNG seeded from `(seed, t, k)`. Nothing depends on threads, prefetching,
//! data-parallel rank or micro-batch split, so ranks' slices of a step union to the single-rank
//! global batch and a resumed run rebuilds exactly the batches it would have seen.

use super::mask::{mask_sequence, MaskCounts, MaskVocab, MaskingConfig};
use super::order::Permutation;
use super::sequence::Sequences;
use crate::error::{Error, Result};
use crate::schedule::MaskSchedule;
use crate::seed::seed_of;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use std::ops::Range;

/// Domain-separation tags for the sampler's seeds.
const ORDER_TAG: u64 = 0x006f_7264_6572;
const MASK_TAG: u64 = 0x6d61_736b;

/// A masked batch, row-major `[rows, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Optimizer step the batch belongs to.
    pub step: u64,
    /// Slots of the global batch held here.
    pub slots: Range<usize>,
    /// Masking rate used (the schedule's rate at `step`).
    pub rate: f64,
    /// Sequence length.
    pub seq_len: usize,
    /// Sequence index (within an epoch) of each row.
    pub sequence_ids: Vec<u64>,
    /// Input ids after masking.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u8>,
    /// Original id at chosen positions, [`IGNORE_LABEL`] elsewhere.
    pub labels: Vec<i32>,
    /// Flat indices (`row·seq_len + col`) of chosen positions, ascending.
    pub masked_positions: Vec<u32>,
    /// Original ids at `masked_positions`.
    pub masked_labels: Vec<u32>,
    /// What masking did.
    pub counts: MaskCounts,
}

impl Batch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.sequence_ids.len()
    }

    /// Realised masking rate: chosen / maskable tokens.
    pub fn realised_rate(&self) -> f64 {
        self.counts.chosen as f64 / self.counts.maskable.max(1) as f64
    }
}

/// Everything that fixes the content of the batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerConfig {
    /// Seed of order and masks.
    pub seed: u64,
    /// Sequences per optimizer step, over all ranks.
    pub global_batch: usize,
    /// Length of the run (the schedule's time axis).
    pub total_steps: u64,
    /// The masking-rate schedule.
    pub schedule: MaskSchedule,
    /// Choice and replacement rules.
    pub masking: MaskingConfig,
}

/// Builds the batch of any step, from shards, on demand.
pub struct MaskingSampler {
    sequences: Sequences,
    vocab: MaskVocab,
    cfg: SamplerConfig,
}

impl MaskingSampler {
    /// Checks the configuration and builds the sampler.
    pub fn new(sequences: Sequences, vocab: MaskVocab, cfg: SamplerConfig) -> Result<Self> {
        cfg.masking.validate()?;
        if cfg.global_batch == 0 || cfg.total_steps == 0 {
            return Err(Error::Config(
                "batch size and step count must be positive".into(),
            ));
        }
        if vocab.is_special.len() < vocab.vocab_size as usize {
            return Err(Error::Config(
                "special-token table shorter than the vocabulary".into(),
            ));
        }
        Ok(MaskingSampler {
            sequences,
            vocab,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The sequence view.
    pub fn sequences(&self) -> &Sequences {
        &self.sequences
    }

    /// The schedule's masking rate at `step`.
    pub fn rate_at(&self, step: u64) -> f64 {
        self.cfg.schedule.rate(step, self.cfg.total_steps)
    }

    /// The sequence in slot `slot` of step `step`'s global batch.
    pub fn sequence_at(&self, step: u64, slot: usize) -> u64 {
        let n = self.sequences.len();
        let g = step * self.cfg.global_batch as u64 + slot as u64;
        self.epoch_permutation(g / n).apply(g % n)
    }

    fn epoch_permutation(&self, epoch: u64) -> Permutation {
        Permutation::new(
            self.sequences.len(),
            seed_of(&[self.cfg.seed, ORDER_TAG, epoch]),
        )
    }

    /// Epoch (0-based) that step `step` starts in.
    pub fn epoch_at(&self, step: u64) -> u64 {
        step * self.cfg.global_batch as u64 / self.sequences.len()
    }

    /// The whole global batch of `step`.
    pub fn global_batch(&self, step: u64) -> Result<Batch> {
        self.batch(step, 0..self.cfg.global_batch)
    }

    /// Slots `slots` of step `step`'s global batch, built in parallel on the current rayon pool.
    /// Fails when a document holds a token id outside the vocabulary (a corrupted shard).
    pub fn batch(&self, step: u64, slots: Range<usize>) -> Result<Batch> {
        assert!(
            slots.end <= self.cfg.global_batch,
            "slots {slots:?} beyond global batch {}",
            self.cfg.global_batch
        );
        let (rows, len) = (slots.len(), self.sequences.seq_len());
        let rate = self.rate_at(step);
        // Zeroed allocations: pages are first touched by the parallel tasks below.
        let mut input_ids = vec![0u32; rows * len];
        let mut labels = vec![0i32; rows * len];
        let mut attention_mask = vec![0u8; rows * len];
        let mut sequence_ids = vec![0u64; rows];
        const ROWS_PER_TASK: usize = 32;
        let epoch_len = self.sequences.len();
        let parts: Vec<(MaskCounts, Vec<u32>)> = input_ids
            .par_chunks_mut(len * ROWS_PER_TASK)
            .zip(labels.par_chunks_mut(len * ROWS_PER_TASK))
            .zip(attention_mask.par_chunks_mut(len * ROWS_PER_TASK))
            .zip(sequence_ids.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .map(|(task, (((ids, labels), attn), seq_ids))| {
                let (mut scratch, mut chosen) = (Vec::with_capacity(len), Vec::with_capacity(len));
                let mut positions = Vec::new();
                let mut counts = MaskCounts::default();
                let first_slot = slots.start + task * ROWS_PER_TASK;
                let mut perm: Option<(u64, Permutation)> = None;
                for (r, seq_id) in seq_ids.iter_mut().enumerate() {
                    let slot = first_slot + r;
                    let g = step * self.cfg.global_batch as u64 + slot as u64;
                    let epoch = g / epoch_len;
                    if perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
                        perm = Some((epoch, self.epoch_permutation(epoch)));
                    }
                    let seq = perm.as_ref().expect("set above").1.apply(g % epoch_len);
                    *seq_id = seq;
                    let row = r * len..(r + 1) * len;
                    let used = self.sequences.fill(seq, &mut ids[row.clone()])?;
                    attn[row.start..row.start + used].fill(1);
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed_of(&[
                        self.cfg.seed,
                        MASK_TAG,
                        step,
                        slot as u64,
                    ]));
                    let c = mask_sequence(
                        &mut rng,
                        &mut ids[row.clone()],
                        &mut labels[row],
                        rate,
                        &self.cfg.masking,
                        &self.vocab,
                        &mut scratch,
                        &mut chosen,
                    );
                    counts.add(&c);
                    let base = ((task * ROWS_PER_TASK + r) * len) as u32;
                    positions.extend(chosen.iter().map(|&p| base + p));
                }
                Ok((counts, positions))
            })
            .collect::<Result<_>>()?;
        let mut counts = MaskCounts::default();
        let mut masked_positions = Vec::with_capacity(parts.iter().map(|(_, p)| p.len()).sum());
        for (c, p) in &parts {
            counts.add(c);
            masked_positions.extend_from_slice(p);
        }
        let masked_labels = masked_positions
            .iter()
            .map(|&p| labels[p as usize] as u32)
            .collect();
        Ok(Batch {
            step,
            slots,
            rate,
            seq_len: len,
            sequence_ids,
            input_ids,
            attention_mask,
            labels,
            masked_positions,
            masked_labels,
            counts,
        })
    }
}

/// How one step's global batch is split over data-parallel ranks and accumulation micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchPlan {
    /// Sequences per optimizer step over all ranks.
    pub global_batch: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
    /// This rank.
    pub rank: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
}

impl BatchPlan {
    /// Checks that the global batch splits evenly.
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(Error::Config(format!(
                "rank {} of world size {}",
                self.rank, self.world_size
            )));
        }
        if self.micro_batch == 0
            || !self
                .global_batch
                .is_multiple_of(self.world_size * self.micro_batch)
        {
            return Err(Error::Config(format!(
                "global batch {} is not a multiple of world size {} x micro-batch {}",
                self.global_batch, self.world_size, self.micro_batch
            )));
        }
        Ok(())
    }

    /// Micro-batches per rank per step (gradient-accumulation steps).
    pub fn accumulation_steps(&self) -> usize {
        self.global_batch / (self.world_size * self.micro_batch)
    }

    /// Global-batch slots of this rank's micro-batch `m`.
    pub fn slots(&self, m: usize) -> Range<usize> {
        let start = self.rank * (self.global_batch / self.world_size) + m * self.micro_batch;
        start..start + self.micro_batch
    }
}
