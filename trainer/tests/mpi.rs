//! Data-parallel training under a real MPI launcher (`mpirun`, OpenMPI): the same run at any world
//! size, only rank 0 writes, resumes across world sizes, and a dead rank ends the job. Built with
//! `--features mpi` (see the README's test command).

mod common;

use shared::fixtures::sample_shards;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny model on the bundled sample, `steps` steps of a 16-sequence global batch.
fn flags(shards: &Path, out: &Path, steps: u64, micro: usize) -> Vec<String> {
    let mut v: Vec<String> = [
        "--model",
        "tiny",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--intermediate",
        "64",
        "--layers",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "16",
        "--eval-sequences",
        "32",
        "--eval-batch",
        "16",
        "--eval-every",
        "4",
        "--save-every",
        "4",
        "--check-every",
        "2",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    v.extend(["--steps".into(), steps.to_string()]);
    v.extend(["--micro-batch".into(), micro.to_string()]);
    v.extend(["--shards".into(), shards.display().to_string()]);
    v.extend(["--out".into(), out.display().to_string()]);
    v
}

/// One process, as without a launcher.
fn single(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `mpirun -np N trainer ARGS` (oversubscribed: the CI machine has 2 cores).
fn mpirun(np: usize, args: &[String]) -> Child {
    Command::new("mpirun")
        .args(["--oversubscribe", "-np", &np.to_string()])
        .arg(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        // OpenMPI refuses to start as root without these (CI containers run as root).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (OpenMPI: apt install openmpi-bin libopenmpi-dev)")
}

/// Waits at most `limit` for `child`; returns (success, stderr).
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.success(), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_ok(child: Child) -> String {
    let (ok, err) = finish(child, Duration::from_secs(300));
    assert!(ok, "failed: {err}");
    err
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The ranks of the job `mpirun` started (its child processes).
fn rank_pids(mpirun: &Child) -> Vec<i32> {
    let o = Command::new("pgrep")
        .args(["-P", &mpirun.id().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills a job left running by a failed assertion.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
        }
    }
}

fn wait_for_first_step(run: &Path) {
    let start = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|m| m.lines().count())
        .unwrap_or(0)
        < 1
    {
        assert!(start.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 2 ranks × 1 micro-batch = 1 process × 2 micro-batches: a sum of two gradients is exact in
/// either order, so every number is identical; the files are the same, written once.
#[test]
fn two_ranks_train_exactly_like_one_process_and_only_rank_0_writes() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    run_ok(single(&flags(&shards, &one, 8, 8)));
    let err = run_ok(mpirun(2, &flags(&shards, &two, 8, 8)));
    assert!(
        err.contains("rank 0/2") && err.contains("rank 1/2"),
        "{err}"
    );
    assert_eq!(common::curve(&one), common::curve(&two));
    assert_eq!(files(&one), files(&two));
    let weights =
        |run: &Path| std::fs::read(run.join("checkpoints/step-0000008/model.safetensors"));
    assert!(weights(&one).unwrap() == weights(&two).unwrap());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["world_size"], 2, "{config}");
}

/// ModernBERT on packed documents (`--arch modernbert --layout pack-docs`): 2 ranks train exactly
/// like one process, and a run stopped after its checkpoint at step 4 resumes on 2 ranks with the
/// uninterrupted curve and final weights, bit for bit.
#[test]
fn modernbert_on_packed_documents_is_exact_across_ranks_and_resume() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let modern = |out: &Path| {
        let mut v = flags(&shards, out, 8, 8);
        v.extend(["--arch", "modernbert", "--layout", "pack-docs"].map(String::from));
        v
    };
    let (one, two, stopped) = (
        root.path().join("one"),
        root.path().join("two"),
        root.path().join("stopped"),
    );
    run_ok(single(&modern(&one)));
    run_ok(mpirun(2, &modern(&two)));
    assert_eq!(common::curve(&one), common::curve(&two));
    let weights =
        |run: &Path| std::fs::read(run.join("checkpoints/step-0000008/model.safetensors")).unwrap();
    assert!(weights(&one) == weights(&two));
    run_ok(single(&modern(&stopped)));
    common::keep_checkpoints_through(&stopped, 4);
    let mut resume = modern(&stopped);
    resume.push("--resume".into());
    run_ok(mpirun(2, &resume));
    assert_eq!(common::curve(&stopped), common::curve(&one));
    assert!(weights(&stopped) == weights(&one));
}

/// 4 ranks sum four gradients in MPI's order, one process in its own: equal to 1e-6.
#[test]
fn four_ranks_match_one_process_to_1e_6() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let (one, four) = (root.path().join("one"), root.path().join("four"));
    run_ok(single(&flags(&shards, &one, 8, 4)));
    run_ok(mpirun(4, &flags(&shards, &four, 8, 4)));
    let (a, b) = (common::curve(&one), common::curve(&four));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, x.1), (y.0, y.1));
        for (u, v) in [(x.2, y.2), (x.4, y.4)] {
            assert!((u - v).abs() <= 1e-6 * u.abs(), "step {}: {u} vs {v}", x.1);
        }
    }
}

/// SIGTERM to one rank stops every rank after the same step with one checkpoint; resuming it as
/// one process continues the uninterrupted curve exactly. And the reverse: a one-process run
/// interrupted by SIGINT resumes on 2 ranks.
#[test]
fn an_interrupted_run_resumes_at_another_world_size_with_the_same_curve() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let whole = root.path().join("whole");
    run_ok(single(&flags(&shards, &whole, 60, 8)));

    let run = root.path().join("two-then-one");
    let job = KillOnDrop(Some(mpirun(2, &flags(&shards, &run, 60, 8))));
    wait_for_first_step(&run);
    let pids = rank_pids(job.0.as_ref().unwrap());
    assert_eq!(pids.len(), 2, "ranks: {pids:?}");
    // SAFETY: sends a signal to a process of this test's job.
    unsafe { libc::kill(*pids.iter().max().unwrap(), libc::SIGTERM) };
    let err = run_ok(job.take());
    assert_eq!(err.matches("interrupted: saved").count(), 1, "{err}");
    let saved = training::checkpoint::list(&run).unwrap();
    assert!(saved.last().unwrap().0 < 60, "stopped early: {saved:?}");
    let mut resume = flags(&shards, &run, 60, 8);
    resume.push("--resume".into());
    run_ok(single(&resume));
    assert_eq!(common::curve(&run), common::curve(&whole));

    let run = root.path().join("one-then-two");
    let child = single(&flags(&shards, &run, 60, 8));
    wait_for_first_step(&run);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    run_ok(child);
    assert!(training::checkpoint::list(&run).unwrap().last().unwrap().0 < 60);
    let mut resume = flags(&shards, &run, 60, 8);
    resume.push("--resume".into());
    run_ok(mpirun(2, &resume));
    assert_eq!(common::curve(&run), common::curve(&whole));
}

/// A rank that dies (SIGKILL) ends the whole job with a failure, in bounded time.
#[test]
fn a_killed_rank_ends_the_job_with_an_error() {
    let (_keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("killed");
    let job = KillOnDrop(Some(mpirun(2, &flags(&shards, &run, 100_000, 8))));
    wait_for_first_step(&run);
    let pids = rank_pids(job.0.as_ref().unwrap());
    assert_eq!(pids.len(), 2, "ranks: {pids:?}");
    // SAFETY: as above.
    unsafe { libc::kill(*pids.iter().max().unwrap(), libc::SIGKILL) };
    let (ok, err) = finish(job.take(), Duration::from_secs(60));
    assert!(!ok, "the job should fail: {err}");
}

/// Subcommands other than training refuse to run as several ranks (they would all write the
/// same files).
#[test]
fn other_subcommands_refuse_several_ranks() {
    let args: Vec<String> = ["inspect-batch", "--shards", "/nonexistent", "--step", "0"]
        .map(String::from)
        .to_vec();
    let (ok, err) = finish(mpirun(2, &args), Duration::from_secs(60));
    assert!(!ok);
    assert!(err.contains("only training runs data-parallel"), "{err}");
}
