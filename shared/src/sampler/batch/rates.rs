//! Each row's (or document's) masking rate at a step: the rate distribution's quantile at a
//! uniform number keyed by (seed, step, slot, document), or, for `stratified`, one number per
//! stratum of the global batch placed on the slots by a seeded permutation. A pure function of
//! (seed, step, slot, document), whatever the world size or micro-batch split.

use crate::rate_dist::{RateDist, RatesAt};
use crate::sampler::order::Permutation;
use crate::seed::{seed_of, unit_of as unit};

/// The tag of the rates' uniform numbers (`seed_of(&[seed, RATE_TAG, step, slot, document])`).
pub const RATE_TAG: u64 = 0x7261_7465;

/// 1/φ: successive documents of a stratified row step through [0, 1) by it (a Weyl sequence),
/// so a row's documents spread as evenly as its stratum allows.
const INVERSE_GOLDEN: f64 = 0.618_033_988_749_894_9;

/// One step's rates.
pub(super) struct StepRates {
    seed: u64,
    step: u64,
    at: RatesAt,
    /// `stratified`: the step's offset r and the slots' permutation over the global batch's
    /// `n` strata.
    strata: Option<(f64, Permutation, u64)>,
}

impl StepRates {
    /// The rates of `step`: `dist` at (`clock`, `clock_total`), around the schedule's
    /// `point_rate`, over a global batch of `global_batch` slots.
    pub(super) fn new(
        dist: &RateDist,
        seed: u64,
        step: u64,
        (clock, clock_total): (u64, u64),
        point_rate: f64,
        global_batch: usize,
    ) -> Self {
        let strata = dist.is_stratified().then(|| {
            let n = global_batch as u64;
            let r = unit(seed_of(&[seed, RATE_TAG, step]));
            let slots = Permutation::new(n, seed_of(&[seed, RATE_TAG, step, u64::MAX]));
            (r, slots, n)
        });
        StepRates {
            seed,
            step,
            at: dist.at(clock, clock_total, point_rate),
            strata,
        }
    }

    /// Whether every row takes the same rate (the schedule's).
    pub(super) fn is_point(&self) -> bool {
        matches!(self.at, RatesAt::Point(_))
    }

    /// The uniform number of document `document` (0 for a row's one draw) of slot `slot`.
    fn u(&self, slot: usize, document: usize) -> f64 {
        match &self.strata {
            Some((r, slots, n)) => {
                let u = (r + slots.apply(slot as u64) as f64) / *n as f64;
                (u + document as f64 * INVERSE_GOLDEN).fract()
            }
            None => unit(seed_of(&[
                self.seed,
                RATE_TAG,
                self.step,
                slot as u64,
                document as u64,
            ])),
        }
    }

    /// The rate of document `document` of slot `slot` (document 0: the row's rate).
    pub(super) fn rate(&self, slot: usize, document: usize) -> f64 {
        match self.at {
            RatesAt::Point(r) => r,
            _ => self.at.quantile(self.u(slot, document)),
        }
    }
}
