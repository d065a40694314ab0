//! The MLM loss with rates per row: a batch's weighted loss against LLaDA's formula computed by
//! hand from the model's logits, for each normalisation; the step's normalisation does not
//! depend on the micro-batch split; and a masked-diffusion run end to end.

use candle_core::Device;
use model::fixtures::tiny;
use model::{Bert, MaskedLm, MlmInputs, ParamStore};
use shared::fixtures::{sample_shards, SampleSet};
use shared::sampler::{
    Batch, Layout, LossNorm, LossTerms, LossWeight, MaskVocab, MaskingConfig, MaskingSampler,
    SamplerConfig, Sequences, IGNORE_LABEL,
};
use training::metrics_log::{read, Record};

/// Packed rows of 64 (so their maskable counts differ by their documents' [CLS] and [SEP]) at
/// rates from `stratified:0.001:1`, all-[MASK] replacement.
fn diffusion_batch(f: &SampleSet) -> Batch {
    let seqs = Sequences::new(f.set.clone(), &f.tok.info, Layout::PackDocs, 64, 1).unwrap();
    let cfg = SamplerConfig {
        seed: 3,
        global_batch: 12,
        total_steps: 10,
        schedule: "constant:0.15".parse().unwrap(),
        masking: MaskingConfig {
            mask_fraction: 1.0,
            random_fraction: 0.0,
            ..Default::default()
        },
        order: Default::default(),
        rate_dist: "stratified:0.001:1".parse().unwrap(),
        rate_per_document: false,
    };
    let s = MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&f.tok), cfg).unwrap();
    s.global_batch(2).unwrap()
}

/// LLaDA's loss by hand: Σ CE/p over masked tokens (p the row's rate, clipped at `eps`), divided
/// as `norm` says, from the logits at the masked positions (f64 log-softmax on the host) and
/// maskable counts taken from the batch's tokens (real and not special).
fn llada(b: &Batch, logits: &[Vec<f32>], special: &[u32], eps: f64, norm: LossNorm) -> f64 {
    let original = |i: usize| match b.labels[i] {
        IGNORE_LABEL => b.input_ids[i],
        l => l as u32,
    };
    let maskable: Vec<f64> = (0..b.rows())
        .map(|r| {
            (r * b.seq_len..(r + 1) * b.seq_len)
                .filter(|&i| b.attention_mask[i] == 1 && !special.contains(&original(i)))
                .count() as f64
        })
        .collect();
    let mut per_row = vec![0f64; b.rows()];
    for (k, &p) in b.masked_positions.iter().enumerate() {
        let x = &logits[k];
        let max = x.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let label = b.masked_labels[k] as usize;
        let row = p as usize / b.seq_len;
        per_row[row] += (lse - x[label] as f64) / b.row_rates[row].max(eps);
    }
    let sum: f64 = per_row.iter().sum();
    match norm {
        LossNorm::Masked => sum / b.masked_positions.len() as f64,
        LossNorm::Token => sum / maskable.iter().sum::<f64>(),
        LossNorm::Sequence => {
            per_row
                .iter()
                .zip(&maskable)
                .map(|(s, m)| s / m.max(1.0))
                .sum::<f64>()
                / b.rows() as f64
        }
        LossNorm::Batch => sum / b.rows() as f64,
    }
}

#[test]
fn inverse_rate_loss_matches_lladas_formula_for_each_normalisation() {
    let f = SampleSet::new(64);
    let b = diffusion_batch(&f);
    assert!(b.row_rates.iter().any(|&r| r < 0.1) && b.row_rates.iter().any(|&r| r > 0.9));
    assert!(b.row_maskable.iter().any(|&m| m != b.row_maskable[0]));
    let dev = Device::Cpu;
    let cfg = model::BertConfig {
        dropout: 0.0,
        max_position_embeddings: 128,
        ..tiny(f.tok.info.vocab_size)
    };
    let params = ParamStore::new(&dev, 11);
    let bert = Bert::new(cfg, &params).unwrap();
    let plain = MlmInputs::from_batch(&b, &dev).unwrap();
    let hidden = bert.hidden_states(&plain, None).unwrap();
    let logits: Vec<Vec<f32>> = bert
        .mlm_logits(&hidden, &plain.masked_positions)
        .unwrap()
        .to_vec2()
        .unwrap();
    let weight = LossWeight::InverseRate { eps: 1e-3 };
    let special = &f.tok.info.special_ids;
    for norm in [
        LossNorm::Masked,
        LossNorm::Token,
        LossNorm::Sequence,
        LossNorm::Batch,
    ] {
        let terms = LossTerms::of(&b, weight, norm);
        let inputs = MlmInputs::from_batch(&b, &dev)
            .unwrap()
            .with_coefficients(terms.coefficients, &dev)
            .unwrap();
        let sum = bert.mlm_loss(&inputs, None).unwrap().loss_sum;
        let ours = sum.to_scalar::<f32>().unwrap() as f64 / terms.denominator;
        let hand = llada(&b, &logits, special, 1e-3, norm);
        assert!(
            (ours - hand).abs() < 1e-6 * hand,
            "{norm:?}: {ours} vs {hand}"
        );
    }
}

mod common;

/// A masked-diffusion run's masking and loss: all [MASK], the 1/rate weight, divided by the
/// step's maskable tokens.
const DIFFUSION: &[&str] = &[
    "--mask-token-fraction",
    "1",
    "--random-token-fraction",
    "0",
    "--loss-weight",
    "inverse-rate",
    "--loss-norm",
    "token",
];

fn run(shards: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Vec<Record> {
    let args = common::tiny_args(shards, out, extra);
    let one = std::rc::Rc::new(training::dist::SingleProcess);
    training::pretrain::pretrain(&args, Default::default(), one).unwrap();
    read(&out.join("metrics.jsonl")).unwrap()
}

fn train_rows(records: &[Record]) -> Vec<(f64, f64, f64)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Train {
                loss,
                grad_norm,
                mask_rate,
                ..
            } => Some((*loss, *grad_norm, *mask_rate)),
            _ => None,
        })
        .collect()
}

/// The loss is divided by the whole step's denominator, so one micro-batch of 16 and two of 8
/// train alike (a mean per micro-batch would weigh a micro-batch with fewer masked tokens as
/// much as one with more), with the default normalisation and with the diffusion one.
#[test]
fn the_step_loss_does_not_depend_on_the_micro_batch_split() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    for (k, extra) in [
        &[][..],
        &[
            "--rate-dist",
            "stratified:0.001:1",
            "--loss-weight",
            "inverse-rate",
            "--loss-norm",
            "token",
        ][..],
    ]
    .iter()
    .enumerate()
    {
        let common = [
            &["--steps", "3", "--dropout", "0", "--batch-size", "16"][..],
            extra,
        ]
        .concat();
        let whole = run(
            &shards,
            &root.path().join(format!("whole{k}")),
            &[&common[..], &["--micro-batch", "16"]].concat(),
        );
        let split = run(
            &shards,
            &root.path().join(format!("split{k}")),
            &[&common[..], &["--micro-batch", "8"]].concat(),
        );
        let (whole, split) = (train_rows(&whole), train_rows(&split));
        assert_eq!(whole.len(), 3);
        for (step, (a, b)) in whole.iter().zip(&split).enumerate() {
            assert!(
                (a.0 - b.0).abs() < 1e-5 * a.0,
                "{extra:?} step {step}: loss {} vs {}",
                a.0,
                b.0
            );
            assert!(
                (a.1 - b.1).abs() < 1e-4 * a.1,
                "{extra:?} step {step}: norm {} vs {}",
                a.1,
                b.1
            );
            assert!(
                (a.2 - b.2).abs() < 1e-12,
                "the step's mean rate: {} vs {}",
                a.2,
                b.2
            );
        }
    }
}

/// ModernBERT as a masked-diffusion LM on packed documents, one rate per document: every step's
/// mean rate is the rows' (not a schedule's constant), and the loss is finite.
#[test]
fn a_masked_diffusion_run_trains_with_rates_per_document() {
    let (_keep, shards) = sample_shards();
    let out = tempfile::tempdir().unwrap();
    let rows = train_rows(&run(
        &shards,
        out.path(),
        &[
            "--arch",
            "modernbert",
            "--steps",
            "4",
            "--batch-size",
            "16",
            "--layout",
            "pack-docs",
            "--rate-dist",
            "stratified:0.001:1",
            "--rate-per-document",
        ]
        .iter()
        .chain(DIFFUSION)
        .copied()
        .collect::<Vec<_>>(),
    ));
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter().all(|r| r.0.is_finite() && r.1.is_finite()),
        "{rows:?}"
    );
    let rates: Vec<f64> = rows.iter().map(|r| r.2).collect();
    assert!(rates.iter().all(|r| (0.2..0.8).contains(r)), "{rates:?}");
    assert!(rates.windows(2).any(|w| w[0] != w[1]), "{rates:?}");
}

/// A model whose logits are all equal scores exactly ln V nats per token on the held-out ELBO
/// (each draw's masked tokens weigh n/m, so the bound is the mean cross-entropy, ln V), and the
/// draws are the same every time.
#[test]
fn the_elbo_of_uniform_logits_is_ln_v() {
    let f = SampleSet::new(64);
    let seqs = Sequences::new(f.set.clone(), &f.tok.info, Layout::Truncate, 32, 1).unwrap();
    let dev = Device::Cpu;
    let cfg = model::BertConfig {
        dropout: 0.0,
        ..tiny(f.tok.info.vocab_size)
    };
    let params = ParamStore::new(&dev, 2);
    let encoder = model::Encoder::new(cfg, &params).unwrap();
    // The decoder is tied to the word embeddings: zero them and the decoder's bias, and every
    // logit is 0.
    for (name, var) in params.named_vars() {
        if name.contains("word_embeddings") || name == "cls.predictions.bias" {
            var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        }
    }
    let held_out = vec![(String::new(), seqs.clone().split_tail(40).unwrap().1)];
    let one = training::dist::SingleProcess;
    let evaluator = training::held_out::Evaluator::new(held_out, &f.tok, 16, 3)
        .unwrap()
        .unwrap();
    let elbo = evaluator.elbo(&encoder, &dev, &one).unwrap().unwrap();
    let ln_v = (f.tok.info.vocab_size as f64).ln();
    assert!((elbo - ln_v).abs() < 1e-5, "{elbo} vs ln V {ln_v}");
    let again = evaluator.elbo(&encoder, &dev, &one).unwrap().unwrap();
    assert_eq!(elbo, again);
    let none = training::held_out::Evaluator::new(
        vec![(String::new(), seqs.split_tail(40).unwrap().1)],
        &f.tok,
        16,
        0,
    )
    .unwrap()
    .unwrap();
    assert_eq!(none.elbo(&encoder, &dev, &one).unwrap(), None);
}

/// A diffusion run logs `eval_elbo` at each evaluation (draws on by default with a rate
/// distribution), and training lowers it.
#[test]
fn training_lowers_the_held_out_elbo() {
    let (_keep, shards) = sample_shards();
    let out = tempfile::tempdir().unwrap();
    let records = run(
        &shards,
        out.path(),
        &[
            "--steps",
            "40",
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
            "--dropout",
            "0",
            "--eval-every",
            "5",
            "--rate-dist",
            "uniform:0.05:1",
        ]
        .iter()
        .chain(DIFFUSION)
        .copied()
        .collect::<Vec<_>>(),
    );
    let elbos: Vec<f64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Eval { eval_elbo, .. } => *eval_elbo,
            _ => None,
        })
        .collect();
    assert_eq!(elbos.len(), 8, "{records:?}");
    assert!(elbos[7] < elbos[0] - 0.5, "{elbos:?}");
}
