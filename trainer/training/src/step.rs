//! One optimisation step, the same for pretraining and fine-tuning, in three stages:
//!
//! 1. [`TrainStep::forward_backward`]: this rank's micro-batches, each loss divided by the step's
//!    denominator over all ranks (the MLM loss's [`shared::sampler::loss`] normalisation, or the
//!    micro-batch count for losses that are already means), backward, gradients accumulated;
//! 2. [`TrainStep::reduce`]: gradients summed across data-parallel ranks by a [`Collective`]
//!    ([`crate::dist::SingleProcess`], the identity, in one process), which makes them the
//!    gradient of the step's loss over the global batch;
//! 3. [`TrainStep::update`]: global-norm clipping, AdamW at the step's learning rate.
//!
//! Nothing in a step is read back to the host: the loss and the gradient norm stay device
//! scalars ([`StepStats`]), the clip scale is computed and applied on the device, and the caller
//! reads the numbers when it logs ([`StepStats::read`]), where a non-finite value is caught
//! ([`Diverged`]).
//!
//! The dropout of a micro-batch is [`model::ops::Dropout`], keyed by the seed and the
//! micro-batch's key (its index in the global batch, never a per-rank counter), so a resumed run
//! and a run at another world size draw the same masks.

use crate::dist::Collective;
use crate::optim::AdamW;
use crate::profile::PhaseTimes;
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::rc::Rc;
use std::time::Instant;

/// Why a run stopped: a value that is not finite. Callers name the step and what is kept.
#[derive(Debug, thiserror::Error)]
pub enum Diverged {
    /// The step's loss.
    #[error("loss is {0}")]
    Loss(f64),
    /// The gradient norm after `reduce`.
    #[error("gradient norm is {0}")]
    GradNorm(f64),
}

/// What a step measured, on the device.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// This rank's sum over its micro-batches of loss / the step's denominator (summed over ranks,
    /// the loss of the global batch): an f32 scalar.
    pub loss: Tensor,
    /// Global gradient norm before clipping: an f64 scalar.
    pub grad_norm: Tensor,
    /// Seconds spent summing gradients across ranks.
    pub sync_sec: f64,
    /// The phases' times, when profiling ([`TrainStep::profile_on`]).
    pub phases: Option<PhaseTimes>,
}

impl StepStats {
    /// (loss, gradient norm) on the host: two counted reads ([`model::transfer::read`]); a
    /// non-finite value is a [`Diverged`] error.
    pub fn read(&self) -> Result<(f64, f64)> {
        let loss = model::transfer::read::<f64>(&self.loss)?[0];
        let norm = model::transfer::read::<f64>(&self.grad_norm)?[0];
        check_finite(loss, norm)?;
        Ok((loss, norm))
    }
}

/// A [`Diverged`] error when `loss` or `grad_norm` is not finite.
pub fn check_finite(loss: f64, grad_norm: f64) -> Result<(), Diverged> {
    if !loss.is_finite() {
        return Err(Diverged::Loss(loss));
    }
    if !grad_norm.is_finite() {
        return Err(Diverged::GradNorm(grad_norm));
    }
    Ok(())
}

/// The optimizer with its gradient buffers, clipping and gradient sync.
pub struct TrainStep {
    opt: AdamW,
    clip: f64,
    comm: Rc<dyn Collective>,
    grads: Vec<Option<Tensor>>,
    /// When profiling: the device to sync at each phase's end, and the phases so far.
    profile: Option<(Device, PhaseTimes)>,
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
            profile: None,
        }
    }

    /// Times each phase of the following steps, syncing `device` at each phase's end.
    pub fn profile_on(&mut self, device: &Device) {
        self.profile = Some((device.clone(), PhaseTimes::default()));
    }

    /// Ends a phase that started at `since`: syncs the device and adds the seconds to `field`
    /// (nothing when not profiling). Returns the next phase's start.
    fn phase_end(
        &mut self,
        since: Instant,
        field: fn(&mut PhaseTimes) -> &mut f64,
    ) -> Result<Instant> {
        if let Some((device, times)) = &mut self.profile {
            device.synchronize()?;
            *field(times) += since.elapsed().as_secs_f64();
        }
        Ok(Instant::now())
    }

    /// The denominator of a step whose `micro_batches` per rank each return a mean: their
    /// count over all ranks (the mean of the means).
    pub fn micro_batches_over_ranks(&self, micro_batches: usize) -> f64 {
        (micro_batches * self.comm.world_size()) as f64
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
    /// returns its part of the step's loss before division, differentiable), divides each by
    /// `denominator` (the step's over all ranks), back-propagates and accumulates the gradients;
    /// returns the sum of the divided losses, a device scalar.
    pub fn forward_backward<F>(
        &mut self,
        micro_batches: usize,
        denominator: f64,
        mut forward: F,
    ) -> Result<Tensor>
    where
        F: FnMut(usize) -> Result<Tensor>,
    {
        let mut total: Option<Tensor> = None;
        for micro in 0..micro_batches {
            let t = Instant::now();
            let loss = (forward(micro)? / denominator.max(f64::MIN_POSITIVE))?;
            let t = self.phase_end(t, |p| &mut p.forward_sec)?;
            let g = loss.backward()?;
            let loss = loss.detach();
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
            let sources = self.opt.grad_sources();
            for ((acc, source), var) in self.grads.iter_mut().zip(sources).zip(self.opt.vars()) {
                if let Some(gv) = g.get(source) {
                    // Accumulated in the parameter's dtype (f32 for a bf16 copy's gradient).
                    let gv = gv.to_dtype(var.dtype())?;
                    *acc = Some(match acc.take() {
                        Some(a) => (a + gv)?,
                        None => gv,
                    });
                }
            }
            self.phase_end(t, |p| &mut p.backward_sec)?;
        }
        total.ok_or_else(|| anyhow::anyhow!("a step of no micro-batches"))
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

    /// Stage 3: the global norm of `grads` and the clip factor, on the device, and AdamW at
    /// learning rate `lr` with the factor applied inside the update. Returns the norm before
    /// clipping, a device scalar.
    pub fn update(&mut self, grads: Vec<Tensor>, lr: f64) -> Result<Tensor> {
        Ok(self.opt.clip_and_step(&grads, self.clip, lr)?)
    }

    /// The three stages in order: one optimisation step at learning rate `lr`, the micro-batches'
    /// losses divided by `denominator` (see [`TrainStep::forward_backward`]).
    pub fn run<F>(
        &mut self,
        micro_batches: usize,
        denominator: f64,
        lr: f64,
        forward: F,
    ) -> Result<StepStats>
    where
        F: FnMut(usize) -> Result<Tensor>,
    {
        if let Some((_, times)) = &mut self.profile {
            *times = PhaseTimes::default();
        }
        let loss = self.forward_backward(micro_batches, denominator, forward)?;
        let t = Instant::now();
        let grads = self.reduce()?;
        let sync_sec = t.elapsed().as_secs_f64();
        let t = self.phase_end(t, |p| &mut p.all_reduce_sec)?;
        let grad_norm = self.update(grads, lr)?;
        self.phase_end(t, |p| &mut p.optimizer_sec)?;
        Ok(StepStats {
            loss,
            grad_norm,
            sync_sec,
            phases: self.profile.as_ref().map(|(_, times)| *times),
        })
    }
}
