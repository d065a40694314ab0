//! BERT sizes: the Google BERT miniature presets plus explicit overrides.

use serde::{Deserialize, Serialize};

/// Architecture hyper-parameters (HuggingFace `BertConfig` names where they exist).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
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

/// Names accepted by `--model`.
pub const PRESETS: &[&str] = &["tiny", "mini", "small", "medium", "base", "large"];

impl BertConfig {
    /// A preset with the given vocabulary.
    pub fn from_preset(name: &str, vocab_size: usize) -> Option<Self> {
        let (layers, hidden, heads, intermediate) = preset(name)?;
        Some(BertConfig {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: intermediate,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            dropout: 0.1,
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

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
