//! The trainer against corrupted or changed shards: a token id outside the vocabulary is an error
//! naming the shard (never an out-of-range embedding lookup), `--verify-shards` finds a flipped
//! byte before training, and `--resume` refuses a shard set replaced while the run was stopped.

mod common;

use shared::fixtures::{sample_docs, write_set};
use std::path::Path;
use std::process::{Command, Output};

fn train(shards: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(common::tiny_flags())
        .args(["--eval-every", "0"])
        .arg("--shards")
        .arg(shards)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Overwrites every `u16` token of shard 0 with `value` (`None`: flips the low bit of token 7).
fn corrupt(dir: &Path, value: Option<u16>) {
    let bin = dir.join("shard-00000.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    match value {
        Some(v) => bytes
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&v.to_le_bytes())),
        None => bytes[14] ^= 1,
    }
    std::fs::write(&bin, bytes).unwrap();
}

#[test]
fn an_out_of_vocabulary_id_stops_training_with_the_shards_name() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), &sample_docs()[..40], 100);
    corrupt(dir.path(), Some(65_000));
    let run = tempfile::tempdir().unwrap();
    let out = train(dir.path(), &run.path().join("run"), &["--steps", "2"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "an error, not a panic: {err}");
    assert!(
        err.contains("shard-00000.bin")
            && err.contains("token id 65000")
            && err.contains("outside the vocabulary of 30522"),
        "{err}"
    );
}

#[test]
fn verify_shards_finds_a_flipped_byte_before_training() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), &sample_docs()[..40], 100);
    let run = tempfile::tempdir().unwrap();
    let ok = train(
        dir.path(),
        &run.path().join("clean"),
        &["--steps", "1", "--verify-shards"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    corrupt(dir.path(), None);
    let out = train(
        dir.path(),
        &run.path().join("flipped"),
        &["--steps", "1", "--verify-shards"],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("--verify-shards")
            && err.contains("shard-00000.bin")
            && err.contains("manifest says"),
        "{err}"
    );
    assert!(
        !run.path().join("flipped/metrics.jsonl").exists()
            || std::fs::read_to_string(run.path().join("flipped/metrics.jsonl"))
                .unwrap()
                .lines()
                .all(|l| !l.contains("\"train\"")),
        "no step was trained"
    );
}

#[test]
fn resume_refuses_a_shard_set_replaced_while_stopped() {
    let root = tempfile::tempdir().unwrap();
    let shards = root.path().join("shards");
    let docs = sample_docs();
    let make = |docs: &[Vec<u32>]| {
        std::fs::create_dir_all(&shards).unwrap();
        write_set(&shards, docs, 100);
    };
    make(&docs[..60]);
    let run = root.path().join("run");
    let first = train(&shards, &run, &["--steps", "6", "--save-every", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // As if stopped after step 4.
    std::fs::remove_dir_all(run.join("checkpoints/step-0000006")).unwrap();
    // Same path, same tokenizer, other documents.
    std::fs::remove_dir_all(&shards).unwrap();
    make(&docs[60..120]);
    let out = train(
        &shards,
        &run,
        &["--steps", "6", "--save-every", "2", "--resume"],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("changed since") && err.contains(&shards.display().to_string()),
        "{err}"
    );
    // The original shards resume fine.
    std::fs::remove_dir_all(&shards).unwrap();
    make(&docs[..60]);
    let again = train(
        &shards,
        &run,
        &["--steps", "6", "--save-every", "2", "--resume"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
}
