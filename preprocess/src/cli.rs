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

/// Flags of a preprocessing run. As settings (the Python keywords, [`RunArgs::with_settings`])
/// the same names with underscores, values as the command line takes them.
#[derive(Debug, Clone, PartialEq, Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(deserialize_with = "shared::size::deserialize")]
    pub shard_size: u64,
    /// Tokenizer threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Skip and count malformed records instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_records: bool,
    /// Longest record (JSON line or text) accepted.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    #[serde(deserialize_with = "shared::size::deserialize")]
    pub max_record_bytes: u64,
    /// Process only partition I of N of the (sorted) input files, e.g. 0/8.
    #[arg(long, value_name = "I/N", value_parser = parse_partition)]
    #[serde(with = "partition_spec")]
    pub partition: Option<(usize, usize)>,
    /// Replace a different shard set (or unfinished run) found in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// `preprocess INPUTS --out OUT` with `settings` merged on the command line's defaults and
    /// checked by the same deserializer (the Python keywords): keys are the flags' names with
    /// underscores (`progress`, the opposite of `quiet`, too); an unknown key is refused naming
    /// the known ones, a bad value naming its key.
    pub fn with_settings(
        inputs: Vec<PathBuf>,
        out: PathBuf,
        mut settings: serde_json::Map<String, serde_json::Value>,
    ) -> Result<RunArgs> {
        let usage = |msg: String| Error::Usage(msg);
        let mut merged = Self::defaults_as_settings();
        merged.insert("inputs".into(), serde_json::json!(inputs));
        merged.insert("out".into(), serde_json::json!(out));
        if let Some(progress) = settings.remove("progress") {
            let quiet = progress.as_bool().map(|p| !p);
            settings.insert("quiet".into(), quiet.map_or(progress, Into::into));
        }
        let known: Vec<String> = merged
            .keys()
            .filter(|k| !["inputs", "out", "quiet"].contains(&k.as_str()))
            .cloned()
            .collect();
        for (key, value) in settings.into_iter().filter(|(_, v)| !v.is_null()) {
            if !merged.contains_key(&key) || key == "inputs" || key == "out" {
                return Err(usage(format!(
                    "unknown preprocess setting {key:?} (known: {}, progress)",
                    known.join(", ")
                )));
            }
            let mut alone = merged.clone();
            alone.insert(key.clone(), value.clone());
            serde_json::from_value::<RunArgs>(alone.into())
                .map_err(|e| usage(format!("preprocess setting {key:?}: {e}")))?;
            merged.insert(key, value);
        }
        serde_json::from_value(merged.into()).map_err(|e| usage(e.to_string()))
    }

    /// The command line's defaults (placeholder inputs and output) as a settings map.
    fn defaults_as_settings() -> serde_json::Map<String, serde_json::Value> {
        let defaults = Cli::try_parse_from(["preprocess", "INPUT", "--out", "OUT"])
            .expect("the defaults parse")
            .run;
        match serde_json::to_value(defaults) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => unreachable!("a struct of plain fields serializes as an object"),
        }
    }

    /// Every setting's default (`inputs` and `out` excepted), in setting form.
    pub fn default_settings() -> serde_json::Map<String, serde_json::Value> {
        let mut map = Self::defaults_as_settings();
        map.remove("inputs");
        map.remove("out");
        let quiet = map
            .remove("quiet")
            .and_then(|q| q.as_bool())
            .unwrap_or(false);
        map.insert("progress".into(), (!quiet).into());
        map
    }
}

/// `--partition` in settings: `"I/N"` or `[I, N]`, written back as `"I/N"`.
mod partition_spec {
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(
        p: &Option<(usize, usize)>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        match p {
            Some((i, n)) => ser.collect_str(&format_args!("{i}/{n}")),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        de: D,
    ) -> Result<Option<(usize, usize)>, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Spec {
            Text(String),
            Pair(usize, usize),
        }
        let text = match Option::<Spec>::deserialize(de)? {
            None => return Ok(None),
            Some(Spec::Text(t)) => t,
            Some(Spec::Pair(i, n)) => format!("{i}/{n}"),
        };
        super::parse_partition(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
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

#[cfg(test)]
mod settings_tests {
    use super::*;

    fn settings(json: serde_json::Value) -> Result<RunArgs> {
        let map = json.as_object().unwrap().clone();
        RunArgs::with_settings(vec!["in".into()], "out".into(), map)
    }

    /// Settings are the command line's flags: the same defaults, the same size and partition
    /// grammar, `progress` the opposite of `--quiet`.
    #[test]
    fn settings_merge_onto_the_command_lines_defaults() {
        let cli = Cli::try_parse_from([
            "preprocess",
            "in",
            "--out",
            "out",
            "--shard-size",
            "1MiB",
            "--partition",
            "1/4",
            "--quiet",
            "--threads",
            "3",
        ])
        .unwrap()
        .run;
        let from_settings = settings(serde_json::json!({
            "shard_size": "1MiB", "partition": [1, 4], "progress": false, "threads": 3,
        }))
        .unwrap();
        assert_eq!(from_settings, cli);
        let plain = settings(serde_json::json!({})).unwrap();
        let defaults = Cli::try_parse_from(["preprocess", "in", "--out", "out"])
            .unwrap()
            .run;
        assert_eq!(plain, defaults);
        let shown = RunArgs::default_settings();
        assert_eq!(shown["shard_size"], 256 << 20);
        assert_eq!(shown["progress"], true);
        assert!(!shown.contains_key("quiet") && !shown.contains_key("inputs"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = settings(serde_json::json!({"shard_sise": "1MiB"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"shard_sise\"") && e.contains("shard_size"),
            "{e}"
        );
        let e = settings(serde_json::json!({"max_record_bytes": "lots"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"max_record_bytes\""), "{e}");
        let e = settings(serde_json::json!({"partition": "4/4"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"partition\"") && e.contains("0 <= I < N"),
            "{e}"
        );
        let e = settings(serde_json::json!({"out": "elsewhere"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown preprocess setting \"out\""), "{e}");
    }
}
