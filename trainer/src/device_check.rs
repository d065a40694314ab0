//! `trainer device-check`: this project's device kernels against their CPU twins, in seconds; the
//! GPU bundle's first step. Philox4x32-10 computes Random123's known answers on the device, and
//! the device's dropout masks equal the CPU kernel's bit for bit (f32, bf16, f16; sizes that end
//! mid-block). On a CPU it runs the same code against itself (what CI can check).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use model::ops::{Dropout, Site};
use serde::Serialize;
use std::path::PathBuf;

/// Flags of `device-check`.
#[derive(Debug, Args)]
pub struct DeviceCheckArgs {
    /// The device whose kernels are checked: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub pass: bool,
    /// What was found.
    pub detail: String,
}

/// Every check on one device.
#[derive(Debug, Serialize)]
pub struct DeviceCheck {
    /// The device, described.
    pub device: String,
    /// The checks in order.
    pub checks: Vec<Check>,
}

impl DeviceCheck {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// A Markdown table of the checks.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "device: {}\n\n| check | result | detail |\n|---|---|---|\n",
            self.device
        );
        for c in &self.checks {
            let verdict = if c.pass { "PASS" } else { "FAIL" };
            out.push_str(&format!("| {} | {verdict} | {} |\n", c.name, c.detail));
        }
        out
    }
}

/// Runs the checks on `args.device`, prints the table, writes the JSON; an error if any failed.
pub fn device_check(args: &DeviceCheckArgs) -> Result<DeviceCheck> {
    let device = training::device::parse(&args.device, 0)?;
    let mut checks = vec![philox_known_answers(&device)?];
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (n, p) in [(1_000_003usize, 0.1), (4 * 12 * 128 * 128 + 2, 0.5)] {
            checks.push(dropout_matches_cpu(&device, dtype, n, p)?);
        }
    }
    let result = DeviceCheck {
        device: training::device::describe(&device),
        checks,
    };
    print!("{}", result.markdown());
    if let Some(path) = &args.json {
        shared::atomic::write_file(path, &serde_json::to_vec_pretty(&result)?)?;
    }
    if !result.passed() {
        anyhow::bail!("a device check failed");
    }
    Ok(result)
}

/// Random123's vectors through the device's generator.
fn philox_known_answers(device: &Device) -> Result<Check> {
    let cases: Vec<[u32; 6]> = shared::philox::KNOWN_ANSWERS
        .iter()
        .map(|(c, k, _)| [c[0], c[1], c[2], c[3], k[0], k[1]])
        .collect();
    let got = philox_blocks(device, &cases)?;
    let wrong = shared::philox::KNOWN_ANSWERS
        .iter()
        .zip(&got)
        .filter(|((_, _, want), got)| want != *got)
        .count();
    Ok(Check {
        name: "Philox4x32-10 known answers".into(),
        pass: wrong == 0,
        detail: format!("{} of {} vectors match", got.len() - wrong, got.len()),
    })
}

#[cfg(feature = "cuda")]
fn philox_blocks(device: &Device, cases: &[[u32; 6]]) -> Result<Vec<[u32; 4]>> {
    match device {
        Device::Cuda(dev) => Ok(model::ops::cuda::philox_blocks(dev, cases)?),
        _ => Ok(host_philox_blocks(cases)),
    }
}

#[cfg(not(feature = "cuda"))]
fn philox_blocks(_device: &Device, cases: &[[u32; 6]]) -> Result<Vec<[u32; 4]>> {
    Ok(host_philox_blocks(cases))
}

fn host_philox_blocks(cases: &[[u32; 6]]) -> Vec<[u32; 4]> {
    cases
        .iter()
        .map(|c| shared::philox::philox4x32_10([c[0], c[1], c[2], c[3]], [c[4], c[5]]))
        .collect()
}

/// A dropout mask drawn on `device` against the CPU kernel's, bit for bit, on `n` values of
/// `dtype` (1 + i/1000, so the products are not all equal).
fn dropout_matches_cpu(device: &Device, dtype: DType, n: usize, p: f64) -> Result<Check> {
    let mask = Dropout::new(7, &[11, 3], p).mask(5, Site::AttentionProbs);
    let x = (Tensor::arange(0u32, n as u32, &Device::Cpu)?.to_dtype(DType::F32)? * 1e-3)?
        .affine(1.0, 1.0)?
        .to_dtype(dtype)?;
    let cpu = mask.apply(&x)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let on_device = mask
        .apply(&x.to_device(device)?)?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let differ = cpu
        .iter()
        .zip(&on_device)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let kept = on_device.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    Ok(Check {
        name: format!("dropout {dtype:?} n={n} p={p}"),
        pass: differ == 0,
        detail: format!("{differ} of {n} values differ from the CPU kernel; kept {kept:.4}"),
    })
}
