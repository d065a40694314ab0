//! Test helpers: shard sets built through the public writer API from real documents.

#![allow(dead_code)]

use shared::shard::ShardSet;
use shared::tokenizer::LoadedTokenizer;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Token ids of the bundled C4 sample (scripts/make_reference_ids.py output).
pub fn sample_docs() -> Vec<Vec<u32>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/reference/c4-sample-ids.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Writes `docs` as a shard set in `dir`, `per_shard` documents per shard.
pub fn write_set(dir: &Path, docs: &[Vec<u32>], per_shard: usize) -> Arc<ShardSet> {
    let tok = LoadedTokenizer::load(None).unwrap();
    shared::shard::writer::write_documents(dir, &tok, docs, per_shard).unwrap();
    Arc::new(ShardSet::open(dir).unwrap())
}
