//! Crash and I/O-error sweeps of `trainer train` and `trainer export` through the fault hooks of
//! `shared::faults`: a SIGKILL, and ENOSPC/EIO, at every durable step of a run (config, metrics
//! appends, checkpoint files and renames, plots), each followed by the command a user would run
//! next (`--resume` when a checkpoint exists, else the same command); the run must end with the
//! uninterrupted run's loss curve and final weights.

mod common;

use shared::fixtures::{files_of, sample_shards};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use training::metrics_log::{read, Record};

fn trainer(args: &[&std::ffi::OsStr], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn train_args(shards: &Path, out: &Path, resume: bool) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = common::tiny_flags()
        .into_iter()
        .chain(["--eval-every", "3", "--steps", "6", "--save-every", "1"].map(String::from))
        .map(Into::into)
        .collect();
    v.extend(["--shards".into(), shards.into(), "--out".into(), out.into()]);
    if resume {
        v.push("--resume".into());
    }
    v
}

fn losses(run: &Path) -> Vec<(u64, u64)> {
    read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Train { step, loss, .. } => Some((step, loss.to_bits())),
            _ => None,
        })
        .collect()
}

fn final_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/step-0000006/model.safetensors")).unwrap()
}

fn has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        })
        .unwrap_or(false)
}

/// Runs `train` in `run` with `env`, then what a user would run next until it succeeds.
fn finish_after(shards: &Path, run: &Path, env: &[(&str, String)]) -> (Output, Output) {
    let os = |v: &[std::ffi::OsString]| -> Vec<std::ffi::OsString> { v.to_vec() };
    let first = os(&train_args(shards, run, false));
    let refs: Vec<&std::ffi::OsStr> = first.iter().map(|a| a.as_os_str()).collect();
    let faulted = trainer(&refs, env);
    let next = train_args(shards, run, has_checkpoint(run));
    let refs: Vec<&std::ffi::OsStr> = next.iter().map(|a| a.as_os_str()).collect();
    (faulted, trainer(&refs, &[]))
}

#[test]
fn training_survives_a_kill_or_an_io_error_at_every_durable_step() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    let log = root.path().join("steps.log");
    let args = train_args(&shards, &reference, false);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = trainer(&refs, &[("MASKRATE_FAULT_LOG", log.display().to_string())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let checkpoint_steps = steps.iter().filter(|s| s.contains("checkpoints")).count();
    assert!(checkpoint_steps >= 20, "{steps:#?}");
    let (want_losses, want_weights) = (losses(&reference), final_weights(&reference));
    for k in 1..=steps.len() {
        let what = &steps[k - 1];
        let run = root.path().join(format!("kill-{k}"));
        let (killed, next) = finish_after(&shards, &run, &[("MASKRATE_KILL_AT", k.to_string())]);
        assert_eq!(
            killed.status.signal(),
            Some(libc::SIGKILL),
            "step {k} ({what})"
        );
        assert!(
            next.status.success(),
            "after a kill at step {k} ({what}): {}",
            String::from_utf8_lossy(&next.stderr)
        );
        assert_eq!(
            losses(&run),
            want_losses,
            "loss curve after a kill at step {k} ({what})"
        );
        assert!(
            final_weights(&run) == want_weights,
            "weights after a kill at step {k} ({what})"
        );

        let (errno, text) = if k % 3 == 0 {
            ("EIO", "Input/output error")
        } else {
            ("ENOSPC", "No space left on device")
        };
        let run = root.path().join(format!("fail-{k}"));
        let (failed, next) = finish_after(
            &shards,
            &run,
            &[
                ("MASKRATE_FAIL_AT", k.to_string()),
                ("MASKRATE_FAIL_ERRNO", errno.to_string()),
            ],
        );
        let err = String::from_utf8_lossy(&failed.stderr);
        let file = Path::new(what.split(' ').nth(2).unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            !failed.status.success() && err.contains(text) && err.contains(&file),
            "{errno} at step {k} ({what}): {err}"
        );
        assert!(
            next.status.success(),
            "after {errno} at step {k} ({what}): {}",
            String::from_utf8_lossy(&next.stderr)
        );
        assert_eq!(losses(&run), want_losses, "{errno} at step {k} ({what})");
        assert!(
            final_weights(&run) == want_weights,
            "{errno} at step {k} ({what})"
        );
    }
    eprintln!(
        "train: {} kill points ({checkpoint_steps} in checkpoint writing) and {} I/O-error points survived",
        steps.len(),
        steps.len()
    );
}

#[test]
fn export_survives_a_kill_or_an_io_error_at_every_durable_step() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    let args = train_args(&shards, &run, false);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    assert!(trainer(&refs, &[]).status.success());
    let export = |out: &Path, env: &[(&str, String)]| {
        trainer(
            &[
                "export".as_ref(),
                run.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
            env,
        )
    };
    let reference = root.path().join("reference");
    let log = root.path().join("steps.log");
    assert!(export(
        &reference,
        &[("MASKRATE_FAULT_LOG", log.display().to_string())]
    )
    .status
    .success());
    let want = files_of(&reference);
    let steps = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(steps >= 6, "{steps}");
    for k in 1..=steps {
        for (var, value) in [
            ("MASKRATE_KILL_AT", k.to_string()),
            ("MASKRATE_FAIL_AT", k.to_string()),
        ] {
            let out = root.path().join(format!("{var}-{k}"));
            let faulted = export(&out, &[(var, value)]);
            assert!(!faulted.status.success(), "{var}={k}");
            assert!(
                export(&out, &[]).status.success(),
                "re-export after {var}={k}"
            );
            assert!(files_of(&out) == want, "{var}={k}: exported files differ");
        }
    }
    eprintln!("export: {steps} kill points and {steps} I/O-error points survived");
}
