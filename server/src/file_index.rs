//! One generation's files as the request path reads them: compact and immutable.
//!
//! A `Manifest` (a `BTreeMap<String, Entry>`) costs about 200 bytes a file with its
//! allocations, and the server used to keep it beside its signed JSON and the scan cache: some
//! 500 bytes a file, half a gigabyte for a million. Here each file is one record in one
//! buffer, its fixed fields followed by its path, in path order; an open-addressing table
//! finds a path with one hash. Each table entry carries 32 bits of the path's hash beside the
//! record's place, so the probes past a collision visit no record. A hit reads the table,
//! then the record: the record's fields and its path sit side by side, so the CPU fetches
//! their cache lines together (with the path apart from the fields, as it was, the path's
//! place was known only once the fields had arrived: three misses one after the other, not
//! two). A miss usually reads one line. About 133 bytes a file with 45-byte paths. The big
//! arrays ask for transparent huge pages: with a million files they span a few hundred
//! megabytes, and a TLB miss on each line cost as much as the lookup.

use std::sync::atomic::{AtomicU32, Ordering};

use manifest::scan::{CachedFile, Known, ScanCache};
use manifest::{Btih, Entry, Manifest, Sha256};

/// A record: these fixed fields (little-endian), then the path's bytes, then padding to
/// [`ALIGN`]. Sizes and generations stay 64-bit.
mod rec {
    pub const SIZE: usize = 0;
    pub const CHANGED_IN: usize = 8;
    /// The file's mtime when it was hashed (ns since the epoch), to notice edits on disk;
    /// `UNKNOWN` or `NOT_HELD` (see those).
    pub const MTIME_NS: usize = 16;
    pub const SHA256: usize = 24;
    /// Position in `FileIndex::btih`, or `NO_BTIH`.
    pub const BTIH: usize = 56;
    pub const PATH_LEN: usize = 60;
    /// Bytes before the path.
    pub const HEAD: usize = 64;
}

/// Records start at multiples of this; the table and the order name them in its units.
const ALIGN: usize = 8;
const NO_BTIH: u32 = u32::MAX;
/// An mtime not known: the file may be as published (the origin serves it, unvouched).
const UNKNOWN: i64 = i64::MIN;
/// This server's tree does not hold the published bytes (a replica that loaded a generation
/// another published, before its own copy caught up): the origin does not send the file.
const NOT_HELD: i64 = i64::MIN + 1;
/// A free table entry (no record is at `u32::MAX` units: at most `u32::MAX - 1`).
const EMPTY: u64 = u64::MAX;
const UNIT_LIMIT: usize = u32::MAX as usize;

/// Why a generation cannot be indexed (limits far beyond any repository).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the records of one generation exceed 32 GiB together")]
    PathsTooLong,
    #[error("more than 4 billion files in one generation")]
    TooManyFiles,
}

/// Where a file's requests are counted in its [`FileIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

#[derive(Debug)]
pub struct FileIndex {
    records: Vec<u8>,
    /// Each file's record, in path order, in [`ALIGN`] units.
    order: Vec<u32>,
    btih: Vec<[u8; 20]>,
    /// By path hash, linear probing, a power of two at most 3/4 full: the hash's high 32
    /// bits, then the record's place in [`ALIGN`] units.
    table: Vec<u64>,
    /// Customers' requests per file since they were last taken ([`Self::take_hits`]), by
    /// the file's place in `table`: 4 bytes a table entry, counted without a lock or a
    /// lookup of its own (the popularity the server publishes is made from them).
    hits: Box<[AtomicU32]>,
    /// Keys the path hash, chosen at random per index.
    seed: u64,
}

fn record_len(path_len: usize) -> usize {
    (rec::HEAD + path_len).div_ceil(ALIGN) * ALIGN
}

impl FileIndex {
    /// Index `manifest`'s files; `stat` gives each one's mtime when it was hashed.
    pub fn build(manifest: &Manifest, stat: &ScanCache) -> Result<FileIndex, IndexError> {
        Self::build_with(manifest, stat, UNKNOWN)
    }

    /// As [`Self::build`], for a generation another server published: `held` is what this
    /// server's tree was found to hold of it, and every other file is marked not held here.
    pub fn build_held(manifest: &Manifest, held: &ScanCache) -> Result<FileIndex, IndexError> {
        Self::build_with(manifest, held, NOT_HELD)
    }

    fn build_with(
        manifest: &Manifest,
        stat: &ScanCache,
        missing: i64,
    ) -> Result<FileIndex, IndexError> {
        let n = manifest.files.len();
        if n >= u32::MAX as usize {
            return Err(IndexError::TooManyFiles);
        }
        let total: usize = manifest.files.keys().map(|p| record_len(p.len())).sum();
        if total / ALIGN >= UNIT_LIMIT || manifest.files.keys().any(|p| p.len() > u32::MAX as usize)
        {
            return Err(IndexError::PathsTooLong);
        }
        let mut records: Vec<u8> = huge_vec(total);
        let mut order: Vec<u32> = huge_vec(n);
        let mut btih = Vec::new();
        for (path, e) in &manifest.files {
            let start = records.len();
            order.push((start / ALIGN) as u32);
            let b = match e.btih {
                Some(h) => {
                    btih.push(h.0);
                    (btih.len() - 1) as u32
                }
                None => NO_BTIH,
            };
            let mtime_ns = stat
                .get(path)
                .filter(|c| c.size == e.size && c.mtime_ns as i64 > NOT_HELD)
                .map_or(missing, |c| c.mtime_ns as i64);
            records.extend_from_slice(&e.size.to_le_bytes());
            records.extend_from_slice(&e.changed_in.to_le_bytes());
            records.extend_from_slice(&mtime_ns.to_le_bytes());
            records.extend_from_slice(&e.sha256.0);
            records.extend_from_slice(&b.to_le_bytes());
            records.extend_from_slice(&(path.len() as u32).to_le_bytes());
            records.extend_from_slice(path.as_bytes());
            records.resize(start + record_len(path.len()), 0);
        }
        btih.shrink_to_fit();
        let mut index = FileIndex {
            records,
            order,
            btih,
            table: Vec::new(),
            hits: Box::default(),
            seed: random_seed(),
        };
        let cap = (n * 4 / 3 + 1).next_power_of_two().max(8);
        let mut table = huge_vec(cap);
        table.resize(cap, EMPTY);
        for &unit in &index.order {
            let h = path_hash(index.seed, index.path_at(unit).as_bytes());
            let mut at = (h as usize) & (cap - 1);
            while table[at] != EMPTY {
                at = (at + 1) & (cap - 1);
            }
            table[at] = (h & TAG_MASK) | u64::from(unit);
        }
        index.table = table;
        let mut hits = huge_vec(cap);
        hits.extend((0..cap).map(|_| AtomicU32::new(0)));
        index.hits = hits.into_boxed_slice();
        index.advise_collapse();
        Ok(index)
    }

    /// Huge pages for the big arrays, now that they are filled.
    fn advise_collapse(&self) {
        advise_huge(self.records.as_ptr() as usize, self.records.len(), true);
        advise_huge(self.order.as_ptr() as usize, self.order.len() * 4, true);
        advise_huge(self.table.as_ptr() as usize, self.table.len() * 8, true);
        advise_huge(self.hits.as_ptr() as usize, self.hits.len() * 4, true);
    }

    fn field<const N: usize>(&self, unit: u32, at: usize) -> [u8; N] {
        let start = unit as usize * ALIGN + at;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.records[start..start + N]);
        out
    }

    fn u64_at(&self, unit: u32, at: usize) -> u64 {
        u64::from_le_bytes(self.field(unit, at))
    }

    fn u32_at(&self, unit: u32, at: usize) -> u32 {
        u32::from_le_bytes(self.field(unit, at))
    }

    fn mtime_ns_at(&self, unit: u32) -> i64 {
        i64::from_le_bytes(self.field(unit, rec::MTIME_NS))
    }

    /// The path of the record at `unit`. Built from `&str`s, so always UTF-8; the check
    /// costs a pass over the bytes only where a path is returned, never on a lookup.
    fn path_at(&self, unit: u32) -> &str {
        std::str::from_utf8(self.path_bytes_at(unit)).unwrap_or_default()
    }

    fn path_bytes_at(&self, unit: u32) -> &[u8] {
        let len = self.u32_at(unit, rec::PATH_LEN) as usize;
        let start = unit as usize * ALIGN + rec::HEAD;
        &self.records[start..start + len]
    }

    fn entry_at(&self, unit: u32) -> Entry {
        let b = self.u32_at(unit, rec::BTIH);
        Entry {
            size: self.u64_at(unit, rec::SIZE),
            sha256: Sha256(self.field(unit, rec::SHA256)),
            changed_in: self.u64_at(unit, rec::CHANGED_IN),
            btih: (b != NO_BTIH).then(|| Btih(self.btih[b as usize])),
        }
    }

    /// Where `path` is: its place in `table`, and its record in [`ALIGN`] units.
    fn position(&self, path: &str) -> Option<(usize, u32)> {
        self.find(path, false)
    }

    /// [`Self::position`]; with `hint_hits`, the CPU is asked to start loading the path's
    /// counter (at its home place, where it nearly always is) before the table is read, so
    /// that the counter's cache miss overlaps the lookup's instead of coming after the
    /// redirect's work.
    fn find(&self, path: &str, hint_hits: bool) -> Option<(usize, u32)> {
        let cap = self.table.len();
        let h = path_hash(self.seed, path.as_bytes());
        let tag = h & TAG_MASK;
        let mut at = (h as usize) & (cap - 1);
        if hint_hits {
            if let Some(c) = self.hits.get(at) {
                balance::prefetch::lines(c);
            }
        }
        loop {
            let e = self.table[at];
            if e == EMPTY {
                return None;
            }
            if e & TAG_MASK == tag {
                let unit = (e & !TAG_MASK) as u32;
                if self.path_bytes_at(unit) == path.as_bytes() {
                    return Some((at, unit));
                }
            }
            at = (at + 1) & (cap - 1);
        }
    }

    /// The info-hash of every file with a torrent (a file's torrent is named by its content,
    /// so identical files repeat one).
    pub fn torrents(&self) -> &[[u8; 20]] {
        &self.btih
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<Entry> {
        self.position(path).map(|(_, u)| self.entry_at(u))
    }

    /// [`Self::get`], with where the file's customers' requests are counted
    /// ([`Self::count_hit`]).
    pub fn get_with_slot(&self, path: &str) -> Option<(Entry, Slot)> {
        self.find(path, true)
            .map(|(slot, u)| (self.entry_at(u), Slot(slot)))
    }

    /// Count a customer's request for the file at `slot` (one relaxed add).
    pub fn count_hit(&self, slot: Slot) {
        if let Some(h) = self.hits.get(slot.0) {
            h.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every file asked for since the last call, by its place ([`Self::slots`] of them),
    /// with its number of requests; the counts start again from 0. A sequential pass over
    /// 4 bytes a place, nothing looked up.
    pub fn take_hits(&self, mut f: impl FnMut(usize, u32)) {
        for (slot, h) in self.hits.iter().enumerate() {
            if h.load(Ordering::Relaxed) != 0 {
                f(slot, h.swap(0, Ordering::Relaxed));
            }
        }
    }

    /// How many places files' requests are counted in (more than there are files).
    pub fn slots(&self) -> usize {
        self.table.len()
    }

    /// The file counted at `slot`, if one is.
    pub fn path_in(&self, slot: usize) -> Option<&str> {
        let &e = self.table.get(slot)?;
        (e != EMPTY).then(|| self.path_at((e & !TAG_MASK) as u32))
    }

    /// Where `path`'s requests are counted.
    pub fn slot_of(&self, path: &str) -> Option<usize> {
        self.position(path).map(|(slot, _)| slot)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.position(path).is_some()
    }

    /// The generation in which `path`'s bytes last changed.
    pub fn changed_in(&self, path: &str) -> Option<u64> {
        let (_, u) = self.position(path)?;
        Some(self.u64_at(u, rec::CHANGED_IN))
    }

    /// Size and mtime (ns) of the file when it was hashed, as `scan::stat_key` gives them.
    pub fn stat(&self, path: &str) -> Option<(u64, i128)> {
        let (_, u) = self.position(path)?;
        let mtime = self.mtime_ns_at(u);
        (mtime > NOT_HELD).then(|| (self.u64_at(u, rec::SIZE), i128::from(mtime)))
    }

    /// Whether this server's tree holds the published bytes of `path` as far as it knows
    /// (false only for a file a replica found otherwise when it loaded the generation).
    pub fn held_here(&self, path: &str) -> bool {
        self.position(path)
            .is_none_or(|(_, u)| self.mtime_ns_at(u) != NOT_HELD)
    }

    /// How many files this server's tree does not hold (see [`Self::held_here`]).
    pub fn not_held(&self) -> usize {
        self.order
            .iter()
            .filter(|&&u| self.mtime_ns_at(u) == NOT_HELD)
            .count()
    }

    /// The `i`-th file in path order.
    pub fn nth(&self, i: usize) -> Option<(&str, Entry)> {
        let &u = self.order.get(i)?;
        Some((self.path_at(u), self.entry_at(u)))
    }

    /// Every file in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Entry)> + '_ {
        self.order
            .iter()
            .map(|&u| (self.path_at(u), self.entry_at(u)))
    }

    /// Files from the first path `>= from`, in path order (directory listings).
    pub fn range_from<'a>(&'a self, from: &str) -> impl Iterator<Item = (&'a str, Entry)> + 'a {
        let first = self
            .order
            .partition_point(|&u| self.path_bytes_at(u) < from.as_bytes());
        self.order[first..]
            .iter()
            .map(|&u| (self.path_at(u), self.entry_at(u)))
    }

    pub fn total_bytes(&self) -> u64 {
        self.order.iter().map(|&u| self.u64_at(u, rec::SIZE)).sum()
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
        self.records.capacity()
            + self.order.capacity() * 4
            + self.btih.capacity() * 20
            + self.table.capacity() * 8
    }
}

/// A running server's index knows what the scan cache on disk says (it was built from it),
/// without reading and parsing a JSON file of a million entries.
impl Known for FileIndex {
    fn known(&self, rel: &str) -> Option<CachedFile> {
        let (_, u) = self.position(rel)?;
        let mtime = self.mtime_ns_at(u);
        (mtime > NOT_HELD).then(|| CachedFile {
            size: self.u64_at(u, rec::SIZE),
            mtime_ns: i128::from(mtime),
            sha256: Sha256(self.field(u, rec::SHA256)),
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
            let (_, want) = idx.position(p).unwrap();
            let h = path_hash(idx.seed, p.as_bytes());
            let mut at = (h as usize) & (cap - 1);
            let mut probes = 1;
            while (idx.table[at] & !TAG_MASK) as u32 != want {
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
