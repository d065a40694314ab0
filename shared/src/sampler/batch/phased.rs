//! A run of phases as one sampler: each phase's sampler builds its stretch of steps, its
//! sources' streams continuing from the rows earlier phases took, schedules on the run's clock
//! or the phase's own. What a step's batch shape, rate, weights and counts are, by phase.

use super::MaskingSampler;
use crate::error::{Error, Result};
use std::ops::Range;

/// The stretch of a run one sampler builds: steps `first..end`, its sources' streams starting at
/// `offsets` (rows they gave to earlier phases), schedules on the run's clock or the stretch's own.
#[derive(Debug, Clone)]
pub(super) struct Stretch {
    pub(super) first: u64,
    pub(super) end: u64,
    /// The run's length (the clock of schedules not set by a phase).
    pub(super) run_steps: u64,
    pub(super) offsets: Vec<u64>,
    /// The masking schedule runs over this stretch (a phase set it), not over the run.
    pub(super) local_schedule: bool,
    /// The mixture's weights run over this stretch (a phase set them), not over the run.
    pub(super) local_mixture: bool,
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

impl MaskingSampler {
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
    pub(super) fn at(&self, step: u64) -> &MaskingSampler {
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
    pub(super) fn mixture_clock(&self, step: u64) -> u64 {
        let step = step.clamp(self.stretch.first, self.stretch.end);
        if self.stretch.local_mixture {
            step - self.stretch.first
        } else {
            step
        }
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
    pub(super) fn rows_before(&self, step: u64) -> Vec<u64> {
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

    /// The schedule's masking rate at `step`.
    pub fn rate_at(&self, step: u64) -> f64 {
        let (t, total) = self.schedule_clock(step);
        self.at(step).cfg.schedule.rate(t, total)
    }

    /// The distribution of `step`'s row rates (`point`: every row at [`MaskingSampler::rate_at`]),
    /// for its mean and quantiles.
    pub fn rates_at(&self, step: u64) -> crate::rate_dist::RatesAt {
        let (t, total) = self.schedule_clock(step);
        let p = self.at(step);
        p.cfg.rate_dist.at(t, total, p.cfg.schedule.rate(t, total))
    }

    /// Where `step` is on the masking schedule's clock (and the rate distribution's): (step,
    /// steps) of the run, or of its phase when the phase set its own schedule.
    pub fn schedule_clock(&self, step: u64) -> (u64, u64) {
        let s = &self.at(step).stretch;
        if s.local_schedule {
            (step - s.first, s.end - s.first)
        } else {
            (step, s.run_steps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PhaseSampler;
    use crate::fixtures::SampleSet;
    use crate::sampler::{Layout, MaskVocab, MaskingSampler, SamplerConfig, Sequences};

    fn phase(
        f: &SampleSet,
        seq_len: usize,
        batch: usize,
        steps: u64,
        schedule: &str,
    ) -> MaskingSampler {
        let seqs =
            Sequences::new(f.set.clone(), &f.tok.info, Layout::Truncate, seq_len, 1).unwrap();
        let cfg = SamplerConfig {
            seed: 5,
            global_batch: batch,
            total_steps: steps,
            schedule: schedule.parse().unwrap(),
            masking: Default::default(),
            order: Default::default(),
            rate_dist: Default::default(),
            rate_per_document: false,
        };
        MaskingSampler::new(seqs, MaskVocab::from_tokenizer(&f.tok), cfg).unwrap()
    }

    /// Steps 0..4 of 8 x 32 on the run's schedule, then 4..10 of 4 x 64 with its own: each step
    /// asks its phase, tokens add up phase by phase, the second phase's schedule runs over its own
    /// six steps and its stream continues after the 32 rows the first took (hand-computed).
    #[test]
    fn each_step_is_its_phases_and_streams_continue() {
        let f = SampleSet::new(64);
        let run = MaskingSampler::phased(vec![
            PhaseSampler {
                sampler: phase(&f, 32, 8, 10, "linear:0.3:0.1"),
                steps: 0..4,
                local_schedule: false,
                local_mixture: false,
            },
            PhaseSampler {
                sampler: phase(&f, 64, 4, 6, "linear:0.4:0.2"),
                steps: 4..10,
                local_schedule: true,
                local_mixture: false,
            },
        ])
        .unwrap();
        let shapes: Vec<_> = run
            .phases()
            .iter()
            .map(|p| (p.first, p.end, p.global_batch, p.seq_len))
            .collect();
        assert_eq!(shapes, [(0, 4, 8, 32), (4, 10, 4, 64)]);
        assert_eq!((run.global_batch_at(3), run.seq_len_at(4)), (8, 64));
        assert_eq!(run.tokens_before(6), 4 * 8 * 32 + 2 * 4 * 64);
        let run_clock: crate::schedule::MaskSchedule = "linear:0.3:0.1".parse().unwrap();
        let own_clock: crate::schedule::MaskSchedule = "linear:0.4:0.2".parse().unwrap();
        assert_eq!(run.rate_at(3), run_clock.rate(3, 10));
        assert_eq!(run.rate_at(7), own_clock.rate(3, 6));
        assert_eq!(run.at(7).rows_before(7), vec![32 + 3 * 4]);
        assert_eq!(run.global_batch(5).unwrap().rows(), 4);
        // Phases must follow each other from step 0.
        let gap = MaskingSampler::phased(vec![PhaseSampler {
            sampler: phase(&f, 32, 8, 10, "constant:0.15"),
            steps: 1..10,
            local_schedule: false,
            local_mixture: false,
        }]);
        assert!(gap.err().unwrap().to_string().contains("do not follow"));
    }
}
