//! Crash and I/O-error sweeps of `preprocess` and `preprocess merge` through the fault hooks of
//! `shared::faults` (environment variables read by the real binary): a SIGKILL at every durable
//! step (shard written, fsynced, renamed; journal; manifest), and ENOSPC/EIO at every step, each
//! followed by a plain re-run that must end byte-identical to an uninterrupted run.

use shared::fixtures::files_of;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(rel)
}

/// Runs `preprocess ARGS` with the fault variables `env`.
fn run(args: &[&std::ffi::OsStr], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_preprocess"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The durable steps a run makes, from `MASKRATE_FAULT_LOG`.
fn count_steps(args: &[&std::ffi::OsStr]) -> Vec<String> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let env = [("MASKRATE_FAULT_LOG", log.path().display().to_string())];
    let out = run(args, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// `make(out)` gives the command line writing into `out`. Sweeps a SIGKILL and an injected I/O
/// error over every durable step; returns (kill points, error points).
fn sweep(make: &dyn Fn(&Path) -> Vec<std::ffi::OsString>) -> (usize, usize) {
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    let args = make(&reference);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let steps = count_steps(&refs);
    let want = files_of(&reference);
    let mut errors = 0;
    for k in 1..=steps.len() {
        // SIGKILL at step k, then a plain re-run.
        let out_dir = root.path().join(format!("kill-{k}"));
        let args = make(&out_dir);
        let a: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let killed = run(&a, &[("MASKRATE_KILL_AT", k.to_string())]);
        assert_eq!(
            killed.status.signal(),
            Some(libc::SIGKILL),
            "step {k} ({}) was not reached",
            steps[k - 1]
        );
        let resumed = run(&a, &[]);
        assert!(
            resumed.status.success(),
            "re-run after a kill at step {k} ({}): {}",
            steps[k - 1],
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert!(
            files_of(&out_dir) == want,
            "kill at step {k} ({}): output differs from an uninterrupted run",
            steps[k - 1]
        );

        // A full disk (or, at every third step, an I/O error) at step k, then a plain re-run.
        let out_dir = root.path().join(format!("fail-{k}"));
        let args = make(&out_dir);
        let a: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (errno, text) = if k % 3 == 0 {
            ("EIO", "Input/output error")
        } else {
            ("ENOSPC", "No space left on device")
        };
        let failed = run(
            &a,
            &[
                ("MASKRATE_FAIL_AT", k.to_string()),
                ("MASKRATE_FAIL_ERRNO", errno.to_string()),
            ],
        );
        let err = String::from_utf8_lossy(&failed.stderr);
        let file = Path::new(steps[k - 1].split(' ').nth(2).unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            !failed.status.success()
                && err.contains(text)
                && err.contains(&out_dir.join(&file).display().to_string()),
            "{errno} at step {k} ({}): {err}",
            steps[k - 1]
        );
        assert!(!out_dir.join("manifest.json").exists() || k == steps.len());
        let resumed = run(&a, &[]);
        assert!(
            resumed.status.success(),
            "re-run after {errno} at step {k}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert!(
            files_of(&out_dir) == want,
            "{errno} at step {k} ({}): output differs",
            steps[k - 1]
        );
        errors += 1;
    }
    (steps.len(), errors)
}

#[test]
fn preprocess_survives_a_kill_or_an_io_error_at_every_durable_step() {
    let (kills, errors) = sweep(&|out: &Path| {
        vec![
            data("c4-sample").into_os_string(),
            "--out".into(),
            out.as_os_str().to_owned(),
            "--shard-size".into(),
            "60KB".into(),
            "--threads".into(),
            "2".into(),
            "--quiet".into(),
        ]
    });
    eprintln!("preprocess: {kills} kill points and {errors} I/O-error points survived");
    assert!(
        kills >= 30,
        "only {kills} durable steps; make the shards smaller"
    );
}

#[test]
fn merge_survives_a_kill_or_an_io_error_at_every_durable_step() {
    let parts = tempfile::tempdir().unwrap();
    let corpus = tempfile::tempdir().unwrap();
    let gz = std::fs::read(data("c4-sample/c4-train.00000-of-01024.json.gz")).unwrap();
    for i in 0..2 {
        std::fs::write(corpus.path().join(format!("part-{i}.json.gz")), &gz).unwrap();
    }
    let mut dirs = Vec::new();
    for p in 0..2 {
        let dir = parts.path().join(format!("p{p}"));
        let out = run(
            &[
                corpus.path().as_os_str(),
                "--out".as_ref(),
                dir.as_os_str(),
                "--partition".as_ref(),
                format!("{p}/2").as_ref(),
                "--shard-size".as_ref(),
                "100KB".as_ref(),
                "--quiet".as_ref(),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dirs.push(dir);
    }
    let (kills, errors) = sweep(&|out: &Path| {
        vec![
            "merge".into(),
            dirs[0].clone().into_os_string(),
            dirs[1].clone().into_os_string(),
            "--out".into(),
            out.as_os_str().to_owned(),
        ]
    });
    eprintln!("merge: {kills} kill points and {errors} I/O-error points survived");
    assert!(kills >= 8, "{kills}");
}
