//! Masking rates per row: a distribution over rates whose parameters may follow schedules.
//!
//! Every distribution is drawn by its quantile function from one uniform number `u` per row (or
//! per document), so the sampler keys `u` by (seed, step, slot) as it keys masks, and
//! `stratified` only changes where `u` comes from (one per stratum of the global batch).
//! `point`, the default, puts every row at `--schedule`'s rate: today's batches, byte for byte.

use crate::error::{Error, Result};
use crate::schedule::MaskSchedule;
use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, ContinuousCDF, Normal};
use std::fmt;
use std::str::FromStr;

/// The `--rate-dist` grammar, shown in `--help` and in every parse error.
pub const GRAMMAR: &str = "\
rate distribution grammar (--rate-dist; one rate per row, or per document with
--rate-per-document; rates are fractions in [0, 1]):
  point                      every row at --schedule's rate (the default)
  uniform:LO:HI              uniform in [LO, HI]                   uniform:0.001:1
  beta:A:B[:LO:HI]           Beta(A, B) scaled into [LO, HI]       beta:2:5:0.05:0.6
                             (default 0:1)
  truncnorm:MEAN:STD:LO:HI   normal truncated to [LO, HI]          truncnorm:0.3:0.1:0.05:0.6
  stratified:LO:HI           uniform, one rate per stratum of the  stratified:0.001:1
                             global batch (MDLM's low-discrepancy draw), the same set of
                             rates at any world size or micro-batch count
  any parameter may follow a schedule, written in brackets in the schedule grammar
  (values >= 0): Open-dLLM's curriculum                   uniform:0.001:[linear:0.1:0.8]";

/// One parameter: a number, or a schedule over the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param(pub MaskSchedule);

impl Param {
    /// The value at `step` of a `total`-step run.
    pub fn at(&self, step: u64, total: u64) -> f64 {
        self.0.rate(step, total)
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lo, hi) = self.0.value_range();
        if lo == hi {
            write!(f, "{lo}")
        } else {
            write!(f, "[{}]", self.0)
        }
    }
}

/// A distribution of masking rates.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RateDist {
    /// Every row at the schedule's rate.
    #[default]
    Point,
    /// Uniform in `[lo, hi]`.
    Uniform { lo: Param, hi: Param },
    /// Beta(`a`, `b`) scaled into `[lo, hi]`.
    Beta {
        a: Param,
        b: Param,
        lo: Param,
        hi: Param,
    },
    /// Normal(`mean`, `std`) truncated to `[lo, hi]`.
    TruncNorm {
        mean: Param,
        std: Param,
        lo: Param,
        hi: Param,
    },
    /// Uniform in `[lo, hi]`, drawn one per stratum of the global batch.
    Stratified { lo: Param, hi: Param },
}

/// A distribution's parameters at one step, ready to draw from.
#[derive(Debug, Clone, Copy)]
pub enum RatesAt {
    /// Every row at this rate.
    Point(f64),
    /// `lo + (hi − lo)·u`.
    Uniform { lo: f64, hi: f64 },
    /// `lo + (hi − lo)·Beta⁻¹(u)`.
    Beta { beta: Beta, lo: f64, hi: f64 },
    /// The normal's quantile between the CDF's values at `lo` and `hi`.
    TruncNorm {
        normal: Normal,
        lo: f64,
        hi: f64,
        cdf_lo: f64,
        cdf_hi: f64,
    },
}

impl RatesAt {
    /// The rate at quantile `u` in [0, 1).
    pub fn quantile(&self, u: f64) -> f64 {
        let rate = match *self {
            RatesAt::Point(r) => r,
            RatesAt::Uniform { lo, hi } => lo + (hi - lo) * u,
            RatesAt::Beta { beta, lo, hi } => lo + (hi - lo) * beta.inverse_cdf(u),
            RatesAt::TruncNorm {
                normal,
                lo,
                hi,
                cdf_lo,
                cdf_hi,
            } => normal
                .inverse_cdf(cdf_lo + (cdf_hi - cdf_lo) * u)
                .clamp(lo, hi),
        };
        rate.clamp(0.0, 1.0)
    }

    /// The probability that a rate is at most `x` (the CDF).
    pub fn cdf(&self, x: f64) -> f64 {
        let unit = |lo: f64, hi: f64| ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
        match *self {
            RatesAt::Point(r) => (x >= r) as u8 as f64,
            RatesAt::Uniform { lo, hi } => unit(lo, hi),
            RatesAt::Beta { beta, lo, hi } => beta.cdf(unit(lo, hi)),
            RatesAt::TruncNorm {
                normal,
                lo,
                hi,
                cdf_lo,
                cdf_hi,
            } => ((normal.cdf(x.clamp(lo, hi)) - cdf_lo) / (cdf_hi - cdf_lo)).clamp(0.0, 1.0),
        }
    }

    /// The mean rate (numerically, for the truncated normal).
    pub fn mean(&self) -> f64 {
        match *self {
            RatesAt::Point(r) => r,
            RatesAt::Uniform { lo, hi } => (lo + hi) / 2.0,
            _ => {
                // The midpoint rule over the quantile function: exact enough for a plan's band.
                let n = 4096;
                (0..n)
                    .map(|i| self.quantile((i as f64 + 0.5) / n as f64))
                    .sum::<f64>()
                    / n as f64
            }
        }
    }
}

impl RateDist {
    /// Whether every row takes the schedule's rate.
    pub fn is_point(&self) -> bool {
        matches!(self, RateDist::Point)
    }

    /// Whether any parameter follows a schedule (varies over the run).
    pub fn is_scheduled(&self) -> bool {
        let params: Vec<&Param> = match self {
            RateDist::Point => Vec::new(),
            RateDist::Uniform { lo, hi } | RateDist::Stratified { lo, hi } => vec![lo, hi],
            RateDist::Beta { a, b, lo, hi } => vec![a, b, lo, hi],
            RateDist::TruncNorm { mean, std, lo, hi } => vec![mean, std, lo, hi],
        };
        params.iter().any(|p| {
            let (lo, hi) = p.0.value_range();
            lo != hi
        })
    }

    /// Whether the draws are stratified over the global batch.
    pub fn is_stratified(&self) -> bool {
        matches!(self, RateDist::Stratified { .. })
    }

    /// The distribution at `step` of a `total`-step run; `point_rate` is the schedule's rate
    /// there (what `point` gives).
    pub fn at(&self, step: u64, total: u64, point_rate: f64) -> RatesAt {
        let v = |p: &Param| p.at(step, total);
        match self {
            RateDist::Point => RatesAt::Point(point_rate),
            RateDist::Uniform { lo, hi } | RateDist::Stratified { lo, hi } => RatesAt::Uniform {
                lo: v(lo),
                hi: v(hi),
            },
            RateDist::Beta { a, b, lo, hi } => RatesAt::Beta {
                beta: Beta::new(v(a), v(b)).expect("checked when parsed"),
                lo: v(lo),
                hi: v(hi),
            },
            RateDist::TruncNorm { mean, std, lo, hi } => {
                let normal = Normal::new(v(mean), v(std)).expect("checked when parsed");
                let (lo, hi) = (v(lo), v(hi));
                RatesAt::TruncNorm {
                    normal,
                    lo,
                    hi,
                    cdf_lo: normal.cdf(lo),
                    cdf_hi: normal.cdf(hi),
                }
            }
        }
    }

    /// Checks that LO ≤ HI (and the truncated normal keeps some mass) at every step of a
    /// `total`-step run (at 10,001 evenly spaced steps of a longer one).
    pub fn check_over(&self, total: u64) -> Result<()> {
        let spec = self.to_string();
        let steps = total.min(10_001);
        for i in 0..steps {
            let step = if steps == total {
                i
            } else {
                i * (total - 1) / (steps - 1)
            };
            let at = self.at(step, total, 0.0);
            let (RatesAt::Uniform { lo, hi }
            | RatesAt::Beta { lo, hi, .. }
            | RatesAt::TruncNorm { lo, hi, .. }) = at
            else {
                return Ok(());
            };
            // A step is worth naming only where a parameter follows a schedule.
            let when = match self.is_scheduled() {
                true => format!(" at step {step}"),
                false => String::new(),
            };
            if lo > hi {
                return Err(bad(&spec, format!("LO {lo} is above HI {hi}{when}")));
            }
            if let RatesAt::TruncNorm { cdf_lo, cdf_hi, .. } = at {
                if cdf_hi - cdf_lo < 1e-12 {
                    return Err(bad(
                        &spec,
                        format!("the normal has no mass in [{lo}, {hi}]{when}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn bad(spec: &str, msg: impl Into<String>) -> Error {
    Error::RateDist {
        spec: spec.to_string(),
        msg: msg.into(),
    }
}

/// `spec`'s pieces split at the colons outside brackets.
fn pieces(spec: &str) -> Result<Vec<&str>> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in spec.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                out.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(bad(spec, "a ']' closes no '['"));
        }
    }
    if depth != 0 {
        return Err(bad(spec, "a '[' is not closed"));
    }
    out.push(&spec[start..]);
    Ok(out)
}

/// What values a parameter may take.
#[derive(Clone, Copy)]
enum Bounds {
    /// A rate in [0, 1].
    Unit,
    /// Above 0 (shapes and spreads).
    Positive,
}

/// Parameter `name` from `piece`: a number, or a schedule in brackets, checked against `bounds`
/// over its whole range.
fn param(spec: &str, name: &str, piece: &str, bounds: Bounds) -> Result<Param> {
    let piece = piece.trim();
    let schedule = match piece.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
        Some(inner) => MaskSchedule::parse_non_negative(inner)
            .map_err(|e| bad(spec, format!("{name} {piece:?}: {}", first_line(&e))))?,
        None => {
            let v: f64 = piece.parse().map_err(|_| {
                bad(
                    spec,
                    format!("{name} {piece:?} is not a number or a [schedule]"),
                )
            })?;
            if !v.is_finite() || v < 0.0 {
                return Err(bad(spec, format!("{name} {v} is negative or not finite")));
            }
            MaskSchedule::constant(v)
        }
    };
    let (lo, hi) = schedule.value_range();
    match bounds {
        Bounds::Unit if hi > 1.0 => Err(bad(spec, format!("{name} {hi} is above 1"))),
        Bounds::Positive if lo <= 0.0 => Err(bad(spec, format!("{name} must be above 0"))),
        _ => Ok(Param(schedule)),
    }
}

fn first_line(e: &Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

impl FromStr for RateDist {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let parts = pieces(spec.trim())?;
        let name = parts[0].trim().to_ascii_lowercase();
        let args = &parts[1..];
        let takes = |counts: &[usize], wording: &str| -> Result<()> {
            if counts.contains(&args.len()) {
                Ok(())
            } else {
                Err(bad(
                    spec,
                    format!("{name} takes {wording}, got {}", args.len()),
                ))
            }
        };
        let unit = |i: usize, what: &str| param(spec, what, args[i], Bounds::Unit);
        let positive = |i: usize, what: &str| param(spec, what, args[i], Bounds::Positive);
        let dist = match name.as_str() {
            "point" => {
                takes(&[0], "no parameters (the rate is --schedule's)")?;
                RateDist::Point
            }
            "uniform" | "stratified" => {
                takes(&[2], "LO:HI")?;
                let (lo, hi) = (unit(0, "LO")?, unit(1, "HI")?);
                match name.as_str() {
                    "uniform" => RateDist::Uniform { lo, hi },
                    _ => RateDist::Stratified { lo, hi },
                }
            }
            "beta" => {
                takes(&[2, 4], "A:B or A:B:LO:HI")?;
                let (lo, hi) = match args.len() {
                    4 => (unit(2, "LO")?, unit(3, "HI")?),
                    _ => (
                        Param(MaskSchedule::constant(0.0)),
                        Param(MaskSchedule::constant(1.0)),
                    ),
                };
                RateDist::Beta {
                    a: positive(0, "A")?,
                    b: positive(1, "B")?,
                    lo,
                    hi,
                }
            }
            "truncnorm" => {
                takes(&[4], "MEAN:STD:LO:HI")?;
                RateDist::TruncNorm {
                    mean: unit(0, "MEAN")?,
                    std: positive(1, "STD")?,
                    lo: unit(2, "LO")?,
                    hi: unit(3, "HI")?,
                }
            }
            other => return Err(bad(spec, format!("unknown distribution {other:?}"))),
        };
        // Constant bounds are checked now; scheduled ones over the run (`check_over`).
        dist.check_over(2)?;
        Ok(dist)
    }
}

impl fmt::Display for RateDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateDist::Point => write!(f, "point"),
            RateDist::Uniform { lo, hi } => write!(f, "uniform:{lo}:{hi}"),
            RateDist::Stratified { lo, hi } => write!(f, "stratified:{lo}:{hi}"),
            RateDist::Beta { a, b, lo, hi } => write!(f, "beta:{a}:{b}:{lo}:{hi}"),
            RateDist::TruncNorm { mean, std, lo, hi } => {
                write!(f, "truncnorm:{mean}:{std}:{lo}:{hi}")
            }
        }
    }
}

impl Serialize for RateDist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RateDist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(spec: &str) -> RateDist {
        spec.parse().unwrap()
    }

    fn err(spec: &str) -> String {
        spec.parse::<RateDist>().unwrap_err().to_string()
    }

    #[test]
    fn specs_round_trip_through_their_display() {
        for spec in [
            "point",
            "uniform:0.001:1",
            "stratified:0.001:1",
            "beta:2:5:0.05:0.6",
            "truncnorm:0.3:0.1:0.05:0.6",
            "uniform:0.001:[linear:0.1:0.8]",
            "beta:[cosine:1:3]:2:0:1",
        ] {
            assert_eq!(d(spec).to_string(), spec);
            assert_eq!(d(&d(spec).to_string()), d(spec));
        }
        assert_eq!(d("beta:2:5").to_string(), "beta:2:5:0:1");
        assert_eq!(d("UNIFORM: 0.1 : 0.2").to_string(), "uniform:0.1:0.2");
    }

    #[test]
    fn errors_name_the_piece_at_fault() {
        assert!(err("uniform:0.1").contains("uniform takes LO:HI, got 1"));
        let e = err("uniform:0.5:0.1");
        assert!(
            e.contains("LO 0.5 is above HI 0.1\n"),
            "constant bounds name no step: {e}"
        );
        assert!(err("uniform:0.1:1.5").contains("HI 1.5 is above 1"));
        assert!(err("uniform:x:1").contains("LO \"x\" is not a number or a [schedule]"));
        assert!(err("beta:0:1").contains("A must be above 0"));
        assert!(err("truncnorm:0.3:0:0:1").contains("STD must be above 0"));
        assert!(err("gamma:1:2").contains("unknown distribution \"gamma\""));
        assert!(err("uniform:0:[linear:0.1:0.8").contains("'[' is not closed"));
        assert!(err("uniform:0:[wavy:0.1:0.8]").contains("HI \"[wavy:0.1:0.8]\": bad schedule"));
        assert!(err("point:0.3").contains("no parameters"));
        assert!(
            err("uniform:0.1").contains("rate distribution grammar"),
            "the grammar is shown"
        );
        assert!(err("uniform:[linear:0.1:0.5]:0.3").contains("LO 0.5 is above HI 0.3"));
        // A scheduled bound that crosses the other mid-run only is caught over the run, naming
        // the step.
        let crossing = d("uniform:[knots:0.1@0:0.5@0.5:0.1@1]:0.3");
        let e = crossing.check_over(11).unwrap_err().to_string();
        assert!(e.contains("is above HI 0.3 at step 3"), "{e}");
    }

    /// Hand-computed values: quantiles and CDFs at chosen points, scheduled parameters at chosen
    /// steps.
    #[test]
    fn quantiles_cdfs_and_scheduled_parameters_match_hand_computation() {
        let u = d("uniform:0.2:0.6").at(0, 10, 0.0);
        assert!(u.quantile(0.0) == 0.2 && (u.quantile(0.25) - 0.3).abs() < 1e-12);
        assert!((u.cdf(0.5) - 0.75).abs() < 1e-12);
        // Beta(2, 1): CDF x², quantile √u; scaled into [0.1, 0.5].
        let b = d("beta:2:1:0.1:0.5").at(0, 10, 0.0);
        assert!((b.quantile(0.25) - (0.1 + 0.4 * 0.5)).abs() < 1e-9);
        assert!((b.cdf(0.3) - 0.25).abs() < 1e-9);
        // The truncated normal at its mean's quantile: symmetric bounds put the median at the mean.
        let t = d("truncnorm:0.3:0.1:0.1:0.5").at(0, 10, 0.0);
        assert!((t.quantile(0.5) - 0.3).abs() < 1e-9 && (t.cdf(0.3) - 0.5).abs() < 1e-9);
        assert!((t.mean() - 0.3).abs() < 1e-6);
        // HI rising 0.1 → 0.8 over 11 steps: 0.45 at step 5.
        let c = d("uniform:0:[linear:0.1:0.8]");
        let RatesAt::Uniform { hi, .. } = c.at(5, 11, 0.0) else {
            panic!()
        };
        assert!((hi - 0.45).abs() < 1e-12);
        assert_eq!(d("point").at(3, 10, 0.25).quantile(0.9), 0.25);
    }
}
