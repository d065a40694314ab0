//! `trainer finetune`: fine-tunes a pretrained model on one GLUE task for one or more seeds and
//! evaluates on the dev set(s).
//!
//! Reads top to bottom: load weights → read and tokenize the task files once → per seed
//! { fresh head → epochs of shuffled batches → AdamW with warm-up + linear decay → dev metrics }
//! → mean ± std over seeds → `results.json` (+ fine-tuned weights, test predictions on request).

use crate::classifier::{bind, build, encode_all, Classifier, Encoded, PairBatch};
use crate::scores;
use crate::tasks::{read_tsv, Example, Hyper, Label, Task};
use crate::CheckpointArgs;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use shared::schedule::LrSchedule;
use shared::seed::seed_of;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use training::dist::SingleProcess;
use training::optim::{AdamW, AdamWConfig};
use training::pretrained::{self, Pretrained};
use training::runtime::RuntimeArgs;
use training::step::{dropout_for, Diverged, TrainStep};

const SHUFFLE_TAG: u64 = 0x5348_5546;
const SUBSET_TAG: u64 = 0x5355_4253;

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

/// A task's files, read and tokenized once.
pub struct TaskData {
    /// The task.
    pub task: Task,
    /// Training inputs and labels.
    pub train: Vec<(Encoded, Label)>,
    /// Dev sets (MNLI: matched, mismatched).
    pub dev: Vec<Vec<(Encoded, Label)>>,
    /// Test sets with their submission file names and row ids.
    pub test: Vec<(String, Vec<(Encoded, String)>)>,
    /// Rows skipped as malformed.
    pub skipped: usize,
}

fn encode_examples(pre: &Pretrained, examples: &[Example], max_len: usize) -> Result<Vec<Encoded>> {
    let inputs: Vec<(&str, Option<&str>)> = examples
        .iter()
        .map(|e| (e.a.as_str(), e.b.as_deref()))
        .collect();
    encode_all(&pre.tokenizer.tokenizer, &inputs, max_len)
}

impl TaskData {
    /// Reads `dir`'s train, dev (and, if `with_test`, test) files and tokenizes them.
    pub fn load(
        task: Task,
        dir: &Path,
        pre: &Pretrained,
        opts: &FinetuneOptions,
        with_test: bool,
    ) -> Result<Self> {
        let mut skipped = 0;
        let mut read = |name: &str, test: bool| -> Result<Vec<Example>> {
            let f = read_tsv(task, &dir.join(name), test, opts.skip_bad_rows)?;
            for s in &f.skipped {
                eprintln!("skipped: {s}");
            }
            skipped += f.skipped.len();
            Ok(f.examples)
        };
        let mut train_ex = read("train.tsv", false)?;
        if let Some(n) = opts.max_train {
            if n < train_ex.len() {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed_of(&[opts.seed, SUBSET_TAG]));
                shuffle(&mut train_ex, &mut rng);
                train_ex.truncate(n);
            }
        }
        if train_ex.is_empty() {
            bail!("{}: no training examples", dir.join("train.tsv").display());
        }
        let pair = |ex: Vec<Example>, enc: Vec<Encoded>| -> Vec<(Encoded, Label)> {
            enc.into_iter()
                .zip(ex.into_iter().map(|e| e.label))
                .collect()
        };
        let enc = encode_examples(pre, &train_ex, opts.max_len)?;
        let train = pair(train_ex, enc);
        let mut dev = Vec::new();
        for name in task.dev_files() {
            let mut ex = read(name, false)?;
            if let Some(n) = opts.max_eval {
                ex.truncate(n);
            }
            let enc = encode_examples(pre, &ex, opts.max_len)?;
            dev.push(pair(ex, enc));
        }
        let mut test = Vec::new();
        if with_test {
            for (file, submission) in task.test_files() {
                let ex = read(file, true)?;
                let enc = encode_examples(pre, &ex, opts.max_len)?;
                test.push((
                    submission.to_string(),
                    enc.into_iter().zip(ex.into_iter().map(|e| e.id)).collect(),
                ));
            }
        }
        Ok(TaskData {
            task,
            train,
            dev,
            test,
            skipped,
        })
    }
}

fn shuffle<T>(v: &mut [T], rng: &mut Xoshiro256PlusPlus) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Model outputs `[N][outputs]` for `items`, in batches of `batch`, without dropout.
pub fn predict(
    model: &Classifier,
    items: &[&Encoded],
    pad_id: u32,
    batch: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let b = PairBatch::new(chunk, pad_id, device)?;
        let logits = model.forward(&b, &mut None)?.to_dtype(DType::F32)?;
        out.extend(logits.to_vec2::<f32>()?);
    }
    Ok(out)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// The task's metrics from model outputs on each dev set.
pub fn dev_metrics(
    task: Task,
    outputs: &[Vec<Vec<f32>>],
    gold: &[Vec<Label>],
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let classes = |o: &[Vec<f32>], g: &[Label]| -> (Vec<usize>, Vec<usize>) {
        let pred = o.iter().map(|r| argmax(r)).collect();
        let gold = g
            .iter()
            .map(|l| match l {
                Label::Class(c) => *c,
                _ => usize::MAX,
            })
            .collect();
        (pred, gold)
    };
    match task {
        Task::Stsb => {
            let pred: Vec<f64> = outputs[0].iter().map(|r| r[0] as f64).collect();
            let gold: Vec<f64> = gold[0]
                .iter()
                .map(|l| match l {
                    Label::Score(s) => *s,
                    _ => f64::NAN,
                })
                .collect();
            m.insert("pearson".into(), scores::pearson(&pred, &gold));
            m.insert("spearman".into(), scores::spearman(&pred, &gold));
        }
        Task::Mnli => {
            for (i, name) in ["accuracy_m", "accuracy_mm"].iter().enumerate() {
                if let (Some(o), Some(g)) = (outputs.get(i), gold.get(i)) {
                    let (p, g) = classes(o, g);
                    m.insert(name.to_string(), scores::accuracy(&p, &g));
                }
            }
        }
        _ => {
            let (p, g) = classes(&outputs[0], &gold[0]);
            match task {
                Task::CoLA => {
                    m.insert("mcc".into(), scores::matthews(&p, &g));
                }
                Task::Mrpc | Task::Qqp => {
                    m.insert("f1".into(), scores::f1(&p, &g));
                    m.insert("accuracy".into(), scores::accuracy(&p, &g));
                }
                _ => {
                    m.insert("accuracy".into(), scores::accuracy(&p, &g));
                }
            }
        }
    }
    m
}

fn loss_of(task: Task, out: &Tensor, labels: &[Label], device: &Device) -> Result<Tensor> {
    if task.is_regression() {
        let y: Vec<f32> = labels
            .iter()
            .map(|l| match l {
                Label::Score(s) => *s as f32,
                _ => 0.0,
            })
            .collect();
        let y = Tensor::from_vec(y, labels.len(), device)?;
        Ok((out.squeeze(1)? - y)?.sqr()?.mean_all()?)
    } else {
        let y: Vec<u32> = labels
            .iter()
            .map(|l| match l {
                Label::Class(c) => *c as u32,
                _ => 0,
            })
            .collect();
        let y = Tensor::from_vec(y, labels.len(), device)?;
        Ok(candle_nn::loss::cross_entropy(out, &y)?)
    }
}

/// What one seed's training produced.
pub struct Trained {
    /// The model.
    pub model: Classifier,
    /// Its parameters.
    pub params: model::ParamStore,
    /// The seed's result.
    pub result: SeedResult,
}

/// Fine-tunes from `start` on `data` with one seed and evaluates on the dev sets.
pub fn train_seed(
    start: &Pretrained,
    data: &TaskData,
    hyper: Hyper,
    opts: &FinetuneOptions,
    seed: u64,
    device: &Device,
    progress: &ProgressBar,
) -> Result<Trained> {
    let task = data.task;
    let (params, model) = build(start.config, task.num_outputs(), device, seed)?;
    bind(&params, start)?;
    let vars: Vec<_> = params
        .named_vars()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("cls."))
        .collect();
    let opt = AdamW::new(
        vars,
        AdamWConfig {
            peak_lr: hyper.lr,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: opts.weight_decay,
        },
    )?;
    let mut train_step = TrainStep::new(opt, opts.clip, std::rc::Rc::new(SingleProcess));
    let n = data.train.len();
    let bs = hyper.batch_size.max(1);
    let steps_per_epoch = n.div_ceil(bs);
    let total = (steps_per_epoch * hyper.epochs) as u64;
    let sched = LrSchedule {
        peak: hyper.lr,
        warmup_steps: (opts.warmup * total as f64).ceil() as u64,
        total_steps: total,
        final_ratio: 0.0,
    };
    let pad = start.tokenizer.info.pad_id;
    let t0 = Instant::now();
    let mut step = 0u64;
    let mut last_epoch_loss = f64::NAN;
    for epoch in 0..hyper.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(seed_of(&[seed, SHUFFLE_TAG, epoch as u64]));
        shuffle(&mut order, &mut rng);
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        for idx in order.chunks(bs) {
            let items: Vec<&Encoded> = idx.iter().map(|&i| &data.train[i].0).collect();
            let labels: Vec<Label> = idx.iter().map(|&i| data.train[i].1).collect();
            let batch = PairBatch::new(&items, pad, device)?;
            let stats = train_step.run(1, sched.lr(step), |_| {
                let mut dropout = Some(dropout_for(seed, &[step], start.config.dropout));
                let out = model.forward(&batch, &mut dropout)?;
                loss_of(task, &out, &labels, device)
            });
            let value = match stats {
                Err(e) if e.is::<Diverged>() => bail!("{task} seed {seed}: {e} at step {step}"),
                other => other?.loss,
            };
            loss_sum += value;
            batches += 1;
            step += 1;
            progress.inc(idx.len() as u64);
            progress.set_message(format!("{task} seed {seed} loss {value:.4}"));
        }
        last_epoch_loss = loss_sum / batches.max(1) as f64;
    }
    let train_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut outputs = Vec::new();
    let mut gold = Vec::new();
    for dev in &data.dev {
        let items: Vec<&Encoded> = dev.iter().map(|(e, _)| e).collect();
        outputs.push(predict(&model, &items, pad, 64, device)?);
        gold.push(dev.iter().map(|(_, l)| *l).collect::<Vec<_>>());
    }
    let metrics = dev_metrics(task, &outputs, &gold);
    Ok(Trained {
        model,
        params,
        result: SeedResult {
            seed,
            metrics,
            final_train_loss: last_epoch_loss,
            train_examples_per_sec: (n * hyper.epochs) as f64 / train_seconds.max(1e-9),
            train_seconds,
            eval_seconds: t1.elapsed().as_secs_f64(),
        },
    })
}

/// Writes a fine-tuned model in HuggingFace `BertForSequenceClassification` layout (loadable by
/// `transformers` and by `--init-from`).
pub fn save_model(trained: &Trained, start: &Pretrained, task: Task, dir: &Path) -> Result<()> {
    let tensors: std::collections::HashMap<String, Tensor> = trained
        .params
        .named_vars()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("cls."))
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let labels = task.labels();
    let hf = start.config.hf_config_json(
        "BertForSequenceClassification",
        start.tokenizer.info.pad_id,
        serde_json::json!({
            "num_labels": task.num_outputs(),
            "problem_type": if task.is_regression() { "regression" } else { "single_label_classification" },
            "id2label": labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.to_string())).collect::<BTreeMap<_, _>>(),
            "maskrate_task": task.dir_name(),
        }),
    );
    shared::atomic::write_dir(dir, |tmp| -> Result<()> {
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
        std::fs::write(tmp.join("config.json"), serde_json::to_vec_pretty(&hf)?)?;
        std::fs::write(
            tmp.join(shared::tokenizer::TOKENIZER_FILE),
            &start.tokenizer.json,
        )?;
        Ok(())
    })
    .with_context(|| format!("writing the fine-tuned model {}", dir.display()))
}

/// Writes the GLUE submission files (`index<TAB>prediction`) for the test sets.
pub fn write_predictions(
    trained: &Trained,
    data: &TaskData,
    pad: u32,
    device: &Device,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, rows) in &data.test {
        let items: Vec<&Encoded> = rows.iter().map(|(e, _)| e).collect();
        let out = predict(&trained.model, &items, pad, 64, device)?;
        let mut text = String::from("index\tprediction\n");
        for ((_, id), o) in rows.iter().zip(&out) {
            let p = if data.task.is_regression() {
                format!("{:.3}", o[0].clamp(0.0, 5.0))
            } else {
                data.task.labels()[argmax(o)].to_string()
            };
            text.push_str(&format!("{id}\t{p}\n"));
        }
        let path = dir.join(name);
        shared::atomic::write_file(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// A progress bar over `total` training examples.
pub fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} examples {per_sec} ETA {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb
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
        pb.println(format!(
            "{task} seed {seed}: {} ({:.0} examples/s)",
            fmt_metrics(&trained.result.metrics),
            trained.result.train_examples_per_sec
        ));
        seeds.push(trained.result);
    }
    pb.finish_and_clear();
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
        .map(|p| pretrained::load(p, args.source.tokenizer.as_deref()))
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

/// Accuracy of always predicting the most frequent class in `labels`.
pub fn majority_baseline(labels: &[Label]) -> f64 {
    let mut counts = BTreeMap::new();
    for l in labels {
        if let Label::Class(c) = l {
            *counts.entry(*c).or_insert(0usize) += 1;
        }
    }
    counts.values().max().copied().unwrap_or(0) as f64 / labels.len().max(1) as f64
}
