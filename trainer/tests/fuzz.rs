//! Fuzzing of the trainer's readers of outside bytes (see `shared::fuzz`): checkpoint
//! `state.json` and safetensors, the `--config` TOML, the experiment TOML, GLUE TSVs and BLiMP
//! JSONL.

use evaluation::tasks::{read_tsv, Task};
use shared::fixtures::sample_shards;
use shared::fuzz::{fuzz, CountingAlloc};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A real checkpoint directory (a 2-step tiny run), kept for the test's duration.
fn checkpoint() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let (keep, shards) = sample_shards();
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "--model",
            "tiny",
            "--hidden",
            "16",
            "--heads",
            "2",
            "--intermediate",
            "32",
            "--seq-len",
            "16",
            "--batch-size",
            "4",
            "--eval-sequences",
            "4",
            "--eval-every",
            "0",
            "--steps",
            "2",
            "--save-every",
            "2",
            "--quiet",
            "--shards",
        ])
        .arg(&shards)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = run.join("checkpoints/step-0000002");
    (keep, root, dir)
}

fn load_checkpoint(path: &Path) -> Result<(), String> {
    training::checkpoint::load(path.parent().unwrap())
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

#[test]
fn fuzz_checkpoint_state_and_safetensors() {
    let (_keep, _root, dir) = checkpoint();
    for name in ["state.json", "model.safetensors", "optimizer.safetensors"] {
        let seeds = vec![std::fs::read(dir.join(name)).unwrap()];
        let prepare = |case: &Path| shared::fixtures::copy_dir_except(&dir, case, name);
        fuzz(
            &format!("checkpoint-{name}"),
            name,
            &seeds,
            &prepare,
            &load_checkpoint,
        );
    }
}

#[test]
fn fuzz_config_toml() {
    let seeds = vec![
        b"steps = 100\nbatch_size = 8\nschedule = \"linear:0.3:0.15\"\nlr = 5e-4\nwhole_word = true\nshards = [\"a\", \"b\"]\n".to_vec(),
        std::fs::read(repo("experiments/small.toml")).unwrap(),
    ];
    fuzz("config-toml", "run.toml", &seeds, &|_| {}, &|path| {
        let argv = vec![
            "trainer".into(),
            "--config".into(),
            path.as_os_str().to_owned(),
        ];
        training::config_file::merge_config_file(argv)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    });
}

#[test]
fn fuzz_experiment_toml() {
    let seeds = vec![
        std::fs::read(repo("experiments/small.toml")).unwrap(),
        std::fs::read(repo("experiments/paper.toml")).unwrap(),
    ];
    fuzz("experiment-toml", "exp.toml", &seeds, &|_| {}, &|path| {
        trainer::sweep::SweepConfig::load(path)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    });
}

#[test]
fn fuzz_glue_tsv() {
    for (task, dir) in [
        (Task::CoLA, "CoLA"),
        (Task::Mrpc, "MRPC"),
        (Task::Stsb, "STS-B"),
    ] {
        let seeds: Vec<Vec<u8>> = ["train.tsv", "dev.tsv"]
            .iter()
            .filter_map(|f| std::fs::read(repo("data/glue").join(dir).join(f)).ok())
            .map(|b| {
                b.split(|&c| c == b'\n')
                    .take(40)
                    .collect::<Vec<_>>()
                    .join(&b'\n')
            })
            .collect();
        assert!(!seeds.is_empty(), "{dir}");
        for skip_bad in [false, true] {
            fuzz(
                &format!("glue-{dir}"),
                "dev.tsv",
                &seeds,
                &|_| {},
                &|path| {
                    read_tsv(task, path, false, skip_bad)
                        .map(|_| ())
                        .map_err(|e| format!("{e:#}"))
                },
            );
        }
    }
}

#[test]
fn fuzz_blimp_jsonl() {
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(repo("data/blimp"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .map(|b| {
            b.split(|&c| c == b'\n')
                .take(20)
                .collect::<Vec<_>>()
                .join(&b'\n')
        })
        .collect();
    fuzz("blimp", "phenomenon.jsonl", &seeds, &|_| {}, &|path| {
        evaluation::blimp::read_pairs(path.parent().unwrap(), None)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    });
}

/// Inputs that once failed a property (`data/fuzz/`), replayed on every run.
#[test]
fn fuzz_regressions_stay_fixed() {
    // A state.json with an invalid \u escape: the error did not name the file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo("data/fuzz/checkpoint-state-bad-unicode.json"),
        dir.path().join("state.json"),
    )
    .unwrap();
    let err = load_checkpoint(&dir.path().join("state.json")).unwrap_err();
    assert!(err.contains("state.json"), "{err}");
}
