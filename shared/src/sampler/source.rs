//! [`ShardSource`]: one `--shards` argument, typed: a shard directory (or bucket URL), optionally
//! belonging to a named source of a mixture.

use crate::error::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One shard directory of a run and the source it belongs to (`None`: the one unnamed source).
/// Written `NAME=DIR` or `DIR` on the command line and in saved configs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardSource {
    /// The source's name (`c4`, `wiki_en`), `None` without a mixture.
    pub name: Option<String>,
    /// The directory or bucket URL.
    pub dir: PathBuf,
}

impl ShardSource {
    /// A directory of source `name`; the name is checked (ASCII letters, digits, `_`, `-`).
    pub fn named(name: &str, dir: impl Into<PathBuf>) -> Result<Self> {
        if !super::mixture::is_source_name(name) {
            return Err(Error::Config(format!(
                "source name {name:?}: use ASCII letters, digits, '_' or '-'"
            )));
        }
        Ok(ShardSource {
            name: Some(name.to_string()),
            dir: dir.into(),
        })
    }
}

impl From<PathBuf> for ShardSource {
    /// A directory of the one unnamed source.
    fn from(dir: PathBuf) -> Self {
        ShardSource { name: None, dir }
    }
}

impl From<&Path> for ShardSource {
    fn from(dir: &Path) -> Self {
        dir.to_path_buf().into()
    }
}

impl FromStr for ShardSource {
    type Err = Error;

    /// `NAME=DIR` when NAME can name a source and DIR is not empty; anything else is a directory.
    fn from_str(s: &str) -> Result<Self> {
        if let Some((name, dir)) = s.split_once('=') {
            if super::mixture::is_source_name(name) && !dir.is_empty() {
                return ShardSource::named(name, dir);
            }
        }
        Ok(PathBuf::from(s).into())
    }
}

impl fmt::Display for ShardSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.dir.display()),
            None => write!(f, "{}", self.dir.display()),
        }
    }
}

impl serde::Serialize for ShardSource {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ShardSource {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_plain_directories_and_prints_them_back() {
        let named: ShardSource = "c4=/data/c4-shards".parse().unwrap();
        assert_eq!(named.name.as_deref(), Some("c4"));
        assert_eq!(named.dir, PathBuf::from("/data/c4-shards"));
        assert_eq!(named.to_string(), "c4=/data/c4-shards");
        for plain in [
            "/data/shards",
            "s3://bucket/shards",
            "/x/a=b",
            "=dir",
            "c4=",
        ] {
            let s: ShardSource = plain.parse().unwrap();
            assert_eq!(s.name, None, "{plain}");
            assert_eq!(s.to_string(), plain);
        }
        let json = serde_json::to_string(&named).unwrap();
        assert_eq!(json, "\"c4=/data/c4-shards\"");
        assert_eq!(serde_json::from_str::<ShardSource>(&json).unwrap(), named);
        let err = ShardSource::named("c 4", "/d").unwrap_err().to_string();
        assert!(err.contains("\"c 4\""), "{err}");
    }
}
