//! Tokenizer identity: loading an HF `tokenizer.json` (or the bundled bert-base-uncased) and the
//! fingerprint recorded in every manifest, so shard sets and models made with different
//! tokenizers are never mixed.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokenizers::Tokenizer;

/// bert-base-uncased's `tokenizer.json` (the paper's tokenizer), compiled into the binaries.
pub const BUNDLED_BERT_BASE_UNCASED: &[u8] =
    include_bytes!("../../data/tokenizer/bert-base-uncased/tokenizer.json");
/// Name under which the bundled tokenizer is recorded.
pub const BUNDLED_NAME: &str = "bert-base-uncased (bundled)";
/// Name of the tokenizer copy stored beside the shards.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What identifies a tokenizer: the hash of its file and the ids the sampler and model rely on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// Where it was loaded from (informational; not part of the identity).
    pub source: String,
    /// SHA-256 of the `tokenizer.json` bytes, hex.
    pub sha256: String,
    /// Vocabulary size including added tokens.
    pub vocab_size: usize,
    /// Id of `[CLS]` (or `<s>`).
    pub cls_id: u32,
    /// Id of `[SEP]` (or `</s>`).
    pub sep_id: u32,
    /// Id of `[MASK]` (or `<mask>`).
    pub mask_id: u32,
    /// Id of `[PAD]` (or `<pad>`).
    pub pad_id: u32,
    /// Id of `[UNK]` (or `<unk>`).
    pub unk_id: u32,
    /// Every special token id (never masked, never drawn as a random replacement), sorted.
    pub special_ids: Vec<u32>,
}

impl TokenizerInfo {
    /// Fails unless `other` is the same tokenizer; `a` and `b` name the two sides in the message.
    pub fn ensure_same(&self, other: &TokenizerInfo, a: &Path, b: &Path) -> Result<()> {
        if self.sha256 != other.sha256 || self.vocab_size != other.vocab_size {
            return Err(Error::TokenizerMismatch(format!(
                "{} uses {} (sha256 {}, vocab {}) but {} uses {} (sha256 {}, vocab {})",
                a.display(),
                self.source,
                &self.sha256[..12],
                self.vocab_size,
                b.display(),
                other.source,
                &other.sha256[..12],
                other.vocab_size
            )));
        }
        Ok(())
    }
}

/// A loaded tokenizer with its identity and raw file bytes.
pub struct LoadedTokenizer {
    /// The HF tokenizer.
    pub tokenizer: Tokenizer,
    /// Its fingerprint.
    pub info: TokenizerInfo,
    /// The `tokenizer.json` bytes (copied next to the shards).
    pub json: Vec<u8>,
}

impl LoadedTokenizer {
    /// Loads `path`, or the bundled bert-base-uncased when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => {
                let json = std::fs::read(p).map_err(|e| Error::Tokenizer {
                    what: p.display().to_string(),
                    msg: e.to_string(),
                })?;
                Self::from_bytes(json, &p.display().to_string())
            }
            None => Self::from_bytes(BUNDLED_BERT_BASE_UNCASED.to_vec(), BUNDLED_NAME),
        }
    }

    /// Parses `tokenizer.json` bytes; `source` names them in errors and in the fingerprint.
    pub fn from_bytes(json: Vec<u8>, source: &str) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer {
            what: source.to_string(),
            msg,
        };
        let tokenizer = Tokenizer::from_bytes(&json)
            .map_err(|e| err(format!("not a valid tokenizer.json: {e}")))?;
        let find = |names: &[&str]| -> Result<u32> {
            names
                .iter()
                .find_map(|n| tokenizer.token_to_id(n))
                .ok_or_else(|| err(format!("has none of the tokens {names:?}; maskrate needs BERT- or RoBERTa-style special tokens")))
        };
        let cls_id = find(&["[CLS]", "<s>"])?;
        let sep_id = find(&["[SEP]", "</s>"])?;
        let mask_id = find(&["[MASK]", "<mask>"])?;
        let pad_id = find(&["[PAD]", "<pad>"])?;
        let unk_id = find(&["[UNK]", "<unk>"])?;
        let mut special_ids: Vec<u32> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .chain([cls_id, sep_id, mask_id, pad_id, unk_id])
            .collect();
        special_ids.sort_unstable();
        special_ids.dedup();
        let info = TokenizerInfo {
            source: source.to_string(),
            sha256: hex::encode(Sha256::digest(&json)),
            vocab_size: tokenizer.get_vocab_size(true),
            cls_id,
            sep_id,
            mask_id,
            pad_id,
            unk_id,
            special_ids,
        };
        Ok(LoadedTokenizer {
            tokenizer,
            info,
            json,
        })
    }

    /// Loads the copy stored in a shard directory and checks it against the manifest's fingerprint.
    pub fn load_from_shards(dir: &Path, expected: &TokenizerInfo) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        let loaded = Self::load(Some(&path))?;
        if loaded.info.sha256 != expected.sha256 {
            return Err(Error::TokenizerMismatch(format!(
                "{} has sha256 {}, but the manifest records {}",
                path.display(),
                loaded.info.sha256,
                expected.sha256
            )));
        }
        Ok(loaded)
    }

    /// For each id, whether the token continues the previous word (WordPiece `##` pieces).
    pub fn continuation_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.info.vocab_size];
        for (token, id) in self.tokenizer.get_vocab(true) {
            if token.starts_with("##") && (id as usize) < mask.len() {
                mask[id as usize] = true;
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_tokenizer_has_bert_special_ids() {
        let t = LoadedTokenizer::load(None).unwrap();
        assert_eq!(t.info.vocab_size, 30522);
        assert_eq!(
            (
                t.info.pad_id,
                t.info.unk_id,
                t.info.cls_id,
                t.info.sep_id,
                t.info.mask_id
            ),
            (0, 100, 101, 102, 103)
        );
        assert_eq!(t.info.special_ids, vec![0, 100, 101, 102, 103]);
        // vocab.txt's published sha256 is for vocab.txt; the tokenizer.json hash just has to be stable.
        assert_eq!(t.info.sha256.len(), 64);
        let cont = t.continuation_mask();
        assert!(cont[t.tokenizer.token_to_id("##s").unwrap() as usize]);
        assert!(!cont[t.tokenizer.token_to_id("the").unwrap() as usize]);
    }

    #[test]
    fn mismatch_names_both_directories() {
        let a = LoadedTokenizer::load(None).unwrap().info;
        let mut b = a.clone();
        b.sha256 = "f".repeat(64);
        let err = a
            .ensure_same(&b, Path::new("one/"), Path::new("two/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("one/") && err.contains("two/"), "{err}");
    }
}
