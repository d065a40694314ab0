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

use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::progress::Progress;
use crate::record_encoder::{Encoded, Encoder, Outcome};
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
    /// Where each committed shard is uploaded (then deleted here), when `--out` is a bucket.
    pub upload: Option<shared::store::Store>,
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
            upload: None,
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
        let mut uploaded = None;
        if let Some(w) = self.current.take() {
            let entry = w.finish()?;
            if let Some(store) = &self.upload {
                // Uploaded before it is journaled: a run killed in between rebuilds and re-uploads
                // the same bytes.
                let paths = shared::shard::pair_paths(self.dir, &entry.name);
                for path in &paths {
                    let name = path.file_name().expect("file name").to_string_lossy();
                    store.upload_file(&name, path)?;
                }
                uploaded = Some(paths);
            }
            self.journal.shards.push(entry);
        }
        self.journal.next_file = file;
        self.journal.next_record = records_done;
        self.journal.totals = self.totals.clone();
        self.journal.save(self.dir)?;
        for path in uploaded.iter().flatten() {
            // Journaled and in the bucket: the local copy is no longer needed.
            std::fs::remove_file(path).map_err(|e| shared::Error::io(path, e))?;
        }
        Ok(())
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
/// Kept whole: the three stages and their channel wiring read best side by side.
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
    let (ticket_txs, ticket_rxs) = ticket_windows(readers, per_reader);
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
            scope.spawn(move || encode_chunks(&mut encoder, &work_rx, &done_tx));
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

/// One window of `per_reader` tickets per reader: a reader takes a ticket per chunk it sends and
/// gets it back when the writer has written that chunk.
fn ticket_windows(readers: usize, per_reader: usize) -> (Vec<Sender<()>>, Vec<Receiver<()>>) {
    (0..readers)
        .map(|_| {
            let (tx, rx) = bounded::<()>(per_reader);
            for _ in 0..per_reader {
                tx.send(()).expect("fresh channel");
            }
            (tx, rx)
        })
        .unzip()
}

/// One worker thread: tokenizes chunks until the readers are done or the writer has stopped.
fn encode_chunks(encoder: &mut Encoder<'_>, work_rx: &Receiver<Chunk>, done_tx: &Sender<Done>) {
    for chunk in work_rx.iter() {
        let encoded = encoder.encode_all(chunk.records);
        let done = Done {
            seq: chunk.seq,
            file: chunk.file,
            encoded,
            last: chunk.last,
            error: chunk.error,
        };
        if done_tx.send(done).is_err() {
            return;
        }
    }
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

impl ReaderInput<'_> {
    /// Whether the run is stopping (an error in the writer, or Ctrl-C).
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.interrupted.load(Ordering::Relaxed)
    }

    /// Sends a chunk once a ticket is free; false when the run is stopping.
    fn send(&self, chunk: Chunk) -> bool {
        if self.tickets.recv().is_err() || self.stopping() {
            return false;
        }
        self.work_tx.send(chunk).is_ok()
    }
}

/// One reader thread: decompresses and splits its files into chunks, taking a ticket per chunk.
fn read_files(input: ReaderInput<'_>) {
    for file in input.files.clone() {
        if !read_file(&input, file) {
            return;
        }
    }
}

/// Sends file `file` as chunks of at most [`CHUNK_RECORDS`] records or [`CHUNK_BYTES`] bytes
/// (records before the resume point skipped); an unreadable file is one chunk carrying the
/// error. Returns false when the run is stopping.
/// Kept whole: one file's open, skip, chunk and progress steps in reading order.
fn read_file(input: &ReaderInput<'_>, file: usize) -> bool {
    let cfg = input.cfg;
    let spec = &cfg.inputs[file];
    let skip = if file == input.start_file {
        input.skip_records
    } else {
        0
    };
    // This file's bytes, moved into the shared progress counter chunk by chunk.
    let file_bytes = Arc::new(AtomicU64::new(0));
    let mut reported = 0u64;
    let mut report = |upto: u64| {
        input
            .bytes_read
            .fetch_add(upto.saturating_sub(reported), Ordering::Relaxed);
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
            return input.send(Chunk {
                seq: 0,
                file,
                records: Vec::new(),
                last: true,
                error: Some(e),
            });
        }
    };
    let mut chunk = ChunkBuffer::default();
    loop {
        if input.stopping() {
            return false;
        }
        let (next, error) = match reader.next_record(&spec.path) {
            Ok(r) => (r, None),
            Err(e) => (None, Some(e)),
        };
        let end = next.is_none();
        match next {
            Some(rec) if rec.record <= skip => continue,
            Some(rec) => chunk.push(rec),
            None => {}
        }
        if end || chunk.is_full() {
            // Exact for this file at its end, even if decoding stopped early.
            report(if end {
                spec.size
            } else {
                file_bytes.load(Ordering::Relaxed)
            });
            if !input.send(chunk.take(file, end, error)) {
                return false;
            }
            if end {
                return true;
            }
        }
    }
}

/// The records of the chunk being filled, and its sequence number within the file.
#[derive(Default)]
struct ChunkBuffer {
    seq: u64,
    records: Vec<RawRecord>,
    bytes: usize,
}

impl ChunkBuffer {
    fn push(&mut self, rec: RawRecord) {
        self.bytes += match &rec.payload {
            Payload::Json(b) => b.len(),
            Payload::Text(t) => t.len(),
            Payload::Bad(_) => 0,
        };
        self.records.push(rec);
    }

    fn is_full(&self) -> bool {
        self.records.len() >= CHUNK_RECORDS || self.bytes >= CHUNK_BYTES
    }

    /// The chunk so far, leaving the buffer empty for the file's next chunk.
    fn take(&mut self, file: usize, last: bool, error: Option<Error>) -> Chunk {
        let chunk = Chunk {
            seq: self.seq,
            file,
            records: std::mem::take(&mut self.records),
            last,
            error,
        };
        (self.seq, self.bytes) = (self.seq + 1, 0);
        chunk
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
        while let Some(mut done) = pending.remove(&next) {
            next = if done.last {
                (done.file + 1, 0)
            } else {
                (done.file, done.seq + 1)
            };
            write_chunk(cfg, sink, &mut done, progress, &mut warned)?;
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

/// Writes one chunk's documents to the sink; a bad record (or a read error ending the file)
/// stops the run unless `--skip-bad-records`, which counts and reports it.
fn write_chunk(
    cfg: &RunConfig,
    sink: &mut Sink<'_>,
    done: &mut Done,
    progress: &Progress,
    warned: &mut usize,
) -> Result<()> {
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
                warn_skipped(warned, &err, progress);
            }
        }
    }
    if let Some(err) = done.error.take() {
        if !cfg.output.skip_bad_records {
            return Err(err);
        }
        sink.totals.bad_records += 1;
        warn_skipped(warned, &err, progress);
    }
    Ok(())
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
