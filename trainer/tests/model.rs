//! Model and training-loop tests on tiny configurations (CPU).

#[path = "../../shared/tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use trainer::metrics::{read, Record};
use trainer::model::ops::Dropout;
use trainer::model::{Bert, BertConfig, MlmInputs, ParamStore};
use trainer::train::TrainArgs;

fn tiny(vocab: usize) -> BertConfig {
    BertConfig {
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

fn inputs(dev: &Device, vocab: u32) -> MlmInputs {
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
    }
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let dev = Device::Cpu;
    for pre_ln in [false, true] {
        let cfg = BertConfig { pre_ln, ..tiny(50) };
        let params = ParamStore::new(&dev, 1);
        let model = Bert::new(cfg, &params).unwrap();
        let mut dropout = Some(Dropout::new(
            rand_xoshiro::Xoshiro256PlusPlus::from_seed_u64(7),
            0.1,
        ));
        let out = model.mlm_loss(&inputs(&dev, 50), &mut dropout).unwrap();
        let grads = out.loss.backward().unwrap();
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

trait FromSeed {
    fn from_seed_u64(s: u64) -> Self;
}
impl FromSeed for rand_xoshiro::Xoshiro256PlusPlus {
    fn from_seed_u64(s: u64) -> Self {
        <Self as rand_core::SeedableRng>::seed_from_u64(s)
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
            .mlm_loss(&inp, &mut None)
            .unwrap()
            .loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = model
        .mlm_loss(&inp, &mut None)
        .unwrap()
        .loss
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

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    train: TrainArgs,
}

fn train_args(shards: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> TrainArgs {
    let mut argv: Vec<String> = vec![
        "trainer".into(),
        "--shards".into(),
        shards.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for a in [
        "--model",
        "tiny",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--intermediate",
        "64",
        "--layers",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "16",
        "--micro-batch",
        "8",
        "--eval-sequences",
        "32",
        "--eval-batch",
        "16",
        "--quiet",
    ] {
        argv.push(a.into());
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cmd::parse_from(argv).train
}

fn shards() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let docs = common::sample_docs();
    common::write_set(dir.path(), &docs, 100);
    let p = dir.path().to_path_buf();
    (dir, p)
}

fn train_losses(run: &std::path::Path) -> Vec<(u64, f64)> {
    read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| {
            if let Record::Train { step, loss, .. } = r {
                Some((step, loss))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn a_resumed_run_reproduces_the_uninterrupted_loss_curve_exactly() {
    let (_keep, shards) = shards();
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let common = [
        "--steps",
        "6",
        "--save-every",
        "3",
        "--eval-every",
        "3",
        "--keep",
        "0",
        "--schedule",
        "linear:0.3:0.15",
        "--lr",
        "1e-3",
    ];
    let flag = || std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    trainer::train::run(&train_args(&shards, &a, &common), flag()).unwrap();
    trainer::train::run(&train_args(&shards, &b, &common), flag()).unwrap();
    // Pretend run b died after step 3: drop its later checkpoint, then resume.
    std::fs::remove_dir_all(b.join("checkpoints/step-0000006")).unwrap();
    let mut resume = common.to_vec();
    resume.push("--resume");
    trainer::train::run(&train_args(&shards, &b, &resume), flag()).unwrap();
    let (la, lb) = (train_losses(&a), train_losses(&b));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "bit-identical losses after resuming");
    // Checkpoints round-trip: the final parameters are identical too.
    let (ca, cb) = (
        trainer::checkpoint::load(&a.join("checkpoints/step-0000006")).unwrap(),
        trainer::checkpoint::load(&b.join("checkpoints/step-0000006")).unwrap(),
    );
    for (name, t) in &ca.model {
        let u = &cb.model[name];
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            u.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}"
        );
    }
    assert!(
        a.join("train-loss.png").exists()
            && a.join("config.toml").exists()
            && a.join("summary.json").exists()
    );
    // A changed setting is refused on resume.
    let mut other = resume.clone();
    other[9] = "cosine:0.3:0.15";
    let err = trainer::train::run(&train_args(&shards, &b, &other), flag())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("different settings"), "{err}");
    // Starting over in a directory with checkpoints is refused.
    let err = trainer::train::run(&train_args(&shards, &a, &common), flag())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn a_tiny_model_overfits_a_fixed_batch() {
    let dev = Device::Cpu;
    let cfg = BertConfig {
        dropout: 0.0,
        ..tiny(50)
    };
    let params = ParamStore::new(&dev, 5);
    let model = Bert::new(cfg, &params).unwrap();
    let mut opt = trainer::optim::AdamW::new(
        params.named_vars(),
        trainer::optim::AdamWConfig {
            peak_lr: 1e-2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    let inp = inputs(&dev, 50);
    let first = model
        .mlm_loss(&inp, &mut None)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap();
    let mut last = first;
    for _ in 0..100 {
        let loss = model.mlm_loss(&inp, &mut None).unwrap().loss;
        last = loss.to_scalar::<f32>().unwrap();
        let g = loss.backward().unwrap();
        let grads: Vec<Tensor> = opt
            .vars()
            .iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .cloned()
                    .unwrap_or_else(|| v.as_tensor().zeros_like().unwrap())
            })
            .collect();
        opt.step(&grads, 1e-2).unwrap();
    }
    // ln(50) ≈ 3.9 at the start; memorising 5 labels drives the loss far below that.
    assert!(first > 3.0, "{first}");
    assert!(last < first / 10.0, "loss {first} -> {last}");
}

#[test]
fn export_writes_hf_names_shapes_and_config() {
    let (_keep, shards) = shards();
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    trainer::train::run(
        &train_args(&shards, &run, &["--steps", "1", "--eval-every", "0"]),
        flag,
    )
    .unwrap();
    let out = root.path().join("hf");
    trainer::export::export(&run, &out).unwrap();
    let tensors =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let (h, v, i) = (32usize, 30522usize, 64usize);
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("bert.embeddings.word_embeddings.weight".into(), vec![v, h]),
        (
            "bert.embeddings.position_embeddings.weight".into(),
            vec![512, h],
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".into(),
            vec![2, h],
        ),
        ("bert.embeddings.LayerNorm.weight".into(), vec![h]),
        ("bert.embeddings.LayerNorm.bias".into(), vec![h]),
        ("cls.predictions.bias".into(), vec![v]),
        ("cls.predictions.decoder.weight".into(), vec![v, h]),
        ("cls.predictions.decoder.bias".into(), vec![v]),
        ("cls.predictions.transform.dense.weight".into(), vec![h, h]),
        ("cls.predictions.transform.dense.bias".into(), vec![h]),
        ("cls.predictions.transform.LayerNorm.weight".into(), vec![h]),
        ("cls.predictions.transform.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..2 {
        let p = format!("bert.encoder.layer.{l}");
        for (n, s) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            expected.push((format!("{p}.{n}"), s));
        }
    }
    let mut got: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForMaskedLM");
    assert_eq!(
        (
            cfg["hidden_size"].as_u64(),
            cfg["num_hidden_layers"].as_u64(),
            cfg["intermediate_size"].as_u64()
        ),
        (Some(32), Some(2), Some(64))
    );
    assert!(out.join("tokenizer.json").exists() && out.join("maskrate_check.safetensors").exists());
}

/// The fused CPU kernels agree with the composed ops, forward and backward.
#[test]
fn fused_kernels_match_composed_ops() {
    use trainer::model::ops::{
        layer_norm, layer_norm_composed, softmax_composed, softmax_last_dim,
    };
    let dev = Device::Cpu;
    let x = candle_core::Var::from_vec(
        trainer::model::params::normal_samples(6 * 10, 2.0, 9),
        (6, 10),
        &dev,
    )
    .unwrap();
    let w = candle_core::Var::from_vec(
        trainer::model::params::normal_samples(10, 1.0, 10),
        10,
        &dev,
    )
    .unwrap();
    let b = candle_core::Var::from_vec(
        trainer::model::params::normal_samples(10, 1.0, 11),
        10,
        &dev,
    )
    .unwrap();
    let probe = Tensor::from_vec(
        trainer::model::params::normal_samples(60, 1.0, 12),
        (6, 10),
        &dev,
    )
    .unwrap();
    let close = |a: &Tensor, b: &Tensor| {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "max difference {d}");
    };
    type Op = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;
    let pairs: [(Op, Op); 4] = [
        (
            |x, _, _| trainer::model::ops::gelu(x),
            |x, _, _| x.gelu_erf(),
        ),
        (
            |x, w, _| trainer::model::ops::add_bias(x, w),
            |x, w, _| x.broadcast_add(w),
        ),
        (
            |x, w, b| layer_norm(x, w, b, 1e-12),
            |x, w, b| layer_norm_composed(x, w, b, 1e-12),
        ),
        (|x, _, _| softmax_last_dim(x), |x, _, _| softmax_composed(x)),
    ];
    for (fused, composed) in pairs {
        let (yf, yc) = (
            fused(x.as_tensor(), &w, &b).unwrap(),
            composed(x.as_tensor(), &w, &b).unwrap(),
        );
        close(&yf, &yc);
        // Gradients of <y, probe> with respect to x.
        let gf = (yf * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (yc * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // ... and with respect to the weight and bias where the op uses them.
        for v in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
            match (gf.get(v), gc.get(v)) {
                (Some(f), Some(c)) => close(f, c),
                (None, None) => {}
                (f, c) => panic!(
                    "gradient present: fused {}, composed {}",
                    f.is_some(),
                    c.is_some()
                ),
            }
        }
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The fused attention kernel equals the composed tensor-op attention, forward and backward, with
/// padded keys and with and without dropout factors.
#[test]
fn fused_attention_matches_composed_attention() {
    use rand_core::SeedableRng;
    use trainer::model::ops::{attention, attention_composed};
    let dev = Device::Cpu;
    let (b, l, h, heads) = (3usize, 7usize, 12usize, 3usize);
    let qkv = candle_core::Var::from_vec(
        trainer::model::params::normal_samples(b * l * 3 * h, 1.5, 41),
        (b, l, 3 * h),
        &dev,
    )
    .unwrap();
    let mut mask = vec![0f32; b * l];
    mask[l - 2..l].fill(-10000.0); // padding at the end of the first row
    mask[2 * l + 1] = -10000.0; // and a padded key inside the third
    let key_bias = Tensor::from_vec(mask, (b, l), &dev).unwrap();
    let probe = Tensor::from_vec(
        trainer::model::params::normal_samples(b * l * h, 1.0, 42),
        (b, l, h),
        &dev,
    )
    .unwrap();
    let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    for p in [0.0, 0.3] {
        let mut dropout = Dropout::new(rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(5), p);
        let factors = dropout.factors(b * heads * l * l);
        if p > 0.0 {
            let f = factors.as_ref().unwrap();
            assert!(f.contains(&0.0) && f.iter().any(|&v| v > 1.0));
        }
        let f32 = DType::F32;
        let yf = attention(qkv.as_tensor(), heads, &key_bias, factors.clone(), f32).unwrap();
        let yc = attention_composed(qkv.as_tensor(), heads, &key_bias, factors, f32).unwrap();
        assert_eq!(yf.dims(), &[b, l, h]);
        let d = max_abs_diff(&yf, &yc);
        assert!(d < 1e-5, "p = {p}: forward max difference {d}");
        let (gf, gc) = (grads(&yf), grads(&yc));
        let (gf, gc) = (
            gf.get(qkv.as_tensor()).unwrap(),
            gc.get(qkv.as_tensor()).unwrap(),
        );
        let d = max_abs_diff(gf, gc);
        assert!(d < 1e-5, "p = {p}: gradient max difference {d}");
        // Every block (query, key, value) gets a gradient.
        for block in 0..3 {
            let g = gf
                .narrow(2, block * h, h)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap();
            assert!(g.to_scalar::<f32>().unwrap() > 0.0, "block {block}");
        }
    }
}

/// bf16 autocast (the GPU default) on the CPU: products really run in bf16 (the loss differs from
/// fp32's, within bf16's precision), every gradient is f32, non-zero and close to fp32's; a
/// training run with `--precision bf16` records it and trains; a bad spec is refused.
#[test]
fn bf16_autocast_keeps_f32_parameters_and_gradients() {
    let dev = Device::Cpu;
    let cfg = BertConfig {
        dropout: 0.0,
        initializer_range: 0.3,
        ..tiny(50)
    };
    let run = |dtype: DType| {
        let params = ParamStore::new(&dev, 4).with_compute_dtype(dtype);
        let model = Bert::new(cfg, &params).unwrap();
        let loss = model.mlm_loss(&inputs(&dev, 50), &mut None).unwrap().loss;
        let grads = loss.backward().unwrap();
        let grads: Vec<(String, Tensor)> = params
            .named_vars()
            .into_iter()
            .map(|(name, v)| {
                assert_eq!(v.dtype(), DType::F32, "{name}: parameter not f32");
                (name, grads.get(v.as_tensor()).unwrap().clone())
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (loss32, grads32) = run(DType::F32);
    let (loss16, grads16) = run(DType::BF16);
    assert_ne!(loss32, loss16, "bf16 products should round differently");
    assert!(
        (loss32 - loss16).abs() < 1e-2 * loss32,
        "{loss32} vs {loss16}"
    );
    for ((name, g32), (_, g16)) in grads32.iter().zip(&grads16) {
        assert_eq!(g16.dtype(), DType::F32, "{name}");
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        let (n32, diff) = (norm(g32), norm(&(g32 - g16).unwrap()));
        assert!(norm(g16) > 0.0, "{name}: zero gradient under bf16");
        // The key bias adds a constant to each query's scores, which softmax ignores: its true
        // gradient is zero and both runs hold only rounding noise there.
        if name.ends_with("attention.self.key.bias") {
            continue;
        }
        assert!(
            diff < 0.1 * n32,
            "{name}: gradient differs by {diff} (norm {n32})"
        );
    }

    let (_keep, shards) = shards();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("bf16");
    let args = train_args(
        &shards,
        &out,
        &["--steps", "2", "--precision", "bf16", "--device", "cpu"],
    );
    let summary = trainer::train::run(&args, Default::default()).unwrap();
    assert!(summary.final_train_loss.is_finite());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["matmul_dtype"], "bf16", "{config}");
    let bad = train_args(&shards, &root.path().join("x"), &["--precision", "fp16"]);
    let err = trainer::train::run(&bad, Default::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("--precision \"fp16\""),
        "{err:#}"
    );
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
    };
    let grads_with = |threads: usize| -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let params = ParamStore::new(&dev, 8);
            let model = Bert::new(tiny(vocab as usize), &params).unwrap();
            let mut dropout = Some(Dropout::new(
                rand_xoshiro::Xoshiro256PlusPlus::from_seed_u64(3),
                0.1,
            ));
            let loss = model.mlm_loss(&inp, &mut dropout).unwrap().loss;
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

/// The fused cross-entropy equals candle-nn's (loss and gradient) and counts arg-max hits.
#[test]
fn fused_cross_entropy_matches_candle_nn() {
    use trainer::model::ops::cross_entropy_and_correct;
    let dev = Device::Cpu;
    let (m, v) = (7usize, 300usize);
    let x = candle_core::Var::from_vec(
        trainer::model::params::normal_samples(m * v, 3.0, 21),
        (m, v),
        &dev,
    )
    .unwrap();
    let rows = x.as_tensor().to_vec2::<f32>().unwrap();
    // Labels: the arg-max for rows 0 and 3, something else elsewhere.
    let labels: Vec<u32> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let arg = (0..v).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap() as u32;
            if i == 0 || i == 3 {
                arg
            } else {
                (arg + 1 + i as u32) % v as u32
            }
        })
        .collect();
    let labels = Tensor::from_vec(labels, m, &dev).unwrap();
    let (loss, correct) = cross_entropy_and_correct(x.as_tensor(), &labels).unwrap();
    let reference = candle_nn::loss::cross_entropy(x.as_tensor(), &labels).unwrap();
    let (a, b) = (
        loss.to_scalar::<f32>().unwrap(),
        reference.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
    assert_eq!(correct, 2);
    let gf = loss.backward().unwrap();
    let gr = reference.backward().unwrap();
    let d = max_abs_diff(
        gf.get(x.as_tensor()).unwrap(),
        gr.get(x.as_tensor()).unwrap(),
    );
    assert!(d < 1e-6, "gradient max difference {d}");
}

/// The fused bias add's gradients (input and bias) equal broadcast_add's, on a 3-d input.
#[test]
fn fused_bias_add_gradients_match() {
    let dev = Device::Cpu;
    let x = candle_core::Var::from_vec(
        trainer::model::params::normal_samples(2 * 70 * 9, 1.0, 31),
        (2, 70, 9),
        &dev,
    )
    .unwrap();
    let b = candle_core::Var::from_vec(trainer::model::params::normal_samples(9, 1.0, 32), 9, &dev)
        .unwrap();
    let probe = Tensor::from_vec(
        trainer::model::params::normal_samples(2 * 70 * 9, 1.0, 33),
        (2, 70, 9),
        &dev,
    )
    .unwrap();
    let grads = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let gf = grads(trainer::model::ops::add_bias(x.as_tensor(), b.as_tensor()).unwrap());
    let gc = grads(x.as_tensor().broadcast_add(b.as_tensor()).unwrap());
    for v in [x.as_tensor(), b.as_tensor()] {
        let d = max_abs_diff(gf.get(v).unwrap(), gc.get(v).unwrap());
        assert!(d < 1e-4, "max difference {d}");
    }
}

#[test]
fn a_diverging_run_stops_with_the_last_good_checkpoint() {
    let (_keep, shards) = shards();
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("nan");
    // A learning rate of 1e30 makes the weights overflow within a few steps.
    let args = train_args(
        &shards,
        &run,
        &[
            "--steps",
            "20",
            "--save-every",
            "1",
            "--keep",
            "0",
            "--lr",
            "1e30",
            "--warmup",
            "0",
        ],
    );
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let err = trainer::train::run(&args, flag)
        .expect_err("diverges")
        .to_string();
    assert!(
        err.contains("is NaN") || err.contains("is inf") || err.contains("norm is"),
        "{err}"
    );
    assert!(err.contains("stopping"), "{err}");
    let saved = trainer::checkpoint::list(&run).unwrap();
    let (last, dir) = saved.last().expect("a checkpoint before the divergence");
    assert!(*last < 20);
    let loaded = trainer::checkpoint::load(dir).unwrap();
    for (name, t) in &loaded.model {
        let finite = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "{name} in the kept checkpoint is finite");
    }
}

#[test]
fn eval_shards_are_used_instead_of_a_held_out_split() {
    let (_keep, shards) = shards();
    let other = tempfile::tempdir().unwrap();
    let docs: Vec<Vec<u32>> = common::sample_docs().into_iter().rev().take(20).collect();
    common::write_set(other.path(), &docs, 100);
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("r");
    let eval_dir = other.path().display().to_string();
    let args = train_args(
        &shards,
        &run,
        &[
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--eval-shards",
            &eval_dir,
        ],
    );
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let summary = trainer::train::run(&args, flag).unwrap();
    assert!(summary.final_eval.is_some());
    let evals = read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r, Record::Eval { .. }))
        .count();
    assert_eq!(evals, 2);
    let err = trainer::train::run(
        &train_args(
            &shards,
            &root.path().join("bad"),
            &["--steps", "1", "--eval-shards", "/no/such/dir"],
        ),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .expect_err("missing eval shards")
    .to_string();
    assert!(err.contains("--eval-shards /no/such/dir"), "{err}");
}

/// SIGINT to the real binary: it saves a checkpoint and exits cleanly; `--resume` then finishes
/// with the same losses as a run that was never interrupted.
#[test]
fn sigint_saves_and_resume_matches_an_uninterrupted_run() {
    let (_keep, shards) = shards();
    let root = tempfile::tempdir().unwrap();
    let flags = |out: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "--model",
            "tiny",
            "--hidden",
            "32",
            "--heads",
            "2",
            "--intermediate",
            "64",
            "--seq-len",
            "32",
            "--batch-size",
            "8",
            "--micro-batch",
            "8",
            "--eval-sequences",
            "8",
            "--steps",
            "60",
            "--save-every",
            "1000",
            "--eval-every",
            "0",
            "--quiet",
        ]
        .map(String::from)
        .to_vec();
        v.extend(["--shards".into(), shards.display().to_string()]);
        v.extend(["--out".into(), out.display().to_string()]);
        v
    };
    let run = root.path().join("interrupted");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(flags(&run))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt as soon as the first step is logged (60 steps take seconds, polling 20 ms).
    let metrics = run.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|m| m.lines().count())
        .unwrap_or(0)
        < 1
    {
        assert!(start.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "clean exit after SIGINT: {err}");
    assert!(err.contains("interrupted: saved"), "{err}");
    let (stopped_at, _) = *trainer::checkpoint::list(&run).unwrap().last().unwrap();
    assert!(stopped_at < 60, "stopped early at {stopped_at}");

    let mut resume = flags(&run);
    resume.push("--resume".into());
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&resume)
        .status()
        .unwrap();
    assert!(status.success());
    let whole = root.path().join("whole");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(flags(&whole))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(train_losses(&run), train_losses(&whole));
}
