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
