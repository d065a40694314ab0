//! `Run`: what the pretraining loop carries from step to step, and one method per part of an
//! iteration: [`Run::step`], [`Run::log`], [`Run::evaluate`], [`Run::check_replicas`],
//! [`Run::checkpoint`], then [`Run::finish`].

use super::resume::{IDENTITY, SHARDS_FINGERPRINT};
use super::setup::{Environment, Model};
use super::{Summary, TrainArgs};
use crate::checkpoint::{self, CheckpointState};
use crate::data::Data;
use crate::device;
use crate::dist::{self, Collective};
use crate::held_out::Evaluator;
use crate::metrics_log::{MetricsLog, Record};
use crate::profile::{Event, Profiler};
use crate::step::{check_finite, Diverged};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use model::ops::Dropout;
use model::MaskedLm;
use model::{MlmInputs, ParamStore};
use shared::atomic::write_file;
use shared::sampler::{Loader, LoaderConfig, LossTerms};
use shared::schedule::LrSchedule;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One step's global numbers (summed over ranks): those known on the host now, and the loss,
/// accuracy and gradient norm as device scalars, read at the next [`Run::flush`].
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Learning rate of the step.
    pub lr: f64,
    /// Masking rate of the step's batch.
    pub mask_rate: f64,
    /// `[loss, correct predictions, gradient norm]` f64 on the device: the mean loss over the
    /// global batch, masked tokens predicted correctly, the norm before clipping.
    pub on_device: Tensor,
    /// Masked tokens in the global batch.
    pub predicted: u64,
    /// Non-padding tokens in the global batch.
    pub tokens: u64,
    /// Wall time of the step.
    pub seconds: f64,
    /// Time this rank waited for data during the step.
    pub data_wait_sec: f64,
    /// Time spent in collectives (gradients and the step's sums).
    pub sync_sec: f64,
    /// Whether any rank was interrupted (every rank sees the same value).
    pub stop_requested: bool,
}

/// The state of a pretraining run between steps.
pub struct Run<'a> {
    args: &'a TrainArgs,
    out: PathBuf,
    env: Environment,
    model: Model,
    loader: Loader,
    evaluator: Option<Evaluator>,
    lr_schedule: LrSchedule,
    log: MetricsLog,
    bar: ProgressBar,
    /// `config.json`'s content, saved again in each checkpoint.
    config_json: serde_json::Value,
    shards_fingerprint: String,
    /// The sources' names (`[""]` without a mixture) and the sampler, for the epochs of each.
    source_names: Vec<String>,
    sampler: std::sync::Arc<shared::sampler::MaskingSampler>,
    started: Instant,
    waited_at_start: Duration,
    tokens_total: u64,
    last_loss: f64,
    /// Steps logged but not yet read back and written (`--log-every`).
    pending: Vec<(u64, StepResult)>,
    /// `--profile`: phase times and transfers per step.
    profiler: Option<Profiler>,
    final_eval: Option<(f64, f64)>,
    final_eval_by_source: std::collections::BTreeMap<String, crate::held_out::Score>,
    /// The last held-out ELBO, with ELBO draws.
    final_elbo: Option<f64>,
    last_checkpoint: Option<PathBuf>,
}

impl<'a> Run<'a> {
    /// Writes the run files (rank 0), opens the metrics log and starts the data loader at `start`.
    pub fn start(
        args: &'a TrainArgs,
        out: PathBuf,
        env: Environment,
        data: Data,
        model: Model,
        start: u64,
    ) -> Result<Self> {
        let config_json = serde_json::json!({
            "train": args,
            "model": model.cfg,
            "tokenizer": data.tokenizer.info,
            "device": device::describe(&env.device),
            "world_size": env.comm.world_size(),
            "launch": env.comm.describe(),
            "compute_dtype": env.compute.as_str(),
        });
        let log = if env.writer {
            write_run_files(args, &out, &data, &config_json)?;
            MetricsLog::open(&out.join("metrics.jsonl"), start)?
        } else {
            MetricsLog::discard()
        };
        let shards_fingerprint = data.fingerprint();
        let evaluator = Evaluator::new(
            data.held_out,
            &data.tokenizer,
            args.eval_batch,
            args.elbo_draws(),
        )?;
        let loader_cfg = LoaderConfig {
            threads: args.data.loader_threads,
            prefetch: args.data.prefetch,
        };
        let loader = Loader::start(
            data.sampler.clone(),
            model.plan,
            start,
            args.steps(),
            loader_cfg,
        )?;
        let bar = progress_bar(args.runtime.quiet || !env.writer, args.steps(), start);
        let profiler = args
            .profile
            .then(|| Profiler::new(env.writer.then(|| out.join("profile.jsonl"))));
        let mut model = model;
        if args.profile {
            model.train_step.profile_on(&env.device);
        }
        Ok(Run {
            args,
            out,
            lr_schedule: args.lr_schedule(),
            shards_fingerprint,
            source_names: data
                .sampler
                .source_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            sampler: data.sampler.clone(),
            waited_at_start: loader.waited(),
            env,
            model,
            loader,
            evaluator,
            log,
            bar,
            config_json,
            started: Instant::now(),
            tokens_total: 0,
            last_loss: f64::NAN,
            pending: Vec::new(),
            profiler,
            final_eval: None,
            final_eval_by_source: Default::default(),
            final_elbo: None,
            last_checkpoint: None,
        })
    }

    /// One optimisation step: this rank's micro-batches forward and backward, gradients reduced
    /// over ranks, clipped AdamW at the scheduled lr; then the step's numbers (and whether any
    /// rank was interrupted) summed over ranks in one collective.
    pub fn step(&mut self, step: u64, interrupted: &AtomicBool) -> Result<StepResult> {
        if let Some(p) = &mut self.profiler {
            p.begin(step);
        }
        let started = Instant::now();
        let wait_before = self.loader.waited();
        let lr = self.lr_schedule.lr(step);
        let accum = self
            .model
            .plan
            .for_global_batch(self.sampler.global_batch_at(step))
            .accumulation_steps();
        let (rank, seed) = (self.env.comm.rank(), self.args.data.config.seed);
        let (weight, norm) = (self.args.data.config.loss_weight, self.args.loss_norm);
        // The step's micro-batches first: the loss's denominator is the whole step's, over ranks.
        let mut batches = Vec::with_capacity(accum);
        let mut host = StepHostSums::default();
        for micro in 0..accum {
            let mb = self.loader.next().context("data loader stopped early")??;
            debug_assert_eq!((mb.batch.step, mb.micro), (step, micro));
            let terms = LossTerms::of(&mb.batch, weight, norm);
            host.add(&mb.batch, terms.denominator);
            batches.push((mb, terms.coefficients));
        }
        let mut host_sums = host.to_array();
        self.env.comm.sum_f64(&mut host_sums)?;
        let host = StepHostSums::from_array(host_sums);
        let (device, bert, dropout) = (&self.env.device, &self.model.bert, self.model.cfg.dropout);
        let mut correct = None;
        let stats = self
            .model
            .train_step
            .run(accum, host.denominator, lr, |micro| {
                let (mb, coefficients) = &mut batches[micro];
                let inputs = MlmInputs::from_batch(&mb.batch, device)?
                    .with_coefficients(coefficients.take(), device)?;
                // Keyed by the micro-batch's index in the global batch: the same masks at any world size.
                let global_micro = (rank * accum + micro) as u64;
                let dropout = Dropout::new(seed, &[step, global_micro], dropout);
                let out = bert.mlm_loss(&inputs, Some(&dropout))?;
                correct = Some(match correct.take() {
                    Some(c) => (c + out.correct)?,
                    None => out.correct,
                });
                if shared::faults::nan_at_step() == Some(step) {
                    return Ok((out.loss_sum * f64::NAN)?);
                }
                Ok(out.loss_sum)
            })?;
        let correct = correct.context("a step of no micro-batches")?;
        let data_wait_sec = (self.loader.waited() - wait_before).as_secs_f64();
        if let (Some(p), Some(phases)) = (&mut self.profiler, stats.phases) {
            p.phases(data_wait_sec, phases);
        }
        let sums_started = Instant::now();
        let mut sums = [Tensor::stack(&[stats.loss, correct], 0)?];
        self.env.comm.sum_tensors(&mut sums)?;
        let on_device = Tensor::cat(
            &[
                sums[0].to_dtype(candle_core::DType::F64)?,
                stats.grad_norm.reshape(1)?,
            ],
            0,
        )?;
        // Every row at the schedule's rate: that rate itself (a mean could differ in its last bit).
        let mask_rate = match self.args.data.config.rate_dist.is_point() {
            true => self.sampler.rate_at(step),
            false => host.rate_sum / host.rows.max(1.0),
        };
        let mut stops = [interrupted.load(Ordering::SeqCst) as u8 as f64];
        self.env.comm.sum_f64(&mut stops)?;
        Ok(StepResult {
            lr,
            mask_rate,
            on_device,
            predicted: host.predicted as u64,
            tokens: host.tokens as u64,
            seconds: started.elapsed().as_secs_f64(),
            data_wait_sec,
            sync_sec: stats.sync_sec + sums_started.elapsed().as_secs_f64(),
            stop_requested: stops[0] > 0.0,
        })
    }

    /// A diverged step (non-finite loss or gradient norm) stops the run, naming the step and
    /// the last good checkpoint to resume from.
    fn stopped_at(&self, e: Diverged, step: u64) -> anyhow::Error {
        let last = checkpoint::list(&self.out)
            .ok()
            .and_then(|mut l| l.pop())
            .map(|(s, p)| format!("{} (step {s})", p.display()))
            .unwrap_or_else(|| "none".into());
        anyhow::anyhow!("{e} at step {step}; stopping. Last good checkpoint: {last}")
    }

    /// Keeps the step's numbers for the metrics log and advances the progress bar; reads them
    /// back every `--log-every` steps (and when the run stops), see [`Run::flush`].
    pub fn log(&mut self, step: u64, r: &StepResult) -> Result<()> {
        self.pending.push((step, r.clone()));
        self.bar.inc(1);
        if every(self.args.log_every.max(1), step + 1) || r.stop_requested {
            self.flush()?;
        }
        Ok(())
    }

    /// Reads the pending steps' device numbers in one transfer, stops at the first non-finite
    /// loss or gradient norm (naming its step), and writes one metrics record per step.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        if let Some(p) = &mut self.profiler {
            p.mark(Event::ReadBack);
        }
        let rows: Vec<Tensor> = pending.iter().map(|(_, r)| r.on_device.clone()).collect();
        let values = model::transfer::read::<f64>(&Tensor::stack(&rows, 0)?)?;
        for ((step, r), v) in pending.iter().zip(values.chunks(3)) {
            let (loss, correct, grad_norm) = (v[0], v[1], v[2]);
            check_finite(loss, grad_norm).map_err(|e| self.stopped_at(e, *step))?;
            self.tokens_total += r.tokens;
            self.last_loss = loss;
            let tokens_per_sec = r.tokens as f64 / r.seconds;
            let accuracy = correct / (r.predicted as f64).max(1.0);
            self.log.write(&Record::Train {
                step: *step,
                lr: r.lr,
                mask_rate: r.mask_rate,
                loss,
                accuracy,
                grad_norm,
                tokens_per_sec,
                data_wait_sec: r.data_wait_sec,
                sync_sec: (self.env.comm.world_size() > 1).then_some(r.sync_sec),
            })?;
            self.bar.set_message(format!(
                "loss {loss:.4} acc {accuracy:.3} rate {:.3} lr {:.2e} {tokens_per_sec:.0} tok/s",
                r.mask_rate, r.lr
            ));
        }
        Ok(())
    }

    /// Whether `step` steps done calls for a held-out evaluation (every `--eval-every`, and at the end).
    pub fn evaluation_due(&self, step: u64) -> bool {
        every(self.args.eval_every, step) || step == self.args.steps()
    }

    /// Held-out loss and accuracy at a fixed rate, logged and printed.
    pub fn evaluate(&mut self, step: u64) -> Result<()> {
        self.flush()?;
        let Some(evaluator) = &self.evaluator else {
            return Ok(());
        };
        if let Some(p) = &mut self.profiler {
            p.mark(Event::Evaluated);
        }
        let eval = evaluator.evaluate(&self.model.bert, &self.env.device, &*self.env.comm)?;
        let (loss, accuracy) = (eval.pooled.loss, eval.pooled.accuracy);
        let elbo = eval
            .elbo
            .map(|e| format!("; ELBO {e:.4} nats/token"))
            .unwrap_or_default();
        let per_source: Vec<String> = eval
            .by_source
            .iter()
            .map(|(name, s)| format!("; {name} {:.4}", s.loss))
            .collect();
        self.bar.println(format!(
            "step {step}: eval loss {loss:.4} accuracy {accuracy:.4}{}{elbo}",
            per_source.concat()
        ));
        self.final_elbo = eval.elbo;
        self.final_eval = Some((loss, accuracy));
        self.final_eval_by_source = eval.by_source.clone();
        self.log.write(&Record::Eval {
            step,
            loss,
            accuracy,
            sources: eval.by_source,
            eval_elbo: eval.elbo,
        })?;
        Ok(())
    }

    /// Whether the ranks' parameters are compared after `step` steps (`--check-every`).
    pub fn replica_check_due(&self, step: u64) -> bool {
        self.env.comm.world_size() > 1 && every(self.args.check_every, step)
    }

    /// Stops the job when the ranks' parameters differ in any bit.
    pub fn check_replicas(&self, step: u64) -> Result<()> {
        ensure_same_parameters(&self.model.params, &*self.env.comm, step)
    }

    /// Whether a checkpoint is saved after `step` steps (every `--save-every`, and at the end).
    pub fn checkpoint_due(&self, step: u64) -> bool {
        every(self.args.save_every, step) || step == self.args.steps()
    }

    /// Saves weights, optimizer state and the run's identity (rank 0; every rank holds the same
    /// parameters, checked every `--check-every` steps).
    pub fn checkpoint(&mut self, step: u64) -> Result<()> {
        // Every rank reads (a divergence stops them all), before anything is saved.
        self.flush()?;
        if let Some(p) = &mut self.profiler {
            p.mark(Event::Checkpointed);
            p.save()?;
        }
        if !self.env.writer {
            return Ok(());
        }
        let model_tensors: HashMap<String, Tensor> = self
            .model
            .params
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let opt = self.model.train_step.optimizer();
        let state = CheckpointState {
            step,
            optimizer_t: opt.t,
            config: serde_json::json!({
                IDENTITY: self.args.identity().to_json(),
                "run": self.config_json,
                SHARDS_FINGERPRINT: self.shards_fingerprint,
            }),
        };
        let saved = checkpoint::save(
            &self.out,
            &model_tensors,
            &opt.state_tensors(),
            &state,
            self.args.keep,
        )?;
        self.last_checkpoint = Some(saved);
        Ok(())
    }

    /// Leaves the progress bar and says how to continue after an interruption.
    pub fn report_interrupted(&self) {
        self.bar.abandon();
        if let Some(dir) = &self.last_checkpoint {
            eprintln!(
                "interrupted: saved {}; continue with the same command plus --resume",
                dir.display()
            );
        }
    }

    /// Stops the loader and writes `summary.json` (rank 0) after `steps` steps.
    pub fn finish(mut self, steps: u64) -> Result<Summary> {
        self.flush()?;
        self.bar.finish_and_clear();
        let profile = match self.profiler.take() {
            Some(p) => Some(p.finish()?),
            None => None,
        };
        if let (Some(p), true) = (&profile, self.env.writer) {
            eprintln!("{p}");
        }
        let waited = (self.loader.waited() - self.waited_at_start).as_secs_f64();
        drop(self.loader);
        let seconds = self.started.elapsed().as_secs_f64();
        let summary = Summary {
            steps,
            final_train_loss: self.last_loss,
            final_eval: self.final_eval,
            seconds,
            tokens_per_sec: self.tokens_total as f64 / seconds,
            data_wait_share: waited / seconds.max(1e-9),
            final_eval_by_source: self.final_eval_by_source.clone(),
            final_elbo: self.final_elbo,
            source_epochs: self
                .source_names
                .iter()
                .zip(self.sampler.source_epochs_at(steps))
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, e)| (name.clone(), e))
                .collect(),
            shard_cache: self.sampler.shard_cache().map(|c| c.stats()),
            profile,
        };
        if self.env.writer {
            write_file(
                &self.out.join("summary.json"),
                &serde_json::to_vec_pretty(&summary)?,
            )?;
        }
        Ok(summary)
    }
}

/// Whether a cadence of `every` steps (0 = never) falls after `step` steps.
fn every(every: u64, step: u64) -> bool {
    every > 0 && step.is_multiple_of(every)
}

/// `config.toml` (the flags, reusable with `--config`), the shards' tokenizer and `config.json`
/// (flags, model, tokenizer, device, launch), printed as well.
fn write_run_files(
    args: &TrainArgs,
    out: &std::path::Path,
    data: &Data,
    config_json: &serde_json::Value,
) -> Result<()> {
    write_file(
        &out.join("config.toml"),
        crate::config_file::to_toml(args)?.as_bytes(),
    )?;
    write_file(
        &out.join(shared::tokenizer::TOKENIZER_FILE),
        &data.tokenizer.json,
    )?;
    write_file(
        &out.join("config.json"),
        &serde_json::to_vec_pretty(config_json)?,
    )?;
    eprintln!("config: {}", serde_json::to_string(config_json)?);
    Ok(())
}

/// A bar over the run's steps, at `start`; hidden when `hidden`.
fn progress_bar(hidden: bool, steps: u64, start: u64) -> ProgressBar {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("template"),
    );
    bar.set_position(start);
    bar
}

/// Stops the job when the ranks' parameters differ in any bit (they apply the same update to the
/// same values, so a difference means a broken reduction or a non-deterministic kernel).
fn ensure_same_parameters(params: &ParamStore, comm: &dyn Collective, step: u64) -> Result<()> {
    let tensors: Vec<Tensor> = params
        .named_vars()
        .iter()
        .map(|(_, v)| v.as_tensor().clone())
        .collect();
    let (min, max) = comm.min_max_u64(dist::checksum(&tensors)?)?;
    if min != max {
        bail!(
            "parameters differ across ranks after step {step} (checksums {min:016x} .. {max:016x}); \
             stopping: resume from the last checkpoint"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::SingleProcess;
    use std::rc::Rc;

    /// A job whose other rank holds different parameters.
    struct OtherRankDiffers;

    impl Collective for OtherRankDiffers {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn local_rank(&self) -> usize {
            0
        }
        fn local_size(&self) -> usize {
            2
        }
        fn sum_tensors(&self, _: &mut [Tensor]) -> Result<()> {
            Ok(())
        }
        fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
            Ok(())
        }
        fn min_max_u64(&self, value: u64) -> Result<(u64, u64)> {
            Ok((value, value ^ 1))
        }
        fn abort(&self, _: i32) {}
        fn describe(&self) -> String {
            "test".into()
        }
        fn for_device(self: Rc<Self>, _: &candle_core::Device) -> Result<Rc<dyn Collective>> {
            Ok(self)
        }
    }

    #[test]
    fn differing_parameters_across_ranks_stop_the_job() {
        let params = ParamStore::new(&candle_core::Device::Cpu, 0);
        params
            .get("w", &[4], model::params::Init::Normal(1.0))
            .unwrap();
        ensure_same_parameters(&params, &SingleProcess, 7).unwrap();
        let err = ensure_same_parameters(&params, &OtherRankDiffers, 7).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("parameters differ across ranks after step 7"),
            "{err}"
        );
    }
}

/// A step's numbers known on the host, summed over its micro-batches (then over ranks, in one
/// collective before the step: the loss's denominator is the step's).
#[derive(Debug, Default, Clone, Copy)]
struct StepHostSums {
    /// The loss's denominator ([`LossTerms::denominator`]).
    denominator: f64,
    predicted: f64,
    tokens: f64,
    rows: f64,
    /// The rows' masking rates, summed (their mean is the step's `mask_rate`).
    rate_sum: f64,
}

impl StepHostSums {
    fn add(&mut self, b: &shared::sampler::Batch, denominator: f64) {
        self.denominator += denominator;
        self.predicted += b.masked_labels.len() as f64;
        self.tokens += b.attention_mask.iter().map(|&m| m as u64).sum::<u64>() as f64;
        self.rows += b.rows() as f64;
        self.rate_sum += b.row_rates.iter().sum::<f64>();
    }

    fn to_array(self) -> [f64; 5] {
        let s = self;
        [s.denominator, s.predicted, s.tokens, s.rows, s.rate_sum]
    }

    fn from_array([denominator, predicted, tokens, rows, rate_sum]: [f64; 5]) -> Self {
        StepHostSums {
            denominator,
            predicted,
            tokens,
            rows,
            rate_sum,
        }
    }
}
