//! Zero-copy reading of one or more shard directories through `memmap2`.
//!
//! Opening maps every `.bin`/`.idx` pair and checks headers and sizes: O(number of shards) time
//! and memory, whatever the token count. Document *i* is found by a binary search over the
//! per-shard document counts (O(log shards)) and served as a slice of the map.

use super::bytes::{BinBytes, BinView};
use super::idx::IndexView;
use super::remote::DirSource;
use super::{Manifest, ShardEntry, TokenDtype};
use crate::error::{Error, Result};
use crate::store::{CacheConfig, ShardCache};
use crate::tokenizer::TokenizerInfo;
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// One document's tokens, held for reading (see [`ShardSet::read_doc`]).
pub struct Doc<'a> {
    view: BinView<'a>,
    range: std::ops::Range<usize>,
    dtype: TokenDtype,
}

impl<'a> Doc<'a> {
    /// The token ids.
    pub fn tokens(&self) -> Tokens<'_> {
        tokens_of(&self.view.bytes()[self.range.clone()], self.dtype)
    }

    /// The token ids with the set's lifetime (local shards only).
    fn into_borrowed(self) -> Option<Tokens<'a>> {
        match self.view {
            BinView::Borrowed(b) => Some(tokens_of(&b[self.range], self.dtype)),
            BinView::Cached(_) => None,
        }
    }
}

fn tokens_of(bytes: &[u8], dtype: TokenDtype) -> Tokens<'_> {
    match dtype {
        TokenDtype::Uint16 => Tokens::U16(bytemuck::cast_slice(bytes)),
        TokenDtype::Int32 => Tokens::U32(bytemuck::cast_slice(bytes)),
    }
}

/// One shard pair.
struct Shard {
    bin_path: PathBuf,
    idx_path: PathBuf,
    bin: BinBytes,
    /// Length of the `.bin` in bytes (checked against the manifest at open).
    bin_len: usize,
    idx: Arc<Mmap>,
    dtype: TokenDtype,
    documents: usize,
    expected_bin_sha256: String,
    expected_idx_sha256: String,
}

impl Shard {
    fn index(&self) -> IndexView<'_> {
        IndexView::trusted(&self.idx, self.dtype, self.documents)
    }

    /// The token bytes, fetched first when remote and not cached.
    fn bin_view(&self) -> Result<BinView<'_>> {
        match &self.bin {
            BinBytes::Mapped(m) => Ok(BinView::Borrowed(m.as_deref().unwrap_or(&[]))),
            BinBytes::Remote { cache, fetch } => Ok(BinView::Cached(cache.get(fetch, false)?)),
        }
    }

    /// The local map (panics for a remote shard: callers check [`ShardSet::is_remote`]).
    fn local_bytes(&self) -> &[u8] {
        match &self.bin {
            BinBytes::Mapped(m) => m.as_deref().unwrap_or(&[]),
            BinBytes::Remote { .. } => panic!(
                "{}: a remote shard is read through ShardSet::read_doc",
                self.bin_path.display()
            ),
        }
    }
}

/// All documents of one or more shard directories, in manifest order, as one indexed collection.
/// A directory may be an object-store URL (`s3://bucket/shards`): its manifest, tokenizer and
/// indexes are fetched at open, its token files when first read, through a [`ShardCache`].
pub struct ShardSet {
    dirs: Vec<PathBuf>,
    /// Local directories holding each set's manifest and tokenizer (the dirs themselves when local).
    meta_dirs: Vec<PathBuf>,
    manifests: Vec<Manifest>,
    shards: Vec<Shard>,
    /// `doc_starts[s]` = global index of shard `s`'s first document; last entry = total.
    doc_starts: Vec<u64>,
    /// `token_starts[s]` = global offset of shard `s`'s first token; last entry = total.
    token_starts: Vec<u64>,
    cache: Option<Arc<ShardCache>>,
}

impl Shard {
    /// Opens the shard `entry` of directory `dir` and checks it against the manifest: the index's
    /// document and token counts, then the `.bin`'s size (the order a reader of the format expects).
    fn open(
        dir: &Path,
        entry: &ShardEntry,
        dtype: TokenDtype,
        source: &DirSource,
    ) -> Result<Shard> {
        let paths = super::pair_paths(dir, &entry.name);
        let (idx, bin) = source.shard_bytes(entry, dtype, &paths)?;
        let [bin_path, idx_path] = paths;
        let view = IndexView::parse(&idx, &idx_path)?;
        if view.len() as u64 != entry.documents {
            let msg = format!(
                "{} documents, manifest says {}",
                view.len(),
                entry.documents
            );
            return Err(Error::format(&idx_path, msg));
        }
        if view.total_tokens() as u64 != entry.tokens {
            let msg = format!(
                "{} tokens, manifest says {}",
                view.total_tokens(),
                entry.tokens
            );
            return Err(Error::format(&idx_path, msg));
        }
        let dtype = view.dtype();
        let bin_len = match &bin {
            BinBytes::Mapped(m) => m.as_ref().map_or(0, |m| m.len()) as u64,
            BinBytes::Remote { fetch, .. } => fetch.bytes,
        };
        let expected = entry.tokens * dtype.size() as u64;
        if bin_len != expected {
            let msg = format!(
                "{bin_len} bytes, expected {expected} ({} tokens of {} bytes): truncated or foreign file",
                entry.tokens,
                dtype.size()
            );
            return Err(Error::format(&bin_path, msg));
        }
        Ok(Shard {
            documents: view.len(),
            bin_path,
            idx_path,
            bin,
            bin_len: bin_len as usize,
            idx,
            dtype,
            expected_bin_sha256: entry.bin_sha256.clone(),
            expected_idx_sha256: entry.idx_sha256.clone(),
        })
    }
}

impl ShardSet {
    /// Opens one shard directory.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_many(&[dir.to_path_buf()])
    }

    /// Opens several shard directories as one collection; they must share a tokenizer. Remote
    /// ones use the default cache ([`CacheConfig::new`]`(None, None)`).
    pub fn open_many(dirs: &[PathBuf]) -> Result<Self> {
        Self::open_many_cached(dirs, None)
    }

    /// As [`ShardSet::open_many`], remote directories read through the cache `cache` (`None`: the
    /// default one).
    pub fn open_many_cached(dirs: &[PathBuf], cache: Option<&CacheConfig>) -> Result<Self> {
        if dirs.is_empty() {
            return Err(Error::Config("no shard directory given".into()));
        }
        let mut set = ShardSet {
            dirs: dirs.to_vec(),
            meta_dirs: Vec::new(),
            manifests: Vec::new(),
            shards: Vec::new(),
            doc_starts: vec![0],
            token_starts: vec![0],
            cache: None,
        };
        for dir in dirs {
            let (meta_dir, source) = DirSource::open(dir, cache)?;
            let manifest = Manifest::load(&meta_dir)?;
            if let Some(cache) = source.prefetch_indexes(&manifest) {
                set.cache = Some(cache);
            }
            if let Some(first) = set.manifests.first() {
                first
                    .tokenizer
                    .ensure_same(&manifest.tokenizer, &dirs[0], dir)?;
            }
            for entry in &manifest.shards {
                let shard = Shard::open(dir, entry, manifest.token_dtype, &source)?;
                set.doc_starts
                    .push(set.doc_starts.last().unwrap() + shard.documents as u64);
                set.token_starts
                    .push(set.token_starts.last().unwrap() + entry.tokens);
                set.shards.push(shard);
            }
            set.manifests.push(manifest);
            set.meta_dirs.push(meta_dir);
        }
        Ok(set)
    }

    /// Whether any shard is read from object storage.
    pub fn is_remote(&self) -> bool {
        self.cache.is_some()
    }

    /// The cache remote shards are read through, if any.
    pub fn cache(&self) -> Option<&Arc<ShardCache>> {
        self.cache.as_ref()
    }

    /// Starts fetching shards `shards` (indices in set order) in the background; a no-op for local
    /// shards.
    pub fn prefetch(&self, shards: impl IntoIterator<Item = usize>) {
        let Some(cache) = &self.cache else { return };
        cache.prefetch(
            shards
                .into_iter()
                .filter_map(|s| match &self.shards[s].bin {
                    BinBytes::Remote { fetch, .. } => Some(fetch.clone()),
                    BinBytes::Mapped(_) => None,
                }),
        );
    }

    /// Global documents `start..end` of shard `s`.
    pub fn shard_docs(&self, s: usize) -> std::ops::Range<u64> {
        self.doc_starts[s]..self.doc_starts[s + 1]
    }

    /// Global offset of shard `s`'s first token (`s == num_shards()`: the total).
    pub fn shard_token_start(&self, s: usize) -> u64 {
        self.token_starts[s]
    }

    /// The shard holding global document `doc`.
    pub fn shard_of(&self, doc: u64) -> usize {
        self.locate(doc).0
    }

    /// Local directories holding each directory's `manifest.json` and `tokenizer.json` (a mirror
    /// in the cache for remote ones).
    pub fn metadata_dirs(&self) -> &[PathBuf] {
        &self.meta_dirs
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

    /// Byte range of document `local` of shard `s` in its `.bin`; `None` when a corrupted index
    /// points outside it (or at a misaligned offset).
    #[inline]
    fn doc_range(&self, s: usize, local: usize) -> Option<std::ops::Range<usize>> {
        let shard = &self.shards[s];
        let view = shard.index();
        let (ptr, len) = (view.pointer(local), view.length(local));
        if len == 0 {
            return Some(0..0);
        }
        let size = shard.dtype.size();
        let end = ptr.checked_add(len.checked_mul(size)?)?;
        (end <= shard.bin_len && ptr % size == 0).then_some(ptr..end)
    }

    /// Tokens of global document `doc` of a local set. For shard sets already checked (tests,
    /// benchmarks): it panics if a corrupted index points outside the `.bin`, or if the set is
    /// remote; readers of untrusted or remote sets use [`ShardSet::read_doc`].
    #[inline]
    pub fn doc(&self, doc: u64) -> Tokens<'_> {
        let (s, local) = self.locate(doc);
        let shard = &self.shards[s];
        let range = self.doc_range(s, local).unwrap_or_else(|| {
            panic!(
                "{}: document {local} points outside {}",
                shard.idx_path.display(),
                shard.bin_path.display()
            )
        });
        tokens_of(&shard.local_bytes()[range], shard.dtype)
    }

    /// [`ShardSet::read_doc`] for a local set, borrowing from its map; remote sets are refused.
    pub fn doc_checked(&self, doc: u64) -> Result<Tokens<'_>> {
        self.read_doc(doc)?.into_borrowed().ok_or_else(|| {
            Error::Config(format!(
                "{}: remote shards are read with read_doc",
                self.dirs[0].display()
            ))
        })
    }

    /// Tokens of global document `doc`, fetching its shard first when it is remote and not
    /// cached. Refused (naming the shard file and document) if the index points outside the
    /// `.bin` or an id is outside the tokenizer's vocabulary: a corrupted or foreign shard must
    /// never reach an embedding lookup.
    pub fn read_doc(&self, doc: u64) -> Result<Doc<'_>> {
        self.read_doc_span(doc, 0..usize::MAX)
    }

    /// [`ShardSet::read_doc`] of tokens `span` of document `doc` only (clipped to the document;
    /// empty past its end): the vocabulary check covers what is read, so a reader that takes the
    /// first 126 tokens of a 2,000-token document does not scan the other 1,874.
    pub fn read_doc_span(&self, doc: u64, span: std::ops::Range<usize>) -> Result<Doc<'_>> {
        let (s, local) = self.locate(doc);
        let shard = &self.shards[s];
        let range = self.doc_range(s, local).ok_or_else(|| {
            let view = shard.index();
            Error::format(
                &shard.idx_path,
                format!(
                    "document {local} points at bytes {}+{} tokens, outside {} ({} bytes): a corrupted index",
                    view.pointer(local),
                    view.length(local),
                    shard.bin_path.display(),
                    shard.bin_len
                ),
            )
        })?;
        let size = shard.dtype.size();
        let tokens = (range.end - range.start) / size;
        let (first, last) = (span.start.min(tokens), span.end.min(tokens));
        let range = range.start + first * size..range.start + last.max(first) * size;
        let doc_ref = Doc {
            view: shard.bin_view()?,
            range,
            dtype: shard.dtype,
        };
        let vocab = self.manifests[0].tokenizer.vocab_size as u32;
        if let Some((at, id)) = doc_ref.tokens().first_at_or_above(vocab) {
            let at = first + at;
            return Err(Error::format(
                &shard.bin_path,
                format!(
                    "document {local} (document {doc} of the set) holds token id {id} at position {at}, outside the vocabulary of {vocab}: a corrupted or foreign shard (check it with `preprocess inspect --verify`)"
                ),
            ));
        }
        Ok(doc_ref)
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
            .map(|s| (s.bin_len + s.idx.len()) as u64)
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
            let bin = shard.bin_view()?;
            for (path, bytes, expected) in [
                (&shard.bin_path, bin.bytes(), &shard.expected_bin_sha256),
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
