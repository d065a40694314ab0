//! `manifest.json`: what a shard directory holds, written last and atomically.
//!
//! A directory without a manifest is an unfinished preprocessing run; readers refuse it.

use super::{TokenDtype, MANIFEST_FILE};
use crate::atomic;
use crate::error::{Error, IoContext, Result};
use crate::tokenizer::TokenizerInfo;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Identifies the file format in `manifest.json`.
pub const FORMAT_NAME: &str = "maskrate-shards";
/// Current manifest format version.
pub const FORMAT_VERSION: u32 = 1;

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] at write time.
    pub format_version: u32,
    /// The tokenizer that produced every token id.
    pub tokenizer: TokenizerInfo,
    /// Width of the ids in every `.bin` file.
    pub token_dtype: TokenDtype,
    /// Sums over all shards and inputs.
    pub totals: Totals,
    /// Shard pairs, in document order.
    pub shards: Vec<ShardEntry>,
    /// Input files consumed, in processing order.
    pub inputs: Vec<InputFile>,
    /// Preprocessing options that affect the output (free-form, recorded for provenance).
    pub options: serde_json::Value,
}

/// Document, token and byte totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Documents stored.
    pub documents: u64,
    /// Tokens stored.
    pub tokens: u64,
    /// Bytes of input files consumed (as stored on disk, compressed or not).
    pub input_bytes: u64,
    /// Records skipped because their text was empty or tokenized to nothing.
    pub empty_documents: u64,
    /// Malformed records skipped under `--skip-bad-records`.
    pub bad_records: u64,
    /// Documents cut to `--max-tokens-per-doc`.
    pub truncated_documents: u64,
}

impl Totals {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Totals) {
        self.documents += other.documents;
        self.tokens += other.tokens;
        self.input_bytes += other.input_bytes;
        self.empty_documents += other.empty_documents;
        self.bad_records += other.bad_records;
        self.truncated_documents += other.truncated_documents;
    }
}

/// One shard pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path prefix of the pair relative to the manifest's directory (`shard-00000`).
    pub name: String,
    /// Documents in the shard.
    pub documents: u64,
    /// Tokens in the shard.
    pub tokens: u64,
    /// Size of the `.bin` file.
    pub bin_bytes: u64,
    /// SHA-256 of the `.bin` file, hex.
    pub bin_sha256: String,
    /// SHA-256 of the `.idx` file, hex.
    pub idx_sha256: String,
}

impl ShardEntry {
    /// Size of the `.idx` file, from the document count.
    pub fn idx_bytes(&self) -> u64 {
        super::idx::index_len(self.documents as usize) as u64
    }
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The path as it was found (given on the command line or under a given directory).
    pub path: String,
    /// Size in bytes when it was read.
    pub size: u64,
}

impl Manifest {
    /// A manifest of the current format ([`FORMAT_NAME`], [`FORMAT_VERSION`]).
    pub fn new(
        tokenizer: TokenizerInfo,
        token_dtype: TokenDtype,
        totals: Totals,
        shards: Vec<ShardEntry>,
        inputs: Vec<InputFile>,
        options: serde_json::Value,
    ) -> Self {
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            tokenizer,
            token_dtype,
            totals,
            shards,
            inputs,
            options,
        }
    }

    /// Reads and checks `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Err(Error::format(
                dir,
                format!("no {MANIFEST_FILE}: not a shard directory, or preprocessing has not finished (re-run the same preprocess command to resume)"),
            ));
        }
        let bytes = std::fs::read(&path).with_path(&path)?;
        Self::parse(&bytes, &path)
    }

    /// Parses and checks the bytes of a `manifest.json` read from `path` (named in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let m: Manifest = serde_json::from_slice(bytes).map_err(|cause| Error::Json {
            path: path.clone(),
            cause,
        })?;
        if m.format != FORMAT_NAME {
            return Err(Error::format(
                &path,
                format!("format {:?}, expected {FORMAT_NAME:?}", m.format),
            ));
        }
        if m.format_version != FORMAT_VERSION {
            return Err(Error::format(
                &path,
                format!(
                    "format_version {}, expected {FORMAT_VERSION}",
                    m.format_version
                ),
            ));
        }
        Ok(m)
    }

    /// The JSON bytes, keys in a fixed order, so equal manifests are equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Writes `DIR/manifest.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        atomic::write_file(&dir.join(MANIFEST_FILE), &self.to_bytes())
    }
}
