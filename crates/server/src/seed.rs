//! The origin as the first BitTorrent seed of every large file it publishes.
//!
//! librqbit expects a torrent's file at `<folder>/<name>`; torrents are named by SHA-256, so
//! the seed folder holds one symbolic link per published large file, pointing into the
//! repository. A torrent is added only while its file still has the published size and mtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use prsync::bt::{Bt, BtConfig};
use tokio::sync::Mutex;

use crate::publish::{artifact_path, RepoSnapshot};

/// The origin's peer id prefix: its tracker recognises it by this and hides it from
/// downloaders while other seeders exist, so volunteers fetch from each other first.
pub const ORIGIN_PEER_PREFIX: &[u8; 8] = b"-MSORIG-";

pub struct OriginSeed {
    bt: Bt,
    data_dir: PathBuf,
    tracker_url: String,
    /// sha256 hex → info-hash, per repository.
    seeding: Mutex<HashMap<String, HashMap<String, [u8; 20]>>>,
}

impl OriginSeed {
    pub async fn start(data_dir: &Path, listen: SocketAddr, upload_bps: Option<u32>, tracker_url: String) -> Result<OriginSeed> {
        let mut peer_id = [0u8; 20];
        peer_id[..8].copy_from_slice(ORIGIN_PEER_PREFIX);
        rand::Rng::fill(&mut rand::thread_rng(), &mut peer_id[8..]);
        let bt = Bt::start(BtConfig { listen, upload_bps, peer_id: Some(peer_id), dir: data_dir.join("seed") }).await?;
        tracing::info!(port = bt.port(), "origin seed listening");
        Ok(OriginSeed { bt, data_dir: data_dir.to_path_buf(), tracker_url, seeding: Mutex::new(HashMap::new()) })
    }

    pub fn port(&self) -> u16 {
        self.bt.port()
    }

    pub fn uploaded_bytes(&self) -> u64 {
        self.bt.uploaded_bytes()
    }

    /// Seed exactly the large files of `snap` (one repository).
    pub async fn sync(&self, snap: &RepoSnapshot) -> Result<()> {
        let folder = self.data_dir.join("seed");
        std::fs::create_dir_all(&folder)?;
        let mut all = self.seeding.lock().await;
        let current = all.entry(snap.name.clone()).or_default();
        let mut wanted: HashMap<String, [u8; 20]> = HashMap::new();
        for (path, e) in &snap.manifest.files {
            let Some(btih) = e.btih else { continue };
            let sha = e.sha256.to_hex();
            if current.contains_key(&sha) || wanted.contains_key(&sha) {
                wanted.insert(sha, btih.0);
                continue;
            }
            let file = snap.root.join(path);
            let unchanged = match (std::fs::metadata(&file), snap.stat.get(path)) {
                (Ok(m), Some(c)) => manifest::scan::stat_key(&m) == (c.size, c.mtime_ns),
                _ => false,
            };
            if !unchanged {
                tracing::warn!(path, "changed on disk since publishing; not seeding it");
                continue;
            }
            let link = folder.join(&sha);
            let target = file.canonicalize().with_context(|| format!("resolving {}", file.display()))?;
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
            let torrent = std::fs::read(artifact_path(&self.data_dir, &sha, "torrent"))?;
            match self.bt.add(Bytes::from(torrent), &folder, &self.tracker_url).await {
                Ok(_) => {
                    wanted.insert(sha, btih.0);
                }
                Err(e) => tracing::warn!(path, error = %format!("{e:#}"), "cannot seed"),
            }
        }
        let still_used: std::collections::HashSet<String> =
            all.iter().filter(|(r, _)| **r != snap.name).flat_map(|(_, m)| m.keys().cloned()).collect();
        let current = all.entry(snap.name.clone()).or_default();
        for (sha, btih) in current.iter() {
            if !wanted.contains_key(sha) && !still_used.contains(sha) {
                self.bt.remove(*btih).await;
                let _ = std::fs::remove_file(folder.join(sha));
            }
        }
        *current = wanted;
        tracing::info!(repo = %snap.name, torrents = current.len(), "origin seeding");
        Ok(())
    }
}
