//! Constant tables (rotary angles, attention windows) built once per (table, device) and kept for
//! the life of the thread: the step never builds them on the host again.

use candle_core::{Device, Result, Tensor};
use std::cell::RefCell;

thread_local! {
    static TABLES: RefCell<Vec<(String, Device, Tensor)>> = const { RefCell::new(Vec::new()) };
}

/// The table named `name` on `device`, built by `build` (uploading through
/// [`crate::transfer::upload`]) the first time it is asked for.
pub fn cached(
    name: &str,
    device: &Device,
    build: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let hit = TABLES.with(|t| {
        t.borrow()
            .iter()
            .find(|(n, d, _)| n == name && d.same_device(device))
            .map(|(_, _, t)| t.clone())
    });
    if let Some(t) = hit {
        return Ok(t);
    }
    let t = build()?;
    TABLES.with(|c| {
        c.borrow_mut()
            .push((name.to_string(), device.clone(), t.clone()))
    });
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_per_name_and_device() {
        let mut builds = 0;
        for _ in 0..3 {
            cached("test-table", &Device::Cpu, || {
                builds += 1;
                Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)
            })
            .unwrap();
        }
        assert_eq!(builds, 1);
    }
}
