//! Values between Python and Rust: JSON-shaped settings both ways, byte sizes, path arguments.

use crate::errors::to_py;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// A JSON value as the Python object `json.loads` would give.
pub fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?
        .call_method1("loads", (serde_json::to_string(v).expect("serializes"),))
}

/// Keyword arguments as a JSON object (paths become strings), for serde to read.
pub fn kwargs_to_json(
    kwargs: &Bound<'_, PyDict>,
) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    let py = kwargs.py();
    let fspath = py.import("os")?.getattr("fspath")?;
    let text: String = py
        .import("json")?
        .call_method(
            "dumps",
            (kwargs,),
            Some(&[("default", fspath)].into_py_dict(py)?),
        )?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

use pyo3::types::IntoPyDict;

/// A byte count from Python: an int, or a size string in `shared::size`'s grammar (`"512MiB"`,
/// `"4G"` = 4 GiB, `"5GB"` = 5 * 10^9).
#[derive(FromPyObject)]
pub enum SizeArg {
    Int(u64),
    Text(String),
}

impl SizeArg {
    /// The size in bytes.
    pub fn bytes(self) -> PyResult<u64> {
        match self {
            SizeArg::Int(n) => Ok(n),
            SizeArg::Text(s) => shared::size::parse_size(&s).map_err(to_py),
        }
    }
}

/// One directory or a list of them.
#[derive(FromPyObject)]
pub enum ShardPaths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl ShardPaths {
    /// The directories as a list.
    pub fn into_vec(self) -> Vec<PathBuf> {
        match self {
            ShardPaths::One(p) => vec![p],
            ShardPaths::Many(v) => v,
        }
    }
}
