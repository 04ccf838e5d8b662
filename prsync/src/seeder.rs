//! Seeding what a node holds (the origin its repository, a volunteer its verified mirror).
//!
//! Each seeded file is opened once, beneath its tree's root held open
//! (`manifest::beneath`), checked against what was published or verified (size and mtime),
//! and that handle is what librqbit reads ([`crate::readonly`]): never a path, which a swapped
//! link could lead out of the tree (a symbolic link per file in the seed folder used to be
//! opened by librqbit whenever it started the torrent).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use manifest::beneath::Root;

use bytes::Bytes;
use tokio::sync::Mutex;

use crate::bt::Bt;

/// A file to seed: its content hash, the torrent's info-hash, where it is (`rel` beneath
/// `root`), and the size and mtime it had when its hash was computed.
#[derive(Debug, Clone)]
pub struct SeedFile {
    pub sha256_hex: String,
    pub btih: [u8; 20],
    pub root: Arc<Root>,
    pub rel: String,
    pub size: u64,
    pub mtime_ns: i128,
}

impl SeedFile {
    /// Open it for seeding: a regular file beneath its root, unchanged since it was hashed.
    pub fn open(&self) -> anyhow::Result<std::fs::File> {
        let (f, meta) = self
            .root
            .open_sized(&self.rel, self.size)
            .with_context(|| format!("opening {} to seed", self.rel))?;
        if manifest::scan::stat_key(&meta) != (self.size, self.mtime_ns) {
            anyhow::bail!("{} changed on disk since it was hashed", self.rel);
        }
        Ok(f)
    }
}

pub struct Seeder {
    pub bt: Bt,
    folder: PathBuf,
    tracker_url: String,
    seeding: Mutex<HashMap<String, [u8; 20]>>,
}

impl Seeder {
    pub fn new(bt: Bt, folder: &Path, tracker_url: String) -> std::io::Result<Seeder> {
        std::fs::create_dir_all(folder)?;
        // Links an older version left there, one per seeded file: nothing follows them now.
        for e in std::fs::read_dir(folder)?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_symlink()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Seeder {
            bt,
            folder: folder.to_path_buf(),
            tracker_url,
            seeding: Mutex::new(HashMap::new()),
        })
    }

    /// Of `files`, those not seeded yet (the caller fetches their torrents).
    pub async fn missing(&self, files: &[SeedFile]) -> Vec<SeedFile> {
        let seeding = self.seeding.lock().await;
        let mut seen = HashSet::new();
        files
            .iter()
            .filter(|f| !seeding.contains_key(&f.sha256_hex) && seen.insert(f.sha256_hex.clone()))
            .cloned()
            .collect()
    }

    /// Start seeding `file` with `torrent`. librqbit checks every piece first.
    pub async fn add(&self, file: &SeedFile, torrent: Bytes) -> anyhow::Result<()> {
        let opened = file.open()?;
        self.bt
            .add_seed(torrent, opened, &self.folder, &self.tracker_url)
            .await?;
        self.seeding
            .lock()
            .await
            .insert(file.sha256_hex.clone(), file.btih);
        Ok(())
    }

    /// Stop seeding everything not in `keep`.
    pub async fn retain(&self, keep: &[SeedFile]) {
        let keep: HashSet<&str> = keep.iter().map(|f| f.sha256_hex.as_str()).collect();
        let mut seeding = self.seeding.lock().await;
        let drop: Vec<(String, [u8; 20])> = seeding
            .iter()
            .filter(|(s, _)| !keep.contains(s.as_str()))
            .map(|(s, b)| (s.clone(), *b))
            .collect();
        for (sha, btih) in drop {
            self.bt.remove(btih).await;
            seeding.remove(&sha);
        }
    }

    pub async fn count(&self) -> usize {
        self.seeding.lock().await.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_opens_only_the_file_as_hashed_beneath_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("big")).unwrap();
        std::fs::write(tree.join("big/a.bin"), b"published").unwrap();
        let meta = std::fs::metadata(tree.join("big/a.bin")).unwrap();
        let (size, mtime_ns) = manifest::scan::stat_key(&meta);
        let file = SeedFile {
            sha256_hex: "00".repeat(32),
            btih: [0; 20],
            root: Arc::new(Root::open(&tree).unwrap()),
            rel: "big/a.bin".into(),
            size,
            mtime_ns,
        };
        assert!(file.open().is_ok());
        // Swapped for a link out of the tree to a look-alike (same size and mtime).
        let outside = dir.path().join("outside.bin");
        std::fs::write(&outside, b"NOTTHESE!").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&outside)
            .unwrap()
            .set_modified(meta.modified().unwrap())
            .unwrap();
        std::fs::remove_file(tree.join("big/a.bin")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("big/a.bin")).unwrap();
        assert!(file.open().is_err());
        // Back in place but rewritten since it was hashed (same size, other mtime).
        std::fs::remove_file(tree.join("big/a.bin")).unwrap();
        std::fs::write(tree.join("big/a.bin"), b"PUBLISHED").unwrap();
        let later = meta.modified().unwrap() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(tree.join("big/a.bin"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(file.open().is_err());
    }
}
