//! `MaskedBatches`: the trainer's masked batch of any step, as numpy arrays for `BertForMaskedLM`.
//!
//! The batch is built by the same `shared::sampler` code from the same [`DataConfig`] the trainer
//! uses, so step *t* here is byte for byte the trainer's step *t* (or this rank's rows of it).

use crate::convert::{json_to_py, kwargs_to_json, ShardPaths};
use crate::errors::to_py;
use crate::schedule::Schedule;
use crate::shards::Shards;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shared::sampler::{
    BatchOut, BatchPlan, DataConfig, HeldOutBatches, IdsOut, MaskVocab, MaskingSampler,
    ShardSource, WrittenBatch,
};
use shared::schedule::MaskSchedule;
use shared::shard::ShardSet;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// `shards=`: an open `Shards`, the path(s) to open, or named sources `{name: path(s)}`.
#[derive(FromPyObject)]
pub enum ShardsArg {
    Open(Py<Shards>),
    Named(BTreeMap<String, ShardPaths>),
    Paths(ShardPaths),
}

impl ShardsArg {
    /// The `--shards` arguments these are, typed.
    fn sources(&self) -> PyResult<Vec<ShardSource>> {
        Ok(match self {
            ShardsArg::Open(s) => s.get().dirs().iter().map(|d| d.clone().into()).collect(),
            ShardsArg::Paths(ShardPaths::One(p)) => vec![p.clone().into()],
            ShardsArg::Paths(ShardPaths::Many(v)) => v.iter().map(|d| d.clone().into()).collect(),
            ShardsArg::Named(map) => {
                let mut out = Vec::new();
                for (name, dirs) in map {
                    let dirs = match dirs {
                        ShardPaths::One(p) => std::slice::from_ref(p),
                        ShardPaths::Many(v) => v.as_slice(),
                    };
                    for d in dirs {
                        out.push(ShardSource::named(name, d.clone()).map_err(to_py)?);
                    }
                }
                out
            }
        })
    }

    /// The one unnamed source's open `Shards` (opened through `config`'s cache when given as
    /// paths); `None` with named sources, which [`DataConfig::open`] opens.
    fn open(self, py: Python<'_>, config: &DataConfig) -> PyResult<Option<Py<Shards>>> {
        Ok(match self {
            ShardsArg::Open(s) => Some(s),
            ShardsArg::Paths(p) => {
                let open = Shards::open(
                    py,
                    p.into_vec(),
                    false,
                    config.cache_dir.clone(),
                    config.cache_bytes,
                )?;
                Some(Py::new(py, open)?)
            }
            ShardsArg::Named(_) => None,
        })
    }
}

/// `schedule=`: a spec string or a `Schedule`.
#[derive(FromPyObject)]
pub enum ScheduleArg {
    Spec(String),
    Object(Py<Schedule>),
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
    // With phases each phase opens its own shards (a phase may change them): by path.
    let data = match set {
        Some(set) if cfg.phases.is_empty() => cfg.sample_from(set, cfg.eval_sequences)?,
        _ => cfg.open()?,
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

    /// This rank's share of step `step`'s global batch.
    fn plan_at(&self, step: u64) -> BatchPlan {
        BatchPlan::whole_rank(
            self.sampler.global_batch_at(step),
            self.plan.world_size,
            self.plan.rank,
        )
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

    /// Builds `slots` of `step`'s global batch into `out` (fresh int64 arrays when `None`)
    /// with the GIL released.
    fn build_into<'py>(
        &self,
        py: Python<'py>,
        step: u64,
        slots: Range<usize>,
        out: Option<Bound<'py, PyDict>>,
        ids_dtype: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.check_step(step)?;
        let sampler = self.sampler.clone();
        let shape = [slots.len(), self.sampler.seq_len_at(step)];
        let (dict, _) = self.write(py, shape, out, ids_dtype, move |target| {
            sampler.batch_into(step, slots, target)
        })?;
        Ok(dict)
    }

    /// Runs `fill` on `out`'s arrays (fresh ones when `None`) on the pool, the GIL released.
    fn write<'py>(
        &self,
        py: Python<'py>,
        shape: [usize; 2],
        out: Option<Bound<'py, PyDict>>,
        ids_dtype: &str,
        fill: impl FnOnce(BatchOut<'_>) -> shared::Result<WrittenBatch> + Send,
    ) -> PyResult<(Bound<'py, PyDict>, WrittenBatch)> {
        let out = match out {
            Some(out) => out,
            None => fresh_arrays(py, shape, ids_dtype)?,
        };
        let mut arrays = OutArrays::borrow(&out, shape)?;
        let pool = self.pool()?;
        let target = arrays.batch_out();
        let written = py
            .detach(move || pool.install(|| fill(target)))
            .map_err(to_py)?;
        drop(arrays);
        if !written.segment_starts.is_empty() {
            add_packed_fields(py, &out, shape, &written.segment_starts)?;
        }
        if self.config.weighs_rows() {
            add_rate_fields(py, &out, shape, &written, self.config.loss_weight)?;
        }
        Ok((out, written))
    }
}

/// `pack-docs`: what transformers' packed path takes, named as `DataCollatorWithFlattening(
/// return_flash_attn_kwargs=True)` names them: `position_ids` `(rows, seq_len)` restarting at
/// each document, `cu_seq_lens_q`/`_k` (int32, the cumulative segment lengths over the flattened
/// rows) and `max_length_q`/`_k` (the longest segment).
fn add_packed_fields<'py>(
    py: Python<'py>,
    dict: &Bound<'py, PyDict>,
    shape: [usize; 2],
    starts: &[u32],
) -> PyResult<()> {
    let packed = shared::sampler::PackedInputs::of(starts, shape[0] * shape[1]);
    let positions: Vec<i64> = packed.position_ids.into_iter().map(i64::from).collect();
    let array = Array2::from_shape_vec(shape, positions).expect("rows x seq_len");
    let cu: Vec<i32> = packed.cu_seq_lens.iter().map(|&s| s as i32).collect();
    let [position_ids, cu_q, cu_k, max_q, max_k] = shared::sampler::PackedInputs::NAMES;
    dict.set_item(position_ids, array.into_pyarray(py))?;
    dict.set_item(cu_q, cu.clone().into_pyarray(py))?;
    dict.set_item(cu_k, cu.into_pyarray(py))?;
    dict.set_item(max_q, packed.max_length)?;
    dict.set_item(max_k, packed.max_length)?;
    Ok(())
}

/// With a rate distribution or a loss weight: `mask_rate` (float64, each row's rate),
/// `loss_weight` (float32 `(rows, seq_len)`, each predicted token's weight, 0 elsewhere; needs
/// `labels` among the arrays) and `maskable` (int64, each row's maskable tokens), what
/// `MaskrateTrainer` weighs and normalises the loss with.
fn add_rate_fields<'py>(
    py: Python<'py>,
    dict: &Bound<'py, PyDict>,
    shape: [usize; 2],
    written: &WrittenBatch,
    weight: shared::sampler::LossWeight,
) -> PyResult<()> {
    let rates = shared::sampler::TokenRates {
        seq_len: shape[1],
        row_rates: &written.row_rates,
        segment_starts: &written.segment_starts,
        segment_rates: &written.segment_rates,
    };
    if let Some(labels) = dict.get_item("labels")? {
        let labels: numpy::PyReadonlyArray2<'_, i64> = labels.extract()?;
        let labels = labels.as_slice()?;
        let weights = rates.weights(labels.len(), weight, |i| labels[i] != -100);
        let array = Array2::from_shape_vec(shape, weights).expect("rows x seq_len");
        dict.set_item("loss_weight", array.into_pyarray(py))?;
    }
    dict.set_item("mask_rate", written.row_rates.clone().into_pyarray(py))?;
    let maskable: Vec<i64> = written.row_maskable.iter().map(|&m| m as i64).collect();
    dict.set_item("maskable", maskable.into_pyarray(py))?;
    Ok(())
}

/// Every name `fields=` may list.
const ALL_FIELDS: [&str; 13] = [
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "labels",
    "position_ids",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "source",
    "mask_rate",
    "loss_weight",
    "maskable",
];

/// Keeps only `fields` of `dict` (all when `None`); an unknown name, or one this batch lacks
/// (e.g. `position_ids` without `layout="pack-docs"`), is an error.
fn keep_fields(dict: &Bound<'_, PyDict>, fields: Option<Vec<String>>) -> PyResult<()> {
    let Some(fields) = fields else {
        return Ok(());
    };
    for f in &fields {
        if !ALL_FIELDS.contains(&f.as_str()) {
            return Err(PyValueError::new_err(format!(
                "fields: unknown field {f:?} (known: {})",
                ALL_FIELDS.join(", ")
            )));
        }
        if !dict.contains(f)? {
            return Err(PyValueError::new_err(format!(
                "fields: this batch has no {f:?} ({} come with layout=\"pack-docs\"; source with \
                 with_sources=True; {} with a rate_dist other than \"point\" or a loss_weight)",
                ALL_FIELDS[4..9].join(", "),
                ALL_FIELDS[10..].join(", ")
            )));
        }
    }
    let keys: Vec<String> = dict.keys().extract()?;
    for k in keys {
        if !fields.contains(&k) {
            dict.del_item(k)?;
        }
    }
    Ok(())
}

/// The model inputs `batch` writes, by name.
const FIELDS: [&str; 4] = ["input_ids", "attention_mask", "token_type_ids", "labels"];

/// Fresh `(rows, seq_len)` arrays for every field (int64; `input_ids` in `ids_dtype`).
fn fresh_arrays<'py>(
    py: Python<'py>,
    shape: [usize; 2],
    ids_dtype: &str,
) -> PyResult<Bound<'py, PyDict>> {
    if !matches!(ids_dtype, "int64" | "int32") {
        return Err(PyValueError::new_err(format!(
            "ids_dtype={ids_dtype:?}: use \"int64\" or \"int32\""
        )));
    }
    // Allocated by the extension's allocator (mimalloc, which keeps freed pages): a batch's
    // arrays reuse the pages of the last one's instead of faulting in fresh ones.
    let n = shape[0] * shape[1];
    let dict = PyDict::new(py);
    for name in FIELDS {
        let array = if name == "input_ids" && ids_dtype == "int32" {
            Array2::from_shape_vec(shape, vec![0i32; n])
                .expect("rows x seq_len")
                .into_pyarray(py)
                .into_any()
        } else {
            Array2::from_shape_vec(shape, vec![0i64; n])
                .expect("rows x seq_len")
                .into_pyarray(py)
                .into_any()
        };
        dict.set_item(name, array)?;
    }
    Ok(dict)
}

/// The arrays of an `out` dict, borrowed writable for one batch.
struct OutArrays<'py> {
    input_ids: Option<IdsArray<'py>>,
    attention_mask: Option<numpy::PyReadwriteArrayDyn<'py, i64>>,
    token_type_ids: Option<numpy::PyReadwriteArrayDyn<'py, i64>>,
    labels: Option<numpy::PyReadwriteArrayDyn<'py, i64>>,
}

enum IdsArray<'py> {
    I64(numpy::PyReadwriteArrayDyn<'py, i64>),
    I32(numpy::PyReadwriteArrayDyn<'py, i32>),
}

impl<'py> OutArrays<'py> {
    /// Checks `out`: only known fields, each a writable C-contiguous `shape` array of int64
    /// (`input_ids` int64 or int32).
    fn borrow(out: &Bound<'py, PyDict>, shape: [usize; 2]) -> PyResult<Self> {
        let mut arrays = OutArrays {
            input_ids: None,
            attention_mask: None,
            token_type_ids: None,
            labels: None,
        };
        for (key, value) in out.iter() {
            let name: String = key.extract()?;
            let check = |a: &Bound<'py, numpy::PyUntypedArray>| -> PyResult<()> {
                if a.shape() != shape {
                    return Err(PyValueError::new_err(format!(
                        "out['{name}'] has shape {:?}; this batch is {shape:?}",
                        a.shape()
                    )));
                }
                if !a.is_c_contiguous() {
                    return Err(PyValueError::new_err(format!(
                        "out['{name}'] must be C-contiguous"
                    )));
                }
                Ok(())
            };
            let untyped = value.cast::<numpy::PyUntypedArray>().map_err(|_| {
                PyTypeError::new_err(format!("out['{name}'] must be a numpy array"))
            })?;
            check(untyped)?;
            let wrong_dtype = |want: &str| {
                PyTypeError::new_err(format!(
                    "out['{name}'] has dtype {}; expected {want}",
                    untyped.dtype()
                ))
            };
            let i64_array = || -> PyResult<numpy::PyReadwriteArrayDyn<'py, i64>> {
                let a = value
                    .cast::<PyArrayDyn<i64>>()
                    .map_err(|_| wrong_dtype("int64"))?;
                a.try_readwrite().map_err(|e| {
                    PyValueError::new_err(format!("out['{name}'] is not writable: {e}"))
                })
            };
            match name.as_str() {
                "input_ids" => {
                    arrays.input_ids = Some(if let Ok(a) = value.cast::<PyArrayDyn<i32>>() {
                        IdsArray::I32(a.try_readwrite().map_err(|e| {
                            PyValueError::new_err(format!("out['input_ids'] is not writable: {e}"))
                        })?)
                    } else {
                        IdsArray::I64(i64_array().map_err(|_| wrong_dtype("int64 or int32"))?)
                    })
                }
                "attention_mask" => arrays.attention_mask = Some(i64_array()?),
                "token_type_ids" => arrays.token_type_ids = Some(i64_array()?),
                "labels" => arrays.labels = Some(i64_array()?),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "out['{other}']: not a batch field (fields: {})",
                        FIELDS.join(", ")
                    )))
                }
            }
        }
        Ok(arrays)
    }

    /// The arrays as the sampler's output slices.
    fn batch_out(&mut self) -> BatchOut<'_> {
        let OutArrays {
            input_ids,
            attention_mask,
            token_type_ids,
            labels,
        } = self;
        let contiguous = "checked C-contiguous";
        BatchOut {
            input_ids: input_ids.as_mut().map(|a| match a {
                IdsArray::I64(a) => IdsOut::I64(a.as_slice_mut().expect(contiguous)),
                IdsArray::I32(a) => IdsOut::I32(a.as_slice_mut().expect(contiguous)),
            }),
            attention_mask: attention_mask
                .as_mut()
                .map(|a| a.as_slice_mut().expect(contiguous)),
            token_type_ids: token_type_ids
                .as_mut()
                .map(|a| a.as_slice_mut().expect(contiguous)),
            labels: labels.as_mut().map(|a| a.as_slice_mut().expect(contiguous)),
        }
    }
}

#[pymethods]
impl MaskedBatches {
    /// The batches of a run over `shards` (a `Shards`, shard path(s), or `{name: path(s)}` for a
    /// mixture). Every other keyword is a key of the trainer's `config.toml`, i.e. its flag
    /// (`--seq-len` is `seq_len`), with the same default and grammar, except `total_steps`
    /// (`--steps`); `rank`/`world_size` select one data-parallel rank's rows, `threads` sizes the
    /// pool that builds them (0: all cores) and `eval_batch` the held-out batches.
    #[new]
    #[pyo3(signature = (
        shards, *, schedule = None, total_steps = None, eval_batch = 64, rank = 0, world_size = 1,
        threads = 0, **settings
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        shards: ShardsArg,
        schedule: Option<ScheduleArg>,
        total_steps: Option<u64>,
        eval_batch: usize,
        rank: usize,
        world_size: usize,
        threads: usize,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let config = data_config(&shards, schedule, total_steps, settings)?;
        let shards = shards.open(py, &config)?;
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
        for (k, phase) in sampler.phases().iter().enumerate() {
            BatchPlan::whole_rank(phase.global_batch, world_size, rank)
                .validate()
                .map_err(|e| PyValueError::new_err(format!("phase {}: {e}", k + 1)))?;
        }
        Ok(MaskedBatches {
            shards,
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

    /// This rank's rows of step `step`'s global batch (the whole batch with one rank) as
    /// `(rows, seq_len)` arrays: int64, `input_ids` int32 with `ids_dtype="int32"`. With `out`, a
    /// dict of caller-owned arrays (any of the four fields, C-contiguous, of that shape; int64,
    /// `input_ids` int64 or int32) is filled in place and returned: no allocation per batch, but
    /// the previous batch in those arrays is overwritten. With `with_sources=True` also `source`,
    /// each row's index into `source_names`. With `layout="pack-docs"` also `position_ids`,
    /// `cu_seq_lens_q`/`_k` and `max_length_q`/`_k` (transformers' packed inputs). `fields`
    /// keeps only the named entries (e.g. without `token_type_ids` for a model that has none).
    #[pyo3(signature = (step, with_sources = false, *, out = None, ids_dtype = "int64", fields = None))]
    fn batch<'py>(
        &self,
        py: Python<'py>,
        step: u64,
        with_sources: bool,
        out: Option<Bound<'py, PyDict>>,
        ids_dtype: &str,
        fields: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.check_step(step)?;
        let slots = self.plan_at(step).rank_slots();
        let sampler = self.sampler.clone();
        let shape = [slots.len(), self.sampler.seq_len_at(step)];
        let (dict, written) = self.write(py, shape, out, ids_dtype, move |target| {
            sampler.batch_into(step, slots, target)
        })?;
        if with_sources {
            let sources: Vec<i64> = written.sources.into_iter().map(i64::from).collect();
            dict.set_item("source", sources.into_pyarray(py))?;
        }
        keep_fields(&dict, fields)?;
        Ok(dict)
    }

    /// Micro-batch `index` (of `micro_batch` rows) of this rank's rows of step `step`: the
    /// trainer's gradient-accumulation split (`out`, `ids_dtype`, `fields` as for `batch`).
    #[pyo3(signature = (step, index, micro_batch, *, out = None, ids_dtype = "int64", fields = None))]
    #[allow(clippy::too_many_arguments)]
    fn micro_batch<'py>(
        &self,
        py: Python<'py>,
        step: u64,
        index: usize,
        micro_batch: usize,
        out: Option<Bound<'py, PyDict>>,
        ids_dtype: &str,
        fields: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.check_step(step)?;
        let rank_slots = self.plan_at(step).rank_slots();
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
        let dict = self.build_into(py, step, start..start + micro_batch, out, ids_dtype)?;
        keep_fields(&dict, fields)?;
        Ok(dict)
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
                let shape = [batches.rows(), batches.seq_len()];
                let (dict, _) = self.write(py, shape, None, "int64", |target| {
                    batches.batch_into(rest, target)
                })?;
                return Ok(dict);
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
        let counts = self.sampler.counts_at(step);
        let weights = self
            .sampler
            .weights_at(step)
            .unwrap_or_else(|| vec![1.0; counts.len()]);
        Ok(self
            .source_names()
            .into_iter()
            .zip(weights)
            .zip(counts)
            .map(|((n, w), c)| (n, w, c))
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

    /// Sequences per step over all ranks (`--batch-size`; the first phase's with phases).
    #[getter]
    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    /// Rows `batch(step)` returns: the global batch divided by the world size (of the first
    /// phase; `rows_at(step)` for any step).
    #[getter]
    fn rows(&self) -> usize {
        self.plan.rank_slots().len()
    }

    /// Sequence length (of the first phase; `seq_len_at(step)` for any step).
    #[getter]
    fn seq_len(&self) -> usize {
        self.config.seq_len
    }

    /// Rows `batch(step)` returns at `step` (phases may change the batch size).
    fn rows_at(&self, step: u64) -> PyResult<usize> {
        self.check_step(step)?;
        Ok(self.plan_at(step).rank_slots().len())
    }

    /// Sequence length at `step` (phases may change it).
    fn seq_len_at(&self, step: u64) -> PyResult<usize> {
        self.check_step(step)?;
        Ok(self.sampler.seq_len_at(step))
    }

    /// The run's phases as `(first_step, end_step, batch_size, seq_len)` (one without phases).
    #[getter]
    fn phase_shapes(&self) -> Vec<(u64, u64, usize, usize)> {
        self.sampler
            .phases()
            .iter()
            .map(|p| (p.first, p.end, p.global_batch, p.seq_len))
            .collect()
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

    /// Pickled as its shards and keywords: a DataLoader worker rebuilds the same batches. The
    /// keywords are the whole data config (serialized as the trainer saves it), so a new setting
    /// is carried without being listed here.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let mut settings = match serde_json::to_value(&this.config).expect("serializes") {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a struct serializes as an object"),
        };
        settings.remove("shards");
        let steps = settings.remove("steps").expect("steps is a config key");
        settings.insert("total_steps".into(), steps);
        settings.insert("eval_batch".into(), this.eval_batch.into());
        settings.insert("rank".into(), this.plan.rank.into());
        settings.insert("world_size".into(), this.plan.world_size.into());
        settings.insert("threads".into(), this.threads.into());
        let kwargs = json_to_py(py, &serde_json::Value::Object(settings))?;
        let shards = match &this.shards {
            Some(s) => s.clone_ref(py).into_any(),
            None => named_sources(&this.config.shards)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        };
        let rebuild = py.import("maskrate")?.getattr("_rebuild_masked_batches")?;
        (rebuild, (shards, kwargs))
            .into_pyobject(py)
            .map(|t| t.into_any())
    }
}

/// The named sources of `sources` as `{name: [dirs]}`.
fn named_sources(sources: &[ShardSource]) -> BTreeMap<String, Vec<std::path::PathBuf>> {
    let mut named: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for s in sources {
        let name = s.name.clone().unwrap_or_default();
        named.entry(name).or_default().push(s.dir.clone());
    }
    named
}

/// The data config of `MaskedBatches(shards, schedule=, total_steps=, **settings)`: the settings
/// merged onto the defaults by the config's own deserializer.
fn data_config(
    shards: &ShardsArg,
    schedule: Option<ScheduleArg>,
    total_steps: Option<u64>,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<DataConfig> {
    let mut overrides = match settings {
        Some(s) => kwargs_to_json(s)?,
        None => Default::default(),
    };
    let reserved = [("shards", "the first argument"), ("steps", "total_steps")];
    for key in overrides.keys() {
        if let Some((_, instead)) = reserved.iter().find(|(k, _)| k == key) {
            return Err(PyTypeError::new_err(format!(
                "MaskedBatches() takes '{key}' as {instead}"
            )));
        }
        if !DataConfig::keys().contains(&key.as_str()) {
            let known: Vec<&str> = DataConfig::keys()
                .iter()
                .copied()
                .filter(|k| !reserved.iter().any(|(r, _)| r == k))
                .chain(["total_steps", "eval_batch", "rank", "world_size", "threads"])
                .collect();
            return Err(PyTypeError::new_err(format!(
                "MaskedBatches() got an unexpected keyword argument '{key}' (keywords: {})",
                known.join(", ")
            )));
        }
    }
    let sources = shards.sources()?;
    overrides.insert(
        "shards".into(),
        serde_json::to_value(&sources).expect("serializes"),
    );
    let d = DataConfig::default();
    let (schedule, steps) = ScheduleArg::resolve(schedule, total_steps, &d)?;
    overrides.insert("schedule".into(), schedule.to_string().into());
    overrides.insert("steps".into(), steps.into());
    d.with_overrides(overrides).map_err(to_py)
}
