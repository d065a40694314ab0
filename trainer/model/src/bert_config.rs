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
        self.presets().dropout
    }

    /// The architecture's presets and published defaults (`shared::presets`, the one table).
    pub fn presets(self) -> shared::presets::ArchPresets {
        shared::presets::of_arch(self.name()).expect("every architecture has presets")
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

/// Names accepted by `--model`.
pub const PRESETS: &[&str] = shared::presets::NAMES;

impl BertConfig {
    /// A preset of `arch` with the given vocabulary.
    pub fn from_arch_preset(arch: Arch, name: &str, vocab_size: usize) -> Option<Self> {
        let presets = arch.presets();
        let shape = presets.shape(name)?;
        let hf = HfShape {
            vocab_size,
            hidden_size: shape.hidden_size,
            num_hidden_layers: shape.num_hidden_layers,
            num_attention_heads: shape.num_attention_heads,
            intermediate_size: shape.intermediate_size,
            max_position_embeddings: presets.max_position_embeddings,
        };
        Some(hf.config(arch))
    }

    /// A BERT preset with the given vocabulary.
    pub fn from_preset(name: &str, vocab_size: usize) -> Option<Self> {
        Self::from_arch_preset(Arch::Bert, name, vocab_size)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// What every transformers encoder `config.json` opens with, flattened into each architecture's
/// type (`HfBertConfig` in bert.rs, `HfModernBertConfig` in modernbert.rs): the class,
/// the model type and the shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HfCommon {
    /// The model class, e.g. `BertForMaskedLM`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `bert` or `modernbert`.
    pub model_type: String,
    /// The sizes.
    #[serde(flatten)]
    pub shape: HfShape,
}

impl HfCommon {
    /// `cfg`'s shape as class `architecture` of `model_type`.
    pub fn new(cfg: &BertConfig, architecture: &str, model_type: &str) -> Self {
        HfCommon {
            architectures: vec![architecture.to_string()],
            model_type: model_type.to_string(),
            shape: HfShape::of(cfg),
        }
    }
}

/// The shape keys every transformers encoder config shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HfShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
}

impl HfShape {
    /// The shape of `cfg`.
    pub fn of(cfg: &BertConfig) -> Self {
        HfShape {
            vocab_size: cfg.vocab_size,
            hidden_size: cfg.hidden_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            intermediate_size: cfg.intermediate_size,
            max_position_embeddings: cfg.max_position_embeddings,
        }
    }

    /// A configuration of `arch` with this shape and that architecture's preset defaults (its
    /// type-specific fields to be set by the caller).
    pub fn config(&self, arch: Arch) -> BertConfig {
        let presets = arch.presets();
        let modern = arch == Arch::ModernBert;
        BertConfig {
            arch,
            modern: ModernSettings::default(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: if modern { 0 } else { 2 },
            layer_norm_eps: presets.layer_norm_eps,
            dropout: presets.dropout,
            pre_ln: modern,
            initializer_range: 0.02,
        }
    }
}

/// transformers' defaults that both architectures' `config.json` types fall back on.
pub(crate) mod hf_defaults {
    pub fn gelu() -> String {
        "gelu".into()
    }
    pub fn init_std() -> f64 {
        0.02
    }
    pub fn yes() -> bool {
        true
    }
}
