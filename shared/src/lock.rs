//! One writer per output directory: an OS file lock (`flock`) on `DIR/.maskrate.lock`, held for
//! the life of a [`DirLock`].
//!
//! A second process asking for the same directory is refused at once with the holder's pid and
//! command. The OS releases the lock when its holder exits, however it exits, so a lock left by a
//! killed process never blocks the next run; the file itself stays (removing it would race with a
//! process that has just opened it) and is emptied on a clean release.

use crate::error::{Error, IoContext, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = ".maskrate.lock";

/// An exclusive lock on a directory; released on drop.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) for `what` (e.g. "preprocess"), or says who holds it.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_path(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.replace('\n', " ")
                };
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let command: Vec<String> = std::env::args().collect();
        let note = format!(
            "pid {} ({what}: {})\n",
            std::process::id(),
            command.join(" ")
        );
        file.set_len(0).with_path(&path)?;
        file.rewind().with_path(&path)?;
        file.write_all(note.as_bytes()).with_path(&path)?;
        Ok(DirLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Emptied while still locked, so no one reads a stale holder; the OS unlocks on close.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "preprocess").unwrap();
        // A second open file description conflicts even within one process (flock semantics).
        let err = DirLock::acquire(dir.path(), "trainer")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("preprocess"),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        drop(first);
        assert_eq!(
            std::fs::read(dir.path().join(LOCK_FILE)).unwrap(),
            b"",
            "emptied on release"
        );
        let again = DirLock::acquire(dir.path(), "trainer").unwrap();
        assert_eq!(again.path(), dir.path().join(LOCK_FILE));
    }
}
