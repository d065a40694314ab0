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
        let params = model::ParamStore::new(device, 0);
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
    let get = |k: &str| config_int(&hf, &cfg_path, k);
    match hf["model_type"].as_str() {
        None | Some("bert") => {}
        Some("modernbert") => return from_hf_modernbert(dir, &hf, tokenizer),
        Some(other) => bail!(
            "{}: model_type {other:?} is neither bert nor modernbert",
            cfg_path.display()
        ),
    }
    let config = BertConfig {
        arch: model::bert_config::Arch::Bert,
        modern: Default::default(),
        vocab_size: get("vocab_size")?,
        hidden_size: get("hidden_size")?,
        num_hidden_layers: get("num_hidden_layers")?,
        num_attention_heads: get("num_attention_heads")?,
        intermediate_size: get("intermediate_size")?,
        max_position_embeddings: get("max_position_embeddings")?,
        type_vocab_size: get("type_vocab_size").unwrap_or(2),
        layer_norm_eps: hf["layer_norm_eps"].as_f64().unwrap_or(1e-12),
        dropout: hf["hidden_dropout_prob"].as_f64().unwrap_or(0.1),
        pre_ln: false,
        initializer_range: hf["initializer_range"].as_f64().unwrap_or(0.02),
    };
    // BertModel checkpoints name the encoder without the `bert.` prefix.
    let bare = ["embeddings.", "encoder.", "pooler."];
    hf_pretrained(dir, &hf, config, ("bert.", &bare), tokenizer)
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

/// Integer `key` of the `config.json` at `path`, read as `hf`; a missing one is an error naming
/// both.
fn config_int(hf: &serde_json::Value, path: &Path, key: &str) -> Result<usize> {
    hf[key]
        .as_u64()
        .map(|v| v as usize)
        .with_context(|| format!("{}: missing integer {key:?}", path.display()))
}

/// A transformers ModernBERT directory (`ModernBertForMaskedLM`, `…ForSequenceClassification` or
/// a bare `ModernBertModel`), as `trainer export` writes it.
fn from_hf_modernbert(
    dir: &Path,
    hf: &serde_json::Value,
    tokenizer: Option<&Path>,
) -> Result<Pretrained> {
    let cfg_path = dir.join("config.json");
    let int = |k: &str| config_int(hf, &cfg_path, k);
    let float = |k: &str, default: f64| hf[k].as_f64().unwrap_or(default);
    let defaults = model::bert_config::ModernSettings::default();
    // transformers 5 writes rope_parameters per layer type; earlier versions two thetas.
    let theta = |layer_type: &str, old_key: &str, default: f64| {
        hf["rope_parameters"][layer_type]["rope_theta"]
            .as_f64()
            .or_else(|| hf[old_key].as_f64())
            .unwrap_or(default)
    };
    let modern = model::bert_config::ModernSettings {
        global_every: hf["global_attn_every_n_layers"]
            .as_u64()
            .map_or(defaults.global_every, |v| v as usize),
        local_window: hf["local_attention"]
            .as_u64()
            .map_or(defaults.local_window, |v| v as usize),
        global_rope_theta: theta(
            "full_attention",
            "global_rope_theta",
            defaults.global_rope_theta,
        ),
        local_rope_theta: theta(
            "sliding_attention",
            "local_rope_theta",
            defaults.local_rope_theta,
        ),
        init_cutoff: float("initializer_cutoff_factor", defaults.init_cutoff),
    };
    let layers = int("num_hidden_layers")?;
    if let Some(types) = hf["layer_types"].as_array() {
        for (i, t) in types.iter().enumerate() {
            let global = t.as_str() == Some("full_attention");
            if global != modern.is_global(i) {
                bail!(
                    "{}: layer_types[{i}] = {t} does not follow global_attn_every_n_layers = {} \
                     (every {}th layer global, the others sliding), the only pattern maskrate runs",
                    cfg_path.display(),
                    modern.global_every,
                    modern.global_every
                );
            }
        }
    }
    for (key, want) in [
        ("attention_bias", false),
        ("mlp_bias", false),
        ("norm_bias", false),
    ] {
        if hf[key].as_bool().is_some_and(|v| v != want) {
            bail!(
                "{}: {key} = {} is not supported (maskrate's ModernBERT has none)",
                cfg_path.display(),
                hf[key]
            );
        }
    }
    let config = BertConfig {
        arch: model::Arch::ModernBert,
        modern,
        vocab_size: int("vocab_size")?,
        hidden_size: int("hidden_size")?,
        num_hidden_layers: layers,
        num_attention_heads: int("num_attention_heads")?,
        intermediate_size: int("intermediate_size")?,
        max_position_embeddings: int("max_position_embeddings")?,
        type_vocab_size: 0,
        layer_norm_eps: float("norm_eps", 1e-5),
        dropout: float("embedding_dropout", 0.0),
        pre_ln: false,
        initializer_range: float("initializer_range", 0.02),
    };
    // A bare ModernBertModel names the encoder without the `model.` prefix.
    let bare = ["embeddings.", "layers.", "final_norm."];
    hf_pretrained(dir, hf, config, ("model.", &bare), tokenizer)
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
