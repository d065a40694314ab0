//! A run of phases from a config file (`[[phases]]`): resumed from a checkpoint inside phase 2 it
//! equals the uninterrupted run (losses and final weights); a changed past phase is refused, a
//! changed future one allowed and said; `trainer plan` shows the phases' shapes.

mod common;

use shared::fixtures::sample_shards;
use std::path::Path;
use std::process::Command;

/// 24 steps: 8 x 32 for 8 steps, then 8 x 64 for 8 with the phase's own masking schedule, then
/// 16 x 32 with micro-batches of 8 (two per step).
const PHASES: &str = r#"
steps = 24
micro_batch = 8
save_every = 10
keep = 0
eval_every = 0

[[phases]]
steps = 8

[[phases]]
steps = 8
seq_len = 64
schedule = "linear:0.3:0.05"

[[phases]]
batch_size = 16
"#;

fn trainer(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .unwrap()
}

fn flags(config: &Path, shards: &Path, out: &Path) -> Vec<String> {
    let mut v = common::tiny_flags();
    v.extend([
        "--config".into(),
        config.display().to_string(),
        "--shards".into(),
        shards.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    v
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_resume_inside_phase_two_continues_bit_for_bit_and_past_phases_are_fixed() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("phases.toml");
    std::fs::write(&config, PHASES).unwrap();
    let whole = root.path().join("whole");
    assert_ok(&trainer(&flags(&config, &shards, &whole)));

    // The metrics follow the plan: the phase's schedule from 0.3 at step 8 to 0.05 at step 15.
    let rates: Vec<f64> = std::fs::read_to_string(whole.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| r.get("mask_rate").and_then(|x| x.as_f64()))
        .collect();
    assert_eq!(rates.len(), 24);
    assert!((rates[8] - 0.3).abs() < 1e-12 && (rates[15] - 0.05).abs() < 1e-12);

    // The saved config keeps the phases as tables, and reads back as the same plan.
    let saved = whole.join("config.toml");
    assert!(std::fs::read_to_string(&saved)
        .unwrap()
        .contains("[[phases]]"));
    let plan = |config: &Path| {
        let out = trainer(&[
            "plan".into(),
            "--config".into(),
            config.display().to_string(),
            "--plot".into(),
            root.path().join("p").display().to_string(),
        ]);
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut args = vec!["plan".to_string()];
    args.extend(flags(&config, &shards, &whole));
    args.extend(["--plot".into(), root.path().join("p").display().to_string()]);
    let first = trainer(&args);
    assert_ok(&first);
    assert_eq!(plan(&saved), String::from_utf8_lossy(&first.stdout));

    // Stopped after the checkpoint at step 10 (inside phase 2): keep what a kill there leaves.
    let stopped = root.path().join("stopped");
    assert_ok(&trainer(&flags(&config, &shards, &stopped)));
    common::keep_checkpoints_through(&stopped, 10);

    // A changed past phase (phase 1's steps, hence every later boundary) is refused, naming it.
    let changed_past = root.path().join("past.toml");
    std::fs::write(
        &changed_past,
        PHASES.replacen("steps = 8\n", "steps = 9\n", 1),
    )
    .unwrap();
    let mut args = flags(&changed_past, &shards, &stopped);
    args.push("--resume".into());
    let out = trainer(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("phase 1 (steps 0..") && err.contains("steps: 8 -> 9"),
        "{err}"
    );

    // The same phases resume and finish with the uninterrupted run's losses and weights.
    let mut args = flags(&config, &shards, &stopped);
    args.push("--resume".into());
    let out = trainer(&args);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("from step 10"));
    // Every row: step, loss, accuracy, gradient norm.
    assert_eq!(common::curve(&stopped), common::curve(&whole));
    let weights = |run: &Path| {
        let (_, dir) = training::checkpoint::list(run).unwrap().pop().unwrap();
        std::fs::read(dir.join("model.safetensors")).unwrap()
    };
    assert!(weights(&stopped) == weights(&whole), "final weights differ");
}

#[test]
fn a_future_phase_may_change_on_resume_and_is_said() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("phases.toml");
    std::fs::write(&config, PHASES).unwrap();
    let run = root.path().join("run");
    assert_ok(&trainer(&flags(&config, &shards, &run)));
    let original = common::curve(&run);
    common::keep_checkpoints_through(&run, 10);
    // Phase 3 (from step 16) changes its batch size: allowed from step 10, and said.
    let future = root.path().join("future.toml");
    std::fs::write(
        &future,
        PHASES.replace("batch_size = 16", "batch_size = 24"),
    )
    .unwrap();
    let mut args = flags(&future, &shards, &run);
    args.push("--resume".into());
    let out = trainer(&args);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("phase 3 (steps 16..24) batch_size: 16 -> 24"),
        "{err}"
    );
    // The resumed run trained the changed phase: it is the changed recipe run from scratch
    // (which differs from the original from step 16 on).
    let fresh = root.path().join("fresh");
    assert_ok(&trainer(&flags(&future, &shards, &fresh)));
    assert_eq!(common::curve(&run), common::curve(&fresh));
    let changed = common::curve(&fresh);
    assert_eq!(original.len(), changed.len());
    assert_eq!(original[..16], changed[..16]);
    assert!(original[16..] != changed[16..]);
}

#[test]
fn plan_shows_each_phase_and_its_shapes() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("phases.toml");
    std::fs::write(&config, PHASES).unwrap();
    let prefix = root.path().join("plan");
    let mut args = vec!["plan".to_string()];
    args.extend(flags(&config, &shards, &root.path().join("unused")));
    args.extend(["--points".into(), "2".into(), "--plot".into()]);
    args.push(prefix.display().to_string());
    let out = trainer(&args);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "phase 2: steps 8..16, batch 8 x 64 tokens, schedule linear:0.3:0.05 (over the phase)"
        ),
        "{text}"
    );
    let row = |step: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(step))
            .unwrap_or_else(|| panic!("no row for step {step}:\n{text}"))
    };
    // Phase boundaries are rows; tokens so far by hand: 8 x 8 x 32 + 8 x 8 x 64 + 16 x 32.
    assert_eq!(row("8")[3..5], ["64", "8"]);
    assert_eq!(
        row("16")[3..6],
        ["32", "16", &(8 * 8 * 32 + 8 * 8 * 64 + 16 * 32).to_string()]
    );
    assert!(
        std::fs::metadata(format!("{}-tokens.png", prefix.display()))
            .unwrap()
            .len()
            > 1000
    );
}
