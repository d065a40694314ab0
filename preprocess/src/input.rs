//! Finding input files and recognising their format from the name.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Supported input encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON lines, plain (`.jsonl`, `.json`).
    JsonLines,
    /// Gzip-compressed JSON lines (`.json.gz`, `.jsonl.gz`): C4's layout.
    JsonLinesGz,
    /// Zstandard-compressed JSON lines (`.jsonl.zst`, `.json.zst`).
    JsonLinesZst,
    /// Apache Parquet with a string column.
    Parquet,
    /// Arrow IPC with a string column (`.arrow`): the stream files of HuggingFace `datasets`
    /// (`save_to_disk` directories and its cache), or the IPC file format.
    Arrow,
}

impl Format {
    /// The format implied by a file name, if supported.
    pub fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".json.gz") || name.ends_with(".jsonl.gz") {
            Some(Format::JsonLinesGz)
        } else if name.ends_with(".json.zst") || name.ends_with(".jsonl.zst") {
            Some(Format::JsonLinesZst)
        } else if name.ends_with(".jsonl") || name.ends_with(".json") {
            Some(Format::JsonLines)
        } else if name.ends_with(".parquet") {
            Some(Format::Parquet)
        } else if name.ends_with(".arrow") {
            Some(Format::Arrow)
        } else {
            None
        }
    }
}

/// An input file with its format and size at discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Path as given or found under a given directory.
    pub path: PathBuf,
    /// Detected format.
    pub format: Format,
    /// Size in bytes.
    pub size: u64,
}

/// Expands files and directories (recursively, sorted by path) into supported input files.
///
/// A file given explicitly must have a supported extension; files of other types inside a
/// directory are ignored (C4 folders hold checksums and READMEs too).
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<InputSpec>> {
    let mut found = Vec::new();
    for input in inputs {
        if shared::store::is_remote(input) {
            found.extend(discover_remote(input)?);
            continue;
        }
        let meta = std::fs::metadata(input).map_err(|e| Error::Input {
            file: input.clone(),
            msg: format!("cannot read: {e}"),
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files)?;
            files.sort();
            let before = found.len();
            for f in files {
                if is_datasets_metadata(&f) {
                    continue;
                }
                if let Some(format) = Format::of(&f) {
                    let size = std::fs::metadata(&f)
                        .map_err(|e| Error::Input {
                            file: f.clone(),
                            msg: format!("cannot read: {e}"),
                        })?
                        .len();
                    found.push(InputSpec {
                        path: f,
                        format,
                        size,
                    });
                }
            }
            if found.len() == before {
                return Err(Error::Input {
                    file: input.clone(),
                    msg: "directory holds no .json, .jsonl, .json.gz, .jsonl.gz, .jsonl.zst, .parquet or .arrow file".into(),
                });
            }
        } else {
            let format = Format::of(input).ok_or_else(|| Error::Input {
                file: input.clone(),
                msg: "unsupported file type: expected .json, .jsonl, .json.gz, .jsonl.gz, .jsonl.zst, .parquet or .arrow".into(),
            })?;
            found.push(InputSpec {
                path: input.clone(),
                format,
                size: meta.len(),
            });
        }
    }
    Ok(found)
}

/// A bucket URL: one object when it names a supported file, else every supported object under
/// the prefix, sorted by path (as for a directory).
fn discover_remote(input: &Path) -> Result<Vec<InputSpec>> {
    let url = input.to_string_lossy().trim_end_matches('/').to_string();
    if let Some(format) = Format::of(input) {
        let (store, name) = shared::store::open_object(&url)?;
        let size = store.size_of(&name)?.ok_or_else(|| Error::Input {
            file: input.to_path_buf(),
            msg: "not found (HTTP 404)".into(),
        })?;
        return Ok(vec![InputSpec {
            path: input.to_path_buf(),
            format,
            size,
        }]);
    }
    let store = shared::store::Store::open(&url)?;
    let found: Vec<InputSpec> = store
        .list()?
        .into_iter()
        .filter_map(|(rel, size)| {
            let path = PathBuf::from(store.url_of(&rel));
            let format = Format::of(&path)?;
            (!is_datasets_metadata(&path)).then_some(InputSpec { path, format, size })
        })
        .collect();
    if found.is_empty() {
        return Err(Error::Input {
            file: input.to_path_buf(),
            msg:
                "holds no .json, .jsonl, .json.gz, .jsonl.gz, .jsonl.zst, .parquet or .arrow object"
                    .into(),
        });
    }
    Ok(found)
}

/// `dataset_info.json` and `state.json` beside the `data-*.arrow` files of a HuggingFace
/// `save_to_disk` directory describe the dataset; they are not documents.
fn is_datasets_metadata(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    matches!(name.as_deref(), Some("dataset_info.json" | "state.json"))
        && path.parent().is_some_and(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| Format::of(&e.path()) == Some(Format::Arrow))
            })
        })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Input {
        file: dir.to_path_buf(),
        msg: format!("cannot list: {e}"),
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::Input {
            file: dir.to_path_buf(),
            msg: format!("cannot list: {e}"),
        })?;
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Keeps the files of partition `index` of `count`: every `count`-th file starting at `index`.
pub fn partition(files: Vec<InputSpec>, index: usize, count: usize) -> Vec<InputSpec> {
    files
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % count == index)
        .map(|(_, f)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        assert_eq!(
            Format::of(Path::new("c4-train.00000-of-01024.json.gz")),
            Some(Format::JsonLinesGz)
        );
        assert_eq!(
            Format::of(Path::new("a.jsonl.zst")),
            Some(Format::JsonLinesZst)
        );
        assert_eq!(Format::of(Path::new("a.JSONL")), Some(Format::JsonLines));
        assert_eq!(Format::of(Path::new("a.parquet")), Some(Format::Parquet));
        assert_eq!(Format::of(Path::new("c4-train.json.gz.md5")), None);
    }

    #[test]
    fn partitions_cover_every_file_once() {
        let files: Vec<InputSpec> = (0..10)
            .map(|i| InputSpec {
                path: format!("{i}.jsonl").into(),
                format: Format::JsonLines,
                size: 1,
            })
            .collect();
        let mut all: Vec<PathBuf> = (0..3)
            .flat_map(|p| partition(files.clone(), p, 3))
            .map(|f| f.path)
            .collect();
        all.sort();
        let mut expected: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        expected.sort();
        assert_eq!(all, expected);
    }
}
