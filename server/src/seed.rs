//! The origin as the first BitTorrent seed of every large file it publishes. A file is seeded
//! only while it still has the published size and mtime, read from a handle opened beneath
//! the snapshot's root (`prsync::seeder`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use bytes::Bytes;
use prsync::bt::{Bt, BtConfig};
use prsync::seeder::{SeedFile, Seeder};
use tokio::sync::Mutex;

use crate::publish::{artifact_path, RepoSnapshot};

/// The origin's peer id prefix. Its tracker recognises the seed by its whole peer id (and
/// its address: see `tracker_http`), not by this prefix, which anyone may send.
pub const ORIGIN_PEER_PREFIX: &[u8; 8] = b"-MSORIG-";

pub struct OriginSeed {
    seeder: Seeder,
    peer_id: [u8; 20],
    data_dir: PathBuf,
    /// What each repository wants seeded (a file shared by two repositories stays seeded).
    wanted: Mutex<BTreeMap<String, Vec<SeedFile>>>,
}

impl OriginSeed {
    pub async fn start(
        data_dir: &Path,
        listen: SocketAddr,
        upload_bps: Option<u32>,
        tracker_url: String,
    ) -> Result<OriginSeed> {
        let mut peer_id = [0u8; 20];
        peer_id[..8].copy_from_slice(ORIGIN_PEER_PREFIX);
        rand::Rng::fill(&mut rand::thread_rng(), &mut peer_id[8..]);
        let bt = Bt::start(BtConfig {
            listen,
            upload_bps,
            peer_id: Some(peer_id),
            dir: data_dir.join("bt"),
        })
        .await?;
        tracing::info!(port = bt.port(), "origin seed listening");
        let seeder = Seeder::new(bt, &data_dir.join("seed"), tracker_url)?;
        Ok(OriginSeed {
            seeder,
            peer_id,
            data_dir: data_dir.to_path_buf(),
            wanted: Mutex::new(BTreeMap::new()),
        })
    }

    /// The seed's peer id, random per start.
    pub fn peer_id(&self) -> [u8; 20] {
        self.peer_id
    }

    pub fn port(&self) -> u16 {
        self.seeder.bt.port()
    }

    pub fn uploaded_bytes(&self) -> u64 {
        self.seeder.bt.uploaded_bytes()
    }

    /// Seed exactly the large files of `snap`'s generation (for its repository).
    pub async fn sync(&self, snap: &RepoSnapshot) -> Result<()> {
        let mut files = Vec::new();
        for (path, e) in snap.files.iter() {
            let Some(btih) = e.btih else { continue };
            let Some((size, mtime_ns)) = snap.files.stat(path) else {
                continue;
            };
            let file = SeedFile {
                sha256_hex: e.sha256.to_hex(),
                btih: btih.0,
                root: snap.beneath.clone(),
                rel: path.to_string(),
                size,
                mtime_ns,
            };
            // Only what is still as published: opened beneath the root, as the seed will be.
            match file.open() {
                Ok(_) => files.push(file),
                Err(e) => {
                    tracing::warn!(path, error = %format!("{e:#}"), "not as published on disk; not seeding it")
                }
            }
        }
        let mut wanted = self.wanted.lock().await;
        wanted.insert(snap.name.clone(), files.clone());
        for f in self.seeder.missing(&files).await {
            let torrent = std::fs::read(artifact_path(&self.data_dir, &f.sha256_hex, "torrent"))?;
            if let Err(e) = self.seeder.add(&f, Bytes::from(torrent)).await {
                tracing::warn!(path = %f.rel, error = %format!("{e:#}"), "cannot seed");
            }
        }
        let all: Vec<SeedFile> = wanted.values().flatten().cloned().collect();
        self.seeder.retain(&all).await;
        let torrents = self.seeder.count().await;
        tracing::info!(repo = %snap.name, torrents, "origin seeding");
        Ok(())
    }
}
