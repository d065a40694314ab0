//! The step-aware masking sampler: batch = f(seed, step, slot).
//!
//! Global batch *t* holds the sample-stream positions `t·B .. (t+1)·B`. Position *g* is sequence
//! `perm_epoch(g mod N)` of epoch `g div N`. With a mixture of sources ([`super::mixture`]), each
//! source has its own stream and order: step *t* takes its exact count of rows from each, at the
//! slots a seeded permutation of the step's slots assigns to that source. Slot *k* of the batch is masked at the schedule's rate
//! for step *t* with an RNG seeded from `(seed, t, k)`. Nothing depends on threads, prefetching,
//! data-parallel rank or micro-batch split, so ranks' slices of a step union to the single-rank
//! global batch and a resumed run rebuilds exactly the batches it would have seen. With
//! `--order shard-blocks:K` ([`super::shard_blocks`]) the epoch's order visits blocks of shards in
//! turn instead; still a pure function of (seed, epoch, position).

use super::mask::{mask_sequence, MaskCounts, MaskVocab, MaskingConfig};
use super::mixture::{MixRule, MixSpec, Mixture};
use super::order::Permutation;
use super::sequence::Sequences;
use super::shard_blocks::{BlockEpoch, Order, ShardBlocks};
use crate::error::{Error, Result};
use crate::schedule::MaskSchedule;
use crate::seed::seed_of;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Domain-separation tags for the sampler's seeds.
const ORDER_TAG: u64 = 0x006f_7264_6572;
const MASK_TAG: u64 = 0x6d61_736b;
const MIX_TAG: u64 = 0x6d69_7874;

/// A masked batch, row-major `[rows, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Optimizer step the batch belongs to.
    pub step: u64,
    /// Slots of the global batch held here.
    pub slots: Range<usize>,
    /// Masking rate used (the schedule's rate at `step`).
    pub rate: f64,
    /// Sequence length.
    pub seq_len: usize,
    /// Sequence index (within its source's epoch) of each row.
    pub sequence_ids: Vec<u64>,
    /// Source of each row (an index into [`MaskingSampler::source_names`]; all 0 with one source).
    pub sources: Vec<u16>,
    /// Input ids after masking.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u8>,
    /// Original id at chosen positions, [`IGNORE_LABEL`] elsewhere.
    pub labels: Vec<i32>,
    /// Flat indices (`row·seq_len + col`) of chosen positions, ascending.
    pub masked_positions: Vec<u32>,
    /// Original ids at `masked_positions`.
    pub masked_labels: Vec<u32>,
    /// `pack-docs` only (empty otherwise): flat indices (`row·seq_len + col`), ascending, where
    /// each segment (a document, or a document's continuation) starts; every row's first token
    /// starts one.
    pub segment_starts: Vec<u32>,
    /// What masking did.
    pub counts: MaskCounts,
}

impl Batch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.sequence_ids.len()
    }

    /// Realised masking rate: chosen / maskable tokens.
    pub fn realised_rate(&self) -> f64 {
        self.counts.chosen as f64 / self.counts.maskable.max(1) as f64
    }
}

/// Everything that fixes the content of the batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerConfig {
    /// Seed of order and masks.
    pub seed: u64,
    /// Sequences per optimizer step, over all ranks.
    pub global_batch: usize,
    /// Length of the run (the schedule's time axis).
    pub total_steps: u64,
    /// The masking-rate schedule.
    pub schedule: MaskSchedule,
    /// Choice and replacement rules.
    pub masking: MaskingConfig,
    /// How each epoch orders the sequences.
    #[serde(default)]
    pub order: Order,
}

/// One source's sequences and the key of its order.
struct Source {
    name: String,
    sequences: Sequences,
    /// `None` for the one unnamed source (today's order); a hash of the name otherwise.
    order_key: Option<u64>,
    /// With `--order shard-blocks:K`: the shards as units of the order.
    blocks: Option<ShardBlocks>,
}

impl Source {
    fn new(name: String, sequences: Sequences, order_key: Option<u64>, order: Order) -> Source {
        let blocks = match order {
            Order::Global => None,
            Order::ShardBlocks(k) => Some(ShardBlocks::new(&sequences, k)),
        };
        Source {
            name,
            sequences,
            order_key,
            blocks,
        }
    }
}

/// One epoch's order of one source.
#[derive(Clone)]
enum EpochOrder {
    Global(Permutation),
    Blocks(Arc<BlockEpoch>),
}

/// Builds the batch of any step, from shards, on demand.
pub struct MaskingSampler {
    sources: Vec<Source>,
    mixture: Option<Mixture>,
    vocab: MaskVocab,
    cfg: SamplerConfig,
    /// The block orders of the epochs read last, by (source, epoch) (O(shards) each to build).
    block_epochs: Mutex<Vec<(usize, u64, Arc<BlockEpoch>)>>,
    /// 1 + the last step whose shards were prefetched (0: none); micro-batches of one step and
    /// ranks' slices ask once.
    prefetched: std::sync::atomic::AtomicU64,
    /// The steps this sampler builds and where its streams start (the whole run without phases).
    stretch: Stretch,
    /// The run's later phases, one sampler each (only the first phase's sampler holds them).
    later: Vec<MaskingSampler>,
    /// With phases: every source of the run, sorted; [`Batch::sources`] indexes it.
    run_sources: Vec<String>,
    /// With phases: the index in `run_sources` of each of this sampler's sources.
    source_index: Vec<u16>,
}

/// The stretch of a run one sampler builds: steps `first..end`, its sources' streams starting at
/// `offsets` (rows they gave to earlier phases), schedules on the run's clock or the stretch's own.
#[derive(Debug, Clone)]
struct Stretch {
    first: u64,
    end: u64,
    /// The run's length (the clock of schedules not set by a phase).
    run_steps: u64,
    offsets: Vec<u64>,
    /// The masking schedule runs over this stretch (a phase set it), not over the run.
    local_schedule: bool,
    /// The mixture's weights run over this stretch (a phase set them), not over the run.
    local_mixture: bool,
}

/// One phase of a run, for [`MaskingSampler::phased`]: its sampler (built with `total_steps` =
/// the length of its mixture's clock: the phase's own length when `local_mixture`, else the
/// run's), its steps, and which schedules it set itself.
pub struct PhaseSampler {
    /// The phase's sampler.
    pub sampler: MaskingSampler,
    /// Steps of the run it builds.
    pub steps: Range<u64>,
    /// The phase set the masking schedule: it runs over `steps`, not over the run.
    pub local_schedule: bool,
    /// The phase set the mixture: its weights run over `steps`, not over the run.
    pub local_mixture: bool,
}

/// One phase as the run sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseShape {
    /// Steps it covers.
    pub first: u64,
    /// One past its last step.
    pub end: u64,
    /// Sequences per step.
    pub global_batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
}

/// Steps ahead whose shards are fetched in the background (remote shards).
const LOOKAHEAD_STEPS: u64 = 2;
/// Positions sampled per source to find the shards a window of steps reads (global order).
const LOOKAHEAD_ROWS: u64 = 16_384;

/// A stable 64-bit key of a source name (FNV-1a), so a source's order depends on its name, not
/// on its position among the sources.
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl MaskingSampler {
    /// Checks the configuration and builds the sampler.
    pub fn new(sequences: Sequences, vocab: MaskVocab, cfg: SamplerConfig) -> Result<Self> {
        cfg.masking.validate()?;
        if cfg.global_batch == 0 || cfg.total_steps == 0 {
            return Err(Error::Config(
                "batch size and step count must be positive".into(),
            ));
        }
        if vocab.is_special.len() < vocab.vocab_size as usize {
            return Err(Error::Config(
                "special-token table shorter than the vocabulary".into(),
            ));
        }
        let order = cfg.order;
        let stretch = Stretch {
            first: 0,
            end: cfg.total_steps,
            run_steps: cfg.total_steps,
            offsets: vec![0],
            local_schedule: false,
            local_mixture: false,
        };
        Ok(MaskingSampler {
            sources: vec![Source::new(String::new(), sequences, None, order)],
            mixture: None,
            vocab,
            cfg,
            block_epochs: Mutex::new(Vec::new()),
            prefetched: std::sync::atomic::AtomicU64::new(0),
            stretch,
            later: Vec::new(),
            run_sources: Vec::new(),
            source_index: vec![0],
        })
    }

    /// One sampler for a run of phases, each built by its own sampler over its steps (which must
    /// follow each other from 0). A source keeps its stream across phases: where a phase reads a
    /// source by name, it continues from the rows earlier phases took from it. Seeds stay keyed
    /// by the run's step, so a run of one phase builds exactly the batches of its sampler alone.
    pub fn phased(phases: Vec<PhaseSampler>) -> Result<MaskingSampler> {
        let run_steps = phases.last().map_or(0, |p| p.steps.end);
        let mut names: Vec<String> = phases
            .iter()
            .flat_map(|p| p.sampler.sources.iter().map(|s| s.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        if names.len() > u16::MAX as usize {
            return Err(Error::Config("too many sources".into()));
        }
        let mut taken: std::collections::HashMap<String, u64> = Default::default();
        let mut built = Vec::with_capacity(phases.len());
        let mut next_first = 0;
        for (k, phase) in phases.into_iter().enumerate() {
            let PhaseSampler {
                mut sampler,
                steps,
                local_schedule,
                local_mixture,
            } = phase;
            if steps.start != next_first || steps.end <= steps.start {
                return Err(Error::Config(format!(
                    "phase {}: steps {steps:?} do not follow the previous phase (from step {next_first})",
                    k + 1
                )));
            }
            next_first = steps.end;
            sampler.stretch = Stretch {
                first: steps.start,
                end: steps.end,
                run_steps,
                offsets: sampler
                    .sources
                    .iter()
                    .map(|s| taken.get(&s.name).copied().unwrap_or(0))
                    .collect(),
                local_schedule,
                local_mixture,
            };
            sampler.source_index = sampler
                .sources
                .iter()
                .map(|s| names.binary_search(&s.name).expect("listed above") as u16)
                .collect();
            sampler.run_sources = names.clone();
            for (s, rows) in sampler.sources.iter().zip(sampler.rows_before(steps.end)) {
                taken.insert(s.name.clone(), rows);
            }
            built.push(sampler);
        }
        if built.is_empty() {
            return Err(Error::Config("a run needs at least one phase".into()));
        }
        let mut first = built.remove(0);
        first.later = built;
        Ok(first)
    }

    /// The sampler that builds `step` (this one, or the later phase's).
    fn at(&self, step: u64) -> &MaskingSampler {
        if step < self.stretch.end || self.later.is_empty() {
            return self;
        }
        self.later
            .iter()
            .find(|p| step < p.stretch.end)
            .unwrap_or_else(|| self.later.last().expect("not empty"))
    }

    /// Every phase's steps, batch and sequence length (one entry without phases).
    pub fn phases(&self) -> Vec<PhaseShape> {
        std::iter::once(self)
            .chain(&self.later)
            .map(|p| PhaseShape {
                first: p.stretch.first,
                end: p.stretch.end,
                global_batch: p.cfg.global_batch,
                seq_len: p.sequences().seq_len(),
            })
            .collect()
    }

    /// Sequences in step `step`'s global batch.
    pub fn global_batch_at(&self, step: u64) -> usize {
        self.at(step).cfg.global_batch
    }

    /// Tokens per sequence at step `step`.
    pub fn seq_len_at(&self, step: u64) -> usize {
        self.at(step).sequences().seq_len()
    }

    /// Each source's (of [`MaskingSampler::source_names`]) normalised weight at `step`, 0 for a
    /// source its phase does not read; `None` without named sources.
    pub fn weights_at(&self, step: u64) -> Option<Vec<f64>> {
        let p = self.at(step);
        let m = p.mixture.as_ref()?;
        let mut w = vec![0.0; self.source_names().len()];
        for (x, &i) in m
            .weights_at(p.mixture_clock(step))
            .into_iter()
            .zip(&p.source_index)
        {
            w[i as usize] = x;
        }
        Some(w)
    }

    /// Rows of each source (of [`MaskingSampler::source_names`]) in step `step`'s global batch.
    pub fn counts_at(&self, step: u64) -> Vec<usize> {
        let p = self.at(step);
        let mut counts = vec![0; self.source_names().len()];
        let own = match &p.mixture {
            Some(m) => m.counts(p.mixture_clock(step)),
            None => vec![p.cfg.global_batch],
        };
        for (c, &i) in own.into_iter().zip(&p.source_index) {
            counts[i as usize] = c;
        }
        counts
    }

    /// Tokens (padding included) in the global batches of steps `0..step`.
    pub fn tokens_before(&self, step: u64) -> u64 {
        self.phases()
            .iter()
            .filter(|p| p.first < step)
            .map(|p| (step.min(p.end) - p.first) * (p.global_batch * p.seq_len) as u64)
            .sum()
    }

    /// `step` on the mixture's clock (the stretch's own when a phase set the mixture).
    fn mixture_clock(&self, step: u64) -> u64 {
        let step = step.clamp(self.stretch.first, self.stretch.end);
        if self.stretch.local_mixture {
            step - self.stretch.first
        } else {
            step
        }
    }

    /// A sampler over named sources (one or more), mixed per step as `mix` says.
    pub fn mixed(
        sources: Vec<(String, Sequences)>,
        mix: &MixSpec,
        vocab: MaskVocab,
        cfg: SamplerConfig,
    ) -> Result<Self> {
        Self::mixed_by(sources, &MixRule::Weights(mix.clone()), vocab, cfg)
    }

    /// A sampler over named sources mixed per step by `rule` (by size: each source's size is its
    /// shard set's token count).
    pub fn mixed_by(
        sources: Vec<(String, Sequences)>,
        rule: &MixRule,
        vocab: MaskVocab,
        cfg: SamplerConfig,
    ) -> Result<Self> {
        let mut sources = sources;
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).collect();
        let tokens: Vec<u64> = sources
            .iter()
            .map(|(_, s)| s.shards().num_tokens())
            .collect();
        let mixture = Mixture::with_rule(&names, &tokens, rule, cfg.total_steps, cfg.global_batch)?;
        let order = cfg.order;
        let mut sampler = MaskingSampler::new(sources.remove(0).1, vocab, cfg)?;
        sampler.sources[0].name = names[0].clone();
        sampler.sources[0].order_key = Some(name_key(&names[0]));
        for (name, sequences) in sources {
            let key = Some(name_key(&name));
            sampler
                .sources
                .push(Source::new(name, sequences, key, order));
        }
        sampler.mixture = Some(mixture);
        let n = sampler.sources.len();
        sampler.stretch.offsets = vec![0; n];
        sampler.source_index = (0..n as u16).collect();
        Ok(sampler)
    }

    /// The sources' names, in the order [`Batch::sources`] indexes (sorted; `[""]` for one
    /// unnamed source).
    pub fn source_names(&self) -> Vec<&str> {
        if !self.run_sources.is_empty() {
            return self.run_sources.iter().map(String::as_str).collect();
        }
        self.sources.iter().map(|s| s.name.as_str()).collect()
    }

    /// The mixture, when the sources are named.
    pub fn mixture(&self) -> Option<&Mixture> {
        self.mixture.as_ref()
    }

    /// The sequences step `step` reads for source `source` (an index into
    /// [`MaskingSampler::source_names`], as [`Batch::sources`] gives it); `None` when that step's
    /// phase does not read the source.
    pub fn sequences_at(&self, step: u64, source: usize) -> Option<&Sequences> {
        let p = self.at(step);
        let local = if p.run_sources.is_empty() {
            source
        } else {
            p.source_index.iter().position(|&i| i as usize == source)?
        };
        p.sources.get(local).map(|s| &s.sequences)
    }

    /// The sequences of source `index` (of the first phase).
    pub fn source_sequences(&self, index: usize) -> &Sequences {
        &self.sources[index].sequences
    }

    /// Epochs of each source (of [`MaskingSampler::source_names`]) read before step `step`
    /// (rows taken / sequences in the source; with phases, a source absent from `step`'s phase
    /// counts what it gave the phases before, over the sequences of the last one that read it).
    pub fn source_epochs_at(&self, step: u64) -> Vec<f64> {
        let names = self.source_names();
        let mut epochs = vec![0.0; names.len()];
        let here = self.at(step);
        for p in std::iter::once(self).chain(&self.later) {
            let upto = step.clamp(p.stretch.first, p.stretch.end);
            if p.stretch.first > here.stretch.first {
                break;
            }
            for ((s, rows), &i) in p
                .sources
                .iter()
                .zip(p.rows_before(upto))
                .zip(&p.source_index)
            {
                epochs[i as usize] = rows as f64 / s.sequences.len() as f64;
            }
        }
        epochs
    }

    /// Rows of each of this sampler's sources in steps `0..step` (of the run; `step` clamped to
    /// this sampler's stretch).
    fn rows_before(&self, step: u64) -> Vec<u64> {
        let Stretch { first, offsets, .. } = &self.stretch;
        match &self.mixture {
            Some(m) => {
                let (now, start) = (
                    m.rows_before(self.mixture_clock(step)),
                    m.rows_before(self.mixture_clock(*first)),
                );
                now.iter()
                    .zip(start)
                    .zip(offsets)
                    .map(|((n, s), o)| n - s + o)
                    .collect()
            }
            None => {
                let step = step.clamp(*first, self.stretch.end);
                vec![(step - first) * self.cfg.global_batch as u64 + offsets[0]]
            }
        }
    }

    /// Where each slot of step `step` reads: the slot permutation (with several sources), each
    /// source's first slot after it, and each source's rows before the step.
    fn step_plan(&self, step: u64) -> StepPlan {
        let b = self.cfg.global_batch;
        let counts = match &self.mixture {
            Some(m) => m.counts(self.mixture_clock(step)),
            None => vec![b],
        };
        let mut starts = Vec::with_capacity(counts.len());
        let mut start = 0;
        for c in &counts {
            starts.push(start);
            start += c;
        }
        let slot_order = (self.sources.len() > 1)
            .then(|| Permutation::new(b as u64, seed_of(&[self.cfg.seed, MIX_TAG, step])));
        StepPlan {
            step,
            slot_order,
            starts,
            before: self.rows_before(step),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The sequence view (of the first source, the only one without a mixture).
    pub fn sequences(&self) -> &Sequences {
        &self.sources[0].sequences
    }

    /// The schedule's masking rate at `step`.
    pub fn rate_at(&self, step: u64) -> f64 {
        let p = self.at(step);
        let s = &p.stretch;
        if s.local_schedule {
            p.cfg.schedule.rate(step - s.first, s.end - s.first)
        } else {
            p.cfg.schedule.rate(step, s.run_steps)
        }
    }

    fn epoch_order(&self, source: usize, epoch: u64) -> EpochOrder {
        let s = &self.sources[source];
        let key = match s.order_key {
            None => seed_of(&[self.cfg.seed, ORDER_TAG, epoch]),
            Some(k) => seed_of(&[self.cfg.seed, ORDER_TAG, k, epoch]),
        };
        let Some(blocks) = &s.blocks else {
            return EpochOrder::Global(Permutation::new(s.sequences.len(), key));
        };
        let mut cached = self.block_epochs.lock().expect("block epochs");
        if let Some((_, _, e)) = cached.iter().find(|(s, e, _)| (*s, *e) == (source, epoch)) {
            return EpochOrder::Blocks(e.clone());
        }
        let built = Arc::new(blocks.epoch(key));
        if cached.len() >= 2 * self.sources.len() {
            cached.remove(0);
        }
        cached.push((source, epoch, built.clone()));
        EpochOrder::Blocks(built)
    }

    /// Position `g` of source `source`'s stream under `order` (of `g`'s epoch).
    fn sequence_in(&self, source: usize, order: &EpochOrder, g: u64) -> u64 {
        let s = &self.sources[source];
        let i = g % s.sequences.len();
        match order {
            EpochOrder::Global(p) => p.apply(i),
            EpochOrder::Blocks(e) => e.apply(s.blocks.as_ref().expect("block order"), i),
        }
    }

    /// The cache the first remote source reads through (sources in one cache directory share it).
    pub fn shard_cache(&self) -> Option<Arc<crate::store::ShardCache>> {
        self.sources
            .iter()
            .find_map(|s| s.sequences.shards().cache().cloned())
    }

    /// Starts fetching, in the background, the remote shards that steps `step ..= step +
    /// LOOKAHEAD_STEPS` read (with the block order, also the block after them). A no-op for local
    /// shards.
    pub fn prefetch_from(&self, step: u64) {
        let p = self.at(step);
        if !std::ptr::eq(p, self) {
            return p.prefetch_from(step);
        }
        if !self
            .sources
            .iter()
            .any(|s| s.sequences.shards().is_remote())
        {
            return;
        }
        use std::sync::atomic::Ordering;
        if self.prefetched.swap(step + 1, Ordering::Relaxed) == step + 1 {
            return;
        }
        let from = self.rows_before(step);
        let to = self.rows_before(step + 1 + LOOKAHEAD_STEPS);
        for (i, s) in self.sources.iter().enumerate() {
            let set = s.sequences.shards();
            if !set.is_remote() || from[i] == to[i] {
                continue;
            }
            let fits = set
                .cache()
                .is_some_and(|c| c.config().max_bytes >= set.file_bytes());
            if s.blocks.is_none() && fits {
                // The global order reads everywhere: with room for the whole set, fetch it all
                // (the cache skips what it holds or has queued).
                set.prefetch(0..set.num_shards());
                continue;
            }
            let mut shards = self.shards_between(i, from[i], to[i]);
            let mut seen = std::collections::HashSet::new();
            shards.retain(|x| seen.insert(*x));
            set.prefetch(shards);
        }
    }

    /// The shards positions `from..to` of source `i`'s stream read (with the block order, the
    /// blocks they fall in and the next one; with the global order, a sample of them), with, for
    /// packed sequences, the shard after each.
    fn shards_between(&self, i: usize, from: u64, to: u64) -> Vec<usize> {
        let s = &self.sources[i];
        let n = s.sequences.len();
        let mut shards = Vec::new();
        let mut g = from;
        while g < to {
            let epoch = g / n;
            let end = to.min((epoch + 1) * n);
            let order = self.epoch_order(i, epoch);
            match &order {
                EpochOrder::Blocks(e) => shards.extend(e.shards_for(g % n, end - epoch * n)),
                EpochOrder::Global(_) => {
                    let stride = ((end - g) / LOOKAHEAD_ROWS).max(1);
                    for p in (g..end).step_by(stride as usize) {
                        shards.extend(s.sequences.shards_of(self.sequence_in(i, &order, p)));
                    }
                }
            }
            g = end;
        }
        if s.sequences.layout() != super::Layout::Truncate {
            // A packed sequence may run into the next shard.
            let last = s.sequences.shards().num_shards();
            let next: Vec<usize> = shards
                .iter()
                .map(|&x| x + 1)
                .filter(|&x| x < last)
                .collect();
            shards.extend(next);
        }
        shards
    }

    /// Epoch (0-based) that step `step` starts in (of the first source).
    pub fn epoch_at(&self, step: u64) -> u64 {
        let p = self.at(step);
        p.rows_before(step)[0] / p.sources[0].sequences.len()
    }

    /// The whole global batch of `step`.
    pub fn global_batch(&self, step: u64) -> Result<Batch> {
        self.batch(step, 0..self.global_batch_at(step))
    }

    /// Slots `slots` of step `step`'s global batch, built in parallel on the current rayon pool.
    /// Fails when a document holds a token id outside the vocabulary (a corrupted shard).
    pub fn batch(&self, step: u64, slots: Range<usize>) -> Result<Batch> {
        let p = self.at(step);
        if !std::ptr::eq(p, self) {
            return p.batch(step, slots);
        }
        let (rows, len) = (slots.len(), self.sequences().seq_len());
        // Zeroed allocations: pages are first touched by the parallel tasks below.
        let mut input_ids = vec![0u32; rows * len];
        let mut labels = vec![0i32; rows * len];
        let mut attention_mask = vec![0u8; rows * len];
        let writers = input_ids
            .chunks_mut(len * ROWS_PER_TASK)
            .zip(labels.chunks_mut(len * ROWS_PER_TASK))
            .zip(attention_mask.chunks_mut(len * ROWS_PER_TASK))
            .map(|((input_ids, labels), attention_mask)| BatchRows {
                input_ids,
                labels,
                attention_mask,
            })
            .collect();
        let built = self.build(step, slots.clone(), writers)?;
        let masked_labels = built
            .masked_positions
            .iter()
            .map(|&p| labels[p as usize] as u32)
            .collect();
        Ok(Batch {
            step,
            slots,
            rate: built.rate,
            seq_len: len,
            sequence_ids: built.sequence_ids,
            sources: built.sources,
            input_ids,
            attention_mask,
            labels,
            masked_positions: built.masked_positions,
            segment_starts: built.segment_starts,
            masked_labels,
            counts: built.counts,
        })
    }

    /// As [`MaskingSampler::batch`], written straight into caller-owned arrays (`[rows ·
    /// seq_len]` each, as a framework wants them: int64, or int32 ids) with no intermediate
    /// batch. The values are [`MaskingSampler::batch`]'s, widened.
    pub fn batch_into(
        &self,
        step: u64,
        slots: Range<usize>,
        out: BatchOut<'_>,
    ) -> Result<WrittenBatch> {
        let p = self.at(step);
        if !std::ptr::eq(p, self) {
            return p.batch_into(step, slots, out);
        }
        let (rows, len) = (slots.len(), self.sequences().seq_len());
        out.check(rows * len)?;
        let chunk = len * ROWS_PER_TASK;
        let tasks = rows.div_ceil(ROWS_PER_TASK);
        let mut ids: Vec<Option<IdsOut<'_>>> = match out.input_ids {
            Some(IdsOut::I64(a)) => a.chunks_mut(chunk).map(|c| Some(IdsOut::I64(c))).collect(),
            Some(IdsOut::I32(a)) => a.chunks_mut(chunk).map(|c| Some(IdsOut::I32(c))).collect(),
            None => (0..tasks).map(|_| None).collect(),
        };
        let (attention, labels, types) = (
            split_rows(out.attention_mask, chunk, tasks),
            split_rows(out.labels, chunk, tasks),
            split_rows(out.token_type_ids, chunk, tasks),
        );
        let writers = ids
            .drain(..)
            .zip(attention)
            .zip(labels)
            .zip(types)
            .map(
                |(((input_ids, attention_mask), labels), token_type_ids)| WideRows {
                    input_ids,
                    attention_mask,
                    labels,
                    token_type_ids,
                },
            )
            .collect();
        let built = self.build(step, slots, writers)?;
        Ok(WrittenBatch {
            rate: built.rate,
            sequence_ids: built.sequence_ids,
            sources: built.sources,
            segment_starts: built.segment_starts,
            counts: built.counts,
        })
    }

    /// Builds `slots` of `step` in parallel tasks of [`ROWS_PER_TASK`] rows, task `i` writing
    /// through `writers[i]`.
    fn build<W: RowWriter>(
        &self,
        step: u64,
        slots: Range<usize>,
        writers: Vec<W>,
    ) -> Result<Built> {
        assert!(
            slots.end <= self.cfg.global_batch,
            "slots {slots:?} beyond global batch {}",
            self.cfg.global_batch
        );
        let rows = slots.len();
        debug_assert_eq!(writers.len(), rows.div_ceil(ROWS_PER_TASK));
        let rate = self.rate_at(step);
        let mut sequence_ids = vec![0u64; rows];
        let mut sources = vec![0u16; rows];
        let plan = self.step_plan(step);
        self.prefetch_from(step);
        let parts: Vec<(MaskCounts, Vec<u32>, Vec<u32>)> = writers
            .into_par_iter()
            .zip(sequence_ids.par_chunks_mut(ROWS_PER_TASK))
            .zip(sources.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .map(|(task, ((writer, seq_ids), sources))| {
                let first_row = task * ROWS_PER_TASK;
                let rows = TaskRows {
                    writer,
                    sequence_ids: seq_ids,
                    sources,
                };
                self.fill_rows(&plan, rate, slots.start + first_row, first_row, rows)
            })
            .collect::<Result<_>>()?;
        let mut counts = MaskCounts::default();
        let mut masked_positions = Vec::with_capacity(parts.iter().map(|(_, p, _)| p.len()).sum());
        let mut segment_starts = Vec::new();
        for (c, p, starts) in &parts {
            counts.add(c);
            masked_positions.extend_from_slice(p);
            segment_starts.extend_from_slice(starts);
        }
        if !self.run_sources.is_empty() {
            for s in &mut sources {
                *s = self.source_index[*s as usize];
            }
        }
        Ok(Built {
            rate,
            sequence_ids,
            sources,
            masked_positions,
            segment_starts,
            counts,
        })
    }

    /// Fills and masks consecutive rows: row `r` of `rows` is slot `first_slot + r` of the step's
    /// global batch and row `first_row + r` of the batch being built. Returns the rows' mask counts
    /// and their chosen positions and (`pack-docs`) segment starts as flat indices into the batch.
    /// With `pack-docs`, exact-count and whole-word masking work per segment (independent draws
    /// per token need no boundaries: the whole row is drawn at once, as with the other layouts).
    fn fill_rows<W: RowWriter>(
        &self,
        plan: &StepPlan,
        rate: f64,
        first_slot: usize,
        first_row: usize,
        mut rows: TaskRows<'_, W>,
    ) -> Result<(MaskCounts, Vec<u32>, Vec<u32>)> {
        let len = self.sequences().seq_len();
        let segmented = self.sequences().layout().has_segments();
        let per_segment = segmented && (self.cfg.masking.exact || self.cfg.masking.whole_word);
        let (mut starts, mut segment_starts) = (Vec::new(), Vec::new());
        let mut part = Vec::with_capacity(len);
        let (mut scratch, mut chosen) = (Vec::with_capacity(len), Vec::with_capacity(len));
        let (mut ids, mut labels) = (vec![0u32; len], vec![0i32; len]);
        let mut positions = Vec::new();
        let mut counts = MaskCounts::default();
        let step = plan.step;
        let mut order = StreamOrder::new(self);
        for (r, seq_id) in rows.sequence_ids.iter_mut().enumerate() {
            let slot = first_slot + r;
            let (source, seq) = order.sequence_at(plan, slot);
            (*seq_id, rows.sources[r]) = (seq, source as u16);
            let used = self.sources[source]
                .sequences
                .fill_segments(seq, &mut ids, &mut starts)?;
            let base = ((first_row + r) * len) as u32;
            if segmented {
                segment_starts.extend(starts.iter().map(|&p| base + p));
            }
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed_of(&[
                self.cfg.seed,
                MASK_TAG,
                step,
                slot as u64,
            ]));
            if !per_segment {
                starts.truncate(1);
            }
            for (k, &a) in starts.iter().enumerate() {
                let (a, b) = (a as usize, starts.get(k + 1).map_or(len, |&b| b as usize));
                let c = mask_sequence(
                    &mut rng,
                    &mut ids[a..b],
                    &mut labels[a..b],
                    rate,
                    &self.cfg.masking,
                    &self.vocab,
                    &mut scratch,
                    &mut part,
                );
                counts.add(&c);
                if W::POSITIONS {
                    chosen.extend(part.iter().map(|&p| base + a as u32 + p));
                }
            }
            rows.writer.write_row(r, &ids, &labels, used);
            if W::POSITIONS {
                positions.append(&mut chosen);
            }
        }
        Ok((counts, positions, segment_starts))
    }
}

/// `a` in chunks of `chunk` values, one per task (`None` for each task when `a` is `None`).
fn split_rows(a: Option<&mut [i64]>, chunk: usize, tasks: usize) -> Vec<Option<&mut [i64]>> {
    match a {
        Some(a) => a.chunks_mut(chunk).map(Some).collect(),
        None => (0..tasks).map(|_| None).collect(),
    }
}

/// Rows built by one parallel task.
const ROWS_PER_TASK: usize = 32;

/// What [`MaskingSampler::batch_into`] tells besides the arrays it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenBatch {
    /// Masking rate used (the schedule's rate at the step).
    pub rate: f64,
    /// Sequence index (within its source's epoch) of each row.
    pub sequence_ids: Vec<u64>,
    /// Source of each row (an index into [`MaskingSampler::source_names`]).
    pub sources: Vec<u16>,
    /// `pack-docs` only: where each segment starts, as in [`Batch::segment_starts`].
    pub segment_starts: Vec<u32>,
    /// What masking did.
    pub counts: MaskCounts,
}

/// What [`MaskingSampler::build`] returns besides the rows it wrote.
struct Built {
    rate: f64,
    sequence_ids: Vec<u64>,
    sources: Vec<u16>,
    masked_positions: Vec<u32>,
    segment_starts: Vec<u32>,
    counts: MaskCounts,
}

/// One task's rows and the per-row facts that go with them.
struct TaskRows<'a, W> {
    writer: W,
    sequence_ids: &'a mut [u64],
    sources: &'a mut [u16],
}

/// Where one task's masked rows are written.
trait RowWriter: Send {
    /// Whether the caller wants the masked positions (the trainer's sparse head does; arrays
    /// for a framework do not).
    const POSITIONS: bool = true;

    /// Row `r` of the task's rows: the masked ids, the labels, and `used` real (non-pad) tokens
    /// at the start.
    fn write_row(&mut self, r: usize, ids: &[u32], labels: &[i32], used: usize);
}

/// A [`Batch`]'s arrays, one task's rows of them.
struct BatchRows<'a> {
    input_ids: &'a mut [u32],
    labels: &'a mut [i32],
    attention_mask: &'a mut [u8],
}

impl RowWriter for BatchRows<'_> {
    fn write_row(&mut self, r: usize, ids: &[u32], labels: &[i32], used: usize) {
        let len = ids.len();
        let row = r * len..(r + 1) * len;
        self.input_ids[row.clone()].copy_from_slice(ids);
        self.labels[row.clone()].copy_from_slice(labels);
        self.attention_mask[row.start..row.start + used].fill(1);
    }
}

/// The token ids of [`BatchOut`]: int64, or int32 (which an embedding lookup takes as well).
pub enum IdsOut<'a> {
    /// `int64`, PyTorch's default index type.
    I64(&'a mut [i64]),
    /// `int32`: half the bytes.
    I32(&'a mut [i32]),
}

/// Caller-owned arrays for [`MaskingSampler::batch_into`], `[rows · seq_len]` each; an array
/// left `None` is not written. `token_type_ids` is zero-filled (one segment).
#[derive(Default)]
pub struct BatchOut<'a> {
    /// Masked input ids.
    pub input_ids: Option<IdsOut<'a>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Option<&'a mut [i64]>,
    /// Original id at chosen positions, [`super::IGNORE_LABEL`] elsewhere.
    pub labels: Option<&'a mut [i64]>,
    /// All zeros.
    pub token_type_ids: Option<&'a mut [i64]>,
}

impl BatchOut<'_> {
    /// Checks that every array holds `n` values.
    fn check(&self, n: usize) -> Result<()> {
        let ids = match &self.input_ids {
            Some(IdsOut::I64(a)) => Some(a.len()),
            Some(IdsOut::I32(a)) => Some(a.len()),
            None => None,
        };
        let lens = [
            ("input_ids", ids),
            (
                "attention_mask",
                self.attention_mask.as_ref().map(|a| a.len()),
            ),
            ("labels", self.labels.as_ref().map(|a| a.len())),
            (
                "token_type_ids",
                self.token_type_ids.as_ref().map(|a| a.len()),
            ),
        ];
        for (name, len) in lens {
            if let Some(len) = len.filter(|&l| l != n) {
                return Err(Error::Config(format!(
                    "output array {name} holds {len} values; the batch has {n}"
                )));
            }
        }
        Ok(())
    }
}

/// One task's rows of a [`BatchOut`].
struct WideRows<'a> {
    input_ids: Option<IdsOut<'a>>,
    attention_mask: Option<&'a mut [i64]>,
    labels: Option<&'a mut [i64]>,
    token_type_ids: Option<&'a mut [i64]>,
}

impl RowWriter for WideRows<'_> {
    const POSITIONS: bool = false;

    fn write_row(&mut self, r: usize, ids: &[u32], labels: &[i32], used: usize) {
        let len = ids.len();
        let row = r * len..(r + 1) * len;
        match &mut self.input_ids {
            Some(IdsOut::I64(out)) => {
                for (o, &i) in out[row.clone()].iter_mut().zip(ids) {
                    *o = i as i64;
                }
            }
            Some(IdsOut::I32(out)) => {
                for (o, &i) in out[row.clone()].iter_mut().zip(ids) {
                    *o = i as i32;
                }
            }
            None => {}
        }
        if let Some(out) = &mut self.attention_mask {
            out[row.start..row.start + used].fill(1);
            out[row.start + used..row.end].fill(0);
        }
        if let Some(out) = &mut self.labels {
            for (o, &l) in out[row.clone()].iter_mut().zip(labels) {
                *o = l as i64;
            }
        }
        if let Some(out) = &mut self.token_type_ids {
            out[row].fill(0);
        }
    }
}

/// What every row of one step needs to find its sequence (computed once per batch).
struct StepPlan {
    step: u64,
    /// With several sources: the slots' shuffle, so each source's rows spread over all ranks.
    slot_order: Option<Permutation>,
    /// Each source's first (shuffled) slot; its rows are `starts[s]..starts[s + 1]`.
    starts: Vec<usize>,
    /// Rows each source gave to steps before this one: where its stream continues.
    before: Vec<u64>,
}

/// The sample streams' order: position `g` of a source's stream is its sequence at position
/// `g mod N` of epoch `g div N`'s order. Keeps each source's last epoch order, since consecutive
/// rows share it.
struct StreamOrder<'a> {
    sampler: &'a MaskingSampler,
    epochs: Vec<Option<(u64, EpochOrder)>>,
}

impl<'a> StreamOrder<'a> {
    fn new(sampler: &'a MaskingSampler) -> Self {
        StreamOrder {
            sampler,
            epochs: vec![None; sampler.sources.len()],
        }
    }

    /// The (source, sequence) in slot `slot` of the planned step's global batch.
    fn sequence_at(&mut self, plan: &StepPlan, slot: usize) -> (usize, u64) {
        let shuffled = plan
            .slot_order
            .map_or(slot, |p| p.apply(slot as u64) as usize);
        let source = plan.starts.partition_point(|&start| start <= shuffled) - 1;
        let g = plan.before[source] + (shuffled - plan.starts[source]) as u64;
        let epoch_len = self.sampler.sources[source].sequences.len();
        let epoch = g / epoch_len;
        let cached = &mut self.epochs[source];
        if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *cached = Some((epoch, self.sampler.epoch_order(source, epoch)));
        }
        let order = &cached.as_ref().expect("set above").1;
        (source, self.sampler.sequence_in(source, order, g))
    }
}

/// How one step's global batch is split over data-parallel ranks and accumulation micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchPlan {
    /// Sequences per optimizer step over all ranks.
    pub global_batch: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
    /// This rank.
    pub rank: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
}

impl BatchPlan {
    /// Rank `rank` of `world_size` taking its share of the global batch in one micro-batch (what
    /// a caller that does its own accumulation, such as the Python package, asks for).
    pub fn whole_rank(global_batch: usize, world_size: usize, rank: usize) -> Self {
        BatchPlan {
            global_batch,
            world_size,
            rank,
            micro_batch: global_batch / world_size.max(1),
        }
    }

    /// The plan of a step of `global_batch` sequences (a phase's batch size): the same ranks, and
    /// micro-batches of this plan's `micro_batch`, or of the rank's share when that is smaller.
    pub fn for_global_batch(&self, global_batch: usize) -> BatchPlan {
        BatchPlan {
            global_batch,
            micro_batch: self.micro_batch.min(global_batch / self.world_size.max(1)),
            ..*self
        }
    }

    /// Checks that the global batch splits evenly.
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(Error::Config(format!(
                "rank {} of world size {}",
                self.rank, self.world_size
            )));
        }
        if self.micro_batch == 0
            || !self
                .global_batch
                .is_multiple_of(self.world_size * self.micro_batch)
        {
            return Err(Error::Config(format!(
                "global batch {} is not a multiple of world size {} x micro-batch {}",
                self.global_batch, self.world_size, self.micro_batch
            )));
        }
        Ok(())
    }

    /// Micro-batches per rank per step (gradient-accumulation steps).
    pub fn accumulation_steps(&self) -> usize {
        self.global_batch / (self.world_size * self.micro_batch)
    }

    /// Global-batch slots of this rank: the union of its micro-batches, in order.
    pub fn rank_slots(&self) -> Range<usize> {
        let per_rank = self.global_batch / self.world_size;
        self.rank * per_rank..(self.rank + 1) * per_rank
    }

    /// Global-batch slots of this rank's micro-batch `m`.
    pub fn slots(&self, m: usize) -> Range<usize> {
        let start = self.rank * (self.global_batch / self.world_size) + m * self.micro_batch;
        start..start + self.micro_batch
    }
}
