//! `Shards`: a shard directory (or several read as one) opened once, its documents handed out as
//! read-only numpy arrays that are views of the memory map, never copies.

use crate::convert::{ShardPaths, SizeArg};
use crate::errors::to_py;
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyIndexError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use shared::shard::{ShardSet, TokenDtype, Tokens};
use shared::store::{is_remote, CacheConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// A shard set made by `preprocess`: `len(shards)` documents, `shards[i]` the token ids of
/// document `i` as a read-only numpy array (`uint16` or `int32`, as stored) whose memory is the
/// shard file's.
#[pyclass(frozen, module = "maskrate._maskrate")]
pub struct Shards {
    dirs: Vec<PathBuf>,
    set: Arc<ShardSet>,
    cache_dir: Option<PathBuf>,
    cache_bytes: Option<u64>,
}

impl Shards {
    /// The open set, shared with samplers built on it.
    pub fn set(&self) -> &Arc<ShardSet> {
        &self.set
    }

    /// The directories, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Opens `dirs` (manifests and index headers checked; with `verify`, every file's SHA-256);
    /// bucket URLs are read through the cache `cache_dir` bounded by `cache_bytes`.
    pub fn open(
        py: Python<'_>,
        dirs: Vec<PathBuf>,
        verify: bool,
        cache_dir: Option<PathBuf>,
        cache_bytes: Option<u64>,
    ) -> PyResult<Self> {
        if let Some(missing) = dirs.iter().find(|d| !is_remote(d) && !d.exists()) {
            return Err(PyFileNotFoundError::new_err(format!(
                "{}: no such shard directory",
                missing.display()
            )));
        }
        let set = py
            .detach(|| {
                let cache = match dirs.iter().any(|d| is_remote(d)) {
                    true => Some(CacheConfig::new(cache_dir.clone(), cache_bytes)?),
                    false => None,
                };
                let set = ShardSet::open_many_cached(&dirs, cache.as_ref())?;
                if verify {
                    set.verify_checksums()?;
                }
                Ok(set)
            })
            .map_err(to_py)?;
        Ok(Shards {
            dirs,
            set: Arc::new(set),
            cache_dir,
            cache_bytes,
        })
    }

    fn index(&self, index: i64) -> PyResult<u64> {
        let n = self.set.len() as i64;
        let i = if index < 0 { index + n } else { index };
        if !(0..n).contains(&i) {
            return Err(PyIndexError::new_err(format!(
                "document {index} out of range for {n} documents"
            )));
        }
        Ok(i as u64)
    }
}

#[pymethods]
impl Shards {
    /// Opens a shard directory made by `preprocess` (or a list of them, read as one set in
    /// order). The manifests and index headers are always checked; `verify=True` also hashes
    /// every shard file against its manifest. A corrupted or foreign directory raises
    /// `ValueError` (or `OSError` for I/O failures) naming the file.
    ///
    /// A path may be a bucket URL (`s3://bucket/shards`, `gs://`, `az://`, `https://`): its
    /// manifest and indexes are fetched at once, each shard file when a document of it is first
    /// read, into the cache `cache_dir` (default `$MASKRATE_CACHE_DIR`, else
    /// `~/.cache/maskrate/shards`) bounded by `cache_bytes` (an int or a size such as `"4G"`).
    #[new]
    #[pyo3(signature = (path, verify = false, cache_dir = None, cache_bytes = None))]
    fn new(
        py: Python<'_>,
        path: ShardPaths,
        verify: bool,
        cache_dir: Option<PathBuf>,
        cache_bytes: Option<SizeArg>,
    ) -> PyResult<Self> {
        let cache_bytes = cache_bytes.map(SizeArg::bytes).transpose()?;
        Shards::open(py, path.into_vec(), verify, cache_dir, cache_bytes)
    }

    fn __len__(&self) -> usize {
        self.set.len() as usize
    }

    /// Document `index` (negative counts from the end) as a read-only numpy view of the map (a
    /// copy for shards in a bucket, whose cached files may be evicted).
    fn __getitem__<'py>(slf: &Bound<'py, Self>, index: i64) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let doc = this.index(index)?;
        if this.set.is_remote() {
            let set = this.set.clone();
            let py = slf.py();
            let ids = py
                .detach(move || set.read_doc(doc).map(|d| d.tokens().to_vec()))
                .map_err(to_py)?;
            return Ok(match this.set.manifests()[0].token_dtype {
                TokenDtype::Uint16 => {
                    let v: Vec<u16> = ids.into_iter().map(|t| t as u16).collect();
                    PyArray1::from_vec(py, v).into_any()
                }
                TokenDtype::Int32 => {
                    let v: Vec<i32> = ids.into_iter().map(|t| t as i32).collect();
                    PyArray1::from_vec(py, v).into_any()
                }
            });
        }
        let tokens = this.set.doc_checked(doc).map_err(to_py)?;
        let owner = slf.clone().into_any();
        // SAFETY: the slice lies in a memory map owned by `this.set`, which `owner` (the array's
        // base object) keeps alive for as long as the array exists; the maps are read-only and
        // never unmapped or remapped while the set lives.
        let array = match tokens {
            Tokens::U16(s) => {
                let a = unsafe { PyArray1::borrow_from_array(&ArrayView1::from(s), owner) };
                a.readwrite().make_nonwriteable();
                a.into_any()
            }
            Tokens::U32(s) => {
                let s: &[i32] = bytemuck::cast_slice(s);
                let a = unsafe { PyArray1::borrow_from_array(&ArrayView1::from(s), owner) };
                a.readwrite().make_nonwriteable();
                a.into_any()
            }
        };
        Ok(array)
    }

    /// Token count of document `index`.
    fn doc_len(&self, index: i64) -> PyResult<usize> {
        Ok(self.set.doc_len(self.index(index)?))
    }

    /// The shard directories, in order.
    #[getter]
    fn paths(&self) -> Vec<PathBuf> {
        self.dirs.clone()
    }

    /// Documents in the set.
    #[getter]
    fn num_documents(&self) -> u64 {
        self.set.len()
    }

    /// Tokens in the set.
    #[getter]
    fn num_tokens(&self) -> u64 {
        self.set.num_tokens()
    }

    /// Shard files (`.bin`/`.idx` pairs).
    #[getter]
    fn num_shards(&self) -> usize {
        self.set.num_shards()
    }

    /// The numpy dtype of the documents: `"uint16"` or `"int32"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.set.manifests()[0].token_dtype {
            TokenDtype::Uint16 => "uint16",
            TokenDtype::Int32 => "int32",
        }
    }

    /// Content fingerprint of the set (changes when any shard is rebuilt).
    #[getter]
    fn fingerprint(&self) -> String {
        self.set.fingerprint()
    }

    /// The tokenizer identity stored in the manifests: `source`, `sha256`, `vocab_size` and the
    /// special token ids.
    #[getter]
    fn tokenizer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::convert::json_to_py(
            py,
            &serde_json::to_value(self.set.tokenizer()).expect("serializes"),
        )
    }

    /// Recomputes every shard file's SHA-256 against its manifest (the GIL released); returns the
    /// number of files checked.
    fn verify(&self, py: Python<'_>) -> PyResult<usize> {
        let set = self.set.clone();
        py.detach(move || set.verify_checksums()).map_err(to_py)
    }

    fn __repr__(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        format!(
            "Shards({:?}, documents={}, tokens={})",
            dirs.join(", "),
            self.set.len(),
            self.set.num_tokens()
        )
    }

    /// Pickled as its paths: a worker process reopens (and maps) the same files.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let cls = py.get_type::<Shards>();
        let this = slf.get();
        let args = (
            this.dirs.clone(),
            false,
            this.cache_dir.clone(),
            this.cache_bytes,
        );
        PyTuple::new(py, [cls.into_any(), args.into_pyobject(py)?.into_any()])
    }
}
