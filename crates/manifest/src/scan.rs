//! Walking a repository directory and hashing what changed.
//!
//! The scan is incremental: a file whose size and mtime match the cache is not re-read. Symbolic
//! links are followed only when they resolve to a regular file inside the root (apt trees use
//! them, e.g. `dists/stable -> bookworm`); anything else is skipped and reported.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
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
    let mut f = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256(hasher.finalize().into()))
}

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

/// Walk `root`, hashing files whose size or mtime differ from `cache`.
pub fn scan_tree(root: &Path, cache: &ScanCache) -> Result<ScanOutcome, ManifestError> {
    let canon_root = root
        .canonicalize()
        .map_err(|e| ManifestError::io(root, e))?;
    let mut out = ScanOutcome::default();
    for item in walkdir::WalkDir::new(&canon_root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                let p = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                out.skipped.push((p, e.to_string()));
                continue;
            }
        };
        let ft = item.file_type();
        if ft.is_dir() {
            continue;
        }
        let Some(rel) = relative_key(&canon_root, item.path()) else {
            out.skipped
                .push((item.path().display().to_string(), "not valid UTF-8".into()));
            continue;
        };
        if rel.split('/').any(|s| s.starts_with(".mirrorswarm")) {
            continue; // our own staging and lock files
        }
        if let Err(reason) = validate_rel_path(&rel) {
            out.skipped.push((rel, reason.into()));
            continue;
        }
        let target: PathBuf = if ft.is_symlink() {
            match item.path().canonicalize() {
                Ok(t) if t.starts_with(&canon_root) && t.is_file() => t,
                Ok(_) => {
                    out.skipped
                        .push((rel, "symlink to a directory or outside the root".into()));
                    continue;
                }
                Err(e) => {
                    out.skipped.push((rel, format!("dangling symlink: {e}")));
                    continue;
                }
            }
        } else if ft.is_file() {
            item.path().to_path_buf()
        } else {
            out.skipped.push((rel, "not a regular file".into()));
            continue;
        };
        let meta = std::fs::metadata(&target).map_err(|e| ManifestError::io(&target, e))?;
        let (size, mtime_ns) = stat_key(&meta);
        let cached = cache
            .get(&rel)
            .filter(|c| c.size == size && c.mtime_ns == mtime_ns)
            .copied();
        let entry = match cached {
            Some(c) => c,
            None => {
                let sha256 = hash_file(&target).map_err(|e| ManifestError::io(&target, e))?;
                out.hashed += 1;
                out.hashed_bytes += size;
                CachedFile {
                    size,
                    mtime_ns,
                    sha256,
                }
            }
        };
        out.files.insert(rel, entry);
    }
    Ok(out)
}

fn relative_key(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
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
}
