//! Walking a repository directory and hashing what changed.
//!
//! The scan is incremental: a file whose size and mtime match the cache is not re-read. Symbolic
//! links are followed only when they resolve to a regular file inside the root (apt trees use
//! them, e.g. `dists/stable -> bookworm`); anything else is skipped and reported.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{relpath::validate_rel_path, ManifestError, Sha256};

/// What the last scan learned of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    pub size: u64,
    pub mtime_ns: i128,
    pub sha256: Sha256,
}

/// Path → what was learned of it, carried from one scan to the next.
pub type ScanCache = BTreeMap<String, CachedFile>;

/// Result of a scan.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    pub files: ScanCache,
    /// Files actually read and hashed (not served from the cache).
    pub hashed: usize,
    pub hashed_bytes: u64,
    /// Paths skipped, with the reason (for the log).
    pub skipped: Vec<(String, String)>,
}

/// Hash a whole file, streaming.
pub fn hash_file(path: &Path) -> std::io::Result<Sha256> {
    hash_file_with(path, &mut Vec::new())
}

/// [`hash_file`] reading through `buf`, reused from one file to the next: a million small
/// files must not cost a million zeroed megabytes.
fn hash_file_with(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<Sha256> {
    let mut f = File::open(path)?;
    if buf.len() < HASH_CHUNK {
        buf.resize(HASH_CHUNK, 0);
    }
    let mut hasher = sha2::Sha256::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256(hasher.finalize().into()))
}

const HASH_CHUNK: usize = 1 << 20;

/// Size and mtime (nanoseconds since the epoch, negative before it) of a file's metadata.
pub fn stat_key(meta: &std::fs::Metadata) -> (u64, i128) {
    let mtime_ns = meta
        .modified()
        .ok()
        .map(|t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        })
        .unwrap_or(0);
    (meta.len(), mtime_ns)
}

/// What an earlier scan learned of a path: the scan cache read back, or whatever else holds
/// the same facts (a running server's index of the generation it serves).
pub trait Known: Sync {
    fn known(&self, rel: &str) -> Option<CachedFile>;
}

impl Known for ScanCache {
    fn known(&self, rel: &str) -> Option<CachedFile> {
        self.get(rel).copied()
    }
}

/// Walk `root`, hashing files whose size or mtime differ from what `cache` knows.
///
/// Directories are read by a few threads at once (one per core, at most [`MAX_WALKERS`]),
/// each file's metadata taken relative to its open directory: walking a million files by
/// full path cost as much in the kernel's path lookups as in everything else together.
pub fn scan_tree(root: &Path, cache: &impl Known) -> Result<ScanOutcome, ManifestError> {
    let canon_root = root
        .canonicalize()
        .map_err(|e| ManifestError::io(root, e))?;
    if !canon_root.is_dir() {
        return Err(ManifestError::io(
            root,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    let walkers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WALKERS);
    let walk = Walk {
        root: &canon_root,
        cache,
        queue: Mutex::new(Queue {
            dirs: vec![(canon_root.clone(), String::new())],
            busy: 0,
            failed: None,
        }),
        ready: Condvar::new(),
    };
    let found: Vec<Found> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..walkers).map(|_| s.spawn(|| walk.run())).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    // (A walker cannot panic outside `read_dir`, whose panics become `failed`.)
    let queue = walk.queue.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = queue.failed {
        return Err(e);
    }
    let mut out = ScanOutcome::default();
    let mut files = Vec::new();
    for f in found {
        out.hashed += f.hashed;
        out.hashed_bytes += f.hashed_bytes;
        out.skipped.extend(f.skipped);
        files.extend(f.files);
    }
    // Sorted first, the map is built in one pass instead of a million searches.
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.files = files.into_iter().collect();
    out.skipped.sort();
    Ok(out)
}

/// Threads reading directories at once: past a few, a local disk gains nothing.
pub const MAX_WALKERS: usize = 8;

/// The directories still to read, shared by the walkers.
struct Queue {
    /// Each with its path relative to the root, `/`-terminated (empty for the root).
    dirs: Vec<(PathBuf, String)>,
    /// Walkers reading a directory now (which may add more).
    busy: usize,
    /// The first error that stops the scan.
    failed: Option<ManifestError>,
}

struct Walk<'a, K> {
    root: &'a Path,
    cache: &'a K,
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// What one walker found.
#[derive(Default)]
struct Found {
    files: Vec<(String, CachedFile)>,
    hashed: usize,
    hashed_bytes: u64,
    skipped: Vec<(String, String)>,
}

impl<K: Known> Walk<'_, K> {
    fn run(&self) -> Found {
        let mut found = Found::default();
        let mut buf = Vec::new();
        let mut subdirs = Vec::new();
        let mut q = self.lock();
        loop {
            if q.failed.is_some() {
                break;
            }
            let Some((dir, rel)) = q.dirs.pop() else {
                if q.busy == 0 {
                    break;
                }
                q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            q.busy += 1;
            drop(q);
            // A panic must fail the scan, not leave the others waiting or a manifest short.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.read_dir(&dir, &rel, &mut found, &mut subdirs, &mut buf)
            }))
            .unwrap_or_else(|_| {
                Err(ManifestError::io(
                    &dir,
                    std::io::Error::other("internal error while scanning"),
                ))
            });
            q = self.lock();
            q.busy -= 1;
            q.dirs.append(&mut subdirs);
            if let Err(e) = result {
                q.failed.get_or_insert(e);
            }
            // New work, or the end of it (or a failure), for whoever waits.
            self.ready.notify_all();
        }
        drop(q);
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One directory's entries: files looked up and hashed if need be, subdirectories
    /// queued. An unreadable directory is reported and skipped, as before a file in it
    /// could be; a file that cannot be stat'ed or read fails the scan.
    fn read_dir(
        &self,
        dir: &Path,
        rel_dir: &str,
        found: &mut Found,
        subdirs: &mut Vec<(PathBuf, String)>,
        buf: &mut Vec<u8>,
    ) -> Result<(), ManifestError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                found
                    .skipped
                    .push((dir.display().to_string(), e.to_string()));
                return Ok(());
            }
        };
        for item in entries {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    found
                        .skipped
                        .push((dir.display().to_string(), e.to_string()));
                    continue;
                }
            };
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                found
                    .skipped
                    .push((item.path().display().to_string(), "not valid UTF-8".into()));
                continue;
            };
            if name.starts_with(".mirrorswarm") {
                continue; // our own staging and lock files
            }
            let ft = item
                .file_type()
                .map_err(|e| ManifestError::io(&item.path(), e))?;
            let rel = format!("{rel_dir}{name}");
            if ft.is_dir() {
                subdirs.push((item.path(), rel + "/"));
                continue;
            }
            if let Err(reason) = validate_rel_path(&rel) {
                found.skipped.push((rel, reason.into()));
                continue;
            }
            // A link is read at the target it was checked to have.
            let mut target = None;
            let meta = if ft.is_symlink() {
                match item.path().canonicalize() {
                    Ok(t) if t.starts_with(self.root) && t.is_file() => {
                        let m = std::fs::metadata(&t).map_err(|e| ManifestError::io(&t, e))?;
                        target = Some(t);
                        m
                    }
                    Ok(_) => {
                        found
                            .skipped
                            .push((rel, "symlink to a directory or outside the root".into()));
                        continue;
                    }
                    Err(e) => {
                        found.skipped.push((rel, format!("dangling symlink: {e}")));
                        continue;
                    }
                }
            } else if ft.is_file() {
                // Relative to the open directory: no walk of the whole path.
                item.metadata()
                    .map_err(|e| ManifestError::io(&item.path(), e))?
            } else {
                found.skipped.push((rel, "not a regular file".into()));
                continue;
            };
            let (size, mtime_ns) = stat_key(&meta);
            let cached = self
                .cache
                .known(&rel)
                .filter(|c| c.size == size && c.mtime_ns == mtime_ns);
            let entry = match cached {
                Some(c) => c,
                None => {
                    let path = target.unwrap_or_else(|| item.path());
                    let sha256 =
                        hash_file_with(&path, buf).map_err(|e| ManifestError::io(&path, e))?;
                    found.hashed += 1;
                    found.hashed_bytes += size;
                    CachedFile {
                        size,
                        mtime_ns,
                        sha256,
                    }
                }
            };
            found.files.push((rel, entry));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_hashes_once_and_follows_safe_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("pool/a")).unwrap();
        std::fs::write(root.join("pool/a/x.deb"), b"hello").unwrap();
        std::fs::write(root.join("top"), b"").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("pool/a/x.deb", root.join("link")).unwrap();
            std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
            std::os::unix::fs::symlink("pool", root.join("dirlink")).unwrap();
        }
        let first = scan_tree(&root, &ScanCache::new()).unwrap();
        let keys: Vec<&str> = first.files.keys().map(String::as_str).collect();
        #[cfg(unix)]
        assert_eq!(keys, ["link", "pool/a/x.deb", "top"]);
        assert_eq!(
            first.files["pool/a/x.deb"].sha256.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        #[cfg(unix)]
        assert_eq!(first.skipped.len(), 2, "{:?}", first.skipped);

        let second = scan_tree(&root, &first.files).unwrap();
        assert_eq!(second.hashed, 0);
        assert_eq!(second.files, first.files);
    }

    #[test]
    fn parallel_scan_finds_every_file_once_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut expect = Vec::new();
        // Names where walking order and path order differ (`a/x` sorts after `a-b`).
        for d in ["a", "a-b", "a/c", "a/c/d", "z", "m/n/o/p"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            for f in 0..40 {
                let rel = format!("{d}/f{f}");
                std::fs::write(root.join(&rel), rel.as_bytes()).unwrap();
                expect.push(rel);
            }
        }
        std::fs::create_dir_all(root.join("a/.mirrorswarm-staging")).unwrap();
        std::fs::write(root.join("a/.mirrorswarm-staging/x"), b"x").unwrap();
        std::fs::write(root.join(".mirrorswarm.lock"), b"").unwrap();
        expect.sort();
        let first = scan_tree(root, &ScanCache::new()).unwrap();
        let keys: Vec<&String> = first.files.keys().collect();
        assert_eq!(keys, expect.iter().collect::<Vec<_>>());
        assert_eq!(first.hashed, expect.len());
        for (rel, c) in &first.files {
            assert_eq!(c.sha256, hash_file(&root.join(rel)).unwrap(), "{rel}");
            assert_eq!(c.size, rel.len() as u64);
        }

        std::fs::write(root.join("a/c/f3"), b"longer than it was").unwrap();
        let second = scan_tree(root, &first.files).unwrap();
        assert_eq!(second.hashed, 1, "only the changed file is read again");
        assert_eq!(second.files.len(), first.files.len());
        assert_ne!(second.files["a/c/f3"], first.files["a/c/f3"]);
    }

    #[test]
    fn a_missing_or_non_directory_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan_tree(&dir.path().join("nope"), &ScanCache::new()).is_err());
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(scan_tree(&dir.path().join("file"), &ScanCache::new()).is_err());
    }
}
