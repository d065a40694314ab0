//! Encoder sizes: the Google BERT miniature presets, ModernBERT's shapes, explicit overrides.

use serde::{Deserialize, Serialize};

/// The encoder architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// BERT (Devlin et al., 2019): learned positions, post-LN blocks, GELU feed-forward.
    #[default]
    Bert,
    /// ModernBERT (Warner et al., 2024): rotary positions, pre-norm blocks without biases, GeGLU,
    /// local (sliding-window) attention with a global layer every few layers.
    ModernBert,
}

impl Arch {
    /// Names accepted by `--arch`.
    pub const NAMES: &'static [&'static str] = &["bert", "modernbert"];

    /// The architecture called `name` (`bert`, `modernbert`), or an error listing the names.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "bert" => Ok(Arch::Bert),
            "modernbert" => Ok(Arch::ModernBert),
            _ => Err(format!(
                "unknown architecture {name:?} (expected one of: {})",
                Arch::NAMES.join(", ")
            )),
        }
    }

    /// Dropout of the architecture's published configurations: BERT's 0.1, ModernBERT's 0.
    pub fn default_dropout(self) -> f64 {
        match self {
            Arch::Bert => 0.1,
            Arch::ModernBert => 0.0,
        }
    }

    /// The name `--arch` takes.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::ModernBert => "modernbert",
        }
    }
}

/// ModernBERT's attention and position settings (transformers' `ModernBertConfig` defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModernSettings {
    /// Every this many layers one is global, starting with layer 0 (`global_attn_every_n_layers`).
    pub global_every: usize,
    /// Local layers' window in tokens (`local_attention`): keys within half of it either side.
    pub local_window: usize,
    /// Rotary base of global layers.
    pub global_rope_theta: f64,
    /// Rotary base of local layers.
    pub local_rope_theta: f64,
    /// Truncation of the normal initialisation, in standard deviations.
    pub init_cutoff: f64,
}

impl Default for ModernSettings {
    fn default() -> Self {
        ModernSettings {
            global_every: 3,
            local_window: 128,
            global_rope_theta: 160_000.0,
            local_rope_theta: 10_000.0,
            init_cutoff: 2.0,
        }
    }
}

impl ModernSettings {
    /// Whether layer `i` attends globally.
    pub fn is_global(&self, i: usize) -> bool {
        i.is_multiple_of(self.global_every.max(1))
    }
}

/// Architecture hyper-parameters (HuggingFace `BertConfig` names where they exist).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// The architecture (absent in runs made before ModernBERT: BERT).
    #[serde(default)]
    pub arch: Arch,
    /// ModernBERT's settings (ignored by BERT).
    #[serde(default)]
    pub modern: ModernSettings,
    /// Vocabulary size (from the shards' tokenizer).
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Encoder layers L.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward size.
    pub intermediate_size: usize,
    /// Learned positions.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout on embeddings, attention probabilities and sublayer outputs.
    pub dropout: f64,
    /// Pre-LN encoder layers (LayerNorm before each sublayer) instead of BERT's post-LN.
    pub pre_ln: bool,
    /// Standard deviation of the normal weight initialisation.
    pub initializer_range: f64,
}

/// `(layers, hidden, heads, intermediate)` of a named preset.
pub fn preset(name: &str) -> Option<(usize, usize, usize, usize)> {
    Some(match name {
        "tiny" => (2, 128, 2, 512),
        "mini" => (4, 256, 4, 1024),
        "small" => (4, 512, 8, 2048),
        "medium" => (8, 512, 8, 2048),
        "base" => (12, 768, 12, 3072),
        "large" => (24, 1024, 16, 4096),
        _ => return None,
    })
}

/// `(layers, hidden, heads, intermediate)` of a named ModernBERT preset: `base` and `large` are
/// ModernBERT-base/-large's published shapes; the smaller ones keep their BERT namesakes' layers,
/// widths and heads with ModernBERT's GeGLU width (1.5 × hidden per half).
pub fn modern_preset(name: &str) -> Option<(usize, usize, usize, usize)> {
    Some(match name {
        "base" => (22, 768, 12, 1152),
        "large" => (28, 1024, 16, 2624),
        _ => {
            let (layers, hidden, heads, _) = preset(name)?;
            (layers, hidden, heads, hidden * 3 / 2)
        }
    })
}

/// Names accepted by `--model`.
pub const PRESETS: &[&str] = &["tiny", "mini", "small", "medium", "base", "large"];

impl BertConfig {
    /// A preset of `arch` with the given vocabulary.
    pub fn from_arch_preset(arch: Arch, name: &str, vocab_size: usize) -> Option<Self> {
        match arch {
            Arch::Bert => Self::from_preset(name, vocab_size),
            Arch::ModernBert => {
                let (layers, hidden, heads, intermediate) = modern_preset(name)?;
                Some(BertConfig {
                    arch,
                    modern: ModernSettings::default(),
                    vocab_size,
                    hidden_size: hidden,
                    num_hidden_layers: layers,
                    num_attention_heads: heads,
                    intermediate_size: intermediate,
                    max_position_embeddings: 8192,
                    type_vocab_size: 0,
                    layer_norm_eps: 1e-5,
                    dropout: arch.default_dropout(),
                    pre_ln: true,
                    initializer_range: 0.02,
                })
            }
        }
    }

    /// A BERT preset with the given vocabulary.
    pub fn from_preset(name: &str, vocab_size: usize) -> Option<Self> {
        let (layers, hidden, heads, intermediate) = preset(name)?;
        Some(BertConfig {
            arch: Arch::Bert,
            modern: ModernSettings::default(),
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: intermediate,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            dropout: Arch::Bert.default_dropout(),
            pre_ln: false,
            initializer_range: 0.02,
        })
    }

    /// HuggingFace `config.json` for this architecture: the `BertConfig` fields transformers reads,
    /// plus `architecture`-specific `extra` keys (e.g. `num_labels`), which win on a clash.
    pub fn hf_config_json(
        &self,
        architecture: &str,
        pad_token_id: u32,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let mut hf = serde_json::json!({
            "architectures": [architecture],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": pad_token_id,
        });
        if let (Some(map), serde_json::Value::Object(extra)) = (hf.as_object_mut(), extra) {
            map.extend(extra);
        }
        hf
    }

    /// transformers' `config.json` for this architecture's model class `Bert{task}` or
    /// `ModernBert{task}` (`task` e.g. `ForMaskedLM`, `ForSequenceClassification`); `specials`
    /// are the tokenizer's (pad, cls, sep, mask) ids; `extra` keys win on a clash.
    pub fn hf_config_for(
        &self,
        task: &str,
        specials: [u32; 4],
        extra: serde_json::Value,
    ) -> serde_json::Value {
        match self.arch {
            Arch::Bert => self.hf_config_json(&format!("Bert{task}"), specials[0], extra),
            Arch::ModernBert => {
                let mut hf = self.modernbert_config_json(specials);
                hf["architectures"] = serde_json::json!([format!("ModernBert{task}")]);
                if let (Some(map), serde_json::Value::Object(extra)) = (hf.as_object_mut(), extra) {
                    map.extend(extra);
                }
                hf
            }
        }
    }

    /// transformers' `config.json` for `ModernBertForMaskedLM` with these sizes; `specials` are
    /// the tokenizer's (pad, cls, sep, mask) ids.
    pub fn modernbert_config_json(&self, specials: [u32; 4]) -> serde_json::Value {
        let m = &self.modern;
        let layer_types: Vec<&str> = (0..self.num_hidden_layers)
            .map(|i| {
                if m.is_global(i) {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        let [pad, cls, sep, _mask] = specials;
        serde_json::json!({
            "architectures": ["ModernBertForMaskedLM"],
            "model_type": "modernbert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_activation": "gelu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "initializer_cutoff_factor": m.init_cutoff,
            "norm_eps": self.layer_norm_eps,
            "norm_bias": false,
            "pad_token_id": pad,
            "bos_token_id": cls,
            "eos_token_id": sep,
            "cls_token_id": cls,
            "sep_token_id": sep,
            "global_attn_every_n_layers": m.global_every,
            "layer_types": layer_types,
            "local_attention": m.local_window,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": m.global_rope_theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": m.local_rope_theta},
            },
            "embedding_dropout": self.dropout,
            "attention_dropout": self.dropout,
            "mlp_dropout": self.dropout,
            "attention_bias": false,
            "mlp_bias": false,
            "decoder_bias": true,
            "classifier_bias": false,
            "classifier_activation": "gelu",
            "tie_word_embeddings": true,
        })
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
