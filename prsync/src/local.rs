//! The destination tree's own state under `<dest>/.mirrorswarm/`: the lock that keeps two
//! pulls apart, the staging area where new files wait (and survive a crash), the pinned
//! server key, the scan record, and what says the tree is mirrorswarm's ([`crate::tree`]).

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
    /// What the last pull's scan and install learned of each file ([`manifest::record`]).
    pub fn scan_record(&self) -> PathBuf {
        self.0.join("scan.rec")
    }
    /// The same as JSON, as releases before the compact record wrote it: read once, then
    /// replaced.
    pub fn legacy_scan_json(&self) -> PathBuf {
        self.0.join("scan.json")
    }

    /// The tree's scan record (or the older JSON one), if it has one that reads whole.
    pub fn read_scan_record(&self) -> Option<manifest::record::Record> {
        match manifest::record::Record::read_from(&self.scan_record()) {
            Ok(r) => return Some(r),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, "the scan record does not read; every file is scanned afresh");
                return None;
            }
        }
        let map: manifest::scan::ScanCache =
            serde_json::from_slice(&std::fs::read(self.legacy_scan_json()).ok()?).ok()?;
        Some(manifest::record::Record::from_map(&map))
    }

    /// Replace the scan record with `r` as `changes` leave it (and drop the older JSON one).
    pub fn write_scan_record(
        &self,
        r: &manifest::record::Record,
        changes: &std::collections::BTreeMap<String, Option<manifest::scan::CachedFile>>,
    ) -> std::io::Result<()> {
        r.write_with_changes(changes, &self.scan_record())?;
        match std::fs::remove_file(self.legacy_scan_json()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    /// The ownership marker ([`crate::tree`]).
    pub fn owner(&self) -> PathBuf {
        self.0.join("owner.json")
    }
    /// The paths of the generation last installed here, one a line ([`crate::tree`]).
    pub fn listed(&self) -> PathBuf {
        self.0.join("listed")
    }
    /// The paths of a generation being installed.
    pub fn listed_pending(&self) -> PathBuf {
        self.0.join("listed.pending")
    }
    /// The generation whose paths `listed` holds.
    pub fn installed(&self) -> PathBuf {
        self.0.join("installed")
    }
    /// What that generation holds: the include and exclude patterns it was installed with,
    /// its files and bytes ([`crate::tree::Held`]; absent: everything, uncounted).
    pub fn held(&self) -> PathBuf {
        self.0.join("held.json")
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

/// Why a staged file could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "`{blocker}` is in the way of `{rel}`, and mirrorswarm did not put it there; remove it \
         by hand, or pass --delete-extraneous"
    )]
    InTheWay { rel: String, blocker: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Put a verified staged file at `dest/rel`, atomically (rename within one file system).
///
/// Something in the way goes only if `removable` says it may (a file a sync put there, or
/// any file not listed when the admin asked for extraneous files to go): a file or link
/// where a directory now belongs, or a directory where the file now belongs, which is
/// emptied of removable files only. Links are never followed: a directory component that
/// is a link would put the file outside the tree.
pub fn install(
    staged: &Path,
    dest: &Path,
    rel: &str,
    keep_staged: bool,
    removable: &dyn Fn(&str) -> bool,
) -> Result<(), InstallError> {
    let target = dest.join(rel);
    let mut sofar = String::new();
    let parents: Vec<&str> = rel.split('/').collect();
    for comp in &parents[..parents.len().saturating_sub(1)] {
        if !sofar.is_empty() {
            sofar.push('/');
        }
        sofar.push_str(comp);
        let p = dest.join(&sofar);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) if removable(&sofar) => std::fs::remove_file(&p)?,
            Ok(_) => {
                return Err(InstallError::InTheWay {
                    rel: rel.to_string(),
                    blocker: sofar,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        std::fs::create_dir(&p)?;
    }
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        if let Some(left) = empty_dir(&target, rel, removable)? {
            return Err(InstallError::InTheWay {
                rel: rel.to_string(),
                blocker: left,
            });
        }
        std::fs::remove_dir(&target)?;
    }
    if keep_staged {
        let tmp = target.with_file_name(format!(
            ".mirrorswarm-tmp-{}",
            target.file_name().and_then(|n| n.to_str()).unwrap_or("f")
        ));
        std::fs::copy(staged, &tmp)?;
        std::fs::rename(&tmp, &target)?;
    } else {
        std::fs::rename(staged, &target)?;
    }
    Ok(())
}

/// Remove from directory `dir` (`rel` in the tree) the files `removable` allows, and the
/// directories that leaves empty. Returns the first entry that stays, if any.
fn empty_dir(
    dir: &Path,
    rel: &str,
    removable: &dyn Fn(&str) -> bool,
) -> std::io::Result<Option<String>> {
    let mut left = None;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let sub = format!("{rel}/{}", name.to_string_lossy());
        let ft = e.file_type()?;
        let stays = if ft.is_dir() {
            match empty_dir(&e.path(), &sub, removable)? {
                Some(l) => Some(l),
                None => {
                    std::fs::remove_dir(e.path())?;
                    None
                }
            }
        } else if removable(&sub) || name.to_string_lossy().starts_with(".mirrorswarm-tmp-") {
            std::fs::remove_file(e.path())?;
            None
        } else {
            Some(sub)
        };
        if left.is_none() {
            left = stays;
        }
    }
    Ok(left)
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
    fn install_replaces_what_is_in_the_way_only_if_it_may() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        std::fs::create_dir_all(dest.join("a/b/c")).unwrap();
        std::fs::write(dest.join("a/b/c/old"), b"ours").unwrap();
        std::fs::write(dest.join("a/b/mine"), b"not ours").unwrap();
        std::fs::write(dest.join("x"), b"file in the way").unwrap();
        let staged = dir.path().join("s");
        std::fs::write(&staged, b"new").unwrap();
        let ours = |p: &str| p == "a/b/c/old" || p == "x";
        match install(&staged, &dest, "a/b", true, &ours) {
            Err(InstallError::InTheWay { blocker, .. }) => assert_eq!(blocker, "a/b/mine"),
            other => panic!("{other:?}"),
        }
        // What was ours went; what was not stayed.
        assert!(!dest.join("a/b/c").exists());
        assert_eq!(std::fs::read(dest.join("a/b/mine")).unwrap(), b"not ours");
        std::fs::remove_file(dest.join("a/b/mine")).unwrap();
        install(&staged, &dest, "a/b", true, &ours).unwrap();
        assert_eq!(std::fs::read(dest.join("a/b")).unwrap(), b"new");
        install(&staged, &dest, "x/y", false, &ours).unwrap();
        assert_eq!(std::fs::read(dest.join("x/y")).unwrap(), b"new");
        assert!(!staged.exists());
    }

    #[test]
    fn install_never_follows_a_link_out_of_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("pool")).unwrap();
        let staged = dir.path().join("s");
        std::fs::write(&staged, b"new").unwrap();
        let nothing = |_: &str| false;
        assert!(matches!(
            install(&staged, &dest, "pool/f", true, &nothing),
            Err(InstallError::InTheWay { .. })
        ));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Asked to remove what is not listed, the link goes (not what it points to).
        install(&staged, &dest, "pool/f", true, &|_| true).unwrap();
        assert!(dest.join("pool").is_dir() && outside.is_dir());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
