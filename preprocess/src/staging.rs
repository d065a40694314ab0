//! The local staging directory of a run whose `--out` is a bucket.
//!
//! A staging directory (`--work-dir`, or one per output URL under `~/.cache/maskrate/staging`)
//! holds the state of one output at a time and says whose: `staging.json` names the output URL.
//! A run for that output resumes what is there; a run for another output starts cleanly when
//! what is there is finished (or nothing), and is refused, naming both outputs and touching
//! neither, when another output's run is unfinished. A run that has uploaded its manifest leaves
//! the directory empty.

use crate::error::{Error, Result};
use crate::journal::{is_ours, JOURNAL_FILE};
use serde::{Deserialize, Serialize};
use shared::atomic;
use shared::shard::MANIFEST_FILE;
use std::path::Path;

/// The file naming the output a staging directory holds state for.
pub const STAGING_FILE: &str = "staging.json";

#[derive(Debug, Serialize, Deserialize)]
struct Owner {
    /// The `--out` URL the state in the directory belongs to.
    output: String,
}

fn staging_err(dir: &Path, msg: impl Into<String>) -> Error {
    Error::Output {
        dir: dir.to_path_buf(),
        msg: msg.into(),
    }
}

/// The output URL `dir` stages for, if it says.
fn owner(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(STAGING_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Owner>(&bytes)
            .map(|o| Some(o.output))
            .map_err(|e| {
                staging_err(
                    dir,
                    format!("{STAGING_FILE} is unreadable ({e}); delete it"),
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(shared::Error::io(&path, e).into()),
    }
}

/// Whether `dir` holds an unfinished run: a journal, or shard files not yet uploaded.
fn unfinished(dir: &Path) -> Result<bool> {
    if dir.join(JOURNAL_FILE).exists() {
        return Ok(true);
    }
    Ok(std::fs::read_dir(dir)
        .map_err(|e| staging_err(dir, e.to_string()))?
        .filter_map(|e| e.ok())
        .any(|e| shared::shard::is_shard_file(&e.file_name().to_string_lossy())))
}

/// Makes `dir` the staging directory of `output` (the caller holds its lock): resumes this
/// output's state, clears another output's finished state, refuses another output's unfinished
/// run. State left by a version that did not name its output is treated by what it is: an
/// unfinished journal stays (the run's fingerprint decides whether it resumes), a finished set is
/// cleared.
pub fn claim(dir: &Path, output: &str) -> Result<()> {
    match owner(dir)? {
        Some(o) if o == output => return Ok(()),
        Some(other) if unfinished(dir)? => {
            return Err(staging_err(
                dir,
                format!(
                    "holds the unfinished run of {other}; this run is for {output}. Finish that \
                     run (rerun its command), or pass another --work-dir"
                ),
            ))
        }
        Some(_) => clear(dir)?,
        None if dir.join(MANIFEST_FILE).exists() && !unfinished(dir)? => clear(dir)?,
        None => {}
    }
    let bytes = serde_json::to_vec_pretty(&Owner {
        output: output.to_string(),
    })
    .expect("serializes");
    atomic::write_file(&dir.join(STAGING_FILE), &bytes)?;
    Ok(())
}

/// Whether `dir` says it stages for `output`.
pub fn is_for(dir: &Path, output: &str) -> Result<bool> {
    Ok(owner(dir)?.as_deref() == Some(output))
}

/// Empties `dir` of this tool's files once its output is complete in the bucket; the owner file
/// goes last, so a kill part way leaves a directory that still says whose it is.
pub fn release(dir: &Path) -> Result<()> {
    clear(dir)?;
    match std::fs::remove_file(dir.join(STAGING_FILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(shared::Error::io(dir.join(STAGING_FILE), e).into()),
    }
}

/// Removes the run state (journal, manifest, tokenizer, shards, temporaries), keeping the owner.
fn clear(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| staging_err(dir, e.to_string()))? {
        let entry = entry.map_err(|e| staging_err(dir, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_ours(&name) {
            std::fs::remove_file(entry.path()).map_err(|e| shared::Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}
