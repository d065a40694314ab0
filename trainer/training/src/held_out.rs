//! Held-out evaluation: MLM loss and accuracy on [`HeldOutBatches`] (a constant 15% rate with a
//! fixed mask seed), so runs with different schedules are compared on the same masked tokens.
//! With a mixture, each source's held-out sequences are scored apart and pooled. With ELBO draws,
//! also the masked-diffusion bound on the held-out negative log-likelihood per token.

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
    /// With ELBO draws: the held-out ELBO, a bound on the negative log-likelihood per maskable
    /// token in nats, over every source ([`Evaluator::elbo`]).
    pub elbo: Option<f64>,
    /// By source name (empty with one unnamed source).
    pub by_source: BTreeMap<String, Score>,
}

/// Evaluates a model on the held-out sequences of each source.
pub struct Evaluator {
    sources: Vec<(String, HeldOutBatches)>,
    /// The ELBO's fixed (t, mask) draws over the same sequences (empty: no ELBO).
    elbo: Vec<HeldOutBatches>,
}

impl Evaluator {
    /// `None` when nothing is held out. With `elbo_draws` > 0 the evaluation also scores the
    /// ELBO on that many (t, mask) draws per held-out sequence.
    pub fn new(
        held_out: Vec<(String, Sequences)>,
        tok: &LoadedTokenizer,
        batch: usize,
        elbo_draws: usize,
    ) -> Result<Option<Self>> {
        if held_out.is_empty() {
            return Ok(None);
        }
        let vocab = MaskVocab::from_tokenizer(tok);
        let elbo = match elbo_draws {
            0 => Vec::new(),
            draws => held_out
                .iter()
                .map(|(_, seqs)| {
                    HeldOutBatches::elbo_draws(seqs.clone(), vocab.clone(), batch, draws)
                })
                .collect::<shared::Result<_>>()?,
        };
        let sources = held_out
            .into_iter()
            .map(|(name, seqs)| Ok((name, HeldOutBatches::new(seqs, vocab.clone(), batch)?)))
            .collect::<Result<_>>()?;
        Ok(Some(Evaluator { sources, elbo }))
    }

    /// The held-out ELBO (`None` without draws): the masked-diffusion bound on the negative
    /// log-likelihood per token, `−log p(x) ≤ n·E_m[(1/m)·Σ_masked CE]` (the any-order bound, m
    /// of a sequence's n maskable tokens masked), estimated on the fixed draws of
    /// [`HeldOutBatches::elbo_draws`] and summed over sequences: `Σ (n/m)·Σ_masked CE / Σ n`.
    /// Batches are split across ranks as in [`Evaluator::evaluate`].
    pub fn elbo(
        &self,
        model: &Encoder,
        device: &Device,
        comm: &dyn Collective,
    ) -> Result<Option<f64>> {
        if self.elbo.is_empty() {
            return Ok(None);
        }
        let (rank, world) = (comm.rank(), comm.world_size());
        let (mut numerator, mut tokens): (Option<Tensor>, f64) = (None, 0.0);
        for draws in &self.elbo {
            for batch in draws.iter().skip(rank).step_by(world) {
                let batch = batch?;
                let mut masked = vec![0u32; batch.rows()];
                for &p in &batch.masked_positions {
                    masked[p as usize / batch.seq_len] += 1;
                }
                let coefficients = batch
                    .masked_positions
                    .iter()
                    .map(|&p| {
                        let row = p as usize / batch.seq_len;
                        batch.row_maskable[row] as f32 / masked[row] as f32
                    })
                    .collect();
                tokens += batch.row_maskable.iter().map(|&n| n as f64).sum::<f64>();
                let inputs = MlmInputs::from_batch(&batch, device)?
                    .with_coefficients(Some(coefficients), device)?;
                let sum = model
                    .mlm_loss(&inputs, None)?
                    .loss_sum
                    .to_dtype(candle_core::DType::F64)?;
                numerator = Some(match numerator {
                    Some(n) => (n + sum)?,
                    None => sum,
                });
            }
        }
        let mut sums = [
            match numerator {
                Some(n) => model::transfer::read::<f64>(&n)?[0],
                None => 0.0,
            },
            tokens,
        ];
        comm.sum_f64(&mut sums)?;
        Ok(Some(sums[0] / sums[1].max(1.0)))
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
                let pair = Tensor::stack(&[out.loss_sum, out.correct], 0)?
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
            elbo: self.elbo(model, device, comm)?,
            by_source,
        })
    }
}
