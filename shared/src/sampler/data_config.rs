//! [`DataConfig`]: everything a batch depends on, in one type. The trainer's flags, `trainer
//! inspect-batch` and the Python package's `MaskedBatches` keywords are all this struct (with
//! feature `clap`, its fields are the command-line flags), so the three cannot disagree about a
//! batch. [`DataConfig::open`] turns it into [`Data`]: the shards, their tokenizer, the sampler
//! and the held-out sequences.

use super::batch::PhaseSampler;
use super::phases::{Phase, PhasePlan};
use super::{
    Join, Layout, LossWeight, MaskVocab, MaskingConfig, MaskingSampler, MixRule, MixSpec, Order,
    SamplerConfig, Sequences, ShardSource, Weight,
};
use crate::error::{Error, Result};
use crate::rate_dist::RateDist;
use crate::schedule::MaskSchedule;
use crate::shard::ShardSet;
use crate::store::CacheConfig;
use crate::tokenizer::{LoadedTokenizer, TokenizerInfo};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The data stream of a run: shards, sequences, schedule, masking, batch and run length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DataConfig {
    /// Shard directory made by `preprocess` (repeat to read several as one), or NAME=DIR for a
    /// named source of a mixture (repeat a name to read several directories as that source). A
    /// directory may be a bucket URL (s3://bucket/shards, gs://, az://, https://), read through
    /// the local cache (--cache-dir, --cache-bytes).
    #[cfg_attr(
        feature = "clap",
        arg(long = "shards", value_name = "[NAME=]DIR", required = true)
    )]
    pub shards: Vec<ShardSource>,
    /// Weights of the named sources, each a number or a schedule (normalised at every step),
    /// e.g. c4=0.7,wiki=0.3 or c4=0.5,wiki=linear:0.5:0.1. Needed with two or more sources.
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME=WEIGHT,...", value_parser = parse_mix))]
    #[serde(
        default,
        with = "optional_spec",
        skip_serializing_if = "Option::is_none"
    )]
    pub mix: Option<MixSpec>,
    /// Instead of --mix: weigh each named source by its size, tokens^ALPHA normalised (1:
    /// proportional to size, 0: uniform); ALPHA a number or a schedule, e.g. 0.7 or mmBERT's
    /// stairs:0.7:0.5@0.6:0.3@0.9.
    #[cfg_attr(feature = "clap", arg(long, value_name = "ALPHA", value_parser = parse_weight, conflicts_with = "mix"))]
    #[serde(default, with = "weight_spec", skip_serializing_if = "Option::is_none")]
    pub mix_by_size: Option<Weight>,
    /// With --mix-by-size: source NAME joins the mixture at fraction F of the run (weight 0
    /// before); repeat for several.
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME@F", value_parser = parse_join, requires = "mix_by_size"))]
    #[serde(default, with = "join_spec", skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<Join>,
    /// Masking-rate schedule over the run, e.g. constant:0.15, linear:0.3:0.15, cosine:0.3:0.15@0.5.
    #[cfg_attr(feature = "clap", arg(long, default_value = "constant:0.15", value_parser = parse_schedule, long_help = crate::schedule::GRAMMAR))]
    #[serde(with = "schedule_spec")]
    pub schedule: MaskSchedule,
    /// Optimizer steps: the length of the run (the schedule's time axis).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 70_000))]
    pub steps: u64,
    /// Sequences per optimizer step over all ranks (reached by gradient accumulation).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 4096))]
    pub batch_size: usize,
    /// Sequence length including [CLS] and [SEP].
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 128))]
    pub seq_len: usize,
    /// truncate: one document per sequence, padded (the paper's); pack: documents joined with [SEP], no padding;
    /// pack-docs: documents each as [CLS] … [SEP] packed into full rows, with attention kept inside
    /// each document and positions restarting at each (ModernBERT-style unpadded packing).
    #[cfg_attr(feature = "clap", arg(long, default_value = "truncate"))]
    pub layout: Layout,
    /// Skip documents shorter than this many tokens (truncate layout).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1))]
    pub min_doc_tokens: usize,
    /// Seed of data order and masks.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// How each row's masking rate is drawn: point (every row at --schedule's rate), or a
    /// distribution whose parameters may follow schedules, e.g. uniform:0.001:1,
    /// stratified:0.001:1, beta:2:5:0.05:0.6, uniform:0.001:[linear:0.1:0.8].
    #[cfg_attr(feature = "clap", arg(long, value_name = "SPEC", default_value = "point", long_help = crate::rate_dist::GRAMMAR))]
    #[serde(default, skip_serializing_if = "RateDist::is_point")]
    pub rate_dist: RateDist,
    /// With --layout pack-docs: one rate per document (segment) instead of one per row
    /// (Open-dLLM's per-document ratio).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_per_document: bool,
    /// Each predicted token's loss weight: none, or inverse-rate[:EPS] (1 / max(rate, EPS), the
    /// masked-diffusion ELBO's weight; EPS default 0.001). Also the `loss_weight` item of the
    /// Python package and inspect-batch --json.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "WEIGHT", default_value = "none")
    )]
    #[serde(default, skip_serializing_if = "LossWeight::is_none")]
    pub loss_weight: LossWeight,
    /// Share of chosen tokens replaced by [MASK].
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.8))]
    pub mask_token_fraction: f64,
    /// Share of chosen tokens replaced by a random token (the rest are kept).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.1))]
    pub random_token_fraction: f64,
    /// Mask exactly round(rate x maskable tokens) per sequence instead of independent draws.
    #[cfg_attr(feature = "clap", arg(long))]
    pub mask_exact: bool,
    /// Mask whole words (WordPiece ## pieces with the piece they continue).
    #[cfg_attr(feature = "clap", arg(long))]
    pub whole_word: bool,
    /// Documents (truncate layout) or sequences (pack) held out for evaluation, from the end of the
    /// shards (or taken from the end of --eval-shards).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 256))]
    pub eval_sequences: u64,
    /// Order of each epoch: global (one shuffle of all sequences) or shard-blocks:K (shuffled
    /// blocks of K shards, sequences shuffled within a block: reads a few shards at a time, for
    /// shards in a bucket bigger than the cache). Same flags, same batches, wherever the shards are.
    #[cfg_attr(feature = "clap", arg(long, default_value = "global"))]
    #[serde(default)]
    pub order: Order,
    /// Local cache of shards read from a bucket [default: $MASKRATE_CACHE_DIR, else
    /// ~/.cache/maskrate/shards].
    #[cfg_attr(feature = "clap", arg(long, value_name = "DIR"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the cache's size, e.g. 512MiB, 4GiB, 5GB [default: $MASKRATE_CACHE_BYTES, else 4G].
    #[cfg_attr(feature = "clap", arg(long, value_name = "SIZE", value_parser = crate::size::parse_size_arg))]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::size::deserialize_opt"
    )]
    pub cache_bytes: Option<u64>,
    /// One phase of the run, repeated per phase in order: its `steps` (the last may leave them
    /// out) and the settings it changes for its stretch (shards, mix, mix_by_size, join,
    /// schedule, seq_len, batch_size), as JSON, e.g. '{"steps": 900, "seq_len": 64}'; in a
    /// config file, [[phases]] tables. A phase's own schedule runs over the phase.
    #[cfg_attr(feature = "clap", arg(long = "phases", value_name = "JSON", value_parser = parse_phase))]
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::phases::phase_list::deserialize"
    )]
    pub phases: Vec<Phase>,
}

impl Default for DataConfig {
    /// The command line's defaults (no shards).
    fn default() -> Self {
        DataConfig {
            shards: Vec::new(),
            mix: None,
            mix_by_size: None,
            join: Vec::new(),
            schedule: MaskSchedule::constant(0.15),
            steps: 70_000,
            batch_size: 4096,
            seq_len: 128,
            layout: Layout::Truncate,
            min_doc_tokens: 1,
            seed: 0,
            rate_dist: RateDist::Point,
            rate_per_document: false,
            loss_weight: LossWeight::None,
            mask_token_fraction: 0.8,
            random_token_fraction: 0.1,
            mask_exact: false,
            whole_word: false,
            eval_sequences: 256,
            order: Order::Global,
            cache_dir: None,
            cache_bytes: None,
            phases: Vec::new(),
        }
    }
}

/// What a [`DataConfig`] opens.
pub struct Data {
    /// The shards (of the first source, in name order: the only one without a mixture).
    pub shards: Arc<ShardSet>,
    /// Every source's name and shards, sorted by name (one entry named "" without a mixture).
    pub sources: Vec<(String, Arc<ShardSet>)>,
    /// Their tokenizer (the copy stored with the shards).
    pub tokenizer: LoadedTokenizer,
    /// The training sampler.
    pub sampler: Arc<MaskingSampler>,
    /// Sequences held out for evaluation (excluded from `sampler`), per source, in name order;
    /// empty when nothing is held out.
    pub held_out: Vec<(String, Sequences)>,
    /// The run's phases, resolved once (one covering the run without phases).
    pub phase_plan: PhasePlan,
}

impl Data {
    /// Content fingerprint of the data: the shard set's, or with named sources a hash of each
    /// source's name and fingerprint.
    pub fn fingerprint(&self) -> String {
        if self.sources.len() == 1 && self.sources[0].0.is_empty() {
            return self.shards.fingerprint();
        }
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (name, set) in &self.sources {
            h.update(format!("{name}={}\n", set.fingerprint()).as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Rank `rank` of `world_size`'s rows of step `step`'s batch as one JSON object: `config`,
    /// `step`, `source` (each row's source name), `rate`, `slots`, and `input_ids`,
    /// `attention_mask`, `token_type_ids`, `labels` as lists of int rows, as the Python package
    /// returns them (labels -100 where nothing is predicted, token types all 0). What `trainer
    /// inspect-batch --json` and `maskrate inspect-batch --json` print.
    pub fn batch_json(
        &self,
        config: &DataConfig,
        step: u64,
        rank: usize,
        world_size: usize,
    ) -> Result<serde_json::Value> {
        let plan =
            super::BatchPlan::whole_rank(self.sampler.global_batch_at(step), world_size, rank);
        plan.validate()?;
        if step >= config.steps {
            return Err(Error::Config(format!(
                "--step {step} is past the end of a {}-step run",
                config.steps
            )));
        }
        let b = self.sampler.batch(step, plan.rank_slots())?;
        let rows = |v: Vec<i64>| -> Vec<Vec<i64>> {
            v.chunks(b.seq_len.max(1)).map(<[i64]>::to_vec).collect()
        };
        let names = self.sampler.source_names();
        let source: Vec<&str> = b.sources.iter().map(|&s| names[s as usize]).collect();
        let mut json = serde_json::json!({
            "config": config,
            "step": b.step,
            "source": source,
            "rate": b.rate,
            "slots": [b.slots.start, b.slots.end],
            "input_ids": rows(b.input_ids.iter().map(|&x| x as i64).collect()),
            "attention_mask": rows(b.attention_mask.iter().map(|&x| x as i64).collect()),
            "token_type_ids": rows(vec![0; b.input_ids.len()]),
            "labels": rows(b.labels.iter().map(|&x| x as i64).collect()),
        });
        if config.weighs_rows() {
            let rates = super::loss::TokenRates {
                seq_len: b.seq_len,
                row_rates: &b.row_rates,
                segment_starts: &b.segment_starts,
                segment_rates: &b.segment_rates,
            };
            let weights = rates.weights(b.labels.len(), config.loss_weight, |i| {
                b.labels[i] != super::IGNORE_LABEL
            });
            let rows_of = |w: &[f32]| -> Vec<Vec<f32>> {
                w.chunks(b.seq_len.max(1)).map(<[f32]>::to_vec).collect()
            };
            json["mask_rate"] = b.row_rates.clone().into();
            json["loss_weight"] = rows_of(&weights).into();
            json["maskable"] = b.row_maskable.clone().into();
        }
        if !b.segment_starts.is_empty() {
            // pack-docs: transformers' packed inputs, named as the Python items name them.
            let p = super::PackedInputs::of(&b.segment_starts, b.input_ids.len());
            json["position_ids"] = rows(p.position_ids.iter().map(|&x| x as i64).collect()).into();
            json["cu_seq_lens_q"] = p.cu_seq_lens.clone().into();
            json["cu_seq_lens_k"] = p.cu_seq_lens.into();
            json["max_length_q"] = p.max_length.into();
            json["max_length_k"] = p.max_length.into();
        }
        Ok(json)
    }

    /// Every shard directory, as `--shards` names them.
    pub fn describe_dirs(&self) -> String {
        let mut out = Vec::new();
        for (name, set) in &self.sources {
            for d in set.dirs() {
                out.push(if name.is_empty() {
                    d.display().to_string()
                } else {
                    format!("{name}={}", d.display())
                });
            }
        }
        out.join(", ")
    }
}

/// The sources `--shards` names: one unnamed source, or named ones.
enum SourceDirs {
    Unnamed(Vec<PathBuf>),
    Named(Vec<(String, Vec<PathBuf>)>),
}

impl DataConfig {
    /// Every key of a saved config (the field names, as `config.toml` and `--config` spell them).
    pub fn keys() -> &'static [&'static str] {
        introspect::struct_fields::<DataConfig>()
    }

    /// This config with `overrides` applied: keys and values as in a saved `config.toml`
    /// (`{"schedule": "linear:0.3:0.15", "seq_len": 64, "cache_bytes": "4GiB"}`), checked as a
    /// whole by the same deserializer. An unknown key is refused, naming the known ones.
    pub fn with_overrides(
        &self,
        overrides: serde_json::Map<String, serde_json::Value>,
    ) -> Result<DataConfig> {
        let keys = Self::keys();
        if let Some(unknown) = overrides.keys().find(|k| !keys.contains(&k.as_str())) {
            return Err(Error::Config(format!(
                "unknown data setting {unknown:?} (known: {})",
                keys.join(", ")
            )));
        }
        let merge = |overrides: &mut dyn Iterator<Item = (&String, &serde_json::Value)>| {
            let mut merged = match serde_json::to_value(self).expect("a config serializes") {
                serde_json::Value::Object(map) => map,
                _ => unreachable!("a struct serializes as an object"),
            };
            for (k, v) in overrides.filter(|(_, v)| !v.is_null()) {
                merged.insert(k.clone(), v.clone());
            }
            serde_json::from_value::<DataConfig>(serde_json::Value::Object(merged))
        };
        merge(&mut overrides.iter()).map_err(|e| {
            // Name the setting at fault: the first that fails on its own.
            let culprit = overrides
                .iter()
                .find_map(|(k, v)| merge(&mut std::iter::once((k, v))).err().map(|e| (k, e)));
            match culprit {
                Some((key, e)) => Error::Config(format!("data setting {key:?}: {e}")),
                None => Error::Config(format!("data settings: {e}")),
            }
        })
    }

    /// Whether items carry each row's rate and each token's loss weight (`mask_rate`,
    /// `loss_weight`, `maskable`): with a rate distribution other than `point` or a loss weight.
    pub fn weighs_rows(&self) -> bool {
        !self.rate_dist.is_point() || !self.loss_weight.is_none()
    }

    /// The masking rules.
    pub fn masking(&self) -> MaskingConfig {
        MaskingConfig {
            mask_fraction: self.mask_token_fraction,
            random_fraction: self.random_token_fraction,
            exact: self.mask_exact,
            whole_word: self.whole_word,
        }
    }

    /// The cache remote shards are read through.
    pub fn cache_config(&self) -> Result<CacheConfig> {
        CacheConfig::new(self.cache_dir.clone(), self.cache_bytes)
    }

    /// Opens shard directories (local or bucket URLs) as one set, through this config's cache.
    pub fn open_shards(&self, dirs: &[PathBuf]) -> Result<ShardSet> {
        let cache = if dirs.iter().any(|d| crate::store::is_remote(d)) {
            Some(self.cache_config()?)
        } else {
            None
        };
        ShardSet::open_many_cached(dirs, cache.as_ref())
    }

    /// Opens the shards and builds the sampler, holding out the last `eval_sequences` sequences.
    pub fn open(&self) -> Result<Data> {
        self.open_with_holdout(self.eval_sequences)
    }

    /// As [`DataConfig::open`], holding out `held_out` sequences (of each source) instead (0:
    /// none, as when the evaluation set comes from other shards).
    pub fn open_with_holdout(&self, held_out: u64) -> Result<Data> {
        if self.phases.is_empty() {
            return self.open_phase(held_out);
        }
        let plan = self.phase_plan()?;
        let resolved = plan.phases();
        let mut opened = Vec::with_capacity(resolved.len());
        for (k, phase) in resolved.iter().enumerate() {
            let mut config = phase.config.clone();
            if phase.local_mixture {
                config.steps = phase.steps.end - phase.steps.start;
            }
            let data = config
                .open_phase(held_out)
                .map_err(|e| Error::Config(format!("phase {}: {e}", k + 1)))?;
            opened.push(data);
        }
        let mut opened = opened.into_iter();
        let Data {
            shards,
            mut sources,
            tokenizer,
            sampler,
            mut held_out,
            ..
        } = opened.next().expect("at least one phase");
        let mut samplers = vec![sampler];
        for (k, data) in opened.enumerate() {
            shards
                .tokenizer()
                .ensure_same(
                    data.shards.tokenizer(),
                    &shards.dirs()[0],
                    &data.shards.dirs()[0],
                )
                .map_err(|e| Error::Config(format!("phase {}: {e}", k + 2)))?;
            for (name, set) in data.sources {
                if !sources
                    .iter()
                    .any(|(n, s)| *n == name && s.dirs() == set.dirs())
                {
                    sources.push((name, set));
                }
            }
            for (name, held) in data.held_out {
                if !held_out.iter().any(|(n, _)| *n == name) {
                    held_out.push((name, held));
                }
            }
            samplers.push(data.sampler);
        }
        let phases = samplers
            .into_iter()
            .zip(resolved)
            .map(|(sampler, phase)| {
                Ok(PhaseSampler {
                    sampler: Arc::try_unwrap(sampler).map_err(|_| {
                        Error::Config(
                            "a phase's sampler is shared while the run is assembled".into(),
                        )
                    })?,
                    steps: phase.steps.clone(),
                    local_schedule: phase.local_schedule,
                    local_mixture: phase.local_mixture,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Data {
            shards,
            sources,
            tokenizer,
            sampler: Arc::new(MaskingSampler::phased(phases)?),
            held_out,
            phase_plan: plan,
        })
    }

    /// [`DataConfig::open_with_holdout`] for a config without phases.
    fn open_phase(&self, held_out: u64) -> Result<Data> {
        match self.source_dirs()? {
            SourceDirs::Unnamed(dirs) => {
                let shards = Arc::new(self.open_shards(&dirs)?);
                self.sample_from(shards, held_out)
            }
            SourceDirs::Named(named) => self.open_mixture(named, held_out),
        }
    }

    /// Splits `--shards` into sources; checks `--mix` belongs with them.
    fn source_dirs(&self) -> Result<SourceDirs> {
        if self.shards.is_empty() {
            return Err(Error::Config("no shard directory given".into()));
        }
        let named = self.shards.iter().filter(|s| s.name.is_some()).count();
        if self.mix.is_some() && self.mix_by_size.is_some() {
            return Err(Error::Config(
                "--mix and --mix-by-size both weigh the sources: give one".into(),
            ));
        }
        if !self.join.is_empty() && self.mix_by_size.is_none() {
            return Err(Error::Config(
                "--join applies to --mix-by-size (with --mix, a weight schedule such as \
                 wiki=stairs:0:0.3@0.5 makes a source join late)"
                    .into(),
            ));
        }
        if named == 0 {
            if self.mix.is_some() || self.mix_by_size.is_some() {
                return Err(Error::Config(
                    "--mix and --mix-by-size weigh named sources: give them as --shards NAME=DIR"
                        .into(),
                ));
            }
            return Ok(SourceDirs::Unnamed(
                self.shards.iter().map(|s| s.dir.clone()).collect(),
            ));
        }
        if named < self.shards.len() {
            return Err(Error::Config(
                "--shards: name every source (NAME=DIR) or none".into(),
            ));
        }
        let mut sources: Vec<(String, Vec<PathBuf>)> = Vec::new();
        for source in &self.shards {
            let name = source.name.as_deref().expect("all named");
            match sources.iter_mut().find(|(n, _)| n == name) {
                Some((_, dirs)) => dirs.push(source.dir.clone()),
                None => sources.push((name.to_string(), vec![source.dir.clone()])),
            }
        }
        if sources.len() > 1 && self.mix.is_none() && self.mix_by_size.is_none() {
            let names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Config(format!(
                "{} sources ({}) need --mix with a weight for each, e.g. --mix {}",
                sources.len(),
                names.join(", "),
                names
                    .iter()
                    .map(|n| format!("{n}=1"))
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(SourceDirs::Named(sources))
    }

    /// Opens named sources (same tokenizer), holds out `held_out` sequences of each and builds
    /// the mixture's sampler.
    fn open_mixture(&self, named: Vec<(String, Vec<PathBuf>)>, held_out: u64) -> Result<Data> {
        let mut sources = Vec::new();
        for (name, dirs) in &named {
            let set = Arc::new(self.open_shards(dirs)?);
            if let Some((first_name, first)) = sources.first() {
                let first: &Arc<ShardSet> = first;
                first
                    .tokenizer()
                    .ensure_same(set.tokenizer(), &first.dirs()[0], &dirs[0])
                    .map_err(|e| match e {
                        Error::TokenizerMismatch(m) => Error::TokenizerMismatch(format!(
                            "sources {first_name:?} and {name:?} must share a tokenizer: {m}"
                        )),
                        other => other,
                    })?;
            }
            sources.push((name.clone(), set));
        }
        let (_, first) = &sources[0];
        let tokenizer =
            LoadedTokenizer::load_from_shards(&first.metadata_dirs()[0], first.tokenizer())?;
        let mut train = Vec::new();
        let mut held = Vec::new();
        for (name, set) in &sources {
            let (t, h) = self.split(set.clone(), &tokenizer.info, held_out)?;
            train.push((name.clone(), t));
            held.extend(h.map(|h| (name.clone(), h)));
        }
        let rule = match (&self.mix, self.mix_by_size) {
            (_, Some(alpha)) => MixRule::BySize {
                alpha,
                join: self.join.clone(),
            },
            (Some(m), None) => MixRule::Weights(m.clone()),
            (None, None) => MixRule::Weights(format!("{}=1", sources[0].0).parse()?),
        };
        let sampler = Arc::new(MaskingSampler::mixed_by(
            train,
            &rule,
            MaskVocab::from_tokenizer(&tokenizer),
            self.sampler_config(),
        )?);
        Ok(Data {
            shards: sources[0].1.clone(),
            sources,
            tokenizer,
            sampler,
            held_out: held,
            phase_plan: self.phase_plan()?,
        })
    }

    /// `set` as sequences of this config's layout, length and minimum document length.
    pub fn sequences(&self, set: Arc<ShardSet>, tokenizer: &TokenizerInfo) -> Result<Sequences> {
        Sequences::new(
            set,
            tokenizer,
            self.layout,
            self.seq_len,
            self.min_doc_tokens,
        )
    }

    /// [`DataConfig::sequences`] with the last `held_out` split off (none when 0).
    fn split(
        &self,
        set: Arc<ShardSet>,
        tokenizer: &TokenizerInfo,
        held_out: u64,
    ) -> Result<(Sequences, Option<Sequences>)> {
        let all = self.sequences(set, tokenizer)?;
        if held_out == 0 {
            return Ok((all, None));
        }
        let (train, eval) = all.split_tail(held_out)?;
        Ok((train, Some(eval)))
    }

    fn sampler_config(&self) -> SamplerConfig {
        SamplerConfig {
            seed: self.seed,
            global_batch: self.batch_size,
            total_steps: self.steps,
            schedule: self.schedule,
            masking: self.masking(),
            order: self.order,
            rate_dist: self.rate_dist,
            rate_per_document: self.rate_per_document,
        }
    }

    /// As [`DataConfig::open_with_holdout`] for one unnamed source already open
    /// (`self.shards` is not read).
    pub fn sample_from(&self, shards: Arc<ShardSet>, held_out: u64) -> Result<Data> {
        if !self.phases.is_empty() {
            return Err(Error::Config(
                "a run of phases opens its shards by path (DataConfig::open)".into(),
            ));
        }
        let first = shards
            .metadata_dirs()
            .first()
            .ok_or_else(|| Error::Config("an empty shard set".into()))?
            .clone();
        let tokenizer = LoadedTokenizer::load_from_shards(&first, shards.tokenizer())?;
        let (sequences, held) = self.split(shards.clone(), &tokenizer.info, held_out)?;
        let held_out: Vec<(String, Sequences)> =
            held.map(|h| (String::new(), h)).into_iter().collect();
        let sampler = Arc::new(MaskingSampler::new(
            sequences,
            MaskVocab::from_tokenizer(&tokenizer),
            self.sampler_config(),
        )?);
        Ok(Data {
            sources: vec![(String::new(), shards.clone())],
            shards,
            tokenizer,
            sampler,
            held_out,
            phase_plan: self.phase_plan()?,
        })
    }
}

/// An optional setting stored as its spec string (`--mix`, a phase's `mix` and `schedule`).
pub(crate) mod optional_spec {
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: serde::Serializer>(
        spec: &Option<T>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        match spec {
            Some(spec) => ser.collect_str(spec),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(de: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: serde::Deserializer<'de>,
    {
        let s: Option<String> = serde::Deserialize::deserialize(de)?;
        s.map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(feature = "clap")]
fn parse_phase(s: &str) -> std::result::Result<Phase, String> {
    serde_json::from_str(s).map_err(|e| format!("a phase is a JSON object of its settings: {e}"))
}

#[cfg(feature = "clap")]
fn parse_mix(s: &str) -> std::result::Result<MixSpec, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// The field names of a `Deserialize` struct, read from what its derived impl asks for.
mod introspect {
    use serde::de::{self, Deserialize, Deserializer, Visitor};

    struct Fields(&'static [&'static str]);

    struct Recorder<'a>(&'a mut Option<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for Recorder<'_> {
        type Error = Fields;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            *self.0 = Some(fields);
            Err(Fields(fields))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    impl de::Error for Fields {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Fields(&[])
        }
    }

    impl de::StdError for Fields {}

    impl std::fmt::Display for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field introspection")
        }
    }

    impl std::fmt::Debug for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Fields({:?})", self.0)
        }
    }

    /// `T`'s field names (empty for a type that is not a struct).
    pub fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        let mut fields = None;
        let _ = T::deserialize(Recorder(&mut fields));
        fields.unwrap_or(&[])
    }
}

/// `--mix-by-size` is stored as its spec string (a number or a schedule).
pub(crate) mod weight_spec {
    use crate::sampler::Weight;

    pub fn serialize<S: serde::Serializer>(w: &Option<Weight>, ser: S) -> Result<S::Ok, S::Error> {
        match w {
            Some(w) => ser.collect_str(w),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        de: D,
    ) -> Result<Option<Weight>, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Spec {
            Number(f64),
            Text(String),
        }
        match Option::<Spec>::deserialize(de)? {
            None => Ok(None),
            Some(Spec::Number(n)) => n.to_string().parse().map(Some),
            Some(Spec::Text(t)) => t.parse().map(Some),
        }
        .map_err(serde::de::Error::custom)
    }

    use serde::Deserialize;
}

/// `--join` is stored as its `NAME@F` strings.
mod join_spec {
    use crate::sampler::Join;

    pub fn serialize<S: serde::Serializer>(j: &[Join], ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(j.iter().map(|j| j.to_string()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<Join>, D::Error> {
        let v: Vec<String> = serde::Deserialize::deserialize(de)?;
        v.iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(feature = "clap")]
fn parse_weight(s: &str) -> std::result::Result<Weight, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

#[cfg(feature = "clap")]
fn parse_join(s: &str) -> std::result::Result<Join, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// Schedules are stored as their spec strings (`linear:0.3:0.15`) in configs.
mod schedule_spec {
    use crate::schedule::MaskSchedule;

    pub fn serialize<S: serde::Serializer>(s: &MaskSchedule, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&s.to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<MaskSchedule, D::Error> {
        let s: String = serde::Deserialize::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "clap")]
fn parse_schedule(s: &str) -> std::result::Result<MaskSchedule, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// The keys of a config with every optional field set (so its serialization shows every key),
/// sorted.
#[cfg(test)]
fn serialized_keys() -> Vec<String> {
    let every_field_set = DataConfig {
        mix: Some("a=1".parse().unwrap()),
        mix_by_size: Some("0.7".parse().unwrap()),
        join: vec!["a@0.5".parse().unwrap()],
        cache_dir: Some("cache".into()),
        cache_bytes: Some(1 << 20),
        phases: vec![serde_json::from_str(r#"{"steps": 1}"#).unwrap()],
        rate_dist: "uniform:0.1:0.2".parse().unwrap(),
        rate_per_document: true,
        loss_weight: "inverse-rate".parse().unwrap(),
        ..DataConfig::default()
    };
    let value = serde_json::to_value(every_field_set).unwrap();
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[cfg(all(test, feature = "clap"))]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        data: DataConfig,
    }

    #[test]
    fn command_line_defaults_are_the_default_config() {
        let parsed = Cli::parse_from(["t", "--shards", "dir"]).data;
        let expected = DataConfig {
            shards: vec!["dir".parse().unwrap()],
            ..DataConfig::default()
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn every_field_is_a_flag_and_a_config_key() {
        let keys = serialized_keys();
        let mut flags: Vec<String> = <Cli as clap::CommandFactory>::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| id != "help")
            .collect();
        flags.sort();
        assert_eq!(flags, keys);
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    #[test]
    fn keys_are_every_serialized_field() {
        let serialized = serialized_keys();
        let mut keys = DataConfig::keys().to_vec();
        keys.sort();
        assert_eq!(keys, serialized);
    }

    #[test]
    fn overrides_parse_like_a_saved_config_and_unknown_keys_are_refused() {
        let overrides = serde_json::json!({
            "shards": ["c4=/d/c4", "wiki=s3://b/wiki"],
            "schedule": "linear:0.3:0.15",
            "seq_len": 64,
            "cache_bytes": "4GiB",
            "mix": "c4=1,wiki=2",
            "order": null,
        });
        let serde_json::Value::Object(map) = overrides else {
            unreachable!()
        };
        let c = DataConfig::default().with_overrides(map).unwrap();
        let expected = DataConfig {
            shards: vec![
                ShardSource::named("c4", "/d/c4").unwrap(),
                ShardSource::named("wiki", "s3://b/wiki").unwrap(),
            ],
            schedule: "linear:0.3:0.15".parse().unwrap(),
            seq_len: 64,
            cache_bytes: Some(4 << 30),
            mix: Some("c4=1,wiki=2".parse().unwrap()),
            ..DataConfig::default()
        };
        assert_eq!(c, expected);

        let bad = |json: serde_json::Value| {
            let serde_json::Value::Object(map) = json else {
                unreachable!()
            };
            DataConfig::default()
                .with_overrides(map)
                .unwrap_err()
                .to_string()
        };
        let err = bad(serde_json::json!({"seqlen": 64}));
        assert!(
            err.contains("\"seqlen\"") && err.contains("seq_len"),
            "{err}"
        );
        let err = bad(serde_json::json!({"schedule": "linear:0.3"}));
        assert!(err.contains("\"schedule\""), "{err}");
        let err = bad(serde_json::json!({"cache_bytes": "4 parsecs"}));
        assert!(
            err.contains("\"cache_bytes\"") && err.contains("4 parsecs"),
            "{err}"
        );
        let err = bad(serde_json::json!({"batch_size": -1}));
        assert!(
            err.contains("\"batch_size\"") && err.contains("-1"),
            "{err}"
        );
    }
}
