//! The checked configuration of a preprocessing run (built from the command line once).

use crate::input::InputSpec;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Input files of this partition, in processing order.
    pub inputs: Vec<InputSpec>,
    /// Output shard directory (with `upload_to`, the local staging directory).
    pub out: PathBuf,
    /// The bucket URL the shards go to, each uploaded once committed, the manifest last.
    pub upload_to: Option<String>,
    /// `tokenizer.json` to use; `None` = bundled bert-base-uncased.
    pub tokenizer: Option<PathBuf>,
    /// Options that determine the output bytes.
    pub output: OutputOptions,
    /// Tokenizer worker threads.
    pub threads: usize,
    /// Delete an existing, different shard set in `out` first.
    pub overwrite: bool,
    /// Draw a progress bar.
    pub progress: bool,
}

/// Options that change the bytes written: recorded in the manifest and part of the run fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct OutputOptions {
    /// JSON key or parquet column holding the text.
    pub text_field: String,
    /// Keep only each document's first N tokens.
    pub max_tokens_per_doc: Option<usize>,
    /// Target `.bin` size in bytes; a shard is closed once it reaches this.
    pub shard_size: u64,
    /// Skip (and count) malformed records instead of failing.
    pub skip_bad_records: bool,
    /// Longest record accepted, in bytes.
    pub max_record_bytes: usize,
    /// This run's partition `index/count` of the input files.
    pub partition: (usize, usize),
}

impl RunConfig {
    /// Hash of inputs, output options and tokenizer: equal for the same command on the same data.
    pub fn fingerprint(&self, tokenizer_sha256: &str) -> String {
        #[derive(Serialize)]
        struct Identity<'a> {
            inputs: Vec<(String, u64)>,
            options: &'a OutputOptions,
            tokenizer: &'a str,
            format_version: u32,
        }
        let id = Identity {
            inputs: self
                .inputs
                .iter()
                .map(|i| (i.path.display().to_string(), i.size))
                .collect(),
            options: &self.output,
            tokenizer: tokenizer_sha256,
            format_version: shared::shard::manifest::FORMAT_VERSION,
        };
        hex::encode(Sha256::digest(serde_json::to_vec(&id).expect("serializes")))
    }
}
