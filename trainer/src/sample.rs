//! `trainer sample RUN`: text from a masked-diffusion model by MDLM's ancestral unmasking. The
//! row starts as [CLS] PROMPT [MASK]… [SEP]; over T steps on the linear schedule (t from 1 to
//! 0), each still-masked position is revealed at step k with probability (t_k − t_{k+1}) / t_k
//! (so every position is revealed by the last step), its token drawn from the model's
//! distribution there (special tokens excluded). Every draw is keyed by (seed, sample, step,
//! position): the same seed prints the same text.

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use evaluation::CheckpointArgs;
use model::{MaskedLm, MlmInputs};
use shared::seed::{seed_of, unit_of};
use std::path::PathBuf;
use training::runtime::RuntimeArgs;
use training::saved_model::Pretrained;

/// The tag of the sampler's draws.
const SAMPLE_TAG: u64 = 0x7361_6d70;

/// `trainer sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Run directory (its latest checkpoint), checkpoint or HuggingFace-format directory.
    pub run: PathBuf,
    /// tokenizer.json to use instead of the one beside the weights.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Tokens generated after the prompt.
    #[arg(long, default_value_t = 48)]
    pub length: usize,
    /// Unmasking steps T.
    #[arg(long, default_value_t = 48)]
    pub steps: usize,
    /// Text the sample starts with (kept as it is).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples to print.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Prompt token ids (without [CLS]).
    pub prompt: Vec<u32>,
    /// Tokens generated after the prompt.
    pub length: usize,
    /// Unmasking steps.
    pub steps: usize,
    /// Seed.
    pub seed: u64,
}

/// Sample `index`'s generated token ids (prompt excluded) from `model` (`pre`'s, on `device`:
/// [`Pretrained::mlm_model`]).
pub fn sample_ids(
    (pre, model): (&Pretrained, &model::Encoder),
    opts: &SampleOptions,
    index: u64,
    device: &Device,
) -> Result<Vec<u32>> {
    let info = &pre.tokenizer.info;
    let (len, prompt) = (opts.prompt.len() + opts.length + 2, opts.prompt.len() + 1);
    if len > pre.config.max_position_embeddings {
        bail!(
            "{} prompt and generated tokens do not fit the model's {} positions",
            len - 2,
            pre.config.max_position_embeddings
        );
    }
    if opts.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut ids = vec![info.mask_id; len];
    ids[0] = info.cls_id;
    ids[1..prompt].copy_from_slice(&opts.prompt);
    ids[len - 1] = info.sep_id;
    let allowed: Vec<bool> = (0..pre.config.vocab_size as u32)
        .map(|id| !info.special_ids.contains(&id))
        .collect();
    for k in 0..opts.steps {
        let masked: Vec<u32> = (prompt..len - 1)
            .filter(|&i| ids[i] == info.mask_id)
            .map(|i| i as u32)
            .collect();
        if masked.is_empty() {
            break;
        }
        let (t_now, t_next) = (
            1.0 - k as f64 / opts.steps as f64,
            1.0 - (k + 1) as f64 / opts.steps as f64,
        );
        let reveal = (t_now - t_next) / t_now;
        let batch = shared::sampler::Batch {
            step: 0,
            slots: 0..1,
            rate: 0.0,
            row_rates: vec![0.0],
            segment_rates: Vec::new(),
            row_maskable: vec![0],
            seq_len: len,
            sequence_ids: vec![0],
            sources: vec![0],
            input_ids: ids.clone(),
            attention_mask: vec![1; len],
            labels: vec![shared::sampler::IGNORE_LABEL; len],
            masked_labels: vec![0; masked.len()],
            masked_positions: masked.clone(),
            segment_starts: Vec::new(),
            counts: Default::default(),
        };
        let inputs = MlmInputs::from_batch(&batch, device)?;
        let hidden = model.hidden_states(&inputs, None)?;
        let logits: Vec<Vec<f32>> =
            model::transfer::read::<f32>(&model.mlm_logits(&hidden, &inputs.masked_positions)?)?
                .chunks(pre.config.vocab_size)
                .map(<[f32]>::to_vec)
                .collect();
        for (row, &p) in logits.iter().zip(&masked) {
            let key =
                |what: u64| seed_of(&[opts.seed, SAMPLE_TAG, index, k as u64, p as u64, what]);
            if unit_of(key(0)) >= reveal {
                continue;
            }
            ids[p as usize] = draw(row, &allowed, unit_of(key(1)));
        }
    }
    Ok(ids[prompt..len - 1].to_vec())
}

/// The token at quantile `u` of softmax(`logits`) over the `allowed` tokens.
fn draw(logits: &[f32], allowed: &[bool], u: f64) -> u32 {
    let max = logits
        .iter()
        .zip(allowed)
        .filter(|(_, &a)| a)
        .map(|(&x, _)| x as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits
        .iter()
        .zip(allowed)
        .map(|(&x, &a)| if a { (x as f64 - max).exp() } else { 0.0 })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    for (id, w) in weights.iter().enumerate() {
        acc += w / total;
        if u < acc && *w > 0.0 {
            return id as u32;
        }
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

/// `trainer sample`: the samples as text, one block each.
pub fn sample(args: &SampleArgs) -> Result<String> {
    let pre = CheckpointArgs {
        checkpoint: args.run.clone(),
        tokenizer: args.tokenizer.clone(),
    }
    .load()?;
    let prompt = match &args.prompt {
        Some(text) => {
            let enc = pre
                .tokenizer
                .tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("--prompt: {e}"))?;
            enc.get_ids().to_vec()
        }
        None => Vec::new(),
    };
    let opts = SampleOptions {
        prompt: prompt.clone(),
        length: args.length,
        steps: args.steps,
        seed: args.seed,
    };
    let device = args.runtime.device()?;
    let model = pre.mlm_model(&device)?;
    let decode = |ids: &[u32]| -> Result<String> {
        pre.tokenizer
            .tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
    };
    let mut out = format!(
        "{}: {} samples of {} tokens, {} unmasking steps, seed {}\n",
        pre.source.display(),
        args.samples,
        args.length,
        args.steps,
        args.seed
    );
    for i in 0..args.samples {
        let ids = sample_ids((&pre, &model), &opts, i as u64, &device)?;
        let text = decode(&[prompt.clone(), ids].concat())?;
        out += &format!("\n[{}] {text}\n", i + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::tokenizer::LoadedTokenizer;

    fn tiny(favoured: Option<u32>) -> Pretrained {
        let tok = LoadedTokenizer::load(None).unwrap();
        let cfg = model::BertConfig {
            dropout: 0.0,
            max_position_embeddings: 64,
            ..model::fixtures::tiny(tok.info.vocab_size)
        };
        let mut pre = Pretrained::initialised(cfg, tok, 4).unwrap();
        if let Some(id) = favoured {
            let bias = pre.tensors["cls.predictions.bias"].clone();
            let mut b: Vec<f32> = bias.to_vec1().unwrap();
            b[id as usize] = 100.0;
            let t = candle_core::Tensor::from_vec(b, bias.shape(), &Device::Cpu).unwrap();
            pre.tensors.insert("cls.predictions.bias".into(), t);
        }
        pre
    }

    /// A model whose logits always favour one token fills every generated position with it.
    #[test]
    fn a_model_favouring_one_token_fills_every_position_with_it() {
        let pre = tiny(Some(2023));
        let opts = SampleOptions {
            prompt: vec![7592],
            length: 12,
            steps: 5,
            seed: 1,
        };
        let model = pre.mlm_model(&Device::Cpu).unwrap();
        let ids = sample_ids((&pre, &model), &opts, 0, &Device::Cpu).unwrap();
        assert_eq!(ids, vec![2023; 12]);
    }

    /// The same seed gives the same tokens; another seed or sample index, others.
    #[test]
    fn the_same_seed_gives_the_same_sample() {
        let pre = tiny(None);
        let opts = SampleOptions {
            prompt: Vec::new(),
            length: 16,
            steps: 8,
            seed: 9,
        };
        let model = pre.mlm_model(&Device::Cpu).unwrap();
        let with = (&pre, &model);
        let a = sample_ids(with, &opts, 0, &Device::Cpu).unwrap();
        assert_eq!(a, sample_ids(with, &opts, 0, &Device::Cpu).unwrap());
        assert_ne!(a, sample_ids(with, &opts, 1, &Device::Cpu).unwrap());
        let other = SampleOptions { seed: 10, ..opts };
        assert_ne!(a, sample_ids(with, &other, 0, &Device::Cpu).unwrap());
        assert!(a
            .iter()
            .all(|id| !pre.tokenizer.info.special_ids.contains(id)));
    }
}
