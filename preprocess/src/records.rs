//! Reading records out of input files: JSON lines (plain, gzip, zstd) and parquet rows.
//!
//! Readers only split the input into raw records (bytes of one JSON line, or the string of one
//! parquet row); JSON parsing happens later on the worker threads. A record longer than
//! `max_record_bytes` is reported without ever being held in memory whole.

use crate::error::{Error, Result};
use crate::input::{Format, InputSpec};
use arrow_array::{Array, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use arrow_schema::{ArrowError, DataType, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
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
struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Yields the records of one input file.
pub enum RecordReader {
    /// JSON lines from a (possibly decompressing) buffered reader.
    Lines {
        inner: Box<dyn BufRead + Send>,
        line: u64,
        max_record_bytes: usize,
    },
    /// Rows of one string column of a parquet or Arrow IPC file.
    Columnar(Box<ColumnRows>),
}

/// Record batches of a columnar file.
type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>;

/// State of a columnar read (parquet or Arrow IPC): the batch iterator and the current batch's
/// texts.
pub struct ColumnRows {
    batches: Batches,
    /// The text column's index in each batch.
    column: usize,
    /// "parquet" or "Arrow IPC", for messages.
    kind: &'static str,
    pending: std::collections::VecDeque<Option<String>>,
    row: u64,
    /// Parquet is read by row group, so its bytes are reported in proportion to the rows done
    /// (rows in the file, file size); Arrow IPC is counted as it is read.
    proportional: Option<(u64, u64)>,
    reported: u64,
    counter: Arc<AtomicU64>,
    max_record_bytes: usize,
}

/// Runs a third-party decoder (arrow, parquet) on untrusted bytes, turning a panic inside it into
/// an error naming the file. Some corrupt inputs make those crates panic (e.g. a buffer length
/// past the end of the file in an Arrow IPC message, found by fuzzing) rather than return an
/// error; the panic message is kept off stderr.
fn contained<T>(path: &Path, kind: &str, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode));
    QUIET.with(|q| q.set(false));
    outcome.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        Err(input_err(
            path,
            format!("corrupt {kind} data (the {kind} decoder failed: {why})"),
        ))
    })
}

fn input_err(path: &Path, msg: impl Into<String>) -> Error {
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
        let file = File::open(path).map_err(|e| input_err(path, format!("cannot open: {e}")))?;
        if spec.size == 0 {
            counter.fetch_add(0, Ordering::Relaxed);
            return Err(input_err(
                path,
                "file is empty (0 bytes): an interrupted download?",
            ));
        }
        let counting = Counting {
            inner: file,
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
            Format::Parquet => {
                let (file, size) = (counting.inner, spec.size);
                let rows = contained(path, "parquet", || {
                    ColumnRows::parquet(path, file, size, text_field, max_record_bytes, counter)
                })?;
                return Ok(RecordReader::Columnar(Box::new(rows)));
            }
            Format::Arrow => {
                let size = spec.size;
                let rows = contained(path, "Arrow IPC", || {
                    ColumnRows::arrow(path, counting, size, text_field, max_record_bytes, counter)
                })?;
                return Ok(RecordReader::Columnar(Box::new(rows)));
            }
        };
        Ok(RecordReader::Lines {
            inner,
            line: 0,
            max_record_bytes,
        })
    }

    /// The next record; `Ok(None)` at the end; `Err` when the file itself is unreadable from here on
    /// (corrupt or truncated compression, I/O error), naming the last good record.
    pub fn next_record(&mut self, path: &Path) -> Result<Option<RawRecord>> {
        match self {
            RecordReader::Lines {
                inner,
                line,
                max_record_bytes,
            } => loop {
                *line += 1;
                let mut buf = Vec::new();
                match read_line_limited(inner.as_mut(), &mut buf, *max_record_bytes) {
                    Ok(LineRead::Eof) => return Ok(None),
                    Ok(LineRead::Line) => {
                        if buf.iter().all(|b| b.is_ascii_whitespace()) {
                            continue; // blank lines are not records
                        }
                        return Ok(Some(RawRecord { record: *line, payload: Payload::Json(buf) }));
                    }
                    Ok(LineRead::TooLong(len)) => {
                        return Ok(Some(RawRecord {
                            record: *line,
                            payload: Payload::Bad(format!("record is {len} bytes, over the --max-record-bytes limit of {max_record_bytes}")),
                        }))
                    }
                    Err(e) => {
                        let what = match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => "truncated or corrupt compressed data".to_string(),
                            _ => e.to_string(),
                        };
                        return Err(Error::Record { file: path.to_path_buf(), record: *line, msg: format!("cannot read past this line: {what}") });
                    }
                }
            },
            RecordReader::Columnar(rows) => rows.next_record(path),
        }
    }
}

enum LineRead {
    Eof,
    Line,
    TooLong(usize),
}

/// Reads one `\n`-terminated line into `buf` (without the terminator). A line over `max` bytes is
/// consumed and discarded, and its length returned.
fn read_line_limited(
    r: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut total = 0usize;
    let mut any = false;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if total + take <= max {
            buf.extend_from_slice(&available[..take]);
        } else {
            buf.clear();
        }
        total += take;
        r.consume(take + done as usize);
        if done {
            break;
        }
    }
    if !any {
        return Ok(LineRead::Eof);
    }
    if buf.last() == Some(&b'\r') && total <= max {
        buf.pop();
    }
    Ok(if total > max {
        LineRead::TooLong(total)
    } else {
        LineRead::Line
    })
}

/// The index of the string column `text_field` in `schema`, or an error naming the columns.
fn text_column(path: &Path, schema: &Schema, text_field: &str) -> Result<usize> {
    let (index, field) = schema.column_with_name(text_field).ok_or_else(|| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        input_err(
            path,
            format!("no column {text_field:?} (columns: {names:?}); choose one with --text-field"),
        )
    })?;
    if !matches!(
        field.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(input_err(
            path,
            format!(
                "column {text_field:?} has type {}, expected a string",
                field.data_type()
            ),
        ));
    }
    Ok(index)
}

impl ColumnRows {
    /// Rows of the parquet file `file` (opened from `path`, `size` bytes); `counter` receives the
    /// bytes read, estimated from the rows done. Only the text column is decoded.
    fn parquet(
        path: &Path,
        file: File,
        size: u64,
        text_field: &str,
        max_record_bytes: usize,
        counter: Arc<AtomicU64>,
    ) -> Result<Self> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| input_err(path, format!("not a readable parquet file: {e}")))?;
        let index = text_column(path, builder.schema(), text_field)?;
        let rows_total = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        let batches = builder
            .with_projection(mask)
            .with_batch_size(1024)
            .build()
            .map_err(|e| input_err(path, format!("cannot read parquet: {e}")))?;
        Ok(ColumnRows {
            batches: Box::new(batches),
            column: 0,
            kind: "parquet",
            pending: Default::default(),
            row: 0,
            proportional: Some((rows_total, size)),
            reported: 0,
            counter,
            max_record_bytes,
        })
    }

    /// Rows of the Arrow IPC file read through `input` (bytes counted as read): the stream
    /// format HuggingFace `datasets` writes, or the file format (`ARROW1` magic).
    fn arrow(
        path: &Path,
        input: Counting<File>,
        size: u64,
        text_field: &str,
        max_record_bytes: usize,
        counter: Arc<AtomicU64>,
    ) -> Result<Self> {
        let mut input = BufReader::with_capacity(1 << 20, input);
        let file_format = input
            .fill_buf()
            .map_err(|e| input_err(path, format!("cannot read: {e}")))?
            .starts_with(b"ARROW1");
        let not_arrow =
            |e: ArrowError| input_err(path, format!("not a readable Arrow IPC file: {e}"));
        // The file format is read through its footer, past the byte counter: its size is reported
        // at the first batch.
        let proportional = file_format.then_some((0, size));
        let (schema, batches): (Arc<Schema>, Batches) = if file_format {
            // The file format's footer is at the end: it needs a seekable file.
            let inner = input.into_inner().inner;
            let reader = arrow_ipc::reader::FileReader::try_new(inner, None).map_err(not_arrow)?;
            (reader.schema(), Box::new(reader))
        } else {
            let reader =
                arrow_ipc::reader::StreamReader::try_new(input, None).map_err(not_arrow)?;
            (reader.schema(), Box::new(reader))
        };
        let column = text_column(path, &schema, text_field)?;
        Ok(ColumnRows {
            batches,
            column,
            kind: "Arrow IPC",
            pending: Default::default(),
            row: 0,
            proportional,
            reported: 0,
            counter,
            max_record_bytes,
        })
    }

    fn next_record(&mut self, path: &Path) -> Result<Option<RawRecord>> {
        while self.pending.is_empty() {
            let kind = self.kind;
            let batches = &mut self.batches;
            let next = contained(path, kind, || Ok(batches.next()))?;
            match next {
                None => {
                    if let Some((_, size)) = self.proportional {
                        self.counter
                            .fetch_add(size - self.reported, Ordering::Relaxed);
                        self.reported = size;
                    }
                    return Ok(None);
                }
                Some(Err(e)) => {
                    return Err(Error::Record {
                        file: path.to_path_buf(),
                        record: self.row + 1,
                        msg: format!("cannot read {} batch: {e}", self.kind),
                    })
                }
                Some(Ok(batch)) => {
                    let col = batch.column(self.column);
                    let any = col.as_any();
                    let texts: Vec<Option<String>> =
                        if let Some(a) = any.downcast_ref::<StringArray>() {
                            a.iter().map(|s| s.map(str::to_owned)).collect()
                        } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
                            a.iter().map(|s| s.map(str::to_owned)).collect()
                        } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
                            a.iter().map(|s| s.map(str::to_owned)).collect()
                        } else {
                            return Err(input_err(
                                path,
                                format!(
                                    "text column has type {}, expected a string",
                                    col.data_type()
                                ),
                            ));
                        };
                    self.pending.extend(texts);
                    if let Some((rows_total, size)) = self.proportional {
                        let done = self.row + self.pending.len() as u64;
                        let target = if rows_total == 0 {
                            size
                        } else {
                            (size as u128 * done as u128 / rows_total as u128) as u64
                        };
                        if target > self.reported {
                            self.counter
                                .fetch_add(target - self.reported, Ordering::Relaxed);
                            self.reported = target;
                        }
                    }
                }
            }
        }
        self.row += 1;
        let payload = match self.pending.pop_front().expect("non-empty") {
            None => Payload::Bad("text is null".into()),
            Some(t) if t.len() > self.max_record_bytes => Payload::Bad(format!(
                "record is {} bytes, over the --max-record-bytes limit of {}",
                t.len(),
                self.max_record_bytes
            )),
            Some(t) => Payload::Text(t),
        };
        Ok(Some(RawRecord {
            record: self.row,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r: &[u8] = input;
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_line_limited(&mut r, &mut buf, max).unwrap() {
                LineRead::Eof => return out,
                LineRead::Line => out.push(String::from_utf8(buf).unwrap()),
                LineRead::TooLong(n) => out.push(format!("<{n}>")),
            }
        }
    }

    #[test]
    fn splits_lines_and_reports_overlong_ones_without_keeping_them() {
        assert_eq!(lines(b"ab\ncd\r\nlast", 10), ["ab", "cd", "last"]);
        assert_eq!(
            lines(b"short\nthis is too long\nok\n", 6),
            ["short", "<16>", "ok"]
        );
        assert_eq!(lines(b"", 6), Vec::<String>::new());
    }
}
