//! Held-out evaluation: MLM loss and accuracy at a constant 15% rate with a fixed mask seed, so
//! runs with different schedules are compared on the same masked tokens (the paper's protocol).

use crate::dist::Collective;
use anyhow::Result;
use candle_core::Device;
use model::{Bert, MlmInputs};
use shared::sampler::{MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences};
use shared::schedule::MaskSchedule;
use shared::tokenizer::LoadedTokenizer;

/// The fixed evaluation masking rate.
pub const EVAL_RATE: f64 = 0.15;
/// The fixed evaluation mask seed.
pub const EVAL_SEED: u64 = 0x00e7_a15e;

/// Evaluates a model on the held-out sequences.
pub struct Evaluator {
    sampler: MaskingSampler,
    batches: u64,
}

impl Evaluator {
    /// `None` when nothing is held out.
    pub fn new(
        held_out: Option<Sequences>,
        tok: &LoadedTokenizer,
        batch: usize,
    ) -> Result<Option<Self>> {
        let Some(seqs) = held_out else {
            return Ok(None);
        };
        let batch = batch.min(seqs.len() as usize).max(1);
        let batches = seqs.len() / batch as u64;
        let cfg = SamplerConfig {
            seed: EVAL_SEED,
            global_batch: batch,
            total_steps: batches.max(1),
            schedule: MaskSchedule::constant(EVAL_RATE),
            masking: MaskingConfig::default(),
        };
        Ok(Some(Evaluator {
            sampler: MaskingSampler::new(seqs, MaskVocab::from_tokenizer(tok), cfg)?,
            batches,
        }))
    }

    /// The held-out batches, in evaluation order (what [`Evaluator::evaluate`] scores).
    pub fn batches(&self) -> impl Iterator<Item = shared::Result<shared::sampler::Batch>> + '_ {
        (0..self.batches).map(|step| self.sampler.global_batch(step))
    }

    /// Mean loss (weighted by predicted tokens) and accuracy over every held-out batch; the
    /// batches are split across `comm`'s ranks (batch i on rank i mod world size) and the sums
    /// combined.
    pub fn evaluate(
        &self,
        model: &Bert,
        device: &Device,
        comm: &dyn Collective,
    ) -> Result<(f64, f64)> {
        let mut sums = [0f64; 3]; // loss × predicted, correct, predicted
        let (rank, world) = (comm.rank(), comm.world_size());
        for batch in self.batches().skip(rank).step_by(world) {
            let batch = batch?;
            let out = model.mlm_loss(&MlmInputs::from_batch(&batch, device)?, &mut None)?;
            sums[0] += out.loss.to_scalar::<f32>()? as f64 * out.predicted as f64;
            sums[1] += out.correct as f64;
            sums[2] += out.predicted as f64;
        }
        comm.sum_f64(&mut sums)?;
        let [loss_sum, correct, predicted] = sums;
        Ok((loss_sum / predicted.max(1.0), correct / predicted.max(1.0)))
    }
}
