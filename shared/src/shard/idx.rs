//! The `.idx` file: Megatron-LM's "MMIDIDX" indexed-dataset index, version 1.
//!
//! | offset                 | size            | field                                         |
//! |------------------------|-----------------|-----------------------------------------------|
//! | 0                      | 9               | magic `b"MMIDIDX\x00\x00"`                    |
//! | 9                      | 8 (u64 LE)      | version = 1                                   |
//! | 17                     | 1 (u8)          | dtype code (8 = uint16, 4 = int32)            |
//! | 18                     | 8 (u64 LE)      | sequence count *S*                            |
//! | 26                     | 8 (u64 LE)      | document count *D* (= entries of doc index)   |
//! | 34                     | 4·S (i32 LE)    | sequence lengths, in tokens                   |
//! | 34 + 4S                | 8·S (i64 LE)    | sequence pointers, byte offsets into `.bin`   |
//! | 34 + 12S               | 8·D (i64 LE)    | document index: 0, then each document's end   |
//!
//! maskrate stores one sequence per document, so the document index is `0, 1, …, S` and *D = S + 1*.
//! The `.bin` file is the concatenation of all sequences' little-endian token ids.

use super::TokenDtype;
use crate::error::{Error, Result};
use std::io::Write;
use std::mem::size_of;
use std::path::Path;

/// The magic bytes at the start of every `.idx` file.
pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
/// The only index version Megatron-LM writes and reads.
pub const VERSION: u64 = 1;
/// Offset of the version field.
pub const VERSION_OFFSET: usize = MAGIC.len();
/// Offset of the dtype code.
pub const DTYPE_OFFSET: usize = VERSION_OFFSET + size_of::<u64>();
/// Offset of the sequence count.
pub const SEQUENCE_COUNT_OFFSET: usize = DTYPE_OFFSET + size_of::<u8>();
/// Offset of the document-index length.
pub const DOCUMENT_COUNT_OFFSET: usize = SEQUENCE_COUNT_OFFSET + size_of::<u64>();
/// Size of the fixed header; the sequence-length array starts here.
pub const HEADER_LEN: usize = DOCUMENT_COUNT_OFFSET + size_of::<u64>();

/// Writes a complete index for documents of the given lengths (one sequence per document).
pub fn write_index<W: Write>(mut w: W, dtype: TokenDtype, lengths: &[u32]) -> std::io::Result<()> {
    let n = lengths.len() as u64;
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&[dtype.code()])?;
    w.write_all(&n.to_le_bytes())?;
    w.write_all(&(n + 1).to_le_bytes())?;
    let mut buf = Vec::with_capacity(lengths.len() * size_of::<i64>());
    for &len in lengths {
        buf.extend_from_slice(&(len as i32).to_le_bytes());
    }
    w.write_all(&buf)?;
    buf.clear();
    let mut pointer: i64 = 0;
    for &len in lengths {
        buf.extend_from_slice(&pointer.to_le_bytes());
        pointer += len as i64 * dtype.size() as i64;
    }
    w.write_all(&buf)?;
    buf.clear();
    for doc in 0..=n as i64 {
        buf.extend_from_slice(&doc.to_le_bytes());
    }
    w.write_all(&buf)
}

/// Total size in bytes of an index for `documents` documents.
pub fn index_len(documents: usize) -> usize {
    checked_index_len(documents).expect("index size overflows usize")
}

/// [`index_len`], or `None` when a (corrupted) count makes it overflow.
fn checked_index_len(documents: usize) -> Option<usize> {
    let arrays = documents.checked_mul(size_of::<i32>() + size_of::<i64>())?;
    let doc_index = documents.checked_add(1)?.checked_mul(size_of::<i64>())?;
    HEADER_LEN.checked_add(arrays)?.checked_add(doc_index)
}

/// A validated view of an `.idx` file's bytes (usually a memory map).
#[derive(Debug, Clone, Copy)]
pub struct IndexView<'a> {
    bytes: &'a [u8],
    dtype: TokenDtype,
    sequences: usize,
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> IndexView<'a> {
    /// Checks magic, version, dtype, counts and file length; `path` is only used in errors.
    /// Kept whole: the header fields validated in on-disk order.
    pub fn parse(bytes: &'a [u8], path: &Path) -> Result<Self> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::format(
                path,
                format!(
                    "{} bytes, shorter than the {HEADER_LEN}-byte MMIDIDX header",
                    bytes.len()
                ),
            ));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::format(
                path,
                "bad magic, not a Megatron MMIDIDX index",
            ));
        }
        let version = read_u64(bytes, VERSION_OFFSET);
        if version != VERSION {
            return Err(Error::format(
                path,
                format!("version {version}, expected {VERSION}"),
            ));
        }
        let code = bytes[DTYPE_OFFSET];
        let dtype = TokenDtype::from_code(code).ok_or_else(|| {
            Error::format(
                path,
                format!("dtype code {code}, expected 8 (uint16) or 4 (int32)"),
            )
        })?;
        let sequences = read_u64(bytes, SEQUENCE_COUNT_OFFSET) as usize;
        let documents = read_u64(bytes, DOCUMENT_COUNT_OFFSET) as usize;
        if Some(documents) != sequences.checked_add(1) {
            return Err(Error::format(
                path,
                format!("{documents} document-index entries for {sequences} sequences; maskrate expects one sequence per document"),
            ));
        }
        let expected = checked_index_len(sequences);
        if Some(bytes.len()) != expected {
            return Err(Error::format(
                path,
                format!(
                    "{} bytes, expected {} for {sequences} documents",
                    bytes.len(),
                    expected.map_or("more than fits in memory".into(), |e| e.to_string())
                ),
            ));
        }
        let view = IndexView {
            bytes,
            dtype,
            sequences,
        };
        let last_doc = read_u64(bytes, view.document_index_offset() + sequences * 8);
        if last_doc != sequences as u64 {
            return Err(Error::format(
                path,
                format!("document index ends at {last_doc}, expected {sequences}"),
            ));
        }
        Ok(view)
    }

    /// A view of an index already validated by [`IndexView::parse`] (no checks repeated).
    pub(crate) fn trusted(bytes: &'a [u8], dtype: TokenDtype, sequences: usize) -> Self {
        IndexView {
            bytes,
            dtype,
            sequences,
        }
    }

    /// Token dtype declared by the header.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// Number of documents (sequences).
    pub fn len(&self) -> usize {
        self.sequences
    }

    /// True when the index holds no document.
    pub fn is_empty(&self) -> bool {
        self.sequences == 0
    }

    fn pointer_offset(&self) -> usize {
        HEADER_LEN + self.sequences * size_of::<i32>()
    }

    fn document_index_offset(&self) -> usize {
        self.pointer_offset() + self.sequences * size_of::<i64>()
    }

    /// Length in tokens of document `i`.
    #[inline]
    pub fn length(&self, i: usize) -> usize {
        let at = HEADER_LEN + i * size_of::<i32>();
        i32::from_le_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes")) as usize
    }

    /// Byte offset of document `i` in the `.bin` file.
    #[inline]
    pub fn pointer(&self, i: usize) -> usize {
        read_u64(self.bytes, self.pointer_offset() + i * size_of::<i64>()) as usize
    }

    /// Entry `i` of the document index (0..=len).
    pub fn document_index(&self, i: usize) -> u64 {
        read_u64(
            self.bytes,
            self.document_index_offset() + i * size_of::<i64>(),
        )
    }

    /// Total tokens, from the last document's pointer and length.
    pub fn total_tokens(&self) -> usize {
        if self.sequences == 0 {
            return 0;
        }
        let last = self.sequences - 1;
        (self.pointer(last) / self.dtype.size()).saturating_add(self.length(last))
    }

    /// Index of the document holding token `t` of the shard's token stream (binary search on pointers).
    pub fn document_at_token(&self, t: usize) -> usize {
        let elem = self.dtype.size();
        // partition_point over document indices: first doc whose start is > t, minus one.
        let (mut lo, mut hi) = (0usize, self.sequences);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.pointer(mid) / elem <= t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout, field by field, as Megatron-LM's `_IndexWriter` produces it.
    #[test]
    fn layout_matches_megatron_field_by_field() {
        let lengths = [3u32, 1, 5];
        let mut bytes = Vec::new();
        write_index(&mut bytes, TokenDtype::Uint16, &lengths).unwrap();
        assert_eq!(&bytes[0..9], b"MMIDIDX\x00\x00");
        assert_eq!(u64::from_le_bytes(bytes[9..17].try_into().unwrap()), 1);
        assert_eq!(bytes[17], 8, "uint16 dtype code");
        assert_eq!(
            u64::from_le_bytes(bytes[18..26].try_into().unwrap()),
            3,
            "sequence count"
        );
        assert_eq!(
            u64::from_le_bytes(bytes[26..34].try_into().unwrap()),
            4,
            "document count"
        );
        let i32s: Vec<i32> = (0..3)
            .map(|k| i32::from_le_bytes(bytes[34 + 4 * k..38 + 4 * k].try_into().unwrap()))
            .collect();
        assert_eq!(i32s, [3, 1, 5]);
        let ptr_at = 34 + 12;
        let ptrs: Vec<i64> = (0..3)
            .map(|k| {
                i64::from_le_bytes(
                    bytes[ptr_at + 8 * k..ptr_at + 8 * k + 8]
                        .try_into()
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(ptrs, [0, 6, 8], "byte pointers for 2-byte tokens");
        let doc_at = ptr_at + 24;
        let docs: Vec<i64> = (0..4)
            .map(|k| {
                i64::from_le_bytes(
                    bytes[doc_at + 8 * k..doc_at + 8 * k + 8]
                        .try_into()
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(docs, [0, 1, 2, 3]);
        assert_eq!(bytes.len(), doc_at + 32);
        assert_eq!(bytes.len(), index_len(3));
    }

    #[test]
    fn view_reads_back_and_finds_documents_by_token() {
        let lengths = [3u32, 1, 5];
        let mut bytes = Vec::new();
        write_index(&mut bytes, TokenDtype::Int32, &lengths).unwrap();
        let v = IndexView::parse(&bytes, Path::new("x.idx")).unwrap();
        assert_eq!(v.dtype(), TokenDtype::Int32);
        assert_eq!(v.len(), 3);
        assert_eq!((v.length(2), v.pointer(2)), (5, 16));
        assert_eq!(v.total_tokens(), 9);
        let owners: Vec<usize> = (0..9).map(|t| v.document_at_token(t)).collect();
        assert_eq!(owners, [0, 0, 0, 1, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn view_rejects_each_corruption_with_the_path_and_field() {
        let mut good = Vec::new();
        write_index(&mut good, TokenDtype::Uint16, &[2, 2]).unwrap();
        type Corruption = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Corruption, &str)> = vec![
            (Box::new(|b: &mut Vec<u8>| b[0] = b'X'), "bad magic"),
            (
                Box::new(|b: &mut Vec<u8>| b[9] = 2),
                "version 2, expected 1",
            ),
            (Box::new(|b: &mut Vec<u8>| b[17] = 7), "dtype code 7"),
            (
                Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 1)),
                "expected",
            ),
            (Box::new(|b: &mut Vec<u8>| b.truncate(20)), "shorter than"),
        ];
        for (corrupt, needle) in cases {
            let mut b = good.clone();
            corrupt(&mut b);
            let err = IndexView::parse(&b, Path::new("shard-00003.idx"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("shard-00003.idx: "), "{err}");
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
