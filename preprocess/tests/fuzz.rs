//! Fuzzing of every reader of `preprocess`'s inputs and its own journal (see `shared::fuzz`):
//! JSON lines plain, gzip and zstd (split into records, each record's text field extracted as a
//! worker does), parquet and Arrow IPC, and `progress.json`.

use preprocess::error::Error;
use preprocess::input::InputSpec;
use preprocess::journal::Journal;
use preprocess::record_encoder::extract_text;
use preprocess::records::{Payload, RecordReader};
use shared::fuzz::{fuzz, CountingAlloc};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(rel)
}

/// Reads every record of `path` as the pipeline does; a bad record becomes the error the
/// pipeline reports for it (file and line).
fn read_records(path: &Path) -> Result<(), String> {
    let spec = InputSpec {
        path: path.to_path_buf(),
        format: preprocess::input::Format::of(path).unwrap(),
        size: std::fs::metadata(path).unwrap().len(),
    };
    let mut reader = RecordReader::open(&spec, "text", 1 << 20, Arc::new(AtomicU64::new(0)))
        .map_err(|e| e.to_string())?;
    while let Some(rec) = reader.next_record(path).map_err(|e| e.to_string())? {
        let bad = |msg: String| Error::Record {
            file: path.to_path_buf(),
            record: rec.record,
            msg,
        };
        match &rec.payload {
            Payload::Json(line) => {
                if let Err(msg) = extract_text(line, "text") {
                    return Err(bad(msg).to_string());
                }
            }
            Payload::Text(t) => {
                std::hint::black_box(t.len());
            }
            Payload::Bad(msg) => return Err(bad(msg.clone()).to_string()),
        }
    }
    Ok(())
}

/// The first `n` lines of the bundled C4 sample.
fn jsonl_lines(n: usize) -> Vec<u8> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(
        std::fs::File::open(data("c4-sample/c4-train.00000-of-01024.json.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    text.lines()
        .take(n)
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

fn jsonl_seeds() -> Vec<Vec<u8>> {
    vec![
        jsonl_lines(3),
        jsonl_lines(12),
        b"{\"text\":\"caf\\u00e9 \\\"q\\\"\\n\",\"url\":\"u\"}\n{\"text\":\"\"}\n\n".to_vec(),
    ]
}

#[test]
fn fuzz_json_lines() {
    fuzz("jsonl", "c.jsonl", &jsonl_seeds(), &|_| {}, &read_records);
}

#[test]
fn fuzz_json_lines_gzip() {
    let seeds: Vec<Vec<u8>> = jsonl_seeds()
        .iter()
        .map(|s| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(s).unwrap();
            e.finish().unwrap()
        })
        .collect();
    fuzz("jsonl-gz", "c.json.gz", &seeds, &|_| {}, &read_records);
}

#[test]
fn fuzz_json_lines_zstd() {
    let seeds: Vec<Vec<u8>> = jsonl_seeds()
        .iter()
        .map(|s| zstd::encode_all(&s[..], 3).unwrap())
        .collect();
    fuzz("jsonl-zst", "c.jsonl.zst", &seeds, &|_| {}, &read_records);
}

#[test]
fn fuzz_parquet() {
    let seeds = vec![std::fs::read(data("parquet-sample/c4-sample-50.parquet")).unwrap()];
    fuzz("parquet", "c.parquet", &seeds, &|_| {}, &read_records);
}

#[test]
fn fuzz_arrow_ipc() {
    let seeds = vec![
        std::fs::read(data("arrow-sample/data-00000-of-00003.arrow")).unwrap(),
        std::fs::read(data("arrow-sample/data-00002-of-00003.arrow")).unwrap(),
    ];
    fuzz(
        "arrow",
        "data-00000-of-00001.arrow",
        &seeds,
        &|_| {},
        &read_records,
    );
}

#[test]
fn fuzz_progress_journal() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_preprocess"))
        .arg(data("c4-sample"))
        .arg("--out")
        .arg(dir.path())
        .args(["--shard-size", "60KB", "--quiet"])
        .env("MASKRATE_KILL_AT", "20")
        .output()
        .unwrap();
    assert!(!out.status.success(), "killed mid-run, leaving a journal");
    let seeds = vec![std::fs::read(dir.path().join("progress.json")).unwrap()];
    fuzz("progress", "progress.json", &seeds, &|_| {}, &|path| {
        Journal::load(path.parent().unwrap())
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// Inputs that once crashed a reader (`data/fuzz/`), replayed on every run.
#[test]
fn fuzz_regressions_stay_fixed() {
    // An Arrow IPC message whose buffer length runs past the file: the arrow crate panics on it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data-00000-of-00001.arrow");
    std::fs::copy(data("fuzz/arrow-buffer-past-end.arrow"), &path).unwrap();
    let err = read_records(&path).unwrap_err();
    assert!(
        err.contains("data-00000-of-00001.arrow") && err.contains("corrupt Arrow IPC data"),
        "{err}"
    );
}
