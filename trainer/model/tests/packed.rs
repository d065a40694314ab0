//! Packed rows (`pack-docs`) on both architectures: a token's outputs do not depend on the other
//! documents in its row, and every ModernBERT parameter learns.

use candle_core::{Device, Tensor};
use model::fixtures::tiny_architectures;
use model::MaskedLm;
use model::{BertConfig, Encoder, MlmInputs, ParamStore, TokenLayout};

fn configs() -> Vec<BertConfig> {
    tiny_architectures(60)
}

/// Two rows of 12 tokens: row 0 holds documents [0, 5) and [5, 12); row 1 a continuation [0, 3)
/// and a document [3, 12).
fn inputs(ids: Vec<u32>, masked: &[u32]) -> MlmInputs {
    let dev = Device::Cpu;
    let n = masked.len();
    MlmInputs {
        input_ids: Tensor::from_vec(ids, (2, 12), &dev).unwrap(),
        attention_mask: Tensor::ones((2, 12), candle_core::DType::F32, &dev).unwrap(),
        masked_positions: Tensor::from_slice(masked, n, &dev).unwrap(),
        masked_labels: Tensor::from_vec(vec![7u32; n], n, &dev).unwrap(),
        layout: TokenLayout::of_segments(&[0, 5, 12, 15], 2, 12, &dev).unwrap(),
        loss_coefficients: None,
    }
}

fn logits(model: &Encoder, inp: &MlmInputs) -> Vec<Vec<f32>> {
    let hidden = match model {
        Encoder::Bert(m) => m
            .encode_laid_out(&inp.input_ids, None, &inp.attention_mask, &inp.layout, None)
            .unwrap(),
        Encoder::ModernBert(m) => m
            .encode(&inp.input_ids, &inp.attention_mask, &inp.layout, None)
            .unwrap(),
    };
    model
        .mlm_logits(&hidden, &inp.masked_positions)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn a_tokens_logits_ignore_the_other_documents_in_its_row() {
    let every: Vec<u32> = (0..24).collect();
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 7 + 3) % 60).collect();
    // Change the second document of row 0 and the continuation in row 1.
    let mut changed = ids.clone();
    for i in (5..12).chain(12..15) {
        changed[i] = (changed[i] + 11) % 60;
    }
    for cfg in configs() {
        let p = ParamStore::new(&Device::Cpu, 4);
        let model = Encoder::new(cfg, &p).unwrap();
        let (a, b) = (
            logits(&model, &inputs(ids.clone(), &every)),
            logits(&model, &inputs(changed.clone(), &every)),
        );
        let untouched = (0..5).chain(15..24);
        for t in untouched {
            assert_eq!(a[t], b[t], "{:?}: token {t}", cfg.arch);
        }
        assert_ne!(
            a[5], b[5],
            "{:?}: the changed document's own logits move",
            cfg.arch
        );
        // Without the boundaries the same change reaches the first document: the test can fail.
        let mut whole = inputs(ids.clone(), &every);
        whole.layout = TokenLayout::default();
        let mut whole_changed = inputs(changed.clone(), &every);
        whole_changed.layout = TokenLayout::default();
        let (c, d) = (logits(&model, &whole), logits(&model, &whole_changed));
        assert_ne!(c[0], d[0], "{:?}", cfg.arch);
    }
}

/// Positions restart at each document: a document's logits are the same wherever it sits in a
/// row, and the same as alone in a row of its own.
#[test]
fn a_document_reads_the_same_at_any_offset() {
    for cfg in configs() {
        let p = ParamStore::new(&Device::Cpu, 6);
        let model = Encoder::new(cfg, &p).unwrap();
        let doc: Vec<u32> = vec![1, 9, 14, 22, 30, 2];
        // Row 0: doc at 0, filler after; row 1: filler, then doc at 6 (segments 0, 6 | 12, 18).
        let filler: Vec<u32> = vec![1, 40, 41, 42, 43, 2];
        let ids = [doc.clone(), filler.clone(), filler, doc.clone()].concat();
        let dev = Device::Cpu;
        let alone = MlmInputs {
            input_ids: Tensor::from_vec(doc, (1, 6), &dev).unwrap(),
            attention_mask: Tensor::ones((1, 6), candle_core::DType::F32, &dev).unwrap(),
            masked_positions: Tensor::from_vec((0..6u32).collect(), 6, &dev).unwrap(),
            masked_labels: Tensor::from_vec(vec![0u32; 6], 6, &dev).unwrap(),
            layout: TokenLayout::default(),
            loss_coefficients: None,
        };
        let alone = logits(&model, &alone);
        let inp = MlmInputs {
            input_ids: Tensor::from_vec(ids, (2, 12), &dev).unwrap(),
            attention_mask: Tensor::ones((2, 12), candle_core::DType::F32, &dev).unwrap(),
            masked_positions: Tensor::from_vec((0..24u32).collect(), 24, &dev).unwrap(),
            masked_labels: Tensor::from_vec(vec![0u32; 24], 24, &dev).unwrap(),
            layout: TokenLayout::of_segments(&[0, 6, 12, 18], 2, 12, &dev).unwrap(),
            loss_coefficients: None,
        };
        let l = logits(&model, &inp);
        let furthest = |x: &[f32], y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        for t in 0..6 {
            let d = furthest(&l[t], &l[18 + t]);
            assert!(d < 1e-5, "{:?}: token {t} differs by {d}", cfg.arch);
            let d = furthest(&l[t], &alone[t]);
            assert!(d < 1e-5, "{:?}: token {t} alone differs by {d}", cfg.arch);
        }
    }
}

#[test]
fn every_modernbert_parameter_receives_a_gradient() {
    let cfg = configs().remove(1);
    let p = ParamStore::new(&Device::Cpu, 2);
    let model = Encoder::new(cfg, &p).unwrap();
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 5 + 1) % 60).collect();
    let inp = inputs(ids, &[1, 6, 13, 20]);
    let grads = model
        .mlm_loss(&inp, None)
        .unwrap()
        .mean_loss()
        .unwrap()
        .backward()
        .unwrap();
    let names: Vec<String> = p.named_vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.1.attn_norm.weight".to_string()));
    assert!(!names.contains(&"model.layers.0.attn_norm.weight".to_string()));
    for (name, var) in p.named_vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}
