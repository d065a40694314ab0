//! The on-disk token-shard format. This module is the only code that opens shard files.
//!
//! A shard directory holds shard pairs `shard-NNNNN.bin` / `shard-NNNNN.idx` in Megatron-LM's
//! indexed-dataset layout (see [`idx`] for the byte layout) and a `manifest.json` ([`manifest`])
//! written last. Each document is one Megatron "sequence" and one Megatron "document", stored whole:
//! no [CLS]/[SEP], no truncation unless the preprocessor was asked for it.
//!
//! - [`writer::ShardWriter`] appends documents and commits a shard pair atomically.
//! - [`reader::ShardSet`] maps one or more shard directories and serves document *i* in O(1)
//!   without copying.
//! - [`remote`] opens shard directories in a bucket through the cache, and uploads finished ones.

mod bytes;
pub mod idx;
pub mod manifest;
pub mod reader;
pub mod remote;
pub mod writer;

pub use manifest::{InputFile, Manifest, ShardEntry, Totals};
pub use reader::{ShardSet, Tokens};
pub use remote::upload_shard_dir;
pub use writer::ShardWriter;

#[cfg(target_endian = "big")]
compile_error!("maskrate shards are little-endian and are mapped without conversion: big-endian hosts are not supported");

/// Width of the token ids in a shard's `.bin` file, with Megatron's dtype codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// `numpy.uint16`, Megatron code 8: every id < 65,536.
    Uint16,
    /// `numpy.int32`, Megatron code 4.
    Int32,
}

impl TokenDtype {
    /// The narrowest dtype that holds every id of a vocabulary of `vocab_size` tokens.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::Uint16
        } else {
            TokenDtype::Int32
        }
    }

    /// Megatron's `DType` code stored in the `.idx` header.
    pub fn code(self) -> u8 {
        match self {
            TokenDtype::Uint16 => 8,
            TokenDtype::Int32 => 4,
        }
    }

    /// The dtype for a Megatron code, if maskrate can read it.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            8 => Some(TokenDtype::Uint16),
            4 => Some(TokenDtype::Int32),
            _ => None,
        }
    }

    /// Bytes per token.
    pub fn size(self) -> usize {
        match self {
            TokenDtype::Uint16 => 2,
            TokenDtype::Int32 => 4,
        }
    }
}

/// File name stem of shard number `n` (`shard-00042`).
pub fn shard_name(n: usize) -> String {
    format!("{SHARD_PREFIX}{n:05}")
}

const SHARD_PREFIX: &str = "shard-";
const BIN_EXT: &str = "bin";
const IDX_EXT: &str = "idx";

/// The files of the shard pair `name` in `dir`: `[NAME.bin, NAME.idx]`.
pub fn pair_paths(dir: &std::path::Path, name: &str) -> [std::path::PathBuf; 2] {
    pair_names(name).map(|file| dir.join(file))
}

/// The file names of the shard pair `name` (object names under a bucket prefix):
/// `[NAME.bin, NAME.idx]`.
pub fn pair_names(name: &str) -> [String; 2] {
    [BIN_EXT, IDX_EXT].map(|ext| format!("{name}.{ext}"))
}

/// Whether `file_name` names a shard file (`shard-NNNNN.bin` or `.idx`).
pub fn is_shard_file(file_name: &str) -> bool {
    file_name.starts_with(SHARD_PREFIX)
        && [BIN_EXT, IDX_EXT].iter().any(|ext| {
            file_name
                .strip_suffix(ext)
                .is_some_and(|s| s.ends_with('.'))
        })
}

/// Name of the manifest file in a shard directory.
pub const MANIFEST_FILE: &str = "manifest.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_files_are_recognised_by_name() {
        let [bin, idx] = pair_paths(std::path::Path::new("d"), &shard_name(42));
        assert_eq!(bin, std::path::Path::new("d/shard-00042.bin"));
        assert_eq!(idx, std::path::Path::new("d/shard-00042.idx"));
        assert!(is_shard_file("shard-00042.bin") && is_shard_file("shard-00042.idx"));
        for other in [
            "manifest.json",
            "shard-00042.bin.tmp",
            "shard-1.json",
            "x.bin",
            "shard-00001bin",
        ] {
            assert!(!is_shard_file(other), "{other}");
        }
    }
}
