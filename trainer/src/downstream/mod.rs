//! Downstream evaluation of pretrained checkpoints: GLUE fine-tuning and BLiMP.
//!
//! - [`tasks`]: the GLUE tasks, their TSV layouts, labels, metrics and the paper's hyper-parameters.
//! - [`metrics`]: accuracy, F1, Matthews correlation, Pearson, Spearman.
//! - [`pretrained`]: weights from a run, a checkpoint or a HuggingFace-format directory.
//! - [`classifier`]: BERT + pooler + head; tokenization of sentence pairs.
//! - [`finetune`]: one task over seeds (`trainer finetune`); [`glue`]: the suite (`trainer glue`).
//! - [`blimp`]: pseudo-log-likelihood scoring of minimal pairs (`trainer blimp`).

pub mod blimp;
pub mod classifier;
pub mod finetune;
pub mod glue;
pub mod metrics;
pub mod pretrained;
pub mod tasks;
