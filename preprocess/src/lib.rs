//! maskrate's preprocessor: corpus files → token shards, tokenizing once.
//!
//! 1. [`input`] finds input files and their formats; [`records`] splits them into raw records.
//! 2. [`record_encoder`] parses each record's text field and tokenizes it (worker threads).
//! 3. [`pipeline`] runs reader → workers → ordered writer with bounded queues, committing shards
//!    through `shared::shard::ShardWriter` and journaling progress ([`journal`]).
//! 4. [`job`] prepares or resumes the output directory and writes `manifest.json` last.
//! 5. [`merge`] and [`inspect`] work on finished shard sets; [`command`] runs what the command
//!    line asks (the binary and the Python package's console script).
//!
//! Invariant: the output depends only on the inputs and the options in [`run_config::OutputOptions`],
//! never on `--threads`, timing or interruptions.

pub mod cli;
pub mod command;
pub mod error;
pub mod input;
pub mod inspect;
pub mod job;
pub mod journal;
pub mod merge;
pub mod pipeline;
pub mod progress;
pub mod record_encoder;
pub mod records;
pub mod run_config;
pub mod staging;
pub mod text_encoder;

pub use error::{Error, Result};
