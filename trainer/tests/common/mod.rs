//! What the trainer binary's tests share.

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::path::Path;
use training::metrics_log::{read, Record};

/// Flags of a tiny, quick training run (2 layers of width 32, sequences of 32, batches of 8,
/// 8 held-out sequences, no progress output); tests add steps, saving and evaluation.
pub fn tiny_flags() -> Vec<String> {
    let mut v: Vec<String> = [
        "--model",
        "tiny",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--intermediate",
        "64",
    ]
    .map(String::from)
    .to_vec();
    v.extend(tiny_data_flags());
    v.push("--quiet".into());
    v
}

/// The data part of [`tiny_flags`] (sequences of 32, batches of 8, 8 held-out sequences): what
/// `inspect-batch` takes to show the same batches.
pub fn tiny_data_flags() -> Vec<String> {
    [
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--eval-sequences",
        "8",
    ]
    .map(String::from)
    .to_vec()
}

/// (kind, step, loss, accuracy, grad norm) of every record.
pub fn curve(run: &Path) -> Vec<(bool, u64, f64, f64, f64)> {
    read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Record::Train {
                step,
                loss,
                accuracy,
                grad_norm,
                ..
            } => (true, step, loss, accuracy, grad_norm),
            Record::Eval {
                step,
                loss,
                accuracy,
                ..
            } => (false, step, loss, accuracy, 0.0),
        })
        .collect()
}

/// What a kill after the checkpoint at `step` leaves: later checkpoints removed.
pub fn keep_checkpoints_through(run: &Path, step: u64) {
    for (saved, dir) in training::checkpoint::list(run).unwrap() {
        if saved > step {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
