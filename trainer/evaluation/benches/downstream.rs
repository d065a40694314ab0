//! Downstream evaluation speed on CPU for `--model mini`: GLUE fine-tuning examples/s per task
//! (paper batch sizes, sequences as the task's own text makes them), dev evaluation examples/s,
//! BLiMP pairs/s, and the full-GLUE wall time these imply (every train example × the paper's
//! epochs, plus the dev sets).
//!
//! Run: `cargo bench -p maskrate-evaluation --bench downstream` (uses `../shared/data/{glue,blimp}` when
//! present, else the fixtures in `data/`). Weights are freshly initialised: speed does not depend
//! on them.

use candle_core::Device;
use evaluation::blimp::{evaluate, read_pairs};
use evaluation::finetune::{train_seed, FinetuneOptions, TaskData};
use evaluation::tasks::{present, read_tsv};
use model::BertConfig;
use std::path::{Path, PathBuf};
use training::saved_model::Pretrained;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SAMPLE: usize = 192;

fn data_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = root.join("../shared/data").join(name);
    if shared.exists() {
        shared
    } else {
        root.join("data").join(name)
    }
}

fn mini() -> Pretrained {
    let tokenizer = shared::tokenizer::LoadedTokenizer::load(None).unwrap();
    let config = BertConfig::from_preset("mini", tokenizer.info.vocab_size).unwrap();
    Pretrained::initialised(config, tokenizer, 0).unwrap()
}

fn main() {
    training::alloc::keep_freed_pages();
    let pre = mini();
    let glue = data_dir("glue");
    let opts = FinetuneOptions {
        seeds: 1,
        seed: 0,
        max_len: 256,
        warmup: 0.06,
        weight_decay: 5e-6,
        clip: 1.0,
        max_train: Some(SAMPLE),
        max_eval: Some(SAMPLE),
        epochs: Some(1),
        skip_bad_rows: true,
        predict_test: false,
        runtime: training::runtime::RuntimeArgs {
            device: "cpu".into(),
            quiet: true,
            kernels: model::ops::Kernels::Fused,
        },
    };
    println!("GLUE data: {}", glue.display());
    println!("| task | batch | mean tokens | train examples/s | eval examples/s | full train × epochs | estimated full fine-tune + dev (s) |");
    println!("|---|---|---|---|---|---|---|");
    let mut total = 0.0;
    for (task, dir) in present(&glue) {
        let data = TaskData::load(task, &dir, &pre, &opts, false).unwrap();
        let hyper = task.paper_hyper();
        let mean_tokens = data.train.iter().map(|(e, _)| e.ids.len()).sum::<usize>() as f64
            / data.train.len() as f64;
        let bar = indicatif::ProgressBar::hidden();
        let t = train_seed(
            &pre,
            &data,
            evaluation::tasks::Hyper { epochs: 1, ..hyper },
            &opts,
            0,
            &Device::Cpu,
            &bar,
        )
        .unwrap();
        let dev_n: usize = data.dev.iter().map(Vec::len).sum();
        let eval_rate = dev_n as f64 / t.result.eval_seconds;
        let full_train = read_tsv(task, &dir.join("train.tsv"), false, true)
            .unwrap()
            .examples
            .len();
        let full_dev: usize = task
            .dev_files()
            .iter()
            .map(|f| {
                read_tsv(task, &dir.join(f), false, true)
                    .unwrap()
                    .examples
                    .len()
            })
            .sum();
        let seconds = (full_train * hyper.epochs) as f64 / t.result.train_examples_per_sec
            + full_dev as f64 / eval_rate;
        total += seconds;
        println!(
            "| {task} | {} | {mean_tokens:.0} | {:.1} | {eval_rate:.1} | {full_train} × {} | {seconds:.0} |",
            hyper.batch_size, t.result.train_examples_per_sec, hyper.epochs
        );
    }
    println!(
        "\nEstimated full GLUE (tasks above, one seed, paper epochs) for mini: {:.0} s = {:.1} h",
        total,
        total / 3600.0
    );
    let pairs = read_pairs(&data_dir("blimp"), Some(20)).unwrap();
    let report = evaluate(&pre, &pairs, 256, &Device::Cpu, true).unwrap();
    println!(
        "BLiMP: {} pairs in {:.1} s = {:.1} pairs/s (full 55,000-pair set ≈ {:.0} s)",
        pairs.len(),
        report.seconds,
        report.pairs_per_sec,
        55_000.0 / report.pairs_per_sec
    );
}
