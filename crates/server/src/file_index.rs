//! One generation's files as the request path reads them: compact and immutable.
//!
//! A `Manifest` (a `BTreeMap<String, Entry>`) costs about 200 bytes a file with its
//! allocations, and the server used to keep it beside its signed JSON and the scan cache: some
//! 500 bytes a file, half a gigabyte for a million. Here every path lives in one string, each
//! file is one fixed-size slot in path order, and an open-addressing table of slot numbers
//! finds a path with one hash and, mostly, one probe. About 125 bytes a file with 45-byte
//! paths; lookups touch two or three cache lines instead of a tree's twenty.

use std::hash::{BuildHasher, RandomState};

use manifest::scan::ScanCache;
use manifest::{Btih, Entry, Manifest, Sha256};

/// One file. Sizes and generations stay 64-bit; the path is a range of [`FileIndex::paths`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    path_start: u32,
    path_len: u32,
    size: u64,
    changed_in: u64,
    /// The file's mtime when it was hashed (ns since the epoch), to notice edits on disk.
    mtime_ns: i64,
    sha256: [u8; 32],
    /// Position in [`FileIndex::btih`], or `NO_BTIH`.
    btih: u32,
}

const NO_BTIH: u32 = u32::MAX;
const EMPTY: u32 = u32::MAX;

/// Why a generation cannot be indexed (limits far beyond any repository).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the paths of one generation exceed 4 GiB together")]
    PathsTooLong,
    #[error("more than 4 billion files in one generation")]
    TooManyFiles,
}

#[derive(Debug)]
pub struct FileIndex {
    paths: String,
    slots: Vec<Slot>,
    btih: Vec<[u8; 20]>,
    /// Slot numbers by path hash, linear probing; a power of two, at most 3/4 full.
    table: Vec<u32>,
    hasher: RandomState,
}

impl FileIndex {
    /// Index `manifest`'s files; `stat` gives each one's mtime when it was hashed.
    pub fn build(manifest: &Manifest, stat: &ScanCache) -> Result<FileIndex, IndexError> {
        let n = manifest.files.len();
        if n >= EMPTY as usize {
            return Err(IndexError::TooManyFiles);
        }
        let path_bytes: usize = manifest.files.keys().map(String::len).sum();
        if path_bytes > u32::MAX as usize {
            return Err(IndexError::PathsTooLong);
        }
        let mut paths = String::with_capacity(path_bytes);
        let mut slots = Vec::with_capacity(n);
        let mut btih = Vec::new();
        for (path, e) in &manifest.files {
            let start = paths.len() as u32;
            paths.push_str(path);
            let b = match e.btih {
                Some(h) => {
                    btih.push(h.0);
                    (btih.len() - 1) as u32
                }
                None => NO_BTIH,
            };
            slots.push(Slot {
                path_start: start,
                path_len: path.len() as u32,
                size: e.size,
                changed_in: e.changed_in,
                mtime_ns: stat
                    .get(path)
                    .filter(|c| c.size == e.size)
                    .map_or(i64::MIN, |c| c.mtime_ns as i64),
                sha256: e.sha256.0,
                btih: b,
            });
        }
        btih.shrink_to_fit();
        let mut index = FileIndex {
            paths,
            slots,
            btih,
            table: Vec::new(),
            hasher: RandomState::new(),
        };
        let cap = (n * 4 / 3 + 1).next_power_of_two().max(8);
        let mut table = vec![EMPTY; cap];
        for i in 0..n {
            let mut at = index.home(index.path_of(i), cap);
            while table[at] != EMPTY {
                at = (at + 1) & (cap - 1);
            }
            table[at] = i as u32;
        }
        index.table = table;
        Ok(index)
    }

    fn home(&self, path: &str, cap: usize) -> usize {
        (self.hasher.hash_one(path) as usize) & (cap - 1)
    }

    fn path_of(&self, i: usize) -> &str {
        let s = &self.slots[i];
        &self.paths[s.path_start as usize..(s.path_start + s.path_len) as usize]
    }

    fn entry_of(&self, i: usize) -> Entry {
        let s = &self.slots[i];
        Entry {
            size: s.size,
            sha256: Sha256(s.sha256),
            changed_in: s.changed_in,
            btih: (s.btih != NO_BTIH).then(|| Btih(self.btih[s.btih as usize])),
        }
    }

    fn position(&self, path: &str) -> Option<usize> {
        let cap = self.table.len();
        let mut at = self.home(path, cap);
        loop {
            let i = self.table[at];
            if i == EMPTY {
                return None;
            }
            if self.path_of(i as usize) == path {
                return Some(i as usize);
            }
            at = (at + 1) & (cap - 1);
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<Entry> {
        self.position(path).map(|i| self.entry_of(i))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.position(path).is_some()
    }

    /// Size and mtime (ns) of the file when it was hashed, as `scan::stat_key` gives them.
    pub fn stat(&self, path: &str) -> Option<(u64, i128)> {
        let s = &self.slots[self.position(path)?];
        (s.mtime_ns != i64::MIN).then_some((s.size, i128::from(s.mtime_ns)))
    }

    /// The `i`-th file in path order.
    pub fn nth(&self, i: usize) -> Option<(&str, Entry)> {
        (i < self.slots.len()).then(|| (self.path_of(i), self.entry_of(i)))
    }

    /// Every file in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Entry)> + '_ {
        (0..self.slots.len()).map(|i| (self.path_of(i), self.entry_of(i)))
    }

    /// Files from the first path `>= from`, in path order (directory listings).
    pub fn range_from<'a>(&'a self, from: &str) -> impl Iterator<Item = (&'a str, Entry)> + 'a {
        let first = self.slots.partition_point(|s| {
            &self.paths[s.path_start as usize..(s.path_start + s.path_len) as usize] < from
        });
        (first..self.slots.len()).map(|i| (self.path_of(i), self.entry_of(i)))
    }

    pub fn total_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.size).sum()
    }

    /// The generation as a `Manifest` again (publishing compares against it).
    pub fn to_manifest(&self, repo: &str, generation: u64, published_at: u64) -> Manifest {
        Manifest {
            repo: repo.to_string(),
            generation,
            published_at,
            files: self.iter().map(|(p, e)| (p.to_string(), e)).collect(),
        }
    }

    /// Bytes of memory held, for logs and the memory benchmark.
    pub fn heap_bytes(&self) -> usize {
        self.paths.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.btih.capacity() * 20
            + self.table.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifest::scan::CachedFile;

    fn manifest(n: usize) -> (Manifest, ScanCache) {
        let mut files = std::collections::BTreeMap::new();
        let mut stat = ScanCache::new();
        for i in 0..n {
            let path = format!("pool/{}/f{i:05}.deb", i % 7);
            let e = Entry {
                size: i as u64,
                sha256: Sha256([(i % 251) as u8; 32]),
                changed_in: 1 + (i % 3) as u64,
                btih: (i % 5 == 0).then_some(Btih([i as u8; 20])),
            };
            stat.insert(
                path.clone(),
                CachedFile {
                    size: e.size,
                    mtime_ns: 1_700_000_000_000_000_000 + i as i128,
                    sha256: e.sha256,
                },
            );
            files.insert(path, e);
        }
        let m = Manifest {
            repo: "r".into(),
            generation: 3,
            published_at: 9,
            files,
        };
        (m, stat)
    }

    #[test]
    fn answers_as_the_manifest_does() {
        let (m, stat) = manifest(5000);
        let idx = FileIndex::build(&m, &stat).unwrap();
        assert_eq!(idx.len(), 5000);
        for (p, e) in &m.files {
            assert_eq!(idx.get(p), Some(*e), "{p}");
            assert_eq!(idx.stat(p).map(|s| s.1), stat.get(p).map(|c| c.mtime_ns));
        }
        assert!(idx.get("pool/1/nope.deb").is_none());
        assert!(idx.get("").is_none());
        assert!(!idx.contains("pool/1"));
        // Order, nth and ranges follow the manifest's (path) order.
        assert!(idx
            .iter()
            .map(|(p, _)| p)
            .eq(m.files.keys().map(String::as_str)));
        assert_eq!(idx.nth(0).unwrap().0, m.files.keys().next().unwrap());
        assert!(idx.nth(5000).is_none());
        let from: Vec<&str> = idx.range_from("pool/3/").take(3).map(|(p, _)| p).collect();
        let want: Vec<&str> = m
            .files
            .range("pool/3/".to_string()..)
            .take(3)
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(from, want);
        assert_eq!(idx.to_manifest("r", 3, 9), m);
        assert_eq!(idx.total_bytes(), m.total_bytes());
        // Compact: under 150 bytes a file with these 20-byte paths, table included.
        assert!(idx.heap_bytes() < 150 * 5000, "{} bytes", idx.heap_bytes());
    }

    #[test]
    fn empty_and_unhashed_files() {
        let idx = FileIndex::build(&manifest(0).0, &ScanCache::new()).unwrap();
        assert!(idx.is_empty() && idx.get("a").is_none() && idx.range_from("").next().is_none());
        let (m, _) = manifest(3);
        let idx = FileIndex::build(&m, &ScanCache::new()).unwrap();
        let p = m.files.keys().next().unwrap();
        assert_eq!(
            idx.stat(p),
            None,
            "no scan record: not vouched for as unchanged"
        );
    }
}
