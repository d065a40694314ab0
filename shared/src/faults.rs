//! Fault injection for crash and I/O-error tests, inert unless its environment variables are set.
//!
//! Every durable step of maskrate's writers (a file created, fsynced or renamed, a directory
//! renamed, a metrics line appended) calls [`step`] first. Steps are counted from 1 in each
//! process, so a test can stop a run at each of them in turn:
//!
//! - `MASKRATE_KILL_AT=N`: step N SIGKILLs the process (no destructor, no flush runs);
//! - `MASKRATE_FAIL_AT=N`: step N fails with `MASKRATE_FAIL_ERRNO` (`ENOSPC`, the default, or
//!   `EIO`), as a full or failing disk would;
//! - `MASKRATE_FAULT_LOG=FILE`: every step appends `N what path` to FILE (to count a run's steps);
//! - `MASKRATE_NAN_AT_STEP=S`: the trainer's loss at training step S is made NaN on the device
//!   ([`nan_at_step`]), as a diverging run's would be.
//!
//! The tests in `preprocess/tests/faults.rs` and `trainer/tests/faults.rs` sweep these.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Plan {
    kill_at: Option<u64>,
    fail_at: Option<u64>,
    errno: i32,
    log: Option<std::path::PathBuf>,
}

fn plan() -> &'static Option<Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let (kill_at, fail_at) = (num("MASKRATE_KILL_AT"), num("MASKRATE_FAIL_AT"));
        let log = std::env::var_os("MASKRATE_FAULT_LOG").map(Into::into);
        if kill_at.is_none() && fail_at.is_none() && log.is_none() {
            return None;
        }
        let errno = match std::env::var("MASKRATE_FAIL_ERRNO").as_deref() {
            Ok("EIO") => libc::EIO,
            _ => libc::ENOSPC,
        };
        Some(Plan {
            kill_at,
            fail_at,
            errno,
            log,
        })
    })
}

/// The training step whose loss `MASKRATE_NAN_AT_STEP` makes NaN, if set.
pub fn nan_at_step() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| {
        std::env::var("MASKRATE_NAN_AT_STEP")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

/// Marks a durable step (`what` to `path`): counts it and applies the configured fault, if any.
pub fn step(what: &str, path: &Path) -> std::io::Result<()> {
    let Some(plan) = plan() else {
        return Ok(());
    };
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(log) = &plan.log {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{n} {what} {}", path.display());
        }
    }
    if plan.kill_at == Some(n) {
        // SAFETY: sends a signal to this very process; nothing is read or written.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    if plan.fail_at == Some(n) {
        return Err(std::io::Error::from_raw_os_error(plan.errno));
    }
    Ok(())
}
