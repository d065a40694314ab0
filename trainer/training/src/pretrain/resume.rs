//! `--resume`: the step to start from, with the model and optimizer state of the run directory's
//! latest checkpoint, after checking that the data and the run-defining flags are the ones it was
//! trained with.

use super::setup::Model;
use super::TrainArgs;
use crate::checkpoint;
use crate::data::Data;
use anyhow::{bail, Result};
use std::path::Path;

/// Key of the shard-set fingerprint in a checkpoint's `config`.
pub const SHARDS_FINGERPRINT: &str = "shards_fingerprint";
/// Key of the run's [`super::RunIdentity`] in a checkpoint's `config`.
pub const IDENTITY: &str = "identity";

/// The first step to run: 0 for a new run (refused when the directory already has checkpoints),
/// or the latest checkpoint's step with `--resume` (its weights and optimizer state loaded into
/// `model`).
pub fn resume_point(
    args: &TrainArgs,
    out: &Path,
    data: &Data,
    model: &mut Model,
    writer: bool,
) -> Result<u64> {
    if !args.resume {
        if !checkpoint::list(out)?.is_empty() {
            bail!(
                "{} already has checkpoints: pass --resume to continue, or choose another --out",
                out.display()
            );
        }
        return Ok(0);
    }
    let Some((_, dir)) = checkpoint::list(out)?.pop() else {
        bail!("--resume: {} has no checkpoint", out.display())
    };
    let loaded = checkpoint::load(&dir)?;
    let saved = &loaded.state.config;
    ensure_same_shards(data, saved, &dir)?;
    let saved_identity = saved.get(IDENTITY).cloned().unwrap_or_default();
    let (differences, later_phases) = args
        .identity()
        .differences_at(&saved_identity, loaded.state.step);
    if !differences.is_empty() {
        bail!(
            "--resume: {} was made with different settings (saved -> current):\n  {}",
            dir.display(),
            differences.join("\n  ")
        );
    }
    let source = dir.display().to_string();
    model
        .params
        .load_by_name(&loaded.model, &source, |_, _| false)?;
    model
        .train_step
        .optimizer_mut()
        .load_state(loaded.optimizer, loaded.state.optimizer_t)?;
    if writer {
        eprintln!("resuming {} from step {}", out.display(), loaded.state.step);
        if !later_phases.is_empty() {
            eprintln!(
                "phases not begun at step {} changed (saved -> current; allowed, they change \
                 only steps to come):\n  {}",
                loaded.state.step,
                later_phases.join("\n  ")
            );
        }
    }
    Ok(loaded.state.step)
}

/// The shard contents are part of the run: a set rebuilt or replaced under the same path while
/// the run was stopped would silently change the data stream.
fn ensure_same_shards(data: &Data, saved: &serde_json::Value, dir: &Path) -> Result<()> {
    let fingerprint = data.fingerprint();
    let Some(saved) = saved.get(SHARDS_FINGERPRINT).and_then(|v| v.as_str()) else {
        return Ok(());
    };
    if saved != fingerprint {
        bail!(
            "--resume: the shards in {} changed since {} was written (content fingerprint {}, \
             the checkpoint's {}): resume with the shard set it was trained on",
            data.describe_dirs(),
            dir.display(),
            &fingerprint[..16],
            &saved[..saved.len().min(16)]
        );
    }
    Ok(())
}
