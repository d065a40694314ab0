//! One optimisation step, the same for pretraining and fine-tuning, in three stages:
//!
//! 1. [`TrainStep::forward_backward`]: this rank's micro-batches, each loss divided by the
//!    number of micro-batches over all ranks, backward, gradients accumulated;
//! 2. [`TrainStep::reduce`]: gradients summed across data-parallel ranks by a [`Collective`]
//!    ([`crate::dist::SingleProcess`], the identity, in one process), which makes them the
//!    gradient of the mean loss over the global batch;
//! 3. [`TrainStep::update`]: global-norm clipping, a stop on a non-finite norm, AdamW at the
//!    step's learning rate.
//!
//! The dropout stream of a micro-batch is [`dropout_for`]: keyed by the seed and the
//! micro-batch's key (its index in the global batch, never a per-rank counter), so a resumed run
//! and a run at another world size draw the same masks.

use crate::dist::Collective;
use crate::optim::{clip_grad_norm, AdamW};
use anyhow::Result;
use candle_core::Tensor;
use model::ops::Dropout;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use shared::seed::seed_of;
use std::rc::Rc;

/// Domain tag of dropout streams.
const DROPOUT_TAG: u64 = 0x0064_726f_706f;

/// Seeded dropout with probability `p` for the micro-batch identified by `key` (e.g. step and
/// micro-batch index) within run seed `seed`.
pub fn dropout_for(seed: u64, key: &[u64], p: f64) -> Dropout {
    let mut parts = Vec::with_capacity(key.len() + 2);
    parts.extend([seed, DROPOUT_TAG]);
    parts.extend_from_slice(key);
    Dropout::new(Xoshiro256PlusPlus::seed_from_u64(seed_of(&parts)), p)
}

/// Why a step stopped: a value that is not finite. Callers name the step and what is kept.
#[derive(Debug, thiserror::Error)]
pub enum Diverged {
    /// A micro-batch's loss.
    #[error("loss is {value} (micro-batch {micro})")]
    Loss {
        /// Micro-batch index within the step.
        micro: usize,
        /// The loss.
        value: f64,
    },
    /// The gradient norm after `reduce`.
    #[error("gradient norm is {0}")]
    GradNorm(f64),
}

/// What a step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// This rank's sum over its micro-batches of loss / micro-batches over all ranks (summed over
    /// ranks, the mean loss of the global batch).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds spent summing gradients across ranks.
    pub sync_sec: f64,
}

/// The optimizer with its gradient buffers, clipping and gradient sync.
pub struct TrainStep {
    opt: AdamW,
    clip: f64,
    comm: Rc<dyn Collective>,
    grads: Vec<Option<Tensor>>,
}

impl TrainStep {
    /// A step over `opt`'s variables, clipping at global norm `clip` (0 = off), with gradients
    /// summed over `comm`'s ranks.
    pub fn new(opt: AdamW, clip: f64, comm: Rc<dyn Collective>) -> Self {
        let n = opt.vars().len();
        TrainStep {
            opt,
            clip,
            comm,
            grads: vec![None; n],
        }
    }

    /// The optimizer (moments and step count, for checkpoints).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The optimizer, to restore its state.
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    /// Stage 1: runs `forward(m)` for this rank's micro-batches `m = 0..micro_batches` (each
    /// returns its mean loss, differentiable), divides each loss by the micro-batches of all ranks
    /// (`micro_batches` × world size), back-propagates and accumulates the gradients; returns the
    /// sum of the divided losses. A non-finite loss stops with [`Diverged::Loss`].
    pub fn forward_backward<F>(&mut self, micro_batches: usize, mut forward: F) -> Result<f64>
    where
        F: FnMut(usize) -> Result<Tensor>,
    {
        let mut total = 0.0;
        let all_micro_batches = (micro_batches * self.comm.world_size()) as f64;
        for micro in 0..micro_batches {
            let loss = (forward(micro)? / all_micro_batches)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                self.grads.iter_mut().for_each(|g| *g = None);
                return Err(Diverged::Loss { micro, value }.into());
            }
            total += value;
            let g = loss.backward()?;
            for (acc, var) in self.grads.iter_mut().zip(self.opt.vars()) {
                if let Some(gv) = g.get(var.as_tensor()) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + gv)?,
                        None => gv.clone(),
                    });
                }
            }
        }
        Ok(total)
    }

    /// Stage 2: the accumulated gradients (zeros for variables the loss did not reach), summed
    /// across ranks.
    pub fn reduce(&mut self) -> Result<Vec<Tensor>> {
        let mut grads: Vec<Tensor> = self
            .grads
            .iter_mut()
            .zip(self.opt.vars())
            .map(|(g, v)| {
                g.take()
                    .map(Ok)
                    .unwrap_or_else(|| v.as_tensor().zeros_like())
            })
            .collect::<candle_core::Result<_>>()?;
        self.comm.sum_tensors(&mut grads)?;
        Ok(grads)
    }

    /// Stage 3: clips `grads` to the global norm, stops on a non-finite norm
    /// ([`Diverged::GradNorm`]), and applies AdamW at learning rate `lr`. Returns the norm before
    /// clipping.
    pub fn update(&mut self, mut grads: Vec<Tensor>, lr: f64) -> Result<f64> {
        let grad_norm = clip_grad_norm(&mut grads, self.clip)?;
        if !grad_norm.is_finite() {
            return Err(Diverged::GradNorm(grad_norm).into());
        }
        self.opt.step(&grads, lr)?;
        Ok(grad_norm)
    }

    /// The three stages in order: one optimisation step at learning rate `lr`.
    pub fn run<F>(&mut self, micro_batches: usize, lr: f64, forward: F) -> Result<StepStats>
    where
        F: FnMut(usize) -> Result<Tensor>,
    {
        let loss = self.forward_backward(micro_batches, forward)?;
        let t = std::time::Instant::now();
        let grads = self.reduce()?;
        let sync_sec = t.elapsed().as_secs_f64();
        let grad_norm = self.update(grads, lr)?;
        Ok(StepStats {
            loss,
            grad_norm,
            sync_sec,
        })
    }
}
