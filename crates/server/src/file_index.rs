//! One generation's files as the request path reads them: compact and immutable.
//!
//! A `Manifest` (a `BTreeMap<String, Entry>`) costs about 200 bytes a file with its
//! allocations, and the server used to keep it beside its signed JSON and the scan cache: some
//! 500 bytes a file, half a gigabyte for a million. Here every path lives in one string, each
//! file is one fixed-size slot in path order, and an open-addressing table finds a path with
//! one hash. Each table entry carries 32 bits of its path's hash beside the slot number, so
//! the probes past a collision cost no visit to a slot: a hit touches three cache lines (the
//! table, the slot, the path), a miss usually one. About 135 bytes a file with 45-byte paths.
//! The three big arrays ask for transparent huge pages: with a million files they span a few
//! hundred megabytes, and a TLB miss on each of the three lines cost as much as the lookup.

use manifest::scan::{CachedFile, Known, ScanCache};
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
/// A free table entry (no slot number is `u32::MAX`: at most `u32::MAX - 1` files).
const EMPTY: u64 = u64::MAX;
const SLOT_LIMIT: usize = u32::MAX as usize;

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
    /// By path hash, linear probing, a power of two at most 3/4 full: the hash's high 32
    /// bits, then the slot number.
    table: Vec<u64>,
    /// Keys the path hash, chosen at random per index.
    seed: u64,
}

impl FileIndex {
    /// Index `manifest`'s files; `stat` gives each one's mtime when it was hashed.
    pub fn build(manifest: &Manifest, stat: &ScanCache) -> Result<FileIndex, IndexError> {
        let n = manifest.files.len();
        if n >= SLOT_LIMIT {
            return Err(IndexError::TooManyFiles);
        }
        let path_bytes: usize = manifest.files.keys().map(String::len).sum();
        if path_bytes > u32::MAX as usize {
            return Err(IndexError::PathsTooLong);
        }
        let mut paths = String::from_utf8(huge_vec(path_bytes)).unwrap_or_default();
        let mut slots = huge_vec(n);
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
            seed: random_seed(),
        };
        let cap = (n * 4 / 3 + 1).next_power_of_two().max(8);
        let mut table = huge_vec(cap);
        table.resize(cap, EMPTY);
        for i in 0..n {
            let h = path_hash(index.seed, index.path_of(i).as_bytes());
            let mut at = (h as usize) & (cap - 1);
            while table[at] != EMPTY {
                at = (at + 1) & (cap - 1);
            }
            table[at] = (h & TAG_MASK) | i as u64;
        }
        index.table = table;
        index.advise_collapse();
        Ok(index)
    }

    /// Huge pages for the three big arrays, now that they are filled.
    fn advise_collapse(&self) {
        advise_huge(self.paths.as_ptr() as usize, self.paths.len(), true);
        advise_huge(
            self.slots.as_ptr() as usize,
            self.slots.len() * std::mem::size_of::<Slot>(),
            true,
        );
        advise_huge(self.table.as_ptr() as usize, self.table.len() * 8, true);
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
        let h = path_hash(self.seed, path.as_bytes());
        let tag = h & TAG_MASK;
        let mut at = (h as usize) & (cap - 1);
        loop {
            let e = self.table[at];
            if e == EMPTY {
                return None;
            }
            if e & TAG_MASK == tag {
                let i = (e & !TAG_MASK) as usize;
                if self.path_of(i) == path {
                    return Some(i);
                }
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
            + self.table.capacity() * 8
    }
}

/// A running server's index knows what the scan cache on disk says (it was built from it),
/// without reading and parsing a JSON file of a million entries.
impl Known for FileIndex {
    fn known(&self, rel: &str) -> Option<CachedFile> {
        let s = &self.slots[self.position(rel)?];
        (s.mtime_ns != i64::MIN).then_some(CachedFile {
            size: s.size,
            mtime_ns: i128::from(s.mtime_ns),
            sha256: Sha256(s.sha256),
        })
    }
}

/// A seed from the standard library's per-process random keys.
fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(0x6d69_7272_6f72u64)
}

/// The path hash: eight bytes at a time, each folded in with a 64×64→128-bit multiply (as
/// wyhash mixes), keyed by `seed`. A fifth of SipHash's cost on a 50-byte path. It need not
/// resist chosen keys: the table's keys are the operator's published paths, and a customer's
/// path that is not among them costs one probe sequence like any other.
fn path_hash(seed: u64, bytes: &[u8]) -> u64 {
    const K0: u64 = 0xa076_1d64_78bd_642f;
    const K1: u64 = 0xe703_7ed1_a0b4_28db;
    fn fold(a: u64, b: u64) -> u64 {
        let m = u128::from(a) * u128::from(b);
        (m as u64) ^ ((m >> 64) as u64)
    }
    let mut h = seed ^ fold(bytes.len() as u64 ^ K0, K1);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = fold(h ^ u64::from_le_bytes(b) ^ K0, K1);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = fold(h ^ u64::from_le_bytes(b) ^ K1, K0);
    }
    fold(h ^ K0, K1 ^ seed)
}

/// The high half of a table entry: that much of the path's hash.
const TAG_MASK: u64 = 0xffff_ffff_0000_0000;

/// An empty vector with room for `cap` elements, its memory (if large) advised for
/// transparent huge pages before anything touches it.
fn huge_vec<T>(cap: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(cap);
    advise_huge(
        v.as_ptr() as usize,
        cap.saturating_mul(std::mem::size_of::<T>()),
        false,
    );
    v
}

/// Ask the kernel to back `bytes` at `start` (memory of our own) with huge pages: from now on
/// (`MADV_HUGEPAGE`), or, with `collapse`, at once for pages already there (`MADV_COLLAPSE`,
/// Linux 6.1: the allocator may have handed out memory that was touched before). Advice
/// only: where the kernel gives none, nothing changes.
fn advise_huge(start: usize, bytes: usize, collapse: bool) {
    const HUGE: usize = 2 << 20;
    const MADV_COLLAPSE: libc::c_int = 25;
    if bytes < 2 * HUGE {
        return;
    }
    // madvise wants a page-aligned start; the kernel uses the aligned 2 MiB stretches.
    let aligned = (start + 4095) & !4095;
    let len = (start + bytes).saturating_sub(aligned) & !4095;
    let advice = if collapse {
        MADV_COLLAPSE
    } else {
        libc::MADV_HUGEPAGE
    };
    // SAFETY: the range lies within an allocation of the caller's; these advices change no
    // contents and no mapping, only how the kernel backs the pages.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, advice);
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
    fn the_path_hash_spreads_similar_paths() {
        // Paths that differ in a digit or two, as a pool's do: probe sequences stay short.
        let (m, stat) = manifest(200_000);
        let idx = FileIndex::build(&m, &stat).unwrap();
        let cap = idx.table.len();
        let (mut longest, mut total) = (0usize, 0usize);
        for p in m.files.keys() {
            let want = idx.position(p).unwrap();
            let h = path_hash(idx.seed, p.as_bytes());
            let mut at = (h as usize) & (cap - 1);
            let mut probes = 1;
            while (idx.table[at] & !TAG_MASK) as usize != want {
                at = (at + 1) & (cap - 1);
                probes += 1;
            }
            longest = longest.max(probes);
            total += probes;
        }
        let mean = total as f64 / m.files.len() as f64;
        // Linear probing at this load (0.38) averages about 1.3 probes for a hit.
        assert!(mean < 1.6, "mean probes {mean}");
        assert!(longest < 40, "longest probe sequence {longest}");
        // Different seeds, different hashes; every byte counts.
        assert_ne!(path_hash(1, b"pool/a.deb"), path_hash(2, b"pool/a.deb"));
        assert_ne!(path_hash(1, b"pool/a.deb"), path_hash(1, b"pool/b.deb"));
        assert_ne!(path_hash(1, b"12345678"), path_hash(1, b"12345678\0"));
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
