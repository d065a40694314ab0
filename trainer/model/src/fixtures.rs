//! Tiny configurations and inputs for the tests of this crate and the crates above it
//! (feature `test-support`).

use crate::{BertConfig, MlmInputs};
use candle_core::{Device, Tensor};

/// A two-layer model with hidden size 16 over a vocabulary of `vocab`.
pub fn tiny(vocab: usize) -> BertConfig {
    BertConfig {
        arch: crate::bert_config::Arch::Bert,
        modern: Default::default(),
        vocab_size: vocab,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 32,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        dropout: 0.1,
        pre_ln: false,
        initializer_range: 0.02,
    }
}

/// Both architectures at tiny sizes over a vocabulary of `vocab`, without dropout and with a wide
/// initialisation (so outputs move visibly): BERT as [`tiny`]; ModernBERT with hidden size 16, 2
/// heads, 3 layers and a local window of 4 (narrower than the tests' rows, so local layers hide
/// keys of their own document).
pub fn tiny_architectures(vocab: usize) -> Vec<BertConfig> {
    let bert = BertConfig {
        dropout: 0.0,
        initializer_range: 0.2,
        ..tiny(vocab)
    };
    let mut modern =
        BertConfig::from_arch_preset(crate::bert_config::Arch::ModernBert, "tiny", vocab)
            .expect("the tiny preset");
    (modern.hidden_size, modern.num_attention_heads) = (16, 2);
    (modern.intermediate_size, modern.num_hidden_layers) = (24, 3);
    modern.initializer_range = 0.2;
    modern.modern.local_window = 4;
    vec![bert, modern]
}

/// Three rows of eight tokens (the last row ends in two padding positions) with five masked
/// positions, for a vocabulary of at least `vocab`.
pub fn inputs(dev: &Device, vocab: u32) -> MlmInputs {
    let (b, l) = (3usize, 8usize);
    let ids: Vec<u32> = (0..b * l).map(|i| (i as u32 * 7 + 3) % vocab).collect();
    let mut mask = vec![1f32; b * l];
    mask[b * l - 2..].fill(0.0); // padding at the end of the last row
    let positions: Vec<u32> = vec![1, 4, 9, 13, 18];
    let labels: Vec<u32> = positions.iter().map(|&p| (p * 5 + 1) % vocab).collect();
    MlmInputs {
        input_ids: Tensor::from_vec(ids, (b, l), dev).unwrap(),
        attention_mask: Tensor::from_vec(mask, (b, l), dev).unwrap(),
        masked_positions: Tensor::from_vec(positions, 5, dev).unwrap(),
        masked_labels: Tensor::from_vec(labels, 5, dev).unwrap(),
        layout: Default::default(),
        loss_coefficients: None,
    }
}
