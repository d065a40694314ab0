//! Held-out evaluation: MLM loss and accuracy at a constant 15% rate with a fixed mask seed, so
//! runs with different schedules are compared on the same masked tokens (the paper's protocol).

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
    pub fn batches(&self) -> impl Iterator<Item = shared::sampler::Batch> + '_ {
        (0..self.batches).map(|step| self.sampler.global_batch(step))
    }

    /// Mean loss (weighted by predicted tokens) and accuracy over every held-out batch.
    pub fn evaluate(&self, model: &Bert, device: &Device) -> Result<(f64, f64)> {
        let (mut loss_sum, mut correct, mut predicted) = (0f64, 0usize, 0usize);
        for batch in self.batches() {
            let out = model.mlm_loss(&MlmInputs::from_batch(&batch, device)?, &mut None)?;
            loss_sum += out.loss.to_scalar::<f32>()? as f64 * out.predicted as f64;
            correct += out.correct;
            predicted += out.predicted;
        }
        Ok((
            loss_sum / predicted.max(1) as f64,
            correct as f64 / predicted.max(1) as f64,
        ))
    }
}
