//! The proxy's store of verified files, named by their SHA-256. A file gets a name here only
//! after its bytes hashed to what the server published, so a name is a promise about the
//! bytes. Bounded in total size; the least recently used files go first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Cache {
    dir: PathBuf,
    /// `dir` held open: a cached file is opened beneath it, so a name in the cache swapped
    /// for a link (to anything outside) is never followed.
    root: fileserve::Root,
    max_bytes: u64,
    seq: AtomicU64,
}

impl Cache {
    /// Open (creating) the cache at `dir`. Leftover partial downloads of an earlier run are
    /// removed: they were never verified.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Cache> {
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with("partial-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Cache {
            root: fileserve::Root::open(dir)?,
            dir: dir.to_path_buf(),
            max_bytes,
            seq: AtomicU64::new(0),
        })
    }

    /// Where the verified file with this digest lives (whether or not it is there).
    pub fn path_of(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(sha256))
    }

    /// The verified file with this digest and size, opened, if the cache holds it (a regular
    /// file under that name, of that size). Marks it used.
    pub fn get(
        &self,
        sha256: &[u8; 32],
        size: Option<u64>,
    ) -> Option<(std::fs::File, std::fs::Metadata)> {
        let name = hex::encode(sha256);
        let opened = match size {
            Some(size) => self.root.open_sized(&name, size),
            None => self.root.open_file(&name),
        };
        let (f, meta) = match opened {
            Ok(o) => o,
            Err(fileserve::OpenError::NotFound) => return None,
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "cached file is not as verified; fetching it again");
                return None;
            }
        };
        // On the handle: the owner may set times whatever the open mode.
        let _ = f.set_modified(std::time::SystemTime::now());
        Some((f, meta))
    }

    /// A fresh path for a download in progress.
    pub fn partial_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(
            "partial-{}-{n}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    /// Give a verified download its name, then make room.
    pub fn insert(&self, partial: &Path, sha256: &[u8; 32]) -> std::io::Result<PathBuf> {
        let p = self.path_of(sha256);
        std::fs::rename(partial, &p)?;
        self.evict();
        Ok(p)
    }

    /// Delete least recently used verified files until the total fits. The newest file
    /// always stays, even if it alone is larger than the bound: it is about to be served.
    fn evict(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        // Only the cache's own files, named by a digest: a --cache-dir that also holds the
        // user's files (their downloads folder, say) must not lose them to the bound.
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter(|e| is_digest_name(&e.file_name().to_string_lossy()))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        let keep_last = files.len().saturating_sub(1);
        for (_, len, path) in files.into_iter().take(keep_last) {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// A verified file's name: 64 lowercase hex digits.
fn is_digest_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_and_evict() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), 10).unwrap();
        let a = [1u8; 32];
        let b = [2u8; 32];
        let p = c.partial_path();
        std::fs::write(&p, b"123456").unwrap();
        c.insert(&p, &a).unwrap();
        assert!(c.get(&a, Some(6)).is_some());
        assert!(c.get(&a, Some(7)).is_none(), "a size mismatch is a miss");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let p = c.partial_path();
        std::fs::write(&p, b"abcdefgh").unwrap();
        c.insert(&p, &b).unwrap();
        // 14 bytes > 10: the older file goes, the newer stays.
        assert!(c.get(&a, None).is_none());
        assert!(c.get(&b, None).is_some());
        // Files the cache did not make are never evicted, however full it is.
        let mine = dir.path().join("holiday-photos.tar");
        std::fs::write(&mine, vec![0u8; 100]).unwrap();
        let p = c.partial_path();
        std::fs::write(&p, b"zz").unwrap();
        c.insert(&p, &[3u8; 32]).unwrap();
        assert!(mine.exists(), "the user's file was evicted");
        // Partial files of an earlier run are cleared on open.
        let stale = c.partial_path();
        std::fs::write(&stale, b"x").unwrap();
        drop(c);
        let _c = Cache::open(dir.path(), 10).unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn a_cached_name_swapped_for_a_link_out_is_a_miss() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("cache");
        let c = Cache::open(&dir, 1 << 20).unwrap();
        let a = [1u8; 32];
        let p = c.partial_path();
        std::fs::write(&p, b"verified").unwrap();
        let named = c.insert(&p, &a).unwrap();
        assert!(c.get(&a, Some(8)).is_some());
        // Same size, other bytes, outside the cache: never opened through the name.
        std::fs::write(outer.path().join("other"), b"NOTTHESE").unwrap();
        std::fs::remove_file(&named).unwrap();
        std::os::unix::fs::symlink(outer.path().join("other"), &named).unwrap();
        assert!(c.get(&a, Some(8)).is_none());
        assert!(c.get(&a, None).is_none());
    }
}
