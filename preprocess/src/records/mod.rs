//! Reading records out of input files, one reader per format: [`json_lines`] (plain, gzip, zstd),
//! [`parquet`] and [`arrow`] (both through [`columnar`]'s row iterator). [`contained`] keeps a
//! third-party decoder's panic from taking the process down.
//!
//! Readers only split the input into raw records (bytes of one JSON line, or the string of one
//! parquet row); JSON parsing happens later on the worker threads. A record longer than
//! `max_record_bytes` is reported without ever being held in memory whole.

mod arrow;
mod columnar;
mod contained;
mod json_lines;
mod parquet;

use crate::error::{Error, Result};
use crate::input::{Format, InputSpec};
pub use columnar::ColumnRows;
use contained::contained;
pub use json_lines::JsonLines;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a record holds before tokenization.
#[derive(Debug)]
pub enum Payload {
    /// One JSON line, still to be parsed and validated.
    Json(Vec<u8>),
    /// The text of a parquet row.
    Text(String),
    /// A record the reader already knows is bad (too long, null); the message says why.
    Bad(String),
}

/// One record with its 1-based line (JSON lines) or row (parquet) number.
#[derive(Debug)]
pub struct RawRecord {
    /// Line or row number, from 1.
    pub record: u64,
    /// The content.
    pub payload: Payload,
}

/// Counts bytes read from the underlying file, for the progress bar.
pub(crate) struct Counting<R> {
    pub(crate) inner: R,
    pub(crate) counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Yields the records of one input file.
/// Yields the records of one input file.
pub enum RecordReader {
    /// JSON lines from a (possibly decompressing) buffered reader.
    Lines(JsonLines),
    /// Rows of one string column of a parquet or Arrow IPC file.
    Columnar(Box<ColumnRows>),
}

/// An error about the whole input file.
pub(crate) fn input_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Input {
        file: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl RecordReader {
    /// Opens `spec`; `counter` receives the bytes read from disk.
    pub fn open(
        spec: &InputSpec,
        text_field: &str,
        max_record_bytes: usize,
        counter: Arc<AtomicU64>,
    ) -> Result<Self> {
        let path = &spec.path;
        let remote = shared::store::is_remote(path);
        if spec.size == 0 {
            counter.fetch_add(0, Ordering::Relaxed);
            return Err(input_err(
                path,
                "file is empty (0 bytes): an interrupted download?",
            ));
        }
        if matches!(spec.format, Format::Parquet | Format::Arrow) {
            // Their footers need random access: a bucket's object is fetched whole first.
            let file = if remote {
                let (store, name) = shared::store::open_object(&path.to_string_lossy())?;
                store.download_to_tempfile(&name)?
            } else {
                File::open(path).map_err(|e| input_err(path, format!("cannot open: {e}")))?
            };
            return Self::columnar(spec, file, text_field, max_record_bytes, counter);
        }
        let source: Box<dyn Read + Send> = if remote {
            // JSON lines stream from the bucket, never downloaded whole.
            let (store, name) = shared::store::open_object(&path.to_string_lossy())?;
            Box::new(store.reader(&name)?)
        } else {
            Box::new(File::open(path).map_err(|e| input_err(path, format!("cannot open: {e}")))?)
        };
        let counting = Counting {
            inner: source,
            counter: counter.clone(),
        };
        let inner: Box<dyn BufRead + Send> = match spec.format {
            Format::JsonLines => Box::new(BufReader::with_capacity(1 << 20, counting)),
            Format::JsonLinesGz => Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, counting)),
            )),
            Format::JsonLinesZst => {
                let dec = zstd::stream::read::Decoder::new(counting)
                    .map_err(|e| input_err(path, format!("not a zstd stream: {e}")))?;
                Box::new(BufReader::with_capacity(1 << 20, dec))
            }
            Format::Parquet | Format::Arrow => unreachable!("opened above"),
        };
        Ok(RecordReader::Lines(JsonLines::new(inner, max_record_bytes)))
    }

    /// A parquet or Arrow IPC file's rows.
    fn columnar(
        spec: &InputSpec,
        file: File,
        text_field: &str,
        max_record_bytes: usize,
        counter: Arc<AtomicU64>,
    ) -> Result<Self> {
        let (path, size) = (&spec.path, spec.size);
        let rows = if spec.format == Format::Parquet {
            contained(path, "parquet", || {
                ColumnRows::parquet(path, file, size, text_field, max_record_bytes, counter)
            })?
        } else {
            let counting = Counting {
                inner: file,
                counter: counter.clone(),
            };
            contained(path, "Arrow IPC", || {
                ColumnRows::arrow(path, counting, size, text_field, max_record_bytes, counter)
            })?
        };
        Ok(RecordReader::Columnar(Box::new(rows)))
    }

    /// The next record; `Ok(None)` at the end; `Err` when the file itself is unreadable from here on
    /// (corrupt or truncated compression, I/O error), naming the last good record.
    pub fn next_record(&mut self, path: &Path) -> Result<Option<RawRecord>> {
        match self {
            RecordReader::Lines(lines) => lines.next_record(path),
            RecordReader::Columnar(rows) => rows.next_record(path),
        }
    }
}
