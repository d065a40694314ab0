//! The BERT model on tiny configurations (CPU): gradients reach every parameter and match finite
//! differences, and results do not depend on the thread count.

use candle_core::{DType, Device, Tensor};
use model::fixtures::{inputs, tiny};
use model::ops::Dropout;
use model::MaskedLm;
use model::{Bert, BertConfig, MlmInputs, ParamStore};

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let dev = Device::Cpu;
    for pre_ln in [false, true] {
        let cfg = BertConfig { pre_ln, ..tiny(50) };
        let params = ParamStore::new(&dev, 1);
        let model = Bert::new(cfg, &params).unwrap();
        let dropout = Dropout::new(7, &[0], 0.1);
        let out = model.mlm_loss(&inputs(&dev, 50), Some(&dropout)).unwrap();
        let grads = out.mean_loss().unwrap().backward().unwrap();
        let vars = params.named_vars();
        assert_eq!(
            vars.len(),
            5 + 16 * 2 + 5,
            "embeddings 5, 16 per layer, head 5"
        );
        for (name, var) in vars {
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
            assert!(norm > 0.0, "{name}: zero gradient (pre_ln={pre_ln})");
        }
    }
}

/// Analytic gradients against central finite differences (f64 model copy of a tiny config).
#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let cfg = BertConfig {
        dropout: 0.0,
        initializer_range: 0.5,
        ..tiny(20)
    };
    let params = ParamStore::new(&dev, 3);
    let model = Bert::new(cfg, &params).unwrap();
    let inp = inputs(&dev, 20);
    let loss_of = |model: &Bert| {
        model
            .mlm_loss(&inp, None)
            .unwrap()
            .mean_loss()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = model
        .mlm_loss(&inp, None)
        .unwrap()
        .mean_loss()
        .unwrap()
        .backward()
        .unwrap();
    let mut checked = 0;
    for (name, var) in params.named_vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // The entry with the largest gradient: finite differences in f32 need a signal well above noise.
        let (k, &gk) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        if gk.abs() < 1e-3 {
            continue;
        }
        let h = 1e-2f32;
        let probe = |delta: f32| {
            let mut v = base.clone();
            v[k] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                .unwrap();
            loss_of(&model)
        };
        let numeric = (probe(h) - probe(-h)) / (2.0 * h as f64);
        var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap())
            .unwrap();
        let rel = (numeric - gk as f64).abs() / (gk.abs() as f64).max(1e-3);
        assert!(rel < 0.05, "{name}[{k}]: analytic {gk}, numeric {numeric}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} parameters checked");
}

/// A training step's gradients are bit-identical whatever the thread count (row-block partial sums
/// are added in block order, attention tasks are single-threaded).
#[test]
fn gradients_are_identical_for_any_thread_count() {
    let dev = Device::Cpu;
    let (b, l, vocab) = (16usize, 32usize, 60u32);
    let ids: Vec<u32> = (0..b * l).map(|i| (i as u32 * 13 + 5) % vocab).collect();
    let mut mask = vec![1f32; b * l];
    mask[b * l - 5..].fill(0.0);
    let positions: Vec<u32> = (0..(b * l) as u32).step_by(7).collect();
    let labels: Vec<u32> = positions.iter().map(|&p| (p * 3 + 2) % vocab).collect();
    let n = positions.len();
    let inp = MlmInputs {
        input_ids: Tensor::from_vec(ids, (b, l), &dev).unwrap(),
        attention_mask: Tensor::from_vec(mask, (b, l), &dev).unwrap(),
        masked_positions: Tensor::from_vec(positions, n, &dev).unwrap(),
        masked_labels: Tensor::from_vec(labels, n, &dev).unwrap(),
        layout: Default::default(),
        loss_coefficients: None,
    };
    let grads_with = |threads: usize| -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let params = ParamStore::new(&dev, 8);
            let model = Bert::new(tiny(vocab as usize), &params).unwrap();
            let dropout = Dropout::new(3, &[0], 0.1);
            let loss = model
                .mlm_loss(&inp, Some(&dropout))
                .unwrap()
                .mean_loss()
                .unwrap();
            let grads = loss.backward().unwrap();
            params
                .named_vars()
                .iter()
                .map(|(_, v)| {
                    let g = grads.get(v.as_tensor()).unwrap();
                    g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect()
        })
    };
    let one = grads_with(1);
    for threads in [2, 3, 4] {
        assert!(
            grads_with(threads) == one,
            "{threads} threads differ from 1"
        );
    }
}
