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

mod phased;
mod plan;
mod prefetch;
mod rates;
mod rows;
mod stream;

pub use phased::{PhaseSampler, PhaseShape};
pub use plan::BatchPlan;
pub use rates::RATE_TAG;
pub use rows::{BatchOut, IdsOut, WrittenBatch};

use phased::Stretch;
use rates::StepRates;
use rows::{split_rows, BatchRows, Built, RowWriter, RowsBuilt, TaskRows, WideRows, ROWS_PER_TASK};
use stream::{StepPlan, StreamOrder};

use super::mask::{mask_sequence, MaskCounts, MaskVocab, MaskingConfig};
use super::mixture::{MixRule, MixSpec, Mixture};
use super::order::Permutation;
use super::sequence::Sequences;
use super::shard_blocks::{BlockEpoch, Order, ShardBlocks};
use crate::error::{Error, Result};
use crate::rate_dist::RateDist;
use crate::schedule::MaskSchedule;
use crate::seed::seed_of;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Domain-separation tags for the sampler's seeds.
const ORDER_TAG: u64 = 0x006f_7264_6572;
/// The tag of each row's mask stream (`seed_of(&[seed, MASK_TAG, step, slot])`).
pub const MASK_TAG: u64 = 0x6d61_736b;
/// The tag of each step's slot shuffle with several sources (`seed_of(&[seed, MIX_TAG, step])`).
pub const MIX_TAG: u64 = 0x6d69_7874;

/// A masked batch, row-major `[rows, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Optimizer step the batch belongs to.
    pub step: u64,
    /// Slots of the global batch held here.
    pub slots: Range<usize>,
    /// Masking rate: the schedule's rate at `step` (with a rate distribution other than
    /// `point`, the mean of `row_rates`).
    pub rate: f64,
    /// Each row's masking rate (with `--rate-per-document`, its first document's).
    pub row_rates: Vec<f64>,
    /// With `--rate-per-document` (empty otherwise): each segment's rate, aligned with
    /// `segment_starts`.
    pub segment_rates: Vec<f64>,
    /// Each row's maskable tokens (real, non-special): the denominators of the per-token and
    /// per-sequence loss normalisations.
    pub row_maskable: Vec<u32>,
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

    /// The rate the token at flat index `flat` (`row·seq_len + col`) was masked at.
    pub fn rate_of(&self, flat: u32) -> f64 {
        rate_of_token(
            flat,
            self.seq_len,
            &self.row_rates,
            &self.segment_starts,
            &self.segment_rates,
        )
    }
}

/// The rate the token at flat index `flat` was masked at: its segment's rate when rates are per
/// document (`segment_rates` aligned with `segment_starts`), else its row's.
pub fn rate_of_token(
    flat: u32,
    seq_len: usize,
    row_rates: &[f64],
    segment_starts: &[u32],
    segment_rates: &[f64],
) -> f64 {
    if segment_rates.is_empty() {
        return row_rates[flat as usize / seq_len];
    }
    let segment = segment_starts.partition_point(|&s| s <= flat) - 1;
    segment_rates[segment]
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
    /// How each row's rate is drawn (`point`: the schedule's rate for every row).
    #[serde(default, skip_serializing_if = "RateDist::is_point")]
    pub rate_dist: RateDist,
    /// With `pack-docs`: one rate per document (segment) instead of one per row.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_per_document: bool,
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
        cfg.rate_dist.check_over(cfg.total_steps)?;
        if cfg.rate_per_document && !sequences.layout().has_segments() {
            return Err(Error::Config(
                "--rate-per-document draws a rate per document of a packed row: it needs --layout pack-docs".into(),
            ));
        }
        if cfg.rate_per_document && cfg.rate_dist.is_point() {
            return Err(Error::Config(
                "--rate-per-document needs a --rate-dist other than point (every document would take the schedule's rate)".into(),
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

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The sequence view (of the first source, the only one without a mixture).
    pub fn sequences(&self) -> &Sequences {
        &self.sources[0].sequences
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
            row_rates: built.row_rates,
            segment_rates: built.segment_rates,
            row_maskable: built.row_maskable,
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
            row_rates: built.row_rates,
            segment_rates: built.segment_rates,
            row_maskable: built.row_maskable,
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
        let point_rate = self.rate_at(step);
        let rates = StepRates::new(
            &self.cfg.rate_dist,
            self.cfg.seed,
            step,
            self.schedule_clock(step),
            point_rate,
            self.cfg.global_batch,
        );
        let mut sequence_ids = vec![0u64; rows];
        let mut sources = vec![0u16; rows];
        let mut row_rates = vec![0f64; rows];
        let mut row_maskable = vec![0u32; rows];
        let plan = self.step_plan(step);
        self.prefetch_from(step);
        let parts: Vec<RowsBuilt> = writers
            .into_par_iter()
            .zip(sequence_ids.par_chunks_mut(ROWS_PER_TASK))
            .zip(sources.par_chunks_mut(ROWS_PER_TASK))
            .zip(row_rates.par_chunks_mut(ROWS_PER_TASK))
            .zip(row_maskable.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .map(
                |(task, ((((writer, seq_ids), sources), rates_out), maskable))| {
                    let first_row = task * ROWS_PER_TASK;
                    let rows = TaskRows {
                        writer,
                        sequence_ids: seq_ids,
                        sources,
                        rates: rates_out,
                        maskable,
                    };
                    self.fill_rows(&plan, &rates, slots.start + first_row, first_row, rows)
                },
            )
            .collect::<Result<_>>()?;
        let mut counts = MaskCounts::default();
        let mut masked_positions =
            Vec::with_capacity(parts.iter().map(|p| p.positions.len()).sum());
        let (mut segment_starts, mut segment_rates) = (Vec::new(), Vec::new());
        for p in &parts {
            counts.add(&p.counts);
            masked_positions.extend_from_slice(&p.positions);
            segment_starts.extend_from_slice(&p.segment_starts);
            segment_rates.extend_from_slice(&p.segment_rates);
        }
        let rate = match rates.is_point() {
            true => point_rate,
            false => row_rates.iter().sum::<f64>() / rows.max(1) as f64,
        };
        if !self.run_sources.is_empty() {
            for s in &mut sources {
                *s = self.source_index[*s as usize];
            }
        }
        Ok(Built {
            rate,
            row_rates,
            segment_rates,
            row_maskable,
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
    /// per token need no boundaries: the whole row is drawn at once, as with the other layouts),
    /// and so does masking with a rate per document.
    fn fill_rows<W: RowWriter>(
        &self,
        plan: &StepPlan,
        rates: &StepRates,
        first_slot: usize,
        first_row: usize,
        mut rows: TaskRows<'_, W>,
    ) -> Result<RowsBuilt> {
        let len = self.sequences().seq_len();
        let segmented = self.sequences().layout().has_segments();
        let per_document = self.cfg.rate_per_document;
        let per_segment =
            segmented && (self.cfg.masking.exact || self.cfg.masking.whole_word || per_document);
        let (mut starts, mut segment_starts, mut segment_rates) =
            (Vec::new(), Vec::new(), Vec::new());
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
            // The row's rates, each drawn once: one per document, or the row's one.
            let first = segment_rates.len();
            if per_document {
                segment_rates.extend((0..starts.len()).map(|k| rates.rate(slot, k)));
            }
            rows.rates[r] = match per_document {
                true => segment_rates[first],
                false => rates.rate(slot, 0),
            };
            let rate_of = |k: usize| match per_document {
                true => segment_rates[first + k],
                false => rows.rates[r],
            };
            if !per_segment {
                starts.truncate(1);
            }
            let mut maskable = 0;
            for (k, &a) in starts.iter().enumerate() {
                let (a, b) = (a as usize, starts.get(k + 1).map_or(len, |&b| b as usize));
                let c = mask_sequence(
                    &mut rng,
                    &mut ids[a..b],
                    &mut labels[a..b],
                    rate_of(k),
                    &self.cfg.masking,
                    &self.vocab,
                    &mut scratch,
                    &mut part,
                );
                maskable += c.maskable;
                counts.add(&c);
                if W::POSITIONS {
                    chosen.extend(part.iter().map(|&p| base + a as u32 + p));
                }
            }
            rows.maskable[r] = maskable as u32;
            rows.writer.write_row(r, &ids, &labels, used);
            if W::POSITIONS {
                positions.append(&mut chosen);
            }
        }
        Ok(RowsBuilt {
            counts,
            positions,
            segment_starts,
            segment_rates,
        })
    }
}
