//! Downstream evaluation of pretrained checkpoints: GLUE fine-tuning and BLiMP.
//!
//! - [`tasks`]: the GLUE tasks, their TSV layouts, labels, metrics and the paper's hyper-parameters.
//! - [`scores`]: accuracy, F1, Matthews correlation, Pearson, Spearman.
//! - [`classifier`]: BERT + pooler + head; tokenization of sentence pairs.
//! - [`finetune`]: one task over seeds (`trainer finetune`); [`glue`]: the suite (`trainer glue`).
//! - [`blimp`]: pseudo-log-likelihood scoring of minimal pairs (`trainer blimp`).
//! - [`CheckpointArgs`]: the `--checkpoint`/`--tokenizer` flags the three commands share.
//!
//! Invariant: every random choice (head init, order, dropout, subsets) is keyed by the seed.

pub mod blimp;
pub mod classifier;
pub mod finetune;
pub mod glue;
pub mod scores;
pub mod tasks;

use std::path::PathBuf;

/// The weights to evaluate: `--checkpoint` and `--tokenizer`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointArgs {
    /// Run directory, checkpoint directory or HuggingFace-format directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// tokenizer.json to use instead of the one beside the checkpoint.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl CheckpointArgs {
    /// Loads the weights, config and tokenizer.
    pub fn load(&self) -> anyhow::Result<training::saved_model::Pretrained> {
        training::saved_model::load(&self.checkpoint, self.tokenizer.as_deref())
    }
}
