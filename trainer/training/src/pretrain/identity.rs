//! What `--resume` may and may not change.
//!
//! [`TrainArgs::split`] sorts every flag into one of two structs by destructuring `TrainArgs`
//! (and the structs flattened into it) field by field, with no `..`: a new flag does not compile
//! until it is placed on one side. [`RunIdentity`] holds the flags that change the numbers (data,
//! model, optimizer, evaluation set); it is saved with each checkpoint and a resume must match it
//! whole. [`ResumeFree`] holds the ones that do not (where files go, how often, how fast).

use super::TrainArgs;
use crate::data::DataArgs;
use crate::runtime::RuntimeArgs;
use serde::{Deserialize, Serialize};
use shared::sampler::{DataConfig, Layout, LossNorm, Order, Phase, ShardSource};
use shared::schedule::LrDecay;
use std::path::PathBuf;

/// The flags that define a run's numbers. Serialized with the same (flat) keys as `TrainArgs`,
/// so it compares equal to the identity saved by any earlier version that had the same flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// The data flags' part, flattened into the same keys.
    #[serde(flatten)]
    pub data: DataIdentity,
    /// `None` for `masked`, the default (so checkpoints from before `--loss-norm` still match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_norm: Option<String>,
    /// `None` for BERT (so checkpoints from before `--arch` still match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    pub model: String,
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub intermediate: Option<usize>,
    pub pre_ln: bool,
    pub dropout: f64,
    pub micro_batch: usize,
    pub lr: f64,
    pub warmup: f64,
    pub final_lr_ratio: f64,
    /// `None` for the default linear decay (so checkpoints from before `--lr-schedule` match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<String>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub clip: f64,
    pub precision: String,
    pub eval_shards: Option<PathBuf>,
    pub eval_batch: usize,
}

/// The data flags (`DataConfig`'s) that define a run's numbers: every one but the shard cache's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataIdentity {
    pub shards: Vec<ShardSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix_by_size: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    pub schedule: String,
    pub seq_len: usize,
    pub layout: Layout,
    pub min_doc_tokens: usize,
    pub seed: u64,
    pub mask_token_fraction: f64,
    pub random_token_fraction: f64,
    pub mask_exact: bool,
    pub whole_word: bool,
    /// `None` for the default global order (so checkpoints from before `--order` still match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// `None` for `point`, `false` and `none`: the defaults (so checkpoints from before rates per
    /// row still match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_dist: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_per_document: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_weight: Option<String>,
    pub steps: u64,
    pub batch_size: usize,
    pub eval_sequences: u64,
    /// The run's phases. On resume, a phase begun before the checkpoint must be unchanged; a
    /// later one may change ([`RunIdentity::differences_at`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

/// The data flags a resumed run may change: the shard cache and the loader's resources.
struct DataFree {
    cache_dir: Option<PathBuf>,
    cache_bytes: Option<u64>,
    loader_threads: usize,
    prefetch: usize,
}

/// `data`'s flags on each side of `--resume`. One exhaustive destructuring: a data flag left
/// unclassified is a compile error.
fn split_data(data: DataArgs) -> (DataIdentity, DataFree) {
    let DataArgs {
        config,
        loader_threads,
        prefetch,
    } = data;
    let DataConfig {
        shards,
        mix,
        mix_by_size,
        join,
        schedule,
        steps,
        batch_size,
        seq_len,
        layout,
        min_doc_tokens,
        seed,
        rate_dist,
        rate_per_document,
        loss_weight,
        mask_token_fraction,
        random_token_fraction,
        mask_exact,
        whole_word,
        eval_sequences,
        order,
        cache_dir,
        cache_bytes,
        phases,
    } = config;
    let identity = DataIdentity {
        shards,
        mix: mix.map(|m| m.to_string()),
        mix_by_size: mix_by_size.map(|m| m.to_string()),
        join: join.iter().map(|j| j.to_string()).collect(),
        schedule: schedule.to_string(),
        seq_len,
        layout,
        min_doc_tokens,
        seed,
        mask_token_fraction,
        random_token_fraction,
        mask_exact,
        whole_word,
        order: (order != Order::Global).then(|| order.to_string()),
        rate_dist: (!rate_dist.is_point()).then(|| rate_dist.to_string()),
        rate_per_document,
        loss_weight: (!loss_weight.is_none()).then(|| loss_weight.to_string()),
        steps,
        batch_size,
        eval_sequences,
        phases,
    };
    let free = DataFree {
        cache_dir,
        cache_bytes,
        loader_threads,
        prefetch,
    };
    (identity, free)
}

/// The flags a resumed run may change: output, cadence, resources and display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResumeFree {
    pub out: Option<PathBuf>,
    pub resume: bool,
    pub save_every: u64,
    pub keep: usize,
    pub eval_every: u64,
    pub check_every: u64,
    pub verify_shards: bool,
    pub cache_dir: Option<PathBuf>,
    pub cache_bytes: Option<u64>,
    pub loader_threads: usize,
    pub prefetch: usize,
    pub device: String,
    pub quiet: bool,
    pub kernels: model::ops::Kernels,
    pub log_every: u64,
    pub profile: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elbo_draws: Option<usize>,
}

impl TrainArgs {
    /// Every flag, on the side of `--resume` it belongs to. One exhaustive destructuring here
    /// and one in `split_data`: a flag left unclassified is a compile error.
    pub fn split(&self) -> (RunIdentity, ResumeFree) {
        let TrainArgs {
            data,
            out,
            arch,
            model,
            layers,
            hidden,
            heads,
            intermediate,
            pre_ln,
            dropout,
            micro_batch,
            lr,
            warmup,
            final_lr_ratio,
            lr_schedule,
            beta1,
            beta2,
            eps,
            weight_decay,
            clip,
            loss_norm,
            precision,
            save_every,
            keep,
            resume,
            eval_every,
            eval_shards,
            eval_batch,
            elbo_draws,
            check_every,
            verify_shards,
            log_every,
            profile,
            runtime:
                RuntimeArgs {
                    device,
                    quiet,
                    kernels,
                },
        } = self.clone();
        let (data, data_free) = split_data(data);
        let identity = RunIdentity {
            data,
            loss_norm: (loss_norm != LossNorm::Masked).then(|| loss_norm.name().to_string()),
            arch: (arch != model::Arch::Bert).then(|| arch.name().to_string()),
            model,
            layers,
            hidden,
            heads,
            intermediate,
            pre_ln,
            dropout: dropout.unwrap_or(arch.default_dropout()),
            micro_batch,
            lr,
            warmup,
            final_lr_ratio,
            lr_schedule: (lr_schedule != LrDecay::Linear).then(|| lr_schedule.to_string()),
            beta1,
            beta2,
            eps,
            weight_decay,
            clip,
            precision,
            eval_shards,
            eval_batch,
        };
        let DataFree {
            cache_dir,
            cache_bytes,
            loader_threads,
            prefetch,
        } = data_free;
        let free = ResumeFree {
            out,
            resume,
            save_every,
            keep,
            eval_every,
            check_every,
            verify_shards,
            cache_dir,
            cache_bytes,
            loader_threads,
            prefetch,
            device,
            quiet,
            kernels,
            log_every,
            profile,
            elbo_draws,
        };
        (identity, free)
    }

    /// The run-defining flags (saved with each checkpoint).
    pub fn identity(&self) -> RunIdentity {
        self.split().0
    }
}

impl RunIdentity {
    /// As JSON without unset optional flags: a checkpoint written before an optional flag existed
    /// still compares equal when the flag is left unset.
    pub fn to_json(&self) -> serde_json::Value {
        without_unset(serde_json::to_value(self).expect("serializes"))
    }

    /// For a resume at step `step`: the differences that refuse it (flags, and phases begun
    /// before `step`, as in [`RunIdentity::differences`]) and the changed phases that have not
    /// begun (allowed: they change only steps still to come), each `phase K (steps A..B) KEY:
    /// saved -> current`.
    pub fn differences_at(
        &self,
        saved: &serde_json::Value,
        step: u64,
    ) -> (Vec<String>, Vec<String>) {
        let mut refused = self.differences(saved);
        let mut allowed = Vec::new();
        let phases_of = |v: &serde_json::Value| -> Vec<serde_json::Map<String, serde_json::Value>> {
            v.get("phases")
                .and_then(|p| p.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_object().cloned()).collect())
                .unwrap_or_default()
        };
        let steps_of = |v: &serde_json::Value| v.get("steps").and_then(|s| s.as_u64());
        let current_json = self.to_json();
        let (old, new) = (phases_of(saved), phases_of(&current_json));
        // Where each phase starts, in the saved run and in this one (the last takes the rest).
        let starts = |phases: &[serde_json::Map<String, serde_json::Value>]| -> Vec<u64> {
            let mut at = 0;
            phases
                .iter()
                .map(|p| {
                    let start = at;
                    at += p
                        .get("steps")
                        .and_then(|s| s.as_u64())
                        .unwrap_or(u64::MAX / 2);
                    start
                })
                .collect()
        };
        let (old_starts, new_starts) = (starts(&old), starts(&new));
        let run_steps = steps_of(&current_json).or(steps_of(saved)).unwrap_or(0);
        let empty = serde_json::Map::new();
        for k in 0..old.len().max(new.len()) {
            let (o, n) = (old.get(k).unwrap_or(&empty), new.get(k).unwrap_or(&empty));
            let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
            keys.sort();
            keys.dedup();
            let start = old_starts
                .get(k)
                .into_iter()
                .chain(new_starts.get(k))
                .copied()
                .min()
                .unwrap_or(0);
            let end = run_steps.min(
                start.saturating_add(
                    n.get("steps")
                        .or(o.get("steps"))
                        .and_then(|s| s.as_u64())
                        .unwrap_or(run_steps),
                ),
            );
            let show =
                |v: Option<&serde_json::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
            let begun = start < step;
            for key in keys.into_iter().filter(|key| o.get(*key) != n.get(*key)) {
                let line = format!(
                    "phase {} (steps {start}..{end}) {key}: {} -> {}",
                    k + 1,
                    show(o.get(key)),
                    show(n.get(key))
                );
                if begun {
                    refused.push(line);
                } else {
                    allowed.push(line);
                }
            }
        }
        (refused, allowed)
    }

    /// The flags whose values differ between `saved` (a checkpoint's identity JSON) and `self`,
    /// as `name: saved -> current` lines; empty when a resume may continue. Phases are compared
    /// by [`RunIdentity::differences_at`], not here.
    pub fn differences(&self, saved: &serde_json::Value) -> Vec<String> {
        let (mut saved, mut current) = (without_unset(saved.clone()), self.to_json());
        for v in [&mut saved, &mut current] {
            if let Some(map) = v.as_object_mut() {
                map.remove("phases");
            }
        }
        let empty = serde_json::Map::new();
        let saved = saved.as_object().unwrap_or(&empty);
        let current = current
            .as_object()
            .expect("a struct serializes to an object");
        let mut names: Vec<&String> = saved.keys().chain(current.keys()).collect();
        names.sort();
        names.dedup();
        let show =
            |v: Option<&serde_json::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
        names
            .into_iter()
            .filter(|name| saved.get(*name) != current.get(*name))
            .map(|name| {
                format!(
                    "{name}: {} -> {}",
                    show(saved.get(name)),
                    show(current.get(name))
                )
            })
            .collect()
    }
}

/// `v` without its null (unset optional) fields.
fn without_unset(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, value| !value.is_null());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeSet;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    /// Every optional flag set, so that no key is hidden by being unset.
    fn all_flags_set() -> TrainArgs {
        let argv = [
            "t",
            "--shards",
            "s",
            "--mix-by-size",
            "0.5",
            "--join",
            "a@0.5",
            "--out",
            "o",
            "--layers",
            "2",
            "--hidden",
            "8",
            "--heads",
            "2",
            "--intermediate",
            "16",
            "--eval-shards",
            "e",
            "--order",
            "shard-blocks:2",
            "--cache-dir",
            "c",
            "--cache-bytes",
            "1G",
            "--lr-schedule",
            "wsd:0.1:1-sqrt",
            "--phases",
            r#"{"steps": 10}"#,
            "--rate-dist",
            "uniform:0.1:0.9",
            "--rate-per-document",
            "--loss-weight",
            "inverse-rate",
            "--loss-norm",
            "token",
            "--elbo-draws",
            "2",
        ];
        let mut args = Cli::parse_from(argv).train;
        // --mix conflicts with --mix-by-size on the command line; both are keys all the same.
        args.data.config.mix = Some("a=1".parse().unwrap());
        args.arch = model::Arch::ModernBert;
        args
    }

    fn keys(v: serde_json::Value) -> BTreeSet<String> {
        v.as_object().expect("object").keys().cloned().collect()
    }

    #[test]
    fn every_flag_is_on_exactly_one_side_of_resume() {
        let args = all_flags_set();
        let all = keys(serde_json::to_value(&args).unwrap());
        let (identity, free) = args.split();
        let (identity, free) = (
            keys(serde_json::to_value(identity).unwrap()),
            keys(serde_json::to_value(free).unwrap()),
        );
        assert!(
            identity.is_disjoint(&free),
            "{:?}",
            identity.intersection(&free)
        );
        let sorted: BTreeSet<String> = identity.union(&free).cloned().collect();
        assert_eq!(sorted, all, "a flag of TrainArgs is on neither side");
        // And the clap flags are exactly the serialized fields (no flag escapes the config).
        let flags: BTreeSet<String> = <Cli as clap::CommandFactory>::command()
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help"))
            .map(|a| a.get_id().to_string())
            .collect();
        assert_eq!(flags, all);
    }

    #[test]
    fn identity_changes_with_each_run_defining_flag_and_not_with_the_others() {
        let base = all_flags_set();
        let mut resumed = base.clone();
        resumed.resume = true;
        resumed.save_every = 7;
        resumed.data.loader_threads = 3;
        resumed.runtime.quiet = true;
        resumed.out = Some("elsewhere".into());
        resumed.data.config.cache_dir = Some("another-cache".into());
        resumed.data.config.cache_bytes = Some(5 << 30);
        assert!(resumed
            .identity()
            .differences(&base.identity().to_json())
            .is_empty());

        let mut other = base.clone();
        other.data.config.seed = 9;
        other.lr = 1e-3;
        let diff = other.identity().differences(&base.identity().to_json());
        assert_eq!(diff, ["lr: 0.0005 -> 0.001", "seed: 0 -> 9"]);

        let mut reordered = base.clone();
        reordered.data.config.order = shared::sampler::Order::ShardBlocks(8);
        let diff = reordered.identity().differences(&base.identity().to_json());
        assert_eq!(diff.len(), 1);
        assert!(diff[0].starts_with("order:"), "{diff:?}");
    }

    #[test]
    fn each_flag_is_on_the_side_written_here() {
        // Written by hand: moving a flag across `--resume` (e.g. `mask_exact` or `dropout` to the
        // free side) must be a decision that changes this list, not a silent edit of `split`.
        let identity = [
            "shards",
            "mix",
            "mix_by_size",
            "join",
            "schedule",
            "seq_len",
            "layout",
            "min_doc_tokens",
            "seed",
            "mask_token_fraction",
            "random_token_fraction",
            "mask_exact",
            "whole_word",
            "order",
            "rate_dist",
            "rate_per_document",
            "loss_weight",
            "loss_norm",
            "arch",
            "model",
            "layers",
            "hidden",
            "heads",
            "intermediate",
            "pre_ln",
            "dropout",
            "steps",
            "batch_size",
            "micro_batch",
            "lr",
            "warmup",
            "final_lr_ratio",
            "lr_schedule",
            "beta1",
            "beta2",
            "eps",
            "weight_decay",
            "clip",
            "precision",
            "eval_sequences",
            "eval_shards",
            "eval_batch",
            "phases",
        ];
        let free = [
            "out",
            "resume",
            "save_every",
            "keep",
            "eval_every",
            "check_every",
            "verify_shards",
            "cache_dir",
            "cache_bytes",
            "loader_threads",
            "prefetch",
            "device",
            "quiet",
            "kernels",
            "log_every",
            "profile",
            "elbo_draws",
        ];
        let (got_identity, got_free) = all_flags_set().split();
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            keys(serde_json::to_value(got_identity).unwrap()),
            names(&identity)
        );
        assert_eq!(keys(serde_json::to_value(got_free).unwrap()), names(&free));
    }

    /// The identity a checkpoint of the README's sample run saved before `--mix` and `--order`
    /// existed (the trainer of commit 5c759ab^: its `TrainArgs` serialized, the volatile flags and
    /// unset optional ones removed).
    const IDENTITY_BEFORE_MIX_AND_ORDER: &str =
        include_str!("testdata/identity-before-mix-and-order.json");

    fn sample_run(extra: &[&str]) -> TrainArgs {
        let mut argv = vec![
            "t",
            "--shards",
            "sample-shards/",
            "--model",
            "tiny",
            "--steps",
            "40",
            "--batch-size",
            "32",
            "--micro-batch",
            "32",
            "--eval-sequences",
            "50",
            "--eval-every",
            "20",
            "--schedule",
            "linear:0.3:0.15",
            "--out",
            "runs/sample",
        ];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).train
    }

    #[test]
    fn a_checkpoint_saved_before_mix_and_order_existed_still_resumes() {
        let saved: serde_json::Value = serde_json::from_str(IDENTITY_BEFORE_MIX_AND_ORDER).unwrap();
        assert!(sample_run(&[]).identity().differences(&saved).is_empty());
        // ... and setting the new flags, or changing an old one, is a difference.
        let diff = sample_run(&["--mix", "a=1"]).identity().differences(&saved);
        assert_eq!(diff, ["mix: (unset) -> \"a=1\""]);
        let diff = sample_run(&["--order", "shard-blocks:4"])
            .identity()
            .differences(&saved);
        assert_eq!(diff.len(), 1);
        assert!(diff[0].starts_with("order: (unset) -> "), "{diff:?}");
        let diff = sample_run(&["--dropout", "0"])
            .identity()
            .differences(&saved);
        assert_eq!(diff, ["dropout: 0.1 -> 0.0"]);
    }

    #[test]
    fn dropout_defaults_to_the_architectures_and_the_identity_holds_the_effective_value() {
        let bert = sample_run(&[]);
        let modern = sample_run(&["--arch", "modernbert"]);
        assert_eq!((bert.dropout(), modern.dropout()), (0.1, 0.0));
        assert_eq!(modern.model_config(30522, 128).unwrap().dropout, 0.0);
        assert_eq!(
            sample_run(&["--arch", "modernbert", "--dropout", "0.1"])
                .model_config(30522, 128)
                .unwrap()
                .dropout,
            0.1
        );
        // An explicit --dropout equal to the default is the same run.
        let saved = serde_json::to_value(bert.identity()).unwrap();
        assert!(sample_run(&["--dropout", "0.1"])
            .identity()
            .differences(&saved)
            .is_empty());
        let saved = serde_json::to_value(modern.identity()).unwrap();
        assert!(sample_run(&["--arch", "modernbert", "--dropout", "0"])
            .identity()
            .differences(&saved)
            .is_empty());
    }
}
