//! GLUE readers, fine-tuning and BLiMP scoring on the fixtures in `data/` (CPU, tiny models).

use candle_core::{Device, Tensor};
use evaluation::blimp::{pll_scores, read_pairs};
use evaluation::classifier::{bind, build, encode_all};
use evaluation::finetune::{majority_baseline, train_seed, FinetuneOptions, TaskData};
use evaluation::tasks::{read_tsv, Hyper, Label, Task};
use model::BertConfig;
use model::MaskedLm;
use std::path::{Path, PathBuf};
use training::saved_model::Pretrained;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data")
        .join(rel)
}

fn glue(task: &str, file: &str) -> PathBuf {
    data(&format!("glue/{task}/{file}"))
}

#[test]
fn every_task_layout_is_read_with_its_labels() {
    // (task, train rows, first train sentence a, its label, dev rows)
    let cola = read_tsv(Task::CoLA, &glue("CoLA", "train.tsv"), false, false).unwrap();
    assert_eq!(cola.examples.len(), 200, "CoLA train has no header row");
    assert_eq!(
        cola.examples[0].a,
        "Our friends won't buy this analysis, let alone the next one we propose."
    );
    assert_eq!(cola.examples[0].label, Label::Class(1));
    assert!(cola.examples[0].b.is_none());

    let sst = read_tsv(Task::Sst2, &glue("SST-2", "dev.tsv"), false, false).unwrap();
    assert_eq!(sst.examples.len(), 100);
    assert_eq!(
        sst.examples[1].a.trim(),
        "unflinchingly bleak and desperate"
    );
    assert_eq!(sst.examples[1].label, Label::Class(0));

    let mrpc = read_tsv(Task::Mrpc, &glue("MRPC", "dev.tsv"), false, false).unwrap();
    assert_eq!(
        mrpc.examples.len(),
        100,
        "the BOM before `Quality` is handled"
    );
    assert_eq!(mrpc.examples[1].label, Label::Class(0));
    assert!(mrpc.examples[0]
        .b
        .as_deref()
        .unwrap()
        .starts_with("\" The foodservice"));

    let sts = read_tsv(Task::Stsb, &glue("STS-B", "dev.tsv"), false, false).unwrap();
    assert_eq!(sts.examples[1].a, "A young child is riding a horse.");
    assert_eq!(sts.examples[1].label, Label::Score(4.75));

    let rte = read_tsv(Task::Rte, &glue("RTE", "dev.tsv"), false, false).unwrap();
    assert_eq!(rte.examples[0].label, Label::Class(1), "not_entailment = 1");
    assert_eq!(rte.examples[1].label, Label::Class(0));
    assert_eq!(
        rte.examples[0].b.as_deref(),
        Some("Christopher Reeve had an accident.")
    );

    let qnli = read_tsv(Task::Qnli, &glue("QNLI", "train.tsv"), false, false).unwrap();
    assert_eq!(qnli.examples.len(), 4);
    assert_eq!(qnli.examples[1].label, Label::Class(1));
    assert_eq!(qnli.examples[0].a, "What colour is the sky?");

    let mnli = read_tsv(Task::Mnli, &glue("MNLI", "dev_matched.tsv"), false, false).unwrap();
    assert_eq!(mnli.examples[0].a, "The children sing.");
    assert_eq!(
        mnli.examples[0].label,
        Label::Class(1),
        "gold_label, not label1..5"
    );
    assert_eq!(mnli.examples[1].label, Label::Class(0));

    let qqp = read_tsv(Task::Qqp, &glue("QQP", "train.tsv"), false, false).unwrap();
    assert_eq!(
        qqp.examples[0].b.as_deref(),
        Some("What is the best way to learn swimming?")
    );
    assert_eq!(qqp.examples[1].label, Label::Class(0));

    let wnli = read_tsv(Task::Wnli, &glue("WNLI", "train.tsv"), false, false).unwrap();
    assert_eq!(wnli.examples[0].label, Label::Class(1));

    // Test files: no labels, ids kept for the submission.
    for task in Task::ALL {
        for (file, _) in task.test_files() {
            let t = read_tsv(task, &glue(task.dir_name(), file), true, false).unwrap();
            assert!(!t.examples.is_empty(), "{task} {file}");
            assert!(t.examples.iter().all(|e| e.label == Label::None));
            assert_eq!(t.examples[0].id, "0", "{task} {file}");
        }
    }
}

#[test]
fn bad_rows_name_file_and_line_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.tsv");
    std::fs::write(
        &path,
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly one column\n2\tc\td\tmaybe\n",
    )
    .unwrap();
    let err = read_tsv(Task::Rte, &path, false, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dev.tsv:3") && err.contains("columns"),
        "{err}"
    );
    let read = read_tsv(Task::Rte, &path, false, true).unwrap();
    assert_eq!(read.examples.len(), 1);
    assert_eq!(read.skipped.len(), 2);
    assert!(
        read.skipped[1].contains(":4: label \"maybe\""),
        "{:?}",
        read.skipped
    );

    let err = read_tsv(Task::Stsb, &glue("RTE", "dev.tsv"), false, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no column \"score\""),
        "wrong task's file: {err}"
    );
}

#[test]
fn pairs_are_encoded_with_types_and_longest_first_truncation() {
    let tok = shared::tokenizer::LoadedTokenizer::load(None).unwrap();
    let long = "word ".repeat(40);
    let enc = encode_all(
        &tok.tokenizer,
        &[("a short one", Some(long.as_str())), ("single", None)],
        16,
    )
    .unwrap();
    let (cls, sep) = (tok.info.cls_id, tok.info.sep_id);
    let e = &enc[0];
    assert_eq!(e.ids.len(), 16);
    assert_eq!(e.ids[0], cls);
    // "a short one" (3 tokens) survives whole: the longer side is cut first.
    assert_eq!(e.ids[4], sep);
    assert_eq!(e.types[..5], [0, 0, 0, 0, 0]);
    assert!(e.types[5..].iter().all(|&t| t == 1));
    assert_eq!(*e.ids.last().unwrap(), sep);
    assert_eq!(enc[1].ids.len(), 3);
    assert_eq!(enc[1].types, vec![0, 0, 0]);
}

fn tiny_pretrained(vocab: usize, seed: u64) -> Pretrained {
    tiny_pretrained_of(model::Arch::Bert, vocab, seed)
}

/// A tiny freshly initialised model of `arch` (ModernBERT: 3 layers, so one is local).
fn tiny_pretrained_of(arch: model::Arch, vocab: usize, seed: u64) -> Pretrained {
    let mut config = BertConfig {
        arch: model::bert_config::Arch::Bert,
        modern: Default::default(),
        vocab_size: vocab,
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        dropout: 0.1,
        pre_ln: false,
        initializer_range: 0.02,
    };
    if arch == model::Arch::ModernBert {
        let mut modern = BertConfig::from_arch_preset(arch, "tiny", vocab).unwrap();
        (
            modern.hidden_size,
            modern.num_hidden_layers,
            modern.num_attention_heads,
        ) = (32, 3, 2);
        modern.intermediate_size = 48;
        modern.max_position_embeddings = 64;
        config = modern;
    }
    Pretrained::initialised(
        config,
        shared::tokenizer::LoadedTokenizer::load(None).unwrap(),
        seed,
    )
    .unwrap()
}

/// An SST-2-layout task a model must learn: the label is whether a cue word is "great" or
/// "awful", among random filler words; 70% of rows are negative, so guessing scores 0.7.
fn write_easy_task(dir: &Path) {
    let filler = [
        "the", "film", "was", "quite", "a", "story", "with", "some", "actors", "and", "music",
        "long", "scenes", "plot", "ending",
    ];
    let mut state = 12345u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (file, n) in [("train.tsv", 300), ("dev.tsv", 100)] {
        let mut text = String::from("sentence\tlabel\n");
        for _ in 0..n {
            let positive = next() % 10 < 3;
            let mut words: Vec<&str> = (0..6).map(|_| filler[(next() % 15) as usize]).collect();
            let at = (next() % 7) as usize;
            words.insert(at, if positive { "great" } else { "awful" });
            text.push_str(&format!("{}\t{}\n", words.join(" "), positive as u8));
        }
        std::fs::write(dir.join(file), text).unwrap();
    }
}

#[test]
fn fine_tuning_beats_the_majority_class_on_an_easy_task() {
    fine_tuning_beats_the_majority_class(model::Arch::Bert);
}

#[test]
fn modernbert_fine_tuning_beats_the_majority_class_on_an_easy_task() {
    fine_tuning_beats_the_majority_class(model::Arch::ModernBert);
}

fn fine_tuning_beats_the_majority_class(arch: model::Arch) {
    let dir = tempfile::tempdir().unwrap();
    write_easy_task(dir.path());
    let pre = tiny_pretrained_of(arch, 30522, 1);
    let opts = FinetuneOptions {
        seeds: 1,
        seed: 0,
        max_len: 32,
        warmup: 0.06,
        weight_decay: 0.0,
        clip: 1.0,
        max_train: None,
        max_eval: None,
        epochs: None,
        skip_bad_rows: false,
        predict_test: false,
        runtime: training::runtime::RuntimeArgs {
            device: "cpu".into(),
            quiet: true,
            kernels: model::ops::Kernels::Fused,
        },
    };
    let data = TaskData::load(Task::Sst2, dir.path(), &pre, &opts, false).unwrap();
    let gold: Vec<Label> = data.dev[0].iter().map(|(_, l)| *l).collect();
    let majority = majority_baseline(&gold);
    assert!(majority >= 0.6, "the dev set is imbalanced: {majority}");
    let hyper = Hyper {
        lr: 2e-3,
        epochs: 4,
        batch_size: 16,
    };
    let bar = indicatif::ProgressBar::hidden();
    let trained = train_seed(&pre, &data, hyper, &opts, 0, &Device::Cpu, &bar).unwrap();
    let acc = trained.result.metrics["accuracy"];
    assert!(
        acc >= majority + 0.15,
        "{}: accuracy {acc:.3} vs majority {majority:.3}",
        arch.name()
    );
    // The same seed gives the same model (seeded head, order and dropout).
    let again = train_seed(&pre, &data, hyper, &opts, 0, &Device::Cpu, &bar).unwrap();
    assert_eq!(again.result.metrics, trained.result.metrics);
    assert_eq!(
        again.result.final_train_loss,
        trained.result.final_train_loss
    );
}

#[test]
fn binding_loads_the_encoder_and_refuses_misshaped_tensors() {
    let pre = tiny_pretrained(30522, 7);
    let (p, _) = build(pre.config, 2, &Device::Cpu, 0).unwrap();
    let fresh = bind(&p, &pre).unwrap();
    let mut fresh_sorted = fresh.clone();
    fresh_sorted.sort();
    assert_eq!(
        fresh_sorted,
        vec![
            "bert.pooler.dense.bias",
            "bert.pooler.dense.weight",
            "classifier.bias",
            "classifier.weight"
        ]
    );
    let name = "bert.encoder.layer.0.attention.self.query.weight";
    let loaded = p
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1;
    let diff = (loaded.as_tensor() - &pre.tensors[name])
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);

    let mut bad = tiny_pretrained(30522, 7);
    bad.tensors.insert(
        name.into(),
        Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = bind(&p, &bad).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("[3, 3]"), "{err}");
}

/// ModernBERT: everything but `classifier.*` comes from the pretrained model, the prediction
/// head (`head.dense`, `head.norm`) included, as `ModernBertForSequenceClassification
/// .from_pretrained` loads it; the classifier's logits follow from the [CLS] state through that
/// head, computed here by hand from the bound tensors.
#[test]
fn modernbert_binding_loads_encoder_and_head_and_pools_cls() {
    let mut pre = tiny_pretrained_of(model::Arch::ModernBert, 30522, 7);
    let checked = [
        "head.dense.weight",
        "head.norm.weight",
        "model.layers.2.mlp.Wo.weight",
    ];
    // Pretrained values no fresh initialisation has (a norm starts at ones, as it would here).
    for name in checked {
        let t = &pre.tensors[name];
        let moved = ((t * 1.5).unwrap() + 0.25).unwrap();
        pre.tensors.insert(name.to_string(), moved);
    }
    let (p, classifier) = build(pre.config, 3, &Device::Cpu, 0).unwrap();
    let mut fresh = bind(&p, &pre).unwrap();
    fresh.sort();
    assert_eq!(fresh, vec!["classifier.bias", "classifier.weight"]);
    let var = |n: &str| {
        p.named_vars()
            .into_iter()
            .find(|(name, _)| name == n)
            .unwrap_or_else(|| panic!("{n}"))
            .1
            .as_tensor()
            .clone()
    };
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for name in checked {
        assert_eq!(flat(&var(name)), flat(&pre.tensors[name]), "{name}");
    }
    // The classifier's weight: truncated normal with σ = 32^-1/2, cut at 2σ (transformers').
    let w = var("classifier.weight")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bound = 2.0 * 32f32.powf(-0.5);
    assert!(w.iter().all(|x| x.abs() <= bound + 1e-6), "{w:?}");
    assert!(w.iter().any(|x| x.abs() > 0.5 * bound), "{w:?}");

    let tok = shared::tokenizer::LoadedTokenizer::load(None).unwrap();
    let enc = encode_all(&tok.tokenizer, &[("a fine film", Some("it was great"))], 32).unwrap();
    let batch = evaluation::classifier::PairBatch::new(&[&enc[0]], 0, &Device::Cpu).unwrap();
    let logits = classifier
        .forward(&batch, None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // By hand: [CLS]'s final state → dense → exact GELU → norm (no bias) → classifier.
    let encoder = model::Encoder::new(pre.config, &p).unwrap();
    let hidden = encoder
        .encode(&batch.input_ids, &batch.attention_mask, None)
        .unwrap();
    let cls: Vec<f32> = hidden.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
    let dense = var("head.dense.weight").to_vec2::<f32>().unwrap();
    let gelu = |x: f32| 0.5 * x as f64 * (1.0 + series_erf(x as f64 / 2f64.sqrt()));
    let t: Vec<f64> = dense
        .iter()
        .map(|row| gelu(row.iter().zip(&cls).map(|(w, x)| w * x).sum()))
        .collect();
    let mean = t.iter().sum::<f64>() / t.len() as f64;
    let var_t = t.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / t.len() as f64;
    let gamma = var("head.norm.weight").to_vec1::<f32>().unwrap();
    let normed: Vec<f64> = t
        .iter()
        .zip(&gamma)
        .map(|(x, g)| (x - mean) / (var_t + pre.config.layer_norm_eps).sqrt() * *g as f64)
        .collect();
    let cw = var("classifier.weight").to_vec2::<f32>().unwrap();
    let cb = var("classifier.bias").to_vec1::<f32>().unwrap();
    for (k, (row, b)) in cw.iter().zip(&cb).enumerate() {
        let want = row
            .iter()
            .zip(&normed)
            .map(|(w, x)| *w as f64 * x)
            .sum::<f64>()
            + *b as f64;
        assert!(
            (logits[0][k] as f64 - want).abs() < 1e-4,
            "class {k}: {} vs {want}",
            logits[0][k]
        );
    }
}

/// erf from its Maclaurin series (an independent reference for the exact GELU; to ~1e-12 for
/// |x| < 3, far beyond what the small pre-activations of a tiny model need).
fn series_erf(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..60 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Log-probability of `ids[pos]` with that position masked, from one unbatched, unpadded forward
/// pass and a float64 log-softmax on the host.
fn pll_one_at_a_time(model: &model::Encoder, ids: &[u32], mask_id: u32, special: &[u32]) -> f64 {
    let dev = Device::Cpu;
    let mut total = 0.0;
    for pos in 0..ids.len() {
        if special.contains(&ids[pos]) {
            continue;
        }
        let mut masked = ids.to_vec();
        masked[pos] = mask_id;
        let input = Tensor::from_vec(masked, (1, ids.len()), &dev).unwrap();
        let attn = Tensor::ones((1, ids.len()), candle_core::DType::F32, &dev).unwrap();
        let hidden = model.encode(&input, &attn, None).unwrap();
        let logits = model
            .mlm_logits(
                &hidden,
                &Tensor::from_vec(vec![pos as u32], 1, &dev).unwrap(),
            )
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max
            + logits
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        total += logits[ids[pos] as usize] as f64 - lse;
    }
    total
}

#[test]
fn batched_pll_equals_one_mask_at_a_time() {
    let pre = tiny_pretrained(30522, 3);
    let model = pre.mlm_model(&Device::Cpu).unwrap();
    let pairs = read_pairs(&data("blimp"), Some(2)).unwrap();
    assert_eq!(pairs.len(), 10, "5 fixture paradigms x 2");
    let tok = &pre.tokenizer;
    let ids: Vec<Vec<u32>> = pairs
        .iter()
        .flat_map(|p| [&p.sentence_good, &p.sentence_bad])
        .map(|s| {
            tok.tokenizer
                .encode(s.as_str(), true)
                .unwrap()
                .get_ids()
                .to_vec()
        })
        .collect();
    // Batches of 7 rows mix sentences of different lengths, so padding is exercised.
    let mut seen = 0;
    let batched = pll_scores(&model, &ids, &tok.info, 7, &Device::Cpu, || seen += 1).unwrap();
    assert_eq!(seen, ids.len());
    for (s, got) in ids.iter().zip(&batched) {
        let want = pll_one_at_a_time(&model, s, tok.info.mask_id, &tok.info.special_ids);
        assert!(
            (got - want).abs() < 1e-3 * want.abs().max(1.0),
            "batched {got} vs one at a time {want}"
        );
        assert!(want < 0.0);
    }
}
