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
  increasing schedules are written the same way                   linear:0.15:0.3";

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
}

impl MaskSchedule {
    /// A constant rate.
    pub fn constant(rate: f64) -> Self {
        MaskSchedule {
            shape: Shape::Constant,
            start: rate,
            end: rate,
            end_at: 1.0,
        }
    }

    /// The masking rate at `step` of a `total_steps`-step run.
    pub fn rate(&self, step: u64, total_steps: u64) -> f64 {
        let (start, end) = (self.start, self.end);
        if self.shape == Shape::Step {
            let switch = (self.end_at * total_steps as f64).ceil() as u64;
            return if step < switch { start } else { end };
        }
        let progress = if total_steps <= 1 {
            0.0
        } else {
            (step.min(total_steps - 1) as f64 / (total_steps - 1) as f64 / self.end_at).min(1.0)
        };
        match self.shape {
            Shape::Constant => start,
            Shape::Linear => start + (end - start) * progress,
            Shape::Cosine => {
                end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Shape::Exp => start * (end / start).powf(progress),
            Shape::Step => unreachable!(),
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

fn parse_rate(spec: &str, what: &str, s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad(spec, format!("{what} {s:?} is not a number")))?;
    if !(v > 0.0 && v < 1.0) {
        return Err(bad(spec, format!("{what} {v} is outside (0, 1)")));
    }
    Ok(v)
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

    fn from_str(spec: &str) -> Result<Self> {
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
        let start = parse_rate(spec, "start rate", args[0])?;
        let end = if shape == Shape::Constant {
            start
        } else {
            parse_rate(spec, "end rate", args[1])?
        };
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
        })
    }
}

impl fmt::Display for MaskSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Constant => write!(f, "constant:{}", self.start),
            Shape::Step => write!(f, "step:{}:{}:{}", self.start, self.end, self.end_at),
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

/// Linear warm-up to `peak`, then linear decay to `peak * final_ratio` at `total_steps`.
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
}

impl LrSchedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        self.peak * (1.0 - (1.0 - self.final_ratio) * progress)
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
    fn lr_warmup_then_decay_to_final_ratio() {
        let lr = LrSchedule {
            peak: 5e-4,
            warmup_steps: 6,
            total_steps: 100,
            final_ratio: 0.02,
        };
        close(lr.lr(0), 5e-4 / 6.0);
        close(lr.lr(5), 5e-4);
        close(lr.lr(6), 5e-4);
        close(lr.lr(53), 5e-4 * (1.0 - 0.98 * 0.5));
        close(lr.lr(100), 5e-4 * 0.02);
        close(lr.lr(200), 5e-4 * 0.02);
    }
}
