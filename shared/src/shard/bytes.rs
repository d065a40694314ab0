//! A shard's token bytes: a local `.bin` mapped with `memmap2`, or one in object storage fetched
//! whole into the bounded cache when a document is read. Below both the reader (`reader.rs`)
//! and the bucket source (`remote.rs`), which each build one.

use crate::error::{IoContext, Result};
use crate::store::cache::Fetch;
use crate::store::ShardCache;
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// The token bytes of one shard: mapped from a local file, or fetched whole from object storage
/// into the bounded cache when a document is read.
pub(super) enum BinBytes {
    /// A local `.bin` (`None` when empty).
    Mapped(Option<Mmap>),
    /// A `.bin` in a bucket.
    Remote {
        cache: Arc<ShardCache>,
        fetch: Fetch,
    },
}

/// A shard's token bytes held for reading: borrowed from a local map, or a cached file kept
/// mapped (and safe from eviction) while this value lives.
pub(super) enum BinView<'a> {
    Borrowed(&'a [u8]),
    Cached(Arc<Mmap>),
}

impl BinView<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            BinView::Borrowed(b) => b,
            BinView::Cached(m) => m,
        }
    }
}

/// The read-only map of the committed shard file `path` (`None` when it is empty).
pub(super) fn map(path: &Path) -> Result<Option<Mmap>> {
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
