//! One process per data directory: a server's or a volunteer's. Two on one directory would
//! share a database, a credential and its announce sequence, and an admin command would
//! reach whichever wrote its address last.
//!
//! An exclusive `flock` on `<dir>/<name>.lock`, held for the process's life, with the pid
//! inside; the kernel drops it when the process ends, kill -9 included, so no lock is ever
//! stale. A command looking for the running process checks that the lock is held before it
//! believes the address file beside it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Held while the process runs.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    /// Another process holds it.
    #[error("another process (pid {}) runs on {}", pid.map_or("unknown".into(), |p| p.to_string()), dir.display())]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lock file of `name` in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

impl RunLock {
    /// Take the lock, or say who holds it. A command probing it ([`running`]) holds it
    /// shared for an instant, so a held lock is retried for up to a second.
    pub fn acquire(dir: &Path, name: &str) -> Result<RunLock, RunLockError> {
        let path = path(dir, name);
        let io = |source| RunLockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(RunLockError::Held {
                        dir: dir.to_path_buf(),
                        pid: holder(dir, name),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(RunLock { _file: file })
    }
}

/// The pid written in the lock file, as far as it can be read.
pub fn holder(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(path(dir, name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Whether a process holds the lock now: `Some(true)` held, `Some(false)` not (the last
/// holder ended), `None` no lock file (nothing ever ran there, or a version without one).
pub fn running(dir: &Path, name: &str) -> Option<bool> {
    let f = File::open(path(dir, name)).ok()?;
    // Shared: two probes at once do not take each other for the process.
    Some(f.try_lock_shared().is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_probes_see_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running(dir.path(), "x"), None);
        let a = RunLock::acquire(dir.path(), "x").unwrap();
        assert_eq!(running(dir.path(), "x"), Some(true));
        match RunLock::acquire(dir.path(), "x") {
            Err(RunLockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(a);
        assert_eq!(running(dir.path(), "x"), Some(false));
        let _b = RunLock::acquire(dir.path(), "x").unwrap();
    }
}
