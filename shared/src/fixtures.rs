//! Test and benchmark fixtures (feature `test-support`): shard sets written through the public
//! writer API from in-memory documents, and the bundled C4 sample's token ids.

use crate::shard::writer::ShardWriter;
use crate::shard::{Manifest, ShardSet, TokenDtype, Totals};
use crate::tokenizer::{LoadedTokenizer, TOKENIZER_FILE};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Writes in-memory documents as a complete shard set in `dir` (`per_shard` documents per shard,
/// tokenizer copy, manifest last).
pub fn write_documents(
    dir: &Path,
    tokenizer: &LoadedTokenizer,
    docs: &[Vec<u32>],
    per_shard: usize,
) -> crate::error::Result<Manifest> {
    let dtype = TokenDtype::for_vocab(tokenizer.info.vocab_size);
    let mut shards = Vec::new();
    let mut totals = Totals::default();
    for (n, chunk) in docs.chunks(per_shard.max(1)).enumerate() {
        let mut w = ShardWriter::create(dir, n, dtype)?;
        for d in chunk {
            w.push(d)?;
            totals.documents += 1;
            totals.tokens += d.len() as u64;
        }
        shards.push(w.finish()?);
    }
    crate::atomic::write_file(&dir.join(TOKENIZER_FILE), &tokenizer.json)?;
    let manifest = Manifest::new(
        tokenizer.info.clone(),
        dtype,
        totals,
        shards,
        Vec::new(),
        serde_json::json!({ "source": "in-memory documents" }),
    );
    manifest.save(dir)?;
    Ok(manifest)
}

/// Token ids of the bundled C4 sample (`data/reference/c4-sample-ids.jsonl.gz`, made by
/// `scripts/make_reference_ids.py` with HuggingFace `tokenizers`).
pub fn sample_docs() -> Vec<Vec<u32>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/reference/c4-sample-ids.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("bundled sample ids"))
        .read_to_string(&mut text)
        .expect("gzip text");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect()
        })
        .collect()
}

/// Writes `docs` with the bundled tokenizer as a shard set in `dir`, `per_shard` documents per
/// shard, and opens it.
pub fn write_set(dir: &Path, docs: &[Vec<u32>], per_shard: usize) -> Arc<ShardSet> {
    let tok = LoadedTokenizer::load(None).expect("bundled tokenizer");
    write_documents(dir, &tok, docs, per_shard).expect("fixture shards");
    Arc::new(ShardSet::open(dir).expect("fixture shards open"))
}

/// The bundled sample (300 documents, 100 per shard) as a shard set in a new temporary directory,
/// removed when the returned guard drops; the second value is its path.
pub fn sample_shards() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    write_set(dir.path(), &sample_docs(), 100);
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// Token ids of document `i` of [`synthetic_set`]: 1 to 4 tokens, all inside bert-base-uncased's
/// vocabulary.
pub fn synthetic_doc(i: u64, out: &mut Vec<u32>) {
    out.clear();
    let len = 1 + (i % 4) as u32;
    out.extend((0..len).map(|k| 1000 + ((i as u32).wrapping_mul(7).wrapping_add(k)) % 29_000));
}

/// Writes a shard set of `documents` tiny documents ([`synthetic_doc`]) in `shards` shards, with
/// the bundled tokenizer: the index of a corpus of hundreds of millions of documents at a few
/// bytes per document of `.bin`.
pub fn synthetic_set(dir: &Path, documents: u64, shards: usize) -> crate::error::Result<()> {
    let tok = LoadedTokenizer::load(None)?;
    let dtype = crate::shard::TokenDtype::for_vocab(tok.info.vocab_size);
    let per_shard = documents.div_ceil(shards.max(1) as u64).max(1);
    let mut entries = Vec::new();
    let mut totals = crate::shard::Totals::default();
    let mut ids = Vec::new();
    let mut next = 0u64;
    while next < documents {
        let mut w = crate::shard::writer::ShardWriter::create(dir, entries.len(), dtype)?;
        for i in next..(next + per_shard).min(documents) {
            synthetic_doc(i, &mut ids);
            w.push(&ids)?;
        }
        next = (next + per_shard).min(documents);
        let entry = w.finish()?;
        totals.documents += entry.documents;
        totals.tokens += entry.tokens;
        entries.push(entry);
    }
    crate::atomic::write_file(&dir.join(crate::tokenizer::TOKENIZER_FILE), &tok.json)?;
    crate::shard::Manifest::new(
        tok.info.clone(),
        dtype,
        totals,
        entries,
        Vec::new(),
        serde_json::json!({ "synthetic": documents }),
    )
    .save(dir)
}

/// Every file directly in `dir` with its bytes, sorted by name (to compare output directories).
pub fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("directory")
        .map(|e| e.expect("entry"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("file"))
        })
        .collect();
    v.sort();
    v
}

/// Copies every file of `from` into `to` except the one named `except`.
pub fn copy_dir_except(from: &Path, to: &Path, except: &str) {
    for e in std::fs::read_dir(from).expect("directory") {
        let e = e.expect("entry");
        if e.file_name() != except {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// This process's resident memory in kB (`VmRSS`; 0 where `/proc` has no such line).
pub fn resident_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The bundled sample as a shard set in a temporary directory (removed on drop), with the
/// bundled tokenizer and the documents it holds.
pub struct SampleSet {
    /// Keeps the shard directory alive.
    pub dir: tempfile::TempDir,
    /// The shard set.
    pub set: Arc<ShardSet>,
    /// The bundled tokenizer (bert-base-uncased).
    pub tok: LoadedTokenizer,
    /// The sample's documents, in order.
    pub docs: Vec<Vec<u32>>,
}

impl SampleSet {
    /// The sample written with `per_shard` documents per shard.
    pub fn new(per_shard: usize) -> Self {
        let docs = sample_docs();
        let dir = tempfile::tempdir().expect("temporary directory");
        let set = write_set(dir.path(), &docs, per_shard);
        SampleSet {
            dir,
            set,
            tok: LoadedTokenizer::load(None).expect("bundled tokenizer"),
            docs,
        }
    }
}
