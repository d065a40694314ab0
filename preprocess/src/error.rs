//! Errors of the preprocessor: each names the input file and, for record errors, the line or row.

use std::path::PathBuf;

/// What went wrong while preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record (JSON line or parquet row) is malformed.
    #[error("{}:{record}: {msg}", file.display())]
    Record {
        file: PathBuf,
        record: u64,
        msg: String,
    },
    /// An input file cannot be read or decoded as a whole.
    #[error("{}: {msg}", file.display())]
    Input { file: PathBuf, msg: String },
    /// The output directory is not in a state this command can continue from.
    #[error("{}: {msg}", dir.display())]
    Output { dir: PathBuf, msg: String },
    /// The run was interrupted (Ctrl-C); completed shards are kept for resuming.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// Invalid command-line options.
    #[error("{0}")]
    Usage(String),
    /// Shard format, manifest or tokenizer errors.
    #[error(transparent)]
    Shared(#[from] shared::Error),
}

/// Result alias for the preprocessor.
pub type Result<T, E = Error> = std::result::Result<T, E>;
