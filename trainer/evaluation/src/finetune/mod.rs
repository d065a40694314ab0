//! `trainer finetune`: fine-tunes a pretrained model on one GLUE task for one or more seeds and
//! evaluates on the dev set(s).
//!
//! Reads top to bottom: load weights → read and tokenize the task files once → per seed
//! { fresh head → epochs of shuffled batches → AdamW with warm-up + linear decay → dev metrics }
//! → mean ± std over seeds → `results.json` (+ fine-tuned weights, test predictions on request).
//!
//! One job per file: [`data`] (task files → tokenized examples), [`train`] (one seed's training
//! run), [`evaluate`] (predictions and dev metrics), [`output`] (saved model, test predictions,
//! progress bar); this file holds the flags, the results and the per-task driver.

mod data;
mod evaluate;
mod output;
mod train;

pub use data::TaskData;
pub use evaluate::{dev_metrics, majority_baseline, predict};
pub use output::{progress_bar, save_model, write_predictions};
pub use train::{train_seed, Trained};

use crate::scores;
use crate::tasks::{Hyper, Task};
use crate::CheckpointArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use training::runtime::RuntimeArgs;
use training::saved_model::{self, Pretrained};

/// Options shared by `finetune` and `glue`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct FinetuneOptions {
    /// Seeds per task (results are mean ± std over them).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// First seed (seeds are FIRST, FIRST+1, …).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Maximum tokens per example (the longer sentence of a pair is truncated first).
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Fraction of steps of linear warm-up (then linear decay to 0).
    #[arg(long, default_value_t = 0.06)]
    pub warmup: f64,
    /// Decoupled weight decay (none on biases and LayerNorm).
    #[arg(long, default_value_t = 5e-6)]
    pub weight_decay: f64,
    /// Gradient clipping by global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Use only this many training examples (a seeded random subset; for quick comparisons).
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Evaluate on only the first N dev examples of each dev file.
    #[arg(long)]
    pub max_eval: Option<usize>,
    /// Override the paper's epochs for every task.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Skip malformed TSV rows (counted in the results) instead of stopping.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Also write test-set predictions in the GLUE submission format (first seed's model).
    #[arg(long)]
    pub predict_test: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub runtime: RuntimeArgs,
}

/// `trainer finetune` flags.
#[derive(Debug, Clone, Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub source: CheckpointArgs,
    /// GLUE task: CoLA, SST-2, MRPC, STS-B, RTE, QNLI, MNLI, QQP or WNLI.
    #[arg(long)]
    pub task: String,
    /// The task's directory (train.tsv, dev.tsv, test.tsv).
    #[arg(long)]
    pub data: PathBuf,
    /// Start from this fine-tuned model (e.g. MNLI's, for RTE/MRPC/STS-B as in the paper).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Peak learning rate (default: the paper's for the task).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Examples per step (default: the paper's for the task).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Write the first seed's fine-tuned model (HuggingFace format) to OUT/model.
    #[arg(long)]
    pub save_model: bool,
    /// Output directory (default: CHECKPOINT/glue/TASK).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub opts: FinetuneOptions,
}

/// One seed's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Dev metrics by name (see [`Task::metric_names`]).
    pub metrics: BTreeMap<String, f64>,
    /// Mean training loss over the last epoch.
    pub final_train_loss: f64,
    /// Training examples per second (forward + backward + update).
    pub train_examples_per_sec: f64,
    /// Wall time of training.
    pub train_seconds: f64,
    /// Wall time of dev evaluation.
    pub eval_seconds: f64,
}

/// A task's outcome over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    /// The task.
    pub task: Task,
    /// Hyper-parameters used.
    pub hyper: Hyper,
    /// Options used.
    pub options: FinetuneOptions,
    /// Weights fine-tuned from.
    pub checkpoint: PathBuf,
    /// Fine-tuned model the run started from, if any.
    pub init_from: Option<PathBuf>,
    /// Training examples used / in the file.
    pub train_examples: usize,
    /// Dev examples per dev file.
    pub dev_examples: Vec<usize>,
    /// Malformed rows skipped.
    pub skipped_rows: usize,
    /// Per seed.
    pub seeds: Vec<SeedResult>,
    /// Mean of each metric over seeds.
    pub mean: BTreeMap<String, f64>,
    /// Sample standard deviation of each metric over seeds.
    pub std: BTreeMap<String, f64>,
    /// The task's GLUE score: mean over its metrics (leaderboard convention), averaged over seeds.
    pub score: f64,
}

/// Fine-tunes `task` from `start` (or `init_from`) over the configured seeds; writes
/// `out/results.json` and returns the result.
#[allow(clippy::too_many_arguments)]
pub fn run_task(
    pre: &Pretrained,
    init_from: Option<&Pretrained>,
    task: Task,
    dir: &Path,
    hyper: Hyper,
    opts: &FinetuneOptions,
    out: &Path,
    save_model_dir: Option<&Path>,
) -> Result<TaskResult> {
    let device = opts.runtime.device()?;
    let start = init_from.unwrap_or(pre);
    if start.config.vocab_size != pre.config.vocab_size {
        bail!("--init-from model's vocabulary differs from the checkpoint's");
    }
    let data = TaskData::load(task, dir, pre, opts, opts.predict_test)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let _lock = shared::lock::DirLock::acquire(out, "trainer finetune")?;
    let per_seed = (data.train.len() * hyper.epochs) as u64;
    let pb = progress_bar(per_seed * opts.seeds, opts.runtime.quiet);
    let mut seeds = Vec::new();
    for k in 0..opts.seeds.max(1) {
        let seed = opts.seed + k;
        let trained = train_seed(start, &data, hyper, opts, seed, &device, &pb)?;
        if k == 0 {
            if let Some(d) = save_model_dir {
                save_model(&trained, start, task, d)?;
            }
            if opts.predict_test {
                write_predictions(&trained, &data, pre.tokenizer.info.pad_id, &device, out)?;
            }
        }
        pb.println(format!("{task} seed {seed}: {}", fmt_seed(&trained.result)));
        seeds.push(trained.result);
    }
    pb.finish_and_clear();
    let (mean, std) = mean_std_over_seeds(task, &seeds);
    let score = mean.values().sum::<f64>() / mean.len().max(1) as f64;
    let result = TaskResult {
        task,
        hyper,
        options: opts.clone(),
        checkpoint: pre.source.clone(),
        init_from: init_from.map(|p| p.source.clone()),
        train_examples: data.train.len(),
        dev_examples: data.dev.iter().map(Vec::len).collect(),
        skipped_rows: data.skipped,
        seeds,
        mean,
        std,
        score,
    };
    shared::atomic::write_file(
        &out.join("results.json"),
        &serde_json::to_vec_pretty(&result)?,
    )?;
    Ok(result)
}

/// Each of the task's metrics as mean and standard deviation over the seeds' results.
fn mean_std_over_seeds(
    task: Task,
    seeds: &[SeedResult],
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let mut mean = BTreeMap::new();
    let mut std = BTreeMap::new();
    for name in task.metric_names() {
        let vals: Vec<f64> = seeds
            .iter()
            .filter_map(|s| s.metrics.get(*name).copied())
            .collect();
        let (m, s) = scores::mean_std(&vals);
        mean.insert(name.to_string(), m);
        std.insert(name.to_string(), s);
    }
    (mean, std)
}

/// A seed's metrics and training speed, for its progress line.
fn fmt_seed(r: &SeedResult) -> String {
    let speed = r.train_examples_per_sec;
    format!("{} ({speed:.0} examples/s)", fmt_metrics(&r.metrics))
}

/// `name value, …` with metrics ×100.
pub fn fmt_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {:.2}", v * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `trainer finetune`.
pub fn finetune(args: &FinetuneArgs) -> Result<TaskResult> {
    let task = Task::parse(&args.task)?;
    let pre = args.source.load()?;
    let init = args
        .init_from
        .as_deref()
        .map(|p| saved_model::load(p, args.source.tokenizer.as_deref()))
        .transpose()?;
    let mut hyper = task.paper_hyper();
    if let Some(lr) = args.lr {
        hyper.lr = lr;
    }
    if let Some(e) = args.opts.epochs {
        hyper.epochs = e;
    }
    if let Some(b) = args.batch_size {
        hyper.batch_size = b;
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.source.checkpoint.join("glue").join(task.dir_name()));
    let model_dir = out.join("model");
    run_task(
        &pre,
        init.as_ref(),
        task,
        &args.data,
        hyper,
        &args.opts,
        &out,
        args.save_model.then_some(model_dir.as_path()),
    )
}
