//! Command-line flags (`clap`), turned into a checked [`RunConfig`] once.

use crate::error::{Error, Result};
use crate::input;
use crate::run_config::{OutputOptions, RunConfig};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

const EXAMPLES: &str = "\
Examples:
  preprocess c4/en/ --out shards/                      # C4 as downloaded; bundled bert-base-uncased
  preprocess data/c4-sample/ --out /tmp/sample-shards  # the sample shipped in the repository
  preprocess wiki.parquet --text-field text --tokenizer my/tokenizer.json --out shards/
  preprocess my_dataset/ --out shards/                 # a datasets.save_to_disk directory
  preprocess c4/en/ --max-tokens-per-doc 128 --out shards-128/  # the paper's truncation, far smaller
  preprocess c4/en/ --partition 3/8 --out part-3/      # job 3 of an 8-way job array
  preprocess s3://corpora/c4/en/ --out s3://corpora/shards/   # bucket to bucket (AWS_* environment)
  preprocess merge part-0/ part-1/ part-2/ --out shards/
  preprocess inspect shards/ --doc 0 --doc 41 --verify

Interrupted runs (Ctrl-C, SIGKILL, power loss) resume where they stopped when the same command is
run again; the result is byte-identical to an uninterrupted run.";

/// Turns text corpora (JSON lines, gzip/zstd JSON lines, parquet, Arrow IPC) into memory-mapped token shards,
/// tokenizing once. The shards are Megatron-LM indexed datasets (.bin/.idx) plus manifest.json.
#[derive(Debug, Parser)]
#[command(name = "preprocess", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    /// Another action instead of preprocessing.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Preprocessing flags.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join shard sets with the same tokenizer into one directory (hard links, no token copied).
    Merge(MergeArgs),
    /// Print a shard set's summary; decode documents back to text; verify checksums.
    Inspect(InspectArgs),
}

/// Flags of a preprocessing run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Input files or directories (walked recursively in sorted order).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output shard directory, or a bucket URL (s3://bucket/shards, gs://, az://): shards are
    /// uploaded as they are finished, the manifest last.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// With --out in a bucket: the local directory holding the journal and the shard being written
    /// (each is deleted once uploaded) [default: ~/.cache/maskrate/staging/HASH-OF-OUT].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// HF tokenizers `tokenizer.json`; default: bert-base-uncased, bundled.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// JSON key or parquet/Arrow column holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Keep only each document's first N tokens (the paper used 128). Default: whole documents.
    #[arg(long, value_name = "N")]
    pub max_tokens_per_doc: Option<usize>,
    /// Target size of each shard's .bin file (e.g. 256MiB, 1GB, 100000).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Tokenizer threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Skip and count malformed records instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_records: bool,
    /// Longest record (JSON line or text) accepted.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub max_record_bytes: u64,
    /// Process only partition I of N of the (sorted) input files, e.g. 0/8.
    #[arg(long, value_name = "I/N", value_parser = parse_partition)]
    pub partition: Option<(usize, usize)>,
    /// Replace a different shard set (or unfinished run) found in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags of `merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard directories, in the order their documents should appear.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Output directory (same filesystem for hard links; otherwise files are copied), or a URL in
    /// the inputs' bucket (objects copied server-side, the manifest last).
    #[arg(long)]
    pub out: PathBuf,
}

/// Flags of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Shard directory, or a bucket URL (read through the cache, $MASKRATE_CACHE_DIR).
    pub dir: PathBuf,
    /// Decode document I back to text (repeatable).
    #[arg(long = "doc", value_name = "I")]
    pub docs: Vec<u64>,
    /// Recompute every file's SHA-256 and compare with the manifest.
    #[arg(long)]
    pub verify: bool,
}

/// A positive size in `shared::size`'s grammar (`256MiB`, `1GB` = 10^9, `1G` = 2^30, `100000`).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    match shared::size::parse_size_arg(s)? {
        0 => Err(format!("size {s:?}: must be positive")),
        v => Ok(v),
    }
}

/// `~/.cache/maskrate/staging/<first 16 hex of sha256(url)>`: where a run writing to `url` stages.
fn staging_dir(url: &str) -> Result<PathBuf> {
    use sha2::Digest;
    let cache = shared::store::CacheConfig::new(None, None)?.dir;
    let base = cache.parent().map_or(cache.clone(), Path::to_path_buf);
    let hash = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    Ok(base.join("staging").join(&hash[..16]))
}

/// Parses `I/N` with I < N.
pub fn parse_partition(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/8"))?;
    let (i, n): (usize, usize) = (
        i.trim()
            .parse()
            .map_err(|_| format!("{s:?}: I is not a number"))?,
        n.trim()
            .parse()
            .map_err(|_| format!("{s:?}: N is not a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("{s:?}: need 0 <= I < N"));
    }
    Ok((i, n))
}

impl RunArgs {
    /// Discovers inputs and checks the flags.
    pub fn into_config(self) -> Result<RunConfig> {
        let out = self
            .out
            .ok_or_else(|| Error::Usage("--out is required".into()))?;
        let (out, upload_to) = if shared::store::is_remote(&out) {
            let url = out.to_string_lossy().trim_end_matches('/').to_string();
            let staging = match self.work_dir {
                Some(d) => d,
                None => staging_dir(&url)?,
            };
            (staging, Some(url))
        } else {
            (out, None)
        };
        let (index, count) = self.partition.unwrap_or((0, 1));
        let inputs = input::partition(input::discover(&self.inputs)?, index, count);
        if inputs.is_empty() {
            return Err(Error::Usage(format!(
                "partition {index}/{count} holds no input file"
            )));
        }
        if self.max_tokens_per_doc == Some(0) {
            return Err(Error::Usage("--max-tokens-per-doc must be positive".into()));
        }
        let threads = if self.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.threads
        };
        Ok(RunConfig {
            inputs,
            out,
            upload_to,
            tokenizer: self.tokenizer,
            output: OutputOptions {
                text_field: self.text_field,
                max_tokens_per_doc: self.max_tokens_per_doc,
                shard_size: self.shard_size,
                skip_bad_records: self.skip_bad_records,
                max_record_bytes: self.max_record_bytes as usize,
                partition: (index, count),
            },
            threads,
            overwrite: self.overwrite,
            progress: !self.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_partitions() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(parse_partition("3/8").unwrap(), (3, 8));
        assert!(parse_partition("8/8").is_err());
        assert!(parse_partition("x").is_err());
    }
}
