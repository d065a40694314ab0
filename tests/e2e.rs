//! End to end as a user runs it: preprocess the bundled sample, then inspect batches with the trainer.

use maskrate_e2e::{data, metrics, run, run_ok};

#[test]
fn sample_shards_feed_inspect_batch_at_the_scheduled_rate() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    run_ok(
        "preprocess",
        &[&data("c4-sample"), &"--out", &shards, &"--quiet"],
    );
    let out = run_ok(
        "trainer",
        &[
            &"inspect-batch",
            &"--shards",
            &shards,
            &"--schedule",
            &"linear:0.3:0.15",
            &"--steps",
            &"101",
            &"--step",
            &"50",
            &"--batch-size",
            &"64",
            &"--rows",
            &"2",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scheduled rate 0.2250"), "{text}");
    assert!(text.contains("--- row 1:"), "{text}");
    assert!(text.contains("[M:"), "masked tokens are shown: {text}");
    // Realised rate is printed and near the schedule (64 rows x ~120 maskable tokens).
    let realised: f64 = text
        .split(" = ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((realised - 0.225).abs() < 0.03, "{realised}");

    let plot = dir.path().join("rate.png");
    let out = run_ok(
        "trainer",
        &[
            &"inspect-batch",
            &"--shards",
            &shards,
            &"--schedule",
            &"cosine:0.3:0.15",
            &"--steps",
            &"1000",
            &"--batch-size",
            &"32",
            &"--stats",
            &"--points",
            &"5",
            &"--plot",
            &plot,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("     999     0.1500"), "{text}");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // A malformed schedule is refused with the grammar.
    let bad = run(
        "trainer",
        &[
            &"inspect-batch",
            &"--shards",
            &shards,
            &"--schedule",
            &"cosine:1.5:0.1",
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("start rate 1.5 is outside (0, 1)") && err.contains("grammar"),
        "{err}"
    );
    // An unfinished shard directory is refused.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let bad = run("trainer", &[&"inspect-batch", &"--shards", &empty]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no manifest.json"));
}

#[test]
fn sample_shards_train_a_model_with_a_schedule_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    run_ok(
        "preprocess",
        &[&data("c4-sample"), &"--out", &shards, &"--quiet"],
    );
    let run_dir = dir.path().join("run");
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        "model = \"tiny\"\nhidden = 32\nheads = 2\nintermediate = 64\nseq_len = 32\nsteps = 100\n",
    )
    .unwrap();
    let out = run_ok(
        "trainer",
        &[
            &"--config",
            &config,
            &"--shards",
            &shards,
            &"--steps",
            &"8",
            &"--batch-size",
            &"16",
            &"--micro-batch",
            &"8",
            &"--schedule",
            &"linear:0.3:0.15",
            &"--eval-sequences",
            &"32",
            &"--eval-every",
            &"4",
            &"--out",
            &run_dir,
            &"--quiet",
        ],
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["steps"], 8,
        "flags override the config file's steps = 100"
    );
    let records = metrics(&run_dir);
    let train: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "train").collect();
    assert_eq!(train.len(), 8);
    assert_eq!(train[0]["mask_rate"], 0.3);
    assert!((train[7]["mask_rate"].as_f64().unwrap() - 0.15).abs() < 1e-12);
    assert!(train
        .iter()
        .all(|r| r["loss"].as_f64().unwrap().is_finite()));
    assert_eq!(records.iter().filter(|r| r["kind"] == "eval").count(), 2);
    let saved = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(
        saved.contains("hidden = 32") && saved.contains("schedule = \"linear:0.3:0.15\""),
        "{saved}"
    );
    for png in ["train-loss.png", "eval-loss.png", "mask-rate.png", "lr.png"] {
        assert_eq!(
            &std::fs::read(run_dir.join(png)).unwrap()[..4],
            b"\x89PNG",
            "{png}"
        );
    }
    let plots = dir.path().join("plots");
    run_ok("trainer", &[&"plot", &run_dir, &run_dir, &"--out", &plots]);
    assert!(plots.join("eval-loss.png").exists());
    let export = dir.path().join("hf");
    run_ok("trainer", &[&"export", &run_dir, &"--out", &export]);
    assert!(export.join("model.safetensors").exists() && export.join("config.json").exists());

    // Downstream: the GLUE suite (MNLI first, RTE starting from its model) and BLiMP on the export.
    let glue = dir.path().join("glue");
    let out = run_ok(
        "trainer",
        &[
            &"glue",
            &"--checkpoint",
            &run_dir,
            &"--data",
            &data("glue"),
            &"--tasks",
            &"RTE,MNLI",
            &"--max-train",
            &"24",
            &"--epochs",
            &"1",
            &"--predict-test",
            &"--quiet",
            &"--out",
            &glue,
        ],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| RTE | accuracy |") && table.contains("**average**"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(glue.join("glue.json")).unwrap()).unwrap();
    let tasks = report["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["task"], "Mnli", "MNLI runs first");
    assert!(tasks[1]["init_from"]
        .as_str()
        .unwrap()
        .ends_with("MNLI/model"));
    assert_eq!(tasks[1]["train_examples"], 24);
    assert_eq!(tasks[1]["dev_examples"][0], 100);
    let predictions = std::fs::read_to_string(glue.join("RTE/RTE.tsv")).unwrap();
    assert_eq!(predictions.lines().count(), 21, "header + 20 test rows");
    assert!(predictions
        .lines()
        .skip(1)
        .all(|l| l.ends_with("\tentailment") || l.ends_with("\tnot_entailment")));
    let blimp = dir.path().join("blimp");
    run_ok(
        "trainer",
        &[
            &"blimp",
            &"--checkpoint",
            &export,
            &"--data",
            &data("blimp"),
            &"--max-pairs",
            &"3",
            &"--quiet",
            &"--out",
            &blimp,
        ],
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blimp.join("blimp.json")).unwrap()).unwrap();
    assert_eq!(report["overall"]["total"], 15);
    assert_eq!(report["by_paradigm"].as_object().unwrap().len(), 5);
    let bad = run(
        "trainer",
        &[
            &"finetune",
            &"--checkpoint",
            &run_dir,
            &"--task",
            &"squad",
            &"--data",
            &glue,
        ],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown GLUE task \"squad\""));
}

/// The `[train]` flags of the sweep tests: a tiny model on 8 sequences of 32 tokens per step.
const TINY_SWEEP_TRAIN: &str = r#"model = "tiny"
hidden = 32
heads = 2
intermediate = 64
seq_len = 32
batch_size = 8
micro_batch = 8
quiet = true"#;

#[test]
fn a_tiny_sweep_trains_evaluates_skips_finished_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let exp = dir.path().join("tiny.toml");
    std::fs::write(
        &exp,
        format!(
            r#"
name = "tiny"
out = "{out}"
report = "{out}/REPORT.md"
schedules = ["constant:0.15", "linear:0.3:0.15"]
baseline = "constant:0.15"
seeds = [0]
[data]
inputs = ["{out}/no-such-corpus"]
fallback = "{sample}"
preprocess_args = ["--quiet"]
[train]
{tiny}
steps = 6
eval_every = 3
eval_sequences = 16
[blimp]
data = "{blimp}"
fallback = "{blimp}"
max_pairs = 2
[glue]
data = "{glue}"
fallback = "{glue}"
tasks = ["SST-2"]
max_train = 16
max_eval = 20
epochs = 1
"#,
            out = out.display(),
            tiny = TINY_SWEEP_TRAIN,
            sample = data("c4-sample").display(),
            blimp = data("blimp").display(),
            glue = data("glue").display(),
        ),
    )
    .unwrap();
    maskrate_e2e::binary("preprocess");
    run_ok("trainer", &[&"sweep", &exp]);
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    assert!(report.contains("| `constant:0.15` | 1 |"), "{report}");
    assert!(report.contains("| `linear:0.3:0.15` | 1 |"), "{report}");
    assert!(report.contains("SST-2"), "{report}");
    for run in ["constant-0.15-seed0", "linear-0.3-0.15-seed0"] {
        let r = out.join("runs").join(run);
        assert!(r.join("blimp/blimp.json").exists() && r.join("glue/glue.json").exists());
    }
    assert!(out.join("sweep-eval-loss.png").exists());
    // A second run finds everything done and trains nothing.
    let again = run_ok("trainer", &[&"sweep", &exp]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.matches("complete, skipped").count(), 2, "{err}");
    assert!(!err.contains("training "), "{err}");
    let plan = run_ok("trainer", &[&"sweep", &exp, &"--dry-run"]);
    assert!(String::from_utf8_lossy(&plan.stdout).contains("Complete; blimp done, glue done"));
}

/// A sweep over a mixture: each named corpus preprocessed once into its own shards, every run
/// trained on `--shards NAME=DIR` for each with `[train] mix`, the report naming the sources.
#[test]
fn a_mixture_sweep_preprocesses_each_source_and_trains_on_the_mix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let exp = dir.path().join("mix.toml");
    std::fs::write(
        &exp,
        format!(
            r#"
name = "mix"
out = "{out}"
report = "{out}/REPORT.md"
schedules = ["constant:0.15"]
baseline = "constant:0.15"
seeds = [0]
[data]
preprocess_args = ["--quiet", "--max-tokens-per-doc", "40"]
[data.sources.c4]
inputs = ["{sample}"]
fallback = "{sample}"
[data.sources.short]
inputs = ["{out}/missing"]
fallback = "{sample}"
[train]
{tiny}
steps = 4
eval_every = 2
eval_sequences = 8
mix = "c4=0.7,short=linear:0.5:0.1"
"#,
            out = out.display(),
            tiny = TINY_SWEEP_TRAIN,
            sample = data("c4-sample").display(),
        ),
    )
    .unwrap();
    maskrate_e2e::binary("preprocess");
    run_ok("trainer", &[&"sweep", &exp, &"--phase", &"preprocess"]);
    assert!(out.join("shards/c4/manifest.json").exists());
    assert!(out.join("shards/short/manifest.json").exists());
    run_ok("trainer", &[&"sweep", &exp, &"--phase", &"train"]);
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("runs/constant-0.15-seed0/summary.json")).unwrap(),
    )
    .unwrap();
    assert!(
        summary["source_epochs"]["c4"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    assert!(
        summary["source_epochs"]["short"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    run_ok("trainer", &[&"sweep", &exp, &"--phase", &"report"]);
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    assert!(
        report.contains("mixed as `c4=0.7,short=linear:0.5:0.1`"),
        "{report}"
    );
}

/// ModernBERT and pack-docs settings the model cannot serve are refused before training, each
/// with what was wrong: an unknown architecture, a head size rotary positions cannot split, a row
/// longer than the positions, a pack-docs row too short to frame a document.
#[test]
fn modernbert_settings_it_cannot_serve_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    run_ok(
        "preprocess",
        &[&data("c4-sample"), &"--out", &shards, &"--quiet"],
    );
    let cases: [(&[&str], &str); 5] = [
        (
            &["--arch", "gpt"],
            "unknown architecture \"gpt\" (expected one of: bert, modernbert)",
        ),
        (
            &["--arch", "modernbert", "--hidden", "30", "--heads", "2"],
            "head size 15 (hidden 30 / 2 heads) must be even for rotary positions",
        ),
        (
            &["--arch", "modernbert", "--seq-len", "9000"],
            "--seq-len 9000 exceeds the model's 8192 positions",
        ),
        (
            &[
                "--arch",
                "modernbert",
                "--layout",
                "pack-docs",
                "--seq-len",
                "2",
            ],
            "--seq-len 2: needs at least 3 ([CLS], one token, [SEP])",
        ),
        (
            &["--seq-len", "600"],
            "--seq-len 600 exceeds the model's 512 positions",
        ),
    ];
    for (i, (flags, want)) in cases.iter().enumerate() {
        let out_dir = dir.path().join(format!("run{i}"));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"--shards",
            &shards,
            &"--model",
            &"tiny",
            &"--steps",
            &"2",
            &"--batch-size",
            &"2",
            &"--out",
            &out_dir,
        ];
        args.extend(flags.iter().map(|f| f as &dyn AsRef<std::ffi::OsStr>));
        let out = run("trainer", &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{flags:?}: {err}"
        );
        assert!(!out_dir.join("checkpoints").exists(), "{flags:?} trained");
    }
}

/// The trainer learns exactly like transformers: with dropout off, the same start and the same
/// batches, its loss and gradient norm at every step and its held-out loss after 40 steps equal
/// `BertForMaskedLM` + `torch.optim.AdamW` (recorded by `scripts/hf_equivalence.py`, with the
/// commands in the fixture). Any change to the forward or backward pass, the loss normalisation
/// over micro-batches, clipping, AdamW, weight decay or the learning-rate schedule shows here.
/// Tolerances: 2e-5 relative on losses and gradient norms (the recording agreed to 4e-7 and 3e-7;
/// the f32 matrix kernels of other CPUs round differently; a tenfold weight decay already moves
/// the losses by 1e-4).
#[test]
fn training_matches_transformers_step_for_step() {
    assert_matches_recorded_trajectory("reference/transformers-tiny-trajectory.json");
}

/// The same for ModernBERT (`--arch modernbert`): `ModernBertForMaskedLM` + `torch.optim.AdamW`,
/// 50 steps of a 4-layer model (layers 0 and 3 global, 1 and 2 local) on rows of 160 tokens, so
/// that the local layers' 128-token window hides keys; recorded by `scripts/record_trajectory.sh`
/// (the recording agreed to 3.8e-7 on losses and 1.3e-6 on gradient norms). Rotary positions,
/// GeGLU, the windows, the bias-free norms, the tied decoder, the initialisation scheme's names and
/// the norms' exclusion from weight decay all show here.
#[test]
fn modernbert_training_matches_transformers_step_for_step() {
    assert_matches_recorded_trajectory("reference/transformers-modernbert-tiny-trajectory.json");
}

/// `--layout pack-docs` against transformers' packed inputs: `position_ids` restarting per
/// document and, as the CPU stand-in for the flash-attention varlen path (`cu_seq_lens` needs a
/// GPU), explicit block-diagonal additive masks (ModernBERT: one per layer type, the sliding one
/// also limited to the window). ModernBERT 50 steps on rows of 160 tokens (recorded agreement
/// 4.8e-7 on losses), BERT 40 steps on rows of 64 (3.4e-7).
#[test]
fn packed_documents_train_like_transformers_packed_path() {
    assert_matches_recorded_trajectory(
        "reference/transformers-modernbert-pack-docs-trajectory.json",
    );
    assert_matches_recorded_trajectory("reference/transformers-bert-pack-docs-trajectory.json");
}

/// The path a GPU runs, on the CPU (`--kernels composed`: candle's tensor ops instead of the CPU
/// kernels, AdamW over flat buffers with the clip factor applied on the device; `--kernels
/// twins`: the same with the CUDA kernels' CPU twins where a GPU runs its kernels) against the
/// same recorded transformers runs: BERT, and ModernBERT with packed documents and local windows.
#[test]
fn the_gpu_op_path_matches_transformers_step_for_step() {
    for kernels in ["composed", "twins"] {
        assert_matches_recorded_trajectory_with(
            "reference/transformers-tiny-trajectory.json",
            &["--kernels", kernels],
        );
        assert_matches_recorded_trajectory_with(
            "reference/transformers-modernbert-pack-docs-trajectory.json",
            &["--kernels", kernels],
        );
    }
}

/// Trains with the fixture's flags on the bundled C4 sample and compares every step's loss and
/// gradient norm (2e-5 relative) and the held-out loss (1e-4) with the recorded transformers run.
fn assert_matches_recorded_trajectory(fixture: &str) {
    assert_matches_recorded_trajectory_with(fixture, &[]);
}

/// [`assert_matches_recorded_trajectory`] with `extra` flags.
fn assert_matches_recorded_trajectory_with(fixture: &str, extra: &[&str]) {
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data(fixture)).unwrap()).unwrap();
    let floats = |key: &str| -> Vec<f64> {
        reference[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (losses, norms) = (
        floats("transformers_loss"),
        floats("transformers_grad_norm"),
    );
    let eval_loss = reference["transformers_eval_loss"].as_f64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (shards, run_dir) = (dir.path().join("shards"), dir.path().join("run"));
    run_ok(
        "preprocess",
        &[&data("c4-sample"), &"--out", &shards, &"--quiet"],
    );
    let mut args: Vec<std::ffi::OsString> = vec!["--shards".into(), shards.into()];
    args.extend(
        reference["trainer_flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().into()),
    );
    args.extend(extra.iter().map(Into::into));
    args.extend(["--out".into(), run_dir.clone().into(), "--quiet".into()]);
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
    run_ok("trainer", &refs);

    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    let records = metrics(&run_dir);
    let train: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "train").collect();
    assert_eq!(train.len(), losses.len());
    for (step, r) in train.iter().enumerate() {
        let (loss, norm) = (
            r["loss"].as_f64().unwrap(),
            r["grad_norm"].as_f64().unwrap(),
        );
        assert!(
            rel(loss, losses[step]) < 2e-5,
            "step {step}: loss {loss} vs transformers {}",
            losses[step]
        );
        assert!(
            rel(norm, norms[step]) < 2e-5,
            "step {step}: gradient norm {norm} vs transformers {}",
            norms[step]
        );
    }
    let eval = records.iter().find(|r| r["kind"] == "eval").unwrap()["loss"]
        .as_f64()
        .unwrap();
    assert!(
        rel(eval, eval_loss) < 1e-4,
        "held-out loss {eval} vs transformers {eval_loss}"
    );
}
