//! `--config run.toml`: every training flag can come from a TOML file; flags on the command line
//! win. The file is folded into the argument list before parsing, so one parser checks both.

use anyhow::{bail, Context, Result};
use shared::sampler::Phase;
use std::ffi::OsString;
use std::path::Path;

/// Returns `argv` with the TOML file's settings appended for every flag not already given.
pub fn merge_config_file(argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(pos) = argv.iter().position(|a| a == "--config") else {
        return Ok(argv);
    };
    let path = argv.get(pos + 1).context("--config needs a file")?.clone();
    let mut args: Vec<OsString> = argv[..pos]
        .iter()
        .chain(&argv[pos + 2..])
        .cloned()
        .collect();
    let text = std::fs::read_to_string(Path::new(&path))
        .with_context(|| format!("reading {}", Path::new(&path).display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", Path::new(&path).display()))?;
    let given = |flag: &str| {
        args.iter().any(|a| {
            a.to_str()
                .is_some_and(|s| s == flag || s.starts_with(&format!("{flag}=")))
        })
    };
    let file = Path::new(&path).display().to_string();
    let mut extra = Vec::new();
    for (key, value) in table {
        // `[[phase]]` or `[[phases]]`: one `--phases JSON` per table.
        let key = if key == "phase" {
            "phases".to_string()
        } else {
            key
        };
        let flag = format!("--{}", key.replace('_', "-"));
        if !given(&flag) {
            extra.extend(flags_of(&file, &key, &flag, &value)?);
        }
    }
    args.extend(extra);
    Ok(args)
}

/// The command-line words of one setting of `file`: `flag VALUE` (repeated for a list), the bare
/// flag for `true`, nothing for `false`; each `[[phases]]` table read into its type here, so a
/// wrong key names the file and the phase.
fn flags_of(file: &str, key: &str, flag: &str, value: &toml::Value) -> Result<Vec<OsString>> {
    let scalar = |v: &toml::Value| -> Result<OsString> {
        Ok(match v {
            toml::Value::String(s) => s.into(),
            toml::Value::Integer(i) => i.to_string().into(),
            toml::Value::Float(f) => f.to_string().into(),
            other => bail!("{file}: {key} = {other}: expected a string or number"),
        })
    };
    let mut words = Vec::new();
    match value {
        toml::Value::Array(items) if key == "phases" => {
            for (k, item) in items.iter().enumerate() {
                let phase: Phase = item
                    .clone()
                    .try_into()
                    .with_context(|| format!("{file}: phase {}", k + 1))?;
                words.push(flag.into());
                words.push(serde_json::to_string(&phase)?.into());
            }
        }
        toml::Value::Boolean(true) => words.push(flag.into()),
        toml::Value::Boolean(false) => {}
        toml::Value::Array(items) => {
            for item in items {
                words.push(flag.into());
                words.push(scalar(item)?);
            }
        }
        v => {
            words.push(flag.into());
            words.push(scalar(v)?);
        }
    }
    Ok(words)
}

/// The effective configuration as TOML (readable back with `--config`).
pub fn to_toml<T: serde::Serialize>(args: &T) -> Result<String> {
    let value = serde_json::to_value(args)?;
    let mut table = toml::Table::new();
    for (k, v) in value.as_object().context("config is an object")? {
        let t = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                toml::Value::Integer(n.as_i64().unwrap_or(i64::MAX))
            }
            serde_json::Value::Number(n) => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => toml::Value::String(s.clone()),
            serde_json::Value::Array(a) => toml::Value::Array(
                a.iter()
                    .map(|x| match x {
                        // Tables stay tables (`[[phases]]`).
                        serde_json::Value::Object(_) => toml::Value::try_from(x),
                        _ => Ok(toml::Value::String(
                            x.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| x.to_string()),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(_) => toml::Value::String(v.to_string()),
        };
        table.insert(k.clone(), t);
    }
    Ok(toml::to_string(&table)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(toml: &str) -> Result<Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, toml).unwrap();
        let argv = vec!["trainer".into(), "--config".into(), path.into_os_string()];
        Ok(merge_config_file(argv)?
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect())
    }

    /// `[[phases]]` tables become typed phases: a key a phase cannot set is refused naming the
    /// file, the phase and the key; a good phase reaches the flag as its settings.
    #[test]
    fn phases_are_read_typed_naming_the_phase() {
        let e = merged("steps = 10\n[[phases]]\nsteps = 5\n[[phases]]\nseed = 3\n").unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("run.toml: phase 2") && e.contains("unknown field `seed`"),
            "{e}"
        );
        let e = merged("[[phases]]\nseq_len = \"long\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("phase 1"), "{e:#}");
        let args = merged("[[phases]]\nsteps = 5\nschedule = \"constant:0.05\"\n").unwrap();
        assert_eq!(
            args[1..],
            ["--phases", r#"{"steps":5,"schedule":"constant:0.05"}"#]
        );
    }
}
