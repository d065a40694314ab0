//! The error type of the `shared` crate: every variant names the file (and field or record) at fault.

use std::path::{Path, PathBuf};

/// Errors from reading or writing shards, manifests, tokenizers and schedule specs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on `path` failed. (`cause` is in the message, so it is not also a
    /// `source`: error chains would print it twice.)
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A shard, index or manifest does not have the expected layout.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A JSON document (manifest, state) could not be parsed.
    #[error("{}: {cause}", path.display())]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    /// The tokenizer file could not be loaded or lacks a required token.
    #[error("tokenizer {what}: {msg}")]
    Tokenizer { what: String, msg: String },
    /// Two shard sets or a shard set and a model disagree about the tokenizer.
    #[error("tokenizer mismatch: {0}")]
    TokenizerMismatch(String),
    /// A masking-rate or learning-rate schedule spec is malformed.
    #[error("bad schedule {spec:?}: {msg}\n{grammar}")]
    Schedule {
        spec: String,
        msg: String,
        /// The spec grammar (given by the schedule module, so errors do not depend on it).
        grammar: &'static str,
    },
    /// A `--rate-dist` spec is malformed (`piece` names the part at fault).
    #[error("bad rate distribution {spec:?}: {msg}\n{}", crate::rate_dist::GRAMMAR)]
    RateDist { spec: String, msg: String },
    /// Another process is writing to this directory.
    #[error("{} is in use by {holder}; wait for it to finish or stop it (a killed holder releases it)", dir.display())]
    Locked { dir: PathBuf, holder: String },
    /// An object-store request failed (`msg` is one line and never holds a secret).
    #[error("{url}: {msg}")]
    Remote { url: String, msg: String },
    /// A sampler or loader option is invalid.
    #[error("invalid option: {0}")]
    Config(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            cause: source,
        }
    }

    /// A layout or validation failure in `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Adds a path to `std::io::Result`s.
pub trait IoContext<T> {
    /// Maps an I/O error to [`Error::Io`] naming `path`.
    fn with_path(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
