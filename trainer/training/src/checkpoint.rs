//! Checkpoints: `checkpoints/step-NNNNNNN/` with `model.safetensors` (HF parameter names),
//! `optimizer.safetensors` (Adam moments) and `state.json` (step, config). Written under a
//! temporary directory name, fsynced, then renamed, so a kill mid-save leaves the previous
//! checkpoint as the latest complete one.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Contents of `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Adam's step counter.
    pub optimizer_t: u64,
    /// The run's effective configuration.
    pub config: serde_json::Value,
}

/// Directory of step `step`'s checkpoint.
pub fn dir_for(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:07}"))
}

/// Writes a checkpoint atomically and keeps only the newest `keep` (0 = all).
pub fn save(
    run: &Path,
    model: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf> {
    let final_dir = dir_for(run, state.step);
    std::fs::create_dir_all(run.join("checkpoints"))
        .with_context(|| format!("creating {}", run.join("checkpoints").display()))?;
    shared::atomic::write_dir(&final_dir, |tmp| -> Result<()> {
        candle_core::safetensors::save(model, tmp.join("model.safetensors"))?;
        candle_core::safetensors::save(optimizer, tmp.join("optimizer.safetensors"))?;
        std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
        Ok(())
    })
    .with_context(|| format!("writing checkpoint {}", final_dir.display()))?;
    if keep > 0 {
        let all = list(run)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_dir_all(old)?;
        }
    }
    Ok(final_dir)
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run.join("checkpoints");
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if path.join("state.json").exists() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A loaded checkpoint.
pub struct Loaded {
    /// Model tensors by HF name.
    pub model: HashMap<String, Tensor>,
    /// Optimizer moments.
    pub optimizer: HashMap<String, Tensor>,
    /// Step and config.
    pub state: CheckpointState,
}

/// Loads the checkpoint in `dir` onto the CPU.
pub fn load(dir: &Path) -> Result<Loaded> {
    let state: CheckpointState = serde_json::from_slice(
        &std::fs::read(dir.join("state.json"))
            .with_context(|| format!("reading {}/state.json", dir.display()))?,
    )
    .with_context(|| format!("parsing {}/state.json", dir.display()))?;
    let model =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .with_context(|| format!("reading {}/model.safetensors", dir.display()))?;
    let optimizer = candle_core::safetensors::load(
        dir.join("optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )
    .with_context(|| format!("reading {}/optimizer.safetensors", dir.display()))?;
    if model.is_empty() {
        bail!("{}: empty model", dir.display());
    }
    Ok(Loaded {
        model,
        optimizer,
        state,
    })
}
