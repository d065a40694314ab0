//! Rows of one string column of a columnar file (parquet or Arrow IPC), batch by batch.

use super::{contained, input_err, Payload, RawRecord};
use crate::error::{Error, Result};
use arrow_array::{Array, ArrayRef, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use arrow_schema::{ArrowError, DataType, Schema};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Record batches of a columnar file.
pub(super) type Batches =
    Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>;

/// State of a columnar read (parquet or Arrow IPC): the batch iterator and the current batch's
/// texts.
pub struct ColumnRows {
    pub(super) batches: Batches,
    /// The text column's index in each batch.
    pub(super) column: usize,
    /// "parquet" or "Arrow IPC", for messages.
    pub(super) kind: &'static str,
    pub(super) pending: std::collections::VecDeque<Option<String>>,
    pub(super) row: u64,
    /// Parquet is read by row group, so its bytes are reported in proportion to the rows done
    /// (rows in the file, file size); Arrow IPC is counted as it is read.
    pub(super) proportional: Option<(u64, u64)>,
    pub(super) reported: u64,
    pub(super) counter: Arc<AtomicU64>,
    pub(super) max_record_bytes: usize,
}

/// The index of the string column `text_field` in `schema`, or an error naming the columns.
pub(super) fn text_column(path: &Path, schema: &Schema, text_field: &str) -> Result<usize> {
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

/// The strings of a text column (any of arrow's three string layouts), nulls as `None`.
fn texts_of(path: &Path, col: &ArrayRef) -> Result<Vec<Option<String>>> {
    let any = col.as_any();
    Ok(if let Some(a) = any.downcast_ref::<StringArray>() {
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
    })
}

impl ColumnRows {
    /// Reports the bytes done so far: in proportion to the rows read for parquet, or the whole
    /// file at its end (`at_end`).
    fn report_progress(&mut self, at_end: bool) {
        let Some((rows_total, size)) = self.proportional else {
            return;
        };
        let done = self.row + self.pending.len() as u64;
        let target = if at_end || rows_total == 0 {
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

    /// The next row; `Ok(None)` at the end of the file.
    pub(super) fn next_record(&mut self, path: &Path) -> Result<Option<RawRecord>> {
        while self.pending.is_empty() {
            let kind = self.kind;
            let batches = &mut self.batches;
            match contained(path, kind, || Ok(batches.next()))? {
                None => {
                    self.report_progress(true);
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
                    self.pending
                        .extend(texts_of(path, batch.column(self.column))?);
                    self.report_progress(false);
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
