//! The transfer ledger (`model::transfer`, reported per step by `--profile`): with the composed
//! ops (`--kernels composed`, the path a GPU runs), a steady training step uploads exactly its
//! batch (ids, padding, masked positions and labels; positions and documents under pack-docs)
//! and reads nothing back; only the steps that log, evaluate or checkpoint read. BERT and
//! ModernBERT, truncate and pack-docs, two micro-batches per step, and (with `--features mpi`)
//! two ranks of an MPI job. Dropout is on, so a mask drawn on the host and uploaded would show.
//! A second test: `--log-every 10` and `--log-every 1` give the same metrics and weights, and a
//! NaN loss at step 7 stops the run naming step 7.

mod common;

use shared::fixtures::sample_shards;
use std::path::Path;
use std::process::Command;
use training::metrics_log::{read, Record};
use training::profile::ProfileRow;

/// The data flags of a run of `steps` steps: `common::tiny_flags`' 8 rows of 32 tokens (and its
/// held-out share), laid out by `layout`; what `inspect-batch` takes.
fn data_flags(shards: &Path, layout: &str, steps: u64) -> Vec<String> {
    let mut v = common::tiny_data_flags();
    v.extend([
        "--layout".into(),
        layout.into(),
        "--steps".into(),
        steps.to_string(),
    ]);
    v.extend(["--shards".into(), shards.display().to_string()]);
    v
}

/// Flags of a training run: the tests' tiny model (2 layers) with dropout, micro-batches of 4,
/// evaluated and saved at the end, on `data_flags`' data (the same rows and lengths).
fn flags(shards: &Path, arch: &str, layout: &str, steps: u64) -> Vec<String> {
    let mut v = common::tiny_flags();
    v.extend(
        [
            "--arch",
            arch,
            "--layout",
            layout,
            "--dropout",
            "0.1",
            "--micro-batch",
            "4",
        ]
        .map(String::from),
    );
    v.extend(["--eval-every", "0", "--save-every", "10"].map(String::from));
    v.extend(["--steps".into(), steps.to_string()]);
    v.extend(["--shards".into(), shards.display().to_string()]);
    v
}

/// (uploads, bytes) step `step`'s batch should cost `rank` of `world` ranks: per micro-batch of
/// 4 rows, four tensors (six under pack-docs); 4-byte ids and f32 padding for every token, 4-byte
/// positions and labels for every masked one, and per-token positions and documents under
/// pack-docs. The masked tokens are counted in `inspect-batch --json`'s labels.
fn expected_uploads(data: &[String], step: u64, rank: usize, world: usize) -> (u64, u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("inspect-batch")
        .args(data)
        .args(["--json", "--step", &step.to_string()])
        .args([
            "--rank",
            &rank.to_string(),
            "--world-size",
            &world.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels = batch["labels"].as_array().unwrap();
    let rows = labels.len() as u64;
    let len = labels[0].as_array().unwrap().len() as u64;
    let masked = labels
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .filter(|v| v.as_i64() != Some(-100))
        .count() as u64;
    let packed = data.windows(2).any(|w| w == ["--layout", "pack-docs"]);
    let (tensors, per_token) = if packed { (6, 4) } else { (4, 2) };
    (
        rows.div_ceil(4) * tensors,
        4 * per_token * rows * len + 8 * masked,
    )
}

fn profile(run: &Path) -> Vec<ProfileRow> {
    std::fs::read_to_string(run.join("profile.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every steady step after the first moved exactly its batch up and nothing back; the steps that
/// read are the logging (every 5th) and final ones.
fn assert_batch_only(run: &Path, data: &[String], rank: usize, world: usize) {
    let rows = profile(run);
    assert_eq!(rows.len(), 10, "{rows:?}");
    for r in &rows[1..] {
        let label = format!("{} step {}", run.display(), r.step);
        if r.steady() {
            let (uploads, bytes) = expected_uploads(data, r.step, rank, world);
            assert_eq!(
                (r.transfers.uploads, r.transfers.upload_bytes),
                (uploads, bytes),
                "{label}"
            );
            assert_eq!(r.transfers.reads, 0, "{label}");
        } else {
            assert!(r.read_back, "{label}: {r:?}");
            assert!(r.transfers.reads >= 1, "{label}: {r:?}");
        }
        assert_eq!(r.read_back, (r.step + 1) % 5 == 0, "{label}");
    }
}

#[test]
fn a_steady_step_uploads_its_batch_and_reads_nothing() {
    let (_keep, shards) = sample_shards();
    for arch in ["bert", "modernbert"] {
        for layout in ["truncate", "pack-docs"] {
            let dir = tempfile::tempdir().unwrap();
            let mut args = flags(&shards, arch, layout, 10);
            args.extend(
                ["--kernels", "composed", "--profile", "--log-every", "5"].map(String::from),
            );
            args.extend(["--out".into(), dir.path().display().to_string()]);
            let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
                .args(&args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{arch} {layout}: {err}");
            assert_batch_only(dir.path(), &data_flags(&shards, layout, 10), 0, 1);
        }
    }
}

#[cfg(feature = "mpi")]
#[test]
fn each_rank_of_an_mpi_job_uploads_only_its_share() {
    let (_keep, shards) = sample_shards();
    for arch in ["bert", "modernbert"] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = flags(&shards, arch, "pack-docs", 10);
        args.extend(["--kernels", "composed", "--profile", "--log-every", "5"].map(String::from));
        args.extend(["--out".into(), dir.path().display().to_string()]);
        let out = Command::new("mpirun")
            .args(["--oversubscribe", "-np", "2"])
            .arg(env!("CARGO_BIN_EXE_trainer"))
            .args(&args)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .expect("mpirun (OpenMPI: apt install openmpi-bin libopenmpi-dev)");
        assert!(
            out.status.success(),
            "{arch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Rank 0 writes the profile: its half of each global batch.
        assert_batch_only(dir.path(), &data_flags(&shards, "pack-docs", 10), 0, 2);
    }
}

/// The metrics without their timings, and the final weights' checksum.
fn outcome(run: &Path) -> (Vec<String>, Vec<u8>) {
    let records = read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Record::Train {
                step,
                lr,
                mask_rate,
                loss,
                accuracy,
                grad_norm,
                ..
            } => {
                format!("{step} {lr} {mask_rate} {loss} {accuracy} {grad_norm}")
            }
            eval => format!("{eval:?}"),
        })
        .collect();
    let ckpt = training::checkpoint::list(run).unwrap().pop().unwrap().1;
    (
        records,
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
    )
}

#[test]
fn reading_every_tenth_step_changes_nothing_and_a_nan_is_caught_at_its_step() {
    let (_keep, shards) = sample_shards();
    let run = |log_every: &str, env: Option<(&str, &str)>| {
        let dir = tempfile::tempdir().unwrap();
        let mut args = flags(&shards, "bert", "truncate", 12);
        args.extend(["--log-every".into(), log_every.to_string()]);
        args.extend(["--out".into(), dir.path().display().to_string()]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
        cmd.args(&args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        (dir, cmd.output().unwrap())
    };
    let (every1, out1) = run("1", None);
    let (every10, out10) = run("10", None);
    assert!(out1.status.success() && out10.status.success());
    let (a, b) = (outcome(every1.path()), outcome(every10.path()));
    assert_eq!(a.0.len(), 13, "12 steps and one evaluation: {:?}", a.0);
    assert_eq!(a, b);
    // A NaN at step 7 surfaces at the read after step 9, naming step 7: the steps before it are
    // logged, and no checkpoint (the first is due at step 10) holds the diverged weights.
    let (nan, out) = run("10", Some(("MASKRATE_NAN_AT_STEP", "7")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loss is NaN at step 7; stopping"), "{err}");
    let logged: Vec<u64> = read(&nan.path().join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step())
        .collect();
    assert_eq!(logged, (0..7).collect::<Vec<_>>());
    assert!(training::checkpoint::list(nan.path()).unwrap().is_empty());
}

/// `--profile` reads the preloaded launch counter (`scripts/launch-counter.c`, what the GPU
/// bundle preloads) at each step's boundaries: with it, every row has a count (0 on a CPU, where
/// nothing launches); without it, none.
#[test]
fn the_profile_reads_a_preloaded_launch_counter() {
    let (_keep, shards) = sample_shards();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("liblaunchcount.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/launch-counter.c");
    let cc = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    for preload in [true, false] {
        let run = dir.path().join(format!("run-{preload}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
        cmd.args(flags(&shards, "bert", "truncate", 3))
            .args(["--profile", "--out"])
            .arg(&run);
        if preload {
            cmd.env("LD_PRELOAD", &lib);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let launches: Vec<Option<u64>> = profile(&run).iter().map(|r| r.launches).collect();
        let want = if preload { Some(0) } else { None };
        assert_eq!(launches, vec![want; 3]);
    }
}

/// The step's own files (the loop, the step, the MLM task, both models, their layers) move
/// nothing between host and device except through `model::transfer`: no tensor built from host
/// data and no tensor read back outside their tests. (The ops' CPU kernels read their CPU inputs,
/// which crosses no bus; the dynamic test above covers what they are called with.)
#[test]
fn the_step_path_crosses_only_through_the_ledger() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = [
        "training/src/step.rs",
        "training/src/pretrain/run.rs",
        "model/src/mlm.rs",
        "model/src/bert.rs",
        "model/src/modernbert.rs",
        "model/src/layers.rs",
        "model/src/encoder.rs",
    ];
    let crossings = [
        "to_scalar",
        "to_vec1",
        "to_vec2",
        "to_vec3",
        "from_vec",
        "from_slice",
        "Tensor::new(",
    ];
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for c in crossings {
            assert!(
                !code.contains(c),
                "{file} calls {c} outside model::transfer"
            );
        }
    }
}
