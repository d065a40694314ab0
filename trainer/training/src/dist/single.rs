//! The one-process job: every collective is the identity.

use super::Collective;
use anyhow::Result;
use candle_core::Tensor;
use std::rc::Rc;

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn sum_tensors(&self, _tensors: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn min_max_u64(&self, value: u64) -> Result<(u64, u64)> {
        Ok((value, value))
    }
    fn abort(&self, _code: i32) {}
    fn describe(&self) -> String {
        "single process".into()
    }
    fn for_device(self: Rc<Self>, _: &candle_core::Device) -> Result<Rc<dyn Collective>> {
        Ok(self)
    }
}
