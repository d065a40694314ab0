//! The model's differentiable building blocks, one file per op.
//!
//! Each op's file holds its public function, its CPU kernel (a candle custom op with its own
//! backward: one pass over memory forward and one back, instead of several tensor ops that each
//! allocate), its composed twin (candle ops with autograd, used on every other device and as the
//! tests' reference) and the tests that compare the two. [`supports`] is the one rule that picks
//! the kernel; a CUDA kernel later is a `cuda_fwd` in the op's file and an arm there.
//!
//! candle-nn 0.11's `ops::layer_norm`, `ops::softmax_last_dim` (and `LayerNorm::forward` on
//! contiguous input) have no backward: gradients stop there silently. Nothing here uses them.

mod attention;
mod bias;
mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dropout;
mod geglu;
mod gelu;
mod layer_norm;
mod matmul;
mod rotary;
mod rows;
mod softmax;
pub mod tables;
pub mod vmath;

pub use attention::{attention, attention_composed, Visibility};
pub use bias::add_bias;
pub use cross_entropy::{cross_entropy_and_correct, weighted_cross_entropy_and_correct};
pub use dropout::{maybe_dropout, Dropout, DropoutMask, Site};
pub use geglu::{geglu, geglu_backward_kernel, geglu_composed, geglu_kernel};
pub use gelu::{gelu, gelu_backward_kernel, gelu_kernel};
pub use layer_norm::{layer_norm, layer_norm_composed};
pub use matmul::matmul_in;
pub use rotary::{rotary, rotary_composed, rotary_kernel, RotaryTables};
pub use softmax::{softmax_composed, softmax_last_dim};

use candle_core::{DType, Device};
use std::sync::atomic::{AtomicBool, Ordering};

/// Which implementation the ops run where this crate has a kernel for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// This crate's kernels where [`supports`] says so (the default).
    Fused,
    /// The composed candle ops everywhere: what a device without this crate's kernels runs, so a
    /// CPU run with it follows a GPU step's path (and its transfers) exactly.
    Composed,
}

static COMPOSED: AtomicBool = AtomicBool::new(false);

/// Chooses the ops' implementation for the process (set it before building a model: the
/// optimizer picks its state's form from it).
pub fn set_kernels(k: Kernels) {
    COMPOSED.store(k == Kernels::Composed, Ordering::SeqCst);
}

/// The implementation chosen by [`set_kernels`].
pub fn kernels() -> Kernels {
    match COMPOSED.load(Ordering::SeqCst) {
        true => Kernels::Composed,
        false => Kernels::Fused,
    }
}

/// Whether this crate's own kernels handle tensors of `dtype` on `device`: f32 on the CPU (inputs
/// are made contiguous first), unless [`Kernels::Composed`] was chosen. Everything else takes the
/// composed path. The fused AdamW update follows the same rule. (Dropout always runs its own
/// kernel: the CPU's, or the CUDA one with the `cuda` feature.)
pub fn supports(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && kernels() == Kernels::Fused
}

/// Every CUDA kernel `ops/cuda.rs` launches, by source file (`kernels/NAME.cu`, compiled to PTX
/// with the `cuda` feature): what the sources must define, checked by a test without CUDA.
/// Dropout's kernels serve [`dropout`] on CUDA; the others are compared with their CPU twins by
/// `trainer device-check` and join [`supports`] once a GPU has passed that check.
pub const CUDA_KERNELS: &[(&str, &[&str])] = &[
    (
        "dropout",
        &[
            "dropout_f32",
            "dropout_bf16",
            "dropout_f16",
            "philox_blocks",
        ],
    ),
    (
        "gelu",
        &[
            "gelu_fwd_f32",
            "gelu_fwd_bf16",
            "gelu_bwd_f32",
            "gelu_bwd_bf16",
            "geglu_fwd_f32",
            "geglu_fwd_bf16",
            "geglu_bwd_f32",
            "geglu_bwd_bf16",
        ],
    ),
    ("rotary", &["rotary_f32", "rotary_bf16"]),
];

#[cfg(test)]
mod cuda_kernel_tests {
    use super::CUDA_KERNELS;

    /// The `extern "C" __global__` functions a kernel source defines.
    fn defined(source: &str) -> Vec<String> {
        source
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .filter_map(|rest| rest.split('(').next())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
            .collect()
    }

    /// Each kernel source defines exactly the kernels listed for it (macro-made ones through
    /// their invocations), every source in `kernels/` is listed and compiled by build.rs, and
    /// every kernel name `ops/cuda.rs` launches is listed: no op can reach a kernel that does
    /// not exist.
    #[test]
    fn the_kernel_sources_define_exactly_the_kernels_launched() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let build = std::fs::read_to_string(root.join("build.rs")).unwrap();
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join("kernels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|f| f.strip_suffix(".cu").map(str::to_string))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = CUDA_KERNELS.iter().map(|(f, _)| f.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "kernels/*.cu against CUDA_KERNELS");
        for (file, kernels) in CUDA_KERNELS {
            assert!(
                build.contains(&format!("\"{file}\"")),
                "build.rs compiles {file}.cu"
            );
            let source = std::fs::read_to_string(root.join(format!("kernels/{file}.cu"))).unwrap();
            // Kernels written as `extern "C" __global__ void NAME(`, or made by a macro whose
            // invocations `MACRO(NAME, ...)` follow its definition.
            let mut names = defined(&source);
            for line in source.lines() {
                let line = line.trim();
                if let Some((mac, args)) = line.split_once('(') {
                    let is_invocation = !mac.is_empty()
                        && mac.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                        && line.ends_with(')')
                        && source.contains(&format!("#define {mac}("));
                    if is_invocation {
                        names.push(args.split(',').next().unwrap().trim().to_string());
                    }
                }
            }
            names.retain(|n| !n.starts_with("NAME"));
            names.sort();
            let mut want: Vec<String> = kernels.iter().map(|k| k.to_string()).collect();
            want.sort();
            assert_eq!(names, want, "kernels/{file}.cu");
        }
        // Every kernel name cuda.rs quotes is listed.
        let launcher = std::fs::read_to_string(root.join("src/ops/cuda.rs")).unwrap();
        let all: Vec<&str> = CUDA_KERNELS
            .iter()
            .flat_map(|(_, k)| k.iter().copied())
            .collect();
        let quoted = launcher.split('"').skip(1).step_by(2);
        let kernel_like = |q: &&str| {
            q.ends_with("_f32")
                || q.ends_with("_bf16")
                || q.ends_with("_f16")
                || *q == "philox_blocks"
        };
        for name in quoted.filter(kernel_like) {
            assert!(
                all.contains(&name),
                "ops/cuda.rs launches {name:?}, which no source lists"
            );
        }
    }
}

/// Helpers for the ops' tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::params::normal_samples;
    use candle_core::{Device, Tensor, Var};

    /// A variable of `shape` with N(0, std²) entries drawn from `seed`, on the CPU.
    pub fn var(shape: &[usize], std: f64, seed: u64) -> Var {
        let n = shape.iter().product();
        Var::from_vec(normal_samples(n, std, seed), shape, &Device::Cpu).unwrap()
    }

    /// A constant tensor like [`var`].
    pub fn tensor(shape: &[usize], std: f64, seed: u64) -> Tensor {
        var(shape, std, seed).as_tensor().clone()
    }

    /// The largest absolute element-wise difference.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Checks the gradient of `<f(x), probe>` against central finite differences at every entry
    /// of an `x` of `shape` (N(0, std²) from `seed`): within 1e-2 of the larger magnitude or 2e-3
    /// absolute (f32 differences, step 1e-2).
    pub fn assert_finite_differences(
        shape: &[usize],
        std: f64,
        seed: u64,
        f: impl Fn(&Tensor) -> Tensor,
    ) {
        let x = var(shape, std, seed);
        let y = f(x.as_tensor());
        let probe = tensor(y.dims(), 1.0, 77);
        let objective = |t: &Tensor| -> f64 {
            (f(t) * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let analytic = grads
            .get(x.as_tensor())
            .expect("a gradient for the input")
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for (i, &g) in analytic.iter().enumerate() {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                objective(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let scale = numeric.abs().max(g.abs() as f64);
            assert!(
                (numeric - g as f64).abs() <= (1e-2 * scale).max(2e-3),
                "entry {i}: analytic {g}, finite differences {numeric}"
            );
        }
    }

    /// Checks that an op's exposed kernels (what `trainer device-check` compares across devices)
    /// are the op: `kernel(x)` equals `op(x)`, and `backward(x, dy)` equals the gradient of
    /// `<op(x), dy>`, bit for bit, for x and dy of `shapes` drawn from fixed seeds.
    pub fn assert_kernels_are_the_op(
        op: impl Fn(&Tensor) -> Tensor,
        kernel: impl Fn(&Tensor) -> Tensor,
        backward: impl Fn(&Tensor, &Tensor) -> Tensor,
        (x_shape, dy_shape): (&[usize], &[usize]),
    ) {
        let (x, dy) = (var(x_shape, 2.0, 4), tensor(dy_shape, 1.0, 5));
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = op(x.as_tensor());
        assert_eq!(flat(&kernel(x.as_tensor())), flat(&y), "forward");
        let grads = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let want = grads.get(x.as_tensor()).expect("a gradient for the input");
        assert_eq!(flat(&backward(x.as_tensor(), &dy)), flat(want), "backward");
    }

    /// Checks that `fused` and `composed` give outputs within `tol` of each other, and gradients of
    /// `<y, probe>` within `tol` with respect to every variable in `vars` (present for both or
    /// for neither).
    pub fn assert_same_op(
        fused: impl Fn() -> Tensor,
        composed: impl Fn() -> Tensor,
        vars: &[&Var],
        tol: f32,
    ) {
        let (yf, yc) = (fused(), composed());
        assert_eq!(yf.dims(), yc.dims());
        let d = max_abs_diff(&yf, &yc);
        assert!(d < tol, "forward max difference {d}");
        let probe = tensor(yf.dims(), 1.0, 12);
        let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gc) = (grads(&yf), grads(&yc));
        for (i, v) in vars.iter().enumerate() {
            match (gf.get(v.as_tensor()), gc.get(v.as_tensor())) {
                (Some(f), Some(c)) => {
                    let d = max_abs_diff(f, c);
                    assert!(d < tol, "input {i}: gradient max difference {d}");
                }
                (None, None) => {}
                (f, c) => panic!(
                    "input {i}: gradient present: fused {}, composed {}",
                    f.is_some(),
                    c.is_some()
                ),
            }
        }
    }
}
