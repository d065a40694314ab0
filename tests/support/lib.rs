//! Helpers for the end-to-end tests: locating the workspace's binaries and fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture under `data/`.
pub fn data(rel: &str) -> PathBuf {
    repo().join("data").join(rel)
}

/// Path of workspace binary `name`, built on demand when `cargo test` did not build it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-… → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", name, "--bin", name])
            .current_dir(repo())
            .status()
            .expect("runs cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
    }
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p {name}`",
        path.display()
    );
    path
}

/// Runs workspace binary `name` with `args`; panics with its output unless it succeeds.
pub fn run_ok(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs workspace binary `name` with `args`.
pub fn run(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(binary(name));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("binary runs")
}

/// The records of a run's `metrics.jsonl`, and those of kind `train` among them.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
