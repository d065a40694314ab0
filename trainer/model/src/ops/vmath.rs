//! Vectorised row kernels for the fused CPU ops: softmax and its backward, log-sum-exp and GELU.
//!
//! glibc's `expf` and libm's `erff` are scalar calls; here `exp` (Cephes' polynomial, ~1 ulp) and
//! `erf` (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7 plus f32 rounding, the form PyTorch's
//! vectorised CPU `erf` uses) are branch-free, so the compiler vectorises the loops. Each kernel is compiled for
//! AVX-512, AVX2+FMA and the baseline and picked at run time. Sums run over 16 fixed lanes with
//! explicit fused multiply-adds, so every path gives bit-identical results.

const LANES: usize = 16;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, `exp` returns 0 (the smallest normal power of two is e^-87.3).
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.3;

/// e^x, branch-free (vectorisable); 0 below -87.3, capped at e^88.3 (finite) above; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // max/min, not clamp: NaN becomes a number here (clamp keeps it); NaN is passed through below.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(EXP_MIN).min(EXP_MAX);
    let n = xc.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = p.mul_add(r, c);
    }
    let p = p.mul_add(r * r, r) + 1.0;
    // SAFETY: n is an integer in [-126, 128] after the clamp.
    let bits = (unsafe { n.to_int_unchecked::<i32>() } + 127) << 23;
    let v = p * f32::from_bits(bits as u32);
    let v = if x < EXP_MIN { 0.0 } else { v };
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, < 5e-7 after f32 rounding), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
        p = p.mul_add(t, c);
    }
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// Standard normal CDF Φ(x) = (1 + erf(x/√2)) / 2.
#[inline(always)]
fn phi(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Σ f(a[i], b[i]) over fixed lanes (the same order on every instruction set).
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (ca, cb) in ca.zip(cb) {
        for ((acc, &a), &b) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += f(a, b);
        }
    }
    for ((acc, &a), &b) in acc.iter_mut().zip(ta).zip(tb) {
        *acc += f(a, b);
    }
    acc.iter().sum()
}

/// Σ f(x[i]) over fixed lanes.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    lane_sum2(x, x, |v, _| f(v))
}

#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a = if v > *a { v } else { *a };
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Defines a public kernel compiled for AVX-512, AVX2+FMA and the baseline, chosen at run time.
macro_rules! dispatched {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn kernel($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { kernel($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { kernel($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            kernel($($arg),*)
        }
    };
}
pub(crate) use dispatched;

dispatched! {
    /// Softmax of each `len`-long row of `rows`, in place.
    pub fn softmax_rows(rows: &mut [f32], len: usize) {
        for row in rows.chunks_mut(len) {
            let max = lane_max(row);
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let inv = 1.0 / lane_sum(row, |v| v);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

dispatched! {
    /// Softmax's backward for each `len`-long row, in place: `grad` holds dL/dy on entry and
    /// `scale · y ⊙ (dL/dy − Σ dL/dy ⊙ y)` (`scale` · dL/dx) on return.
    pub fn softmax_backward_rows(grad: &mut [f32], y: &[f32], len: usize, scale: f32) {
        for (g, y) in grad.chunks_mut(len).zip(y.chunks(len)) {
            let dot = lane_sum2(g, y, |g, y| g * y);
            g.iter_mut().zip(y).for_each(|(g, &y)| *g = scale * y * (*g - dot));
        }
    }
}

dispatched! {
    /// (max, log Σ e^x) of a row.
    pub fn max_and_logsumexp(x: &[f32]) -> (f32, f32) {
        let max = lane_max(x);
        (max, max + lane_sum(x, |v| exp(v - max)).ln())
    }
}

dispatched! {
    /// `out = e^(x − shift) · scale`.
    pub fn exp_shifted_scaled(out: &mut [f32], x: &[f32], shift: f32, scale: f32) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp(v - shift) * scale;
        }
    }
}

dispatched! {
    /// GELU (erf form): `out = x · Φ(x)`.
    pub fn gelu(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * phi(v);
        }
    }
}

dispatched! {
    /// GELU's backward: `out = dy · (Φ(x) + x · φ(x))`.
    pub fn gelu_backward(out: &mut [f32], x: &[f32], dy: &[f32]) {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(dy) {
            *o = g * (phi(v) + v * INV_SQRT_2PI * exp(-0.5 * v * v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 `exp`/libm `erf` over a dense grid: exp within 2 ulp-ish relative error,
    /// erf within A&S's 1.5e-7 plus f32 rounding of the `1 − …` step.
    #[test]
    fn exp_and_erf_match_references() {
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.0044; // [-88, 88]
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if want > f32::MIN_POSITIVE as f64 * 2.0 {
                assert!(
                    (got - want).abs() <= 3e-7 * want,
                    "exp({x}) = {got}, want {want}"
                );
            }
            let x = i as f32 * 0.0003; // [-6, 6]
            let want = libm::erf(x as f64);
            assert!(
                (erf(x) as f64 - want).abs() < 5e-7,
                "erf({x}) = {}, want {want}",
                erf(x)
            );
        }
        assert_eq!(exp(-10_000.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(100.0).is_finite());
    }

    /// The dispatched kernels equal straightforward f64 formulas.
    #[test]
    fn kernels_match_plain_formulas() {
        let x: Vec<f32> = (0..999)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.13)
            .collect();
        let (max, lse) = max_and_logsumexp(&x);
        let want: f64 = x.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        assert_eq!(max, x.iter().copied().fold(f32::MIN, f32::max));
        assert!((lse as f64 - want).abs() < 1e-5, "{lse} vs {want}");
        let mut rows = x[..990].to_vec();
        softmax_rows(&mut rows, 99);
        for (row, src) in rows.chunks(99).zip(x.chunks(99)) {
            let z: f64 = src.iter().map(|&v| (v as f64).exp()).sum();
            for (&p, &v) in row.iter().zip(src) {
                assert!((p as f64 - (v as f64).exp() / z).abs() < 1e-6);
            }
        }
        // Softmax backward against the Jacobian product Σ_j dy_j · y_j (δ_ij − y_i), times a scale.
        let dy: Vec<f32> = (0..990)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.02)
            .collect();
        let mut g = dy.clone();
        softmax_backward_rows(&mut g, &rows, 99, 0.5);
        for ((g, y), dy) in g.chunks(99).zip(rows.chunks(99)).zip(dy.chunks(99)) {
            for i in 0..99 {
                let want: f64 = (0..99)
                    .map(|j| {
                        let delta = if i == j { 1.0 } else { 0.0 };
                        dy[j] as f64 * y[j] as f64 * (delta - y[i] as f64)
                    })
                    .sum::<f64>()
                    * 0.5;
                assert!(
                    (g[i] as f64 - want).abs() < 1e-6,
                    "softmax bwd row element {i}"
                );
            }
        }
        let mut out = vec![0f32; x.len()];
        gelu(&mut out, &x);
        for (&o, &v) in out.iter().zip(&x) {
            let v = v as f64;
            let want = v * 0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
            assert!(
                (o as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "gelu({v})"
            );
        }
    }
}
