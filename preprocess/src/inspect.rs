//! `preprocess inspect`: the manifest summary, optional checksum verification, and documents
//! decoded back to text.

use crate::error::Result;
use shared::shard::ShardSet;
use shared::tokenizer::LoadedTokenizer;
use std::fmt::Write;
use std::path::Path;

/// Renders the report for `dir` (a directory or a bucket URL); `docs` are decoded, `verify` recomputes every checksum.
/// Kept whole: the report's sections in the order they are printed.
pub fn inspect(dir: &Path, docs: &[u64], verify: bool) -> Result<String> {
    let set = ShardSet::open(dir)?;
    let m = &set.manifests()[0];
    let mut s = String::new();
    let t = &m.totals;
    let _ = writeln!(s, "shard set      {}", dir.display());
    let _ = writeln!(
        s,
        "format         {} v{}, {:?} token ids",
        m.format, m.format_version, m.token_dtype
    );
    let _ = writeln!(
        s,
        "tokenizer      {} (sha256 {}…, vocab {})",
        m.tokenizer.source,
        &m.tokenizer.sha256[..16],
        m.tokenizer.vocab_size
    );
    let _ = writeln!(s, "documents      {}", t.documents);
    let _ = writeln!(
        s,
        "tokens         {} ({:.1} per document)",
        t.tokens,
        t.tokens as f64 / t.documents.max(1) as f64
    );
    let _ = writeln!(s, "shards         {}", m.shards.len());
    let _ = writeln!(
        s,
        "inputs         {} file(s), {:.1} MB",
        m.inputs.len(),
        t.input_bytes as f64 / 1e6
    );
    let _ = writeln!(
        s,
        "skipped        {} empty, {} bad; {} truncated",
        t.empty_documents, t.bad_records, t.truncated_documents
    );
    let _ = writeln!(s, "options        {}", m.options);
    if verify {
        let n = set.verify_checksums()?;
        let _ = writeln!(s, "checksums      {n} files match the manifest");
    }
    if !docs.is_empty() {
        let tok = LoadedTokenizer::load_from_shards(&set.metadata_dirs()[0], &m.tokenizer)?;
        for &d in docs {
            if d >= set.len() {
                return Err(crate::error::Error::Usage(format!(
                    "document {d} out of range: the set has {} documents (0..{})",
                    set.len(),
                    set.len()
                )));
            }
            let ids = set.read_doc(d)?.tokens().to_vec();
            let text = tok
                .tokenizer
                .decode(&ids, false)
                .map_err(|e| crate::error::Error::Usage(format!("decode failed: {e}")))?;
            let _ = writeln!(s, "\n--- document {d} ({} tokens) ---\n{text}", ids.len());
        }
    }
    Ok(s)
}
