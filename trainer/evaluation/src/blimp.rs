//! `trainer blimp`: zero-shot grammaticality on BLiMP minimal pairs, scored by
//! pseudo-log-likelihood (Salazar et al., 2020): mask each token in turn and sum the
//! log-probabilities of the original tokens. A pair is right when the good sentence scores higher.
//! Accuracy per paradigm (UID), per phenomenon (`linguistics_term`), per field, and overall.

use crate::CheckpointArgs;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use clap::Args;
use model::Encoder;
use model::MaskedLm;
use serde::{Deserialize, Serialize};
use shared::tokenizer::TokenizerInfo;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use training::runtime::RuntimeArgs;
use training::saved_model::Pretrained;

/// `trainer blimp` flags.
#[derive(Debug, Clone, Args)]
pub struct BlimpArgs {
    #[command(flatten)]
    pub source: CheckpointArgs,
    /// Directory of BLiMP `*.jsonl` paradigm files.
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N pairs of each paradigm (for quick comparisons).
    #[arg(long)]
    pub max_pairs: Option<usize>,
    /// Masked copies scored per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_rows: usize,
    /// Output directory (default: CHECKPOINT/blimp).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// One minimal pair.
#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    /// The grammatical sentence.
    pub sentence_good: String,
    /// The ungrammatical one.
    pub sentence_bad: String,
    /// Paradigm.
    #[serde(rename = "UID")]
    pub uid: String,
    /// Phenomenon.
    pub linguistics_term: String,
    /// Syntax, semantics, morphology, …
    pub field: String,
}

/// Reads every `*.jsonl` in `dir` (sorted), at most `max_pairs` per file.
pub fn read_pairs(dir: &Path, max_pairs: Option<usize>) -> Result<Vec<Pair>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    if files.is_empty() {
        bail!("{}: no BLiMP .jsonl files", dir.display());
    }
    let mut pairs = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if max_pairs.is_some_and(|m| n >= m) {
                break;
            }
            let p: Pair = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a BLiMP pair", f.display(), i + 1))?;
            pairs.push(p);
            n += 1;
        }
    }
    Ok(pairs)
}

/// Pseudo-log-likelihoods of tokenized sentences (ids with `[CLS]`/`[SEP]`): every non-special
/// position is masked in its own copy; copies of many sentences share a forward pass of up to
/// `batch_rows` rows.
pub fn pll_scores(
    model: &Encoder,
    sentences: &[Vec<u32>],
    tok: &TokenizerInfo,
    batch_rows: usize,
    device: &Device,
    mut on_sentence: impl FnMut(),
) -> Result<Vec<f64>> {
    let (special, mask_id, pad_id) = (&tok.special_ids, tok.mask_id, tok.pad_id);
    let mut scores = vec![0f64; sentences.len()];
    // (sentence index, position) of every masked copy, in order.
    let mut rows: Vec<(usize, usize)> = Vec::new();
    let flush = |rows: &mut Vec<(usize, usize)>, scores: &mut [f64]| -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let picked = masked_log_probs(model, sentences, rows, mask_id, pad_id, device)?;
        for (&(s, _), lp) in rows.iter().zip(picked) {
            scores[s] += lp as f64;
        }
        rows.clear();
        Ok(())
    };
    for (s, sent) in sentences.iter().enumerate() {
        for (pos, id) in sent.iter().enumerate() {
            if !special.contains(id) {
                rows.push((s, pos));
            }
        }
        if rows.len() >= batch_rows {
            flush(&mut rows, &mut scores)?;
        }
        on_sentence();
    }
    flush(&mut rows, &mut scores)?;
    Ok(scores)
}

/// For each `(sentence, position)` row: the log-probability of the sentence's token at that
/// position with the position masked, all rows in one forward pass.
fn masked_log_probs(
    model: &Encoder,
    sentences: &[Vec<u32>],
    rows: &[(usize, usize)],
    mask_id: u32,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<f32>> {
    let len = rows
        .iter()
        .map(|&(s, _)| sentences[s].len())
        .max()
        .unwrap_or(1);
    let n = rows.len();
    let (mut ids, mut mask) = (vec![pad_id; n * len], vec![0f32; n * len]);
    let (mut positions, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (r, &(s, pos)) in rows.iter().enumerate() {
        let sent = &sentences[s];
        ids[r * len..r * len + sent.len()].copy_from_slice(sent);
        mask[r * len..r * len + sent.len()].fill(1.0);
        ids[r * len + pos] = mask_id;
        positions.push((r * len + pos) as u32);
        labels.push(sent[pos]);
    }
    let input = Tensor::from_vec(ids, (n, len), device)?;
    let attn = Tensor::from_vec(mask, (n, len), device)?;
    let hidden = model.encode(&input, &attn, None)?;
    let logits = model.mlm_logits(&hidden, &Tensor::from_vec(positions, n, device)?)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp
        .gather(&Tensor::from_vec(labels, (n, 1), device)?, 1)?
        .squeeze(1)?
        .to_vec1::<f32>()?;
    Ok(picked)
}

/// Accuracy of a group of pairs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Group {
    /// Pairs where the good sentence scored higher.
    pub correct: usize,
    /// Pairs.
    pub total: usize,
    /// correct / total.
    pub accuracy: f64,
}

impl Group {
    fn add(&mut self, right: bool) {
        self.correct += right as usize;
        self.total += 1;
        self.accuracy = self.correct as f64 / self.total as f64;
    }
}

/// The BLiMP result.
#[derive(Debug, Clone, Serialize)]
pub struct BlimpReport {
    /// Weights evaluated.
    pub checkpoint: PathBuf,
    /// Over all pairs.
    pub overall: Group,
    /// Mean of the per-paradigm accuracies (BLiMP's headline number; equals `overall` when every
    /// paradigm has the same number of pairs).
    pub paradigm_mean: f64,
    /// Per phenomenon.
    pub by_term: BTreeMap<String, Group>,
    /// Per field.
    pub by_field: BTreeMap<String, Group>,
    /// Per paradigm.
    pub by_paradigm: BTreeMap<String, Group>,
    /// Pairs scored per second.
    pub pairs_per_sec: f64,
    /// Wall time.
    pub seconds: f64,
}

impl BlimpReport {
    /// Per-phenomenon table in markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "BLiMP (pseudo-log-likelihood) for `{}`: {:.2}% of {} pairs (paradigm mean {:.2}%)\n\n| phenomenon | pairs | accuracy |\n|---|---|---|\n",
            self.checkpoint.display(),
            self.overall.accuracy * 100.0,
            self.overall.total,
            self.paradigm_mean * 100.0
        );
        for (term, g) in &self.by_term {
            s.push_str(&format!(
                "| {term} | {} | {:.2} |\n",
                g.total,
                g.accuracy * 100.0
            ));
        }
        s
    }
}

/// Scores `pairs` with the model in `pre`.
/// Kept whole: read, score, group and report, in order.
pub fn evaluate(
    pre: &Pretrained,
    pairs: &[Pair],
    batch_rows: usize,
    device: &Device,
    quiet: bool,
) -> Result<BlimpReport> {
    let t0 = Instant::now();
    let model = pre.mlm_model(device)?;
    let tok = &pre.tokenizer;
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.sentence_good.as_str(), p.sentence_bad.as_str()])
        .collect();
    let encs = tok
        .tokenizer
        .encode_batch(texts, true)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
    let max_pos = pre.config.max_position_embeddings;
    let ids: Vec<Vec<u32>> = encs
        .iter()
        .map(|e| e.get_ids()[..e.get_ids().len().min(max_pos)].to_vec())
        .collect();
    let pb = crate::finetune::progress_bar(ids.len() as u64, quiet);
    pb.set_message("BLiMP sentences");
    let scores = pll_scores(&model, &ids, &tok.info, batch_rows, device, || pb.inc(1))?;
    pb.finish_and_clear();
    let mut overall = Group::default();
    let (mut by_term, mut by_field, mut by_paradigm) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (i, p) in pairs.iter().enumerate() {
        let right = scores[2 * i] > scores[2 * i + 1];
        overall.add(right);
        by_term
            .entry(p.linguistics_term.clone())
            .or_insert_with(Group::default)
            .add(right);
        by_field
            .entry(p.field.clone())
            .or_insert_with(Group::default)
            .add(right);
        by_paradigm
            .entry(p.uid.clone())
            .or_insert_with(Group::default)
            .add(right);
    }
    let paradigm_mean = by_paradigm
        .values()
        .map(|g: &Group| g.accuracy)
        .sum::<f64>()
        / by_paradigm.len().max(1) as f64;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(BlimpReport {
        checkpoint: pre.source.clone(),
        overall,
        paradigm_mean,
        by_term,
        by_field,
        by_paradigm,
        pairs_per_sec: pairs.len() as f64 / seconds.max(1e-9),
        seconds,
    })
}

/// `trainer blimp`: scores, writes `blimp.json` and `blimp.md`, returns the report.
pub fn evaluate_checkpoint(args: &BlimpArgs) -> Result<BlimpReport> {
    let pre = args.source.load()?;
    let pairs = read_pairs(&args.data, args.max_pairs)?;
    let device = args.runtime.device()?;
    let report = evaluate(&pre, &pairs, args.batch_rows, &device, args.runtime.quiet)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.source.checkpoint.join("blimp"));
    std::fs::create_dir_all(&out)?;
    shared::atomic::write_file(
        &out.join("blimp.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    shared::atomic::write_file(&out.join("blimp.md"), report.markdown().as_bytes())?;
    Ok(report)
}
