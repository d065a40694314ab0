//! Rust errors as Python exceptions: I/O and object-store failures as `OSError`, everything else (bad formats,
//! options, schedules, tokenizers) as `ValueError`, with the Rust message, which names the file.

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::PyErr;

/// A `shared` error as a Python exception.
pub fn to_py(e: shared::Error) -> PyErr {
    match e {
        shared::Error::Io { .. } | shared::Error::Remote { .. } => {
            PyOSError::new_err(e.to_string())
        }
        other => PyValueError::new_err(other.to_string()),
    }
}

/// A `preprocess` error as a Python exception.
pub fn preprocess_to_py(e: ::preprocess::Error) -> PyErr {
    match e {
        ::preprocess::Error::Shared(inner) => to_py(inner),
        ::preprocess::Error::Interrupted(msg) => {
            PyKeyboardInterrupt::new_err(format!("interrupted: {msg}"))
        }
        other => PyValueError::new_err(other.to_string()),
    }
}
