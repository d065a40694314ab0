//! End-to-end tests of the `preprocess` binary on the bundled fixtures.

use shared::fixtures::files_of;
use shared::shard::ShardSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(rel)
}

fn sample() -> PathBuf {
    data("c4-sample")
}

fn preprocess(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_preprocess"));
    for a in args {
        cmd.arg(a);
    }
    cmd.arg("--quiet");
    cmd.output().expect("runs preprocess")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "preprocess failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The reference ids written by scripts/make_reference_ids.py with HF `tokenizers`.
fn reference_ids() -> Vec<(u64, Vec<u32>)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(data("reference/c4-sample-ids.jsonl.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn token_ids_equal_the_tokenizers_library_document_by_document() {
    let out = tempfile::tempdir().unwrap();
    ok(preprocess(&[&sample(), &"--out", &out.path()]));
    let set = ShardSet::open(out.path()).unwrap();
    let reference = reference_ids();
    assert_eq!(set.len(), reference.len() as u64);
    for (i, (line, ids)) in reference.iter().enumerate() {
        assert_eq!(
            &set.doc(i as u64).to_vec(),
            ids,
            "document {i} (line {line})"
        );
    }
    let m = &set.manifests()[0];
    assert_eq!(
        m.totals.tokens,
        reference
            .iter()
            .map(|(_, ids)| ids.len() as u64)
            .sum::<u64>()
    );
    assert_eq!(m.inputs.len(), 1);
    assert_eq!(m.tokenizer.vocab_size, 30522);
    assert_eq!(set.verify_checksums().unwrap(), 2);
}

#[test]
fn parquet_input_gives_the_same_ids_as_json_lines() {
    let out = tempfile::tempdir().unwrap();
    ok(preprocess(&[
        &data("parquet-sample/c4-sample-50.parquet"),
        &"--out",
        &out.path(),
    ]));
    let set = ShardSet::open(out.path()).unwrap();
    let reference = reference_ids();
    assert_eq!(set.len(), 50);
    for i in 0..50 {
        assert_eq!(
            set.doc(i).to_vec(),
            reference[i as usize].1,
            "row {}",
            i + 1
        );
    }
    let err = stderr(&preprocess(&[
        &data("parquet-sample/c4-sample-50.parquet"),
        &"--text-field",
        &"body",
        &"--out",
        &out.path().join("x"),
    ]));
    assert!(
        err.contains("c4-sample-50.parquet: no column \"body\""),
        "{err}"
    );
}

/// HuggingFace `datasets`' own `save_to_disk` output (Arrow IPC stream files beside
/// `dataset_info.json` and `state.json`), the IPC file format, and a damaged file.
#[test]
fn arrow_input_from_datasets_gives_the_same_ids_as_json_lines() {
    let out = tempfile::tempdir().unwrap();
    ok(preprocess(&[
        &data("arrow-sample"),
        &"--out",
        &out.path().join("dir"),
    ]));
    let set = ShardSet::open(&out.path().join("dir")).unwrap();
    let reference = reference_ids();
    assert_eq!(set.len(), 50);
    for i in 0..50 {
        assert_eq!(
            set.doc(i).to_vec(),
            reference[i as usize].1,
            "row {}",
            i + 1
        );
    }

    // The same first file in the IPC *file* format (footer, `ARROW1` magic).
    let stream = data("arrow-sample/data-00000-of-00003.arrow");
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(&stream).unwrap(), None)
            .unwrap();
    let file_format = out.path().join("first.arrow");
    let mut writer = arrow_ipc::writer::FileWriter::try_new(
        std::fs::File::create(&file_format).unwrap(),
        &reader.schema(),
    )
    .unwrap();
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.finish().unwrap();
    ok(preprocess(&[
        &file_format,
        &"--out",
        &out.path().join("file"),
    ]));
    let set = ShardSet::open(&out.path().join("file")).unwrap();
    assert_eq!(set.len(), 17);
    for i in 0..17 {
        assert_eq!(
            set.doc(i).to_vec(),
            reference[i as usize].1,
            "row {}",
            i + 1
        );
    }

    // A truncated stream is an error naming the file, not a short shard set.
    let cut = out.path().join("cut.arrow");
    let bytes = std::fs::read(&stream).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = stderr(&preprocess(&[&cut, &"--out", &out.path().join("cut")]));
    assert!(err.contains("cut.arrow"), "{err}");
    let err = stderr(&preprocess(&[
        &stream,
        &"--text-field",
        &"body",
        &"--out",
        &out.path().join("x"),
    ]));
    assert!(err.contains("no column \"body\""), "{err}");
}

#[test]
fn output_is_byte_identical_for_any_thread_count_and_splits_into_shards() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ok(preprocess(&[
        &sample(),
        &"--out",
        &a.path(),
        &"--threads",
        &"1",
        &"--shard-size",
        &"40KB",
    ]));
    ok(preprocess(&[
        &sample(),
        &"--out",
        &b.path(),
        &"--threads",
        &"3",
        &"--shard-size",
        &"40KB",
    ]));
    let (fa, fb) = (files_of(a.path()), files_of(b.path()));
    assert!(
        fa.iter().filter(|(n, _)| n.ends_with(".bin")).count() >= 5,
        "expected several shards"
    );
    assert_eq!(fa, fb);
    // Each shard but the last reached the target; documents are whole.
    let set = ShardSet::open(a.path()).unwrap();
    let m = &set.manifests()[0];
    for s in &m.shards[..m.shards.len() - 1] {
        assert!(s.bin_bytes >= 40_000, "{s:?}");
    }
    assert_eq!(set.len(), 300);
}

#[test]
fn several_reader_threads_give_the_same_bytes_as_one() {
    // 25 workers get 3 reader threads (one per 12 workers), each reading every third file.
    let corpus = big_corpus(5);
    let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (out, threads) in [(&one, "1"), (&many, "25")] {
        ok(preprocess(&[
            &corpus.path(),
            &"--out",
            &out.path(),
            &"--threads",
            &threads,
            &"--shard-size",
            &"100KB",
        ]));
    }
    let files = files_of(one.path());
    assert!(files.iter().filter(|(n, _)| n.ends_with(".bin")).count() >= 5);
    assert_eq!(files, files_of(many.path()));
    assert_eq!(ShardSet::open(many.path()).unwrap().len(), 5 * 300);
}

#[test]
fn max_tokens_per_doc_keeps_each_documents_prefix() {
    let out = tempfile::tempdir().unwrap();
    ok(preprocess(&[
        &sample(),
        &"--out",
        &out.path(),
        &"--max-tokens-per-doc",
        &"126",
    ]));
    let set = ShardSet::open(out.path()).unwrap();
    let reference = reference_ids();
    let mut truncated = 0;
    for (i, (_, ids)) in reference.iter().enumerate() {
        let n = ids.len().min(126);
        truncated += (ids.len() > 126) as u64;
        assert_eq!(set.doc(i as u64).to_vec(), ids[..n]);
    }
    assert_eq!(set.manifests()[0].totals.truncated_documents, truncated);
}

#[test]
fn rerunning_a_finished_command_is_a_no_op_and_a_different_one_is_refused() {
    let out = tempfile::tempdir().unwrap();
    ok(preprocess(&[&sample(), &"--out", &out.path()]));
    let before = files_of(out.path());
    let again = ok(preprocess(&[&sample(), &"--out", &out.path()]));
    assert!(stderr(&again).contains("already complete"));
    assert_eq!(files_of(out.path()), before);
    let other = preprocess(&[
        &sample(),
        &"--out",
        &out.path(),
        &"--max-tokens-per-doc",
        &"10",
    ]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("holds a finished shard set made from other inputs"),
        "{}",
        stderr(&other)
    );
    ok(preprocess(&[
        &sample(),
        &"--out",
        &out.path(),
        &"--max-tokens-per-doc",
        &"10",
        &"--overwrite",
    ]));
}

/// A corpus big enough that a run can be interrupted: `copies` copies of the sample.
fn big_corpus(copies: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(sample().join("c4-train.00000-of-01024.json.gz")).unwrap();
    for i in 0..copies {
        std::fs::write(dir.path().join(format!("part-{i:03}.json.gz")), &src).unwrap();
    }
    dir
}

fn interrupt_then_resume(signal: i32) {
    let corpus = big_corpus(30);
    let (full, cut) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ok(preprocess(&[
        &corpus.path(),
        &"--out",
        &full.path(),
        &"--shard-size",
        &"30KB",
        &"--threads",
        &"2",
    ]));
    // Interrupt once a few shards are journaled.
    let mut child = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args([
            corpus.path().as_os_str(),
            "--out".as_ref(),
            cut.path().as_os_str(),
            "--shard-size".as_ref(),
            "30KB".as_ref(),
            "--threads".as_ref(),
            "1".as_ref(),
            "--quiet".as_ref(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !cut.path().join("shard-00003.idx").exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    // One writer per output directory: a second run into it is refused, naming the holder.
    let second = preprocess(&[&corpus.path(), &"--out", &cut.path(), &"--threads", &"1"]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains(&format!("is in use by pid {} (preprocess", child.id())),
        "{}",
        stderr(&second)
    );
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be interrupted; make the corpus bigger"
    );
    if signal == libc::SIGINT {
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(
            err.contains("run the same command again to resume"),
            "{err}"
        );
    }
    assert!(!cut.path().join("manifest.json").exists());
    assert!(cut.path().join("progress.json").exists());
    let resumed = ok(preprocess(&[
        &corpus.path(),
        &"--out",
        &cut.path(),
        &"--shard-size",
        &"30KB",
        &"--threads",
        &"2",
    ]));
    assert!(
        stderr(&resumed).contains("resuming"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(files_of(cut.path()), files_of(full.path()));
}

#[test]
fn a_killed_run_resumes_to_byte_identical_output() {
    interrupt_then_resume(libc::SIGKILL);
}

#[test]
fn ctrl_c_stops_cleanly_and_resumes_to_byte_identical_output() {
    interrupt_then_resume(libc::SIGINT);
}

fn write_gz(path: &Path, body: &[u8]) {
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(body).unwrap();
    enc.finish().unwrap();
}

#[test]
fn bad_input_is_named_by_file_and_line_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"text":"a fine document","url":"u"}"#;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed.jsonl",
            format!("{good}\n{{\"text\": \"unterminated\n").into_bytes(),
            "malformed.jsonl:2: malformed JSON",
        ),
        (
            "missing.jsonl",
            format!("{good}\n{good}\n{{\"body\":\"x\"}}\n").into_bytes(),
            "missing.jsonl:3: missing field \"text\"",
        ),
        (
            "number.jsonl",
            b"{\"text\":42}\n".to_vec(),
            "number.jsonl:1: field \"text\" is a number, expected a string",
        ),
        (
            "utf8.jsonl",
            b"{\"text\":\"caf\xe9\"}\n".to_vec(),
            "utf8.jsonl:1: invalid UTF-8 at byte 12",
        ),
        ("empty.jsonl", Vec::new(), "empty.jsonl: file is empty"),
    ];
    for (name, body, needle) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = preprocess(&[&path, &"--out", &dir.path().join(format!("out-{name}"))]);
        assert!(!out.status.success(), "{name} should fail");
        assert!(stderr(&out).contains(needle), "{name}: {}", stderr(&out));
    }
    // Truncated gzip: the error names the file and the last line read.
    let mut body = String::new();
    for i in 0..2000 {
        body += &format!("{{\"text\":\"document number {i} with some words in it\"}}\n");
    }
    let full = dir.path().join("full.json.gz");
    write_gz(&full, body.as_bytes());
    let bytes = std::fs::read(&full).unwrap();
    let truncated = dir.path().join("truncated.json.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = preprocess(&[&truncated, &"--out", &dir.path().join("out-trunc")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("truncated.json.gz:")
            && stderr(&out).contains("truncated or corrupt compressed data"),
        "{}",
        stderr(&out)
    );
    // A 50 MB single document exceeds the default record limit, without being held in memory.
    let huge = dir.path().join("huge.jsonl");
    let mut f = std::fs::File::create(&huge).unwrap();
    writeln!(f, "{good}").unwrap();
    write!(f, "{{\"text\":\"").unwrap();
    let block = "word ".repeat(1 << 16);
    for _ in 0..160 {
        f.write_all(block.as_bytes()).unwrap();
    }
    writeln!(f, "\"}}").unwrap();
    writeln!(f, "{good}").unwrap();
    drop(f);
    let out = preprocess(&[&huge, &"--out", &dir.path().join("out-huge")]);
    assert!(
        stderr(&out)
            .contains("huge.jsonl:2: record is 52428811 bytes, over the --max-record-bytes limit"),
        "{}",
        stderr(&out)
    );
    // Unreadable path.
    let out = preprocess(&[
        &dir.path().join("nope.jsonl"),
        &"--out",
        &dir.path().join("out-nope"),
    ]);
    assert!(
        stderr(&out).contains("nope.jsonl: cannot read"),
        "{}",
        stderr(&out)
    );

    // --skip-bad-records: every case together, counted; good records kept.
    let all = dir.path().join("all");
    std::fs::create_dir(&all).unwrap();
    for (name, body, _) in &cases {
        std::fs::write(all.join(name), body).unwrap();
    }
    std::fs::copy(&truncated, all.join("truncated.json.gz")).unwrap();
    std::fs::copy(&huge, all.join("huge.jsonl")).unwrap();
    std::fs::write(
        all.join("blank.jsonl"),
        format!("{good}\n{{\"text\":\"   \"}}\n{{\"text\":\"\"}}\n"),
    )
    .unwrap();
    let out_dir = dir.path().join("out-skip");
    let out = ok(preprocess(&[
        &all,
        &"--out",
        &out_dir,
        &"--skip-bad-records",
    ]));
    let summary = String::from_utf8_lossy(&out.stdout);
    let set = ShardSet::open(&out_dir).unwrap();
    let t = &set.manifests()[0].totals;
    // Bad: malformed, missing, number, utf8, empty file, truncated gzip, huge = 7.
    assert_eq!(t.bad_records, 7, "{summary}\n{}", stderr(&out));
    assert_eq!(t.empty_documents, 2);
    // Good: 1 (blank.jsonl) + 2 (huge) + 1 (malformed) + 2 (missing) + the truncated file's readable prefix.
    assert!(t.documents > 6, "{t:?}");
    assert!(summary.contains("7 bad records"), "{summary}");
}

#[test]
fn partitions_merge_into_the_whole_and_foreign_tokenizers_are_refused() {
    let corpus = big_corpus(3);
    let root = tempfile::tempdir().unwrap();
    let (p0, p1, whole, merged) = (
        root.path().join("p0"),
        root.path().join("p1"),
        root.path().join("whole"),
        root.path().join("merged"),
    );
    ok(preprocess(&[
        &corpus.path(),
        &"--out",
        &p0,
        &"--partition",
        &"0/2",
    ]));
    ok(preprocess(&[
        &corpus.path(),
        &"--out",
        &p1,
        &"--partition",
        &"1/2",
    ]));
    ok(preprocess(&[&corpus.path(), &"--out", &whole]));
    let out = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args([
            "merge".as_ref(),
            p0.as_os_str(),
            p1.as_os_str(),
            "--out".as_ref(),
            merged.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (m, w) = (
        ShardSet::open(&merged).unwrap(),
        ShardSet::open(&whole).unwrap(),
    );
    assert_eq!(m.len(), w.len());
    assert_eq!(m.num_tokens(), w.num_tokens());
    // Partition 0 holds files 0 and 2, partition 1 file 1: the merged order is 0, 2, 1.
    let per_file = w.len() / 3;
    for d in 0..per_file {
        assert_eq!(m.doc(d).to_vec(), w.doc(d).to_vec());
        assert_eq!(
            m.doc(per_file + d).to_vec(),
            w.doc(2 * per_file + d).to_vec()
        );
        assert_eq!(
            m.doc(2 * per_file + d).to_vec(),
            w.doc(per_file + d).to_vec()
        );
    }
    assert_eq!(m.verify_checksums().unwrap(), 4);

    // A shard set made with another tokenizer is refused by merge and by readers.
    let mut tok: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data("tokenizer/bert-base-uncased/tokenizer.json")).unwrap(),
    )
    .unwrap();
    tok["normalizer"]["lowercase"] = serde_json::Value::Bool(false);
    let cased = root.path().join("cased.json");
    std::fs::write(&cased, serde_json::to_vec(&tok).unwrap()).unwrap();
    let other = root.path().join("other");
    ok(preprocess(&[
        &sample(),
        &"--out",
        &other,
        &"--tokenizer",
        &cased,
    ]));
    let out = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args([
            "merge".as_ref(),
            p0.as_os_str(),
            other.as_os_str(),
            "--out".as_ref(),
            root.path().join("bad").as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("tokenizer mismatch"),
        "{}",
        stderr(&out)
    );
    let err = ShardSet::open_many(&[p0.clone(), other])
        .err()
        .expect("mismatch refused")
        .to_string();
    assert!(err.contains("tokenizer mismatch"), "{err}");
}

#[test]
fn inspect_decodes_documents_and_help_shows_examples() {
    let out = tempfile::tempdir().unwrap();
    ok(preprocess(&[&sample(), &"--out", &out.path()]));
    let report = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args([
            "inspect".as_ref(),
            out.path().as_os_str(),
            "--doc".as_ref(),
            "0".as_ref(),
            "--verify".as_ref(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("documents      300"), "{text}");
    assert!(
        text.contains("beginners bbq class taking place in missoula"),
        "{text}"
    );
    assert!(text.contains("checksums      2 files match"), "{text}");
    // One flipped byte (the token stays a valid id): --verify names the damaged file.
    let bin = out.path().join("shard-00000.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&bin, bytes).unwrap();
    let report = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .args([
            "inspect".as_ref(),
            out.path().as_os_str(),
            "--verify".as_ref(),
        ])
        .output()
        .unwrap();
    assert!(!report.status.success());
    let err = String::from_utf8_lossy(&report.stderr);
    assert!(
        err.contains("shard-00000.bin") && err.contains("manifest says"),
        "{err}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
}

#[test]
fn unfinished_directories_are_refused_by_readers() {
    let out = tempfile::tempdir().unwrap();
    let err = ShardSet::open(out.path())
        .err()
        .expect("no manifest")
        .to_string();
    assert!(err.contains("no manifest.json"), "{err}");
}

#[test]
fn zstd_and_plain_json_lines_give_the_same_ids_as_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(sample().join("c4-train.00000-of-01024.json.gz")).unwrap(),
    )
    .read_to_end(&mut plain)
    .unwrap();
    std::fs::write(dir.path().join("c4.jsonl"), &plain).unwrap();
    std::fs::write(
        dir.path().join("c4.jsonl.zst"),
        zstd::encode_all(&plain[..], 3).unwrap(),
    )
    .unwrap();
    let reference = reference_ids();
    for name in ["c4.jsonl", "c4.jsonl.zst"] {
        let out = dir.path().join(format!("out-{name}"));
        ok(preprocess(&[&dir.path().join(name), &"--out", &out]));
        let set = ShardSet::open(&out).unwrap();
        assert_eq!(set.len(), reference.len() as u64, "{name}");
        for (i, (_, ids)) in reference.iter().enumerate() {
            assert_eq!(&set.doc(i as u64).to_vec(), ids, "{name} document {i}");
        }
    }
}
