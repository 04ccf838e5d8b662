//! The destination tree's own state under `<dest>/.mirrorswarm/`: the lock that keeps two
//! pulls apart, the staging area where new files wait (and survive a crash), the pinned
//! server key, and the scan cache.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Paths under `<dest>/.mirrorswarm/` (the scanner skips anything named `.mirrorswarm*`).
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn new(dest: &Path) -> StateDir {
        StateDir(dest.join(".mirrorswarm"))
    }
    pub fn lock(&self) -> PathBuf {
        self.0.join("lock")
    }
    pub fn staging(&self) -> PathBuf {
        self.0.join("staging")
    }
    pub fn staged(&self, sha_hex: &str) -> PathBuf {
        self.staging().join(sha_hex)
    }
    pub fn partial(&self, sha_hex: &str) -> PathBuf {
        self.staging().join(format!("{sha_hex}.part"))
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("server-key")
    }
    pub fn scan_cache(&self) -> PathBuf {
        self.0.join("scan.json")
    }
}

/// An exclusive lock on a destination tree, held for the whole pull and released when dropped
/// (or when the process dies: the kernel drops `flock` locks with the file descriptor).
pub struct TreeLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another prsync pull is running on this tree (lock {0})")]
    Held(PathBuf),
    #[error("cannot open lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TreeLock {
    pub fn acquire(path: &Path) -> Result<TreeLock, LockError> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|source| LockError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| LockError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(TreeLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held(path.to_path_buf())),
            Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Put a verified staged file at `dest/rel`, atomically (rename within one file system).
/// Something else in the way (a directory where a file now belongs) is removed first.
pub fn install(staged: &Path, dest: &Path, rel: &str, keep_staged: bool) -> std::io::Result<()> {
    let target = dest.join(rel);
    if let Some(parent) = target.parent() {
        // A file where a directory now belongs.
        let mut p = dest.to_path_buf();
        for comp in Path::new(rel)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            p.push(comp);
            if p.is_file() || p.is_symlink() {
                std::fs::remove_file(&p)?;
            }
        }
        std::fs::create_dir_all(parent)?;
    }
    if target.is_dir() && !target.is_symlink() {
        std::fs::remove_dir_all(&target)?;
    }
    if keep_staged {
        let tmp = target.with_file_name(format!(
            ".mirrorswarm-tmp-{}",
            target.file_name().and_then(|n| n.to_str()).unwrap_or("f")
        ));
        std::fs::copy(staged, &tmp)?;
        std::fs::rename(&tmp, &target)
    } else {
        std::fs::rename(staged, &target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".mirrorswarm/lock");
        let a = TreeLock::acquire(&p).unwrap();
        assert!(matches!(TreeLock::acquire(&p), Err(LockError::Held(_))));
        drop(a);
        TreeLock::acquire(&p).unwrap();
    }

    #[test]
    fn install_replaces_files_and_directories_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        std::fs::create_dir_all(dest.join("a/b")).unwrap();
        std::fs::write(dest.join("x"), b"file in the way").unwrap();
        let staged = dir.path().join("s");
        std::fs::write(&staged, b"new").unwrap();
        install(&staged, &dest, "a/b", true).unwrap();
        assert_eq!(std::fs::read(dest.join("a/b")).unwrap(), b"new");
        install(&staged, &dest, "x/y", false).unwrap();
        assert_eq!(std::fs::read(dest.join("x/y")).unwrap(), b"new");
        assert!(!staged.exists());
    }
}
