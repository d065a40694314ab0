//! The streaming pipeline: reader → tokenizer workers → ordered shard writer.
//!
//! ```text
//! R reader threads ──chunks──▶ N worker threads ──outcomes──▶ writer (calling thread)
//!      ▲                                                        │
//!      └──────────────── tickets (W/R per reader) ◀─────────────┘
//! ```
//! Readers decompress and split records, each taking a ticket per chunk from its own share of
//! the window (R = one per [`WORKERS_PER_READER`] workers, at most one per file); workers parse
//! JSON and tokenize; the writer puts chunks back in input order (file, then chunk), appends
//! documents to shards, commits each full shard and journals the position, then returns the
//! ticket to the chunk's reader. At most W chunks are in flight, so memory is bounded by W × chunk
//! size (plus one shard's index in memory), whatever the corpus. Output order is input order, so
//! bytes do not depend on the number of workers or readers.

use crate::encode::{Encoded, Encoder, Outcome};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::progress::Progress;
use crate::records::Payload;
use crate::records::{RawRecord, RecordReader};
use crate::run_config::RunConfig;
use crate::text_encoder::TextEncoder;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use shared::shard::{ShardWriter, TokenDtype, Totals};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Records per chunk handed to a worker.
pub const CHUNK_RECORDS: usize = 256;
/// Payload bytes per chunk handed to a worker.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A run of consecutive records of one file.
struct Chunk {
    /// Position among the file's chunks, from 0.
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
    encoded: Encoded,
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

/// Tokenizer workers one reader thread keeps busy. One thread decompresses and splits ~375 MB/s
/// of text (gzip, AMD EPYC); one worker tokenizes ~23 MB/s: a reader per 12 workers keeps
/// readers off the critical path with room to spare (BENCHMARKS.md).
pub const WORKERS_PER_READER: usize = 12;

/// Runs the pipeline over `cfg.inputs` from the journal's position; returns the final sink state.
///
/// Files are read by `R` reader threads (file `start + i` by reader `i mod R`), each with its own
/// share of the chunk window, so a reader running ahead on a later file can never starve the one
/// whose file the writer is waiting for.
pub fn tokenize_into_shards<'a>(
    cfg: &'a RunConfig,
    text_encoder: &TextEncoder,
    sink: &mut Sink<'a>,
    progress: &Progress,
    interrupted: &AtomicBool,
) -> Result<()> {
    let workers = cfg.threads.max(1);
    let start_file = sink.journal.next_file;
    let skip_records = sink.journal.next_record;
    let remaining = cfg.inputs.len().saturating_sub(start_file);
    let readers = workers
        .div_ceil(WORKERS_PER_READER)
        .clamp(1, remaining.max(1));
    let per_reader = (4 * workers + 4).div_ceil(readers).max(2);
    let window = per_reader * readers;
    let (work_tx, work_rx) = bounded::<Chunk>(window);
    let (done_tx, done_rx) = bounded::<Done>(window);
    let mut ticket_txs = Vec::with_capacity(readers);
    let mut ticket_rxs = Vec::with_capacity(readers);
    for _ in 0..readers {
        let (tx, rx) = bounded::<()>(per_reader);
        for _ in 0..per_reader {
            tx.send(()).expect("fresh channel");
        }
        ticket_txs.push(tx);
        ticket_rxs.push(rx);
    }
    let stop = AtomicBool::new(false);
    let bytes_read = progress.bytes_counter();
    // Files finished before the resume point count as read.
    bytes_read.fetch_add(
        cfg.inputs[..start_file.min(cfg.inputs.len())]
            .iter()
            .map(|f| f.size)
            .sum(),
        Ordering::Relaxed,
    );

    std::thread::scope(|scope| -> Result<()> {
        for (reader, tickets) in ticket_rxs.into_iter().enumerate() {
            let reader_input = ReaderInput {
                cfg,
                files: (start_file + reader..cfg.inputs.len()).step_by(readers),
                start_file,
                skip_records,
                tickets,
                work_tx: work_tx.clone(),
                bytes_read: bytes_read.clone(),
                stop: &stop,
                interrupted,
            };
            scope.spawn(move || read_files(reader_input));
        }
        drop(work_tx);

        // Workers.
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let mut encoder = Encoder {
                text_encoder,
                text_field: &cfg.output.text_field,
                max_tokens_per_doc: cfg.output.max_tokens_per_doc,
                scratch: Vec::new(),
            };
            scope.spawn(move || {
                for chunk in work_rx.iter() {
                    let encoded = encoder.encode_all(chunk.records);
                    if done_tx
                        .send(Done {
                            seq: chunk.seq,
                            file: chunk.file,
                            encoded,
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
        let tickets = Tickets {
            senders: ticket_txs,
            start_file,
        };
        let result = write_in_order(cfg, sink, &done_rx, &tickets, progress, interrupted);
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(tickets); // unblocks the readers
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

/// What one reader thread needs.
struct ReaderInput<'a> {
    cfg: &'a RunConfig,
    /// Indices (into `cfg.inputs`) of the files this reader reads, in order.
    files: std::iter::StepBy<std::ops::Range<usize>>,
    start_file: usize,
    /// Records of `start_file` already written (resume).
    skip_records: u64,
    tickets: Receiver<()>,
    work_tx: Sender<Chunk>,
    bytes_read: Arc<AtomicU64>,
    stop: &'a AtomicBool,
    interrupted: &'a AtomicBool,
}

/// Returns each chunk's ticket to the reader that sent it.
struct Tickets {
    senders: Vec<Sender<()>>,
    start_file: usize,
}

impl Tickets {
    fn give_back(&self, file: usize) {
        let reader = (file - self.start_file) % self.senders.len();
        let _ = self.senders[reader].send(());
    }
}

/// One reader thread: decompresses and splits its files into chunks, taking a ticket per chunk.
fn read_files(input: ReaderInput<'_>) {
    let ReaderInput {
        cfg,
        files,
        start_file,
        skip_records,
        tickets,
        work_tx,
        bytes_read,
        stop,
        interrupted,
    } = input;
    let send = |chunk: Chunk| -> bool {
        if tickets.recv().is_err()
            || stop.load(Ordering::Relaxed)
            || interrupted.load(Ordering::Relaxed)
        {
            return false;
        }
        work_tx.send(chunk).is_ok()
    };
    for file in files {
        let spec = &cfg.inputs[file];
        let skip = if file == start_file { skip_records } else { 0 };
        // This file's bytes, moved into the shared progress counter chunk by chunk.
        let file_bytes = Arc::new(AtomicU64::new(0));
        let mut reported = 0u64;
        let mut report = |upto: u64| {
            bytes_read.fetch_add(upto.saturating_sub(reported), Ordering::Relaxed);
            reported = reported.max(upto);
        };
        let mut reader = match RecordReader::open(
            spec,
            &cfg.output.text_field,
            cfg.output.max_record_bytes,
            file_bytes.clone(),
        ) {
            Ok(r) => r,
            Err(e) => {
                report(spec.size);
                let chunk = Chunk {
                    seq: 0,
                    file,
                    records: Vec::new(),
                    last: true,
                    error: Some(e),
                };
                if !send(chunk) {
                    return;
                }
                continue;
            }
        };
        let mut seq = 0u64;
        let mut records = Vec::new();
        let mut bytes = 0usize;
        loop {
            if interrupted.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
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
                    Payload::Json(b) => b.len(),
                    Payload::Text(t) => t.len(),
                    Payload::Bad(_) => 0,
                };
                records.push(rec);
            }
            if end || records.len() >= CHUNK_RECORDS || bytes >= CHUNK_BYTES {
                // Exact for this file at its end, even if decoding stopped early.
                report(if end {
                    spec.size
                } else {
                    file_bytes.load(Ordering::Relaxed)
                });
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
}

fn write_in_order(
    cfg: &RunConfig,
    sink: &mut Sink<'_>,
    done_rx: &Receiver<Done>,
    tickets: &Tickets,
    progress: &Progress,
    interrupted: &AtomicBool,
) -> Result<()> {
    // Chunks by (file, sequence number within the file), written in that order.
    let mut pending: BTreeMap<(usize, u64), Done> = BTreeMap::new();
    let mut next = (sink.journal.next_file, 0u64);
    let mut warned = 0usize;
    loop {
        match done_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(done) => {
                pending.insert((done.file, done.seq), done);
            }
            Err(RecvTimeoutError::Timeout) => {
                progress.update(&sink.totals);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Some(done) = pending.remove(&next) {
            next = if done.last {
                (done.file + 1, 0)
            } else {
                (done.file, done.seq + 1)
            };
            let path = &cfg.inputs[done.file].path;
            for (outcome, ids) in done.encoded.iter() {
                match outcome {
                    Outcome::Doc {
                        record, truncated, ..
                    } => {
                        sink.totals.truncated_documents += *truncated as u64;
                        sink.push(done.file, *record, ids)?;
                    }
                    Outcome::Empty { .. } => sink.totals.empty_documents += 1,
                    Outcome::Bad { record, msg } => {
                        let err = Error::Record {
                            file: path.clone(),
                            record: *record,
                            msg: msg.clone(),
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
            tickets.give_back(done.file);
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
