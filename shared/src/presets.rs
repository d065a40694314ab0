//! Model presets: each architecture's named shapes and published defaults, the one table the
//! trainer (`--model`, `trainer presets --json`), the Python package (`maskrate.model_presets()`)
//! and the scripts, benchmarks and examples built on them read.

use serde::Serialize;

/// One preset's shape (transformers' config names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward size (ModernBERT: each GeGLU half).
    pub intermediate_size: usize,
}

/// An architecture's presets and the published defaults they share.
#[derive(Debug, Clone, Serialize)]
pub struct ArchPresets {
    /// `--arch`'s name for it.
    pub arch: &'static str,
    /// Dropout of the architecture's published configurations.
    pub dropout: f64,
    /// Learned (BERT) or rotary (ModernBERT) positions.
    pub max_position_embeddings: usize,
    /// Norm epsilon.
    pub layer_norm_eps: f64,
    /// Named shapes, smallest first.
    pub presets: Vec<(&'static str, Shape)>,
}

/// Preset names accepted by `--model`, smallest first.
pub const NAMES: &[&str] = &["tiny", "mini", "small", "medium", "base", "large"];

const fn shape(layers: usize, hidden: usize, heads: usize, intermediate: usize) -> Shape {
    Shape {
        num_hidden_layers: layers,
        hidden_size: hidden,
        num_attention_heads: heads,
        intermediate_size: intermediate,
    }
}

/// Google's BERT miniatures (Turc et al., 2019), BERT-base and BERT-large.
const BERT: [Shape; 6] = [
    shape(2, 128, 2, 512),
    shape(4, 256, 4, 1024),
    shape(4, 512, 8, 2048),
    shape(8, 512, 8, 2048),
    shape(12, 768, 12, 3072),
    shape(24, 1024, 16, 4096),
];

/// ModernBERT's shape of preset `i`: `base` and `large` are ModernBERT-base/-large's published
/// shapes; the smaller ones keep their BERT namesakes' layers, widths and heads with ModernBERT's
/// GeGLU width (1.5 × hidden per half).
fn modernbert_shape(i: usize) -> Shape {
    match NAMES[i] {
        "base" => shape(22, 768, 12, 1152),
        "large" => shape(28, 1024, 16, 2624),
        _ => Shape {
            intermediate_size: BERT[i].hidden_size * 3 / 2,
            ..BERT[i]
        },
    }
}

/// The presets of architecture `arch` (`bert`, `modernbert`), or `None` for another name.
pub fn of_arch(arch: &str) -> Option<ArchPresets> {
    let (dropout, max_position_embeddings, layer_norm_eps, shape_of): (
        _,
        _,
        _,
        fn(usize) -> Shape,
    ) = match arch {
        "bert" => (0.1, 512, 1e-12, |i| BERT[i]),
        "modernbert" => (0.0, 8192, 1e-5, modernbert_shape),
        _ => return None,
    };
    Some(ArchPresets {
        arch: match arch {
            "bert" => "bert",
            _ => "modernbert",
        },
        dropout,
        max_position_embeddings,
        layer_norm_eps,
        presets: NAMES
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, shape_of(i)))
            .collect(),
    })
}

impl ArchPresets {
    /// The shape called `name`, if it is a preset.
    pub fn shape(&self, name: &str) -> Option<Shape> {
        self.presets
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
    }
}

/// Every architecture's presets as JSON: `{arch: {dropout, max_position_embeddings,
/// layer_norm_eps, presets: {name: shape}}}` (what `trainer presets --json` prints and
/// `maskrate.model_presets()` returns).
pub fn all_json() -> serde_json::Value {
    ["bert", "modernbert"]
        .into_iter()
        .map(|arch| {
            let p = of_arch(arch).expect("a known architecture");
            let presets: serde_json::Map<String, serde_json::Value> = p
                .presets
                .iter()
                .map(|(n, s)| (n.to_string(), serde_json::to_value(s).expect("numbers")))
                .collect();
            let entry = serde_json::json!({
                "dropout": p.dropout,
                "max_position_embeddings": p.max_position_embeddings,
                "layer_norm_eps": p.layer_norm_eps,
                "presets": presets,
            });
            (arch.to_string(), entry)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published shapes: BERT-base (Devlin et al.), the miniatures' tiny and medium (Turc et al.),
    /// ModernBERT-base and -large (Warner et al.: GeGLU 2304 = 2 × 1152 and 5248 = 2 × 2624).
    #[test]
    fn presets_match_the_published_shapes() {
        let bert = of_arch("bert").unwrap();
        assert_eq!(bert.shape("base"), Some(shape(12, 768, 12, 3072)));
        assert_eq!(bert.shape("tiny"), Some(shape(2, 128, 2, 512)));
        assert_eq!(bert.shape("medium"), Some(shape(8, 512, 8, 2048)));
        let modern = of_arch("modernbert").unwrap();
        assert_eq!(modern.shape("base"), Some(shape(22, 768, 12, 1152)));
        assert_eq!(modern.shape("large"), Some(shape(28, 1024, 16, 2624)));
        assert_eq!(modern.shape("mini"), Some(shape(4, 256, 4, 384)));
        assert_eq!(modern.shape("huge"), None);
        assert!(of_arch("gpt").is_none());
        let json = all_json();
        assert_eq!(
            json["modernbert"]["presets"]["tiny"]["num_hidden_layers"],
            2
        );
        assert_eq!(json["bert"]["dropout"], 0.1);
    }
}
