//! `trainer export RUN --out DIR`: a HuggingFace `BertForMaskedLM` (or, for `--arch modernbert`
//! runs, `ModernBertForMaskedLM`) checkpoint (`model.safetensors`, `config.json`, tokenizer files)
//! from a run's latest checkpoint.
//!
//! Parameter names are already HF's; the export adds the tied decoder entries
//! (`cls.predictions.decoder.weight` = word embeddings, `cls.predictions.decoder.bias` = bias;
//! ModernBERT's `decoder.weight` = token embeddings) and,
//! for checking, maskrate's logits on a fixed input (`maskrate_check.safetensors`), which
//! `scripts/compare_hf.py` compares with `transformers`.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use model::BertConfig;
use model::MaskedLm;
use shared::atomic::{write_file, write_with};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Token ids of the check input (a fixed, valid sequence for any vocabulary ≥ 1,000): 16 tokens
/// for BERT; for ModernBERT longer than its local window, so that local layers hide keys.
pub fn check_input_ids(cfg: &BertConfig) -> Vec<u32> {
    let len = match cfg.arch {
        model::Arch::Bert => 16,
        model::Arch::ModernBert => (cfg.modern.local_window + 72).min(cfg.max_position_embeddings),
    };
    (0..len as u32)
        .map(|i| (101 + i * 37) % cfg.vocab_size as u32)
        .collect()
}

/// maskrate's parameters plus the HF decoder entries tied to them
/// (`cls.predictions.decoder.weight` = word embeddings, `cls.predictions.decoder.bias` = bias).
pub fn with_tied_decoder(mut tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if let Some(w) = tensors
        .get("bert.embeddings.word_embeddings.weight")
        .cloned()
    {
        tensors.insert("cls.predictions.decoder.weight".into(), w);
    }
    if let Some(b) = tensors.get("cls.predictions.bias").cloned() {
        tensors.insert("cls.predictions.decoder.bias".into(), b);
    }
    // ModernBERT: `decoder.weight` is tied to the token embeddings (`decoder.bias` is its own).
    if let Some(w) = tensors
        .get("model.embeddings.tok_embeddings.weight")
        .cloned()
    {
        tensors.insert("decoder.weight".into(), w);
    }
    tensors
}

/// Exports `run`'s latest checkpoint (read by the same loader as `glue`/`blimp`) into `out`;
/// returns the files written.
/// Kept whole: the HuggingFace directory's files written in one place.
pub fn export(run: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let pre = crate::saved_model::load(run, None)?;
    let cfg = pre.config;
    if cfg.pre_ln && cfg.arch == model::Arch::Bert {
        bail!("pre-LN models have no HuggingFace BertForMaskedLM equivalent");
    }
    std::fs::create_dir_all(out)?;
    let _lock = shared::lock::DirLock::acquire(out, "trainer export")?;
    let tensors = with_tied_decoder(pre.tensors.clone());
    let mut written = Vec::new();
    let model_path = out.join("model.safetensors");
    write_with(&model_path, |tmp| -> Result<()> {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    written.push(model_path);
    let info = &pre.tokenizer.info;
    let specials = [info.pad_id, info.cls_id, info.sep_id, info.mask_id];
    let hf = model::encoder::hf_config(&cfg, "ForMaskedLM", specials, serde_json::json!({}));
    let config_path = out.join("config.json");
    write_file(&config_path, &serde_json::to_vec_pretty(&hf)?)?;
    written.push(config_path);
    let tok_path = out.join(shared::tokenizer::TOKENIZER_FILE);
    write_file(&tok_path, &pre.tokenizer.json)?;
    written.push(tok_path);
    let tc = out.join("tokenizer_config.json");
    write_file(
        &tc,
        &serde_json::to_vec_pretty(
            &serde_json::json!({ "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_position_embeddings, "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]", "pad_token": "[PAD]", "unk_token": "[UNK]" }),
        )?,
    )?;
    written.push(tc);
    // maskrate's logits on a fixed input, for scripts/compare_hf.py.
    let dev = Device::Cpu;
    let model = pre.mlm_model(&dev)?;
    let ids = check_input_ids(&cfg);
    let n = ids.len();
    let input = Tensor::from_vec(ids.clone(), (1, n), &dev)?;
    let hidden = model.encode(
        &input,
        &Tensor::ones((1, n), candle_core::DType::F32, &dev)?,
        None,
    )?;
    let positions = Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), n, &dev)?;
    let logits = model.mlm_logits(&hidden, &positions)?;
    let check = out.join("maskrate_check.safetensors");
    let check_tensors = HashMap::from([
        (
            "input_ids".to_string(),
            input.to_dtype(candle_core::DType::I64)?,
        ),
        ("logits".to_string(), logits),
    ]);
    write_with(&check, |tmp| -> Result<()> {
        Ok(candle_core::safetensors::save(&check_tensors, tmp)?)
    })?;
    written.push(check);
    Ok(written)
}
