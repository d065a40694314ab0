//! Dumps what a `trainer` run starts from, for `scripts/hf_equivalence.py`: the step-0 parameters
//! (HF `BertForMaskedLM` names, tied decoder added), the masked batches of steps `0..N` and the
//! held-out evaluation batches, exactly as the trainer with the same flags builds them.
//!
//! ```text
//! cargo run --release -p trainer --example reference_dump -- \
//!     --dump ref/ --dump-steps 50 <the trainer flags of the run to compare>
//! ```
//!
//! Writes `ref/init.safetensors`, `ref/batches.safetensors` (`input_ids`, `attention_mask`,
//! `labels`: `[N, batch, seq_len]` i64, label -100 where nothing is predicted), without dropout
//! `ref/grads0.safetensors` (step 0's gradients),
//! `ref/eval.safetensors` (the same for the held-out set) and `ref/config.json` (model and
//! optimiser settings, learning rate of every step).

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use model::MaskedLm;
use model::{Encoder, MlmInputs, ParamStore};
use shared::sampler::Batch;
use std::collections::HashMap;
use std::path::PathBuf;
use training::pretrain::TrainArgs;

#[derive(Parser)]
struct Args {
    /// Output directory.
    #[arg(long)]
    dump: PathBuf,
    /// Steps whose batches are written.
    #[arg(long)]
    dump_steps: u64,
    #[command(flatten)]
    train: TrainArgs,
}

/// `[batches, rows, seq_len]` i64 tensors of the batches' ids, attention masks and labels.
fn stack(batches: &[Batch]) -> Result<HashMap<String, Tensor>> {
    let (n, rows, len) = (batches.len(), batches[0].rows(), batches[0].seq_len);
    let cat = |f: &dyn Fn(&Batch) -> Vec<i64>| -> Result<Tensor> {
        let v: Vec<i64> = batches.iter().flat_map(f).collect();
        Ok(Tensor::from_vec(v, (n, rows, len), &Device::Cpu)?)
    };
    let mut tensors = HashMap::new();
    if !batches[0].segment_starts.is_empty() {
        // pack-docs: each token's position (restarting per segment) and segment id (unique in
        // its batch), from which the script builds transformers' block-diagonal masks.
        let layouts = batches
            .iter()
            .map(|b| model::TokenLayout::of_segments(&b.segment_starts, rows, len, &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let stacked = |pick: fn(&model::TokenLayout) -> Option<&Tensor>| -> Result<Tensor> {
            let parts: Vec<Tensor> = layouts.iter().filter_map(pick).cloned().collect();
            Ok(Tensor::stack(&parts, 0)?.to_dtype(candle_core::DType::I64)?)
        };
        tensors.insert(
            "position_ids".to_string(),
            stacked(|l| l.positions.as_ref())?,
        );
        tensors.insert("segment_ids".to_string(), stacked(|l| l.segments.as_ref())?);
    }
    tensors.extend([
        (
            "input_ids".to_string(),
            cat(&|b| b.input_ids.iter().map(|&x| x as i64).collect())?,
        ),
        (
            "attention_mask".to_string(),
            cat(&|b| b.attention_mask.iter().map(|&x| x as i64).collect())?,
        ),
        (
            "labels".to_string(),
            cat(&|b| b.labels.iter().map(|&x| x as i64).collect())?,
        ),
    ]);
    Ok(tensors)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let t = &args.train;
    std::fs::create_dir_all(&args.dump)?;
    anyhow::ensure!(
        t.eval_shards.is_none(),
        "--eval-shards is not supported here"
    );
    let data = t.data.config.open().context("opening the shards")?;
    let cfg = t.model_config(
        data.tokenizer.info.vocab_size,
        data.phase_plan.max_seq_len(),
    )?;
    let params = ParamStore::new(&Device::Cpu, t.data.config.seed);
    let model = Encoder::new(cfg, &params)?;
    let init = training::export::with_tied_decoder(
        params
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect(),
    );
    candle_core::safetensors::save(&init, args.dump.join("init.safetensors"))?;

    let steps: Vec<Batch> = (0..args.dump_steps.min(t.steps()))
        .map(|s| data.sampler.global_batch(s))
        .collect::<shared::Result<_>>()?;
    candle_core::safetensors::save(&stack(&steps)?, args.dump.join("batches.safetensors"))?;
    if cfg.dropout == 0.0 && t.micro_batch >= t.batch_size() {
        // Step 0's gradients (before clipping), as the trainer computes them.
        let inputs = MlmInputs::from_batch(&steps[0], &Device::Cpu)?;
        let grads = model.mlm_loss(&inputs, None)?.mean_loss()?.backward()?;
        let by_name: HashMap<String, Tensor> = params
            .named_vars()
            .into_iter()
            .filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n, g.clone())))
            .collect();
        candle_core::safetensors::save(&by_name, args.dump.join("grads0.safetensors"))?;
    }
    let evaluator =
        training::held_out::Evaluator::new(data.held_out, &data.tokenizer, t.eval_batch, 0)?
            .context("no held-out set: pass --eval-sequences")?;
    let eval: Vec<Batch> = evaluator.batches().collect::<shared::Result<_>>()?;
    candle_core::safetensors::save(&stack(&eval)?, args.dump.join("eval.safetensors"))?;

    let lr = t.lr_schedule();
    let info = &data.tokenizer.info;
    let config = serde_json::json!({
        "model": cfg,
        // transformers' config for ModernBertForMaskedLM (null for BERT, built by the script).
        "hf_config": (cfg.arch == model::Arch::ModernBert)
            .then(|| model::encoder::hf_config(&cfg, "ForMaskedLM", [info.pad_id, info.cls_id, info.sep_id, info.mask_id], serde_json::json!({}))),
        "pad_token_id": data.tokenizer.info.pad_id,
        "train": t,
        "lr": (0..t.steps()).map(|s| lr.lr(s)).collect::<Vec<f64>>(),
    });
    std::fs::write(
        args.dump.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    eprintln!(
        "wrote {} ({} steps of {} sequences, {} eval batches)",
        args.dump.display(),
        steps.len(),
        t.batch_size(),
        eval.len()
    );
    Ok(())
}
