//! `--precision bf16` end to end on both architectures (packed rows, the local window), on the
//! composed path and with the CUDA kernels' CPU twins: the models compute with bf16 copies of
//! the f32 parameters, the activations are bf16 from the embeddings to the logits, no product
//! casts an operand, and the gradients (the copies') are close to an f32 run's.

use candle_core::{DType, Device, Tensor};
use model::fixtures::tiny_architectures;
use model::ops::{product_casts, set_kernels, Kernels};
use model::MaskedLm;
use model::{BertConfig, Encoder, MlmInputs, ParamStore, TokenLayout};
use std::sync::Mutex;

/// The kernels' choice is the process's: the tests of this file take turns.
static KERNELS: Mutex<()> = Mutex::new(());

fn configs() -> Vec<BertConfig> {
    tiny_architectures(60)
}

/// Two packed rows of 12 tokens (four documents), the last two positions of row 1 padding.
fn inputs() -> MlmInputs {
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 7 + 3) % 60).collect();
    let mut mask = vec![1f32; 24];
    mask[22..].fill(0.0);
    let masked: Vec<u32> = vec![1, 4, 6, 9, 13, 17, 20];
    let labels: Vec<u32> = masked.iter().map(|&p| (p * 5 + 1) % 60).collect();
    MlmInputs {
        input_ids: Tensor::from_vec(ids, (2, 12), &dev).unwrap(),
        attention_mask: Tensor::from_vec(mask, (2, 12), &dev).unwrap(),
        masked_positions: Tensor::from_vec(masked, 7, &dev).unwrap(),
        masked_labels: Tensor::from_vec(labels, 7, &dev).unwrap(),
        layout: TokenLayout::of_segments(&[0, 5, 12, 15], 2, 12, &dev).unwrap(),
        loss_coefficients: None,
    }
}

struct Pass {
    loss: f32,
    hidden: DType,
    logits: DType,
    casts: u64,
    grads: Vec<(String, Tensor)>,
}

fn pass(cfg: BertConfig, compute: DType) -> Pass {
    let params = ParamStore::new(&Device::Cpu, 4).with_compute_dtype(compute);
    let model = Encoder::new(cfg, &params).unwrap();
    let inp = inputs();
    let casts = product_casts();
    let hidden = model.hidden_states(&inp, None).unwrap();
    let logits = model.mlm_logits(&hidden, &inp.masked_positions).unwrap();
    let out = model.mlm_loss(&inp, None).unwrap();
    let loss = out.mean_loss().unwrap();
    let grads = loss.backward().unwrap();
    let casts = product_casts() - casts;
    let masters = params.named_vars();
    let grads = params
        .named_compute_vars()
        .into_iter()
        .zip(masters)
        .map(|((name, v), (_, master))| {
            assert_eq!(master.dtype(), DType::F32, "{name}: parameter not f32");
            assert_eq!(v.dtype(), compute, "{name}: the model's copy");
            let g = grads.get(v.as_tensor()).unwrap();
            assert_eq!(g.dtype(), compute, "{name}: gradient");
            (name, g.to_dtype(DType::F32).unwrap())
        })
        .collect();
    Pass {
        loss: loss.to_scalar::<f32>().unwrap(),
        hidden: hidden.dtype(),
        logits: logits.dtype(),
        casts,
        grads,
    }
}

fn norm(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt()
}

fn check(kernels: Kernels) {
    let _turn = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    set_kernels(kernels);
    for cfg in configs() {
        let arch = cfg.arch;
        let (f32_pass, bf16) = (pass(cfg, DType::F32), pass(cfg, DType::BF16));
        assert_eq!(f32_pass.hidden, DType::F32, "{arch:?}");
        assert_eq!(bf16.hidden, DType::BF16, "{arch:?}: hidden states");
        assert_eq!(bf16.logits, DType::BF16, "{arch:?}: logits");
        assert_eq!(f32_pass.casts, 0, "{arch:?}: f32 products cast");
        assert_eq!(bf16.casts, 0, "{arch:?}: bf16 products cast");
        assert_ne!(f32_pass.loss, bf16.loss, "{arch:?}: bf16 should round");
        let rel = (f32_pass.loss - bf16.loss).abs() / f32_pass.loss;
        assert!(
            rel < 1e-2,
            "{arch:?}: loss {} vs {}",
            f32_pass.loss,
            bf16.loss
        );
        for ((name, g32), (_, g16)) in f32_pass.grads.iter().zip(&bf16.grads) {
            let (n32, diff) = (norm(g32), norm(&(g32 - g16).unwrap()));
            assert!(norm(g16) > 0.0, "{arch:?} {name}: zero gradient under bf16");
            // The key bias adds a constant to each query's scores, which softmax ignores: its
            // true gradient is zero and both runs hold only rounding noise there.
            if name.ends_with("attention.self.key.bias") {
                continue;
            }
            assert!(
                diff < 0.1 * n32,
                "{arch:?} {name}: gradient differs by {diff} (norm {n32})"
            );
        }
    }
    set_kernels(Kernels::Fused);
}

/// The composed path (what a device without this crate's kernels runs in bf16).
#[test]
fn bf16_runs_end_to_end_on_the_composed_path() {
    check(Kernels::Composed);
}

/// The GPU step's path with the CUDA kernels' CPU twins in bf16.
#[test]
fn bf16_runs_end_to_end_with_the_kernels_twins() {
    check(Kernels::Twins);
}
