//! Writes one shard pair, hashing as it goes, and commits it atomically.

use super::{idx, shard_name, ShardEntry, TokenDtype};
use crate::atomic;
use crate::error::{Error, IoContext, Result};
use crate::faults;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A `Write` adapter that feeds everything written through SHA-256.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Builds `shard-NNNNN.bin`/`.idx` under temporary names; [`ShardWriter::finish`] makes them visible.
pub struct ShardWriter {
    dir: PathBuf,
    name: String,
    dtype: TokenDtype,
    bin: HashingWriter<BufWriter<File>>,
    lengths: Vec<u32>,
    tokens: u64,
    scratch: Vec<u8>,
}

impl ShardWriter {
    /// Starts shard number `number` in `dir`.
    pub fn create(dir: &Path, number: usize, dtype: TokenDtype) -> Result<Self> {
        let name = shard_name(number);
        let [bin_path, _] = super::pair_paths(dir, &name);
        let tmp = atomic::tmp_path(&bin_path);
        faults::step("write", &tmp).with_path(&tmp)?;
        let file = File::create(&tmp).with_path(&tmp)?;
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            name,
            dtype,
            bin: HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, file),
                hasher: Sha256::new(),
                written: 0,
            },
            lengths: Vec::new(),
            tokens: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends one document.
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        let len = u32::try_from(ids.len())
            .ok()
            .filter(|&l| l <= i32::MAX as u32)
            .ok_or_else(|| {
                Error::format(
                    self.bin_path(),
                    format!(
                        "document of {} tokens exceeds the index's i32 length field",
                        ids.len()
                    ),
                )
            })?;
        self.scratch.clear();
        match self.dtype {
            TokenDtype::Uint16 => {
                for &id in ids {
                    let id = u16::try_from(id).map_err(|_| {
                        Error::format(
                            self.bin_path(),
                            format!("token id {id} does not fit uint16"),
                        )
                    })?;
                    self.scratch.extend_from_slice(&id.to_le_bytes());
                }
            }
            TokenDtype::Int32 => {
                for &id in ids {
                    self.scratch.extend_from_slice(&(id as i32).to_le_bytes());
                }
            }
        }
        if let Err(e) = self.bin.write_all(&self.scratch) {
            return Err(Error::io(self.bin_path(), e));
        }
        self.lengths.push(len);
        self.tokens += ids.len() as u64;
        Ok(())
    }

    /// Documents appended so far.
    pub fn documents(&self) -> usize {
        self.lengths.len()
    }

    /// Bytes of token data appended so far.
    pub fn bin_bytes(&self) -> u64 {
        self.bin.written
    }

    fn bin_path(&self) -> PathBuf {
        self.dir.join(format!("{}.bin", self.name))
    }

    /// Flushes and fsyncs both files, renames them to their final names and returns the manifest entry.
    pub fn finish(self) -> Result<ShardEntry> {
        let bin_path = self.bin_path();
        let bin_tmp = atomic::tmp_path(&bin_path);
        let idx_path = self.dir.join(format!("{}.idx", self.name));
        let idx_tmp = atomic::tmp_path(&idx_path);

        let HashingWriter {
            inner,
            hasher,
            written,
        } = self.bin;
        let file = inner
            .into_inner()
            .map_err(|e| Error::io(&bin_tmp, e.into_error()))?;
        faults::step("fsync", &bin_tmp).with_path(&bin_tmp)?;
        file.sync_all().with_path(&bin_tmp)?;
        let bin_sha256 = hex::encode(hasher.finalize());

        faults::step("write", &idx_tmp).with_path(&idx_tmp)?;
        let idx_file = File::create(&idx_tmp).with_path(&idx_tmp)?;
        let mut idx_w = HashingWriter {
            inner: BufWriter::new(idx_file),
            hasher: Sha256::new(),
            written: 0,
        };
        idx::write_index(&mut idx_w, self.dtype, &self.lengths).with_path(&idx_tmp)?;
        let HashingWriter { inner, hasher, .. } = idx_w;
        let idx_file = inner
            .into_inner()
            .map_err(|e| Error::io(&idx_tmp, e.into_error()))?;
        faults::step("fsync", &idx_tmp).with_path(&idx_tmp)?;
        idx_file.sync_all().with_path(&idx_tmp)?;
        let idx_sha256 = hex::encode(hasher.finalize());

        faults::step("rename", &bin_path).with_path(&bin_path)?;
        std::fs::rename(&bin_tmp, &bin_path).with_path(&bin_path)?;
        atomic::commit(&idx_tmp, &idx_path)?;
        Ok(ShardEntry {
            name: self.name,
            documents: self.lengths.len() as u64,
            tokens: self.tokens,
            bin_bytes: written,
            bin_sha256,
            idx_sha256,
        })
    }
}
