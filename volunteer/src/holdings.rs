//! What a volunteer holds of one repository, proven against signed manifests.
//!
//! The admin fills the directory (rsync, today; PRsync later). The volunteer hashes it
//! (incrementally: unchanged size and mtime are not re-read), then finds the newest generation
//! whose every file it holds byte for byte. It announces that generation, and serves a file
//! only if the file verified against a signed manifest and has not changed on disk since.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use manifest::beneath::Root;
use manifest::scan::{scan_tree, CachedFile, ScanCache};
use manifest::select::Selection;
use manifest::Manifest;

/// How many generations back a volunteer looks for one it fully holds.
pub const MAX_LOOKBACK: u64 = 8;

/// One verified file: where it is and what it was when it verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub size: u64,
    pub mtime_ns: i128,
    pub sha256: manifest::Sha256,
}

/// A consistent view, replaced whole after every rescan.
#[derive(Debug, Default)]
pub struct HoldingsView {
    /// Newest generation fully held (0: none).
    pub held: u64,
    /// Newest generation the server has published, as far as we know.
    pub latest: u64,
    /// Files that may be served (of the part held, if one is).
    pub servable: HashMap<String, Verified>,
    /// Files in the latest manifest (and the part held) that are missing or differ locally.
    pub missing: Vec<String>,
    /// Verified large files of the latest generation, with their torrents: what we seed.
    pub seedable: Vec<(String, manifest::Sha256, manifest::Btih)>,
    /// Size of the latest generation, of the part held if one is, bytes (0: unknown).
    pub latest_bytes: u64,
    /// The mirror's directory, held open when it was last scanned: verified files are
    /// opened beneath it (`manifest::beneath`), never by a joined path. `None` until the
    /// directory exists.
    pub root: Option<Arc<Root>>,
    /// The manifests of the latest and the held generation: what the server may send a
    /// customer here for.
    pub published: Vec<Arc<Manifest>>,
}

impl HoldingsView {
    /// Whether `rel` is a file of the latest or the held generation.
    pub fn publishes(&self, rel: &str) -> bool {
        self.published.iter().any(|m| m.files.contains_key(rel))
    }
}

pub struct Holdings {
    pub repo: String,
    pub dir: PathBuf,
    cache_path: PathBuf,
    scan: ScanCache,
    /// Verified manifests by generation (immutable once verified).
    manifests: BTreeMap<u64, Arc<Manifest>>,
    /// `dir` held open at the last scan.
    root: Option<Arc<Root>>,
    /// When the tree's own scan record (written by a PRsync pull) was last taken in.
    pull_record_seen: Option<std::time::SystemTime>,
    /// The part of the repository held: the files of each generation that count.
    part: Selection,
}

/// Whether every file of `m` in `part` is in `scan` as published.
fn holds_all(m: &Manifest, part: &Selection, scan: &ScanCache) -> bool {
    m.files.iter().filter(|(p, _)| part.holds(p)).all(|(p, e)| {
        scan.get(p)
            .is_some_and(|c| c.size == e.size && c.sha256 == e.sha256)
    })
}

impl Holdings {
    /// What `dir` holds of `repo`'s `part` (everything: [`Selection::default`]).
    pub fn new(repo: &str, dir: &Path, data_dir: &Path, part: Selection) -> Self {
        let cache_path = data_dir.join(format!("verified-{repo}.json"));
        let scan = std::fs::read(&cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ScanCache>(&b).ok())
            .unwrap_or_default();
        Holdings {
            repo: repo.to_string(),
            dir: dir.to_path_buf(),
            cache_path,
            scan,
            manifests: BTreeMap::new(),
            root: None,
            pull_record_seen: None,
            part,
        }
    }

    /// Take in what a PRsync pull recorded of the files it installed (the tree's
    /// `.mirrorswarm/scan.rec`: each file's size, mtime and the SHA-256 it verified before
    /// installing), so the scan after a pull does not hash every new file again. Only when
    /// the record changed since it was last read; the scan still checks each file's size and
    /// mtime against it, so a file changed since is hashed.
    fn take_pull_record(&mut self) {
        let state = prsync::local::StateDir::new(&self.dir);
        let Ok(modified) = std::fs::metadata(state.scan_record()).and_then(|m| m.modified()) else {
            return;
        };
        if self.pull_record_seen == Some(modified) {
            return;
        }
        self.pull_record_seen = Some(modified);
        let Some(record) = state.read_scan_record() else {
            return;
        };
        for (p, c) in record.iter() {
            self.scan.insert(p.to_string(), c);
        }
    }

    /// The newest verified manifest.
    pub fn latest_manifest(&self) -> Option<Arc<Manifest>> {
        self.manifests.values().next_back().cloned()
    }

    /// Hold `part` from now on (a budget's files chosen again).
    pub fn set_part(&mut self, part: Selection) {
        self.part = part;
    }

    pub fn latest_generation(&self) -> u64 {
        self.manifests.keys().next_back().copied().unwrap_or(0)
    }

    pub fn has_manifest(&self, generation: u64) -> bool {
        self.manifests.contains_key(&generation)
    }

    pub fn add_manifest(&mut self, m: Manifest) {
        self.manifests.insert(m.generation, Arc::new(m));
        // Keep only what lookback can use.
        while self.manifests.len() as u64 > MAX_LOOKBACK + 1 {
            self.manifests.pop_first();
        }
    }

    /// Generations that would be worth fetching to find one we fully hold.
    pub fn wanted_older(&self) -> Vec<u64> {
        let latest = self.latest_generation();
        (latest.saturating_sub(MAX_LOOKBACK).max(1)..latest)
            .rev()
            .filter(|g| !self.manifests.contains_key(g))
            .collect()
    }

    /// Re-read the directory (hashing only what changed) and persist the cache.
    pub async fn rescan(&mut self) -> Result<()> {
        let dir = self.dir.clone();
        // Held open before the scan: what verifies is what is then opened. A directory
        // replaced since the last scan is taken up now.
        if !self.root.as_ref().is_some_and(|r| r.is_at(&dir)) {
            self.root = Root::open(&dir).ok().map(Arc::new);
        }
        self.take_pull_record();
        let cache = std::mem::take(&mut self.scan);
        let out = tokio::task::spawn_blocking(move || scan_tree(&dir, &cache))
            .await
            .context("scan task failed")?
            .with_context(|| format!("scanning {}", self.dir.display()))?;
        if out.hashed > 0 {
            tracing::info!(repo = %self.repo, files = out.hashed, bytes = out.hashed_bytes, "hashed changed files");
        }
        self.scan = out.files;
        if let Ok(bytes) = serde_json::to_vec(&self.scan) {
            let tmp = self.cache_path.with_extension("tmp");
            if std::fs::write(&tmp, bytes)
                .and_then(|_| std::fs::rename(&tmp, &self.cache_path))
                .is_err()
            {
                tracing::warn!(path = %self.cache_path.display(), "cannot save verification cache");
            }
        }
        Ok(())
    }

    /// The newest generation, among verified manifests, whose every file (of the part) we
    /// hold.
    pub fn held_generation(&self) -> u64 {
        self.manifests
            .iter()
            .rev()
            .find(|(_, m)| holds_all(m, &self.part, &self.scan))
            .map_or(0, |(g, _)| *g)
    }

    /// Build the view the request path and announcer use.
    pub fn view(&self) -> HoldingsView {
        let held = self.held_generation();
        let latest = self.latest_generation();
        let relevant: Vec<&Arc<Manifest>> =
            [self.manifests.get(&latest), self.manifests.get(&held)]
                .into_iter()
                .flatten()
                .collect();
        let mut servable = HashMap::new();
        for m in &relevant {
            for (path, e) in m.files.iter().filter(|(p, _)| self.part.holds(p)) {
                if let Some(c) = self
                    .scan
                    .get(path)
                    .filter(|c| c.size == e.size && c.sha256 == e.sha256)
                {
                    servable.insert(path.clone(), verified(c));
                }
            }
        }
        let missing = self
            .manifests
            .get(&latest)
            .map(|m| {
                m.files
                    .iter()
                    .filter(|(p, _)| self.part.holds(p))
                    .filter(|(p, e)| {
                        !self
                            .scan
                            .get(*p)
                            .is_some_and(|c| c.sha256 == e.sha256 && c.size == e.size)
                    })
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default();
        let seedable = self
            .manifests
            .get(&latest)
            .map(|m| {
                m.files
                    .iter()
                    .filter_map(|(p, e)| {
                        let btih = e.btih?;
                        servable.get(p).filter(|v| v.sha256 == e.sha256)?;
                        Some((p.clone(), e.sha256, btih))
                    })
                    .collect()
            })
            .unwrap_or_default();
        HoldingsView {
            held,
            latest,
            servable,
            missing,
            seedable,
            latest_bytes: self.manifests.get(&latest).map_or(0, |m| {
                m.files
                    .iter()
                    .filter(|(p, _)| self.part.holds(p))
                    .map(|(_, e)| e.size)
                    .sum()
            }),
            published: relevant.into_iter().cloned().collect(),
            root: self.root.clone(),
        }
    }
}

fn verified(c: &CachedFile) -> Verified {
    Verified {
        size: c.size,
        mtime_ns: c.mtime_ns,
        sha256: c.sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifest::scan::hash_file;

    fn manifest_of(dir: &Path, generation: u64, paths: &[&str]) -> Manifest {
        let files = paths
            .iter()
            .map(|p| {
                let full = dir.join(p);
                let size = std::fs::metadata(&full).unwrap().len();
                (p.to_string(), (size, hash_file(&full).unwrap()))
            })
            .collect();
        Manifest::next("r", None, files, generation, 0)
    }

    #[tokio::test]
    async fn held_generation_tracks_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"a1").unwrap();
        std::fs::write(dir.join("b"), b"b1").unwrap();
        let g1 = manifest_of(&dir, 1, &["a", "b"]);
        std::fs::write(dir.join("b"), b"b2").unwrap();
        let g2 = manifest_of(&dir, 2, &["a", "b"]);
        std::fs::write(dir.join("b"), b"b1").unwrap(); // the admin has not caught up

        let mut h = Holdings::new("r", &dir, tmp.path(), Selection::default());
        h.add_manifest(g2);
        h.rescan().await.unwrap();
        assert_eq!(h.view().held, 0);
        assert_eq!(h.wanted_older(), vec![1]);
        h.add_manifest(g1);
        let v = h.view();
        assert_eq!((v.held, v.latest), (1, 2));
        assert_eq!(v.missing, vec!["b".to_string()]);
        assert!(v.servable.contains_key("a") && v.servable.contains_key("b"));

        std::fs::write(dir.join("b"), b"b2").unwrap(); // caught up
        h.rescan().await.unwrap();
        assert_eq!(h.view().held, 2);

        std::fs::write(dir.join("a"), b"tampered").unwrap();
        h.rescan().await.unwrap();
        let v = h.view();
        assert_eq!(v.held, 0);
        assert!(!v.servable.contains_key("a"));
        assert!(v.servable.contains_key("b"));
    }

    #[tokio::test]
    async fn a_part_is_held_whole_without_the_files_outside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir_all(dir.join("main")).unwrap();
        std::fs::create_dir_all(dir.join("contrib")).unwrap();
        std::fs::write(dir.join("main/a"), b"a1").unwrap();
        std::fs::write(dir.join("contrib/b"), b"b1").unwrap();
        let g1 = manifest_of(&dir, 1, &["main/a", "contrib/b"]);
        std::fs::remove_file(dir.join("contrib/b")).unwrap();
        let part = Selection::new(&["main/**".to_string()], &[]).unwrap();
        let mut h = Holdings::new("r", &dir, tmp.path(), part);
        h.add_manifest(g1);
        h.rescan().await.unwrap();
        let v = h.view();
        assert_eq!(v.held, 1, "contrib/b is not in the part");
        assert!(v.missing.is_empty());
        assert_eq!(v.latest_bytes, 2, "the part's bytes");
        assert!(v.servable.contains_key("main/a") && !v.servable.contains_key("contrib/b"));
        std::fs::write(dir.join("main/a"), b"a2").unwrap();
        h.rescan().await.unwrap();
        assert_eq!(h.view().held, 0, "a file of the part changed");
    }
}
