//! Everything before the first step: the device and the job's collectives, the run directory's
//! lock, the data (with its held-out set), and the model with its optimizer.

use super::TrainArgs;
use crate::data::Data;
use crate::device;
use crate::dist::{self, Collective};
use crate::optim::{AdamW, AdamWConfig};
use crate::step::TrainStep;
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use model::{BertConfig, Encoder, ParamStore};
use shared::lock::DirLock;
use shared::sampler::{BatchPlan, Sequences};
use shared::shard::ShardSet;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// Where this rank computes and whom it computes with.
pub struct Environment {
    /// The device of this rank.
    pub device: Device,
    /// The job's collectives on that device.
    pub comm: Rc<dyn Collective>,
    /// Whether this rank writes the run's files (rank 0).
    pub writer: bool,
    /// The dtype of matrix products (`--precision`).
    pub compute: DType,
    /// Held while the run lasts: a second trainer on the same directory is refused.
    pub _lock: Option<DirLock>,
}

impl Environment {
    /// Picks the device (first: a missing GPU leaves no empty run directory behind), locks the
    /// run directory on the writing rank and reports the rank's place in a multi-process job.
    pub fn new(args: &TrainArgs, out: &Path, comm: Rc<dyn Collective>) -> Result<Self> {
        let writer = dist::is_writer(&*comm);
        args.runtime.apply_kernels();
        let device = args.runtime.device_for_rank(comm.local_rank())?;
        let comm = comm.for_device(&device)?;
        let _lock = if writer {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            Some(DirLock::acquire(out, "trainer train")?)
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
        if compute != DType::F32 && device.is_cpu() {
            eprintln!(
                "warning: --precision {} on the CPU: candle widens bf16 products to f32 there, so \
                 this is slower than fp32 (useful to test the bf16 path)",
                args.precision
            );
        }
        Ok(Environment {
            device,
            comm,
            writer,
            compute,
            _lock,
        })
    }
}

/// The shards, sampler and held-out sequences (from `--eval-shards` when given), checked
/// against the manifests' checksums with `--verify-shards` (a progress bar unless `quiet`).
pub fn open_data(args: &TrainArgs, quiet: bool) -> Result<Data> {
    let config = &args.data.config;
    let held_out_of_training = if args.eval_shards.is_some() {
        0
    } else {
        config.eval_sequences
    };
    let mut data = config.open_with_holdout(held_out_of_training)?;
    if let Some(dir) = &args.eval_shards {
        data.held_out = vec![(String::new(), eval_sequences_from(dir, args, &data)?)];
    }
    if args.verify_shards {
        for (_, shards) in &data.sources {
            verify_shards(shards, quiet)?;
        }
    }
    Ok(data)
}

/// The last `--eval-sequences` sequences of a separate shard set, laid out like the training data.
fn eval_sequences_from(dir: &Path, args: &TrainArgs, data: &Data) -> Result<Sequences> {
    let set = args
        .data
        .config
        .open_shards(std::slice::from_ref(&dir.to_path_buf()))
        .with_context(|| format!("--eval-shards {}", dir.display()))?;
    let config = &args.data.config;
    set.tokenizer()
        .ensure_same(data.shards.tokenizer(), dir, &config.shards[0].dir)?;
    let all = config.sequences(Arc::new(set), &data.tokenizer.info)?;
    if config.eval_sequences == 0 || config.eval_sequences >= all.len() {
        return Ok(all);
    }
    let (_, tail) = all.split_tail(config.eval_sequences)?;
    Ok(tail)
}

/// Hashes every shard file against its manifest, with a progress bar in bytes.
fn verify_shards(shards: &ShardSet, quiet: bool) -> Result<()> {
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

/// The model, its parameters and the optimisation step that updates them.
pub struct Model {
    /// Sizes (with the tokenizer's vocabulary).
    pub cfg: BertConfig,
    /// The parameters, drawn from `--seed` (or loaded on resume).
    pub params: ParamStore,
    /// The network (BERT or ModernBERT, as `cfg.arch` says).
    pub bert: Encoder,
    /// AdamW with clipping and the gradient reduction across ranks.
    pub train_step: TrainStep,
    /// How each step's global batch splits over ranks and micro-batches.
    pub plan: BatchPlan,
}

impl Model {
    /// A freshly initialised model for `data`'s vocabulary on `env`'s device.
    pub fn new(args: &TrainArgs, data: &Data, env: &Environment) -> Result<Self> {
        let longest = data.phase_plan.max_seq_len();
        let cfg = args.model_config(data.tokenizer.info.vocab_size, longest)?;
        let world_size = env.comm.world_size();
        // Each step's plan is this one for the step's batch size (phases may change it).
        let plan = BatchPlan {
            global_batch: args.batch_size(),
            world_size,
            rank: env.comm.rank(),
            micro_batch: args.micro_batch,
        };
        for (k, phase) in data.sampler.phases().iter().enumerate() {
            plan.for_global_batch(phase.global_batch)
                .validate()
                .map_err(|e| match data.sampler.phases().len() {
                    1 => anyhow::anyhow!(e),
                    _ => anyhow::anyhow!("phase {}: {e}", k + 1),
                })?;
        }
        let params =
            ParamStore::new(&env.device, args.data.config.seed).with_compute_dtype(env.compute);
        let bert = Encoder::new(cfg, &params)?;
        let opt = AdamW::new(
            params.named_vars(),
            AdamWConfig {
                peak_lr: args.lr,
                beta1: args.beta1,
                beta2: args.beta2,
                eps: args.eps,
                weight_decay: args.weight_decay,
            },
        )?
        .with_copies(params.named_compute_vars())?;
        let train_step = TrainStep::new(opt, args.clip, env.comm.clone());
        Ok(Model {
            cfg,
            params,
            bert,
            train_step,
            plan,
        })
    }
}
