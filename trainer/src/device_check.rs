//! `trainer device-check`: this project's device kernels against their CPU twins, in seconds; the
//! GPU bundle's first step. Philox4x32-10 computes Random123's known answers on the device, and
//! the device's dropout masks equal the CPU kernel's bit for bit (f32, bf16, f16; sizes that end
//! mid-block). Then the per-op table: each fused kernel's forward and backward against its CPU
//! twin on the same inputs at BERT-base shapes (bits identical and the largest relative error).
//! On a CPU it runs the same code against itself (what CI can check).

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
    checks.extend(op_checks(&device, false)?);
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

/// The per-op table on `device`: each CUDA kernel's forward and backward against its CPU twin,
/// f32 and bf16 (f32 alone on a CPU), at BERT-base and ModernBERT-base shapes, or at smaller
/// ones with `quick` (what [`guard_kernels`] runs before training).
fn op_checks(device: &Device, quick: bool) -> Result<Vec<Check>> {
    // BERT-base's feed-forward activations: 32 rows of 128 tokens x 3072 (fewer rows on a CPU,
    // where the check runs against itself, and in the quick check).
    let small = quick || device.is_cpu();
    let tokens = if small { 256 } else { 32 * 128 };
    let mut checks = Vec::new();
    let dtypes: &[DType] = if device.is_cpu() {
        &[DType::F32]
    } else {
        &[DType::F32, DType::BF16]
    };
    for &dtype in dtypes {
        checks.extend(pair_matches_cpu(
            ("gelu", device, dtype),
            ((tokens, 3072), (tokens, 3072)),
            model::ops::gelu_kernel,
            model::ops::gelu_backward_kernel,
        )?);
        // BERT-base's feed-forward product plus its bias, through GELU in one pass.
        let bias = (spread(3072, 3)? * 0.5)?.to_dtype(dtype)?;
        checks.extend(pair_matches_cpu(
            ("bias+gelu", device, dtype),
            ((tokens, 3072), (tokens, 3072)),
            |x| model::ops::bias_gelu_kernel(x, &on(&bias, x)?),
            |x, dy| model::ops::bias_gelu_backward_kernel(x, &on(&bias, x)?, dy),
        )?);
        // The residual connection after a dropped block (BERT-base's hidden states); its
        // backward passes the gradient to the residual and the mask to the block.
        let mask = Dropout::new(5, &[2, 1], 0.1).mask(3, Site::FeedForward);
        let residual = (spread(tokens * 768, 4)? * 0.5)?
            .reshape((tokens, 768))?
            .to_dtype(dtype)?;
        checks.extend(pair_matches_cpu(
            ("residual dropout", device, dtype),
            ((tokens, 768), (tokens, 768)),
            |x| mask.add_to_kernel(&on(&residual, x)?, x),
            |_, dy| mask.apply(dy),
        )?);
        // ModernBERT-base's GeGLU input: 2 x 1152 per token.
        checks.extend(pair_matches_cpu(
            ("geglu", device, dtype),
            ((tokens, 2 * 1152), (tokens, 1152)),
            model::ops::geglu_kernel,
            model::ops::geglu_backward_kernel,
        )?);
        // ModernBERT-base's fused projections: 3 x 768, 12 heads of 64.
        checks.extend(rotary_matches_cpu(device, dtype, tokens)?);
        // BERT-base's hidden states: rows of 768.
        checks.extend(layer_norm_matches_cpu(device, dtype, tokens)?);
        // BERT's word embeddings at the batch's tokens.
        checks.extend(embedding_matches_cpu(device, dtype, tokens)?);
        // The MLM head's masked rows over BERT's vocabulary.
        let masked = if small { 64 } else { 2048 };
        checks.extend(cross_entropy_matches_cpu(device, dtype, masked)?);
        // Attention at BERT-base's rows (every key, padded keys) and ModernBERT-base's (packed
        // documents and its local window), both with attention dropout.
        let (rows_128, long) = if small { (1, 160) } else { (8, 512) };
        checks.extend(attention_matches_cpu(device, dtype, (rows_128, 128), None)?);
        checks.extend(attention_matches_cpu(device, dtype, (2, long), Some(64))?);
    }
    Ok(checks)
}

/// Before work on a CUDA device with this project's kernels (`--kernels fused`): the quick
/// per-op check (about a second). If a kernel disagrees with its CPU twin, the run falls back to
/// `--kernels composed`, saying which ops failed; elsewhere nothing is checked.
pub fn guard_kernels(
    runtime: &mut training::runtime::RuntimeArgs,
    local_rank: usize,
) -> Result<()> {
    if runtime.kernels != model::ops::Kernels::Fused {
        return Ok(());
    }
    let device = runtime.device_for_rank(local_rank)?;
    if !device.is_cuda() {
        return Ok(());
    }
    let failed = failed_ops(&op_checks(&device, true)?);
    if !failed.is_empty() {
        eprintln!(
            "warning: CUDA kernels disagree with their CPU twins ({}); running candle's composed ops instead (--kernels composed). `trainer device-check --device {}` shows the table.",
            failed.join("; "),
            runtime.device
        );
        runtime.kernels = model::ops::Kernels::Composed;
    }
    Ok(())
}

/// The names of the failed checks, with what was found.
fn failed_ops(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect()
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

/// `n` values spread over [-6, 6) in a fixed scrambled order (no two neighbours alike), `seed`
/// picking the scramble.
/// `t` in `like`'s dtype on its device (a parameter beside the CPU twin's f32 input: exact).
fn on(t: &Tensor, like: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(like.dtype())?.to_device(like.device())
}

fn spread(n: usize, seed: u64) -> Result<Tensor> {
    let v: Vec<f32> = (0..n as u64)
        .map(|i| (shared::seed::mix64(i ^ seed) % 12_000) as f32 / 1000.0 - 6.0)
        .collect();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}

/// How far `device_out` is from `cpu_out` (f32 values of outputs in `dtype`): one row of the
/// per-op table, passing within `tolerance` relative error (0: bit for bit).
fn compare(name: String, cpu_out: &Tensor, device_out: &Tensor, tolerance: f64) -> Result<Check> {
    let a = cpu_out
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let b = device_out
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let same = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() == y.to_bits())
        .count();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / (x.abs() as f64).max(1e-6))
        .fold(0.0, f64::max);
    Ok(Check {
        name,
        pass: worst <= tolerance && a.len() == b.len(),
        detail: format!(
            "{same} of {} values bit-identical; max relative error {worst:.2e} (tolerance {tolerance:.0e})",
            a.len()
        ),
    })
}

/// The rotary kernel forward and backward (the inverse rotation) on `device` against the CPU
/// kernel, on `tokens` rows of ModernBERT-base's `[3 x 768]` projections with 12 heads, at packed
/// positions (documents of 100 tokens, so positions restart mid-row) and the global θ.
fn rotary_matches_cpu(device: &Device, dtype: DType, tokens: usize) -> Result<Vec<Check>> {
    let (width, heads, dh) = (3 * 768, 12, 64);
    let x = spread(tokens * width, 5)?
        .reshape((1, tokens, width))?
        .to_dtype(dtype)?;
    let x32 = x.to_dtype(DType::F32)?;
    let positions: Vec<u32> = (0..tokens as u32).map(|t| t % 100).collect();
    let on_cpu = model::ops::RotaryTables::new(&positions, dh, 160_000.0, &Device::Cpu)?;
    let on_device = model::ops::RotaryTables::new(&positions, dh, 160_000.0, device)?;
    let xd = x.to_device(device)?;
    let tolerance = tolerance_of(dtype);
    let what = |dir: &str| format!("rotary {dir} {dtype:?} {tokens}x{width}");
    let mut checks = Vec::new();
    for (dir, inverse) in [("forward", false), ("backward", true)] {
        let cpu = model::ops::rotary_kernel(&x32, heads, &on_cpu, inverse)?.to_dtype(dtype)?;
        let dev = model::ops::rotary_kernel(&xd, heads, &on_device, inverse)?;
        checks.push(compare(what(dir), &cpu, &dev, tolerance)?);
    }
    Ok(checks)
}

/// Short-row attention forward and backward on `device` against its CPU twin: `rows` x `len`
/// tokens of BERT-base's projections (12 heads of 64), the last 10 keys of the first row padded,
/// dropout 0.1 on the probabilities; with `radius`, packed documents (ModernBERT's pack-docs) and
/// that window.
fn attention_matches_cpu(
    device: &Device,
    dtype: DType,
    (rows, len): (usize, usize),
    radius: Option<usize>,
) -> Result<Vec<Check>> {
    let (width, heads, hidden) = (3 * 768, 12, 768);
    let qkv = (spread(rows * len * width, 7)? * 0.25)?
        .reshape((rows, len, width))?
        .to_dtype(dtype)?;
    let dctx = spread(rows * len * hidden, 8)?
        .reshape((rows, len, hidden))?
        .to_dtype(dtype)?;
    let mut bias = vec![0f32; rows * len];
    bias[len - 10..len].fill(-10000.0);
    let bias = Tensor::from_vec(bias, (rows, len), &Device::Cpu)?;
    // Documents of 100, 37, 210, 61, ... tokens, restarting each row.
    let lengths = [100u32, 37, 210, 61];
    let segments: Vec<u32> = (0..rows * len)
        .map(|t| {
            let (mut at, mut id) = ((t % len) as u32, 0u32);
            while at >= lengths[id as usize % 4] {
                at -= lengths[id as usize % 4];
                id += 1;
            }
            id
        })
        .collect();
    let segments = Tensor::from_vec(segments, (rows, len), &Device::Cpu)?;
    let rule_on = |d: &Device| -> Result<model::ops::Visibility> {
        Ok(match radius {
            Some(r) => model::ops::Visibility::new(Some(r), Some(segments.to_device(d)?)),
            None => model::ops::Visibility::all(),
        })
    };
    let dropout = Some(Dropout::new(11, &[3], 0.1).mask(2, Site::AttentionProbs));
    let run = |d: &Device| -> Result<(Tensor, Tensor)> {
        let (x, g, b) = (qkv.to_device(d)?, dctx.to_device(d)?, bias.to_device(d)?);
        let rule = rule_on(d)?;
        Ok((
            model::ops::attention_rows(&x, heads, &b, &rule, dropout)?,
            model::ops::attention_rows_backward(&x, heads, &b, &rule, dropout, &g)?,
        ))
    };
    let (cpu, dev) = (run(&Device::Cpu)?, run(device)?);
    let tolerance = tolerance_of(dtype);
    let rule = match radius {
        Some(r) => format!("documents, window {r}"),
        None => "padded keys".to_string(),
    };
    let what = |dir: &str| format!("attention {dir} {dtype:?} {rows}x{len} ({rule})");
    Ok(vec![
        compare(what("forward"), &cpu.0, &dev.0, tolerance)?,
        compare(what("backward"), &cpu.1, &dev.1, tolerance)?,
    ])
}

/// The layer norm kernel forward and backward (`[rows + 2, 768]`: dx, then the weight's and the
/// bias's gradients summed over rows) on `device` against the CPU kernel, `tokens` rows of 768.
fn layer_norm_matches_cpu(device: &Device, dtype: DType, tokens: usize) -> Result<Vec<Check>> {
    let n = 768;
    let x = spread(tokens * n, 9)?
        .reshape((tokens, n))?
        .to_dtype(dtype)?;
    let dy = spread(tokens * n, 10)?
        .reshape((tokens, n))?
        .to_dtype(dtype)?;
    let w = ((spread(n, 11)? * 0.1)? + 1.0)?.to_dtype(dtype)?;
    let b = (spread(n, 12)? * 0.1)?.to_dtype(dtype)?;
    let eps = 1e-12;
    let run = |d: &Device, dt: DType| -> Result<(Tensor, Tensor)> {
        let on = |t: &Tensor| t.to_dtype(dt)?.to_device(d);
        let (x, dy, w, b) = (on(&x)?, on(&dy)?, on(&w)?, on(&b)?);
        Ok((
            model::ops::layer_norm_kernel(&x, &w, &b, eps)?,
            model::ops::layer_norm_backward_kernel(&x, &w, &dy, eps)?,
        ))
    };
    // The CPU kernel computes in f32 on the same rounded inputs; its results rounded to `dtype`.
    let cpu = run(&Device::Cpu, DType::F32)?;
    let cpu = (cpu.0.to_dtype(dtype)?, cpu.1.to_dtype(dtype)?);
    let dev = run(device, dtype)?;
    let tolerance = tolerance_of(dtype);
    let what = |dir: &str| format!("layer norm {dir} {dtype:?} {tokens}x{n}");
    Ok(vec![
        compare(what("forward"), &cpu.0, &dev.0, tolerance)?,
        compare(what("backward"), &cpu.1, &dev.1, tolerance)?,
    ])
}

/// The embedding lookup (f32, bf16) and its scatter-add gradient (f32; atomic adds in any order)
/// on `device` against the CPU kernels: `tokens` ids into BERT's 30522 x 768 word embeddings,
/// many repeated. The gradients are multiples of 1/8 below 2, so every order of the additions
/// gives the same sums, and the bits must match.
fn embedding_matches_cpu(device: &Device, dtype: DType, tokens: usize) -> Result<Vec<Check>> {
    let (rows, width) = (30522usize, 768usize);
    let table = spread(rows * width, 14)?
        .reshape((rows, width))?
        .to_dtype(dtype)?;
    // Ids from a scrambled walk over the first 500 rows, and a few far ones.
    let ids: Vec<u32> = (0..tokens as u64)
        .map(|t| match t % 50 {
            0 => rows as u32 - 1 - t as u32 % 7,
            _ => (shared::seed::mix64(t ^ 15) % 500) as u32,
        })
        .collect();
    let ids = Tensor::from_vec(ids, tokens, &Device::Cpu)?;
    let dy: Vec<f32> = (0..tokens * width)
        .map(|i| ((i * 7 + i / width) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let dy = Tensor::from_vec(dy, (tokens, width), &Device::Cpu)?;
    let tolerance = tolerance_of(dtype);
    let what = |dir: &str| format!("embedding {dir} {dtype:?} {tokens}x{width}");
    let fwd = |d: &Device| model::ops::embedding_kernel(&table.to_device(d)?, &ids.to_device(d)?);
    let mut checks = vec![compare(
        what("forward"),
        &fwd(&Device::Cpu)?,
        &fwd(device)?,
        tolerance,
    )?];
    if dtype == DType::F32 {
        let bwd = |d: &Device| {
            model::ops::embedding_backward_kernel(&ids.to_device(d)?, &dy.to_device(d)?, rows)
        };
        checks.push(compare(
            what("backward"),
            &bwd(&Device::Cpu)?,
            &bwd(device)?,
            0.0,
        )?);
    }
    Ok(checks)
}

/// The cross-entropy kernel forward (`[M, 3]`: loss, hit, logsumexp) and backward on `device`
/// against the CPU kernel, on `rows` rows of BERT's 30522 logits plus a decoder bias (added
/// inside the kernel) whose peak column is the label
/// in every other row. The device's logarithm is within an ulp of the CPU's, so f32 allows 1e-4
/// relative (a small loss is a difference of two larger numbers) rather than the bits.
fn cross_entropy_matches_cpu(device: &Device, dtype: DType, rows: usize) -> Result<Vec<Check>> {
    let v = 30522usize;
    let mut x = (spread(rows * v, 13)? * 0.5)?.to_vec1::<f32>()?;
    let mut labels = Vec::with_capacity(rows);
    for r in 0..rows {
        let peak = (r * 7919) % v;
        x[r * v + peak] += 10.0;
        labels.push(if r % 2 == 0 { peak } else { (peak + 1 + r) % v } as u32);
    }
    let x = Tensor::from_vec(x, (rows, v), &Device::Cpu)?.to_dtype(dtype)?;
    let labels = Tensor::from_vec(labels, rows, &Device::Cpu)?;
    // The decoder's bias, added inside the kernel.
    let bias = (spread(v, 14)? * 0.25)?.to_dtype(dtype)?;
    let gl: Vec<f32> = (0..rows)
        .flat_map(|r| [0.5 + (r % 3) as f32 * 0.25, 0.0])
        .collect();
    let run = |d: &Device, dt: DType| -> Result<(Tensor, Tensor)> {
        let (x, t) = (x.to_dtype(dt)?.to_device(d)?, labels.to_device(d)?);
        let b = bias.to_dtype(dt)?.to_device(d)?;
        let fwd = model::ops::cross_entropy_kernel(&x, &b, &t)?;
        // Each row's gradient beside the logsumexp the forward found and the label.
        let g = Tensor::from_vec(gl.clone(), (rows, 2), &Device::Cpu)?.to_device(d)?;
        let lse = fwd.narrow(1, 2, 1)?;
        let label = t.to_dtype(DType::F32)?.unsqueeze(1)?;
        let terms = Tensor::cat(&[g.narrow(1, 0, 1)?, lse, label], 1)?;
        Ok((
            fwd,
            model::ops::cross_entropy_backward_kernel(&x, &b, &terms)?,
        ))
    };
    let cpu = run(&Device::Cpu, DType::F32)?;
    let dev = run(device, dtype)?;
    let tolerance = if dtype == DType::F32 {
        1e-4
    } else {
        tolerance_of(dtype)
    };
    let what = |dir: &str| format!("cross-entropy {dir} {dtype:?} {rows}x{v}");
    Ok(vec![
        compare(what("forward"), &cpu.0, &dev.0, tolerance)?,
        compare(what("backward"), &cpu.1.to_dtype(dtype)?, &dev.1, tolerance)?,
    ])
}

/// The forward kernel `fwd(x)` and backward kernel `bwd(x, dy)` of an element-wise op named
/// `op` on `device` against the same kernels on the CPU, on `x` of `x_shape` and `dy` of
/// `dy_shape` in `dtype` (the CPU twin computes in f32 on the same rounded inputs; its result is
/// rounded to `dtype` as the device's): the op's two rows of the per-op table.
fn pair_matches_cpu(
    (op, device, dtype): (&str, &Device, DType),
    (x_shape, dy_shape): ((usize, usize), (usize, usize)),
    fwd: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    bwd: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Vec<Check>> {
    let x = spread(x_shape.0 * x_shape.1, 1)?
        .reshape(x_shape)?
        .to_dtype(dtype)?;
    let dy = spread(dy_shape.0 * dy_shape.1, 2)?
        .reshape(dy_shape)?
        .to_dtype(dtype)?;
    let (x32, dy32) = (x.to_dtype(DType::F32)?, dy.to_dtype(DType::F32)?);
    let cpu_fwd = fwd(&x32)?.to_dtype(dtype)?;
    let cpu_bwd = bwd(&x32, &dy32)?.to_dtype(dtype)?;
    let (xd, dyd) = (x.to_device(device)?, dy.to_device(device)?);
    let (dev_fwd, dev_bwd) = (fwd(&xd)?, bwd(&xd, &dyd)?);
    let tolerance = tolerance_of(dtype);
    let what = |dir: &str| format!("{op} {dir} {dtype:?} {}x{}", x_shape.0, x_shape.1);
    Ok(vec![
        compare(what("forward"), &cpu_fwd, &dev_fwd, tolerance)?,
        compare(what("backward"), &cpu_bwd, &dev_bwd, tolerance)?,
    ])
}

/// The per-op table's tolerance: f32 kernels do their twins' arithmetic, so the same bits are
/// expected (an ulp allowed); bf16 allows one bf16 ulp (results an f32 ulp apart can round to
/// neighbouring bf16 values).
fn tolerance_of(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-6
    } else {
        1.0 / 128.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(device: &str, kernels: model::ops::Kernels) -> training::runtime::RuntimeArgs {
        training::runtime::RuntimeArgs {
            device: device.to_string(),
            quiet: true,
            kernels,
        }
    }

    /// The guard checks only CUDA runs with this project's kernels: a CPU run keeps the kernels
    /// it chose, and a bad device name is still an error.
    #[test]
    fn the_guard_leaves_other_devices_alone() {
        for k in [
            model::ops::Kernels::Fused,
            model::ops::Kernels::Composed,
            model::ops::Kernels::Twins,
        ] {
            let mut r = runtime("cpu", k);
            guard_kernels(&mut r, 0).unwrap();
            assert_eq!(r.kernels, k);
        }
        assert!(guard_kernels(&mut runtime("tpu", model::ops::Kernels::Fused), 0).is_err());
    }

    /// The quick per-op check runs every op forward and backward (on a CPU, against itself) and
    /// a failed row is reported with its finding.
    #[test]
    fn the_quick_check_covers_every_op_and_names_failures() {
        let checks = op_checks(&Device::Cpu, true).unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        for op in [
            "gelu",
            "bias+gelu",
            "residual dropout",
            "geglu",
            "rotary",
            "layer norm",
            "cross-entropy",
            "embedding",
            "attention",
        ] {
            for dir in ["forward", "backward"] {
                let prefix = format!("{op} {dir} ");
                assert!(
                    names.iter().any(|n| n.starts_with(&prefix)),
                    "{prefix}: {names:?}"
                );
            }
        }
        assert!(failed_ops(&checks).is_empty());
        let bad = Check {
            name: "attention forward BF16".into(),
            pass: false,
            detail: "max relative error 1".into(),
        };
        assert_eq!(
            failed_ops(&[bad]),
            ["attention forward BF16: max relative error 1"]
        );
    }
}
