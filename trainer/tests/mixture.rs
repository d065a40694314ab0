//! The trainer binary on a mixture of two sources: held-out loss per source and pooled in
//! `metrics.jsonl`, each source's epochs in `summary.json`, and `inspect-batch --json` naming each
//! row's source with the step's exact counts.

mod common;

use shared::fixtures::{sample_docs, write_set};
use std::process::Command;

#[test]
fn a_two_source_run_reports_each_source() {
    let dir = tempfile::tempdir().unwrap();
    let docs = sample_docs();
    for (name, range) in [("c4", 0..200), ("wiki", 200..300)] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        write_set(&dir.path().join(name), &docs[range], 50);
    }
    let shards = |name: &str| format!("{name}={}", dir.path().join(name).display());
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(common::tiny_flags())
        .args(["--shards", &shards("c4"), "--shards", &shards("wiki")])
        .args([
            "--mix",
            "c4=0.75,wiki=linear:0.5:0.1",
            "--steps",
            "6",
            "--eval-every",
            "3",
        ])
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2);
    for e in &evals {
        let (c4, wiki) = (&e["sources"]["c4"], &e["sources"]["wiki"]);
        assert!(c4["loss"].as_f64().unwrap() > 0.0 && wiki["loss"].as_f64().unwrap() > 0.0);
        // Both held-out sets have 8 sequences: the pooled loss lies between the two.
        let (lo, hi) = {
            let (a, b) = (c4["loss"].as_f64().unwrap(), wiki["loss"].as_f64().unwrap());
            (a.min(b), a.max(b))
        };
        let pooled = e["loss"].as_f64().unwrap();
        assert!(lo <= pooled && pooled <= hi, "{e}");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    // 6 steps x 8 rows; wiki's weight falls 0.5, 0.42, 0.34, 0.26, 0.18, 0.1 and c4 takes
    // 0.75 / (0.75 + w) of each step. By hand, largest remainder per step: c4 5 5 6 6 6 7 = 35
    // rows, wiki 3 3 2 2 2 1 = 13, of 192 and 92 training sequences (8 of each held out).
    let (c4, wiki) = (
        summary["source_epochs"]["c4"].as_f64().unwrap(),
        summary["source_epochs"]["wiki"].as_f64().unwrap(),
    );
    assert!((c4 * 192.0 - 35.0).abs() < 1e-9, "{summary}");
    assert!((wiki * 92.0 - 13.0).abs() < 1e-9, "{summary}");
    assert!(summary["final_eval_by_source"]["wiki"]["loss"].is_number());

    // inspect-batch --json: each row's source; counts of step 5 by the rounding rule.
    let json = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "inspect-batch",
            "--json",
            "--step",
            "5",
            "--steps",
            "6",
            "--batch-size",
            "8",
        ])
        .args(["--seq-len", "32", "--eval-sequences", "8"])
        .args(["--shards", &shards("c4"), "--shards", &shards("wiki")])
        .args(["--mix", "c4=0.75,wiki=linear:0.5:0.1"])
        .output()
        .unwrap();
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let sources: Vec<&str> = v["source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // Step 5 of 6: wiki's weight is 0.1, so 8 x (0.75, 0.1) / 0.85 = 7.06, 0.94 -> 7 and 1.
    assert_eq!(sources.iter().filter(|s| **s == "c4").count(), 7);
    assert_eq!(sources.iter().filter(|s| **s == "wiki").count(), 1);
}

/// `trainer plan`: the recipe from the flags alone, at hand-computed steps: stairs masking,
/// a source joining at 50% of a by-size mixture, a WSD learning rate; and its two plots.
#[test]
fn plan_shows_the_recipe_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let docs = sample_docs();
    for (name, range) in [("c4", 0..200), ("wiki", 200..300)] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        write_set(&dir.path().join(name), &docs[range], 50);
    }
    let shards = |name: &str| format!("{name}={}", dir.path().join(name).display());
    let prefix = dir.path().join("plan");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("plan")
        .args(["--shards", &shards("c4"), "--shards", &shards("wiki")])
        .args(["--mix-by-size", "0.5", "--join", "wiki@0.5"])
        .args(["--schedule", "stairs:0.3:0.15@0.6:0.05@0.9"])
        .args([
            "--lr",
            "0.001",
            "--warmup",
            "0.1",
            "--final-lr-ratio",
            "0.1",
        ])
        .args(["--lr-schedule", "wsd:0.2:linear"])
        .args([
            "--steps",
            "101",
            "--batch-size",
            "8",
            "--seq-len",
            "32",
            "--points",
            "11",
        ])
        .args(["--eval-sequences", "8"])
        .arg("--plot")
        .arg(&prefix)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |step: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(step))
            .unwrap_or_else(|| panic!("no row for step {step}:\n{text}"))
    };
    // Steps 0, 10, ..., 100. Rate: 0.3 before ceil(60.6) = 61, 0.15 before ceil(90.9) = 91.
    // LR: warm-up round(10.1) = 10 steps, held, decay over the last round(20.2) = 20 steps
    // (from step 81): at 90, 0.001 x (0.1 + 0.9 x (1 - 9/20)) = 5.95e-4.
    // wiki (joins at ceil(50.5) = 51): 0 rows before, then a share of the 8 rows.
    assert_eq!(row("50")[1..4], ["0.3000", "1.000e-3", "32"]);
    assert_eq!(row("60")[1], "0.3000");
    assert_eq!(row("70")[1], "0.1500");
    assert_eq!(row("90")[2], "5.950e-4");
    assert_eq!(row("100")[1], "0.0500");
    assert_eq!(row("50")[9], "(0)", "{text}");
    assert_ne!(row("60")[9], "(0)", "{text}");
    for suffix in ["-rate.png", "-lr.png"] {
        let png = format!("{}{suffix}", prefix.display());
        assert!(std::fs::metadata(&png).unwrap().len() > 1000, "{png}");
    }
}
