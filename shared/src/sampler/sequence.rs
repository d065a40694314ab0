//! Turning whole-document shards into fixed-length training sequences.
//!
//! - `truncate` (the paper's layout): sequence *j* is document *j*'s first `seq_len - 2` tokens
//!   between [CLS] and [SEP], padded with [PAD].
//! - `pack`: the documents form one stream, each followed by [SEP]; sequence *j* is [CLS], the
//!   stream's tokens `j·(seq_len-2) .. (j+1)·(seq_len-2)`, [SEP]. No padding; the incomplete tail
//!   of the stream is dropped.
//! - `pack-docs`: each document framed as [CLS] doc [SEP], the framed documents one stream; row *j*
//!   is the stream's tokens `j·seq_len .. (j+1)·seq_len`. No padding (the incomplete tail is
//!   dropped); a document longer than a row continues in the next. Each row also tells where its
//!   segments (documents, or a document's continuation) start: the model keeps attention inside
//!   a segment and restarts positions at each.

use crate::error::{Error, Result};
use crate::shard::ShardSet;
use crate::tokenizer::TokenizerInfo;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How documents become sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One document per sequence, cut to fit, padded.
    #[default]
    Truncate,
    /// Documents concatenated with [SEP] separators into full sequences.
    Pack,
    /// Documents each framed by [CLS] … [SEP], packed into full rows with their boundaries kept:
    /// no attention across documents, positions restarting per document.
    #[serde(rename = "pack-docs")]
    PackDocs,
}

impl Layout {
    /// The name `--layout` takes.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Truncate => "truncate",
            Layout::Pack => "pack",
            Layout::PackDocs => "pack-docs",
        }
    }

    /// Special tokens added per document in the packed stream (`pack`: a [SEP]; `pack-docs`:
    /// [CLS] and [SEP]; `truncate` has no stream).
    fn framing(self) -> u64 {
        match self {
            Layout::Truncate => 0,
            Layout::Pack => 1,
            Layout::PackDocs => 2,
        }
    }

    /// Whether rows carry document boundaries the model must honour.
    pub fn has_segments(self) -> bool {
        self == Layout::PackDocs
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "truncate" => Ok(Layout::Truncate),
            "pack" => Ok(Layout::Pack),
            "pack-docs" => Ok(Layout::PackDocs),
            _ => Err(Error::Config(format!(
                "layout {s:?}: expected truncate, pack or pack-docs"
            ))),
        }
    }
}

/// Each token's position within its segment, for `tokens` tokens whose segments start at the
/// ascending flat indices `starts` (the first 0): positions restart at 0 at every start.
pub fn segment_positions(starts: &[u32], tokens: usize) -> Vec<u32> {
    let mut positions = Vec::with_capacity(tokens);
    for (k, &a) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(tokens, |&b| b as usize);
        positions.extend(0..(end - a as usize) as u32);
    }
    positions
}

/// What transformers' packed path reads for `pack-docs` rows (`DataCollatorWithFlattening(
/// return_flash_attn_kwargs=True)`'s inputs): `position_ids`, and `cu_seq_lens_q`/`_k` with
/// `max_length_q`/`_k`, the same for queries and keys. One computation and one set of names for
/// the Python items and `inspect-batch --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedInputs {
    /// Each token's position in its document (`segment_positions`).
    pub position_ids: Vec<u32>,
    /// Cumulative segment lengths over the flattened rows: the starts, then the token count.
    pub cu_seq_lens: Vec<u32>,
    /// The longest segment.
    pub max_length: u32,
}

impl PackedInputs {
    /// The packed inputs of `tokens` tokens whose segments start at `starts`.
    pub fn of(starts: &[u32], tokens: usize) -> Self {
        let mut cu_seq_lens = starts.to_vec();
        cu_seq_lens.push(tokens as u32);
        let max_length = cu_seq_lens
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0);
        PackedInputs {
            position_ids: segment_positions(starts, tokens),
            cu_seq_lens,
            max_length,
        }
    }

    /// The names of the items a batch carries, in transformers' words.
    pub const NAMES: [&'static str; 5] = [
        "position_ids",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    ];
}

/// Fixed-length sequences over a shard set (a clone is another view of the same shards).
#[derive(Clone)]
pub struct Sequences {
    shards: Arc<ShardSet>,
    layout: Layout,
    seq_len: usize,
    cls: u32,
    sep: u32,
    pad: u32,
    /// Truncate layout with a length floor: the documents kept, in order.
    kept_docs: Option<Arc<KeptDocs>>,
    /// First sequence of this view (views split train and held-out sequences).
    offset: u64,
    count: u64,
}

/// The documents kept by `--min-doc-tokens`, as one bit per document plus a running count per
/// 64 documents: 0.25 bytes per document (75 MB for 300M documents, where a list of ids would
/// take 2.4 GB), and the j-th kept document in O(log n).
#[derive(Debug)]
struct KeptDocs {
    /// Bit `d % 64` of word `d / 64`: document `d` is kept.
    words: Vec<u64>,
    /// Kept documents before word `w`.
    before: Vec<u64>,
    count: u64,
}

impl KeptDocs {
    /// Scans `documents` documents (in parallel) with `keep`.
    fn new(documents: u64, keep: impl Fn(u64) -> bool + Sync) -> Self {
        use rayon::prelude::*;
        let words: Vec<u64> = (0..documents.div_ceil(64))
            .into_par_iter()
            .map(|w| {
                (0..64u64)
                    .filter(|b| {
                        let d = w * 64 + b;
                        d < documents && keep(d)
                    })
                    .fold(0u64, |acc, b| acc | 1 << b)
            })
            .collect();
        let mut before = Vec::with_capacity(words.len());
        let mut count = 0u64;
        for w in &words {
            before.push(count);
            count += w.count_ones() as u64;
        }
        KeptDocs {
            words,
            before,
            count,
        }
    }

    fn len(&self) -> u64 {
        self.count
    }

    /// Kept documents before document `d` (`d <= documents`).
    fn rank(&self, d: u64) -> u64 {
        let (w, b) = ((d / 64) as usize, d % 64);
        if w >= self.words.len() {
            return self.count;
        }
        self.before[w] + (self.words[w] & ((1u64 << b) - 1)).count_ones() as u64
    }

    /// The `j`-th kept document (`j < len`).
    fn select(&self, j: u64) -> u64 {
        let w = self.before.partition_point(|&b| b <= j) - 1;
        let mut word = self.words[w];
        for _ in 0..j - self.before[w] {
            word &= word - 1; // drop the lowest set bit
        }
        w as u64 * 64 + word.trailing_zeros() as u64
    }
}

impl Sequences {
    /// Builds the sequence view. `min_doc_tokens` > 1 skips shorter documents (truncate layout only).
    pub fn new(
        shards: Arc<ShardSet>,
        tokenizer: &TokenizerInfo,
        layout: Layout,
        seq_len: usize,
        min_doc_tokens: usize,
    ) -> Result<Self> {
        if seq_len < 3 {
            return Err(Error::Config(format!(
                "--seq-len {seq_len}: needs at least 3 ([CLS], one token, [SEP])"
            )));
        }
        let mut kept_docs = None;
        let count = match layout {
            Layout::Truncate => {
                if min_doc_tokens > 1 {
                    let kept = KeptDocs::new(shards.len(), |d| shards.doc_len(d) >= min_doc_tokens);
                    let n = kept.len();
                    kept_docs = Some(Arc::new(kept));
                    n
                } else {
                    shards.len()
                }
            }
            Layout::Pack | Layout::PackDocs => {
                if min_doc_tokens > 1 {
                    return Err(Error::Config(
                        "--min-doc-tokens applies to the truncate layout only".into(),
                    ));
                }
                (shards.num_tokens() + layout.framing() * shards.len())
                    / Self::row_body(layout, seq_len)
            }
        };
        if count == 0 {
            return Err(Error::Config(format!(
                "the shards ({} documents, {} tokens) give no {layout:?} sequence of length {seq_len}",
                shards.len(),
                shards.num_tokens()
            )));
        }
        Ok(Sequences {
            shards,
            layout,
            seq_len,
            cls: tokenizer.cls_id,
            sep: tokenizer.sep_id,
            pad: tokenizer.pad_id,
            kept_docs,
            offset: 0,
            count,
        })
    }

    /// Splits off the last `held_out` sequences: returns (the rest, the held-out ones).
    pub fn split_tail(self, held_out: u64) -> Result<(Sequences, Sequences)> {
        if held_out == 0 || held_out >= self.count {
            return Err(Error::Config(format!(
                "cannot hold out {held_out} of {} sequences for evaluation (--eval-sequences)",
                self.count
            )));
        }
        let mut tail = Sequences {
            shards: self.shards.clone(),
            kept_docs: self.kept_docs.clone(),
            ..self
        };
        tail.offset = self.offset + self.count - held_out;
        tail.count = held_out;
        let head = Sequences {
            count: self.count - held_out,
            ..self
        };
        Ok((head, tail))
    }

    /// Number of sequences in one epoch.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Always false: construction fails when there is no sequence.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sequence length, special tokens included.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The shard set read.
    pub fn shards(&self) -> &Arc<ShardSet> {
        &self.shards
    }

    /// Stream tokens per row: `seq_len - 2` for `pack` (each row adds [CLS] and [SEP]),
    /// `seq_len` for `pack-docs`.
    fn row_body(layout: Layout, seq_len: usize) -> u64 {
        match layout {
            Layout::PackDocs => seq_len as u64,
            _ => seq_len as u64 - 2,
        }
    }

    /// Writes sequence `j` into `out` (length `seq_len`); returns the unpadded length. Fails on a
    /// token id outside the vocabulary ([`ShardSet::doc_checked`]).
    pub fn fill(&self, j: u64, out: &mut [u32]) -> Result<usize> {
        let mut starts = Vec::new();
        self.fill_segments(j, out, &mut starts)
    }

    /// [`Sequences::fill`], also setting `starts` to the row-relative index where each segment
    /// begins (`[0]` unless the layout is `pack-docs`).
    pub fn fill_segments(&self, j: u64, out: &mut [u32], starts: &mut Vec<u32>) -> Result<usize> {
        debug_assert_eq!(out.len(), self.seq_len);
        debug_assert!(j < self.count);
        starts.clear();
        starts.push(0);
        let j = j + self.offset;
        let body = self.seq_len - 2;
        if self.layout == Layout::PackDocs {
            return self.fill_pack_docs(j, out, starts);
        }
        out[0] = self.cls;
        match self.layout {
            Layout::Truncate => {
                let doc = self.kept_docs.as_ref().map_or(j, |k| k.select(j));
                let held = self.shards.read_doc_span(doc, 0..body)?;
                let tokens = held.tokens();
                let n = tokens.len();
                tokens.copy_to(&mut out[1..1 + n]);
                out[1 + n] = self.sep;
                out[2 + n..].fill(self.pad);
                Ok(n + 2)
            }
            Layout::Pack => {
                let start = j * body as u64;
                let mut doc = self.doc_at_stream(start);
                let mut offset = (start - self.stream_start(doc)) as usize;
                let mut at = 1;
                while at < 1 + body {
                    let held = self
                        .shards
                        .read_doc_span(doc, offset..offset + (1 + body - at))?;
                    let tokens = held.tokens();
                    if !tokens.is_empty() {
                        let n = tokens.len();
                        tokens.copy_to(&mut out[at..at + n]);
                        at += n;
                        offset += n;
                    } else {
                        out[at] = self.sep; // the separator that follows every document
                        at += 1;
                        doc += 1;
                        offset = 0;
                    }
                }
                out[self.seq_len - 1] = self.sep;
                Ok(self.seq_len)
            }
            Layout::PackDocs => unreachable!("handled above"),
        }
    }

    /// Row `j` (absolute) of the `pack-docs` stream, and its segments' starts (`starts` holds 0).
    fn fill_pack_docs(&self, j: u64, out: &mut [u32], starts: &mut Vec<u32>) -> Result<usize> {
        let len = self.seq_len;
        let start = j * len as u64;
        let mut doc = self.doc_at_stream(start);
        // Offset inside the framed document: 0 = [CLS], 1..=n its tokens, n + 1 = [SEP].
        let mut offset = start - self.stream_start(doc);
        let mut at = 0;
        while at < len {
            if offset == 0 {
                if at > 0 {
                    starts.push(at as u32);
                }
                out[at] = self.cls;
                at += 1;
                offset = 1;
                continue;
            }
            let n = self.shards.doc_len(doc) as u64;
            if offset <= n {
                let span = (offset - 1) as usize..(n as usize).min(offset as usize - 1 + len - at);
                let held = self.shards.read_doc_span(doc, span)?;
                let tokens = held.tokens();
                let k = tokens.len();
                tokens.copy_to(&mut out[at..at + k]);
                at += k;
                offset += k as u64;
            } else {
                out[at] = self.sep;
                at += 1;
                doc += 1;
                offset = 0;
            }
        }
        Ok(len)
    }

    /// For each shard `s` of the set, the first sequence of this view that begins in it (clipped to
    /// the view; entry `num_shards` is the view's length): the units of the shard-block order.
    pub fn shard_starts(&self) -> Vec<u64> {
        let set = &self.shards;
        let body = Self::row_body(self.layout, self.seq_len);
        (0..=set.num_shards())
            .map(|s| {
                let first_doc = if s == set.num_shards() {
                    set.len()
                } else {
                    set.shard_docs(s).start
                };
                let absolute = match self.layout {
                    Layout::Truncate => self
                        .kept_docs
                        .as_ref()
                        .map_or(first_doc, |k| k.rank(first_doc)),
                    Layout::Pack | Layout::PackDocs => (set.shard_token_start(s)
                        + self.layout.framing() * first_doc)
                        .div_ceil(body),
                };
                absolute.clamp(self.offset, self.offset + self.count) - self.offset
            })
            .collect()
    }

    /// The shards sequence `j` of this view reads (one, or with packing those its tokens span).
    pub fn shards_of(&self, j: u64) -> std::ops::RangeInclusive<usize> {
        let j = j + self.offset;
        let set = &self.shards;
        match self.layout {
            Layout::Truncate => {
                let doc = self.kept_docs.as_ref().map_or(j, |k| k.select(j));
                let s = set.shard_of(doc);
                s..=s
            }
            Layout::Pack | Layout::PackDocs => {
                let body = Self::row_body(self.layout, self.seq_len);
                let first = set.shard_of(self.doc_at_stream(j * body));
                let last = set.shard_of(self.doc_at_stream((j + 1) * body - 1).min(set.len() - 1));
                first..=last
            }
        }
    }

    /// Position of document `doc`'s first token in the packed stream (documents + their framing
    /// tokens).
    fn stream_start(&self, doc: u64) -> u64 {
        self.shards.doc_token_start(doc) + self.layout.framing() * doc
    }

    /// The document whose tokens or framing tokens hold stream position `p`.
    fn doc_at_stream(&self, p: u64) -> u64 {
        let (mut lo, mut hi) = (0u64, self.shards.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.stream_start(mid) <= p {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }
}

#[cfg(test)]
mod kept_tests {
    use super::KeptDocs;

    #[test]
    fn select_finds_the_jth_kept_document() {
        for (n, sparse) in [
            (1u64, false),
            (63, false),
            (64, false),
            (65, false),
            (1000, false),
            (5000, true),
        ] {
            // Dense, or sparse enough that whole 64-document words keep nothing.
            let keep = |d: u64| {
                if sparse {
                    d % 200 == 7
                } else {
                    d.is_multiple_of(3) || d % 7 == 5
                }
            };
            let kept = KeptDocs::new(n, keep);
            let want: Vec<u64> = (0..n).filter(|&d| keep(d)).collect();
            assert_eq!(kept.len(), want.len() as u64);
            for (j, &d) in want.iter().enumerate() {
                assert_eq!(kept.select(j as u64), d, "n {n} j {j}");
            }
        }
    }
}
