//! Test helpers: shard sets built through the public writer API from real documents.

#![allow(dead_code)]

use shared::shard::{InputFile, Manifest, ShardSet, ShardWriter, TokenDtype, Totals};
use shared::tokenizer::{LoadedTokenizer, TOKENIZER_FILE};
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
    let dtype = TokenDtype::for_vocab(tok.info.vocab_size);
    let mut shards = Vec::new();
    let mut totals = Totals::default();
    for (n, chunk) in docs.chunks(per_shard).enumerate() {
        let mut w = ShardWriter::create(dir, n, dtype).unwrap();
        for d in chunk {
            w.push(d).unwrap();
            totals.documents += 1;
            totals.tokens += d.len() as u64;
        }
        shards.push(w.finish().unwrap());
    }
    std::fs::write(dir.join(TOKENIZER_FILE), &tok.json).unwrap();
    Manifest {
        format: shared::shard::manifest::FORMAT_NAME.into(),
        format_version: shared::shard::manifest::FORMAT_VERSION,
        tokenizer: tok.info,
        token_dtype: dtype,
        totals,
        shards,
        inputs: vec![InputFile {
            path: "test".into(),
            size: 0,
        }],
        options: serde_json::json!({}),
    }
    .save(dir)
    .unwrap();
    Arc::new(ShardSet::open(dir).unwrap())
}
