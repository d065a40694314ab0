//! `MaskedBatches`: the trainer's masked batch of any step, as numpy arrays for `BertForMaskedLM`.
//!
//! The batch is built by the same `shared::sampler` code from the same [`DataConfig`] the trainer
//! uses, so step *t* here is byte for byte the trainer's step *t* (or this rank's rows of it).

use crate::errors::to_py;
use crate::schedule::Schedule;
use crate::shards::{ShardPaths, Shards, SizeArg};
use numpy::ndarray::Array2;
use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shared::sampler::{
    Batch, BatchPlan, DataConfig, HeldOutBatches, Layout, MaskVocab, MaskingSampler,
};
use shared::schedule::MaskSchedule;
use shared::shard::ShardSet;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// `shards=`: an open `Shards`, the path(s) to open, or named sources `{name: path(s)}`.
#[derive(FromPyObject)]
pub enum ShardsArg {
    Open(Py<Shards>),
    Named(BTreeMap<String, ShardPaths>),
    Paths(ShardPaths),
}

/// `schedule=`: a spec string or a `Schedule`.
#[derive(FromPyObject)]
pub enum ScheduleArg {
    Spec(String),
    Object(Py<Schedule>),
}

/// The sources of `shards=`: the one unnamed source's open `Shards` (`None` with named sources),
/// the named sources' directories, and the `--shards` arguments they amount to.
type ResolvedShards = (
    Option<Py<Shards>>,
    BTreeMap<String, Vec<PathBuf>>,
    Vec<PathBuf>,
);

impl ShardsArg {
    /// Opens the one unnamed source (through the cache `cache_dir`/`cache_bytes` when remote), or
    /// keeps the named sources' directories for [`DataConfig::open`].
    fn resolve(
        self,
        py: Python<'_>,
        cache_dir: Option<PathBuf>,
        cache_bytes: Option<u64>,
    ) -> PyResult<ResolvedShards> {
        let (shards, named) = match self {
            ShardsArg::Open(s) => (Some(s), BTreeMap::new()),
            ShardsArg::Paths(p) => {
                let open = Shards::open(py, p.into_vec(), false, cache_dir, cache_bytes)?;
                (Some(Py::new(py, open)?), BTreeMap::new())
            }
            ShardsArg::Named(map) => (
                None,
                map.into_iter().map(|(k, v)| (k, v.into_vec())).collect(),
            ),
        };
        let args = match &shards {
            Some(s) => s.get().dirs().to_vec(),
            None => named
                .iter()
                .flat_map(|(name, dirs)| {
                    dirs.iter()
                        .map(move |d| PathBuf::from(format!("{name}={}", d.display())))
                })
                .collect(),
        };
        Ok((shards, named, args))
    }
}

impl ScheduleArg {
    /// The schedule and run length from `schedule=` and `total_steps=` (defaults from `d`); a
    /// `Schedule` object brings its own length, which `total_steps`, if given, must equal.
    fn resolve(
        arg: Option<ScheduleArg>,
        total_steps: Option<u64>,
        d: &DataConfig,
    ) -> PyResult<(MaskSchedule, u64)> {
        Ok(match arg {
            None => (d.schedule, total_steps.unwrap_or(d.steps)),
            Some(ScheduleArg::Spec(s)) => {
                (s.parse().map_err(to_py)?, total_steps.unwrap_or(d.steps))
            }
            Some(ScheduleArg::Object(o)) => {
                let o = o.get();
                if total_steps.is_some_and(|t| t != o.total_steps) {
                    return Err(PyValueError::new_err(format!(
                        "total_steps={} differs from the Schedule's {}",
                        total_steps.unwrap_or_default(),
                        o.total_steps
                    )));
                }
                (o.schedule, o.total_steps)
            }
        })
    }
}

/// What [`open_batches`] builds.
struct Opened {
    sampler: Arc<MaskingSampler>,
    held_out: Vec<(String, HeldOutBatches)>,
    fingerprint: String,
}

/// The sampler, held-out batches and tokenizer fingerprint of `cfg` (over the already open `set`
/// when there is one unnamed source). Runs without the GIL.
fn open_batches(
    cfg: &DataConfig,
    set: Option<Arc<ShardSet>>,
    eval_batch: usize,
) -> shared::Result<Opened> {
    let data = match set {
        Some(set) => cfg.sample_from(set, cfg.eval_sequences)?,
        None => cfg.open()?,
    };
    let vocab = MaskVocab::from_tokenizer(&data.tokenizer);
    let fingerprint = data.fingerprint();
    let held_out = data
        .held_out
        .into_iter()
        .map(|(name, seqs)| Ok((name, HeldOutBatches::new(seqs, vocab.clone(), eval_batch)?)))
        .collect::<shared::Result<Vec<_>>>()?;
    Ok(Opened {
        sampler: data.sampler,
        held_out,
        fingerprint,
    })
}

/// The masked batches of a run. `batch(step)` returns this rank's rows of step `step`'s global
/// batch as a dict of `(rows, seq_len)` int64 arrays: `input_ids`, `attention_mask`,
/// `token_type_ids`, `labels` (-100 where nothing is predicted).
#[pyclass(frozen, module = "maskrate._maskrate")]
pub struct MaskedBatches {
    /// The one unnamed source's shards (`None` with named sources).
    shards: Option<Py<Shards>>,
    /// Named sources: name -> directories (empty with one unnamed source).
    named: BTreeMap<String, Vec<PathBuf>>,
    fingerprint: String,
    config: DataConfig,
    sampler: Arc<MaskingSampler>,
    plan: BatchPlan,
    /// The trainer's held-out evaluation batches (`--eval-sequences`, `--eval-batch`), per
    /// source in name order.
    held_out: Vec<(String, HeldOutBatches)>,
    eval_batch: usize,
    threads: usize,
    /// A rayon pool per process (rebuilt after a fork: a forked child has none of the parent's
    /// threads).
    pool: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>>,
}

impl MaskedBatches {
    fn pool(&self) -> PyResult<Arc<rayon::ThreadPool>> {
        let pid = std::process::id();
        let mut guard = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, pool)) = guard.as_ref() {
            if *owner == pid {
                return Ok(pool.clone());
            }
        }
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads)
                .build()
                .map_err(|e| PyValueError::new_err(format!("thread pool: {e}")))?,
        );
        *guard = Some((pid, pool.clone()));
        Ok(pool)
    }

    fn check_step(&self, step: u64) -> PyResult<()> {
        if step >= self.config.steps {
            return Err(PyValueError::new_err(format!(
                "step {step} is past the end of a {}-step run (steps 0..{})",
                self.config.steps, self.config.steps
            )));
        }
        Ok(())
    }

    /// Builds `slots` of `step`'s global batch with the GIL released.
    fn build(&self, py: Python<'_>, step: u64, slots: Range<usize>) -> PyResult<Batch> {
        self.check_step(step)?;
        let (pool, sampler) = (self.pool()?, self.sampler.clone());
        py.detach(move || pool.install(|| sampler.batch(step, slots)))
            .map_err(to_py)
    }
}

/// `src` widened to int64, written in parallel on `pool` (the pages of a fresh 4 MB array are
/// first touched by whoever writes them: several threads fault them in faster than one).
fn widen<T: Copy + Into<i64> + Sync>(pool: &rayon::ThreadPool, src: &[T]) -> Vec<i64> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let mut out = vec![0i64; src.len()];
    pool.install(|| {
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, s)| {
                for (o, &s) in o.iter_mut().zip(s) {
                    *o = s.into();
                }
            })
    });
    out
}

/// The four model inputs of `b` as int64 `(rows, seq_len)` arrays (token types all 0: a zeroed
/// allocation, never written).
fn to_dict<'py>(
    py: Python<'py>,
    pool: &rayon::ThreadPool,
    b: Batch,
) -> PyResult<Bound<'py, PyDict>> {
    let (rows, len) = (b.rows(), b.seq_len);
    let arrays = py.detach(move || {
        let shape = (rows, len);
        let as_2d = |v: Vec<i64>| Array2::from_shape_vec(shape, v).expect("rows x seq_len");
        (
            as_2d(widen(pool, &b.input_ids)),
            as_2d(widen(pool, &b.attention_mask)),
            as_2d(vec![0; rows * len]),
            as_2d(widen(pool, &b.labels)),
        )
    });
    let dict = PyDict::new(py);
    dict.set_item("input_ids", arrays.0.into_pyarray(py))?;
    dict.set_item("attention_mask", arrays.1.into_pyarray(py))?;
    dict.set_item("token_type_ids", arrays.2.into_pyarray(py))?;
    dict.set_item("labels", arrays.3.into_pyarray(py))?;
    Ok(dict)
}

/// A JSON value as the Python object `json.loads` would give.
pub fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?
        .call_method1("loads", (serde_json::to_string(v).expect("serializes"),))
}

#[pymethods]
impl MaskedBatches {
    /// The batches of a run over `shards` (a `Shards` or shard path(s)). Every keyword is the
    /// trainer's flag of the same name (`--seq-len` is `seq_len`) with the same default, except
    /// `total_steps` (`--steps`); `rank`/`world_size` select one data-parallel rank's rows and
    /// `threads` sizes the pool that builds them (0: all cores).
    #[new]
    #[pyo3(signature = (
        shards, *, mix = None, schedule = None, total_steps = None, batch_size = None, seq_len = None,
        layout = None, min_doc_tokens = None, seed = None, mask_token_fraction = None,
        random_token_fraction = None, mask_exact = None, whole_word = None, eval_sequences = None,
        eval_batch = 64, rank = 0, world_size = 1, threads = 0, order = None, cache_dir = None,
        cache_bytes = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        shards: ShardsArg,
        mix: Option<&str>,
        schedule: Option<ScheduleArg>,
        total_steps: Option<u64>,
        batch_size: Option<usize>,
        seq_len: Option<usize>,
        layout: Option<&str>,
        min_doc_tokens: Option<usize>,
        seed: Option<u64>,
        mask_token_fraction: Option<f64>,
        random_token_fraction: Option<f64>,
        mask_exact: Option<bool>,
        whole_word: Option<bool>,
        eval_sequences: Option<u64>,
        eval_batch: usize,
        rank: usize,
        world_size: usize,
        threads: usize,
        order: Option<&str>,
        cache_dir: Option<PathBuf>,
        cache_bytes: Option<SizeArg>,
    ) -> PyResult<Self> {
        let cache_bytes = cache_bytes.map(SizeArg::bytes).transpose()?;
        let (shards, named, shard_args) = shards.resolve(py, cache_dir.clone(), cache_bytes)?;
        let mix = mix.map(str::parse).transpose().map_err(to_py)?;
        let d = DataConfig::default();
        let (schedule, total_steps) = ScheduleArg::resolve(schedule, total_steps, &d)?;
        let layout: Layout = match layout {
            Some(l) => l.parse().map_err(to_py)?,
            None => d.layout,
        };
        let config = DataConfig {
            shards: shard_args,
            mix,
            schedule,
            steps: total_steps,
            batch_size: batch_size.unwrap_or(d.batch_size),
            seq_len: seq_len.unwrap_or(d.seq_len),
            layout,
            min_doc_tokens: min_doc_tokens.unwrap_or(d.min_doc_tokens),
            seed: seed.unwrap_or(d.seed),
            mask_token_fraction: mask_token_fraction.unwrap_or(d.mask_token_fraction),
            random_token_fraction: random_token_fraction.unwrap_or(d.random_token_fraction),
            mask_exact: mask_exact.unwrap_or(d.mask_exact),
            whole_word: whole_word.unwrap_or(d.whole_word),
            eval_sequences: eval_sequences.unwrap_or(d.eval_sequences),
            order: order
                .map(str::parse)
                .transpose()
                .map_err(to_py)?
                .unwrap_or(d.order),
            cache_dir,
            cache_bytes,
        };
        let plan = BatchPlan::whole_rank(config.batch_size, world_size, rank);
        plan.validate().map_err(to_py)?;
        let set = shards.as_ref().map(|s| s.get().set().clone());
        let cfg = config.clone();
        let Opened {
            sampler,
            held_out,
            fingerprint,
        } = py
            .detach(move || open_batches(&cfg, set, eval_batch))
            .map_err(to_py)?;
        Ok(MaskedBatches {
            shards,
            named,
            fingerprint,
            config,
            sampler,
            plan,
            held_out,
            eval_batch,
            threads,
            pool: Mutex::new(None),
        })
    }

    /// This rank's rows of step `step`'s global batch (the whole batch with one rank); with
    /// `with_sources=True` also `source`, each row's index into `source_names`.
    #[pyo3(signature = (step, with_sources = false))]
    fn batch<'py>(
        &self,
        py: Python<'py>,
        step: u64,
        with_sources: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let b = self.build(py, step, self.plan.rank_slots())?;
        let sources: Vec<i64> = b.sources.iter().map(|&s| s as i64).collect();
        let dict = to_dict(py, &*self.pool()?, b)?;
        if with_sources {
            dict.set_item("source", sources.into_pyarray(py))?;
        }
        Ok(dict)
    }

    /// Micro-batch `index` (of `micro_batch` rows) of this rank's rows of step `step`: the
    /// trainer's gradient-accumulation split.
    fn micro_batch<'py>(
        &self,
        py: Python<'py>,
        step: u64,
        index: usize,
        micro_batch: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let rank_slots = self.plan.rank_slots();
        if micro_batch == 0 || !rank_slots.len().is_multiple_of(micro_batch) {
            return Err(PyValueError::new_err(format!(
                "micro_batch {micro_batch} does not divide this rank's {} rows",
                rank_slots.len()
            )));
        }
        if index >= rank_slots.len() / micro_batch {
            return Err(PyValueError::new_err(format!(
                "micro-batch {index} of {} per step",
                rank_slots.len() / micro_batch
            )));
        }
        let start = rank_slots.start + index * micro_batch;
        let b = self.build(py, step, start..start + micro_batch)?;
        to_dict(py, &*self.pool()?, b)
    }

    /// Held-out batch `index` as the trainer evaluates it: the last `eval_sequences` sequences
    /// (of each source; never in a training batch) in batches of `eval_batch`, masked at a
    /// constant 15% with a fixed seed, the same for every schedule and seed. With named sources,
    /// `source` picks one (default: all, in name order).
    #[pyo3(signature = (index, source = None))]
    fn held_out_batch<'py>(
        &self,
        py: Python<'py>,
        index: u64,
        source: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut rest = index;
        for (name, batches) in &self.held_out {
            if source.is_some_and(|s| s != name) {
                continue;
            }
            if rest < batches.len() {
                let b = py.detach(|| batches.batch(rest)).map_err(to_py)?;
                return to_dict(py, &*self.pool()?, b);
            }
            rest -= batches.len();
        }
        Err(PyValueError::new_err(format!(
            "no held-out batch {index}{} ({} in all; eval_sequences={})",
            source
                .map(|s| format!(" of source {s:?}"))
                .unwrap_or_default(),
            self.num_held_out_batches(source),
            self.config.eval_sequences
        )))
    }

    /// Number of held-out batches (of `source`, or of all sources; 0 when nothing is held out).
    #[pyo3(signature = (source = None))]
    fn num_held_out_batches(&self, source: Option<&str>) -> u64 {
        self.held_out
            .iter()
            .filter(|(name, _)| source.is_none_or(|s| s == name))
            .map(|(_, b)| b.len())
            .sum()
    }

    /// The sources' names, in the order `batch(step, with_sources=True)["source"]` indexes
    /// (`[""]` for one unnamed source).
    #[getter]
    fn source_names(&self) -> Vec<String> {
        self.sampler
            .source_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Each source's normalised weight at `step` and its rows in that step's global batch.
    fn mixture_at(&self, step: u64) -> PyResult<Vec<(String, f64, usize)>> {
        self.check_step(step)?;
        let Some(m) = self.sampler.mixture() else {
            return Ok(vec![(String::new(), 1.0, self.config.batch_size)]);
        };
        Ok(m.names()
            .iter()
            .zip(m.weights_at(step))
            .zip(m.counts(step))
            .map(|((n, w), c)| (n.clone(), w, c))
            .collect())
    }

    /// Epochs of each source read before `step` (a source repeats with a fresh order each epoch).
    fn source_epochs(&self, step: u64) -> Vec<(String, f64)> {
        self.source_names()
            .into_iter()
            .zip(self.sampler.source_epochs_at(step))
            .collect()
    }

    /// The schedule's masking rate at `step`.
    fn rate(&self, step: u64) -> PyResult<f64> {
        self.check_step(step)?;
        Ok(self.sampler.rate_at(step))
    }

    /// The epoch (0-based) step `step` starts in.
    fn epoch_at(&self, step: u64) -> u64 {
        self.sampler.epoch_at(step)
    }

    /// Length of the run (`--steps`).
    #[getter]
    fn total_steps(&self) -> u64 {
        self.config.steps
    }

    /// Sequences per step over all ranks (`--batch-size`).
    #[getter]
    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    /// Rows `batch(step)` returns: the global batch divided by the world size.
    #[getter]
    fn rows(&self) -> usize {
        self.plan.rank_slots().len()
    }

    /// Sequence length.
    #[getter]
    fn seq_len(&self) -> usize {
        self.config.seq_len
    }

    /// This rank and the number of ranks.
    #[getter]
    fn rank(&self) -> (usize, usize) {
        (self.plan.rank, self.plan.world_size)
    }

    /// Sequences the sampler draws from (the held-out ones excluded).
    #[getter]
    fn num_sequences(&self) -> u64 {
        self.sampler.sequences().len()
    }

    /// The shards (`None` with named sources).
    #[getter]
    fn shards(&self, py: Python<'_>) -> Option<Py<Shards>> {
        self.shards.as_ref().map(|s| s.clone_ref(py))
    }

    /// Content fingerprint of the data (the shards', or of every named source).
    #[getter]
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Everything the batches depend on, with the keys of the trainer's `config.toml` (`steps`
    /// is `total_steps` here).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &serde_json::to_value(&self.config).expect("serializes"))
    }

    fn __repr__(&self) -> String {
        format!(
            "MaskedBatches(schedule={:?}, total_steps={}, batch_size={}, seq_len={}, rank={}/{})",
            self.config.schedule.to_string(),
            self.config.steps,
            self.config.batch_size,
            self.config.seq_len,
            self.plan.rank,
            self.plan.world_size
        )
    }

    /// Pickled as its shards and keywords: a DataLoader worker rebuilds the same batches.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let c = &this.config;
        let kwargs = PyDict::new(py);
        kwargs.set_item("schedule", c.schedule.to_string())?;
        if let Some(m) = &c.mix {
            kwargs.set_item("mix", m.to_string())?;
        }
        kwargs.set_item("total_steps", c.steps)?;
        kwargs.set_item("batch_size", c.batch_size)?;
        kwargs.set_item("seq_len", c.seq_len)?;
        kwargs.set_item(
            "layout",
            match c.layout {
                Layout::Truncate => "truncate",
                Layout::Pack => "pack",
            },
        )?;
        kwargs.set_item("min_doc_tokens", c.min_doc_tokens)?;
        kwargs.set_item("seed", c.seed)?;
        kwargs.set_item("mask_token_fraction", c.mask_token_fraction)?;
        kwargs.set_item("random_token_fraction", c.random_token_fraction)?;
        kwargs.set_item("mask_exact", c.mask_exact)?;
        kwargs.set_item("whole_word", c.whole_word)?;
        kwargs.set_item("eval_sequences", c.eval_sequences)?;
        kwargs.set_item("eval_batch", this.eval_batch)?;
        kwargs.set_item("rank", this.plan.rank)?;
        kwargs.set_item("world_size", this.plan.world_size)?;
        kwargs.set_item("threads", this.threads)?;
        kwargs.set_item("order", c.order.to_string())?;
        if let Some(dir) = &c.cache_dir {
            kwargs.set_item("cache_dir", dir)?;
        }
        if let Some(bytes) = c.cache_bytes {
            kwargs.set_item("cache_bytes", bytes)?;
        }
        let rebuild = py.import("maskrate")?.getattr("_rebuild_masked_batches")?;
        let shards = match &this.shards {
            Some(s) => s.clone_ref(py).into_any(),
            None => this.named.clone().into_pyobject(py)?.into_any().unbind(),
        };
        (rebuild, (shards, kwargs))
            .into_pyobject(py)
            .map(|t| t.into_any())
    }
}
