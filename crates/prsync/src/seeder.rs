//! Seeding what a node holds (the origin its repository, a volunteer its verified mirror).
//!
//! librqbit expects a torrent's file at `<folder>/<name>`; torrents are named by SHA-256, so
//! the seed folder holds one symbolic link per seeded file, pointing at the real file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::Mutex;

use crate::bt::Bt;

/// A file to seed: its content hash, the torrent's info-hash, where it is.
#[derive(Debug, Clone)]
pub struct SeedFile {
    pub sha256_hex: String,
    pub btih: [u8; 20],
    pub path: PathBuf,
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
        let link = self.folder.join(&file.sha256_hex);
        let target = file.path.canonicalize()?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)?;
        self.bt
            .add_seed(torrent, &self.folder, &self.tracker_url)
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
            let _ = std::fs::remove_file(self.folder.join(&sha));
            seeding.remove(&sha);
        }
    }

    pub async fn count(&self) -> usize {
        self.seeding.lock().await.len()
    }
}
