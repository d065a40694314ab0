//! Crash-safe file creation: write under a temporary name, fsync, rename, fsync the directory.
//!
//! Nothing half-written is ever visible under a final name: a reader sees either the old file
//! (or none) or the complete new one, even after a SIGKILL or power loss.

use crate::error::{IoContext, Result};
use crate::faults;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Suffix of files being written; `clean_temporaries` removes leftovers of a killed run.
pub const TMP_SUFFIX: &str = ".tmp";

/// The temporary name used while `path` is being written.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| -> Result<()> {
        let mut f = File::create(tmp).with_path(tmp)?;
        f.write_all(bytes).with_path(tmp)
    })
}

/// Writes `path` atomically through a writer that only takes a path (e.g. a safetensors
/// encoder): `write` writes [`tmp_path`]`(path)`, which is then fsynced and renamed to `path`.
pub fn write_with<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    E: From<crate::Error>,
{
    write_via(&tmp_path(path), path, write)
}

/// [`write_with`] under a temporary name of the caller's choice (e.g. one that keeps an extension
/// an encoder picks its format from): `write` writes `tmp`, which is fsynced and renamed to `path`.
pub fn write_via<E>(
    tmp: &Path,
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    E: From<crate::Error>,
{
    faults::step("write", tmp).with_path(tmp)?;
    write(tmp)?;
    faults::step("fsync", tmp).with_path(tmp)?;
    File::open(tmp).and_then(|f| f.sync_all()).with_path(tmp)?;
    commit(tmp, path)?;
    Ok(())
}

/// Renames a fully written and synced `tmp` to `path`, then syncs the directory entry.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    faults::step("rename", path).with_path(path)?;
    fs::rename(tmp, path).with_path(path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    // Directories cannot be opened for syncing on every platform; failure to sync is not fatal there.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes the directory `dir` atomically: `fill` writes its files into `DIR.tmp` (a leftover of a
/// killed run is removed first); every file is fsynced, an existing `dir` is replaced, `DIR.tmp` is
/// renamed to `dir` and the parent directory is fsynced. A reader sees the old directory, none, or
/// the complete new one.
pub fn write_dir<E>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    E: From<crate::Error>,
{
    let tmp = tmp_path(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_path(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_path(&tmp)?;
    faults::step("write", &tmp).with_path(&tmp)?;
    fill(&tmp)?;
    for entry in fs::read_dir(&tmp).with_path(&tmp)? {
        let path = entry.with_path(&tmp)?.path();
        if path.is_file() {
            faults::step("fsync", &path).with_path(&path)?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .with_path(&path)?;
        }
    }
    sync_dir(&tmp)?;
    faults::step("rename", dir).with_path(dir)?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_path(dir)?;
    }
    fs::rename(&tmp, dir).with_path(dir)?;
    sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}

/// Removes `*.tmp` files left in `dir` by a killed run; returns how many were removed.
pub fn clean_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in fs::read_dir(dir).with_path(dir)? {
        let entry = entry.with_path(dir)?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(TMP_SUFFIX) && entry.path().is_file() {
            fs::remove_file(entry.path()).with_path(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_atomically_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!tmp_path(&p).exists());
    }

    #[test]
    fn write_dir_replaces_the_directory_whole() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("step-1");
        let fill = |text: &'static [u8]| {
            move |tmp: &Path| -> Result<()> {
                fs::write(tmp.join("a"), text).with_path(tmp)?;
                Ok(())
            }
        };
        write_dir(&d, fill(b"one")).unwrap();
        // A failed fill leaves the previous directory as it was.
        let failed: Result<()> = write_dir(&d, |tmp: &Path| {
            fs::write(tmp.join("a"), b"half").with_path(tmp)?;
            Err(crate::Error::Config("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(d.join("a")).unwrap(), b"one");
        write_dir(&d, fill(b"two")).unwrap();
        assert_eq!(fs::read(d.join("a")).unwrap(), b"two");
        assert!(!root.path().join("step-1.tmp").exists());
    }

    #[test]
    fn clean_temporaries_removes_only_tmp_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x.bin.tmp"), b"partial").unwrap();
        fs::write(dir.path().join("x.bin"), b"done").unwrap();
        assert_eq!(clean_temporaries(dir.path()).unwrap(), 1);
        assert!(dir.path().join("x.bin").exists());
        assert!(!dir.path().join("x.bin.tmp").exists());
    }
}
