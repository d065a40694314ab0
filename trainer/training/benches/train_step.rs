//! Training throughput on CPU: tokens/s of full optimizer steps (forward, backward, AdamW) for
//! `mini` with micro-batch 32×L and `base` with 8×L (L = `--seq-len`, 128 by default), with the
//! time split by phase, on rows built from the bundled C4 sample.
//!
//! Run: `cargo bench -p maskrate-training --bench train_step` (add `-- mini` or `-- base` for one
//! model, `-- --steps N` for N measured steps instead of 6 for mini and 3 for base, `-- --arch
//! modernbert` for ModernBERT, `-- --layout truncate|pack|pack-docs` for the row layout).
//! "tokens/s" counts every position of the rows; "real tokens/s" only the non-padding ones (the
//! figure that tells layouts apart).
//! Threads: candle uses all cores (RAYON_NUM_THREADS / the machine's 2 here).

use candle_core::{Device, Tensor};
use model::ops::Dropout;
use model::MaskedLm;
use model::{Arch, BertConfig, Encoder, MlmInputs, ParamStore};
use shared::sampler::{Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences};
use shared::tokenizer::LoadedTokenizer;
use std::time::Instant;
use training::optim::{AdamW, AdamWConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `-- [mini] [base] [--steps N] [--arch A] [--layout L] [--seq-len N] [--rows N]`.
#[derive(clap::Parser)]
struct BenchArgs {
    /// Models to run (default: mini and base).
    models: Vec<String>,
    /// Measured steps per model (default: 6 for mini, 3 for base).
    #[arg(long)]
    steps: Option<usize>,
    /// Architecture: bert or modernbert.
    #[arg(long, default_value = "bert")]
    arch: String,
    /// Row layout: truncate, pack or pack-docs.
    #[arg(long, default_value = "pack")]
    layout: String,
    /// Tokens per row.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Rows per micro-batch (default: 32 for mini, 8 for base).
    #[arg(long)]
    rows: Option<usize>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    training::alloc::keep_freed_pages();
    let args = <BenchArgs as clap::Parser>::parse();
    let arch = Arch::parse(&args.arch).unwrap_or_else(|e| panic!("{e}"));
    let layout: Layout = args.layout.parse().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let set = shared::fixtures::write_set(dir.path(), &shared::fixtures::sample_docs(), 100);
    let tok = LoadedTokenizer::load(None).unwrap();
    let dev = Device::Cpu;
    println!(
        "{} · layout {layout} · {} tokens per row",
        arch.name(),
        args.seq_len
    );
    println!("| model | micro-batch | tokens/s | real tokens % | real tokens/s | step ms | forward ms | backward ms | optimizer ms | batch build ms | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut models = args.models.clone();
    if models.is_empty() {
        models = vec!["mini".into(), "base".into()];
    }
    for name in &models {
        let (default_rows, default_steps) = if name == "base" || name == "large" {
            (8, 3)
        } else {
            (32, 6)
        };
        let rows = args.rows.unwrap_or(default_rows);
        let steps = args.steps.unwrap_or(default_steps);
        let seq_len = args.seq_len;
        let seqs = Sequences::new(set.clone(), &tok.info, layout, seq_len, 1).unwrap();
        let cfg = SamplerConfig {
            seed: 0,
            global_batch: rows,
            total_steps: 1000,
            schedule: "constant:0.15".parse().unwrap(),
            masking: MaskingConfig::default(),
            order: Default::default(),
            rate_dist: Default::default(),
            rate_per_document: false,
        };
        let sampler = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&tok), cfg).unwrap();
        let mcfg = BertConfig::from_arch_preset(arch, name, tok.info.vocab_size)
            .unwrap_or_else(|| panic!("no preset {name}"));
        let params = ParamStore::new(&dev, 0);
        let model = Encoder::new(mcfg, &params).unwrap();
        let mut opt = AdamW::new(
            params.named_vars(),
            AdamWConfig {
                peak_lr: 5e-4,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-6,
                weight_decay: 1e-5,
            },
        )
        .unwrap();
        let (mut fwd, mut bwd, mut upd, mut data, mut total) = (0f64, 0f64, 0f64, 0f64, 0f64);
        let mut real_tokens = 0usize;
        for step in 0..steps + 1 {
            let t0 = Instant::now();
            let batch = sampler.global_batch(step as u64).unwrap();
            let inputs = MlmInputs::from_batch(&batch, &dev).unwrap();
            let t1 = Instant::now();
            let dropout = Dropout::new(0, &[step as u64], model.config().dropout);
            let out = model.mlm_loss(&inputs, Some(&dropout)).unwrap();
            let loss = out.mean_loss().unwrap();
            let _ = loss.to_scalar::<f32>().unwrap();
            let t2 = Instant::now();
            let g = loss.backward().unwrap();
            let grads: Vec<Tensor> = opt
                .vars()
                .iter()
                .map(|v| g.get(v.as_tensor()).cloned().unwrap())
                .collect();
            let t3 = Instant::now();
            opt.step(&grads, 5e-4).unwrap();
            let t4 = Instant::now();
            if step > 0 {
                // step 0 is warm-up
                data += (t1 - t0).as_secs_f64();
                fwd += (t2 - t1).as_secs_f64();
                bwd += (t3 - t2).as_secs_f64();
                upd += (t4 - t3).as_secs_f64();
                total += (t4 - t0).as_secs_f64();
                real_tokens += batch.attention_mask.iter().filter(|&&m| m != 0).count();
            }
        }
        let n = steps as f64;
        let positions = (rows * seq_len) as f64 * n;
        // SAFETY: getrusage writes only into the zeroed struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        println!(
            "| {name} | {rows}x{seq_len} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
            positions / total,
            100.0 * real_tokens as f64 / positions,
            real_tokens as f64 / total,
            total / n * 1e3,
            fwd / n * 1e3,
            bwd / n * 1e3,
            upd / n * 1e3,
            data / n * 1e3,
            usage.ru_maxrss as f64 / 1024.0
        );
    }
}
