//! A scan record: what a scan learned of each file of a tree (size, mtime, SHA-256), kept
//! from one pull to the next so that an unchanged file is never read again.
//!
//! A tree of millions of files makes this the largest thing a pull holds, so it is compact:
//! the paths one after the other in one string, the facts in one sorted vector (~64 bytes a
//! file beside its path, against ~150 in a map of strings), looked up by binary search. On
//! disk it is binary, read and written streaming: a short header, then each file's path
//! length, path, size, mtime and digest. A record that is cut short, out of order or not
//! one at all is an error; whoever reads it then scans the tree afresh.

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::scan::{CachedFile, Known, ScanCache};
use crate::Sha256;

const MAGIC: &[u8; 8] = b"MSREC\x001\n";

/// One file's facts; its path is `paths[start..start + len]`.
#[derive(Clone, Copy)]
struct Fact {
    start: u32,
    len: u32,
    size: u64,
    /// Nanoseconds since the epoch, little-endian: an `i128` would align the fact to 16 bytes.
    mtime_ns: [u8; 16],
    sha256: [u8; 32],
}

impl Fact {
    fn cached(&self) -> CachedFile {
        CachedFile {
            size: self.size,
            mtime_ns: i128::from_le_bytes(self.mtime_ns),
            sha256: Sha256(self.sha256),
        }
    }
}

/// Every file of a tree as a scan found it, sorted by path.
#[derive(Default)]
pub struct Record {
    paths: String,
    facts: Vec<Fact>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({} files)", self.facts.len())
    }
}

/// Building a record from files that are not in strictly increasing order of path, or whose
/// paths together pass 4 GiB.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(String);

impl Record {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    fn path(&self, f: &Fact) -> &str {
        &self.paths[f.start as usize..(f.start + f.len) as usize]
    }

    /// Append a file whose path sorts after every path held.
    fn push(&mut self, path: &str, c: CachedFile) -> Result<(), RecordError> {
        if let Some(last) = self.facts.last() {
            if self.path(last) >= path {
                return Err(RecordError(format!(
                    "`{path}` does not sort after `{}`",
                    self.path(last)
                )));
            }
        }
        let start = u32::try_from(self.paths.len())
            .ok()
            .filter(|s| s.checked_add(path.len() as u32).is_some())
            .ok_or_else(|| RecordError("the paths pass 4 GiB".into()))?;
        self.paths.push_str(path);
        self.facts.push(Fact {
            start,
            len: path.len() as u32,
            size: c.size,
            mtime_ns: c.mtime_ns.to_le_bytes(),
            sha256: c.sha256.0,
        });
        Ok(())
    }

    /// A record of files given in strictly increasing order of path.
    pub fn from_sorted<'a>(
        files: impl IntoIterator<Item = (&'a str, CachedFile)>,
    ) -> Result<Self, RecordError> {
        let mut r = Record::new();
        for (p, c) in files {
            r.push(p, c)?;
        }
        r.paths.shrink_to_fit();
        r.facts.shrink_to_fit();
        Ok(r)
    }

    /// The record of a scan's map (already in order).
    pub fn from_map(map: &ScanCache) -> Self {
        Self::from_sorted(map.iter().map(|(p, c)| (p.as_str(), *c)))
            .expect("a map's keys are in strictly increasing order")
    }

    pub fn get(&self, rel: &str) -> Option<CachedFile> {
        self.facts
            .binary_search_by(|f| self.path(f).cmp(rel))
            .ok()
            .map(|i| self.facts[i].cached())
    }

    pub fn contains(&self, rel: &str) -> bool {
        self.get(rel).is_some()
    }

    /// Every file, in order of path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, CachedFile)> + '_ {
        self.facts.iter().map(|f| (self.path(f), f.cached()))
    }

    /// Every file of this record with `changes` made (a path mapped to `Some` is set, to
    /// `None` removed), in order of path: one merge of two sorted sequences, no search per
    /// change, no map of the whole tree.
    fn merged<'a>(
        &'a self,
        changes: &'a BTreeMap<String, Option<CachedFile>>,
    ) -> impl Iterator<Item = (&'a str, CachedFile)> + 'a {
        let mut mine = self.iter().peekable();
        let mut theirs = changes.iter().peekable();
        std::iter::from_fn(move || loop {
            let take_mine = match (mine.peek(), theirs.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((p, _)), Some((q, _))) => *p < q.as_str(),
            };
            if take_mine {
                return mine.next();
            }
            let (q, c) = theirs.next()?;
            if mine.peek().is_some_and(|(p, _)| *p == q.as_str()) {
                mine.next();
            }
            if let Some(c) = c {
                return Some((q.as_str(), *c));
            }
        })
    }

    /// Write the record to `path` atomically (a temporary file renamed over it). Not synced:
    /// a record lost to a crash costs one scan that reads every file, nothing else.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        write_files(path, self.iter())
    }

    /// Write this record with `changes` made to `path`, streaming: a tree of millions of
    /// files must not be held twice to record what one pull changed.
    pub fn write_with_changes(
        &self,
        changes: &BTreeMap<String, Option<CachedFile>>,
        path: &Path,
    ) -> io::Result<()> {
        write_files(path, self.merged(changes))
    }

    /// Read a record [`Record::write_to`] wrote.
    pub fn read_from(path: &Path) -> io::Result<Self> {
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad(format!("{} is not a scan record", path.display())));
        }
        let count = u64::from_le_bytes(read_array(&mut r)?);
        // The count is the file's own word: reserve no more than a file of that size holds.
        let on_disk = std::fs::metadata(path)?.len();
        let mut out = Record::new();
        out.facts.reserve(count.min(on_disk / 60) as usize);
        let mut path_buf = Vec::new();
        for _ in 0..count {
            let len = u32::from_le_bytes(read_array(&mut r)?);
            if len as u64 > on_disk {
                return Err(bad(format!(
                    "{}: a path longer than the file",
                    path.display()
                )));
            }
            path_buf.resize(len as usize, 0);
            r.read_exact(&mut path_buf)?;
            let p = std::str::from_utf8(&path_buf)
                .map_err(|_| bad(format!("{}: a path that is not UTF-8", path.display())))?;
            let c = CachedFile {
                size: u64::from_le_bytes(read_array(&mut r)?),
                mtime_ns: i128::from_le_bytes(read_array(&mut r)?),
                sha256: Sha256(read_array(&mut r)?),
            };
            out.push(p, c)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        }
        if r.read(&mut [0u8; 1])? != 0 {
            return Err(bad(format!(
                "{}: bytes after the last file",
                path.display()
            )));
        }
        Ok(out)
    }
}

/// Write files given in order of path as a record, atomically. The count in the header is
/// written last, once known.
fn write_files<'a>(
    path: &Path,
    files: impl Iterator<Item = (&'a str, CachedFile)>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    w.write_all(MAGIC)?;
    w.write_all(&0u64.to_le_bytes())?;
    let mut count = 0u64;
    for (p, c) in files {
        let len = u32::try_from(p.len()).map_err(|_| io::Error::other("a path past 4 GiB"))?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(p.as_bytes())?;
        w.write_all(&c.size.to_le_bytes())?;
        w.write_all(&c.mtime_ns.to_le_bytes())?;
        w.write_all(&c.sha256.0)?;
        count += 1;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.write_all_at(&count.to_le_bytes(), MAGIC.len() as u64)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut a = [0u8; N];
    r.read_exact(&mut a)?;
    Ok(a)
}

impl Known for Record {
    fn known(&self, rel: &str) -> Option<CachedFile> {
        self.get(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8) -> CachedFile {
        CachedFile {
            size: n as u64,
            mtime_ns: -(n as i128) * 1_000_000_007,
            sha256: Sha256([n; 32]),
        }
    }

    fn sample() -> ScanCache {
        [("a/b", 1), ("a/c", 2), ("b", 3), ("ü/z", 4)]
            .into_iter()
            .map(|(p, n)| (p.to_string(), file(n)))
            .collect()
    }

    #[test]
    fn holds_and_finds_what_the_map_held() {
        let map = sample();
        let r = Record::from_map(&map);
        assert_eq!(r.len(), 4);
        for (p, c) in &map {
            assert_eq!(r.get(p), Some(*c));
        }
        assert_eq!(r.get("a"), None);
        assert_eq!(r.get("zz"), None);
        let back: ScanCache = r.iter().map(|(p, c)| (p.to_string(), c)).collect();
        assert_eq!(back, map);
    }

    #[test]
    fn out_of_order_is_refused() {
        assert!(Record::from_sorted([("b", file(1)), ("a", file(2))]).is_err());
        assert!(Record::from_sorted([("a", file(1)), ("a", file(2))]).is_err());
    }

    #[test]
    fn changes_merge_in_order() {
        let r = Record::from_map(&sample());
        let changes: BTreeMap<String, Option<CachedFile>> = [
            ("a/b".to_string(), None),
            ("a/bb".to_string(), Some(file(9))),
            ("b".to_string(), Some(file(8))),
            ("zzz".to_string(), Some(file(7))),
            ("not-there".to_string(), None),
        ]
        .into();
        let m: Vec<(&str, CachedFile)> = r.merged(&changes).collect();
        let got: Vec<(&str, u64)> = m.iter().map(|(p, c)| (*p, c.size)).collect();
        assert_eq!(
            got,
            vec![("a/bb", 9), ("a/c", 2), ("b", 8), ("zzz", 7), ("ü/z", 4)]
        );
        // The same written straight to disk.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.rec");
        r.write_with_changes(&changes, &path).unwrap();
        let back = Record::read_from(&path).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), m);
    }

    #[test]
    fn round_trips_on_disk_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.rec");
        let r = Record::from_map(&sample());
        r.write_to(&path).unwrap();
        let back = Record::read_from(&path).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            r.iter().collect::<Vec<_>>()
        );
        let bytes = std::fs::read(&path).unwrap();
        // Cut short, one byte too many, another format.
        for damaged in [
            bytes[..bytes.len() - 1].to_vec(),
            [bytes.clone(), vec![0]].concat(),
            b"{\"a\": 1}".to_vec(),
            Vec::new(),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            assert!(Record::read_from(&path).is_err());
        }
        let empty = Record::new();
        empty.write_to(&path).unwrap();
        assert_eq!(Record::read_from(&path).unwrap().len(), 0);
    }
}
