//! Flags that fix the data stream (shards, sequences, schedule, masking) and the sampler built
//! from them. Shared by training and `inspect-batch`, so what a user inspects is what trains.

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use shared::sampler::{Layout, MaskVocab, MaskingConfig, MaskingSampler, SamplerConfig, Sequences};
use shared::schedule::MaskSchedule;
use shared::shard::ShardSet;
use shared::tokenizer::LoadedTokenizer;
use std::path::PathBuf;
use std::sync::Arc;

/// Data and masking flags.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct DataArgs {
    /// Shard directory made by `preprocess` (repeat to read several as one).
    #[arg(long = "shards", value_name = "DIR", required = true)]
    pub shards: Vec<PathBuf>,
    /// Masking-rate schedule over the run, e.g. constant:0.15, linear:0.3:0.15, cosine:0.3:0.15@0.5.
    #[arg(long, default_value = "constant:0.15", value_parser = parse_schedule, long_help = shared::schedule::GRAMMAR)]
    #[serde(with = "schedule_spec")]
    pub schedule: MaskSchedule,
    /// Sequence length including [CLS] and [SEP].
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// truncate: one document per sequence, padded (the paper's); pack: documents joined with [SEP], no padding.
    #[arg(long, default_value = "truncate")]
    pub layout: Layout,
    /// Skip documents shorter than this many tokens (truncate layout).
    #[arg(long, default_value_t = 1)]
    pub min_doc_tokens: usize,
    /// Seed of data order and masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of chosen tokens replaced by [MASK].
    #[arg(long, default_value_t = 0.8)]
    pub mask_token_fraction: f64,
    /// Share of chosen tokens replaced by a random token (the rest are kept).
    #[arg(long, default_value_t = 0.1)]
    pub random_token_fraction: f64,
    /// Mask exactly round(rate x maskable tokens) per sequence instead of independent draws.
    #[arg(long)]
    pub mask_exact: bool,
    /// Mask whole words (WordPiece ## pieces with the piece they continue).
    #[arg(long)]
    pub whole_word: bool,
    /// Threads building batches (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub loader_threads: usize,
    /// Micro-batches built ahead of the model.
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
}

/// Schedules are stored as their spec strings (`linear:0.3:0.15`) in configs.
mod schedule_spec {
    use shared::schedule::MaskSchedule;

    pub fn serialize<S: serde::Serializer>(s: &MaskSchedule, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&s.to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<MaskSchedule, D::Error> {
        let s: String = serde::Deserialize::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_schedule(s: &str) -> std::result::Result<MaskSchedule, String> {
    s.parse().map_err(|e: shared::Error| e.to_string())
}

/// What the data flags open.
pub struct Data {
    /// The shards.
    pub shards: Arc<ShardSet>,
    /// Their tokenizer (copy stored with the shards).
    pub tokenizer: LoadedTokenizer,
    /// The sampler.
    pub sampler: Arc<MaskingSampler>,
    /// Sequences held out for evaluation (excluded from `sampler`).
    pub held_out: Option<Sequences>,
}

impl DataArgs {
    /// The masking rules.
    pub fn masking(&self) -> MaskingConfig {
        MaskingConfig {
            mask_fraction: self.mask_token_fraction,
            random_fraction: self.random_token_fraction,
            exact: self.mask_exact,
            whole_word: self.whole_word,
        }
    }

    /// Opens the shards and builds the sampler for a `total_steps` run of `global_batch` sequences per step.
    pub fn open(&self, global_batch: usize, total_steps: u64) -> Result<Data> {
        self.open_with_holdout(global_batch, total_steps, 0)
    }

    /// As [`DataArgs::open`], holding the last `held_out` sequences out of training.
    pub fn open_with_holdout(
        &self,
        global_batch: usize,
        total_steps: u64,
        held_out: u64,
    ) -> Result<Data> {
        let shards = Arc::new(ShardSet::open_many(&self.shards)?);
        let tokenizer = LoadedTokenizer::load_from_shards(&self.shards[0], shards.tokenizer())
            .context("loading the tokenizer stored with the shards")?;
        let all = Sequences::new(
            shards.clone(),
            &tokenizer.info,
            self.layout,
            self.seq_len,
            self.min_doc_tokens,
        )?;
        let (sequences, held_out) = if held_out > 0 {
            let (train, eval) = all.split_tail(held_out).context("--eval-sequences")?;
            (train, Some(eval))
        } else {
            (all, None)
        };
        let cfg = SamplerConfig {
            seed: self.seed,
            global_batch,
            total_steps,
            schedule: self.schedule,
            masking: self.masking(),
        };
        let sampler = Arc::new(MaskingSampler::new(
            sequences,
            MaskVocab::from_tokenizer(&tokenizer),
            cfg,
        )?);
        Ok(Data {
            shards,
            tokenizer,
            sampler,
            held_out,
        })
    }
}
