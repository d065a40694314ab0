//! With the `cuda` feature, compiles `kernels/*.cu` to PTX in `OUT_DIR` with the toolkit's `nvcc`
//! (found through `CUDA_HOME`, else `PATH`); the ops load it at run time. Without the feature,
//! nothing is built.

use std::path::PathBuf;
use std::process::Command;

/// The kernel sources, each compiled to `<name>.ptx`.
const KERNELS: &[&str] = &[
    "attention",
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "rotary",
];
/// Headers the kernels include.
const HEADERS: &[&str] = &["philox.cuh", "vmath.cuh"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{k}.cu");
    }
    for h in HEADERS {
        println!("cargo:rerun-if-changed=kernels/{h}");
    }
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin").join("nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    for k in KERNELS {
        let ptx = out.join(format!("{k}.ptx"));
        // PTX for compute capability 8.0 is compiled on load by the driver for any newer GPU
        // (A100, H100, H200); bf16 conversions need 8.0. `-fmad=false`: no multiply-add is
        // contracted beyond the kernels' explicit `fmaf`, so they do their CPU twins' arithmetic.
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-fmad=false", "-arch=compute_80", "-o"])
            .arg(&ptx)
            .arg(format!("kernels/{k}.cu"))
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e} (set CUDA_HOME)", nvcc.display()));
        assert!(status.success(), "nvcc failed on kernels/{k}.cu");
    }
}
