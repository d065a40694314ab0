//! The streaming pipeline: reader → tokenizer workers → ordered shard writer.
//!
//! ```text
//! reader thread ──chunks──▶ N worker threads ──outcomes──▶ writer (calling thread)
//!      ▲                                                        │
//!      └────────────────────── tickets (window W) ◀─────────────┘
//! ```
//! The reader decompresses and splits records, taking a ticket per chunk; workers parse JSON and
//! tokenize; the writer puts chunks back in input order, appends documents to shards, commits
//! each full shard and journals the position, then returns the ticket. At most W chunks are in
//! flight, so memory is bounded by W × chunk size (plus one shard's index in memory), whatever the
//! corpus. Output order is input order, so bytes do not depend on the number of workers.

use crate::encode::{Encoder, Outcome};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::progress::Progress;
use crate::records::{RawRecord, RecordReader};
use crate::run_config::RunConfig;
use crossbeam_channel::{bounded, RecvTimeoutError};
use shared::shard::{ShardWriter, TokenDtype, Totals};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokenizers::Tokenizer;

/// Records per chunk handed to a worker.
pub const CHUNK_RECORDS: usize = 256;
/// Payload bytes per chunk handed to a worker.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A run of consecutive records of one file.
struct Chunk {
    seq: u64,
    file: usize,
    records: Vec<RawRecord>,
    /// This chunk ends the file (normally, or with `error`).
    last: bool,
    /// The file could not be read past these records.
    error: Option<Error>,
}

/// A chunk after tokenization.
struct Done {
    seq: u64,
    file: usize,
    outcomes: Vec<Outcome>,
    last: bool,
    error: Option<Error>,
}

/// Where the writer resumes and what it has written so far.
pub struct Sink<'a> {
    dir: &'a Path,
    dtype: TokenDtype,
    shard_size: u64,
    current: Option<ShardWriter>,
    /// Committed state (journaled at each shard commit).
    pub journal: Journal,
    /// Totals including the open shard.
    pub totals: Totals,
}

impl<'a> Sink<'a> {
    /// Continues from `journal` (empty for a fresh run).
    pub fn new(dir: &'a Path, dtype: TokenDtype, shard_size: u64, journal: Journal) -> Self {
        let totals = journal.totals.clone();
        Sink {
            dir,
            dtype,
            shard_size,
            current: None,
            journal,
            totals,
        }
    }

    fn push(&mut self, file: usize, record: u64, ids: &[u32]) -> Result<()> {
        if self.current.is_none() {
            self.current = Some(ShardWriter::create(
                self.dir,
                self.journal.shards.len(),
                self.dtype,
            )?);
        }
        let w = self.current.as_mut().expect("open shard");
        w.push(ids)?;
        self.totals.documents += 1;
        self.totals.tokens += ids.len() as u64;
        if w.bin_bytes() >= self.shard_size {
            self.commit(file, record)?;
        }
        Ok(())
    }

    /// Commits the open shard (if any) and journals position (`file`, `records_done`).
    pub fn commit(&mut self, file: usize, records_done: u64) -> Result<()> {
        if let Some(w) = self.current.take() {
            let entry = w.finish()?;
            self.journal.shards.push(entry);
        }
        self.journal.next_file = file;
        self.journal.next_record = records_done;
        self.journal.totals = self.totals.clone();
        self.journal.save(self.dir)
    }
}

/// Runs the pipeline over `cfg.inputs` from the journal's position; returns the final sink state.
pub fn tokenize_into_shards<'a>(
    cfg: &'a RunConfig,
    tokenizer: &Tokenizer,
    sink: &mut Sink<'a>,
    progress: &Progress,
    interrupted: &AtomicBool,
) -> Result<()> {
    let workers = cfg.threads.max(1);
    let window = 4 * workers + 4;
    let (work_tx, work_rx) = bounded::<Chunk>(window);
    let (done_tx, done_rx) = bounded::<Done>(window);
    let (ticket_tx, ticket_rx) = bounded::<()>(window);
    for _ in 0..window {
        ticket_tx.send(()).expect("fresh channel");
    }
    let stop = AtomicBool::new(false);
    let bytes_read = progress.bytes_counter();
    let start_file = sink.journal.next_file;
    let skip_records = sink.journal.next_record;
    // Files finished before the resume point count as read.
    bytes_read.fetch_add(
        cfg.inputs[..start_file.min(cfg.inputs.len())]
            .iter()
            .map(|f| f.size)
            .sum(),
        Ordering::Relaxed,
    );

    std::thread::scope(|scope| -> Result<()> {
        // Reader.
        let stop_ref = &stop;
        let reader_bytes = bytes_read.clone();
        scope.spawn(move || {
            let mut seq = 0u64;
            let send = |chunk: Chunk| -> bool {
                if ticket_rx.recv().is_err()
                    || stop_ref.load(Ordering::Relaxed)
                    || interrupted.load(Ordering::Relaxed)
                {
                    return false;
                }
                work_tx.send(chunk).is_ok()
            };
            for (file, spec) in cfg.inputs.iter().enumerate().skip(start_file) {
                let skip = if file == start_file { skip_records } else { 0 };
                let before = reader_bytes.load(Ordering::Relaxed);
                let mut reader = match RecordReader::open(
                    spec,
                    &cfg.output.text_field,
                    cfg.output.max_record_bytes,
                    reader_bytes.clone(),
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        reader_bytes.fetch_add(spec.size, Ordering::Relaxed);
                        if !send(Chunk {
                            seq,
                            file,
                            records: Vec::new(),
                            last: true,
                            error: Some(e),
                        }) {
                            return;
                        }
                        seq += 1;
                        continue;
                    }
                };
                let mut records = Vec::new();
                let mut bytes = 0usize;
                loop {
                    if interrupted.load(Ordering::Relaxed) || stop_ref.load(Ordering::Relaxed) {
                        return;
                    }
                    let (next, error) = match reader.next_record(&spec.path) {
                        Ok(r) => (r, None),
                        Err(e) => (None, Some(e)),
                    };
                    let end = next.is_none();
                    if let Some(rec) = next {
                        if rec.record <= skip {
                            continue;
                        }
                        bytes += match &rec.payload {
                            crate::records::Payload::Json(b) => b.len(),
                            crate::records::Payload::Text(t) => t.len(),
                            crate::records::Payload::Bad(_) => 0,
                        };
                        records.push(rec);
                    }
                    if end || records.len() >= CHUNK_RECORDS || bytes >= CHUNK_BYTES {
                        if end {
                            // Make the progress exact for this file even if decoding stopped early.
                            let read = reader_bytes.load(Ordering::Relaxed) - before;
                            reader_bytes
                                .fetch_add(spec.size.saturating_sub(read), Ordering::Relaxed);
                        }
                        let chunk = Chunk {
                            seq,
                            file,
                            records: std::mem::take(&mut records),
                            last: end,
                            error,
                        };
                        if !send(chunk) {
                            return;
                        }
                        seq += 1;
                        bytes = 0;
                        if end {
                            break;
                        }
                    }
                }
            }
        });

        // Workers.
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let encoder = Encoder {
                tokenizer,
                text_field: &cfg.output.text_field,
                max_tokens_per_doc: cfg.output.max_tokens_per_doc,
            };
            scope.spawn(move || {
                for chunk in work_rx.iter() {
                    let outcomes = chunk
                        .records
                        .into_iter()
                        .map(|r| encoder.encode(r))
                        .collect();
                    if done_tx
                        .send(Done {
                            seq: chunk.seq,
                            file: chunk.file,
                            outcomes,
                            last: chunk.last,
                            error: chunk.error,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);

        // Writer, on this thread.
        let result = write_in_order(cfg, sink, &done_rx, &ticket_tx, progress, interrupted);
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(ticket_tx); // unblocks the reader
        drop(done_rx); // unblocks workers
        result
    })?;
    if interrupted.load(Ordering::Relaxed) {
        return Err(Error::Interrupted(format!(
            "{} shard(s) committed in {}; run the same command again to resume",
            sink.journal.shards.len(),
            cfg.out.display()
        )));
    }
    Ok(())
}

fn write_in_order(
    cfg: &RunConfig,
    sink: &mut Sink<'_>,
    done_rx: &crossbeam_channel::Receiver<Done>,
    ticket_tx: &crossbeam_channel::Sender<()>,
    progress: &Progress,
    interrupted: &AtomicBool,
) -> Result<()> {
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut warned = 0usize;
    loop {
        match done_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(done) => {
                pending.insert(done.seq, done);
            }
            Err(RecvTimeoutError::Timeout) => {
                progress.update(&sink.totals);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Some(done) = pending.remove(&next_seq) {
            next_seq += 1;
            let path = &cfg.inputs[done.file].path;
            for outcome in done.outcomes {
                match outcome {
                    Outcome::Doc {
                        record,
                        ids,
                        truncated,
                    } => {
                        sink.totals.truncated_documents += truncated as u64;
                        sink.push(done.file, record, &ids)?;
                    }
                    Outcome::Empty { .. } => sink.totals.empty_documents += 1,
                    Outcome::Bad { record, msg } => {
                        let err = Error::Record {
                            file: path.clone(),
                            record,
                            msg,
                        };
                        if !cfg.output.skip_bad_records {
                            return Err(err);
                        }
                        sink.totals.bad_records += 1;
                        warn_skipped(&mut warned, &err, progress);
                    }
                }
            }
            if let Some(err) = done.error {
                if !cfg.output.skip_bad_records {
                    return Err(err);
                }
                sink.totals.bad_records += 1;
                warn_skipped(&mut warned, &err, progress);
            }
            if done.last {
                sink.totals.input_bytes += cfg.inputs[done.file].size;
            }
            let _ = ticket_tx.send(());
            progress.update(&sink.totals);
            if interrupted.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }
    if interrupted.load(Ordering::Relaxed) {
        return Ok(());
    }
    if !pending.is_empty() {
        return Err(Error::Usage(
            "internal: pipeline ended with chunks out of order".into(),
        ));
    }
    // Final shard and position at the end of the input list.
    sink.commit(cfg.inputs.len(), 0)
}

fn warn_skipped(warned: &mut usize, err: &Error, progress: &Progress) {
    const MAX_WARNINGS: usize = 20;
    if *warned < MAX_WARNINGS {
        progress.println(&format!("skipped: {err}"));
    } else if *warned == MAX_WARNINGS {
        progress.println("skipped: (further skipped records are counted, not listed)");
    }
    *warned += 1;
}
