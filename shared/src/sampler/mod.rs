//! The step-aware masking sampler: whole-document shards → fixed-length sequences → a seeded
//! order → masked batches whose rate is the schedule's value at the batch's own step.
//!
//! - [`sequence::Sequences`]: truncate, pack or pack-docs layout over a
//!   [`crate::shard::ShardSet`]; [`sequence::PackedInputs`], transformers' packed inputs of a
//!   pack-docs batch.
//! - [`order::Permutation`]: O(1) per-epoch shuffling.
//! - [`mask::mask_sequence`]: choice (Bernoulli, exact, whole-word) and 80/10/10 replacement.
//! - [`batch::MaskingSampler`]: `batch(step, slots)`, a pure function of the seed and step; its
//!   files: the sampler (`batch/mod.rs`), phases (`phased.rs`), where each slot reads
//!   (`stream.rs`), row writers (`rows.rs`), the rank/micro-batch split (`plan.rs`), bucket
//!   prefetching (`prefetch.rs`).
//! - [`loader::Loader`]: prefetching on a background thread.
//! - [`data_config::DataConfig`]: everything a batch depends on (the trainer's data flags, the
//!   Python package's keywords), and [`data_config::Data`], what it opens.
//! - [`mixture::Mixture`]: named sources mixed with weights that follow schedules.
//! - [`phases::Phase`]: a run as phases that change sequence length, batch size, sources, mix
//!   or schedule for their stretch, typed; [`phases::PhasePlan`], them resolved once.
//! - [`loss`]: each predicted token's loss coefficient and the step's denominator
//!   ([`loss::LossWeight`], [`loss::LossNorm`]), one definition for the trainer and Python.
//! - [`held_out::HeldOutBatches`]: the held-out sequences masked at a fixed 15% and seed.

pub mod batch;
pub mod data_config;
pub mod held_out;
pub mod loader;
pub mod loss;
pub mod mask;
pub mod mixture;
pub mod order;
pub mod phases;
pub mod sequence;
pub mod shard_blocks;
pub mod source;

pub use batch::{
    rate_of_token, Batch, BatchOut, BatchPlan, IdsOut, MaskingSampler, PhaseSampler, PhaseShape,
    SamplerConfig, WrittenBatch,
};
pub use data_config::{Data, DataConfig};
pub use held_out::HeldOutBatches;
pub use loader::{Loader, LoaderConfig, MicroBatch};
pub use loss::{LossNorm, LossTerms, LossWeight, TokenRates};
pub use mask::{MaskCounts, MaskVocab, MaskingConfig, IGNORE_LABEL};
pub use mixture::{Join, MixRule, MixSpec, Mixture, Weight};
pub use phases::{Phase, PhasePlan, ResolvedPhase};
pub use sequence::{segment_positions, Layout, PackedInputs, Sequences};
pub use shard_blocks::Order;
pub use source::ShardSource;

use crate::tokenizer::LoadedTokenizer;

impl MaskVocab {
    /// Derives the masking vocabulary from a tokenizer.
    pub fn from_tokenizer(t: &LoadedTokenizer) -> Self {
        let n = t.info.vocab_size;
        let mut is_special = vec![false; n];
        for &id in &t.info.special_ids {
            if (id as usize) < n {
                is_special[id as usize] = true;
            }
        }
        MaskVocab {
            mask_id: t.info.mask_id,
            vocab_size: n as u32,
            is_special,
            is_continuation: t.continuation_mask(),
        }
    }
}
