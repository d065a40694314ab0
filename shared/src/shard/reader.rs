//! Zero-copy reading of one or more shard directories through `memmap2`.
//!
//! Opening maps every `.bin`/`.idx` pair and checks headers and sizes: O(number of shards) time
//! and memory, whatever the token count. Document *i* is found by a binary search over the
//! per-shard document counts (O(log shards)) and served as a slice of the map.

use super::idx::IndexView;
use super::{Manifest, TokenDtype};
use crate::error::{Error, IoContext, Result};
use crate::tokenizer::TokenizerInfo;
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The token ids of one document, borrowed from the memory map.
#[derive(Debug, Clone, Copy)]
pub enum Tokens<'a> {
    /// A `uint16` shard.
    U16(&'a [u16]),
    /// An `int32` shard (ids are never negative).
    U32(&'a [u32]),
}

impl<'a> Tokens<'a> {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            Tokens::U16(s) => s.len(),
            Tokens::U32(s) => s.len(),
        }
    }

    /// True for an empty document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `i` as `u32`.
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        match self {
            Tokens::U16(s) => s[i] as u32,
            Tokens::U32(s) => s[i],
        }
    }

    /// Tokens `range` of the document.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Tokens<'a> {
        match self {
            Tokens::U16(s) => Tokens::U16(&s[range]),
            Tokens::U32(s) => Tokens::U32(&s[range]),
        }
    }

    /// The first id `>= limit`, with its position.
    #[inline]
    pub fn first_at_or_above(&self, limit: u32) -> Option<(usize, u32)> {
        match self {
            Tokens::U16(s) => s
                .iter()
                .position(|&t| t as u32 >= limit)
                .map(|i| (i, s[i] as u32)),
            Tokens::U32(s) => s.iter().position(|&t| t >= limit).map(|i| (i, s[i])),
        }
    }

    /// Appends the ids, widened to `u32`, to `out`.
    #[inline]
    pub fn extend_into(&self, out: &mut Vec<u32>) {
        match self {
            Tokens::U16(s) => out.extend(s.iter().map(|&t| t as u32)),
            Tokens::U32(s) => out.extend_from_slice(s),
        }
    }

    /// Copies the ids into `out`, which must have the same length.
    #[inline]
    pub fn copy_to(&self, out: &mut [u32]) {
        match self {
            Tokens::U16(s) => out
                .iter_mut()
                .zip(s.iter())
                .for_each(|(o, &t)| *o = t as u32),
            Tokens::U32(s) => out.copy_from_slice(s),
        }
    }

    /// The ids as an owned vector.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len());
        self.extend_into(&mut v);
        v
    }
}

/// One mapped shard pair.
struct Shard {
    bin_path: PathBuf,
    idx_path: PathBuf,
    bin: Option<Mmap>,
    idx: Mmap,
    dtype: TokenDtype,
    documents: usize,
    expected_bin_sha256: String,
    expected_idx_sha256: String,
}

impl Shard {
    fn index(&self) -> IndexView<'_> {
        IndexView::trusted(&self.idx, self.dtype, self.documents)
    }

    fn bin_bytes(&self) -> &[u8] {
        self.bin.as_deref().unwrap_or(&[])
    }
}

fn map(path: &Path) -> Result<Option<Mmap>> {
    let file = File::open(path).with_path(path)?;
    let len = file.metadata().with_path(path)?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: shard files are immutable once committed (written under a temporary name and
    // renamed); maskrate never writes to a committed shard, and the map is read-only.
    let mmap = unsafe { Mmap::map(&file) }.with_path(path)?;
    Ok(Some(mmap))
}

/// All documents of one or more shard directories, in manifest order, as one indexed collection.
pub struct ShardSet {
    dirs: Vec<PathBuf>,
    manifests: Vec<Manifest>,
    shards: Vec<Shard>,
    /// `doc_starts[s]` = global index of shard `s`'s first document; last entry = total.
    doc_starts: Vec<u64>,
    /// `token_starts[s]` = global offset of shard `s`'s first token; last entry = total.
    token_starts: Vec<u64>,
}

impl ShardSet {
    /// Opens one shard directory.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_many(&[dir.to_path_buf()])
    }

    /// Opens several shard directories as one collection; they must share a tokenizer.
    /// Kept whole: the checks run in the order a reader of the format expects them.
    pub fn open_many(dirs: &[PathBuf]) -> Result<Self> {
        if dirs.is_empty() {
            return Err(Error::Config("no shard directory given".into()));
        }
        let mut set = ShardSet {
            dirs: dirs.to_vec(),
            manifests: Vec::new(),
            shards: Vec::new(),
            doc_starts: vec![0],
            token_starts: vec![0],
        };
        for dir in dirs {
            let manifest = Manifest::load(dir)?;
            if let Some(first) = set.manifests.first() {
                first
                    .tokenizer
                    .ensure_same(&manifest.tokenizer, &dirs[0], dir)?;
            }
            for entry in &manifest.shards {
                let [bin_path, idx_path] = super::pair_paths(dir, &entry.name);
                let idx = map(&idx_path)?.ok_or_else(|| Error::format(&idx_path, "empty file"))?;
                let view = IndexView::parse(&idx, &idx_path)?;
                if view.len() as u64 != entry.documents {
                    return Err(Error::format(
                        &idx_path,
                        format!(
                            "{} documents, manifest says {}",
                            view.len(),
                            entry.documents
                        ),
                    ));
                }
                if view.total_tokens() as u64 != entry.tokens {
                    return Err(Error::format(
                        &idx_path,
                        format!(
                            "{} tokens, manifest says {}",
                            view.total_tokens(),
                            entry.tokens
                        ),
                    ));
                }
                let dtype = view.dtype();
                let bin = map(&bin_path)?;
                let bin_len = bin.as_ref().map_or(0, |m| m.len()) as u64;
                if bin_len != entry.tokens * dtype.size() as u64 {
                    return Err(Error::format(
                        &bin_path,
                        format!("{bin_len} bytes, expected {} ({} tokens of {} bytes): truncated or foreign file", entry.tokens * dtype.size() as u64, entry.tokens, dtype.size()),
                    ));
                }
                let documents = view.len();
                set.doc_starts
                    .push(set.doc_starts.last().unwrap() + documents as u64);
                set.token_starts
                    .push(set.token_starts.last().unwrap() + entry.tokens);
                set.shards.push(Shard {
                    bin_path,
                    idx_path,
                    bin,
                    idx,
                    dtype,
                    documents,
                    expected_bin_sha256: entry.bin_sha256.clone(),
                    expected_idx_sha256: entry.idx_sha256.clone(),
                });
            }
            set.manifests.push(manifest);
        }
        Ok(set)
    }

    /// The tokenizer shared by every directory.
    pub fn tokenizer(&self) -> &TokenizerInfo {
        &self.manifests[0].tokenizer
    }

    /// The manifests, one per directory.
    pub fn manifests(&self) -> &[Manifest] {
        &self.manifests
    }

    /// The directories opened.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Number of shard pairs.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// Total documents.
    pub fn len(&self) -> u64 {
        *self.doc_starts.last().unwrap()
    }

    /// True when no document is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total tokens.
    pub fn num_tokens(&self) -> u64 {
        *self.token_starts.last().unwrap()
    }

    fn locate(&self, doc: u64) -> (usize, usize) {
        assert!(
            doc < self.len(),
            "document {doc} out of range (have {})",
            self.len()
        );
        let s = self.doc_starts.partition_point(|&start| start <= doc) - 1;
        (s, (doc - self.doc_starts[s]) as usize)
    }

    /// Document `local` of shard `s` as a slice of the shard's map; `None` when a corrupted index
    /// points outside the `.bin` (or at a misaligned offset).
    #[inline]
    fn slice(&self, s: usize, local: usize) -> Option<Tokens<'_>> {
        let shard = &self.shards[s];
        let view = shard.index();
        let (ptr, len) = (view.pointer(local), view.length(local));
        if len == 0 {
            return Some(Tokens::U16(&[]));
        }
        let size = shard.dtype.size();
        let end = ptr.checked_add(len.checked_mul(size)?)?;
        let bytes = shard
            .bin_bytes()
            .get(ptr..end)
            .filter(|_| ptr % size == 0)?;
        Some(match shard.dtype {
            TokenDtype::Uint16 => Tokens::U16(bytemuck::cast_slice(bytes)),
            TokenDtype::Int32 => Tokens::U32(bytemuck::cast_slice(bytes)),
        })
    }

    /// Tokens of global document `doc`. For shard sets already checked (tests, benchmarks): it
    /// panics if a corrupted index points outside the `.bin`; readers of untrusted sets use
    /// [`ShardSet::doc_checked`].
    #[inline]
    pub fn doc(&self, doc: u64) -> Tokens<'_> {
        let (s, local) = self.locate(doc);
        self.slice(s, local).unwrap_or_else(|| {
            panic!(
                "{}: document {local} points outside {}",
                self.shards[s].idx_path.display(),
                self.shards[s].bin_path.display()
            )
        })
    }

    /// Tokens of global document `doc`, refused (naming the shard file and document) if the
    /// index points outside the `.bin` or an id is outside the tokenizer's vocabulary: a
    /// corrupted or foreign shard must never reach an embedding lookup.
    pub fn doc_checked(&self, doc: u64) -> Result<Tokens<'_>> {
        let (s, local) = self.locate(doc);
        let shard = &self.shards[s];
        let tokens = self.slice(s, local).ok_or_else(|| {
            let view = shard.index();
            Error::format(
                &shard.idx_path,
                format!(
                    "document {local} points at bytes {}+{} tokens, outside {} ({} bytes): a corrupted index",
                    view.pointer(local),
                    view.length(local),
                    shard.bin_path.display(),
                    shard.bin_bytes().len()
                ),
            )
        })?;
        let vocab = self.manifests[0].tokenizer.vocab_size as u32;
        if let Some((at, id)) = tokens.first_at_or_above(vocab) {
            return Err(Error::format(
                &shard.bin_path,
                format!(
                    "document {local} (document {doc} of the set) holds token id {id} at position {at}, outside the vocabulary of {vocab}: a corrupted or foreign shard (check it with `preprocess inspect --verify`)"
                ),
            ));
        }
        Ok(tokens)
    }

    /// Length in tokens of global document `doc`.
    #[inline]
    pub fn doc_len(&self, doc: u64) -> usize {
        let (s, local) = self.locate(doc);
        self.shards[s].index().length(local)
    }

    /// Global offset of document `doc`'s first token in the concatenation of all documents.
    #[inline]
    pub fn doc_token_start(&self, doc: u64) -> u64 {
        if doc == self.len() {
            return self.num_tokens();
        }
        let (s, local) = self.locate(doc);
        let shard = &self.shards[s];
        self.token_starts[s] + (shard.index().pointer(local) / shard.dtype.size()) as u64
    }

    /// Recomputes every file's SHA-256 and compares it with the manifest; returns the files checked.
    pub fn verify_checksums(&self) -> Result<usize> {
        self.verify_checksums_with(|_| {})
    }

    /// Bytes [`ShardSet::verify_checksums`] reads (for a progress bar).
    pub fn file_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| (s.bin_bytes().len() + s.idx.len()) as u64)
            .sum()
    }

    /// Identity of the shard contents: SHA-256 over every manifest's shard names and checksums,
    /// in order. A shard set rebuilt or replaced under the same path gets another fingerprint.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for m in &self.manifests {
            for s in &m.shards {
                for part in [&s.name, &s.bin_sha256, &s.idx_sha256] {
                    h.update(part.as_bytes());
                    h.update([0]);
                }
            }
            h.update([1]);
        }
        hex::encode(h.finalize())
    }

    /// [`ShardSet::verify_checksums`], calling `progress` with the bytes hashed so far (16 MiB
    /// steps).
    pub fn verify_checksums_with(&self, mut progress: impl FnMut(u64)) -> Result<usize> {
        const STEP: usize = 16 << 20;
        let mut done = 0u64;
        let mut checked = 0;
        for shard in &self.shards {
            for (path, bytes, expected) in [
                (
                    &shard.bin_path,
                    shard.bin_bytes(),
                    &shard.expected_bin_sha256,
                ),
                (&shard.idx_path, &shard.idx[..], &shard.expected_idx_sha256),
            ] {
                let mut hasher = Sha256::new();
                for piece in bytes.chunks(STEP) {
                    hasher.update(piece);
                    done += piece.len() as u64;
                    progress(done);
                }
                let actual = hex::encode(hasher.finalize());
                if &actual != expected {
                    return Err(Error::format(
                        path,
                        format!("sha256 {actual}, manifest says {expected}"),
                    ));
                }
                checked += 1;
            }
        }
        Ok(checked)
    }
}
