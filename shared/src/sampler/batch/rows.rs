//! Where a step's masked rows go: a [`super::Batch`]'s own arrays, or caller-owned int64/int32
//! arrays ([`BatchOut`], the Python package's path), written one row at a time by the same
//! per-row code ([`RowWriter`]).

use crate::error::{Error, Result};
use crate::sampler::mask::MaskCounts;

/// `a` in chunks of `chunk` values, one per task (`None` for each task when `a` is `None`).
pub(super) fn split_rows(
    a: Option<&mut [i64]>,
    chunk: usize,
    tasks: usize,
) -> Vec<Option<&mut [i64]>> {
    match a {
        Some(a) => a.chunks_mut(chunk).map(Some).collect(),
        None => (0..tasks).map(|_| None).collect(),
    }
}

/// Rows built by one parallel task.
pub(super) const ROWS_PER_TASK: usize = 32;

/// What [`MaskingSampler::batch_into`] tells besides the arrays it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenBatch {
    /// Masking rate used (the schedule's rate at the step; the rows' mean with a distribution).
    pub rate: f64,
    /// Each row's masking rate, as in [`super::Batch::row_rates`].
    pub row_rates: Vec<f64>,
    /// With `--rate-per-document`: each segment's rate, as in [`super::Batch::segment_rates`].
    pub segment_rates: Vec<f64>,
    /// Each row's maskable tokens, as in [`super::Batch::row_maskable`].
    pub row_maskable: Vec<u32>,
    /// Sequence index (within its source's epoch) of each row.
    pub sequence_ids: Vec<u64>,
    /// Source of each row (an index into [`MaskingSampler::source_names`]).
    pub sources: Vec<u16>,
    /// `pack-docs` only: where each segment starts, as in [`Batch::segment_starts`].
    pub segment_starts: Vec<u32>,
    /// What masking did.
    pub counts: MaskCounts,
}

/// What [`MaskingSampler::build`] returns besides the rows it wrote.
pub(super) struct Built {
    pub(super) rate: f64,
    pub(super) row_rates: Vec<f64>,
    pub(super) segment_rates: Vec<f64>,
    pub(super) row_maskable: Vec<u32>,
    pub(super) sequence_ids: Vec<u64>,
    pub(super) sources: Vec<u16>,
    pub(super) masked_positions: Vec<u32>,
    pub(super) segment_starts: Vec<u32>,
    pub(super) counts: MaskCounts,
}

/// One task's rows and the per-row facts that go with them.
pub(super) struct TaskRows<'a, W> {
    pub(super) writer: W,
    pub(super) sequence_ids: &'a mut [u64],
    pub(super) sources: &'a mut [u16],
    /// Each row's rate.
    pub(super) rates: &'a mut [f64],
    /// Each row's maskable tokens.
    pub(super) maskable: &'a mut [u32],
}

/// What one task's rows gave besides the rows themselves: counts, chosen positions, and (with
/// `pack-docs`) segment starts and (per document) their rates, flat indices into the batch.
pub(super) struct RowsBuilt {
    pub(super) counts: MaskCounts,
    pub(super) positions: Vec<u32>,
    pub(super) segment_starts: Vec<u32>,
    pub(super) segment_rates: Vec<f64>,
}

/// Where one task's masked rows are written.
pub(super) trait RowWriter: Send {
    /// Whether the caller wants the masked positions (the trainer's sparse head does; arrays
    /// for a framework do not).
    const POSITIONS: bool = true;

    /// Row `r` of the task's rows: the masked ids, the labels, and `used` real (non-pad) tokens
    /// at the start.
    fn write_row(&mut self, r: usize, ids: &[u32], labels: &[i32], used: usize);
}

/// A [`Batch`]'s arrays, one task's rows of them.
pub(super) struct BatchRows<'a> {
    pub(super) input_ids: &'a mut [u32],
    pub(super) labels: &'a mut [i32],
    pub(super) attention_mask: &'a mut [u8],
}

impl RowWriter for BatchRows<'_> {
    fn write_row(&mut self, r: usize, ids: &[u32], labels: &[i32], used: usize) {
        let len = ids.len();
        let row = r * len..(r + 1) * len;
        self.input_ids[row.clone()].copy_from_slice(ids);
        self.labels[row.clone()].copy_from_slice(labels);
        self.attention_mask[row.start..row.start + used].fill(1);
    }
}

/// The token ids of [`BatchOut`]: int64, or int32 (which an embedding lookup takes as well).
pub enum IdsOut<'a> {
    /// `int64`, PyTorch's default index type.
    I64(&'a mut [i64]),
    /// `int32`: half the bytes.
    I32(&'a mut [i32]),
}

/// Caller-owned arrays for [`MaskingSampler::batch_into`], `[rows · seq_len]` each; an array
/// left `None` is not written. `token_type_ids` is zero-filled (one segment).
#[derive(Default)]
pub struct BatchOut<'a> {
    /// Masked input ids.
    pub input_ids: Option<IdsOut<'a>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Option<&'a mut [i64]>,
    /// Original id at chosen positions, [`super::IGNORE_LABEL`] elsewhere.
    pub labels: Option<&'a mut [i64]>,
    /// All zeros.
    pub token_type_ids: Option<&'a mut [i64]>,
}

impl BatchOut<'_> {
    /// Checks that every array holds `n` values.
    pub(super) fn check(&self, n: usize) -> Result<()> {
        let ids = match &self.input_ids {
            Some(IdsOut::I64(a)) => Some(a.len()),
            Some(IdsOut::I32(a)) => Some(a.len()),
            None => None,
        };
        let lens = [
            ("input_ids", ids),
            (
                "attention_mask",
                self.attention_mask.as_ref().map(|a| a.len()),
            ),
            ("labels", self.labels.as_ref().map(|a| a.len())),
            (
                "token_type_ids",
                self.token_type_ids.as_ref().map(|a| a.len()),
            ),
        ];
        for (name, len) in lens {
            if let Some(len) = len.filter(|&l| l != n) {
                return Err(Error::Config(format!(
                    "output array {name} holds {len} values; the batch has {n}"
                )));
            }
        }
        Ok(())
    }
}

/// One task's rows of a [`BatchOut`].
pub(super) struct WideRows<'a> {
    pub(super) input_ids: Option<IdsOut<'a>>,
    pub(super) attention_mask: Option<&'a mut [i64]>,
    pub(super) labels: Option<&'a mut [i64]>,
    pub(super) token_type_ids: Option<&'a mut [i64]>,
}

impl RowWriter for WideRows<'_> {
    const POSITIONS: bool = false;

    fn write_row(&mut self, r: usize, ids: &[u32], labels: &[i32], used: usize) {
        let len = ids.len();
        let row = r * len..(r + 1) * len;
        match &mut self.input_ids {
            Some(IdsOut::I64(out)) => {
                for (o, &i) in out[row.clone()].iter_mut().zip(ids) {
                    *o = i as i64;
                }
            }
            Some(IdsOut::I32(out)) => {
                for (o, &i) in out[row.clone()].iter_mut().zip(ids) {
                    *o = i as i32;
                }
            }
            None => {}
        }
        if let Some(out) = &mut self.attention_mask {
            out[row.start..row.start + used].fill(1);
            out[row.start + used..row.end].fill(0);
        }
        if let Some(out) = &mut self.labels {
            for (o, &l) in out[row.clone()].iter_mut().zip(labels) {
                *o = l as i64;
            }
        }
        if let Some(out) = &mut self.token_type_ids {
            out[row].fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [u32; 4] = [101, 7, 102, 0];
    const LABELS: [i32; 4] = [-100, 9, -100, -100];

    /// A row of 4 with 3 real tokens, written as the batch's own arrays and as caller-owned
    /// int64/int32 arrays: the same values, widened; padding and token types zero.
    #[test]
    fn both_writers_write_the_same_row() {
        let (mut ids, mut labels, mut mask) = ([5u32; 8], [5i32; 8], [0u8; 8]);
        let mut own = BatchRows {
            input_ids: &mut ids,
            labels: &mut labels,
            attention_mask: &mut mask,
        };
        own.write_row(1, &IDS, &LABELS, 3);
        assert_eq!(
            (&ids[4..], &labels[4..], &mask[..]),
            (&IDS[..], &LABELS[..], &[0, 0, 0, 0, 1, 1, 1, 0][..])
        );
        assert_eq!(ids[..4], [5; 4], "row 0 untouched");

        let (mut wide_ids, mut wide_mask, mut wide_labels, mut types) =
            ([9i32; 4], [9i64; 4], [9i64; 4], [9i64; 4]);
        let mut wide = WideRows {
            input_ids: Some(IdsOut::I32(&mut wide_ids)),
            attention_mask: Some(&mut wide_mask),
            labels: Some(&mut wide_labels),
            token_type_ids: Some(&mut types),
        };
        wide.write_row(0, &IDS, &LABELS, 3);
        assert_eq!(wide_ids, IDS.map(|x| x as i32));
        assert_eq!(wide_labels, LABELS.map(i64::from));
        assert_eq!((wide_mask, types), ([1, 1, 1, 0], [0; 4]));
    }

    #[test]
    fn a_caller_array_of_the_wrong_size_is_refused_by_name() {
        let mut labels = [0i64; 8];
        let out = BatchOut {
            labels: Some(&mut labels),
            ..BatchOut::default()
        };
        out.check(8).unwrap();
        let e = out.check(6).unwrap_err().to_string();
        assert!(e.contains("labels holds 8 values; the batch has 6"), "{e}");
        let mut flat = [0i64; 10];
        let chunks = split_rows(Some(&mut flat), 4, 3);
        assert_eq!(
            chunks
                .iter()
                .map(|c| c.as_ref().unwrap().len())
                .collect::<Vec<_>>(),
            [4, 4, 2]
        );
        assert!(split_rows(None, 4, 3).iter().all(Option::is_none));
    }
}
