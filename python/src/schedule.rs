//! `Schedule`: the masking-rate schedule grammar of the command line (`linear:0.3:0.15@0.1`),
//! with the same values and error messages; `LrSchedule`: the learning-rate one
//! (`wsd:0.2:1-sqrt`).

use crate::errors::to_py;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use shared::schedule::{LrDecay, LrSchedule, MaskSchedule};

/// A masking-rate schedule over a `total_steps`-step run: `Schedule("linear:0.3:0.15", 70000)`.
#[pyclass(frozen, module = "maskrate._maskrate")]
pub struct Schedule {
    pub(crate) schedule: MaskSchedule,
    pub(crate) total_steps: u64,
}

#[pymethods]
impl Schedule {
    /// Parses `spec` (see `maskrate.SCHEDULE_GRAMMAR`); a malformed spec raises `ValueError` with
    /// the trainer's message.
    #[new]
    fn new(spec: &str, total_steps: u64) -> PyResult<Self> {
        if total_steps == 0 {
            return Err(PyValueError::new_err("total_steps must be positive"));
        }
        let schedule = spec.parse().map_err(to_py)?;
        Ok(Schedule {
            schedule,
            total_steps,
        })
    }

    /// The masking rate at `step` (0-based); a step past the run raises `ValueError`.
    fn rate(&self, step: u64) -> PyResult<f64> {
        if step >= self.total_steps {
            return Err(PyValueError::new_err(format!(
                "step {step} is past the end of a {}-step run (steps 0..{})",
                self.total_steps, self.total_steps
            )));
        }
        Ok(self.schedule.rate(step, self.total_steps))
    }

    /// The spec in canonical form.
    #[getter]
    fn spec(&self) -> String {
        self.schedule.to_string()
    }

    /// Length of the run.
    #[getter]
    fn total_steps(&self) -> u64 {
        self.total_steps
    }

    fn __repr__(&self) -> String {
        format!(
            "Schedule({:?}, {})",
            self.schedule.to_string(),
            self.total_steps
        )
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (String, u64))> {
        let this = slf.get();
        Ok((
            slf.py().get_type::<Schedule>().into_any(),
            (this.schedule.to_string(), this.total_steps),
        ))
    }
}

/// The trainer's learning-rate schedule (`--lr-schedule SPEC --warmup F --final-lr-ratio R`):
/// `LrSchedule("wsd:0.2:1-sqrt", 1000)`; the grammar and its errors are the trainer's.
#[pyclass(frozen, name = "LrSchedule", module = "maskrate._maskrate")]
pub struct PyLrSchedule {
    schedule: LrSchedule,
}

#[pymethods]
impl PyLrSchedule {
    /// Parses `spec` (`linear` or `wsd:DECAY[:SHAPE]`) over `total_steps` with warm-up over the
    /// fraction `warmup` of them and a final rate of `final_lr_ratio` times `peak`.
    #[new]
    #[pyo3(signature = (spec, total_steps, *, peak = 1.0, warmup = 0.06, final_lr_ratio = 0.02))]
    fn new(
        spec: &str,
        total_steps: u64,
        peak: f64,
        warmup: f64,
        final_lr_ratio: f64,
    ) -> PyResult<Self> {
        if total_steps == 0 {
            return Err(PyValueError::new_err("total_steps must be positive"));
        }
        let decay: LrDecay = spec.parse().map_err(to_py)?;
        Ok(PyLrSchedule {
            schedule: LrSchedule::from_flags(peak, decay, total_steps, warmup, final_lr_ratio),
        })
    }

    /// The learning rate at optimizer step `step` (0-based), as the trainer applies it.
    fn lr(&self, step: u64) -> f64 {
        self.schedule.lr(step)
    }

    /// Steps of linear warm-up.
    #[getter]
    fn warmup_steps(&self) -> u64 {
        self.schedule.warmup_steps
    }

    /// Length of the run.
    #[getter]
    fn total_steps(&self) -> u64 {
        self.schedule.total_steps
    }

    /// Steps of the decay at the end of the run (everything after warm-up for `linear`).
    #[getter]
    fn decay_steps(&self) -> u64 {
        self.schedule.decay_steps()
    }

    /// `linear` or `wsd`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.schedule.decay {
            LrDecay::Linear => "linear",
            LrDecay::Wsd { .. } => "wsd",
        }
    }

    /// The decay's curve: `linear`, `cosine` or `1-sqrt` (transformers' `decay_type`).
    #[getter]
    fn decay_shape(&self) -> &'static str {
        match self.schedule.decay {
            LrDecay::Linear => "linear",
            LrDecay::Wsd { shape, .. } => shape.name(),
        }
    }

    /// The final learning rate as a fraction of the peak.
    #[getter]
    fn final_lr_ratio(&self) -> f64 {
        self.schedule.final_ratio
    }

    /// The spec in canonical form.
    #[getter]
    fn spec(&self) -> String {
        self.schedule.decay.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "LrSchedule({:?}, {}, warmup_steps={}, final_lr_ratio={})",
            self.schedule.decay.to_string(),
            self.schedule.total_steps,
            self.schedule.warmup_steps,
            self.schedule.final_ratio
        )
    }
}
