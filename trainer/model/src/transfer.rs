//! The ledger of host↔device crossings: every upload of host data into a tensor and every read of
//! a tensor back to the host on the training path goes through [`upload`] or [`read`], which
//! count calls and bytes (per thread: the training loop runs on one). On the CPU nothing crosses
//! a bus, but the same calls happen in the same places, so a CPU test of the counts proves what a
//! GPU step would move: the trainer's `--profile` reports them per step, and the transfer test
//! asserts that a steady step uploads its batch and reads nothing.
//!
//! Tables built once and cached per device (rotary angles, attention windows) upload through here
//! too, on first use.

use candle_core::{Device, Result, Shape, Tensor, WithDType};
use std::cell::Cell;

/// Crossings counted so far on this thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Host → device copies.
    pub uploads: u64,
    /// Bytes copied to the device.
    pub upload_bytes: u64,
    /// Device → host copies.
    pub reads: u64,
    /// Bytes copied to the host.
    pub read_bytes: u64,
}

impl Ledger {
    /// The crossings between `earlier` and `self`.
    pub fn since(&self, earlier: &Ledger) -> Ledger {
        Ledger {
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            reads: self.reads - earlier.reads,
            read_bytes: self.read_bytes - earlier.read_bytes,
        }
    }
}

thread_local! {
    static LEDGER: Cell<Ledger> = Cell::new(Ledger::default());
}

/// This thread's counts.
pub fn ledger() -> Ledger {
    LEDGER.with(|l| l.get())
}

fn count(f: impl FnOnce(&mut Ledger)) {
    LEDGER.with(|l| {
        let mut v = l.get();
        f(&mut v);
        l.set(v);
    })
}

/// `data` as a tensor of `shape` on `device`: one counted upload.
pub fn upload<T: WithDType, S: Into<Shape>>(
    data: Vec<T>,
    shape: S,
    device: &Device,
) -> Result<Tensor> {
    let bytes = (data.len() * T::DTYPE.size_in_bytes()) as u64;
    count(|l| {
        l.uploads += 1;
        l.upload_bytes += bytes;
    });
    Tensor::from_vec(data, shape, device)
}

/// Every element of `t`, flattened, on the host: one counted read.
pub fn read<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    count(|l| {
        l.reads += 1;
        l.read_bytes += bytes;
    });
    t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_and_bytes_in_both_directions() {
        let before = ledger();
        let t = upload(vec![1u32, 2, 3], 3, &Device::Cpu).unwrap();
        let back: Vec<f32> = read(&t.to_dtype(candle_core::DType::F32).unwrap()).unwrap();
        assert_eq!(back, [1.0, 2.0, 3.0]);
        let d = ledger().since(&before);
        assert_eq!(
            d,
            Ledger {
                uploads: 1,
                upload_bytes: 12,
                reads: 1,
                read_bytes: 12
            }
        );
    }
}
