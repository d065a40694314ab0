//! `TrainArgs`: every pretraining flag, and what the model and learning rate follow from them.

use crate::data::DataArgs;
use crate::runtime::RuntimeArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use model::BertConfig;
use serde::{Deserialize, Serialize};
use shared::sampler::LossNorm;
use shared::schedule::{LrDecay, LrSchedule};
use std::path::PathBuf;

/// Training flags (every one can also come from `--config run.toml`; flags win).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Data, schedule and masking.
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    /// Run directory (config.toml, metrics.jsonl, checkpoints/, plots).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Architecture: bert, or modernbert (rotary positions, GeGLU, local/global attention, no
    /// biases: transformers' ModernBertForMaskedLM).
    #[arg(long, default_value = "bert", value_parser = parse_arch)]
    #[serde(default)]
    pub arch: model::Arch,
    /// Model size: tiny, mini, small, medium, base, large (Google's BERT miniatures and BERT;
    /// with --arch modernbert, base and large are ModernBERT-base/-large's shapes).
    #[arg(long, default_value = "base")]
    pub model: String,
    /// Override: encoder layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Override: hidden size.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Override: attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Override: feed-forward size.
    #[arg(long)]
    pub intermediate: Option<usize>,
    /// Pre-LN encoder layers instead of BERT's post-LN.
    #[arg(long)]
    pub pre_ln: bool,
    /// Dropout probability (embeddings, attention, feed-forward) [default: 0.1 for bert, 0 for
    /// modernbert, as each architecture's published configurations].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Sequences per forward/backward pass (per rank in a data-parallel job).
    #[arg(long, default_value_t = 32)]
    pub micro_batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Fraction of steps of linear warm-up.
    #[arg(long, default_value_t = 0.06)]
    pub warmup: f64,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.02)]
    pub final_lr_ratio: f64,
    /// How the learning rate falls after warm-up: linear, or wsd:DECAY[:SHAPE] (the peak held,
    /// then the last DECAY of the run decaying with SHAPE linear, cosine or 1-sqrt).
    #[arg(long, default_value = "linear", value_parser = parse_lr_decay, long_help = shared::schedule::LR_GRAMMAR)]
    #[serde(default)]
    pub lr_schedule: LrDecay,
    /// Adam beta1.
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// Adam beta2.
    #[arg(long, default_value_t = 0.98)]
    pub beta2: f64,
    /// Adam epsilon.
    #[arg(long, default_value_t = 1e-6)]
    pub eps: f64,
    /// Decoupled weight decay (none on biases and LayerNorm).
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f64,
    /// Gradient clipping by global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// What the step's (weighted) loss sum is divided by: masked (its predicted tokens: the MLM
    /// mean), token (its maskable tokens: LLaDA's b x l, with --loss-weight inverse-rate the ELBO
    /// per token), sequence (its rows, each row's sum over its maskable tokens) or batch (its rows).
    #[arg(long, value_enum, default_value = "masked")]
    #[serde(default)]
    pub loss_norm: LossNorm,
    /// Activations and matrix products in: auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16. With
    /// bf16 the model computes with bf16 copies of its fp32 parameters, bf16 end to end (norm
    /// statistics, softmax and the loss accumulate in f32 inside the ops); gradients accumulate,
    /// the optimizer updates and checkpoints hold fp32.
    #[arg(long, default_value = "auto")]
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 1000)]
    pub save_every: u64,
    /// Checkpoints kept (0 = all).
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Continue from the run directory's latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Evaluate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 1000)]
    pub eval_every: u64,
    /// Evaluate on this separate shard set (same tokenizer) instead of holding out training data.
    #[arg(long, value_name = "DIR")]
    pub eval_shards: Option<PathBuf>,
    /// (t, mask) draws per held-out sequence for the held-out ELBO (`eval_elbo` in metrics.jsonl:
    /// the masked-diffusion bound on the negative log-likelihood per token); 0 = none. Default:
    /// 4 with a --rate-dist other than point, else 0.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elbo_draws: Option<usize>,
    /// Sequences per evaluation forward pass.
    #[arg(long, default_value_t = 64)]
    pub eval_batch: usize,
    /// Data-parallel jobs: compare a checksum of the parameters across ranks every N steps and
    /// stop on a mismatch (0 = never).
    #[arg(long, default_value_t = 100)]
    #[serde(default = "default_check_every")]
    pub check_every: u64,
    /// Recompute every shard file's SHA-256 against its manifest before training (reads the whole
    /// shard set once, with a progress bar).
    #[arg(long)]
    #[serde(default)]
    pub verify_shards: bool,
    /// Read the steps' loss, accuracy and gradient norm back from the device every N steps, in
    /// one transfer (metrics.jsonl still gets one row per step; a non-finite loss stops the run
    /// at that read, naming its step). Checkpoints and evaluations read first.
    #[arg(long, default_value_t = 10)]
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Time each step's phases (data wait, forward and backward, all-reduce, optimizer) with a
    /// device sync at each boundary, and count its host↔device transfers: per step in
    /// profile.jsonl, totals printed and in summary.json. The syncs slow a GPU step a little.
    #[arg(long)]
    #[serde(default)]
    pub profile: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub runtime: RuntimeArgs,
}

impl TrainArgs {
    /// The held-out ELBO's draws per sequence: `--elbo-draws`, else 4 for a run with a rate
    /// distribution and 0 for one without.
    pub fn elbo_draws(&self) -> usize {
        self.elbo_draws
            .unwrap_or(if self.data.config.rate_dist.is_point() {
                0
            } else {
                4
            })
    }

    /// The model configuration for a vocabulary, refused when it cannot place the run's
    /// `longest` sequence (the longest phase's).
    pub fn model_config(&self, vocab_size: usize, longest: usize) -> Result<BertConfig> {
        let mut c = BertConfig::from_arch_preset(self.arch, &self.model, vocab_size).with_context(
            || {
                format!(
                    "--model {:?}: expected one of {}",
                    self.model,
                    model::bert_config::PRESETS.join(", ")
                )
            },
        )?;
        if let Some(v) = self.layers {
            c.num_hidden_layers = v;
        }
        if let Some(v) = self.hidden {
            c.hidden_size = v;
        }
        if let Some(v) = self.heads {
            c.num_attention_heads = v;
        }
        if let Some(v) = self.intermediate {
            c.intermediate_size = v;
        }
        if self.arch == model::Arch::Bert {
            c.pre_ln = self.pre_ln;
        }
        c.dropout = self.dropout();
        if c.hidden_size % c.num_attention_heads != 0 {
            bail!(
                "hidden size {} is not a multiple of {} heads",
                c.hidden_size,
                c.num_attention_heads
            );
        }
        if c.arch == model::Arch::ModernBert && (c.hidden_size / c.num_attention_heads) % 2 != 0 {
            bail!(
                "--arch modernbert: head size {} (hidden {} / {} heads) must be even for rotary positions",
                c.hidden_size / c.num_attention_heads,
                c.hidden_size,
                c.num_attention_heads
            );
        }
        if longest > c.max_position_embeddings {
            bail!(
                "{} {longest} exceeds the model's {} positions",
                if longest == self.data.config.seq_len {
                    "--seq-len"
                } else {
                    "a phase's seq_len"
                },
                c.max_position_embeddings
            );
        }
        Ok(c)
    }

    /// The dropout probability: `--dropout`, or the architecture's default.
    pub fn dropout(&self) -> f64 {
        self.dropout.unwrap_or(self.arch.default_dropout())
    }

    /// The learning-rate schedule.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule::from_flags(
            self.lr,
            self.lr_schedule,
            self.steps(),
            self.warmup,
            self.final_lr_ratio,
        )
    }

    /// Optimizer steps of the run (`--steps`).
    pub fn steps(&self) -> u64 {
        self.data.config.steps
    }

    /// Sequences per optimizer step over all ranks (`--batch-size`).
    pub fn batch_size(&self) -> usize {
        self.data.config.batch_size
    }
}

fn default_precision() -> String {
    "auto".into()
}

fn default_check_every() -> u64 {
    100
}

fn parse_lr_decay(s: &str) -> std::result::Result<LrDecay, String> {
    s.parse().map_err(|e: shared::Error| e.to_string())
}

/// `--arch`'s parser.
fn parse_arch(s: &str) -> std::result::Result<model::Arch, String> {
    model::Arch::parse(s)
}

fn default_log_every() -> u64 {
    10
}
