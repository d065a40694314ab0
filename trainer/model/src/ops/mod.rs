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
mod attention_rows;
mod bias;
mod bias_gelu;
mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dropout;
mod embedding;
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
pub use attention_rows::{attention_rows, attention_rows_backward};
pub use bias::add_bias;
pub use bias_gelu::{bias_gelu, bias_gelu_backward_kernel, bias_gelu_kernel};
pub use cross_entropy::{
    cross_entropy_and_correct, cross_entropy_backward_kernel, cross_entropy_kernel,
    weighted_cross_entropy_and_correct,
};
pub use dropout::{maybe_dropout, residual_dropout, Dropout, DropoutMask, Site};
pub use embedding::{embedding, embedding_backward_kernel, embedding_kernel};
pub use geglu::{geglu, geglu_backward_kernel, geglu_composed, geglu_kernel};
pub use gelu::{gelu, gelu_backward_kernel, gelu_kernel};
pub use layer_norm::{
    layer_norm, layer_norm_backward_kernel, layer_norm_composed, layer_norm_kernel,
};
pub use matmul::{matmul_in, product_casts};
pub use rotary::{rotary, rotary_composed, rotary_kernel, RotaryTables};
pub use softmax::{softmax_composed, softmax_last_dim};

use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation the ops run where this crate has a kernel for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// This crate's kernels where [`supports`] and [`supports_cuda`] say so (the default).
    Fused,
    /// The composed candle ops everywhere: what a device without this crate's kernels runs, so a
    /// CPU run with it follows a GPU step's path (and its transfers) exactly.
    Composed,
    /// A GPU step's path on the CPU with the CUDA kernels' CPU twins: the ops of
    /// [`CUDA_ROUTED`] run their twins, the rest composed, so a CPU run checks the kernels'
    /// arithmetic end to end.
    Twins,
}

static KERNELS: AtomicU8 = AtomicU8::new(0);

/// Chooses the ops' implementation for the process (set it before building a model: the
/// optimizer picks its state's form from it).
pub fn set_kernels(k: Kernels) {
    KERNELS.store(k as u8, Ordering::SeqCst);
}

/// The implementation chosen by [`set_kernels`].
pub fn kernels() -> Kernels {
    match KERNELS.load(Ordering::SeqCst) {
        0 => Kernels::Fused,
        1 => Kernels::Composed,
        _ => Kernels::Twins,
    }
}

/// Whether this crate's own kernels handle tensors of `dtype` on `device`: f32 on the CPU (inputs
/// are made contiguous first), unless [`Kernels::Composed`] was chosen. Everything else takes the
/// composed path. The fused AdamW update follows the same rule. (Dropout always runs its own
/// kernel: the CPU's, or the CUDA one with the `cuda` feature.)
pub fn supports(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && kernels() == Kernels::Fused
}

/// A bf16 op on the CPU under [`Kernels::Twins`] runs as its CUDA bf16 kernel computes: the f32
/// twin on the inputs widened from bf16 (exact), each output rounded to bf16 once, as the
/// kernel's stores round (gradients alike, through the casts' backward). `Some` of that for bf16
/// CPU `inputs`, `None` otherwise: the caller then runs its kernel.
pub(crate) fn bf16_twin(
    inputs: &[&Tensor],
    op: impl FnOnce(&[Tensor]) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    let Some(first) = inputs.first() else {
        return Ok(None);
    };
    if !(first.device().is_cpu() && first.dtype() == DType::BF16) {
        return Ok(None);
    }
    let wide = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()?;
    op(&wide)?.to_dtype(DType::BF16).map(Some)
}

/// The kernel files (`kernels/NAME.cu`) whose ops run their CUDA kernel on a CUDA device:
/// short-row attention, cross-entropy, the embedding lookup, GELU, bias + GELU and GeGLU (all in
/// `gelu.cu`), layer norm, rotary.
pub const CUDA_ROUTED: &[&str] = &[
    "attention",
    "cross_entropy",
    "embedding",
    "gelu",
    "layer_norm",
    "rotary",
];

/// Whether the op whose CUDA kernels are in `kernels/{file}.cu` runs them (the op's custom op,
/// whose `cuda_fwd` launches them and whose `cpu_fwd` is their twin) for tensors of `dtype` on
/// `device`: f32 or bf16, the file in [`CUDA_ROUTED`], and a CUDA device (with the `cuda`
/// feature) under [`Kernels::Fused`] or the CPU under [`Kernels::Twins`].
pub fn supports_cuda(file: &str, device: &Device, dtype: DType) -> bool {
    let here = match kernels() {
        Kernels::Fused => cfg!(feature = "cuda") && device.is_cuda(),
        Kernels::Twins => device.is_cpu(),
        Kernels::Composed => false,
    };
    here && matches!(dtype, DType::F32 | DType::BF16) && CUDA_ROUTED.contains(&file)
}

/// Every CUDA kernel `ops/cuda.rs` launches, by source file (`kernels/NAME.cu`, compiled to PTX
/// with the `cuda` feature): what the sources must define, checked by a test without CUDA.
/// Dropout's kernels serve [`dropout`] on CUDA; the ops of [`CUDA_ROUTED`] run theirs there (see
/// [`supports_cuda`]); `trainer device-check` compares every kernel with its CPU twin.
pub const CUDA_KERNELS: &[(&str, &[&str])] = &[
    (
        "attention",
        &[
            "attention_fwd_f32",
            "attention_fwd_bf16",
            "attention_bwd_q_f32",
            "attention_bwd_q_bf16",
            "attention_bwd_kv_f32",
            "attention_bwd_kv_bf16",
        ],
    ),
    (
        "cross_entropy",
        &[
            "cross_entropy_fwd_f32",
            "cross_entropy_fwd_bf16",
            "cross_entropy_bwd_f32",
            "cross_entropy_bwd_bf16",
        ],
    ),
    (
        "dropout",
        &[
            "dropout_f32",
            "dropout_bf16",
            "dropout_f16",
            "dropout_add_f32",
            "dropout_add_bf16",
            "dropout_add_f16",
            "philox_blocks",
        ],
    ),
    (
        "embedding",
        &[
            "embedding_fwd_f32",
            "embedding_fwd_bf16",
            "embedding_bwd_f32",
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
            "bias_gelu_fwd_f32",
            "bias_gelu_fwd_bf16",
            "bias_gelu_bwd_f32",
            "bias_gelu_bwd_bf16",
        ],
    ),
    (
        "layer_norm",
        &[
            "layer_norm_fwd_f32",
            "layer_norm_fwd_bf16",
            "layer_norm_bwd_rows_f32",
            "layer_norm_bwd_rows_bf16",
            "layer_norm_bwd_params_f32",
            "layer_norm_bwd_params_bf16",
            "layer_norm_bwd_sum_f32",
            "layer_norm_bwd_sum_bf16",
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
        // Every routed file has kernels, and every op's routing names a routed file; each routed
        // file is routed by some op.
        let files: Vec<&str> = CUDA_KERNELS.iter().map(|(f, _)| *f).collect();
        let mut asked = Vec::new();
        for entry in std::fs::read_dir(root.join("src/ops")).unwrap() {
            let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for rest in source.split("supports_cuda(\"").skip(1) {
                asked.push(rest.split('"').next().unwrap().to_string());
            }
        }
        for file in super::CUDA_ROUTED {
            assert!(files.contains(file), "{file} is routed but has no kernels");
            assert!(asked.iter().any(|a| a == file), "no op routes to {file}");
        }
        for a in &asked {
            assert!(
                super::CUDA_ROUTED.contains(&a.as_str()),
                "an op asks supports_cuda({a:?}), which CUDA_ROUTED does not list"
            );
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
