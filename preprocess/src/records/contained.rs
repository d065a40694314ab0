//! Panic containment for third-party decoders run on untrusted bytes.

use super::input_err;
use crate::error::Result;
use std::path::Path;

/// Runs a third-party decoder (arrow, parquet) on untrusted bytes, turning a panic inside it into
/// an error naming the file. Some corrupt inputs make those crates panic (e.g. a buffer length
/// past the end of the file in an Arrow IPC message, found by fuzzing) rather than return an
/// error; the panic message is kept off stderr.
pub(super) fn contained<T>(
    path: &Path,
    kind: &str,
    decode: impl FnOnce() -> Result<T>,
) -> Result<T> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode));
    QUIET.with(|q| q.set(false));
    outcome.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        Err(input_err(
            path,
            format!("corrupt {kind} data (the {kind} decoder failed: {why})"),
        ))
    })
}
