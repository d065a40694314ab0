//! Phases: a run as consecutive stretches of steps, each able to change the data settings a
//! recipe changes mid-run (sequence length, batch size, the sources and their mix, the masking
//! schedule). What a phase does not set carries over from the run's settings.
//!
//! Clocks: a schedule runs over the stretch it is set for. The run's `schedule`, `mix` weights,
//! `mix_by_size` exponent and `join` points run over the whole run (a phase that does not set
//! them sees them continue); a phase's own `schedule` runs over that phase (0 at its first step,
//! 1 at its end), as does a mixture it sets (`mix`, `mix_by_size` or `join`).

use super::{DataConfig, Join, MixSpec, ShardSource, Weight};
use crate::error::{Error, Result};
use crate::schedule::MaskSchedule;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// One phase of a run: its length and the settings it changes, typed, in a config file's words
/// (`{steps = 300, seq_len = 128, schedule = "constant:0.05"}`). Any other key is refused by
/// the deserializer, which names it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Steps in this phase; the last phase may leave it out to take the rest of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// The sources it reads (`[NAME=]DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<ShardSource>>,
    /// Their weights (`--mix`).
    #[serde(
        default,
        with = "super::data_config::optional_spec",
        skip_serializing_if = "Option::is_none"
    )]
    pub mix: Option<MixSpec>,
    /// Their weights by size (`--mix-by-size`).
    #[serde(
        default,
        with = "super::data_config::weight_spec",
        skip_serializing_if = "Option::is_none"
    )]
    pub mix_by_size: Option<Weight>,
    /// Sources joining the by-size mixture (`--join`).
    #[serde(
        default,
        with = "optional_joins",
        skip_serializing_if = "Option::is_none"
    )]
    pub join: Option<Vec<Join>>,
    /// Its masking schedule, run over the phase.
    #[serde(
        default,
        with = "super::data_config::optional_spec",
        skip_serializing_if = "Option::is_none"
    )]
    pub schedule: Option<MaskSchedule>,
    /// Its sequence length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// Its sequences per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

impl Phase {
    /// The run's settings `base` with this phase's applied (what it does not set carries over
    /// from the run, not from the phase before).
    pub fn apply(&self, base: &DataConfig) -> DataConfig {
        let mut c = base.clone();
        if let Some(v) = &self.shards {
            c.shards = v.clone();
        }
        if let Some(v) = &self.mix {
            c.mix = Some(v.clone());
        }
        if let Some(v) = &self.mix_by_size {
            c.mix_by_size = Some(*v);
        }
        if let Some(v) = &self.join {
            c.join = v.clone();
        }
        if let Some(v) = self.schedule {
            c.schedule = v;
        }
        if let Some(v) = self.seq_len {
            c.seq_len = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        c
    }

    /// It sets the sources or their mix, whose weights then run over the phase.
    fn sets_mixture(&self) -> bool {
        self.shards.is_some()
            || self.mix.is_some()
            || self.mix_by_size.is_some()
            || self.join.is_some()
    }
}

/// A phase resolved against the run: its steps and its whole data config.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPhase {
    /// Steps of the run it covers.
    pub steps: Range<u64>,
    /// The run's settings with the phase's applied (`phases` empty, `steps` the run's).
    pub config: DataConfig,
    /// It sets the masking schedule (which then runs over `steps`).
    pub local_schedule: bool,
    /// It sets the sources or their mix (whose weights then run over `steps`).
    pub local_mixture: bool,
}

/// A run's phases resolved once ([`DataConfig::phase_plan`]): what the sampler is built from,
/// and what `trainer plan`, `inspect-batch` and the Python package read (through
/// [`crate::sampler::Data::phase_plan`]). One phase covering the run when it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct PhasePlan {
    phases: Vec<ResolvedPhase>,
}

impl PhasePlan {
    /// The phases in order.
    pub fn phases(&self) -> &[ResolvedPhase] {
        &self.phases
    }

    /// The longest sequence of any phase.
    pub fn max_seq_len(&self) -> usize {
        self.phases
            .iter()
            .map(|p| p.config.seq_len)
            .max()
            .unwrap_or(0)
    }
}

impl DataConfig {
    /// The run's phases resolved (the one place they are): one phase covering the whole run
    /// when `phases` is empty. Refuses bad values (naming the phase) and lengths that do not
    /// add up to `steps`.
    pub fn phase_plan(&self) -> Result<PhasePlan> {
        let base = DataConfig {
            phases: Vec::new(),
            ..self.clone()
        };
        if self.phases.is_empty() {
            return Ok(PhasePlan {
                phases: vec![ResolvedPhase {
                    steps: 0..self.steps,
                    config: base,
                    local_schedule: false,
                    local_mixture: false,
                }],
            });
        }
        let last = self.phases.len() - 1;
        let mut first = 0u64;
        let mut resolved = Vec::with_capacity(self.phases.len());
        for (k, phase) in self.phases.iter().enumerate() {
            let name = format!("phase {}", k + 1);
            let steps = match phase.steps {
                Some(0) => return Err(Error::Config(format!("{name}: steps must be positive"))),
                Some(n) => n,
                None if k == last => self.steps.saturating_sub(first),
                None => {
                    return Err(Error::Config(format!(
                        "{name}: steps missing (only the last phase may take the rest of the run)"
                    )))
                }
            };
            let end = first + steps;
            if end > self.steps || (k == last && end != self.steps) || steps == 0 {
                let given: Vec<String> = self
                    .phases
                    .iter()
                    .map(|p| p.steps.map_or("rest".into(), |s| s.to_string()))
                    .collect();
                return Err(Error::Config(format!(
                    "phases of {} steps do not make up the run's {} steps",
                    given.join(" + "),
                    self.steps
                )));
            }
            resolved.push(ResolvedPhase {
                steps: first..end,
                config: phase.apply(&base),
                local_schedule: phase.schedule.is_some(),
                local_mixture: phase.sets_mixture(),
            });
            first = end;
        }
        Ok(PhasePlan { phases: resolved })
    }
}

/// A list of phases whose errors name the phase (`phase 2: unknown field \`seed\``): how
/// [`DataConfig::phases`] reads from saved configs and Python keywords.
pub(crate) mod phase_list {
    use super::Phase;
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Phase>, D::Error> {
        struct Phases;
        impl<'de> Visitor<'de> for Phases {
            type Value = Vec<Phase>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of phases")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Phase>, A::Error> {
                let mut phases = Vec::new();
                loop {
                    let k = phases.len() + 1;
                    match seq.next_element::<Phase>() {
                        Ok(Some(p)) => phases.push(p),
                        Ok(None) => return Ok(phases),
                        Err(e) => return Err(A::Error::custom(format!("phase {k}: {e}"))),
                    }
                }
            }
        }
        de.deserialize_seq(Phases)
    }
}

/// `Option<Vec<Join>>` as a list of `NAME@F` strings.
mod optional_joins {
    use crate::sampler::Join;

    pub fn serialize<S: serde::Serializer>(
        j: &Option<Vec<Join>>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        match j {
            Some(j) => ser.collect_seq(j.iter().map(|j| j.to_string())),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        de: D,
    ) -> Result<Option<Vec<Join>>, D::Error> {
        let v: Option<Vec<String>> = serde::Deserialize::deserialize(de)?;
        v.map(|v| {
            v.iter()
                .map(|s| s.parse().map_err(serde::de::Error::custom))
                .collect()
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases(json: serde_json::Value) -> Vec<Phase> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn phases_split_the_run_and_carry_what_they_do_not_set() {
        let c = DataConfig {
            steps: 100,
            seq_len: 64,
            phases: phases(serde_json::json!([
                {"steps": 60},
                {"steps": 30, "seq_len": 128, "schedule": "constant:0.05"},
                {"batch_size": 8},
            ])),
            ..DataConfig::default()
        };
        let plan = c.phase_plan().unwrap();
        let r = plan.phases();
        let steps: Vec<_> = r.iter().map(|p| p.steps.clone()).collect();
        assert_eq!(steps, vec![0..60, 60..90, 90..100]);
        assert_eq!(r[0].config.seq_len, 64);
        assert_eq!(r[1].config.seq_len, 128);
        // What a phase does not set comes from the run, not from the phase before.
        assert_eq!(r[2].config.seq_len, 64);
        assert_eq!(r[2].config.batch_size, 8);
        assert_eq!(r[1].config.schedule, "constant:0.05".parse().unwrap());
        assert_eq!(r[2].config.schedule, c.schedule);
        assert!(r[1].local_schedule && !r[0].local_schedule && !r[2].local_schedule);
        assert!(r
            .iter()
            .all(|p| !p.local_mixture && p.config.phases.is_empty()));
        assert_eq!(plan.max_seq_len(), 128);
    }

    /// A key a phase cannot change, or a value of the wrong kind, is refused when the phase is
    /// read, naming the key; a phase reads back what it wrote.
    #[test]
    fn a_phase_is_typed_and_refuses_unknown_keys() {
        let read = |json: serde_json::Value| serde_json::from_value::<Phase>(json);
        let e = read(serde_json::json!({"steps": 50, "seed": 3}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `seed`") && e.contains("seq_len"),
            "{e}"
        );
        let e = read(serde_json::json!({"seq_len": "long"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type") && e.contains("long"), "{e}");
        let e = read(serde_json::json!({"schedule": "linear:0.3"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("linear"), "{e}");
        let full = serde_json::json!({
            "steps": 10, "shards": ["a=x", "b=y"], "mix_by_size": "linear:0.7:0.3",
            "join": ["b@0.5"], "schedule": "constant:0.05", "seq_len": 64, "batch_size": 8,
        });
        let phase = read(full.clone()).unwrap();
        assert_eq!(phase.seq_len, Some(64));
        assert_eq!(serde_json::to_value(&phase).unwrap(), full);
        assert_eq!(
            serde_json::to_value(Phase::default()).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn bad_phases_are_refused_naming_the_phase() {
        let err = |json: serde_json::Value| {
            DataConfig {
                steps: 100,
                phases: phases(json),
                ..DataConfig::default()
            }
            .phase_plan()
            .unwrap_err()
            .to_string()
        };
        let e = err(serde_json::json!([{"steps": 50}, {"steps": 60}]));
        assert!(e.contains("50 + 60") && e.contains("100"), "{e}");
        let e = err(serde_json::json!([{"steps": 50}, {"steps": 40}]));
        assert!(e.contains("50 + 40"), "{e}");
        let e = err(serde_json::json!([{}, {"steps": 40}]));
        assert!(e.contains("phase 1") && e.contains("steps missing"), "{e}");
        let list = serde_json::json!({"shards": ["x"], "phases": [{"steps": 5}, {"seed": 3}]});
        let e = serde_json::from_value::<DataConfig>(list)
            .unwrap_err()
            .to_string();
        assert!(e.contains("phase 2: unknown field `seed`"), "{e}");
        let e = err(serde_json::json!([{"steps": 0}, {}]));
        assert!(e.contains("phase 1") && e.contains("positive"), "{e}");
        let e = err(serde_json::json!([{"steps": 100}, {}]));
        assert!(e.contains("do not make up"), "{e}");
    }
}
