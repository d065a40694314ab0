//! Seeded inverted dropout.

use candle_core::{Result, Tensor};
use rand_core::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Seeded inverted dropout: masks come from a counter-based stream so runs are reproducible.
pub struct Dropout {
    rng: Xoshiro256PlusPlus,
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p` drawing from `rng`.
    pub fn new(rng: Xoshiro256PlusPlus, p: f64) -> Self {
        Dropout { rng, p }
    }

    /// Zeroes each element with probability p and scales the rest by 1/(1-p).
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        match self.factors(x.elem_count()) {
            Some(f) => x.mul(&Tensor::from_vec(f, x.shape(), x.device())?),
            None => Ok(x.clone()),
        }
    }

    /// The next `n` factors (0 with probability p, else 1/(1-p)) that [`Dropout::apply`] would
    /// multiply by; `None` when p = 0 (nothing is drawn).
    pub fn factors(&mut self, n: usize) -> Option<Vec<f32>> {
        if self.p <= 0.0 {
            return None;
        }
        let threshold = (self.p * 4_294_967_296.0) as u64;
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let mut mask = Vec::with_capacity(n);
        while mask.len() < n {
            let bits = self.rng.next_u64();
            for half in [bits & 0xffff_ffff, bits >> 32] {
                if mask.len() < n {
                    mask.push(if half < threshold { 0.0 } else { keep });
                }
            }
        }
        Some(mask)
    }
}

/// `x` through `dropout` when training (`Some`), unchanged when evaluating (`None`).
pub fn maybe_dropout(x: Tensor, dropout: &mut Option<Dropout>) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    /// The kept fraction is within 5 standard deviations of 1 − p, kept values are 1/(1−p), and
    /// the same seed gives the same factors.
    #[test]
    fn factors_drop_at_rate_p_and_repeat_with_the_seed() {
        let n = 100_000;
        let draw = || Dropout::new(Xoshiro256PlusPlus::seed_from_u64(3), 0.1).factors(n);
        let f = draw().unwrap();
        assert_eq!(f, draw().unwrap());
        let kept = f.iter().filter(|&&v| v != 0.0).count() as f64;
        let sd = (n as f64 * 0.1 * 0.9).sqrt();
        assert!((kept - 0.9 * n as f64).abs() < 5.0 * sd, "kept {kept}");
        assert!(f.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        assert!(Dropout::new(Xoshiro256PlusPlus::seed_from_u64(3), 0.0)
            .factors(10)
            .is_none());
    }
}
