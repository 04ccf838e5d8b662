//! Walking a repository directory and hashing what changed.
//!
//! The scan is incremental: a file whose size and mtime match the cache is not re-read. Symbolic
//! links are followed only when they are relative and resolve to a regular file without
//! leaving the root (the rule of every later open, [`crate::beneath`]); links to directories
//! are not descended into; anything else is skipped and reported.

use std::collections::BTreeMap;
use std::fs::File;
use std::fs::Metadata;
use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::record::Record;
use crate::walk::{walk, Visit};
use crate::{ManifestError, Sha256};

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

    /// What is known of `rel`, if it still has the size and mtime it had then.
    fn unchanged(&self, rel: &str, size: u64, mtime_ns: i128) -> Option<CachedFile> {
        self.known(rel)
            .filter(|c| c.size == size && c.mtime_ns == mtime_ns)
    }
}

impl Known for ScanCache {
    fn known(&self, rel: &str) -> Option<CachedFile> {
        self.get(rel).copied()
    }
}

/// Walk `root`, hashing files whose size or mtime differ from what `cache` knows.
pub fn scan_tree(root: &Path, cache: &impl Known) -> Result<ScanOutcome, ManifestError> {
    let (found, mut out) = scan_found(root, cache)?;
    let mut files = Vec::new();
    for f in found {
        // The paths' strings are made on this thread (see `walk` on arenas).
        files.extend(
            f.files
                .into_iter()
                .map(|(at, c)| (f.paths[at].to_owned(), c)),
        );
    }
    // Sorted first, the map is built in one pass instead of a million searches.
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.files = files.into_iter().collect();
    Ok(out)
}

/// [`scan_tree`], its findings as a compact [`Record`] (`files` of the outcome left empty):
/// no string, no map node per file.
pub fn scan_record(
    root: &Path,
    cache: &impl Known,
) -> Result<(Record, ScanOutcome), ManifestError> {
    let (found, out) = scan_found(root, cache)?;
    let mut order: Vec<(u32, u32)> = found
        .iter()
        .enumerate()
        .flat_map(|(w, f)| (0..f.files.len()).map(move |i| (w as u32, i as u32)))
        .collect();
    let path_of = |&(w, i): &(u32, u32)| {
        let f = &found[w as usize];
        &f.paths[f.files[i as usize].0.clone()]
    };
    order.sort_unstable_by(|a, b| path_of(a).cmp(path_of(b)));
    let record = Record::from_sorted(
        order
            .iter()
            .map(|at| (path_of(at), found[at.0 as usize].files[at.1 as usize].1)),
    )
    .map_err(|e| ManifestError::io(root, std::io::Error::other(e.to_string())))?;
    Ok((record, out))
}

/// Walk and hash: what each walker found, and the outcome's counts and skips.
fn scan_found(root: &Path, cache: &impl Known) -> Result<(Vec<Found>, ScanOutcome), ManifestError> {
    let walkers = walk(root, || Collect {
        cache,
        found: Found::default(),
        buf: Vec::new(),
    })?;
    let mut out = ScanOutcome::default();
    let mut found = Vec::with_capacity(walkers.len());
    for Collect { found: mut f, .. } in walkers {
        out.hashed += f.hashed;
        out.hashed_bytes += f.hashed_bytes;
        out.skipped.append(&mut f.skipped);
        found.push(f);
    }
    out.skipped.sort();
    Ok((found, out))
}

/// Whether `root` holds exactly the `files` files `known` knows, each with the size and
/// mtime it had: then a scan would find what was scanned before, and read nothing. Stops at
/// the first difference. Allocates nothing per file. On `Some`, the entries skipped.
pub fn unchanged_since(
    root: &Path,
    known: &impl Known,
    files: usize,
) -> Result<Option<Vec<(String, String)>>, ManifestError> {
    let walkers = walk(root, || Compare {
        known,
        seen: 0,
        differs: false,
        skipped: Vec::new(),
    })?;
    let mut seen = 0;
    let mut skipped = Vec::new();
    for w in walkers {
        if w.differs {
            return Ok(None);
        }
        seen += w.seen;
        skipped.extend(w.skipped);
    }
    skipped.sort();
    // Every file seen is a distinct path `known` has: as many seen as it has is all of them.
    Ok((seen == files).then_some(skipped))
}

/// What one walker of [`scan_tree`] found: a few large buffers, no allocation per file.
#[derive(Default)]
struct Found {
    /// Every path found, one after the other.
    paths: String,
    /// Each file's range of `paths`.
    files: Vec<(std::ops::Range<usize>, CachedFile)>,
    hashed: usize,
    hashed_bytes: u64,
    skipped: Vec<(String, String)>,
}

struct Collect<'a, K> {
    cache: &'a K,
    found: Found,
    /// The hash buffer, reused from file to file.
    buf: Vec<u8>,
}

impl<K: Known> Visit for Collect<'_, K> {
    fn file(&mut self, rel: &str, read: &Path, meta: &Metadata) -> Result<bool, ManifestError> {
        let (size, mtime_ns) = stat_key(meta);
        let entry = match self.cache.unchanged(rel, size, mtime_ns) {
            Some(c) => c,
            None => {
                let sha256 =
                    hash_file_with(read, &mut self.buf).map_err(|e| ManifestError::io(read, e))?;
                self.found.hashed += 1;
                self.found.hashed_bytes += size;
                CachedFile {
                    size,
                    mtime_ns,
                    sha256,
                }
            }
        };
        let start = self.found.paths.len();
        self.found.paths.push_str(rel);
        let at = start..self.found.paths.len();
        self.found.files.push((at, entry));
        Ok(true)
    }

    fn skipped(&mut self, what: String, why: String) {
        self.found.skipped.push((what, why));
    }
}

struct Compare<'a, K> {
    known: &'a K,
    seen: usize,
    differs: bool,
    skipped: Vec<(String, String)>,
}

impl<K: Known> Visit for Compare<'_, K> {
    fn file(&mut self, rel: &str, _read: &Path, meta: &Metadata) -> Result<bool, ManifestError> {
        let (size, mtime_ns) = stat_key(meta);
        let same = self.known.unchanged(rel, size, mtime_ns).is_some();
        self.seen += 1;
        self.differs = !same;
        Ok(same)
    }

    fn skipped(&mut self, what: String, why: String) {
        self.skipped.push((what, why));
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
        // The same findings as a compact record, with the record as the cache.
        let (record, third) = scan_record(root, &Record::from_map(&second.files)).unwrap();
        assert_eq!(third.hashed, 0);
        let as_map: ScanCache = record.iter().map(|(p, c)| (p.to_string(), c)).collect();
        assert_eq!(as_map, second.files);
    }

    #[test]
    fn a_missing_or_non_directory_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan_tree(&dir.path().join("nope"), &ScanCache::new()).is_err());
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(scan_tree(&dir.path().join("file"), &ScanCache::new()).is_err());
    }

    #[test]
    fn unchanged_since_notices_any_difference() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["a", "b/c"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            for f in 0..30 {
                std::fs::write(root.join(format!("{d}/{f}")), d.as_bytes()).unwrap();
            }
        }
        std::fs::write(root.join("bad\\name"), b"").unwrap();
        let scanned = scan_tree(root, &ScanCache::new()).unwrap();
        let n = scanned.files.len();
        assert_eq!(n, 60);
        let same = unchanged_since(root, &scanned.files, n).unwrap();
        let skipped = same.expect("nothing changed");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped, scanned.skipped);

        // One file fewer known than on disk (a new file), or one more (a deleted one).
        let mut fewer = scanned.files.clone();
        fewer.remove("a/3");
        assert!(unchanged_since(root, &fewer, n - 1).unwrap().is_none());
        assert!(unchanged_since(root, &scanned.files, n + 1)
            .unwrap()
            .is_none());
        // A size or an mtime that moved.
        std::fs::write(root.join("b/c/7"), b"other").unwrap();
        assert!(unchanged_since(root, &scanned.files, n).unwrap().is_none());
        std::fs::write(root.join("b/c/7"), b"b/c").unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(root.join("b/c/7"))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH).unwrap();
        drop(f);
        let mut touched = scanned.files.clone();
        touched.get_mut("b/c/7").unwrap().mtime_ns = 0;
        assert!(unchanged_since(root, &scanned.files, n).unwrap().is_none());
        assert!(unchanged_since(root, &touched, n).unwrap().is_some());
    }
}
