//! One seed's fine-tuning run: fresh head, shuffled epochs, AdamW, dev metrics.

use super::*;
use crate::classifier::{bind, build, Classifier, Encoded, PairBatch};
use crate::tasks::{Hyper, Label, Task};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use model::ops::Dropout;
use model::ParamStore;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use shared::schedule::LrSchedule;
use shared::seed::seed_of;
use std::time::Instant;
use training::dist::SingleProcess;
use training::optim::{AdamW, AdamWConfig};
use training::saved_model::Pretrained;
use training::step::{Diverged, TrainStep};

/// Seed tag of the per-epoch example order.
const SHUFFLE_TAG: u64 = 0x5348_5546;

pub(super) fn shuffle<T>(v: &mut [T], rng: &mut Xoshiro256PlusPlus) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
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

/// AdamW (betas 0.9/0.98, eps 1e-6) over the encoder and the new head; the MLM head's own
/// tensors (BERT's `cls.`, ModernBERT's `decoder.`) are not trained.
fn train_step_for(params: &ParamStore, hyper: Hyper, opts: &FinetuneOptions) -> Result<TrainStep> {
    let vars: Vec<_> = params
        .named_vars()
        .into_iter()
        .filter(|(n, _)| !crate::classifier::mlm_head_only(n))
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
    Ok(TrainStep::new(
        opt,
        opts.clip,
        std::rc::Rc::new(SingleProcess),
    ))
}

/// The task's metrics on each of its dev sets.
fn evaluate_dev(
    model: &Classifier,
    data: &TaskData,
    pad: u32,
    device: &Device,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut outputs = Vec::new();
    let mut gold = Vec::new();
    for dev in &data.dev {
        let items: Vec<&Encoded> = dev.iter().map(|(e, _)| e).collect();
        outputs.push(predict(model, &items, pad, 64, device)?);
        gold.push(dev.iter().map(|(_, l)| *l).collect::<Vec<_>>());
    }
    Ok(dev_metrics(data.task, &outputs, &gold))
}

/// Fine-tunes from `start` on `data` with one seed and evaluates on the dev sets.
/// Kept whole: the fine-tuning loop reads top to bottom like the paper's recipe.
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
    let mut train_step = train_step_for(&params, hyper, opts)?;
    let n = data.train.len();
    let bs = hyper.batch_size.max(1);
    let total = (n.div_ceil(bs) * hyper.epochs) as u64;
    let sched = LrSchedule {
        peak: hyper.lr,
        warmup_steps: (opts.warmup * total as f64).ceil() as u64,
        total_steps: total,
        final_ratio: 0.0,
        decay: Default::default(),
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
            let mean_of_one = train_step.micro_batches_over_ranks(1);
            let stats = train_step.run(1, mean_of_one, sched.lr(step), |_| {
                let dropout = Dropout::new(seed, &[step], start.config.dropout);
                let out = model.forward(&batch, Some(&dropout))?;
                loss_of(task, &out, &labels, device)
            });
            // Fine-tuning steps are small: each one's loss is read (and checked) at once.
            let value = match stats.and_then(|s| s.read()) {
                Err(e) if e.is::<Diverged>() => bail!("{task} seed {seed}: {e} at step {step}"),
                other => other?.0,
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
    let metrics = evaluate_dev(&model, data, pad, device)?;
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
