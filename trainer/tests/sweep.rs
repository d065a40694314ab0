//! Sweep logic on fixture run directories: naming, resume state, and the report's numbers.

use std::path::Path;
use trainer::sweep::report::{mean_curve, steps_to_reach};
use trainer::sweep::{run_name, run_state, RunState, SweepConfig};

fn experiment(dir: &Path, extra_train: &str, baseline: &str) -> std::path::PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "fixture"
out = "{out}"
report = "{out}/report/REPORT.md"
schedules = ["constant:0.15", "linear:0.3:0.15"]
baseline = "{baseline}"
seeds = [0, 1]
[data]
inputs = ["{out}/missing-corpus"]
fallback = "data/c4-sample"
[train]
steps = 30
batch_size = 8
seq_len = 16
eval_every = 10
{extra_train}
[blimp]
data = "x"
fallback = "y"
max_pairs = 5
"#,
            out = dir.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn run_names_and_config_checks() {
    assert_eq!(run_name("linear:0.3:0.15", 0), "linear-0.3-0.15-seed0");
    assert_eq!(
        run_name("cosine:0.3:0.15@0.5", 2),
        "cosine-0.3-0.15-0.5-seed2"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = SweepConfig::load(&experiment(dir.path(), "", "constant:0.15")).unwrap();
    assert_eq!(cfg.steps().unwrap(), 30);
    assert_eq!(
        cfg.run_dir("constant:0.15", 1),
        dir.path().join("runs/constant-0.15-seed1")
    );
    let (corpus, fallback) = cfg.corpus();
    assert!(fallback && corpus == vec![Path::new("data/c4-sample").to_path_buf()]);

    let err = SweepConfig::load(&experiment(dir.path(), "", "constant:0.3"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("baseline \"constant:0.3\" is not among"),
        "{err}"
    );
    let err = SweepConfig::load(&experiment(
        dir.path(),
        "schedule = \"constant:0.2\"",
        "constant:0.15",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("must not set \"schedule\""), "{err}");

    // Architecture and layout: checked when the file is read, not after preprocessing.
    let modern = SweepConfig::load(&experiment(
        dir.path(),
        "arch = \"modernbert\"\nlayout = \"pack-docs\"",
        "constant:0.15",
    ))
    .unwrap();
    assert_eq!(modern.train["arch"].as_str(), Some("modernbert"));
    let err = SweepConfig::load(&experiment(dir.path(), "arch = \"gpt\"", "constant:0.15"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exp.toml: [train] arch: unknown architecture \"gpt\""),
        "{err}"
    );
    let err = SweepConfig::load(&experiment(
        dir.path(),
        "layout = \"docs\"",
        "constant:0.15",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("[train] layout:") && err.contains("docs"),
        "{err}"
    );
}

fn checkpoint(run: &Path, step: u64) {
    let d = run.join(format!("checkpoints/step-{step:07}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("state.json"), "{}").unwrap();
}

#[test]
fn finished_partial_and_new_runs_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    assert_eq!(run_state(&run, 30).unwrap(), RunState::New);
    checkpoint(&run, 10);
    assert_eq!(run_state(&run, 30).unwrap(), RunState::Partial(10));
    // A checkpoint still being written (no state.json) does not count.
    std::fs::create_dir_all(run.join("checkpoints/step-0000030.tmp")).unwrap();
    assert_eq!(run_state(&run, 30).unwrap(), RunState::Partial(10));
    checkpoint(&run, 30);
    assert_eq!(run_state(&run, 30).unwrap(), RunState::Complete);
}

/// Writes a finished run with the given eval losses at steps 10, 20, 30, BLiMP and GLUE results.
fn fake_run(run: &Path, losses: [f64; 3], blimp: f64, glue_sst2: f64, rate: f64) {
    let mut lines = String::new();
    for step in 0..30u64 {
        lines.push_str(&format!(
            "{{\"kind\":\"train\",\"step\":{step},\"lr\":0.001,\"mask_rate\":{rate},\"loss\":5.0,\"accuracy\":0.1,\"grad_norm\":1.0,\"tokens_per_sec\":1000.0,\"data_wait_sec\":0.0}}\n"
        ));
        if (step + 1) % 10 == 0 {
            let loss = losses[(step / 10) as usize];
            lines.push_str(&format!(
                "{{\"kind\":\"eval\",\"step\":{},\"loss\":{loss},\"accuracy\":0.2}}\n",
                step + 1
            ));
        }
    }
    std::fs::create_dir_all(run).unwrap();
    std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
    checkpoint(run, 30);
    std::fs::create_dir_all(run.join("blimp")).unwrap();
    std::fs::write(
        run.join("blimp/blimp.json"),
        format!("{{\"overall\":{{\"accuracy\":{blimp}}}}}"),
    )
    .unwrap();
    std::fs::create_dir_all(run.join("glue")).unwrap();
    std::fs::write(
        run.join("glue/glue.json"),
        format!(
            "{{\"average\":{},\"tasks\":[{{\"task\":\"Sst2\",\"score\":{glue_sst2}}}]}}",
            glue_sst2 * 100.0
        ),
    )
    .unwrap();
}

#[test]
fn report_numbers_come_from_the_run_directories() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "", "constant:0.15");
    let cfg = SweepConfig::load(&exp).unwrap();
    // Baseline final losses 4.0 and 4.2 -> target 4.1. Linear reaches a mean of 4.05 at step 20.
    fake_run(
        &cfg.run_dir("constant:0.15", 0),
        [5.0, 4.5, 4.0],
        0.60,
        0.80,
        0.15,
    );
    fake_run(
        &cfg.run_dir("constant:0.15", 1),
        [5.2, 4.7, 4.2],
        0.62,
        0.82,
        0.15,
    );
    fake_run(
        &cfg.run_dir("linear:0.3:0.15", 0),
        [4.9, 4.0, 3.8],
        0.64,
        0.84,
        0.3,
    );
    fake_run(
        &cfg.run_dir("linear:0.3:0.15", 1),
        [5.1, 4.1, 3.9],
        0.66,
        0.86,
        0.3,
    );
    let text = trainer::sweep::report::write(&cfg, &exp).unwrap();
    let row = |s: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("| `{s}`")))
            .unwrap_or_else(|| panic!("no row for {s}:\n{text}"))
            .to_string()
    };
    let base = row("constant:0.15");
    // mean 4.1, sample std of (4.0, 4.2) = 0.1414
    assert!(base.contains("| 4.1000 ± 0.1414 |"), "{base}");
    assert!(base.contains("| 61.00 ± 1.41 |"), "BLiMP x100: {base}");
    assert!(base.contains("| 81.00 ± 1.41 |"), "GLUE SST-2 x100: {base}");
    assert!(base.contains("| 30 | 1.00x | 83.83 |"), "{base}");
    let lin = row("linear:0.3:0.15");
    assert!(lin.contains("| 3.8500 ± 0.0707 |"), "{lin}");
    assert!(lin.contains("| 20 | 1.50x | 84.29 | 1.89x |"), "{lin}");
    assert!(text.contains("GLUE avg +4.00 vs the paper's +0.46: same direction as the paper, larger than seed noise"), "{text}");
    assert!(
        text.contains("the bundled sample"),
        "fallback corpus is stated"
    );
    let png = std::fs::read(dir.path().join("report/sweep-eval-loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    assert!(text.contains("![sweep-mask-rate.png](sweep-mask-rate.png)"));
}

#[test]
fn curves_and_thresholds() {
    let a = vec![(10, 5.0), (20, 4.0), (30, 3.0)];
    let b = vec![(10, 6.0), (20, 4.0)];
    assert_eq!(mean_curve(&[a.clone(), b]), vec![(10, 5.5), (20, 4.0)]);
    assert_eq!(steps_to_reach(&a, 4.0), Some(20));
    assert_eq!(steps_to_reach(&a, 2.0), None);
}
