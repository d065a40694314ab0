//! Resumability: `progress.json` records the shards committed so far and where the input stream
//! stands after the last of them. It is rewritten atomically after every shard commit.
//!
//! Re-running the same command reads it, skips the input files (and the records of the current
//! file) already stored, and continues; because shard boundaries depend only on the document
//! stream, the final output is byte-identical to an uninterrupted run.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use shared::atomic;
use shared::shard::{ShardEntry, Totals, MANIFEST_FILE};
use shared::tokenizer::TOKENIZER_FILE;
use std::path::{Path, PathBuf};

/// Files a preprocessing run writes in its output directory, and so owns (removed by
/// `--overwrite` and when a staging directory is cleared): the journal, the manifest, the
/// tokenizer, shards and temporaries.
pub(crate) fn is_ours(name: &str) -> bool {
    name == MANIFEST_FILE
        || name == JOURNAL_FILE
        || name == TOKENIZER_FILE
        || shared::shard::is_shard_file(name)
        || name.ends_with(atomic::TMP_SUFFIX)
}

/// Name of the journal file in the output directory.
pub const JOURNAL_FILE: &str = "progress.json";

/// State of an unfinished run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// Hash of inputs, options and tokenizer: a journal is only resumed by the same command.
    pub run_fingerprint: String,
    /// Shards committed, in order.
    pub shards: Vec<ShardEntry>,
    /// Index (into the run's input list) of the file the next record comes from.
    pub next_file: usize,
    /// Records of `next_file` already accounted for.
    pub next_record: u64,
    /// Totals up to the position above.
    pub totals: Totals,
}

impl Journal {
    /// Path of the journal in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(JOURNAL_FILE)
    }

    /// Loads the journal of `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Journal>> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Output { dir: dir.to_path_buf(), msg: format!("{JOURNAL_FILE} is unreadable ({e}); delete it or pass --overwrite to start over") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(shared::Error::io(&path, e).into()),
        }
    }

    /// Writes the journal atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("journal serializes");
        Ok(atomic::write_file(&Self::path(dir), &bytes)?)
    }
}
