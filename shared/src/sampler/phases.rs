//! Phases: a run as consecutive stretches of steps, each able to change the data settings a
//! recipe changes mid-run (sequence length, batch size, the sources and their mix, the masking
//! schedule). What a phase does not set carries over from the run's settings.
//!
//! Clocks: a schedule runs over the stretch it is set for. The run's `schedule`, `mix` weights,
//! `mix_by_size` exponent and `join` points run over the whole run (a phase that does not set
//! them sees them continue); a phase's own `schedule` runs over that phase (0 at its first step,
//! 1 at its end), as does a mixture it sets (`mix`, `mix_by_size` or `join`).

use super::DataConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The settings a phase may change.
pub const PHASE_KEYS: &[&str] = &[
    "shards",
    "mix",
    "mix_by_size",
    "join",
    "schedule",
    "seq_len",
    "batch_size",
];

/// Settings that make a phase's mixture run on its own clock.
const MIXTURE_KEYS: &[&str] = &["shards", "mix", "mix_by_size", "join"];

/// One phase of a run: its length and the settings it changes (keys of [`PHASE_KEYS`], values
/// as in a saved config: `{steps = 300, seq_len = 128, schedule = "constant:0.05"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Steps in this phase; the last phase may leave it out to take the rest of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// The settings it changes.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
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

impl DataConfig {
    /// The run's phases resolved: one phase covering the whole run when `phases` is empty.
    /// Refuses unknown keys, bad values (naming the phase and key), and lengths that do not add
    /// up to `steps`.
    pub fn resolve_phases(&self) -> Result<Vec<ResolvedPhase>> {
        let base = DataConfig {
            phases: Vec::new(),
            ..self.clone()
        };
        if self.phases.is_empty() {
            return Ok(vec![ResolvedPhase {
                steps: 0..self.steps,
                config: base,
                local_schedule: false,
                local_mixture: false,
            }]);
        }
        let last = self.phases.len() - 1;
        let mut first = 0u64;
        let mut resolved = Vec::with_capacity(self.phases.len());
        for (k, phase) in self.phases.iter().enumerate() {
            let name = format!("phase {}", k + 1);
            if let Some(key) = phase
                .settings
                .keys()
                .find(|key| !PHASE_KEYS.contains(&key.as_str()))
            {
                return Err(Error::Config(format!(
                    "{name}: {key:?} cannot change within a run (a phase may set steps, {})",
                    PHASE_KEYS.join(", ")
                )));
            }
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
            let config = base
                .with_overrides(phase.settings.clone())
                .map_err(|e| Error::Config(format!("{name}: {e}")))?;
            let sets = |keys: &[&str]| keys.iter().any(|k| phase.settings.contains_key(*k));
            resolved.push(ResolvedPhase {
                steps: first..end,
                config,
                local_schedule: sets(&["schedule"]),
                local_mixture: sets(MIXTURE_KEYS),
            });
            first = end;
        }
        Ok(resolved)
    }

    /// The largest sequence length over the run's phases.
    pub fn max_seq_len(&self) -> Result<usize> {
        Ok(self
            .resolve_phases()?
            .iter()
            .map(|p| p.config.seq_len)
            .max()
            .unwrap_or(self.seq_len))
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
        let r = c.resolve_phases().unwrap();
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
        assert_eq!(c.max_seq_len().unwrap(), 128);
    }

    #[test]
    fn bad_phases_are_refused_naming_the_phase() {
        let err = |json: serde_json::Value| {
            DataConfig {
                steps: 100,
                phases: phases(json),
                ..DataConfig::default()
            }
            .resolve_phases()
            .unwrap_err()
            .to_string()
        };
        let e = err(serde_json::json!([{"steps": 50}, {"steps": 60}]));
        assert!(e.contains("50 + 60") && e.contains("100"), "{e}");
        let e = err(serde_json::json!([{"steps": 50}, {"steps": 40}]));
        assert!(e.contains("50 + 40"), "{e}");
        let e = err(serde_json::json!([{}, {"steps": 40}]));
        assert!(e.contains("phase 1") && e.contains("steps missing"), "{e}");
        let e = err(serde_json::json!([{"steps": 50}, {"seed": 3}]));
        assert!(e.contains("phase 2") && e.contains("\"seed\""), "{e}");
        let e = err(serde_json::json!([{"steps": 50}, {"seq_len": "long"}]));
        assert!(e.contains("phase 2") && e.contains("seq_len"), "{e}");
        let e = err(serde_json::json!([{"steps": 0}, {}]));
        assert!(e.contains("phase 1") && e.contains("positive"), "{e}");
        let e = err(serde_json::json!([{"steps": 100}, {}]));
        assert!(e.contains("do not make up"), "{e}");
    }
}
