//! `trainer --shards DIR --schedule SPEC --out runs/NAME`: the pretraining loop.
//!
//! Reads top to bottom: open data → build model → (resume) → loop { one [`TrainStep`]
//! (micro-batches → reduce → clip + AdamW at the scheduled lr) → log → maybe eval → maybe save }.

use crate::checkpoint::{self, CheckpointState};
use crate::data::DataArgs;
use crate::dist::{self, Collective};
use crate::held_out;
use crate::metrics_log::{MetricsLog, Record};
use crate::optim::{AdamW, AdamWConfig};
use crate::runtime::RuntimeArgs;
use crate::step::{dropout_for, Diverged, TrainStep};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use model::device;
use model::{Bert, BertConfig, MlmInputs, ParamStore};
use serde::{Deserialize, Serialize};
use shared::atomic::write_file;
use shared::sampler::{BatchPlan, Loader, LoaderConfig};
use shared::schedule::LrSchedule;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Training flags (every one can also come from `--config run.toml`; flags win).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Data, schedule and masking.
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    /// Run directory (config.toml, metrics.jsonl, checkpoints/, plots).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Model size: tiny, mini, small, medium, base, large (Google's BERT miniatures and BERT).
    #[arg(long, default_value = "base")]
    pub model: String,
    /// Override: encoder layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Override: hidden size.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Override: attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Override: feed-forward size.
    #[arg(long)]
    pub intermediate: Option<usize>,
    /// Pre-LN encoder layers instead of BERT's post-LN.
    #[arg(long)]
    pub pre_ln: bool,
    /// Dropout probability.
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 70_000)]
    pub steps: u64,
    /// Sequences per optimizer step (reached by gradient accumulation).
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Sequences per forward/backward pass (per rank in a data-parallel job).
    #[arg(long, default_value_t = 32)]
    pub micro_batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Fraction of steps of linear warm-up.
    #[arg(long, default_value_t = 0.06)]
    pub warmup: f64,
    /// Final learning rate as a fraction of the peak (linear decay).
    #[arg(long, default_value_t = 0.02)]
    pub final_lr_ratio: f64,
    /// Adam beta1.
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// Adam beta2.
    #[arg(long, default_value_t = 0.98)]
    pub beta2: f64,
    /// Adam epsilon.
    #[arg(long, default_value_t = 1e-6)]
    pub eps: f64,
    /// Decoupled weight decay (none on biases and LayerNorm).
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f64,
    /// Gradient clipping by global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Matrix products in: auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16. Parameters,
    /// optimizer state, LayerNorm, softmax and the loss stay fp32.
    #[arg(long, default_value = "auto")]
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 1000)]
    pub save_every: u64,
    /// Checkpoints kept (0 = all).
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Continue from the run directory's latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Evaluate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 1000)]
    pub eval_every: u64,
    /// Documents (truncate layout) or sequences (pack) held out for evaluation, from the end of the
    /// shards (or taken from the end of --eval-shards).
    #[arg(long, default_value_t = 256)]
    pub eval_sequences: u64,
    /// Evaluate on this separate shard set (same tokenizer) instead of holding out training data.
    #[arg(long, value_name = "DIR")]
    pub eval_shards: Option<PathBuf>,
    /// Sequences per evaluation forward pass.
    #[arg(long, default_value_t = 64)]
    pub eval_batch: usize,
    /// Data-parallel jobs: compare a checksum of the parameters across ranks every N steps and
    /// stop on a mismatch (0 = never).
    #[arg(long, default_value_t = 100)]
    #[serde(default = "default_check_every")]
    pub check_every: u64,
    /// Recompute every shard file's SHA-256 against its manifest before training (reads the whole
    /// shard set once, with a progress bar).
    #[arg(long)]
    #[serde(default)]
    pub verify_shards: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub runtime: RuntimeArgs,
}

impl TrainArgs {
    /// The model configuration for a vocabulary.
    pub fn model_config(&self, vocab_size: usize) -> Result<BertConfig> {
        let mut c = BertConfig::from_preset(&self.model, vocab_size).with_context(|| {
            format!(
                "--model {:?}: expected one of {}",
                self.model,
                model::bert_config::PRESETS.join(", ")
            )
        })?;
        if let Some(v) = self.layers {
            c.num_hidden_layers = v;
        }
        if let Some(v) = self.hidden {
            c.hidden_size = v;
        }
        if let Some(v) = self.heads {
            c.num_attention_heads = v;
        }
        if let Some(v) = self.intermediate {
            c.intermediate_size = v;
        }
        c.pre_ln = self.pre_ln;
        c.dropout = self.dropout;
        if c.hidden_size % c.num_attention_heads != 0 {
            bail!(
                "hidden size {} is not a multiple of {} heads",
                c.hidden_size,
                c.num_attention_heads
            );
        }
        if self.data.seq_len > c.max_position_embeddings {
            bail!(
                "--seq-len {} exceeds the model's {} positions",
                self.data.seq_len,
                c.max_position_embeddings
            );
        }
        Ok(c)
    }

    /// The learning-rate schedule.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            warmup_steps: (self.warmup * self.steps as f64).round() as u64,
            total_steps: self.steps,
            final_ratio: self.final_lr_ratio,
        }
    }

    /// Settings that must match for `--resume` (everything that changes the numbers).
    fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serializes");
        for volatile in [
            "resume",
            "quiet",
            "loader_threads",
            "prefetch",
            "save_every",
            "keep",
            "device",
            "out",
            "eval_every",
            "check_every",
            "verify_shards",
        ] {
            v.as_object_mut().expect("object").remove(volatile);
        }
        without_unset(v)
    }
}

/// Key of the shard-set fingerprint in a checkpoint's `config`.
const SHARDS_FINGERPRINT: &str = "shards_fingerprint";

/// Hashes every shard file against its manifest, with a progress bar in bytes.
fn verify_shards(shards: &shared::shard::ShardSet, quiet: bool) -> Result<()> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(shards.file_bytes())
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying shards [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let files = shards
        .verify_checksums_with(|done| bar.set_position(done))
        .context("--verify-shards")?;
    bar.finish_and_clear();
    if !quiet {
        eprintln!(
            "verified {files} shard files ({:.1} MB) against their manifests",
            shards.file_bytes() as f64 / 1e6
        );
    }
    Ok(())
}

fn default_precision() -> String {
    "auto".into()
}

fn default_check_every() -> u64 {
    100
}

/// `v` without its null (unset optional) fields, so checkpoints stay resumable when an optional
/// flag is added: both the saved and the current identity go through this before comparing.
fn without_unset(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, value| !value.is_null());
    }
    v
}

/// Final numbers of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Steps completed.
    pub steps: u64,
    /// Mean loss of the last logged step.
    pub final_train_loss: f64,
    /// Last held-out evaluation (loss, accuracy).
    pub final_eval: Option<(f64, f64)>,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Non-padding tokens per second over this invocation.
    pub tokens_per_sec: f64,
    /// Share of wall time spent waiting for data.
    pub data_wait_share: f64,
}

/// The last `--eval-sequences` sequences of a separate shard set, laid out like the training data.
fn eval_sequences_from(
    dir: &std::path::Path,
    args: &TrainArgs,
    data: &crate::data::Data,
) -> Result<shared::sampler::Sequences> {
    let set = shared::shard::ShardSet::open_many(std::slice::from_ref(&dir.to_path_buf()))
        .with_context(|| format!("--eval-shards {}", dir.display()))?;
    set.tokenizer()
        .ensure_same(data.shards.tokenizer(), dir, &args.data.shards[0])?;
    let all = shared::sampler::Sequences::new(
        Arc::new(set),
        &data.tokenizer.info,
        args.data.layout,
        args.data.seq_len,
        args.data.min_doc_tokens,
    )?;
    if args.eval_sequences == 0 || args.eval_sequences >= all.len() {
        return Ok(all);
    }
    let (_, tail) = all.split_tail(args.eval_sequences)?;
    Ok(tail)
}

/// Trains as configured, as one rank of `comm`'s job (every rank runs this with the same
/// arguments; rank 0 writes the run's files). `interrupted` is set by Ctrl-C or SIGTERM on any
/// rank: all ranks stop after the same step, a checkpoint is saved, then it returns.
pub fn pretrain(
    args: &TrainArgs,
    interrupted: Arc<AtomicBool>,
    comm: Rc<dyn Collective>,
) -> Result<Summary> {
    let out = args.out.clone().context("--out RUN_DIR is required")?;
    let writer = dist::is_writer(&*comm);
    // The device first: a missing GPU leaves no empty run directory behind.
    let device = args.runtime.device_for_rank(comm.local_rank())?;
    let comm = comm.for_device(&device)?;
    // One writer per run directory: a second trainer (or a sweep child) on it is refused.
    let _lock = if writer {
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        Some(shared::lock::DirLock::acquire(&out, "trainer train")?)
    } else {
        None
    };
    if comm.world_size() > 1 {
        // One write, so that the ranks' lines do not interleave in the launcher's output.
        let line = format!(
            "rank {}/{}: {}, device {}\n",
            comm.rank(),
            comm.world_size(),
            comm.describe(),
            device::describe(&device)
        );
        eprint!("{line}");
    }
    let compute = device::compute_dtype(&args.precision, &device)?;
    if compute != candle_core::DType::F32 && device.is_cpu() {
        eprintln!(
            "warning: --precision {} on the CPU: candle widens bf16 products to f32 there, so this \
             is slower than fp32 (useful to test the autocast path)",
            args.precision
        );
    }
    let held_out_of_training = if args.eval_shards.is_some() {
        0
    } else {
        args.eval_sequences
    };
    let mut data =
        args.data
            .open_with_holdout(args.batch_size, args.steps, held_out_of_training)?;
    if let Some(dir) = &args.eval_shards {
        data.held_out = Some(eval_sequences_from(dir, args, &data)?);
    }
    if args.verify_shards {
        verify_shards(&data.shards, args.runtime.quiet || !writer)?;
    }
    let cfg = args.model_config(data.tokenizer.info.vocab_size)?;
    let plan = BatchPlan {
        global_batch: args.batch_size,
        world_size: comm.world_size(),
        rank: comm.rank(),
        micro_batch: args.micro_batch.min(args.batch_size / comm.world_size()),
    };
    plan.validate()?;

    let params = ParamStore::new(&device, args.data.seed).with_compute_dtype(compute);
    let model = Bert::new(cfg, &params)?;
    let opt = AdamW::new(
        params.named_vars(),
        AdamWConfig {
            peak_lr: args.lr,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
        },
    )?;
    let mut train_step = TrainStep::new(opt, args.clip, comm.clone());
    let config_json = serde_json::json!({
        "train": args,
        "model": cfg,
        "tokenizer": data.tokenizer.info,
        "device": device::describe(&device),
        "world_size": comm.world_size(),
        "launch": comm.describe(),
        "matmul_dtype": compute.as_str(),
    });

    // Resume.
    let shards_fingerprint = data.shards.fingerprint();
    let mut start = 0u64;
    if args.resume {
        let Some((_, dir)) = checkpoint::list(&out)?.pop() else {
            bail!("--resume: {} has no checkpoint", out.display())
        };
        let loaded = checkpoint::load(&dir)?;
        // The shard contents are part of the run: a set rebuilt or replaced under the same path
        // while the run was stopped would silently change the data stream.
        if let Some(saved) = loaded
            .state
            .config
            .get(SHARDS_FINGERPRINT)
            .and_then(|v| v.as_str())
        {
            if saved != shards_fingerprint {
                bail!(
                    "--resume: the shards in {} changed since {} was written (content fingerprint {}, the checkpoint's {}): resume with the shard set it was trained on",
                    args.data.shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                    dir.display(),
                    &shards_fingerprint[..16],
                    &saved[..saved.len().min(16)]
                );
            }
        }
        let saved_identity = without_unset(
            loaded
                .state
                .config
                .get("identity")
                .cloned()
                .unwrap_or_default(),
        );
        if saved_identity != args.identity() {
            bail!(
                "--resume: {} was made with different settings; saved: {}\ncurrent: {}",
                dir.display(),
                saved_identity,
                args.identity()
            );
        }
        params.load_by_name(&loaded.model, &dir.display().to_string(), |_, _| false)?;
        train_step
            .optimizer_mut()
            .load_state(loaded.optimizer, loaded.state.optimizer_t)?;
        start = loaded.state.step;
        if writer {
            eprintln!("resuming {} from step {start}", out.display());
        }
    } else if !checkpoint::list(&out)?.is_empty() {
        bail!(
            "{} already has checkpoints: pass --resume to continue, or choose another --out",
            out.display()
        );
    }
    let mut log = if writer {
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
            &serde_json::to_vec_pretty(&config_json)?,
        )?;
        eprintln!("config: {}", serde_json::to_string(&config_json)?);
        MetricsLog::open(&out.join("metrics.jsonl"), start)?
    } else {
        MetricsLog::discard()
    };
    let evaluator = held_out::Evaluator::new(data.held_out, &data.tokenizer, args.eval_batch)?;
    let lr_sched = args.lr_schedule();
    let loader_cfg = LoaderConfig {
        threads: args.data.loader_threads,
        prefetch: args.data.prefetch,
    };
    let mut loader = Loader::start(data.sampler.clone(), plan, start, args.steps, loader_cfg)?;
    let bar = if args.runtime.quiet || !writer {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.steps)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("template"),
    );
    bar.set_position(start);

    // Rank 0 saves; every rank holds the same parameters (checked every --check-every steps).
    let save = |opt: &AdamW, step: u64| -> Result<Option<PathBuf>> {
        if !writer {
            return Ok(None);
        }
        let model_tensors: HashMap<String, Tensor> = params
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let state = CheckpointState {
            step,
            optimizer_t: opt.t,
            config: serde_json::json!({
                "identity": args.identity(),
                "run": config_json,
                SHARDS_FINGERPRINT: shards_fingerprint,
            }),
        };
        checkpoint::save(
            &out,
            &model_tensors,
            &opt.state_tensors(),
            &state,
            args.keep,
        )
        .map(Some)
    };

    let t0 = Instant::now();
    let (mut tokens_total, mut last_loss, mut final_eval) = (0u64, f64::NAN, None);
    let wait_at_start = loader.waited();
    let accum = plan.accumulation_steps();
    let mut step = start;
    while step < args.steps {
        let t_step = Instant::now();
        let wait_before = loader.waited();
        let lr = lr_sched.lr(step);
        let (mut correct, mut predicted, mut tokens, mut rate) = (0usize, 0usize, 0u64, 0f64);
        let stats = train_step.run(accum, lr, |micro| {
            let mb = loader.next().context("data loader stopped early")??;
            debug_assert_eq!((mb.batch.step, mb.micro), (step, micro));
            rate = mb.batch.rate;
            tokens += mb
                .batch
                .attention_mask
                .iter()
                .map(|&m| m as u64)
                .sum::<u64>();
            let inputs = MlmInputs::from_batch(&mb.batch, &device)?;
            // Keyed by the micro-batch's index in the global batch: the same masks at any world size.
            let global_micro = (comm.rank() * accum + micro) as u64;
            let mut dropout = Some(dropout_for(
                args.data.seed,
                &[step, global_micro],
                cfg.dropout,
            ));
            let out = model.mlm_loss(&inputs, &mut dropout)?;
            correct += out.correct;
            predicted += out.predicted;
            Ok(out.loss)
        });
        let stats = match stats {
            Err(e) if e.is::<Diverged>() => {
                let last = checkpoint::list(&out)?
                    .pop()
                    .map(|(s, p)| format!("{} (step {s})", p.display()))
                    .unwrap_or_else(|| "none".into());
                bail!("{e} at step {step}; stopping. Last good checkpoint: {last}");
            }
            other => other?,
        };
        // The global numbers, and whether any rank was interrupted, in one collective.
        let mut sums = [
            stats.loss,
            correct as f64,
            predicted as f64,
            tokens as f64,
            interrupted.load(Ordering::SeqCst) as u8 as f64,
        ];
        let t_sums = Instant::now();
        comm.sum_f64(&mut sums)?;
        let sync_sec = stats.sync_sec + t_sums.elapsed().as_secs_f64();
        let [loss_sum, correct, predicted, tokens, stops] = sums;
        let (tokens, grad_norm) = (tokens as u64, stats.grad_norm);
        let secs = t_step.elapsed().as_secs_f64();
        tokens_total += tokens;
        last_loss = loss_sum;
        let accuracy = correct / predicted.max(1.0);
        log.write(&Record::Train {
            step,
            lr,
            mask_rate: rate,
            loss: loss_sum,
            accuracy,
            grad_norm,
            tokens_per_sec: tokens as f64 / secs,
            data_wait_sec: (loader.waited() - wait_before).as_secs_f64(),
            sync_sec: (comm.world_size() > 1).then_some(sync_sec),
        })?;
        bar.set_message(format!(
            "loss {loss_sum:.4} acc {accuracy:.3} rate {rate:.3} lr {lr:.2e} {:.0} tok/s",
            tokens as f64 / secs
        ));
        bar.inc(1);
        step += 1;
        let done = step == args.steps;
        if (args.eval_every > 0 && step.is_multiple_of(args.eval_every)) || done {
            if let Some(ev) = &evaluator {
                let (loss, acc) = ev.evaluate(&model, &device, &*comm)?;
                log.write(&Record::Eval {
                    step,
                    loss,
                    accuracy: acc,
                })?;
                bar.println(format!(
                    "step {step}: eval loss {loss:.4} accuracy {acc:.4}"
                ));
                final_eval = Some((loss, acc));
            }
        }
        if comm.world_size() > 1 && args.check_every > 0 && step.is_multiple_of(args.check_every) {
            ensure_same_parameters(&params, &*comm, step)?;
        }
        let stop = stops > 0.0;
        if done || (args.save_every > 0 && step.is_multiple_of(args.save_every)) || stop {
            let dir = save(train_step.optimizer(), step)?;
            if stop {
                bar.abandon();
                if let Some(dir) = dir {
                    eprintln!(
                        "interrupted: saved {}; continue with the same command plus --resume",
                        dir.display()
                    );
                }
                break;
            }
        }
    }
    bar.finish_and_clear();
    let waited = (loader.waited() - wait_at_start).as_secs_f64();
    drop(loader);
    let seconds = t0.elapsed().as_secs_f64();
    let summary = Summary {
        steps: step,
        final_train_loss: last_loss,
        final_eval,
        seconds,
        tokens_per_sec: tokens_total as f64 / seconds,
        data_wait_share: waited / seconds.max(1e-9),
    };
    if writer {
        write_file(
            &out.join("summary.json"),
            &serde_json::to_vec_pretty(&summary)?,
        )?;
    }
    Ok(summary)
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
