//! `Schedule`: the masking-rate schedule grammar of the command line (`linear:0.3:0.15@0.1`),
//! with the same values and error messages.

use crate::errors::to_py;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use shared::schedule::MaskSchedule;

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
