//! `preprocess merge`: joins shard sets (e.g. the partitions of a job array) into one directory
//! by hard-linking their shard files, so no token is copied.

use crate::error::{Error, Result};
use shared::atomic;
use shared::shard::{pair_paths, shard_name, InputFile, Manifest, Totals};
use shared::tokenizer::TOKENIZER_FILE;
use std::path::{Path, PathBuf};

fn link_or_copy(from: &Path, to: &Path) -> Result<bool> {
    shared::faults::step("link", to).map_err(|e| shared::Error::io(to, e))?;
    let _ = std::fs::remove_file(to);
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(_) => {
            // Another filesystem: copy under a temporary name, then rename.
            let tmp = atomic::tmp_path(to);
            std::fs::copy(from, &tmp).map_err(|e| shared::Error::io(from, e))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| shared::Error::io(&tmp, e))?;
            atomic::commit(&tmp, to)?;
            Ok(false)
        }
    }
}

/// Merges the shard sets in `inputs` into `out`; returns the new manifest and how many files were copied rather than linked.
/// Kept whole: check, copy, manifest: the steps of a merge in the order they commit.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<(Manifest, usize)> {
    if inputs.is_empty() {
        return Err(Error::Usage(
            "merge needs at least one shard directory".into(),
        ));
    }
    let manifests: Vec<Manifest> = inputs
        .iter()
        .map(|d| Manifest::load(d))
        .collect::<Result<_, _>>()?;
    for (m, d) in manifests.iter().zip(inputs).skip(1) {
        manifests[0]
            .tokenizer
            .ensure_same(&m.tokenizer, &inputs[0], d)?;
        if m.token_dtype != manifests[0].token_dtype {
            return Err(Error::Usage(format!(
                "{} stores {:?} ids but {} stores {:?}",
                d.display(),
                m.token_dtype,
                inputs[0].display(),
                manifests[0].token_dtype
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::Output {
        dir: out.to_path_buf(),
        msg: format!("cannot create: {e}"),
    })?;
    let _lock = shared::lock::DirLock::acquire(out, "preprocess merge")?;
    if out.join(shared::shard::MANIFEST_FILE).exists() {
        return Err(Error::Output {
            dir: out.to_path_buf(),
            msg: "already holds a shard set".into(),
        });
    }
    let mut shards = Vec::new();
    let mut inputs_consumed: Vec<InputFile> = Vec::new();
    let mut totals = Totals::default();
    let mut copied = 0;
    for (m, dir) in manifests.iter().zip(inputs) {
        for entry in &m.shards {
            let name = shard_name(shards.len());
            let sources = pair_paths(dir, &entry.name);
            for (from, to) in sources.iter().zip(pair_paths(out, &name)) {
                copied += (!link_or_copy(from, &to)?) as usize;
            }
            shards.push(shared::shard::ShardEntry {
                name,
                ..entry.clone()
            });
        }
        inputs_consumed.extend(m.inputs.iter().cloned());
        totals.add(&m.totals);
    }
    link_or_copy(&inputs[0].join(TOKENIZER_FILE), &out.join(TOKENIZER_FILE))?;
    let manifest = Manifest::new(
        manifests[0].tokenizer.clone(),
        manifests[0].token_dtype,
        totals,
        shards,
        inputs_consumed,
        serde_json::json!({ "merged_from": inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "parts": manifests.iter().map(|m| m.options.clone()).collect::<Vec<_>>() }),
    );
    manifest.save(out)?;
    Ok((manifest, copied))
}
