//! `trainer eval RUN`: a finished run's held-out loss at 15% and ELBO equal what the run itself
//! logged at its last evaluation (the same checkpoint, sequences and draws); fewer draws give
//! another estimate, none gives no ELBO; a run without held-out sequences is refused.

mod common;

use shared::fixtures::sample_shards;
use std::path::Path;
use std::process::Command;
use training::metrics_log::{read, Record};

fn trainer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .unwrap()
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Trains 6 steps of the tiny model with rates per row (so the run scores an ELBO) into `out`,
/// holding out `held_out` sequences, evaluating (if any) and saving at the end, with `extra`
/// flags.
fn train(shards: &Path, out: &Path, held_out: usize, extra: &[&str]) {
    let mut args = common::tiny_flags();
    let at = args.iter().position(|a| a == "--eval-sequences").unwrap();
    args[at + 1] = held_out.to_string();
    let every = if held_out > 0 { "6" } else { "0" };
    args.extend(
        [
            "--steps",
            "6",
            "--eval-every",
            every,
            "--save-every",
            "6",
            "--rate-dist",
            "uniform:0.1:0.9",
            "--shards",
            &shards.display().to_string(),
            "--out",
            &out.display().to_string(),
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&trainer(&refs));
}

/// (loss, accuracy, ELBO) of `trainer eval`'s JSON.
fn scores(json: &Path) -> (f64, f64, Option<f64>) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    (
        v["eval"]["loss"].as_f64().unwrap(),
        v["eval"]["accuracy"].as_f64().unwrap(),
        v["eval_elbo"].as_f64(),
    )
}

#[test]
fn eval_scores_a_run_as_its_own_last_evaluation() {
    let (_keep, shards) = sample_shards();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&shards, &run, 8, &[]);
    let last_eval = last_evaluation(&run);
    assert_eq!(last_eval.0, 6);
    let logged_elbo = last_eval.3.expect("a rate distribution scores the ELBO");

    let json = dir.path().join("eval.json");
    let run_arg = run.display().to_string();
    let json_arg = json.display().to_string();
    let out = trainer(&["eval", &run_arg, "--json", &json_arg, "--device", "cpu"]);
    assert_ok(&out);
    let (loss, accuracy, elbo) = scores(&json);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs();
    assert!(
        close(loss, last_eval.1),
        "loss {loss} vs logged {}",
        last_eval.1
    );
    assert!(close(accuracy, last_eval.2) || accuracy == last_eval.2);
    let elbo = elbo.expect("the run's draws");
    assert!(
        close(elbo, logged_elbo),
        "ELBO {elbo} vs logged {logged_elbo}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| all |"), "{table}");

    // Other draws: another estimate of the same bound; none: no ELBO.
    let out = trainer(&["eval", &run_arg, "--json", &json_arg, "--elbo-draws", "1"]);
    assert_ok(&out);
    let (one_loss, _, one_draw) = scores(&json);
    assert_eq!(
        one_loss.to_bits(),
        loss.to_bits(),
        "the loss at 15% ignores the draws"
    );
    let one_draw = one_draw.unwrap();
    assert!(
        one_draw.is_finite() && one_draw != elbo,
        "{one_draw} vs {elbo}"
    );
    let out = trainer(&["eval", &run_arg, "--json", &json_arg, "--elbo-draws", "0"]);
    assert_ok(&out);
    assert_eq!(scores(&json).2, None);
}

/// A `--precision bf16` run is scored in bf16, as it evaluated itself: the same loss; in fp32
/// (`--precision fp32`) the loss moves.
#[test]
fn eval_scores_a_bf16_run_in_bf16() {
    let (_keep, shards) = sample_shards();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&shards, &run, 8, &["--precision", "bf16"]);
    let (_, logged, _, _) = last_evaluation(&run);
    let json = dir.path().join("eval.json");
    let (run_arg, json_arg) = (run.display().to_string(), json.display().to_string());
    assert_ok(&trainer(&[
        "eval",
        &run_arg,
        "--json",
        &json_arg,
        "--elbo-draws",
        "0",
    ]));
    let (bf16_loss, _, _) = scores(&json);
    assert!(
        (bf16_loss - logged).abs() <= 1e-6 * logged,
        "{bf16_loss} vs logged {logged}"
    );
    let f32_args = [
        "eval",
        &run_arg,
        "--json",
        &json_arg,
        "--elbo-draws",
        "0",
        "--precision",
        "fp32",
    ];
    assert_ok(&trainer(&f32_args));
    let (f32_loss, _, _) = scores(&json);
    assert_ne!(
        f32_loss, bf16_loss,
        "fp32 scores differ from bf16 in the last places"
    );
    assert!((f32_loss - logged).abs() < 1e-2 * logged);
}

/// (step, loss, accuracy, ELBO) of the run's last evaluation.
fn last_evaluation(run: &Path) -> (u64, f64, f64, Option<f64>) {
    read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Eval {
                step,
                loss,
                accuracy,
                eval_elbo,
                ..
            } => Some((step, loss, accuracy, eval_elbo)),
            _ => None,
        })
        .next_back()
        .expect("an evaluation")
}

#[test]
fn a_run_without_held_out_sequences_is_refused() {
    let (_keep, shards) = sample_shards();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&shards, &run, 0, &[]);
    let out = trainer(&["eval", &run.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds out no sequences"), "{err}");
    let out = trainer(&["eval", &dir.path().join("missing").display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is ") && err.contains("a run directory?"),
        "{err}"
    );
}
