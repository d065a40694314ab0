//! Mixtures of named sources whose weights follow schedules (`--mix c4=0.7,wiki=linear:0.5:0.1`).
//!
//! A step's composition is exact, never a coin flip per row: source `s` gets the largest-remainder
//! rounding of `B × w_s(t) / Σ w(t)` rows of the `B`-row global batch (remainders largest first,
//! ties by name). Which slots those rows take is a seeded permutation of the step's slots (so
//! every rank's share is mixed too), and each source reads its own stream: its rows before step
//! `t` are the sum of its counts, kept every [`CHECKPOINT`] steps so any step is found in O(1).

use crate::error::{Error, Result};
use crate::schedule::MaskSchedule;
use std::fmt;
use std::str::FromStr;

/// Steps between stored prefix sums of the per-source counts.
pub const CHECKPOINT: u64 = 256;

/// A source's weight: a constant (any finite number >= 0) or a schedule in the masking-rate grammar.
// A schedule holds its points inline (it is `Copy`); a mixture holds a few of these.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weight {
    /// The same weight at every step.
    Constant(f64),
    /// The schedule's value at each step (`linear:0.5:0.1`).
    Scheduled(MaskSchedule),
}

impl Weight {
    /// The (unnormalised) weight at `step` of a `total_steps` run.
    pub fn at(&self, step: u64, total_steps: u64) -> f64 {
        match self {
            Weight::Constant(w) => *w,
            Weight::Scheduled(s) => s.rate(step, total_steps),
        }
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Weight::Constant(w) => write!(f, "{w}"),
            Weight::Scheduled(s) => write!(f, "{s}"),
        }
    }
}

impl FromStr for Weight {
    type Err = Error;

    /// A number >= 0, or a schedule whose values are >= 0.
    fn from_str(value: &str) -> Result<Self> {
        match value.trim().parse::<f64>() {
            Ok(w) if w.is_finite() && w >= 0.0 => Ok(Weight::Constant(w)),
            Ok(w) => Err(Error::Config(format!("{w} is negative or not finite"))),
            Err(_) => Ok(Weight::Scheduled(MaskSchedule::parse_non_negative(
                value.trim(),
            )?)),
        }
    }
}

/// `--join NAME@F`: a source left out of a `--mix-by-size` mixture before fraction F of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// The source.
    pub name: String,
    /// Fraction of the run from which it is mixed in, in [0, 1).
    pub at: f64,
}

impl FromStr for Join {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let bad = |msg: String| Error::Config(format!("--join {spec:?}: {msg}"));
        let (name, at) = spec
            .split_once('@')
            .ok_or_else(|| bad("write NAME@F (F: the fraction of the run it joins at)".into()))?;
        let name = name.trim();
        if !is_source_name(name) {
            return Err(bad(format!("{name:?} is not a source name")));
        }
        let at: f64 = at
            .trim()
            .parse()
            .map_err(|_| bad(format!("fraction {at:?} is not a number")))?;
        if !(0.0..1.0).contains(&at) {
            return Err(bad(format!("fraction {at} is outside [0, 1)")));
        }
        Ok(Join {
            name: name.to_string(),
            at,
        })
    }
}

impl fmt::Display for Join {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.at)
    }
}

/// How the sources of a mixture are weighed.
// A schedule holds its points inline (it is `Copy`); a mixture holds a few of these.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum MixRule {
    /// `--mix`: a weight (or weight schedule) per source.
    Weights(MixSpec),
    /// `--mix-by-size ALPHA [--join NAME@F]...`: source `i` weighs `(tokens_i / max tokens) ^
    /// ALPHA(t)` (1: in proportion to size, 0: uniform), 0 before its join fraction.
    BySize {
        /// The exponent: a number or a schedule.
        alpha: Weight,
        /// Sources that join late.
        join: Vec<Join>,
    },
}

/// `--mix`: a weight for every named source, `name=weight,name=weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct MixSpec {
    /// (source name, weight), in the order written.
    pub weights: Vec<(String, Weight)>,
}

fn bad_mix(spec: &str, msg: impl fmt::Display) -> Error {
    Error::Config(format!("--mix {spec:?}: {msg}"))
}

impl FromStr for MixSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let mut weights: Vec<(String, Weight)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(bad_mix(spec, format!("{part:?} is not NAME=WEIGHT")));
            };
            let (name, value) = (name.trim(), value.trim());
            if !is_source_name(name) {
                return Err(bad_mix(
                    spec,
                    format!("{name:?} is not a source name (letters, digits, '_', '-')"),
                ));
            }
            if weights.iter().any(|(n, _)| n == name) {
                return Err(bad_mix(spec, format!("source {name:?} is weighted twice")));
            }
            let weight = match value.parse::<f64>() {
                Ok(w) if w.is_finite() && w >= 0.0 => Weight::Constant(w),
                Ok(w) => {
                    return Err(bad_mix(
                        spec,
                        format!("weight {w} of {name:?} is negative or not finite"),
                    ))
                }
                Err(_) => {
                    Weight::Scheduled(MaskSchedule::parse_non_negative(value).map_err(|e| {
                        bad_mix(
                            spec,
                            format!("weight of {name:?} is neither a number nor a schedule: {e}"),
                        )
                    })?)
                }
            };
            weights.push((name.to_string(), weight));
        }
        if weights.is_empty() {
            return Err(bad_mix(spec, "no source weighted"));
        }
        Ok(MixSpec { weights })
    }
}

impl fmt::Display for MixSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(n, w)| format!("{n}={w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Whether `name` can name a source (`c4`, `wiki_en`, `books-1`).
pub fn is_source_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The per-step composition of the global batch for sources sorted by name.
#[derive(Debug, Clone)]
pub struct Mixture {
    names: Vec<String>,
    weights: SourceWeights,
    total_steps: u64,
    global_batch: usize,
    /// `checkpoints[k][s]`: rows of source `s` in steps `0..k·CHECKPOINT`.
    checkpoints: Vec<Vec<u64>>,
}

/// Each source's weight, resolved from a [`MixRule`].
// A schedule holds its points inline (it is `Copy`); a mixture holds a few of these.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum SourceWeights {
    /// One weight per source, in name order.
    Each(Vec<Weight>),
    /// By size: `(relative size)^alpha(t)` from each source's join step on.
    BySize {
        alpha: Weight,
        /// Tokens of each source over the largest source's.
        relative_size: Vec<f64>,
        /// First step each source is mixed in.
        join_step: Vec<u64>,
    },
}

impl Mixture {
    /// The mixture of `sources` (names, sorted) under `spec`; fails on a source without a weight,
    /// a weight for an unknown source, or a step at which every weight is zero.
    pub fn new(
        sources: &[String],
        spec: &MixSpec,
        total_steps: u64,
        global_batch: usize,
    ) -> Result<Self> {
        Self::with_rule(
            sources,
            &[],
            &MixRule::Weights(spec.clone()),
            total_steps,
            global_batch,
        )
    }

    /// The mixture of `sources` (names, sorted; `tokens`: each one's size, needed by
    /// [`MixRule::BySize`]) under `rule`, with the refusals of [`Mixture::new`].
    pub fn with_rule(
        sources: &[String],
        tokens: &[u64],
        rule: &MixRule,
        total_steps: u64,
        global_batch: usize,
    ) -> Result<Self> {
        let spec = match rule {
            MixRule::Weights(spec) => spec,
            MixRule::BySize { alpha, join } => {
                let what = format!("--mix-by-size {alpha}");
                for j in join {
                    if !sources.contains(&j.name) {
                        return Err(Error::Config(format!(
                            "--join {j}: unknown source {:?} (sources: {})",
                            j.name,
                            sources.join(", ")
                        )));
                    }
                }
                if tokens.len() != sources.len() || tokens.contains(&0) {
                    return Err(Error::Config(format!(
                        "{what}: every source needs its token count (one is empty)"
                    )));
                }
                let max = *tokens.iter().max().expect("one source at least") as f64;
                let weights = SourceWeights::BySize {
                    alpha: *alpha,
                    relative_size: tokens.iter().map(|&t| t as f64 / max).collect(),
                    join_step: sources
                        .iter()
                        .map(|s| {
                            join.iter()
                                .find(|j| &j.name == s)
                                .map_or(0, |j| (j.at * total_steps as f64).ceil() as u64)
                        })
                        .collect(),
                };
                return Self::build(sources, weights, &what, total_steps, global_batch);
            }
        };
        let spec_text = spec.to_string();
        for (name, _) in &spec.weights {
            if !sources.contains(name) {
                return Err(bad_mix(
                    &spec_text,
                    format!("unknown source {name:?} (sources: {})", sources.join(", ")),
                ));
            }
        }
        let weights = sources
            .iter()
            .map(|s| {
                spec.weights
                    .iter()
                    .find(|(n, _)| n == s)
                    .map(|(_, w)| *w)
                    .ok_or_else(|| bad_mix(&spec_text, format!("source {s:?} has no weight")))
            })
            .collect::<Result<Vec<_>>>()?;
        let what = format!("--mix {spec_text:?}");
        Self::build(
            sources,
            SourceWeights::Each(weights),
            &what,
            total_steps,
            global_batch,
        )
    }

    /// The mixture, with its prefix sums; refuses a step at which every weight is zero.
    fn build(
        sources: &[String],
        weights: SourceWeights,
        what: &str,
        total_steps: u64,
        global_batch: usize,
    ) -> Result<Self> {
        let mut m = Mixture {
            names: sources.to_vec(),
            weights,
            total_steps,
            global_batch,
            checkpoints: Vec::new(),
        };
        let mut rows = vec![0u64; sources.len()];
        for step in 0..total_steps {
            if step % CHECKPOINT == 0 {
                m.checkpoints.push(rows.clone());
            }
            let w = m.raw_weights(step);
            if w.iter().sum::<f64>() <= 0.0 {
                return Err(Error::Config(format!(
                    "{what}: every weight is zero at step {step}"
                )));
            }
            for (r, c) in rows.iter_mut().zip(m.counts_from(&w)) {
                *r += c as u64;
            }
        }
        Ok(m)
    }

    /// Source names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// How source `i` is weighed, for display: its weight (`0.7`, `linear:0.5:0.1`), or by size
    /// its share of the largest source's tokens, the exponent and its join step.
    pub fn describe(&self, i: usize) -> String {
        match &self.weights {
            SourceWeights::Each(w) => w[i].to_string(),
            SourceWeights::BySize {
                alpha,
                relative_size,
                join_step,
            } => {
                let join = match join_step[i] {
                    0 => String::new(),
                    s => format!(", from step {s}"),
                };
                format!("({:.4} of the largest)^{alpha}{join}", relative_size[i])
            }
        }
    }

    fn raw_weights(&self, step: u64) -> Vec<f64> {
        match &self.weights {
            SourceWeights::Each(w) => w.iter().map(|w| w.at(step, self.total_steps)).collect(),
            SourceWeights::BySize {
                alpha,
                relative_size,
                join_step,
            } => {
                let a = alpha.at(step, self.total_steps);
                relative_size
                    .iter()
                    .zip(join_step)
                    .map(|(&r, &j)| if step < j { 0.0 } else { r.powf(a) })
                    .collect()
            }
        }
    }

    /// The normalised weights at `step`.
    pub fn weights_at(&self, step: u64) -> Vec<f64> {
        let w = self.raw_weights(step);
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    /// Rows of each source in step `step`'s global batch: the largest-remainder rounding of
    /// `B × w / Σw` (ties by name).
    pub fn counts(&self, step: u64) -> Vec<usize> {
        self.counts_from(&self.raw_weights(step))
    }

    fn counts_from(&self, w: &[f64]) -> Vec<usize> {
        largest_remainder(self.global_batch, w)
    }

    /// Rows of each source in steps `0..step`.
    pub fn rows_before(&self, step: u64) -> Vec<u64> {
        let k = (step / CHECKPOINT) as usize;
        let mut rows = self.checkpoints[k.min(self.checkpoints.len().saturating_sub(1))].clone();
        for s in (k as u64 * CHECKPOINT)..step {
            for (r, c) in rows.iter_mut().zip(self.counts(s)) {
                *r += c as u64;
            }
        }
        rows
    }
}

/// Splits `total` in proportion to `weights` (not all zero): floors of the quotas, then one more
/// for the largest remainders, ties to the lower index.
pub fn largest_remainder(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let quotas: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let assigned: usize = counts.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Stable sort: equal remainders keep name order.
    order.sort_by(|&a, &b| {
        let (ra, rb) = (quotas[a] - quotas[a].floor(), quotas[b] - quotas[b].floor());
        rb.total_cmp(&ra)
    });
    for &i in order.iter().take(total.saturating_sub(assigned)) {
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn largest_remainder_matches_hand_computed_splits() {
        assert_eq!(largest_remainder(10, &[0.7, 0.3]), [7, 3]);
        // 10 x (1/3, 1/3, 1/3) = 3.33 each: the one extra row goes to the first name.
        assert_eq!(largest_remainder(10, &[1.0, 1.0, 1.0]), [4, 3, 3]);
        // 8 x (0.55, 0.45) = 4.4, 3.6: the larger remainder (0.6) wins.
        assert_eq!(largest_remainder(8, &[0.55, 0.45]), [4, 4]);
        assert_eq!(largest_remainder(5, &[0.0, 2.0]), [0, 5]);
        assert_eq!(
            largest_remainder(4096, &[0.5, 0.1]).iter().sum::<usize>(),
            4096
        );
    }

    #[test]
    fn parses_numbers_and_schedules_and_refuses_bad_specs() {
        let m: MixSpec = "wiki=linear:0.5:0.1, c4=0.7".parse().unwrap();
        assert_eq!(m.weights[0].0, "wiki");
        assert!(matches!(m.weights[1].1, Weight::Constant(w) if w == 0.7));
        assert_eq!(m.to_string(), "wiki=linear:0.5:0.1,c4=0.7");
        for (bad, why) in [
            ("c4=-0.5", "negative"),
            ("c4", "NAME=WEIGHT"),
            ("c4=0.5,c4=0.2", "twice"),
            ("c4=lots", "neither a number nor a schedule"),
            ("a b=1", "not a source name"),
            ("", "no source"),
        ] {
            let err = bad.parse::<MixSpec>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_missing_and_all_zero_weights_are_refused() {
        let sources = names(&["c4", "wiki"]);
        let err = |spec: &str| {
            Mixture::new(&sources, &spec.parse().unwrap(), 100, 8)
                .unwrap_err()
                .to_string()
        };
        assert!(err("c4=1,wiki=1,books=1").contains("unknown source \"books\""));
        assert!(err("c4=1").contains("source \"wiki\" has no weight"));
        assert!(err("c4=0,wiki=0").contains("every weight is zero at step 0"));
        // A source joining at 30%: before it, the other source is alone; a gap with no source
        // weighted is refused, naming the first such step.
        let m = Mixture::new(
            &names(&["c4", "wiki"]),
            &"c4=1,wiki=stairs:0:0.5@0.3".parse().unwrap(),
            10,
            4,
        )
        .unwrap();
        // From step 3 (ceil(0.3 x 10)): 4 x (1, 0.5) / 1.5 = 2.67, 1.33 -> 3, 1.
        assert_eq!((m.counts(2), m.counts(3)), (vec![4, 0], vec![3, 1]));
        let sources2 = names(&["c4", "wiki"]);
        let err = Mixture::new(
            &sources2,
            &"c4=stairs:1:0@0.5,wiki=stairs:0:1@0.7".parse().unwrap(),
            10,
            4,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("every weight is zero at step 5"), "{err}");
        // A step schedule whose only non-zero phase ends: zero from the switch on.
        let sources = names(&["a", "b"]);
        let m = Mixture::new(&sources, &"a=step:0.5:0.2:0.5,b=0".parse().unwrap(), 10, 4).unwrap();
        assert_eq!(m.counts(9), [4, 0]);
    }

    #[test]
    fn counts_follow_the_rounding_rule_and_prefix_sums_add_up() {
        let sources = names(&["c4", "wiki"]);
        let spec: MixSpec = "c4=0.3,wiki=linear:0.5:0.1".parse().unwrap();
        let (steps, batch) = (1000u64, 24usize);
        let m = Mixture::new(&sources, &spec, steps, batch).unwrap();
        let mut rows = [0u64; 2];
        for step in 0..steps {
            assert_eq!(m.rows_before(step).as_slice(), &rows, "step {step}");
            let wiki = 0.5 + (0.1 - 0.5) * (step as f64 / (steps - 1) as f64);
            let expected = largest_remainder(batch, &[0.3, wiki]);
            let counts = m.counts(step);
            assert_eq!(counts, expected, "step {step}");
            assert_eq!(counts.iter().sum::<usize>(), batch);
            rows[0] += counts[0] as u64;
            rows[1] += counts[1] as u64;
        }
    }
}
