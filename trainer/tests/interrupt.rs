//! The `trainer` binary end to end on tiny configurations: SIGINT saves a checkpoint that resumes
//! the uninterrupted run exactly.

mod common;

use shared::fixtures::sample_shards;
use training::metrics_log::train_losses;

/// SIGINT to the real binary: it saves a checkpoint and exits cleanly; `--resume` then finishes
/// with the same losses as a run that was never interrupted.
#[test]
fn sigint_saves_and_resume_matches_an_uninterrupted_run() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let flags = |out: &std::path::Path| -> Vec<String> {
        let mut v = common::tiny_flags();
        v.extend(
            [
                "--micro-batch",
                "8",
                "--steps",
                "60",
                "--save-every",
                "1000",
                "--eval-every",
                "0",
            ]
            .map(String::from),
        );
        v.extend(["--shards".into(), shards.display().to_string()]);
        v.extend(["--out".into(), out.display().to_string()]);
        v
    };
    let run = root.path().join("interrupted");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(flags(&run))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt as soon as the first step is logged (60 steps take seconds, polling 20 ms).
    let metrics = run.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|m| m.lines().count())
        .unwrap_or(0)
        < 1
    {
        assert!(start.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // One writer per run directory: a second trainer on it is refused at once, naming the holder.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(flags(&run))
        .output()
        .unwrap();
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        second_err.contains(&format!("is in use by pid {} (trainer train", child.id())),
        "{second_err}"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "clean exit after SIGINT: {err}");
    assert!(err.contains("interrupted: saved"), "{err}");
    let (stopped_at, _) = *training::checkpoint::list(&run).unwrap().last().unwrap();
    assert!(stopped_at < 60, "stopped early at {stopped_at}");

    let mut resume = flags(&run);
    resume.push("--resume".into());
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&resume)
        .status()
        .unwrap();
    assert!(status.success());
    let whole = root.path().join("whole");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(flags(&whole))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        train_losses(&run.join("metrics.jsonl")).unwrap(),
        train_losses(&whole.join("metrics.jsonl")).unwrap()
    );
}
