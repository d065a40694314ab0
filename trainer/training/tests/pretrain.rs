//! The pretraining loop on tiny configurations (CPU): exact resume, overfitting, export,
//! divergence, separate evaluation shards and bf16 autocast.

use candle_core::{Device, Tensor};
use model::fixtures::{inputs, tiny};
use model::MaskedLm;
use model::{Bert, BertConfig, ParamStore};
use shared::fixtures::sample_shards;
use training::metrics_log::{read, train_losses, Record};
use training::pretrain::{Summary, TrainArgs};

/// Trains as one process.
fn pretrain(
    args: &TrainArgs,
    interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Summary> {
    let one = std::rc::Rc::new(training::dist::SingleProcess);
    training::pretrain::pretrain(args, interrupted, one)
}

mod common;

/// [`common::tiny_args`] with a global batch of 16 in micro-batches of 8.
fn train_args(shards: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> TrainArgs {
    let batch = ["--batch-size", "16", "--micro-batch", "8"];
    common::tiny_args(shards, out, &[&batch[..], extra].concat())
}

#[test]
fn a_resumed_run_reproduces_the_uninterrupted_loss_curve_exactly() {
    let (_keep, shards) = sample_shards();
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
    pretrain(&train_args(&shards, &a, &common), flag()).unwrap();
    pretrain(&train_args(&shards, &b, &common), flag()).unwrap();
    // Pretend run b died after step 3: drop its later checkpoint, then resume.
    std::fs::remove_dir_all(b.join("checkpoints/step-0000006")).unwrap();
    let mut resume = common.to_vec();
    resume.push("--resume");
    pretrain(&train_args(&shards, &b, &resume), flag()).unwrap();
    let (la, lb) = (
        train_losses(&a.join("metrics.jsonl")).unwrap(),
        train_losses(&b.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "bit-identical losses after resuming");
    // Checkpoints round-trip: the final parameters are identical too.
    let (ca, cb) = (
        training::checkpoint::load(&a.join("checkpoints/step-0000006")).unwrap(),
        training::checkpoint::load(&b.join("checkpoints/step-0000006")).unwrap(),
    );
    for (name, t) in &ca.model {
        let u = &cb.model[name];
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            u.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}"
        );
    }
    // (The run's PNGs are drawn by the binary: tests/e2e.rs checks them.)
    assert!(a.join("config.toml").exists() && a.join("summary.json").exists());
    // A changed setting is refused on resume.
    let mut other = resume.clone();
    other[9] = "cosine:0.3:0.15";
    let err = pretrain(&train_args(&shards, &b, &other), flag())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("different settings"), "{err}");
    // Starting over in a directory with checkpoints is refused.
    let err = pretrain(&train_args(&shards, &a, &common), flag())
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
    let mut opt = training::optim::AdamW::new(
        params.named_vars(),
        training::optim::AdamWConfig {
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
        .mlm_loss(&inp, None)
        .unwrap()
        .mean_loss()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mut last = first;
    for _ in 0..100 {
        let loss = model.mlm_loss(&inp, None).unwrap().mean_loss().unwrap();
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
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    pretrain(
        &train_args(&shards, &run, &["--steps", "1", "--eval-every", "0"]),
        flag,
    )
    .unwrap();
    let out = root.path().join("hf");
    training::export::export(&run, &out).unwrap();
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

/// A training run with `--precision bf16` records it, trains, checkpoints its f32 parameters
/// (not their bf16 copies) and resumes exactly; a bad spec is refused.
#[test]
fn bf16_precision_trains_resumes_exactly_and_a_bad_spec_is_refused() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let (out, resumed) = (root.path().join("bf16"), root.path().join("resumed"));
    let common = [
        "--steps",
        "4",
        "--save-every",
        "2",
        "--keep",
        "0",
        "--lr",
        "1e-3",
        "--precision",
        "bf16",
        "--device",
        "cpu",
    ];
    let summary = pretrain(&train_args(&shards, &out, &common), Default::default()).unwrap();
    assert!(summary.final_train_loss.is_finite());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["compute_dtype"], "bf16", "{config}");
    // The checkpoint holds the f32 parameters: after updates, values bf16 cannot represent.
    let saved = training::checkpoint::load(&out.join("checkpoints/step-0000004")).unwrap();
    let w = &saved.model["bert.encoder.layer.0.attention.self.query.weight"];
    assert_eq!(w.dtype(), candle_core::DType::F32);
    let rounded = w.to_dtype(candle_core::DType::BF16).unwrap();
    let rounded = rounded.to_dtype(candle_core::DType::F32).unwrap();
    let differ = (w - rounded).unwrap().abs().unwrap().max_all().unwrap();
    assert!(
        differ.to_scalar::<f32>().unwrap() > 0.0,
        "parameters rounded to bf16"
    );
    // Resumed from step 2, the run takes the same steps: the copies follow the loaded values.
    pretrain(&train_args(&shards, &resumed, &common), Default::default()).unwrap();
    std::fs::remove_dir_all(resumed.join("checkpoints/step-0000004")).unwrap();
    let mut resume = common.to_vec();
    resume.push("--resume");
    pretrain(&train_args(&shards, &resumed, &resume), Default::default()).unwrap();
    let (la, lb) = (
        train_losses(&out.join("metrics.jsonl")).unwrap(),
        train_losses(&resumed.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(la.len(), 4);
    assert_eq!(la, lb, "bit-identical bf16 losses after resuming");
    let bad = train_args(&shards, &root.path().join("x"), &["--precision", "fp16"]);
    let err = pretrain(&bad, Default::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("--precision \"fp16\""),
        "{err:#}"
    );
}

#[test]
fn a_diverging_run_stops_with_the_last_good_checkpoint() {
    let (_keep, shards) = sample_shards();
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
    let err = pretrain(&args, flag).expect_err("diverges").to_string();
    assert!(
        err.contains("is NaN") || err.contains("is inf") || err.contains("norm is"),
        "{err}"
    );
    assert!(err.contains("stopping"), "{err}");
    let saved = training::checkpoint::list(&run).unwrap();
    let (last, dir) = saved.last().expect("a checkpoint before the divergence");
    assert!(*last < 20);
    let loaded = training::checkpoint::load(dir).unwrap();
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
    let (_keep, shards) = sample_shards();
    let other = tempfile::tempdir().unwrap();
    let docs: Vec<Vec<u32>> = shared::fixtures::sample_docs()
        .into_iter()
        .rev()
        .take(20)
        .collect();
    shared::fixtures::write_set(other.path(), &docs, 100);
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
    let summary = pretrain(&args, flag).unwrap();
    assert!(summary.final_eval.is_some());
    let evals = read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r, Record::Eval { .. }))
        .count();
    assert_eq!(evals, 2);
    let err = pretrain(
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
