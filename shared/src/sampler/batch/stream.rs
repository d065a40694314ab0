//! Where each slot of a step reads: the step's slot shuffle and per-source starts
//! ([`StepPlan`]), and each slot's (source, sequence) under the sources' epoch orders
//! ([`StreamOrder`]).

use super::{EpochOrder, MaskingSampler, MIX_TAG};
use crate::sampler::order::Permutation;
use crate::seed::seed_of;

/// What every row of one step needs to find its sequence (computed once per batch).
pub(super) struct StepPlan {
    pub(super) step: u64,
    /// With several sources: the slots' shuffle, so each source's rows spread over all ranks.
    pub(super) slot_order: Option<Permutation>,
    /// Each source's first (shuffled) slot; its rows are `starts[s]..starts[s + 1]`.
    pub(super) starts: Vec<usize>,
    /// Rows each source gave to steps before this one: where its stream continues.
    pub(super) before: Vec<u64>,
}

/// The sample streams' order: position `g` of a source's stream is its sequence at position
/// `g mod N` of epoch `g div N`'s order. Keeps each source's last epoch order, since consecutive
/// rows share it.
pub(super) struct StreamOrder<'a> {
    sampler: &'a MaskingSampler,
    epochs: Vec<Option<(u64, EpochOrder)>>,
}

impl<'a> StreamOrder<'a> {
    pub(super) fn new(sampler: &'a MaskingSampler) -> Self {
        StreamOrder {
            sampler,
            epochs: vec![None; sampler.sources.len()],
        }
    }

    /// The (source, sequence) in slot `slot` of the planned step's global batch.
    pub(super) fn sequence_at(&mut self, plan: &StepPlan, slot: usize) -> (usize, u64) {
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

impl MaskingSampler {
    /// Where each slot of step `step` reads: the slot permutation (with several sources), each
    /// source's first slot after it, and each source's rows before the step.
    pub(super) fn step_plan(&self, step: u64) -> StepPlan {
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
}

#[cfg(test)]
mod tests {
    use crate::fixtures::SampleSet;
    use crate::sampler::{Layout, MaskVocab, MaskingSampler, SamplerConfig, Sequences};

    fn config(global_batch: usize) -> SamplerConfig {
        SamplerConfig {
            seed: 5,
            global_batch,
            total_steps: 10,
            schedule: "constant:0.15".parse().unwrap(),
            masking: Default::default(),
            order: Default::default(),
            rate_dist: Default::default(),
            rate_per_document: false,
        }
    }

    fn sequences(f: &SampleSet) -> Sequences {
        Sequences::new(f.set.clone(), &f.tok.info, Layout::Truncate, 32, 1).unwrap()
    }

    /// One source: slot `k` of step `t` is stream position `t·B + k`, unshuffled.
    #[test]
    fn one_source_reads_its_stream_in_slot_order() {
        let f = SampleSet::new(64);
        let s = MaskingSampler::new(sequences(&f), MaskVocab::from_tokenizer(&f.tok), config(8))
            .unwrap();
        let plan = s.step_plan(3);
        assert!(plan.slot_order.is_none());
        assert_eq!(
            (plan.starts.clone(), plan.before.clone()),
            (vec![0], vec![24])
        );
        let order = s.epoch_order(0, 0);
        let mut stream = super::StreamOrder::new(&s);
        for slot in 0..8 {
            let want = s.sequence_in(0, &order, 24 + slot as u64);
            assert_eq!(stream.sequence_at(&plan, slot), (0, want), "slot {slot}");
        }
    }

    /// Two sources mixed 1:3 over 8 slots: each source's rows are the next positions of its own
    /// stream, in the shuffled slots its count gives it.
    #[test]
    fn mixed_sources_continue_their_own_streams_in_shuffled_slots() {
        let f = SampleSet::new(64);
        let named = vec![
            ("a".to_string(), sequences(&f)),
            ("b".to_string(), sequences(&f)),
        ];
        let mix = "a=1,b=3".parse().unwrap();
        let s = MaskingSampler::mixed(named, &mix, MaskVocab::from_tokenizer(&f.tok), config(8))
            .unwrap();
        let plan = s.step_plan(2);
        assert_eq!(
            (plan.starts.clone(), plan.before.clone()),
            (vec![0, 2], vec![4, 12])
        );
        let shuffle = plan
            .slot_order
            .expect("several sources shuffle their slots");
        let mut stream = super::StreamOrder::new(&s);
        let orders = [s.epoch_order(0, 0), s.epoch_order(1, 0)];
        for slot in 0..8 {
            let place = shuffle.apply(slot as u64) as usize;
            let (source, g) = match place < 2 {
                true => (0, 4 + place),
                false => (1, 12 + place - 2),
            };
            let want = s.sequence_in(source, &orders[source], g as u64);
            assert_eq!(
                stream.sequence_at(&plan, slot),
                (source, want),
                "slot {slot}"
            );
        }
    }
}
