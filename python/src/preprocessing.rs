//! The preprocessing pipeline from Python: the CLI's `preprocess` as a function and as a console
//! script. The work runs on Rust threads with the GIL released; the calling thread waits in short
//! slices and checks Python's signals in between, so Ctrl-C stops the run cleanly (committed
//! shards kept, the same call resumes) and then raises `KeyboardInterrupt`.

use crate::errors::preprocess_to_py;
use ::preprocess::cli::{Cli, RunArgs};
use clap::Parser;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs `work` on a new thread while this thread keeps answering Python's signals. On Ctrl-C the
/// flag given to `work` is set, `work` is awaited (it stops after its in-flight work) and the
/// `KeyboardInterrupt` is raised.
fn run_interruptibly<T: Send + 'static>(
    py: Python<'_>,
    work: impl FnOnce(&AtomicBool) -> T + Send + 'static,
) -> PyResult<T> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(work(&flag));
    });
    let mut pending_signal: Option<PyErr> = None;
    loop {
        let waited = py.detach(|| rx.recv_timeout(Duration::from_millis(100)));
        match waited {
            Ok(result) => {
                return match pending_signal {
                    Some(err) => Err(err),
                    None => Ok(result),
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(PyValueError::new_err("preprocessing thread panicked"))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if pending_signal.is_none() {
                    if let Err(e) = py.check_signals() {
                        interrupted.store(true, Ordering::SeqCst);
                        eprintln!(
                            "\ninterrupt: stopping after in-flight work; committed shards are kept"
                        );
                        pending_signal = Some(e);
                    }
                }
            }
        }
    }
}

/// Tokenizes `inputs` (files or directories, walked in sorted order) into a shard set in `out`,
/// exactly as the `preprocess` command does, and returns its summary. `settings` are the
/// command's flags by name (`RunArgs::with_settings`: its defaults, grammar and refusals); see
/// the package docs.
#[pyfunction]
#[pyo3(signature = (inputs, out, settings = None))]
#[pyo3(name = "preprocess")]
pub fn preprocess_files<'py>(
    py: Python<'py>,
    inputs: Vec<PathBuf>,
    out: PathBuf,
    settings: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let settings = match settings {
        Some(s) => crate::convert::kwargs_to_json(s)?,
        None => Default::default(),
    };
    let args = RunArgs::with_settings(inputs, out, settings).map_err(preprocess_to_py)?;
    let cfg = args.into_config().map_err(preprocess_to_py)?;
    let (out_dir, out_url) = (cfg.out.clone(), cfg.upload_to.clone());
    let outcome = run_interruptibly(py, move |flag| ::preprocess::job::preprocess(&cfg, flag))?
        .map_err(preprocess_to_py)?;
    let m = &outcome.manifest;
    let dict = PyDict::new(py);
    // A bucket URL stays a string (pathlib would fold its "//").
    match out_url {
        Some(url) => dict.set_item("out", url)?,
        None => dict.set_item("out", out_dir)?,
    }
    dict.set_item("documents", m.totals.documents)?;
    dict.set_item("tokens", m.totals.tokens)?;
    dict.set_item("shards", m.shards.len())?;
    dict.set_item("already_done", outcome.already_done)?;
    dict.set_item("summary", outcome.summary)?;
    Ok(dict)
}

/// The `preprocess` command line (`argv` without the program name): preprocessing, `merge` and
/// `inspect`, with the binary's flags, help and messages. Returns the exit status.
#[pyfunction]
pub fn preprocess_cli(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    let cli = match Cli::try_parse_from(std::iter::once("preprocess".to_string()).chain(argv)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Ok(e.exit_code());
        }
    };
    let result = run_interruptibly(py, move |flag| ::preprocess::command::run(cli, flag))?;
    Ok(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                ::preprocess::Error::Interrupted(_) => 130,
                _ => 1,
            }
        }
    })
}
