//! Loading a pretrained (or fine-tuned) model for downstream use: a run directory (its latest
//! checkpoint), one checkpoint directory, or a HuggingFace-format directory (`config.json` +
//! `model.safetensors`, as written by `trainer export` or by `transformers`).

use crate::checkpoint;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use model::BertConfig;
use shared::tokenizer::{LoadedTokenizer, TOKENIZER_FILE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Weights by HF name, the architecture and the tokenizer they were trained with.
pub struct Pretrained {
    /// Architecture.
    pub config: BertConfig,
    /// Tensors by HF `BertFor*` name (`bert.…`, `cls.…`, `classifier.…`), on the CPU.
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer.
    pub tokenizer: LoadedTokenizer,
    /// Where the weights came from (for reports).
    pub source: PathBuf,
    /// Labels of a fine-tuned classifier head (`config.json` `maskrate_task`), if any.
    pub task: Option<String>,
}

impl Pretrained {
    /// A freshly initialised model (drawn from `seed`) with `tokenizer`: for tests and benchmarks.
    pub fn initialised(config: BertConfig, tokenizer: LoadedTokenizer, seed: u64) -> Result<Self> {
        let p = model::ParamStore::new(&Device::Cpu, seed);
        model::Encoder::new(config, &p)?;
        let tensors = p
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        Ok(Pretrained {
            config,
            tensors,
            tokenizer,
            source: PathBuf::from(format!("fresh initialisation (seed {seed})")),
            task: None,
        })
    }

    /// The masked-LM model with these weights on `device`, for evaluation (no dropout state).
    pub fn mlm_model(&self, device: &Device) -> Result<model::Encoder> {
        self.mlm_model_in(device, candle_core::DType::F32)
    }

    /// [`Pretrained::mlm_model`] computing in `dtype` (bf16: the model's bf16 copies of these
    /// weights, as a `--precision bf16` run evaluates).
    pub fn mlm_model_in(
        &self,
        device: &Device,
        dtype: candle_core::DType,
    ) -> Result<model::Encoder> {
        let params = model::ParamStore::new(device, 0).with_compute_dtype(dtype);
        let model = model::Encoder::new(self.config, &params)?;
        params
            .load_by_name(&self.tensors, &self.source.display().to_string(), |_, _| {
                false
            })
            .context("the MLM head needs a pretraining checkpoint or a BertForMaskedLM export")?;
        Ok(model)
    }
}

fn load_tokenizer(candidates: &[PathBuf], explicit: Option<&Path>) -> Result<LoadedTokenizer> {
    if let Some(p) = explicit {
        return Ok(LoadedTokenizer::load(Some(p))?);
    }
    for c in candidates {
        let p = c.join(TOKENIZER_FILE);
        if p.exists() {
            return Ok(LoadedTokenizer::load(Some(&p))?);
        }
    }
    bail!(
        "no {TOKENIZER_FILE} in {}; pass --tokenizer FILE",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

fn from_checkpoint(dir: &Path, run: &Path, tokenizer: Option<&Path>) -> Result<Pretrained> {
    let loaded = checkpoint::load(dir)?;
    let config: BertConfig = serde_json::from_value(loaded.state.config["run"]["model"].clone())
        .with_context(|| format!("{}/state.json lacks the model config", dir.display()))?;
    Ok(Pretrained {
        config,
        tensors: loaded.model,
        tokenizer: load_tokenizer(&[run.to_path_buf(), dir.to_path_buf()], tokenizer)?,
        source: dir.to_path_buf(),
        task: None,
    })
}

fn from_hf_dir(dir: &Path, tokenizer: Option<&Path>) -> Result<Pretrained> {
    let cfg_path = dir.join("config.json");
    let hf: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", cfg_path.display()))?;
    let config = model::encoder::config_from_hf(&hf)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg_path.display()))?;
    // A bare BertModel or ModernBertModel names the encoder without the model's prefix.
    let bare: (&str, &[&str]) = match config.arch {
        model::Arch::Bert => ("bert.", &["embeddings.", "encoder.", "pooler."]),
        model::Arch::ModernBert => ("model.", &["embeddings.", "layers.", "final_norm."]),
    };
    hf_pretrained(dir, &hf, config, bare, tokenizer)
}

/// The `model.safetensors` of HuggingFace directory `dir` with `config`: tensors named
/// `bare.0`'s prefix-less names (a bare encoder's, starting with one of `bare.1`) get the prefix.
fn hf_pretrained(
    dir: &Path,
    hf: &serde_json::Value,
    config: BertConfig,
    bare: (&str, &[&str]),
    tokenizer: Option<&Path>,
) -> Result<Pretrained> {
    let weights = dir.join("model.safetensors");
    let raw = candle_core::safetensors::load(&weights, &Device::Cpu)
        .with_context(|| format!("reading {}", weights.display()))?;
    let (prefix, starts) = bare;
    let tensors = raw
        .into_iter()
        .map(|(k, v)| match starts.iter().any(|p| k.starts_with(p)) {
            true => (format!("{prefix}{k}"), v),
            false => (k, v),
        })
        .collect();
    Ok(Pretrained {
        config,
        tensors,
        tokenizer: load_tokenizer(&[dir.to_path_buf()], tokenizer)?,
        source: dir.to_path_buf(),
        task: hf["maskrate_task"].as_str().map(str::to_string),
    })
}

/// Loads `path`: a run directory, a checkpoint directory or a HuggingFace-format directory.
/// `tokenizer` overrides the `tokenizer.json` found beside the weights.
pub fn load(path: &Path, tokenizer: Option<&Path>) -> Result<Pretrained> {
    let pre = if path.join("checkpoints").is_dir() {
        let (_, dir) = checkpoint::list(path)?
            .pop()
            .with_context(|| format!("{} has no complete checkpoint", path.display()))?;
        from_checkpoint(&dir, path, tokenizer)?
    } else if path.join("state.json").exists() {
        let run = path.parent().and_then(Path::parent).unwrap_or(path);
        from_checkpoint(path, run, tokenizer)?
    } else if path.join("config.json").exists() {
        from_hf_dir(path, tokenizer)?
    } else {
        bail!(
            "{}: not a run directory (checkpoints/), a checkpoint (state.json) or a HuggingFace \
             directory (config.json + model.safetensors)",
            path.display()
        );
    };
    if pre.tokenizer.info.vocab_size != pre.config.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model's vocabulary is {}",
            path.display(),
            pre.tokenizer.info.vocab_size,
            pre.config.vocab_size
        );
    }
    Ok(pre)
}
