//! A small mutation fuzzer on stable Rust for every reader of outside bytes (feature
//! `test-support`): random bytes and mutations of real valid files (bit flips, interesting bytes,
//! truncation, splices, duplicated and inserted runs, numbers replaced by huge, negative or NaN
//! ones), each written to a file and handed to the reader under test.
//!
//! The property checked for every case: no panic, no hang (a watchdog aborts a case running over
//! [`CASE_LIMIT`]), no allocation beyond [`ALLOC_LIMIT`] (through [`CountingAlloc`], which the
//! test binary installs as its global allocator), and either success or an error whose message
//! names the file. A failing input is saved under `target/fuzz-failures/` for a regression
//! fixture.
//!
//! Each target runs for `MASKRATE_FUZZ_SECS` seconds (default 2: the bounded CI run); the long
//! run is the same tests with a larger budget, e.g.
//! `MASKRATE_FUZZ_SECS=300 cargo test --release --workspace fuzz_`.

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest a single case may run before the watchdog aborts the process.
pub const CASE_LIMIT: Duration = Duration::from_secs(20);
/// Most bytes a single case may have allocated at once (live), beyond what was live before it.
pub const ALLOC_LIMIT: usize = 512 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that tracks live and peak bytes; install it in a fuzz test binary with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
pub struct CountingAlloc;

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// What a fuzz target reported.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Cases run.
    pub cases: u64,
    /// Cases the reader accepted.
    pub accepted: u64,
    /// CPU-side wall time spent.
    pub seconds: f64,
}

/// Seconds per target: `MASKRATE_FUZZ_SECS`, default 2.
pub fn budget() -> Duration {
    Duration::from_secs_f64(
        std::env::var("MASKRATE_FUZZ_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0),
    )
}

/// Fuzzes `read` for [`budget`] seconds. Each case's bytes are written to a file named
/// `file_name` in a fresh directory, `prepare(dir)` may add companion files (e.g. a valid
/// manifest next to a fuzzed index), then `read(path)` must return `Ok` or an `Err` naming the
/// file (`file_name`, or its directory). `seeds` are valid files to mutate.
/// Kept whole: the watchdog, one case (write, read, check) and the report read in order.
pub fn fuzz(
    target: &str,
    file_name: &str,
    seeds: &[Vec<u8>],
    prepare: &dyn Fn(&Path),
    read: &dyn Fn(&Path) -> Result<(), String>,
) -> Report {
    let deadline = budget();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(
        std::env::var("MASKRATE_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed),
    );
    let started_ns = std::sync::Arc::new(AtomicU64::new(0));
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let watchdog = {
        let (started_ns, done) = (started_ns.clone(), done.clone());
        let target = target.to_string();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let s = started_ns.load(Ordering::Relaxed);
                if s > 0 && clock.elapsed().as_nanos() as u64 - s > CASE_LIMIT.as_nanos() as u64 {
                    eprintln!("fuzz {target}: a case ran over {CASE_LIMIT:?} (input saved as last-case); aborting");
                    std::process::abort();
                }
            }
        })
    };
    let root = tempfile::tempdir().expect("temporary directory");
    let (mut cases, mut accepted) = (0u64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed() < deadline || cases < 50 {
        let bytes = mutate(&mut rng, seeds);
        let dir = root.path().join(format!("case-{}", cases % 4));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("case directory");
        let path = dir.join(file_name);
        std::fs::write(&path, &bytes).expect("case file");
        save_last(target, file_name, &bytes);
        prepare(&dir);
        let live_before = LIVE.load(Ordering::Relaxed);
        PEAK.store(live_before, Ordering::Relaxed);
        started_ns.store(clock.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&path)));
        started_ns.store(0, Ordering::Relaxed);
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(live_before);
        let fail = |why: String| -> ! {
            let saved = save_failure(target, file_name, &bytes);
            panic!("fuzz {target}: {why}; input saved as {}", saved.display());
        };
        match outcome {
            Err(_) => fail("the reader panicked".into()),
            Ok(Ok(())) => accepted += 1,
            Ok(Err(msg)) => {
                let names = msg.contains(file_name) || msg.contains(&dir.display().to_string());
                if !names {
                    fail(format!("an error that does not name the file: {msg}"));
                }
            }
        }
        if peak > ALLOC_LIMIT {
            fail(format!(
                "a case allocated {peak} bytes at once (limit {ALLOC_LIMIT})"
            ));
        }
        cases += 1;
    }
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let report = Report {
        cases,
        accepted,
        seconds: t0.elapsed().as_secs_f64(),
    };
    eprintln!(
        "fuzz {target}: {} cases ({} accepted) in {:.1} s, 0 failures",
        report.cases, report.accepted, report.seconds
    );
    report
}

fn failure_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures")
}

fn save_last(target: &str, file_name: &str, bytes: &[u8]) {
    if std::env::var_os("MASKRATE_FUZZ_KEEP_LAST").is_some() {
        let dir = failure_dir();
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{target}-last-case-{file_name}")), bytes);
    }
}

fn save_failure(target: &str, file_name: &str, bytes: &[u8]) -> PathBuf {
    let dir = failure_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{file_name}"));
    let _ = std::fs::write(&path, bytes);
    path
}

/// One fuzz input: random bytes, or one to four mutations of a seed.
/// Kept whole: one match arm per kind of mutation, the list a reader checks at a glance.
pub fn mutate(rng: &mut impl Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let pick = |rng: &mut dyn FnMut() -> u64, n: usize| (rng() % n.max(1) as u64) as usize;
    let mut next = || rng.next_u64();
    if seeds.is_empty() || pick(&mut next, 10) == 0 {
        let len = pick(&mut next, 512);
        return (0..len).map(|_| next() as u8).collect();
    }
    let mut b = seeds[pick(&mut next, seeds.len())].clone();
    for _ in 0..1 + pick(&mut next, 4) {
        let len = b.len();
        match pick(&mut next, 9) {
            0 if len > 0 => {
                let i = pick(&mut next, len);
                b[i] ^= 1 << pick(&mut next, 8);
            }
            1 if len > 0 => {
                let i = pick(&mut next, len);
                b[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'\n', b'\\', b'{', b'\t'][pick(&mut next, 9)];
            }
            2 => b.truncate(pick(&mut next, len + 1)),
            3 if len > 0 => {
                // Splice: a run of another seed in place of a run of this one.
                let other = &seeds[pick(&mut next, seeds.len())];
                if !other.is_empty() {
                    let (s, n) = (pick(&mut next, other.len()), 1 + pick(&mut next, 64));
                    let piece = other[s..(s + n).min(other.len())].to_vec();
                    let at = pick(&mut next, len);
                    let end = (at + piece.len()).min(len);
                    b.splice(at..end, piece);
                }
            }
            4 if len > 0 => {
                let (s, n) = (pick(&mut next, len), 1 + pick(&mut next, 256));
                let piece = b[s..(s + n).min(len)].to_vec();
                let at = pick(&mut next, len);
                b.splice(at..at, piece);
            }
            5 => {
                let at = pick(&mut next, len + 1);
                let n = 1 + pick(&mut next, 32);
                let piece: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                b.splice(at..at, piece);
            }
            6 if len > 0 => {
                // A number (ASCII digits) replaced by an extreme one.
                let at = pick(&mut next, len);
                if let Some(start) = (at..len).find(|&i| b[i].is_ascii_digit()) {
                    let end = (start..len)
                        .find(|&i| !b[i].is_ascii_digit())
                        .unwrap_or(len);
                    let with: &[u8] = [
                        &b"-1"[..],
                        b"NaN",
                        b"1e400",
                        b"-0",
                        b"18446744073709551616",
                        b"4294967296",
                        b"9223372036854775807",
                        b"0",
                    ][pick(&mut next, 8)];
                    b.splice(start..end, with.iter().copied());
                }
            }
            7 if len >= 8 => {
                // A little-endian length or count field set to a huge value.
                let at = pick(&mut next, len - 7);
                let v: u64 = [u64::MAX, u32::MAX as u64, 1 << 40, 1 << 31][pick(&mut next, 4)];
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                let at = pick(&mut next, len + 1);
                b.truncate(at);
            }
        }
    }
    b
}
