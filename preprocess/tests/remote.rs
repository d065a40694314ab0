//! `preprocess` reading from and writing to a bucket on a real S3 server (s3s-fs on 127.0.0.1):
//! bucket to bucket equals local to local byte for byte, a server killed mid-run leaves no
//! visible shard set and the rerun finishes identically, partitions work on buckets.

use s3_test_server::S3Server;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/c4-sample")
}

/// A server with bucket `data` holding the C4 sample under `c4/`.
fn server_with_sample(root: &Path) -> S3Server {
    let server = S3Server::start(root).unwrap();
    server.create_bucket("data").unwrap();
    let dest = server.bucket_dir("data").join("c4");
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(sample()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
    server
}

fn preprocess(server: &S3Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args(args)
        .args(["--quiet", "--shard-size", "40KiB", "--threads", "2"])
        .envs(server.env())
        .env("MASKRATE_STORE_RETRIES", "1")
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The shard files and tokenizer of a directory, by name.
fn shard_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    shared::fixtures::files_of(dir)
        .into_iter()
        .filter(|(n, _)| n.starts_with("shard-") || n == "tokenizer.json")
        .collect()
}

/// The manifest without what names the inputs' location (paths, and the fingerprint over them).
fn manifest_without_locations(dir: &Path) -> serde_json::Value {
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for input in m["inputs"].as_array_mut().unwrap() {
        let name = input["path"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        input["path"] = name.into();
    }
    m["options"]["run_fingerprint"] = serde_json::Value::Null;
    m
}

#[test]
fn bucket_to_bucket_equals_local_to_local_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let server = server_with_sample(root.path());
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let work = tmp.path().join("work");
    ok(preprocess(
        &server,
        &[
            &sample().display().to_string(),
            "--out",
            &local.display().to_string(),
        ],
    ));
    let out = ok(preprocess(
        &server,
        &[
            "s3://data/c4/",
            "--out",
            "s3://data/shards",
            "--work-dir",
            &work.display().to_string(),
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://data/shards complete"), "{err}");
    let remote = server.bucket_dir("data").join("shards");
    let files = shard_files(&local);
    assert!(files.len() > 6, "several shards: {}", files.len());
    assert_eq!(files, shard_files(&remote));
    assert_eq!(
        manifest_without_locations(&local),
        manifest_without_locations(&remote)
    );
    // Each shard was deleted from the staging directory once uploaded.
    assert!(!std::fs::read_dir(&work)
        .unwrap()
        .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".bin") }));
    // The uploaded set trains like the local one: inspect reads it from the bucket.
    let inspect = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args(["inspect", "s3://data/shards", "--doc", "3", "--verify"])
        .envs(server.env())
        .env("MASKRATE_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    let local_inspect = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args([
            "inspect",
            &local.display().to_string(),
            "--doc",
            "3",
            "--verify",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ok(inspect).stdout).into_owned();
    let local_text = String::from_utf8_lossy(&ok(local_inspect).stdout).into_owned();
    // Equal but for the location and the options' fingerprint over the input paths.
    let comparable = |t: &str, dir: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("options"))
            .map(|l| l.replace(dir, "DIR"))
            .collect()
    };
    assert_eq!(
        comparable(&text, "s3://data/shards"),
        comparable(&local_text, &local.display().to_string())
    );

    // Partitions read buckets too, parquet included (fetched whole: its footer needs random
    // access): each partition of a prefix holding both samples equals the same partition of a
    // local directory holding them.
    let both = tmp.path().join("both");
    std::fs::create_dir_all(&both).unwrap();
    let bucket_both = server.bucket_dir("data").join("both");
    std::fs::create_dir_all(&bucket_both).unwrap();
    for f in [
        sample().join("c4-train.00000-of-01024.json.gz"),
        sample().join("../parquet-sample/c4-sample-50.parquet"),
    ] {
        let name = f.file_name().unwrap().to_owned();
        std::fs::copy(&f, both.join(&name)).unwrap();
        std::fs::copy(&f, bucket_both.join(&name)).unwrap();
    }
    for part in ["0/2", "1/2"] {
        let (here, there) = (
            tmp.path().join(format!("l{}", &part[..1])),
            tmp.path().join(format!("r{}", &part[..1])),
        );
        ok(preprocess(
            &server,
            &[
                &both.display().to_string(),
                "--partition",
                part,
                "--out",
                &here.display().to_string(),
            ],
        ));
        ok(preprocess(
            &server,
            &[
                "s3://data/both",
                "--partition",
                part,
                "--out",
                &there.display().to_string(),
            ],
        ));
        assert_eq!(shard_files(&here), shard_files(&there), "partition {part}");
        assert_eq!(
            manifest_without_locations(&here),
            manifest_without_locations(&there)
        );
    }
}

#[test]
fn a_server_killed_mid_run_leaves_no_visible_set_and_the_rerun_is_identical() {
    let root = tempfile::tempdir().unwrap();
    let server = server_with_sample(root.path());
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    ok(preprocess(
        &server,
        &[
            &sample().display().to_string(),
            "--out",
            &local.display().to_string(),
        ],
    ));
    let work = tmp.path().join("work").display().to_string();
    let args = [
        "s3://data/c4",
        "--out",
        "s3://data/shards",
        "--work-dir",
        &work,
    ];

    let remote = server.bucket_dir("data").join("shards");
    let spawn = |server: &S3Server| {
        Command::new(env!("CARGO_BIN_EXE_preprocess"))
            .args(args)
            .args(["--quiet", "--shard-size", "40KiB", "--threads", "1"])
            .envs(server.env())
            .env("MASKRATE_STORE_RETRIES", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    // 500s in the middle: armed once a shard is in the bucket, so the run has started uploading;
    // it fails naming the URL and the bucket holds no manifest.
    let child = spawn(&server);
    let first = wait_for_uploaded_shards(&remote, 1);
    server.fail_next(1_000);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run survived the 500s");
    assert!(err.contains("s3://data/"), "names the URL: {err}");
    assert!(!remote.join("manifest.json").exists());
    server.fail_next(0);

    // Killed while uploading: resumed, then the server stops once more shards are in the bucket.
    let child = spawn(&server);
    wait_for_uploaded_shards(&remote, first + 2);
    let port = server.port();
    server.stop();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run finished before the server stopped"
    );
    assert!(err.contains("s3://data/shards"), "names the URL: {err}");
    assert!(
        !remote.join("manifest.json").exists(),
        "a half-written set is visible"
    );

    // The server is back: the same command resumes from its journal and ends identical.
    let server = S3Server::start_on(root.path(), port).unwrap();
    ok(preprocess(&server, &args));
    assert_eq!(shard_files(&local), shard_files(&remote));
    assert_eq!(
        manifest_without_locations(&local),
        manifest_without_locations(&remote)
    );
}

/// Waits until the bucket directory holds at least `n` shard indexes (uploads in progress);
/// returns how many it holds.
fn wait_for_uploaded_shards(remote: &Path, n: usize) -> usize {
    let start = std::time::Instant::now();
    loop {
        let count = std::fs::read_dir(remote)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".idx"))
                    .count()
            })
            .unwrap_or(0);
        if count >= n {
            return count;
        }
        assert!(
            start.elapsed().as_secs() < 120,
            "{count} shard(s) uploaded, waiting for {n}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Files in a staging directory other than its lock file.
fn staged_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".maskrate.lock")
        .collect();
    names.sort();
    names
}

#[test]
fn two_outputs_staged_one_after_the_other_through_one_work_dir_both_equal_local() {
    let root = tempfile::tempdir().unwrap();
    let server = server_with_sample(root.path());
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    ok(preprocess(
        &server,
        &[
            &sample().display().to_string(),
            "--out",
            &local.display().to_string(),
        ],
    ));
    let work = tmp.path().join("scratch").display().to_string();
    for name in ["first", "second"] {
        let url = format!("s3://data/{name}");
        ok(preprocess(
            &server,
            &["s3://data/c4", "--out", &url, "--work-dir", &work],
        ));
        let remote = server.bucket_dir("data").join(name);
        assert_eq!(shard_files(&local), shard_files(&remote), "{url}");
        assert_eq!(
            manifest_without_locations(&local),
            manifest_without_locations(&remote)
        );
        // A finished run leaves the staging directory empty.
        assert!(
            staged_files(Path::new(&work)).is_empty(),
            "{:?}",
            staged_files(Path::new(&work))
        );
    }
    // The same command again: already complete (the bucket says so), nothing staged.
    let out = ok(preprocess(
        &server,
        &[
            "s3://data/c4",
            "--out",
            "s3://data/second",
            "--work-dir",
            &work,
        ],
    ));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already complete"));
}

#[test]
fn another_outputs_unfinished_run_in_the_work_dir_is_refused_naming_both() {
    let root = tempfile::tempdir().unwrap();
    let server = server_with_sample(root.path());
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    ok(preprocess(
        &server,
        &[
            &sample().display().to_string(),
            "--out",
            &local.display().to_string(),
        ],
    ));
    let work = tmp.path().join("scratch");
    let work_s = work.display().to_string();
    let a_args = [
        "s3://data/c4",
        "--out",
        "s3://data/a",
        "--work-dir",
        &work_s,
    ];

    // Output A, killed once it has uploaded a shard: its unfinished state stays in the work dir.
    let mut child = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args(a_args)
        .args(["--quiet", "--shard-size", "40KiB", "--threads", "1"])
        .envs(server.env())
        .spawn()
        .unwrap();
    let remote_a = server.bucket_dir("data").join("a");
    wait_for_uploaded_shards(&remote_a, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!remote_a.join("manifest.json").exists());
    let staged = staged_files(&work);
    let contents = |names: &[String]| -> Vec<Vec<u8>> {
        names
            .iter()
            .map(|n| std::fs::read(work.join(n)).unwrap())
            .collect()
    };
    let before = contents(&staged);

    // Output B through the same work dir: refused, naming both outputs, touching neither.
    let out = preprocess(
        &server,
        &[
            "s3://data/c4",
            "--out",
            "s3://data/b",
            "--work-dir",
            &work_s,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "B ran over A's state");
    assert!(
        err.contains("s3://data/a") && err.contains("s3://data/b"),
        "{err}"
    );
    assert_eq!(staged_files(&work), staged);
    assert_eq!(contents(&staged), before, "the work dir changed");
    assert!(
        !server.bucket_dir("data").join("b").exists(),
        "B wrote to its bucket prefix"
    );

    // A resumed: finishes identical to the local run, and leaves the work dir empty.
    ok(preprocess(&server, &a_args));
    assert_eq!(shard_files(&local), shard_files(&remote_a));
    assert_eq!(
        manifest_without_locations(&local),
        manifest_without_locations(&remote_a)
    );
    assert!(staged_files(&work).is_empty());
}
