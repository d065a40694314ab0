//! Parquet: only the text column is decoded, 1024 rows at a time.

use super::columnar::{text_column, ColumnRows};
use super::input_err;
use crate::error::Result;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

impl ColumnRows {
    /// Rows of the parquet file `file` (opened from `path`, `size` bytes); `counter` receives the
    /// bytes read, estimated from the rows done. Only the text column is decoded.
    pub(super) fn parquet(
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
}
