//! The trainer reading shards from a bucket on a real S3 server (s3s-fs on 127.0.0.1): the same
//! losses as from local disk, a server outage that fails with a clear error and resumes from the
//! checkpoint exactly, and one-line errors for wrong credentials and a missing bucket.

mod common;

use s3_test_server::S3Server;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use training::metrics_log::train_losses;

/// The bundled sample in 15 shards of 20 documents, on disk and in bucket `data` under `shards/`.
struct Bucket {
    _root: tempfile::TempDir,
    _local: tempfile::TempDir,
    local: PathBuf,
    server: S3Server,
}

impl Bucket {
    fn new() -> Bucket {
        let root = tempfile::tempdir().unwrap();
        let server = S3Server::start(root.path()).unwrap();
        server.create_bucket("data").unwrap();
        let local = tempfile::tempdir().unwrap();
        shared::fixtures::write_set(local.path(), &shared::fixtures::sample_docs(), 20);
        // s3s-fs serves the files under the bucket's directory as its objects.
        let dest = server.bucket_dir("data").join("shards");
        std::fs::create_dir_all(&dest).unwrap();
        for e in std::fs::read_dir(local.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
        let path = local.path().to_path_buf();
        Bucket {
            _root: root,
            _local: local,
            local: path,
            server,
        }
    }

    fn trainer(&self, args: &[String]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
        c.args(args)
            .envs(self.server.env())
            .env("MASKRATE_STORE_RETRIES", "2");
        c
    }
}

/// A 30-step run reading a few shards at a time (`--order shard-blocks:1`) through a cache of
/// `cache_bytes`, saving and evaluating every 10 steps.
fn flags(shards: &str, out: &Path, cache: &Path, cache_bytes: u64) -> Vec<String> {
    let mut v = common::tiny_flags();
    v.extend(
        [
            "--steps",
            "30",
            "--save-every",
            "10",
            "--eval-every",
            "10",
            "--order",
            "shard-blocks:1",
        ]
        .map(String::from),
    );
    v.extend(["--shards".into(), shards.to_string()]);
    v.extend(["--out".into(), out.display().to_string()]);
    v.extend(["--cache-dir".into(), cache.display().to_string()]);
    v.extend(["--cache-bytes".into(), cache_bytes.to_string()]);
    v
}

fn check(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes of a cache bound holding the indexes and 3 shards.
fn small_bound(local: &Path) -> u64 {
    let mut idx = 0;
    let mut largest = 0;
    for e in std::fs::read_dir(local).unwrap() {
        let e = e.unwrap();
        let len = e.metadata().unwrap().len();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".idx") {
            idx += len;
        } else if name.ends_with(".bin") {
            largest = largest.max(len);
        }
    }
    idx + 3 * largest
}

#[test]
fn training_from_a_bucket_matches_training_from_local_shards() {
    let b = Bucket::new();
    let tmp = tempfile::tempdir().unwrap();
    let bound = small_bound(&b.local);
    let (local_run, remote_run) = (tmp.path().join("local"), tmp.path().join("remote"));
    let cache = tmp.path().join("cache");
    check(
        b.trainer(&flags(
            &b.local.display().to_string(),
            &local_run,
            &cache,
            bound,
        ))
        .output()
        .unwrap(),
    );
    let summary = check(
        b.trainer(&flags("s3://data/shards", &remote_run, &cache, bound))
            .output()
            .unwrap(),
    );
    assert_eq!(common::curve(&local_run), common::curve(&remote_run));
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let stats = &summary["shard_cache"];
    assert!(stats["downloads"].as_u64().unwrap() >= 15, "{stats}");
    assert!(stats["peak_bytes"].as_u64().unwrap() <= bound, "{stats}");
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    // inspect-batch reads the same URL and agrees with the local shards.
    let inspect = |shards: &str| {
        check(
            b.trainer(&[
                "inspect-batch".into(),
                "--json".into(),
                "--shards".into(),
                shards.into(),
                "--step".into(),
                "17".into(),
                "--batch-size".into(),
                "8".into(),
                "--seq-len".into(),
                "32".into(),
                "--order".into(),
                "shard-blocks:2".into(),
                "--cache-dir".into(),
                cache.display().to_string(),
                "--cache-bytes".into(),
                bound.to_string(),
            ])
            .output()
            .unwrap(),
        )
    };
    // The same batch; the configs differ only in where the shards are.
    let without_location = |out: String| {
        let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["config"]["shards"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        without_location(inspect(&b.local.display().to_string())),
        without_location(inspect("s3://data/shards"))
    );
}

#[test]
fn a_server_outage_fails_clearly_and_the_run_resumes_exactly() {
    let b = Bucket::new();
    let tmp = tempfile::tempdir().unwrap();
    let bound = small_bound(&b.local);
    let cache = tmp.path().join("cache");
    let run = tmp.path().join("run");
    let args = flags("s3://data/shards", &run, &cache, bound);
    let child = b
        .trainer(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the server once the first checkpoint is written.
    let start = std::time::Instant::now();
    while training::checkpoint::list(&run)
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        assert!(start.elapsed().as_secs() < 120, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let port = b.server.port();
    let Bucket {
        _root,
        _local,
        local,
        server,
    } = b;
    server.stop();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "finished without the server: {err}");
    assert!(
        err.contains("s3://data/shards/shard-"),
        "names the URL: {err}"
    );
    let (stopped, _) = *training::checkpoint::list(&run).unwrap().last().unwrap();
    assert!(stopped < 30);

    // The server is back: --resume continues from the checkpoint; the losses equal a run that
    // never stopped.
    let server = S3Server::start_on(_root.path(), port).unwrap();
    let b = Bucket {
        _root,
        _local,
        local,
        server,
    };
    let mut resume = args.clone();
    resume.push("--resume".into());
    check(b.trainer(&resume).output().unwrap());
    let whole = tmp.path().join("whole");
    check(
        b.trainer(&flags("s3://data/shards", &whole, &cache, bound))
            .output()
            .unwrap(),
    );
    assert_eq!(
        train_losses(&run.join("metrics.jsonl")).unwrap(),
        train_losses(&whole.join("metrics.jsonl")).unwrap()
    );
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_one_line_errors_naming_the_url() {
    let b = Bucket::new();
    let tmp = tempfile::tempdir().unwrap();
    let run = |shards: &str, secret: &str| {
        let out = b
            .trainer(&flags(
                shards,
                &tmp.path().join("run"),
                &tmp.path().join("cache"),
                1 << 30,
            ))
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let denied = run("s3://data/shards", "not-the-secret");
    let err = &denied;
    assert!(
        err.contains("s3://data/shards/manifest.json: access denied (HTTP 403)"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"), "the secret leaked: {err}");
    let err = run("s3://no-such-bucket/shards", s3_test_server::SECRET_KEY);
    assert!(
        err.contains("s3://no-such-bucket/shards/manifest.json: not found (HTTP 404)"),
        "{err}"
    );
    for err in [&denied, &err] {
        let error_lines: Vec<&str> = err.lines().filter(|l| l.contains("s3://")).collect();
        assert_eq!(error_lines.len(), 1, "{err}");
    }
}
