//! Masking-rate and learning-rate schedules: pure functions of (step, total steps).
//!
//! Nothing here has state, so a run resumed at step *t* sees exactly the values an uninterrupted
//! run would.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The spec grammar, shown in `--help` and in every parse error.
pub const GRAMMAR: &str = "\
masking-rate schedule grammar (rates are fractions in (0, 1)):
  constant:R               R at every step                        constant:0.15
  linear:START:END         straight line from START (step 0)      linear:0.3:0.15
                           to END (last step)
  cosine:START:END         half cosine from START to END          cosine:0.3:0.15
  exp:START:END            geometric: START*(END/START)^progress  exp:0.3:0.15
  step:START:END[:F]       START for the first fraction F of the  step:0.3:0.15:0.5
                           steps (default 0.5), END after
  any of linear/cosine/exp may end in @F (0 < F <= 1): reach END at
  fraction F of training, then hold it                            linear:0.3:0.15@0.1
  increasing schedules are written the same way                   linear:0.15:0.3
  stairs:V0:V1@F1:V2@F2... V0 from the start, V1 from fraction F1    stairs:0.3:0.15@0.6:0.05@0.9
                           of the run, V2 from F2 (0 < F1 < F2 < 1)
  knots:V0@0:V1@F1:...:Vn@1  piecewise linear through the points    knots:0.3@0:0.2@0.5:0.15@1
  knots-cos:...            the same, half-cosine between points
  mixture weights and --mix-by-size exponents take the same grammar with values >= 0
  (wiki=stairs:0:0.3@0.5: a source that joins halfway)";

/// Most points a `stairs`/`knots` schedule may have.
pub const MAX_POINTS: usize = 16;

/// What values a schedule may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// Masking rates: fractions in (0, 1).
    Rate,
    /// Mixture weights and exponents: finite numbers >= 0 (0 = a source left out).
    NonNegative,
}

/// The (fraction of the run, value) points of a `stairs` or `knots` schedule.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Points {
    len: u8,
    at: [f64; MAX_POINTS],
    value: [f64; MAX_POINTS],
}

impl Points {
    /// The points as (fraction, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        (0..self.len as usize).map(|i| (self.at[i], self.value[i]))
    }

    fn push(&mut self, at: f64, value: f64) {
        let i = self.len as usize;
        self.at[i] = at;
        self.value[i] = value;
        self.len += 1;
    }
}

/// How the rate moves from `start` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `start` throughout.
    Constant,
    /// Linear interpolation.
    Linear,
    /// Half-cosine interpolation.
    Cosine,
    /// Geometric interpolation.
    Exp,
    /// `start` before a fraction of the run, `end` after.
    Step,
    /// Constant pieces switching at fractions of the run.
    Stairs,
    /// Piecewise linear through points.
    Knots,
    /// Piecewise half-cosine through points.
    #[serde(rename = "knots-cos")]
    KnotsCos,
}

/// A masking-rate schedule parsed from a spec such as `linear:0.3:0.15`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskSchedule {
    /// The interpolation.
    pub shape: Shape,
    /// Rate at step 0.
    pub start: f64,
    /// Rate at the last step (or after the switch, for `step`).
    pub end: f64,
    /// Fraction of training at which `end` takes over: where `step` switches, or where
    /// linear/cosine/exp reach `end` and hold it (1 = the last step).
    #[serde(alias = "fraction")]
    pub end_at: f64,
    /// `stairs`/`knots`: the points (empty for the other shapes).
    #[serde(default)]
    pub points: Points,
}

impl MaskSchedule {
    /// A constant rate.
    pub fn constant(rate: f64) -> Self {
        MaskSchedule {
            shape: Shape::Constant,
            start: rate,
            end: rate,
            end_at: 1.0,
            points: Points::default(),
        }
    }

    /// Parses a spec whose values are mixture weights or exponents (>= 0) rather than rates.
    pub fn parse_non_negative(spec: &str) -> Result<Self> {
        parse(spec, Values::NonNegative)
    }

    /// The smallest and largest value the schedule takes.
    pub fn value_range(&self) -> (f64, f64) {
        match self.shape {
            Shape::Stairs | Shape::Knots | Shape::KnotsCos => self
                .points
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
                    (lo.min(v), hi.max(v))
                }),
            _ => (self.start.min(self.end), self.start.max(self.end)),
        }
    }

    /// The masking rate at `step` of a `total_steps`-step run.
    pub fn rate(&self, step: u64, total_steps: u64) -> f64 {
        let (start, end) = (self.start, self.end);
        let switch = |at: f64| (at * total_steps as f64).ceil() as u64;
        if self.shape == Shape::Step {
            return if step < switch(self.end_at) {
                start
            } else {
                end
            };
        }
        let run_progress = if total_steps <= 1 {
            0.0
        } else {
            step.min(total_steps - 1) as f64 / (total_steps - 1) as f64
        };
        match self.shape {
            Shape::Stairs => {
                // The last piece whose switch step has been reached (the first starts at 0).
                let mut value = self.points.value[0];
                for (at, v) in self.points.iter().skip(1) {
                    if step >= switch(at) {
                        value = v;
                    }
                }
                return value;
            }
            Shape::Knots | Shape::KnotsCos => {
                let points: Vec<(f64, f64)> = self.points.iter().collect();
                let i = points
                    .windows(2)
                    .position(|w| run_progress <= w[1].0)
                    .unwrap_or(points.len() - 2);
                let ((a, va), (b, vb)) = (points[i], points[i + 1]);
                let u = ((run_progress - a) / (b - a)).clamp(0.0, 1.0);
                let u = match self.shape {
                    Shape::Knots => u,
                    _ => 0.5 * (1.0 - (std::f64::consts::PI * u).cos()),
                };
                return va + (vb - va) * u;
            }
            _ => {}
        }
        let progress = (run_progress / self.end_at).min(1.0);
        match self.shape {
            Shape::Constant => start,
            Shape::Linear => start + (end - start) * progress,
            Shape::Cosine => {
                end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Shape::Exp => start * (end / start).powf(progress),
            Shape::Step | Shape::Stairs | Shape::Knots | Shape::KnotsCos => unreachable!(),
        }
    }
}

fn bad(spec: &str, msg: impl Into<String>) -> Error {
    Error::Schedule {
        spec: spec.to_string(),
        msg: msg.into(),
        grammar: GRAMMAR,
    }
}

/// The shape called `name`, checked to take `values` values.
fn parse_shape(spec: &str, name: &str, values: usize) -> Result<Shape> {
    let shape = match name {
        "constant" => Shape::Constant,
        "linear" => Shape::Linear,
        "cosine" => Shape::Cosine,
        "exp" => Shape::Exp,
        "step" => Shape::Step,
        other => return Err(bad(spec, format!("unknown schedule {other:?}"))),
    };
    let (expected, wording) = match shape {
        Shape::Constant => (1..=1, "1"),
        Shape::Step => (2..=3, "2 or 3"),
        _ => (2..=2, "2"),
    };
    if !expected.contains(&values) {
        return Err(bad(
            spec,
            format!("{name} takes {wording} value(s), got {values}"),
        ));
    }
    Ok(shape)
}

fn parse_rate(spec: &str, what: &str, s: &str, values: Values) -> Result<f64> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad(spec, format!("{what} {s:?} is not a number")))?;
    match values {
        Values::Rate if !(v > 0.0 && v < 1.0) => {
            Err(bad(spec, format!("{what} {v} is outside (0, 1)")))
        }
        Values::NonNegative if !(v.is_finite() && v >= 0.0) => {
            Err(bad(spec, format!("{what} {v} is negative or not finite")))
        }
        _ => Ok(v),
    }
}

/// `stairs:V0:V1@F1:...` or `knots:V0@0:...:Vn@1` (`shape` says which), each piece checked and
/// named in errors.
fn parse_points(spec: &str, shape: Shape, pieces: &[&str], values: Values) -> Result<MaskSchedule> {
    let name = spec.split(':').next().unwrap_or_default().trim();
    if pieces.len() < 2 {
        return Err(bad(
            spec,
            format!("{name} takes at least 2 pieces, got {}", pieces.len()),
        ));
    }
    if pieces.len() > MAX_POINTS {
        return Err(bad(
            spec,
            format!(
                "{name} takes at most {MAX_POINTS} pieces, got {}",
                pieces.len()
            ),
        ));
    }
    let mut points = Points::default();
    for (i, piece) in pieces.iter().enumerate() {
        let what = format!("piece {} {:?}:", i + 1, piece.trim());
        let (value, at) = match (shape, piece.split_once('@')) {
            (Shape::Stairs, None) if i == 0 => (*piece, None),
            (Shape::Stairs, None) => {
                return Err(bad(
                    spec,
                    format!("{what} needs @F (the fraction it starts at)"),
                ))
            }
            (Shape::Stairs, Some(_)) if i == 0 => {
                return Err(bad(
                    spec,
                    format!("{what} the first value starts at 0: no @F"),
                ))
            }
            (_, Some((v, f))) => (v, Some(f)),
            (_, None) => {
                return Err(bad(
                    spec,
                    format!("{what} needs @F (its fraction of the run)"),
                ))
            }
        };
        let value = parse_rate(spec, &format!("{what} value"), value, values)?;
        let at = match at {
            None => 0.0,
            Some(f) => f
                .trim()
                .parse::<f64>()
                .map_err(|_| bad(spec, format!("{what} fraction {f:?} is not a number")))?,
        };
        let previous = points.iter().last().map(|(a, _)| a);
        if shape == Shape::Stairs && i > 0 && !(at > 0.0 && at < 1.0) {
            return Err(bad(spec, format!("{what} fraction {at} is outside (0, 1)")));
        }
        if shape != Shape::Stairs {
            if i == 0 && at != 0.0 {
                return Err(bad(spec, format!("{what} the first point must be at 0")));
            }
            if i + 1 == pieces.len() && at != 1.0 {
                return Err(bad(spec, format!("{what} the last point must be at 1")));
            }
        }
        if let Some(previous) = previous {
            if at <= previous {
                return Err(bad(
                    spec,
                    format!("{what} fraction {at} is not after the previous piece's {previous}"),
                ));
            }
        }
        points.push(at, value);
    }
    let first = points.value[0];
    let last = points.value[points.len as usize - 1];
    Ok(MaskSchedule {
        shape,
        start: first,
        end: last,
        end_at: 1.0,
        points,
    })
}

fn parse_fraction(spec: &str, what: &str, s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad(spec, format!("{what} {s:?} is not a number")))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(bad(spec, format!("{what} {v} is outside (0, 1]")));
    }
    Ok(v)
}

impl FromStr for MaskSchedule {
    type Err = Error;

    /// A masking-rate schedule (values in (0, 1)).
    fn from_str(spec: &str) -> Result<Self> {
        parse(spec, Values::Rate)
    }
}

/// A schedule spec whose values follow `values`.
fn parse(spec: &str, values: Values) -> Result<MaskSchedule> {
    {
        let parts: Vec<&str> = spec.split(':').collect();
        let name = parts[0].trim().to_ascii_lowercase();
        let shape = match name.as_str() {
            "stairs" => Some(Shape::Stairs),
            "knots" => Some(Shape::Knots),
            "knots-cos" => Some(Shape::KnotsCos),
            _ => None,
        };
        if let Some(shape) = shape {
            return parse_points(spec, shape, &parts[1..], values);
        }
        let (body, reach) = match spec.split_once('@') {
            Some((b, r)) => (b, Some(parse_fraction(spec, "hold point", r)?)),
            None => (spec, None),
        };
        let parts: Vec<&str> = body.split(':').collect();
        let name = parts[0].trim().to_ascii_lowercase();
        let args = &parts[1..];
        let shape = parse_shape(spec, &name, args.len())?;
        if reach.is_some() && matches!(shape, Shape::Constant | Shape::Step) {
            return Err(bad(
                spec,
                format!("@F applies to linear, cosine and exp, not {name}"),
            ));
        }
        let start = parse_rate(spec, "start rate", args[0], values)?;
        let end = if shape == Shape::Constant {
            start
        } else {
            parse_rate(spec, "end rate", args[1], values)?
        };
        if shape == Shape::Exp && (start == 0.0 || end == 0.0) {
            return Err(bad(spec, "exp needs values above 0"));
        }
        let end_at = match (shape, args.get(2)) {
            (Shape::Step, Some(f)) => {
                let f = parse_fraction(spec, "switch fraction", f)?;
                if f >= 1.0 {
                    return Err(bad(spec, "switch fraction must be below 1"));
                }
                f
            }
            (Shape::Step, None) => 0.5,
            _ => reach.unwrap_or(1.0),
        };
        Ok(MaskSchedule {
            shape,
            start,
            end,
            end_at,
            points: Points::default(),
        })
    }
}

impl fmt::Display for MaskSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Constant => write!(f, "constant:{}", self.start),
            Shape::Step => write!(f, "step:{}:{}:{}", self.start, self.end, self.end_at),
            Shape::Stairs => {
                write!(f, "stairs:{}", self.points.value[0])?;
                for (at, v) in self.points.iter().skip(1) {
                    write!(f, ":{v}@{at}")?;
                }
                Ok(())
            }
            Shape::Knots | Shape::KnotsCos => {
                let name = if self.shape == Shape::Knots {
                    "knots"
                } else {
                    "knots-cos"
                };
                write!(f, "{name}")?;
                for (at, v) in self.points.iter() {
                    write!(f, ":{v}@{at}")?;
                }
                Ok(())
            }
            shape => {
                let name = match shape {
                    Shape::Linear => "linear",
                    Shape::Cosine => "cosine",
                    _ => "exp",
                };
                write!(f, "{name}:{}:{}", self.start, self.end)?;
                if self.end_at < 1.0 {
                    write!(f, "@{}", self.end_at)?;
                }
                Ok(())
            }
        }
    }
}

/// How the learning rate falls after warm-up (`--lr-schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LrDecay {
    /// `linear`: from the end of warm-up straight down to the final ratio at the end of the run.
    #[default]
    Linear,
    /// `wsd:DECAY[:SHAPE]`: warm-up, the peak held, then the last `fraction` of the run decaying
    /// to the final ratio with `shape` (warmup-stable-decay, ModernBERT's and mmBERT's).
    Wsd {
        /// Fraction of the run spent decaying, in (0, 1].
        fraction: f64,
        /// The decay's curve.
        shape: DecayShape,
    },
}

/// The curve of a WSD decay, as a function of its progress `p` in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecayShape {
    /// `1 - p`.
    Linear,
    /// `(1 + cos(pi p)) / 2`.
    Cosine,
    /// `1 - sqrt(p)` (ModernBERT's).
    OneMinusSqrt,
}

impl DecayShape {
    fn remaining(self, p: f64) -> f64 {
        match self {
            DecayShape::Linear => 1.0 - p,
            DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            DecayShape::OneMinusSqrt => 1.0 - p.sqrt(),
        }
    }

    /// The shape's name in the grammar (and transformers' `decay_type`).
    pub fn name(self) -> &'static str {
        match self {
            DecayShape::Linear => "linear",
            DecayShape::Cosine => "cosine",
            DecayShape::OneMinusSqrt => "1-sqrt",
        }
    }
}

/// The `--lr-schedule` grammar, for `--help` and errors.
pub const LR_GRAMMAR: &str = "\
learning-rate schedule (after the linear warm-up of --warmup):
  linear                   straight down to --final-lr-ratio at the last step (default)
  wsd:DECAY[:SHAPE]        the peak held, then the last DECAY fraction of the run (0 < DECAY <= 1)
                           decaying to --final-lr-ratio; SHAPE linear (default), cosine or 1-sqrt
                           (ModernBERT's)                                    wsd:0.1:1-sqrt";

impl FromStr for LrDecay {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let bad =
            |msg: String| Error::Config(format!("--lr-schedule {spec:?}: {msg}\n\n{LR_GRAMMAR}"));
        let parts: Vec<&str> = spec.trim().split(':').collect();
        match parts.as_slice() {
            ["linear"] => Ok(LrDecay::Linear),
            ["wsd", decay, rest @ ..] if rest.len() <= 1 => {
                let fraction: f64 = decay
                    .parse()
                    .map_err(|_| bad(format!("decay fraction {decay:?} is not a number")))?;
                if !(fraction > 0.0 && fraction <= 1.0) {
                    return Err(bad(format!("decay fraction {fraction} is outside (0, 1]")));
                }
                let shape = match rest.first().copied() {
                    None | Some("linear") => DecayShape::Linear,
                    Some("cosine") => DecayShape::Cosine,
                    Some("1-sqrt") => DecayShape::OneMinusSqrt,
                    Some(other) => {
                        return Err(bad(format!(
                            "decay shape {other:?}: use linear, cosine or 1-sqrt"
                        )))
                    }
                };
                Ok(LrDecay::Wsd { fraction, shape })
            }
            ["wsd"] => Err(bad("wsd needs the decay fraction: wsd:DECAY[:SHAPE]".into())),
            _ => Err(bad("unknown schedule".into())),
        }
    }
}

impl fmt::Display for LrDecay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LrDecay::Linear => f.write_str("linear"),
            LrDecay::Wsd { fraction, shape } => write!(f, "wsd:{fraction}:{}", shape.name()),
        }
    }
}

impl Serialize for LrDecay {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LrDecay {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Linear warm-up to `peak`, then the decay (`linear`: straight down to `peak * final_ratio` at
/// `total_steps`; `wsd`: held, then the last fraction of the run down to it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// Length of the run.
    pub total_steps: u64,
    /// Learning rate at the end, as a fraction of `peak`.
    pub final_ratio: f64,
    /// How it falls after warm-up.
    #[serde(default)]
    pub decay: LrDecay,
}

impl LrSchedule {
    /// The schedule the trainer's flags describe: `decay` (`--lr-schedule`) over `total_steps`,
    /// warm-up over the fraction `warmup` of them (rounded), down to `final_ratio` of `peak`.
    pub fn from_flags(
        peak: f64,
        decay: LrDecay,
        total_steps: u64,
        warmup: f64,
        final_ratio: f64,
    ) -> Self {
        LrSchedule {
            peak,
            warmup_steps: (warmup * total_steps as f64).round() as u64,
            total_steps,
            final_ratio,
            decay,
        }
    }

    /// Steps of the decay at the end of the run: the fraction of a `wsd` schedule (at least 1);
    /// everything after warm-up for `linear`.
    pub fn decay_steps(&self) -> u64 {
        match self.decay {
            LrDecay::Linear => self.total_steps.saturating_sub(self.warmup_steps).max(1),
            LrDecay::Wsd { fraction, .. } => {
                ((fraction * self.total_steps as f64).round() as u64).max(1)
            }
        }
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let (start, shape) = match self.decay {
            LrDecay::Linear => (self.warmup_steps, DecayShape::Linear),
            LrDecay::Wsd { shape, .. } => (
                self.total_steps
                    .saturating_sub(self.decay_steps())
                    .max(self.warmup_steps),
                shape,
            ),
        };
        if step < start {
            return self.peak;
        }
        let decay_steps = self.total_steps.saturating_sub(start).max(1);
        let progress = ((step - start) as f64 / decay_steps as f64).min(1.0);
        if self.decay == LrDecay::Linear {
            // The original formula, kept to the last bit: recorded runs resume and compare exactly.
            return self.peak * (1.0 - (1.0 - self.final_ratio) * progress);
        }
        self.peak * (self.final_ratio + (1.0 - self.final_ratio) * shape.remaining(progress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(spec: &str) -> MaskSchedule {
        spec.parse().unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn linear_hand_computed() {
        let l = s("linear:0.3:0.15");
        close(l.rate(0, 101), 0.3);
        close(l.rate(50, 101), 0.225);
        close(l.rate(100, 101), 0.15);
        close(l.rate(25, 101), 0.3 - 0.15 * 0.25);
        close(l.rate(500, 101), 0.15); // past the end holds
        let inc = s("linear:0.15:0.3");
        close(inc.rate(0, 11), 0.15);
        close(inc.rate(10, 11), 0.3);
    }

    #[test]
    fn cosine_exp_step_constant_hand_computed() {
        let c = s("cosine:0.3:0.15");
        close(c.rate(0, 101), 0.3);
        close(c.rate(50, 101), 0.225); // cos(pi/2) = 0
        close(
            c.rate(25, 101),
            0.15 + 0.15 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()),
        );
        close(c.rate(100, 101), 0.15);
        let e = s("exp:0.3:0.15");
        close(e.rate(0, 101), 0.3);
        close(e.rate(50, 101), 0.3 / 2f64.sqrt()); // 0.3 * 0.5^0.5
        close(e.rate(100, 101), 0.15);
        let st = s("step:0.3:0.15");
        assert_eq!(
            (st.rate(49, 100), st.rate(50, 100), st.rate(99, 100)),
            (0.3, 0.15, 0.15)
        );
        let st = s("step:0.3:0.15:0.25");
        assert_eq!((st.rate(24, 100), st.rate(25, 100)), (0.3, 0.15));
        let k = s("constant:0.15");
        assert_eq!((k.rate(0, 10), k.rate(9, 10)), (0.15, 0.15));
    }

    #[test]
    fn hold_point_reaches_end_early_then_holds() {
        let h = s("linear:0.3:0.15@0.1");
        close(h.rate(0, 1001), 0.3);
        close(h.rate(50, 1001), 0.225); // halfway to the hold point at step 100
        close(h.rate(100, 1001), 0.15);
        close(h.rate(1000, 1001), 0.15);
    }

    #[test]
    fn single_step_run_uses_start() {
        close(s("linear:0.3:0.15").rate(0, 1), 0.3);
    }

    #[test]
    fn specs_round_trip_through_display() {
        for spec in [
            "constant:0.15",
            "linear:0.3:0.15",
            "cosine:0.3:0.15",
            "exp:0.3:0.15",
            "step:0.3:0.15:0.5",
            "linear:0.3:0.15@0.1",
        ] {
            assert_eq!(s(spec).to_string(), spec);
        }
    }

    #[test]
    fn malformed_specs_explain_and_show_grammar() {
        for (spec, needle) in [
            ("linear:0.3", "linear takes 2 value(s), got 1"),
            ("cosine:1.5:0.1", "start rate 1.5 is outside (0, 1)"),
            ("linear:0.3:0", "end rate 0 is outside (0, 1)"),
            ("constant:-0.1", "outside (0, 1)"),
            ("triangle:0.3:0.1", "unknown schedule \"triangle\""),
            ("linear:a:0.1", "start rate \"a\" is not a number"),
            ("step:0.3:0.15:1", "switch fraction must be below 1"),
            ("constant:0.15@0.5", "@F applies to linear"),
            ("linear:0.3:0.15@0", "hold point 0 is outside (0, 1]"),
            ("", "unknown schedule"),
        ] {
            let err = spec.parse::<MaskSchedule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains("masking-rate schedule grammar"), "{err}");
        }
    }

    #[test]
    fn stairs_hand_computed_including_the_edges() {
        // mmBERT's rate: 0.3, then 0.15 from 60% of the run, 0.05 from 90%. 100 steps: the
        // switches are at steps ceil(60) = 60 and ceil(90) = 90.
        let m = s("stairs:0.3:0.15@0.6:0.05@0.9");
        let at = |t| m.rate(t, 100);
        assert_eq!(
            (at(0), at(59), at(60), at(89), at(90), at(99)),
            (0.3, 0.3, 0.15, 0.15, 0.05, 0.05)
        );
        // 1000 steps: ceil(600) = 600, ceil(900) = 900; 7 steps: ceil(4.2) = 5, ceil(6.3) = 7.
        assert_eq!((m.rate(599, 1000), m.rate(600, 1000)), (0.3, 0.15));
        assert_eq!(
            (m.rate(4, 7), m.rate(5, 7), m.rate(6, 7)),
            (0.3, 0.15, 0.15)
        );
        assert_eq!(m.value_range(), (0.05, 0.3));
    }

    #[test]
    fn knots_hand_computed_including_the_edges() {
        let k = s("knots:0.3@0:0.2@0.5:0.15@1");
        // 101 steps: progress = step / 100.
        close(k.rate(0, 101), 0.3);
        close(k.rate(25, 101), 0.25);
        close(k.rate(50, 101), 0.2);
        close(k.rate(75, 101), 0.175);
        close(k.rate(100, 101), 0.15);
        close(k.rate(500, 101), 0.15);
        let c = s("knots-cos:0.3@0:0.2@0.5:0.15@1");
        close(
            c.rate(25, 101),
            0.3 - 0.1 * 0.5 * (1.0 - (std::f64::consts::PI / 2.0).cos()),
        );
        close(c.rate(50, 101), 0.2);
        close(
            c.rate(60, 101),
            0.2 - 0.05 * 0.5 * (1.0 - (std::f64::consts::PI * 0.2).cos()),
        );
        close(c.rate(100, 101), 0.15);
        // Weights may be 0 (a source that joins later) and above 1.
        let w = MaskSchedule::parse_non_negative("stairs:0:3@0.5").unwrap();
        assert_eq!((w.rate(49, 100), w.rate(50, 100)), (0.0, 3.0));
    }

    #[test]
    fn piecewise_specs_round_trip_and_errors_name_the_piece() {
        for spec in [
            "stairs:0.3:0.15@0.6:0.05@0.9",
            "knots:0.3@0:0.2@0.5:0.15@1",
            "knots-cos:0.3@0:0.15@1",
        ] {
            assert_eq!(s(spec).to_string(), spec);
        }
        for (spec, needle) in [
            ("stairs:0.3", "at least 2 pieces"),
            ("stairs:0.3:0.15", "piece 2 \"0.15\": needs @F"),
            (
                "stairs:0.3@0.1:0.15@0.5",
                "piece 1 \"0.3@0.1\": the first value starts at 0",
            ),
            (
                "stairs:0.3:0.15@0.6:0.05@0.5",
                "piece 3 \"0.05@0.5\": fraction 0.5 is not after",
            ),
            (
                "stairs:0.3:0.15@1",
                "piece 2 \"0.15@1\": fraction 1 is outside (0, 1)",
            ),
            (
                "stairs:0.3:0@0.5",
                "piece 2 \"0@0.5\": value 0 is outside (0, 1)",
            ),
            (
                "stairs:0.3:x@0.5",
                "piece 2 \"x@0.5\": value \"x\" is not a number",
            ),
            ("knots:0.3@0.1:0.15@1", "the first point must be at 0"),
            ("knots:0.3@0:0.15@0.9", "the last point must be at 1"),
            (
                "knots:0.3@0:0.2@0.5:0.2@0.5:0.15@1",
                "piece 3 \"0.2@0.5\": fraction 0.5 is not after",
            ),
            ("knots:0.3@0:0.15", "piece 2 \"0.15\": needs @F"),
            ("knots:0.3@0:0.15@z", "fraction \"z\" is not a number"),
        ] {
            let err = spec.parse::<MaskSchedule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains("masking-rate schedule grammar"), "{err}");
        }
        let err = MaskSchedule::parse_non_negative("stairs:0:-1@0.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn wsd_holds_the_peak_then_decays_over_the_last_fraction() {
        // 100 steps, warm-up 10, decay the last 20% (steps 80..100) to 0.1 of the peak.
        let wsd = |shape: &str| LrSchedule {
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 100,
            final_ratio: 0.1,
            decay: format!("wsd:0.2:{shape}").parse().unwrap(),
        };
        let lin = wsd("linear");
        close(lin.lr(0), 0.1);
        close(lin.lr(9), 1.0);
        close(lin.lr(10), 1.0);
        close(lin.lr(79), 1.0);
        close(lin.lr(80), 1.0);
        close(lin.lr(90), 0.1 + 0.9 * 0.5);
        close(lin.lr(99), 0.1 + 0.9 * (1.0 - 19.0 / 20.0));
        close(lin.lr(100), 0.1);
        close(
            wsd("cosine").lr(85),
            0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos()),
        );
        close(wsd("1-sqrt").lr(85), 0.1 + 0.9 * (1.0 - 0.5));
        close(wsd("1-sqrt").lr(100), 0.1);
        assert_eq!(
            "wsd:0.2".parse::<LrDecay>().unwrap(),
            LrDecay::Wsd {
                fraction: 0.2,
                shape: DecayShape::Linear
            }
        );
        for spec in ["linear", "wsd:0.2:linear", "wsd:0.1:1-sqrt", "wsd:1:cosine"] {
            assert_eq!(spec.parse::<LrDecay>().unwrap().to_string(), spec);
        }
        for (spec, needle) in [
            ("wsd", "needs the decay fraction"),
            ("wsd:0", "outside (0, 1]"),
            ("wsd:1.5", "outside (0, 1]"),
            ("wsd:0.1:sqrt", "decay shape \"sqrt\""),
            ("wsd:x", "is not a number"),
            ("cosine", "unknown schedule"),
        ] {
            let err = spec.parse::<LrDecay>().unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("learning-rate schedule"),
                "{spec}: {err}"
            );
        }
    }

    #[test]
    fn lr_warmup_then_decay_to_final_ratio() {
        let lr = LrSchedule {
            peak: 5e-4,
            warmup_steps: 6,
            total_steps: 100,
            final_ratio: 0.02,
            decay: LrDecay::Linear,
        };
        close(lr.lr(0), 5e-4 / 6.0);
        close(lr.lr(5), 5e-4);
        close(lr.lr(6), 5e-4);
        close(lr.lr(53), 5e-4 * (1.0 - 0.98 * 0.5));
        close(lr.lr(100), 5e-4 * 0.02);
        close(lr.lr(200), 5e-4 * 0.02);
    }
}
