//! Arrow IPC: the stream format HuggingFace `datasets` writes, or the file format.

use super::columnar::{text_column, Batches, ColumnRows};
use super::{input_err, Counting};
use crate::error::Result;
use arrow_schema::{ArrowError, Schema};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

impl ColumnRows {
    /// Rows of the Arrow IPC file read through `input` (bytes counted as read): the stream
    /// format HuggingFace `datasets` writes, or the file format (`ARROW1` magic).
    pub(super) fn arrow(
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
}
