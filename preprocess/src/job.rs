//! One preprocessing run: prepare or resume the output directory, run the pipeline, write the
//! manifest last.

use crate::error::{Error, Result};
use crate::journal::{is_ours, Journal, JOURNAL_FILE};
use crate::pipeline::{self, Sink};
use crate::progress::{summary, Progress};
use crate::run_config::RunConfig;
use crate::staging;
use crate::text_encoder::TextEncoder;
use shared::atomic;
use shared::lock::DirLock;
use shared::shard::{InputFile, Manifest, TokenDtype, MANIFEST_FILE};
use shared::tokenizer::{LoadedTokenizer, TOKENIZER_FILE};
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// The manifest now in the output directory.
    pub manifest: Manifest,
    /// Human-readable summary.
    pub summary: String,
    /// The run found the work already complete.
    pub already_done: bool,
    /// With `--out` in a bucket: its URL and the bytes uploaded at the end (what earlier commits
    /// had not uploaded, then the tokenizer and the manifest).
    pub uploaded: Option<(String, u64)>,
}

fn output_err(dir: &Path, msg: impl Into<String>) -> Error {
    Error::Output {
        dir: dir.to_path_buf(),
        msg: msg.into(),
    }
}

/// Runs (or resumes, or confirms) the preprocessing described by `cfg`: the output directory's
/// state decides (finished by the same command: nothing to do; unfinished: resume from the
/// journal; fresh: start), then the pipeline runs and the manifest is written last. With `--out`
/// in a bucket the directory is the local staging one: shards are uploaded as they are
/// committed, and here whatever is missing from the bucket, then the manifest last.
pub fn preprocess(cfg: &RunConfig, interrupted: &AtomicBool) -> Result<Outcome> {
    let tok = LoadedTokenizer::load(cfg.tokenizer.as_deref())?;
    let fingerprint = cfg.fingerprint(&tok.info.sha256);
    let dir = cfg.out.as_path();
    std::fs::create_dir_all(dir).map_err(|e| output_err(dir, format!("cannot create: {e}")))?;
    let _lock = DirLock::acquire(dir, "preprocess")?;
    let Some(url) = &cfg.upload_to else {
        return preprocess_locally(cfg, &tok, &fingerprint, interrupted);
    };
    let store = shared::store::Store::open(url)?;
    if let Some(done) = finished_in_bucket(&store, &fingerprint, cfg.overwrite)? {
        if staging::is_for(dir, url)? {
            staging::release(dir)?;
        }
        return Ok(done);
    }
    staging::claim(dir, url)?;
    let mut outcome = preprocess_locally(cfg, &tok, &fingerprint, interrupted)?;
    let bytes = shared::shard::upload_shard_dir(dir, &store, |_| {})?;
    outcome.uploaded = Some((url.clone(), bytes));
    staging::release(dir)?;
    Ok(outcome)
}

/// Whether `manifest` was written by the command with `fingerprint`.
fn made_by(manifest: &Manifest, fingerprint: &str) -> bool {
    manifest
        .options
        .get("run_fingerprint")
        .and_then(|v| v.as_str())
        == Some(fingerprint)
}

/// The outcome of a run that finds its work already complete (`manifest`).
fn done(manifest: Manifest, uploaded: Option<(String, u64)>) -> Outcome {
    let bytes: u64 = manifest.shards.iter().map(|s| s.bin_bytes).sum();
    let summary = summary(&manifest.totals, manifest.shards.len(), bytes, 0.0, true);
    Outcome {
        manifest,
        summary,
        already_done: true,
        uploaded,
    }
}

/// The outcome when the bucket already holds the finished output of this very command (nothing
/// to do); an error when it holds another command's (unless `--overwrite`); `None` otherwise.
fn finished_in_bucket(
    store: &shared::store::Store,
    fingerprint: &str,
    overwrite: bool,
) -> Result<Option<Outcome>> {
    if store.size_of(MANIFEST_FILE)?.is_none() {
        return Ok(None);
    }
    let bytes = store.get_bytes(MANIFEST_FILE)?;
    let manifest = Manifest::parse(&bytes, Path::new(&store.url_of(MANIFEST_FILE)))?;
    if !made_by(&manifest, fingerprint) {
        if overwrite {
            return Ok(None);
        }
        return Err(Error::Output {
            dir: store.url().into(),
            msg: "holds a finished shard set made from other inputs, options or tokenizer; \
                  choose another --out or pass --overwrite"
                .into(),
        });
    }
    Ok(Some(done(manifest, Some((store.url().to_string(), 0)))))
}

/// Preprocesses into the local directory `cfg.out` (the caller holds its lock).
fn preprocess_locally(
    cfg: &RunConfig,
    tok: &LoadedTokenizer,
    fingerprint: &str,
    interrupted: &AtomicBool,
) -> Result<Outcome> {
    let dir = cfg.out.as_path();
    if cfg.overwrite {
        remove_our_files(dir)?;
    }
    if let Some(done) = already_finished(dir, fingerprint)? {
        return Ok(done);
    }
    atomic::clean_temporaries(dir)?;
    let journal = open_journal(dir, fingerprint)?;
    let resumed = !journal.shards.is_empty() || journal.next_file > 0;
    remove_unjournaled_shards(dir, &journal)?;
    atomic::write_file(&dir.join(TOKENIZER_FILE), &tok.json)?;

    let dtype = TokenDtype::for_vocab(tok.info.vocab_size);
    let total_bytes: u64 = cfg.inputs.iter().map(|f| f.size).sum();
    let progress = Progress::new(total_bytes, cfg.progress, &journal.totals);
    if resumed {
        progress.println(&format!(
            "resuming {}: {} shard(s) done, continuing at input {} of {} (record {})",
            dir.display(),
            journal.shards.len(),
            journal.next_file + 1,
            cfg.inputs.len(),
            journal.next_record + 1
        ));
    }
    let (text_encoder, notice) = TextEncoder::new(tok);
    if let Some(notice) = notice {
        progress.println(&format!("notice: {notice}"));
    }
    let mut sink = Sink::new(dir, dtype, cfg.output.shard_size, journal);
    if let Some(url) = &cfg.upload_to {
        sink.upload = Some(shared::store::Store::open(url)?);
    }
    let result =
        pipeline::tokenize_into_shards(cfg, &text_encoder, &mut sink, &progress, interrupted);
    progress.finish();
    if let Err(e) = result {
        let _ = atomic::clean_temporaries(dir);
        return Err(e);
    }
    let manifest = write_manifest(cfg, dir, tok, dtype, fingerprint, &sink)?;
    let bytes: u64 = manifest.shards.iter().map(|s| s.bin_bytes).sum();
    let summary = summary(
        &manifest.totals,
        manifest.shards.len(),
        bytes,
        progress.elapsed_secs(),
        resumed,
    );
    Ok(Outcome {
        manifest,
        summary,
        already_done: false,
        uploaded: None,
    })
}

/// `--overwrite`: removes every file this tool owns from `dir` (and nothing else).
fn remove_our_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| output_err(dir, e.to_string()))? {
        let entry = entry.map_err(|e| output_err(dir, e.to_string()))?;
        if is_ours(&entry.file_name().to_string_lossy()) {
            std::fs::remove_file(entry.path()).map_err(|e| {
                output_err(
                    dir,
                    format!("cannot remove {}: {e}", entry.path().display()),
                )
            })?;
        }
    }
    Ok(())
}

/// The outcome when `dir` already holds the finished output of this very command; an error when
/// it holds another command's; `None` when it is not finished.
fn already_finished(dir: &Path, fingerprint: &str) -> Result<Option<Outcome>> {
    if !dir.join(MANIFEST_FILE).exists() {
        return Ok(None);
    }
    let manifest = Manifest::load(dir)?;
    if !made_by(&manifest, fingerprint) {
        return Err(output_err(dir, "holds a finished shard set made from other inputs, options or tokenizer; choose another --out or pass --overwrite"));
    }
    let _ = std::fs::remove_file(Journal::path(dir));
    Ok(Some(done(manifest, None)))
}

/// The journal of the unfinished run in `dir` (which must be this command's), or a new one
/// saved before the first shard file exists: a run killed while committing its first shard is
/// then a resumable run, not a directory of unexplained files.
fn open_journal(dir: &Path, fingerprint: &str) -> Result<Journal> {
    match Journal::load(dir)? {
        Some(j) if j.run_fingerprint == fingerprint => Ok(j),
        Some(_) => Err(output_err(dir, "holds an unfinished run of a different command (other inputs, options or tokenizer); re-run that command to finish it, or pass --overwrite")),
        None => {
            let foreign: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| output_err(dir, e.to_string()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_ours(n) && n != TOKENIZER_FILE)
                .collect();
            if !foreign.is_empty() {
                return Err(output_err(dir, format!("holds shard files ({}) but no {JOURNAL_FILE}; pass --overwrite to replace them", foreign.join(", "))));
            }
            let fresh = Journal { run_fingerprint: fingerprint.to_string(), ..Default::default() };
            fresh.save(dir)?;
            Ok(fresh)
        }
    }
}

/// Removes shards past the journal (committed just before a kill, not yet journaled): they are
/// rebuilt identically.
fn remove_unjournaled_shards(dir: &Path, journal: &Journal) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| output_err(dir, e.to_string()))? {
        let entry = entry.map_err(|e| output_err(dir, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-")
            && !journal
                .shards
                .iter()
                .any(|s| name.starts_with(&format!("{}.", s.name)))
        {
            std::fs::remove_file(entry.path()).map_err(|e| output_err(dir, e.to_string()))?;
        }
    }
    Ok(())
}

/// Writes `manifest.json` (the last file of a finished set) and removes the journal.
fn write_manifest(
    cfg: &RunConfig,
    dir: &Path,
    tok: &LoadedTokenizer,
    dtype: TokenDtype,
    fingerprint: &str,
    sink: &Sink,
) -> Result<Manifest> {
    let mut options = serde_json::to_value(&cfg.output).expect("serializes");
    options["run_fingerprint"] = serde_json::Value::String(fingerprint.to_string());
    let inputs = cfg
        .inputs
        .iter()
        .map(|i| InputFile {
            path: i.path.display().to_string(),
            size: i.size,
        })
        .collect();
    let manifest = Manifest::new(
        tok.info.clone(),
        dtype,
        sink.journal.totals.clone(),
        sink.journal.shards.clone(),
        inputs,
        options,
    );
    manifest.save(dir)?;
    std::fs::remove_file(Journal::path(dir))
        .map_err(|e| output_err(dir, format!("cannot remove {JOURNAL_FILE}: {e}")))?;
    Ok(manifest)
}
