//! Held-out evaluation: MLM loss and accuracy on [`HeldOutBatches`] (a constant 15% rate with a
//! fixed mask seed), so runs with different schedules are compared on the same masked tokens.
//! With a mixture, each source's held-out sequences are scored apart and pooled.

use crate::dist::Collective;
use anyhow::Result;
use candle_core::{Device, Tensor};
use model::MaskedLm;
use model::{Encoder, MlmInputs};
use serde::{Deserialize, Serialize};
use shared::sampler::{HeldOutBatches, MaskVocab, Sequences};
use shared::tokenizer::LoadedTokenizer;
use std::collections::BTreeMap;

/// Loss and accuracy on a held-out set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Mean MLM loss over the predicted tokens.
    pub loss: f64,
    /// Masked-token accuracy.
    pub accuracy: f64,
}

/// The pooled score and, with named sources, each source's.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Over every held-out sequence of every source.
    pub pooled: Score,
    /// By source name (empty with one unnamed source).
    pub by_source: BTreeMap<String, Score>,
}

/// Evaluates a model on the held-out sequences of each source.
pub struct Evaluator {
    sources: Vec<(String, HeldOutBatches)>,
}

impl Evaluator {
    /// `None` when nothing is held out.
    pub fn new(
        held_out: Vec<(String, Sequences)>,
        tok: &LoadedTokenizer,
        batch: usize,
    ) -> Result<Option<Self>> {
        if held_out.is_empty() {
            return Ok(None);
        }
        let vocab = MaskVocab::from_tokenizer(tok);
        let sources = held_out
            .into_iter()
            .map(|(name, seqs)| Ok((name, HeldOutBatches::new(seqs, vocab.clone(), batch)?)))
            .collect::<Result<_>>()?;
        Ok(Some(Evaluator { sources }))
    }

    /// The held-out batches, in evaluation order (what [`Evaluator::evaluate`] scores).
    pub fn batches(&self) -> impl Iterator<Item = shared::Result<shared::sampler::Batch>> + '_ {
        self.sources.iter().flat_map(|(_, b)| b.iter())
    }

    /// Mean loss (weighted by predicted tokens) and accuracy over every held-out batch, pooled
    /// and per source; the batches are split across `comm`'s ranks (batch i of a source on rank
    /// i mod world size) and the sums combined.
    pub fn evaluate(
        &self,
        model: &Encoder,
        device: &Device,
        comm: &dyn Collective,
    ) -> Result<Evaluation> {
        // Per source: loss × predicted, correct, predicted.
        let mut sums = vec![0f64; 3 * self.sources.len()];
        let (rank, world) = (comm.rank(), comm.world_size());
        for (i, (_, batches)) in self.sources.iter().enumerate() {
            // (loss × predicted, correct) summed on the device, read once per source.
            let mut on_device: Option<Tensor> = None;
            for batch in batches.iter().skip(rank).step_by(world) {
                let batch = batch?;
                let out = model.mlm_loss(&MlmInputs::from_batch(&batch, device)?, None)?;
                let pair = Tensor::stack(&[(out.loss * out.predicted as f64)?, out.correct], 0)?
                    .to_dtype(candle_core::DType::F64)?;
                on_device = Some(match on_device {
                    Some(sum) => (sum + pair)?,
                    None => pair,
                });
                sums[3 * i + 2] += out.predicted as f64;
            }
            if let Some(sum) = on_device {
                let v = model::transfer::read::<f64>(&sum)?;
                sums[3 * i] += v[0];
                sums[3 * i + 1] += v[1];
            }
        }
        comm.sum_f64(&mut sums)?;
        let score = |s: &[f64]| Score {
            loss: s[0] / s[2].max(1.0),
            accuracy: s[1] / s[2].max(1.0),
        };
        let mut pooled = [0f64; 3];
        let mut by_source = BTreeMap::new();
        for ((name, _), s) in self.sources.iter().zip(sums.chunks(3)) {
            for (p, v) in pooled.iter_mut().zip(s) {
                *p += v;
            }
            if !name.is_empty() {
                by_source.insert(name.clone(), score(s));
            }
        }
        Ok(Evaluation {
            pooled: score(&pooled),
            by_source,
        })
    }
}
