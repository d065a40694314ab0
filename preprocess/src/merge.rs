//! `preprocess merge`: joins shard sets (e.g. the partitions of a job array) into one directory
//! by hard-linking their shard files, so no token is copied.

use crate::error::{Error, Result};
use shared::atomic;
use shared::shard::{
    pair_names, pair_paths, shard_name, InputFile, Manifest, Totals, MANIFEST_FILE,
};
use shared::store::{is_remote, Store};
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
    if is_remote(out) || inputs.iter().any(|d| is_remote(d)) {
        return merge_in_bucket(inputs, out);
    }
    let manifests: Vec<Manifest> = inputs
        .iter()
        .map(|d| Manifest::load(d))
        .collect::<Result<_, _>>()?;
    check_compatible(&manifests, inputs)?;
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
    let manifest = merged_manifest(&manifests, inputs, shards, inputs_consumed, totals);
    manifest.save(out)?;
    Ok((manifest, copied))
}

/// The sets must share a tokenizer and an id width.
fn check_compatible(manifests: &[Manifest], inputs: &[PathBuf]) -> Result<()> {
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
    Ok(())
}

fn merged_manifest(
    manifests: &[Manifest],
    inputs: &[PathBuf],
    shards: Vec<shared::shard::ShardEntry>,
    inputs_consumed: Vec<InputFile>,
    totals: Totals,
) -> Manifest {
    Manifest::new(
        manifests[0].tokenizer.clone(),
        manifests[0].token_dtype,
        totals,
        shards,
        inputs_consumed,
        serde_json::json!({ "merged_from": inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "parts": manifests.iter().map(|m| m.options.clone()).collect::<Vec<_>>() }),
    )
}

/// Merge within one bucket: shard objects copied server-side under their new names, the
/// manifest written last. Returns the objects copied.
fn merge_in_bucket(inputs: &[PathBuf], out: &Path) -> Result<(Manifest, usize)> {
    let url = |p: &Path| p.to_string_lossy().trim_end_matches('/').to_string();
    if !is_remote(out) || !inputs.iter().all(|d| is_remote(d)) {
        return Err(Error::Usage(
            "merge: give either local directories only or bucket URLs only (copy the others first)"
                .into(),
        ));
    }
    let target = Store::open(&url(out))?;
    if target.size_of(MANIFEST_FILE)?.is_some() {
        return Err(Error::Output {
            dir: out.to_path_buf(),
            msg: "already holds a shard set".into(),
        });
    }
    let sources: Vec<Store> = inputs
        .iter()
        .map(|d| Store::open(&url(d)))
        .collect::<Result<_, _>>()?;
    let manifests: Vec<Manifest> = sources
        .iter()
        .map(|s| {
            Manifest::parse(
                &s.get_bytes(MANIFEST_FILE)?,
                Path::new(&s.url_of(MANIFEST_FILE)),
            )
        })
        .collect::<Result<_, _>>()?;
    check_compatible(&manifests, inputs)?;
    let (mut shards, mut inputs_consumed, mut totals, mut copied) =
        (Vec::new(), Vec::new(), Totals::default(), 0);
    for (m, source) in manifests.iter().zip(&sources) {
        for entry in &m.shards {
            let name = shard_name(shards.len());
            let (from, to) = (pair_names(&entry.name), pair_names(&name));
            for (f, t) in from.iter().zip(&to) {
                target.copy_within_bucket(source, f, t)?;
                copied += 1;
            }
            shards.push(shared::shard::ShardEntry {
                name,
                ..entry.clone()
            });
        }
        inputs_consumed.extend(m.inputs.iter().cloned());
        totals.add(&m.totals);
    }
    target.copy_within_bucket(&sources[0], TOKENIZER_FILE, TOKENIZER_FILE)?;
    let manifest = merged_manifest(&manifests, inputs, shards, inputs_consumed, totals);
    target.put_bytes(MANIFEST_FILE, manifest.to_bytes())?;
    Ok((manifest, copied))
}
