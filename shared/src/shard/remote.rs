//! Shard sets in object storage: how a bucket directory is opened for reading (its manifest and
//! tokenizer mirrored into the cache, indexes fetched at open, token files on first read) and
//! how a finished local directory is uploaded (manifest last). The only code that knows both the
//! shard format and [`crate::store`]; the store itself knows nothing of shards.

use super::bytes::{map, BinBytes};
use super::{Manifest, ShardEntry, TokenDtype};
use crate::error::{Error, IoContext, Result};
use crate::store::cache::Fetch;
use crate::store::{self, CacheConfig, ShardCache, Store};
use crate::tokenizer::TOKENIZER_FILE;
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a directory's files are read from.
pub(super) enum DirSource {
    Local,
    Remote {
        store: Store,
        cache: Arc<ShardCache>,
    },
}

impl DirSource {
    /// How `dir`'s shards are reached, and the local directory holding its manifest and tokenizer
    /// (`dir` itself, or the cache's mirror of a bucket's).
    pub(super) fn open(dir: &Path, cache: Option<&CacheConfig>) -> Result<(PathBuf, DirSource)> {
        if !store::is_remote(dir) {
            return Ok((dir.to_path_buf(), DirSource::Local));
        }
        let cfg = match cache {
            Some(c) => c.clone(),
            None => CacheConfig::new(None, None)?,
        };
        let cache = ShardCache::shared(&cfg)?;
        let store = Store::open(&dir.to_string_lossy())?;
        let meta_dir = mirror_metadata(&store, &cfg)?;
        Ok((meta_dir, DirSource::Remote { store, cache }))
    }

    /// The index (mapped, or fetched and pinned in the cache) and the token bytes of the shard
    /// `entry`, whose files are `bin_path` and `idx_path`.
    pub(super) fn shard_bytes(
        &self,
        entry: &ShardEntry,
        dtype: TokenDtype,
        [bin_path, idx_path]: &[PathBuf; 2],
    ) -> Result<(Arc<Mmap>, BinBytes)> {
        match self {
            DirSource::Local => {
                let idx = map(idx_path)?.ok_or_else(|| Error::format(idx_path, "empty file"))?;
                Ok((Arc::new(idx), BinBytes::Mapped(map(bin_path)?)))
            }
            DirSource::Remote { store, cache } => {
                let [bin_name, _] = super::pair_names(&entry.name);
                let fetch = Fetch::new(
                    store.clone(),
                    bin_name,
                    entry.bin_sha256.clone(),
                    entry.tokens * dtype.size() as u64,
                    "bin",
                );
                let idx = cache.get(&index_fetch(store, entry), true)?;
                let cache = cache.clone();
                Ok((idx, BinBytes::Remote { cache, fetch }))
            }
        }
    }

    /// For a bucket: fetches `manifest`'s indexes in parallel (opening a shard then finds its
    /// index cached) and returns the cache the set reads through; `None` for a local directory.
    pub(super) fn prefetch_indexes(&self, manifest: &Manifest) -> Option<Arc<ShardCache>> {
        let DirSource::Remote { store, cache } = self else {
            return None;
        };
        cache.prefetch(manifest.shards.iter().map(|e| index_fetch(store, e)));
        Some(cache.clone())
    }
}

/// The fetch of a remote shard's `.idx`.
fn index_fetch(store: &Store, entry: &ShardEntry) -> Fetch {
    let [_, idx] = super::pair_names(&entry.name);
    Fetch::new(
        store.clone(),
        idx,
        entry.idx_sha256.clone(),
        entry.idx_bytes(),
        "idx",
    )
}

/// Copies a remote set's `manifest.json` and `tokenizer.json` into a local directory of the cache
/// named by the manifest's hash (so a replaced set gets a fresh one), written atomically.
fn mirror_metadata(store: &Store, cache: &CacheConfig) -> Result<PathBuf> {
    let manifest = store.get_bytes(super::MANIFEST_FILE)?;
    let hash = hex::encode(Sha256::digest(&manifest));
    let dir = cache.dir.join("sets").join(&hash[..32]);
    if dir.join(super::MANIFEST_FILE).exists() && dir.join(TOKENIZER_FILE).exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_path(&dir)?;
    let tokenizer = store.get_bytes(TOKENIZER_FILE)?;
    crate::atomic::write_file(&dir.join(TOKENIZER_FILE), &tokenizer)?;
    crate::atomic::write_file(&dir.join(super::MANIFEST_FILE), &manifest)?;
    Ok(dir)
}

/// Uploads a finished local shard directory to `store`: shard files and the tokenizer first
/// (skipping objects already there with the same size: a rerun after a failure resumes), the
/// manifest last, so a reader never sees a set whose files are not all there. Returns the bytes
/// uploaded.
pub fn upload_shard_dir(local: &Path, store: &Store, mut progress: impl FnMut(u64)) -> Result<u64> {
    let manifest = super::Manifest::load(local)?;
    let tokenizer = local.join(crate::tokenizer::TOKENIZER_FILE);
    let tokenizer_len = std::fs::metadata(&tokenizer).with_path(&tokenizer)?.len();
    let mut files = vec![(crate::tokenizer::TOKENIZER_FILE.to_string(), tokenizer_len)];
    for entry in &manifest.shards {
        let [bin, idx] = super::pair_names(&entry.name);
        files.push((bin, entry.bin_bytes));
        files.push((idx, entry.idx_bytes()));
    }
    let mut uploaded = 0;
    for (rel, len) in &files {
        if store.size_of(rel)? == Some(*len) {
            continue;
        }
        let path = local.join(rel);
        if !path.exists() {
            return Err(Error::Remote {
                url: store.url_of(rel),
                msg: format!(
                    "missing from the bucket and from {}: rerun with --overwrite",
                    local.display()
                ),
            });
        }
        store.upload_file(rel, &path)?;
        uploaded += len;
        progress(uploaded);
    }
    let manifest_path = local.join(super::MANIFEST_FILE);
    let bytes = std::fs::read(&manifest_path).with_path(&manifest_path)?;
    uploaded += bytes.len() as u64;
    store.put_bytes(super::MANIFEST_FILE, bytes)?;
    progress(uploaded);
    Ok(uploaded)
}
