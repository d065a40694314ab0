//! `--config run.toml`: every training flag can come from a TOML file; flags on the command line
//! win. The file is folded into the argument list before parsing, so one parser checks both.

use anyhow::{bail, Context, Result};
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
    let mut extra = Vec::new();
    for (key, value) in table {
        // `[[phase]]` or `[[phases]]`: one `--phases JSON` per table.
        let key = if key == "phase" {
            "phases".to_string()
        } else {
            key
        };
        let flag = format!("--{}", key.replace('_', "-"));
        if given(&flag) {
            continue;
        }
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Table(t) => serde_json::to_string(t)?,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!(
                    "{}: {key} = {other}: expected a string or number",
                    Path::new(&path).display()
                ),
            })
        };
        match &value {
            toml::Value::Boolean(true) => extra.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    extra.push(OsString::from(&flag));
                    extra.push(scalar(item)?.into());
                }
            }
            v => {
                extra.push(flag.into());
                extra.push(scalar(v)?.into());
            }
        }
    }
    args.extend(extra);
    Ok(args)
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
