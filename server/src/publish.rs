//! Publishing: scan a repository directory, write the next signed generation, and hand the
//! request path a finished, read-only [`RepoSnapshot`].
//!
//! On disk, under `<data-dir>/repos/<name>/`: `manifests/<generation>.json` (signed envelopes,
//! every generation kept so volunteers that lag can still verify what they hold) and
//! `scan-cache.json` (size, mtime and hash per path, so unchanged files are not re-read).
//! Writes go to a temporary file, are synced, then renamed: a crash leaves the previous
//! generation intact. The newest manifest file is the source of truth for the current
//! generation; the database keeps the history for reporting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use manifest::beneath::Root;
use manifest::scan::{scan_tree, ScanCache};
use manifest::{Entry, Manifest, ServerKey, SignedManifest};

use crate::file_index::FileIndex;
use crate::store::{now_secs, GenerationRecord, Store};

/// One published generation of one repository, as the request path reads it.
#[derive(Debug)]
pub struct RepoSnapshot {
    pub name: String,
    pub root: PathBuf,
    /// `root` held open when it was scanned: every file of this generation is opened
    /// beneath it (`manifest::beneath`), never by a joined path.
    pub beneath: Arc<Root>,
    pub generation: u64,
    pub published_at: u64,
    /// Every file with its entry, and its size and mtime when hashed (to notice files edited
    /// on disk after publishing: their bytes no longer match the published digest).
    /// Shared with the snapshots that stage a generation on top of this one (see [`Staged`]),
    /// so that staging and going live do not rebuild it, and its request counts go on.
    pub files: Arc<FileIndex>,
    /// The signed envelope of this generation, served to volunteers from disk.
    pub signed_path: PathBuf,
    /// Files this server's tree was found not to hold when it loaded a generation another
    /// server published (see `FileIndex::held_here`); 0 for one it published.
    pub not_held: usize,
    /// The next generation, published and offered to volunteers, not yet to customers.
    pub staged: Option<Arc<Staged>>,
}

/// A generation offered to volunteers before customers are sent to it (staged publish). It
/// hangs off the snapshot customers see, which the request path reads; volunteers' routes
/// read it through [`RepoSnapshot::newest`].
#[derive(Debug)]
pub struct Staged {
    pub snap: Arc<RepoSnapshot>,
    /// When it was published, and when it goes live however far it spread (seconds since the
    /// epoch).
    pub since: u64,
    pub deadline: u64,
}

impl RepoSnapshot {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The newest generation published: the staged one if there is one, else this one. What
    /// volunteers are told to sync, and what their routes serve.
    pub fn newest(self: &Arc<Self>) -> Arc<RepoSnapshot> {
        self.staged
            .as_ref()
            .map_or_else(|| self.clone(), |s| s.snap.clone())
    }

    /// The newest generation in which `rel` still has the bytes `entry` describes: a staged
    /// generation that did not change them, else this one. A volunteer holding a generation
    /// up to it holds those bytes; one holding a staged generation that changed the file
    /// holds other bytes, which customers of this generation must not be sent.
    pub fn bytes_through(&self, rel: &str, entry: &Entry) -> u64 {
        match &self.staged {
            Some(s) if s.snap.files.changed_in(rel) == Some(entry.changed_in) => s.snap.generation,
            _ => self.generation,
        }
    }

    /// This snapshot with `staged` (or none) on top: the same files, the same counters.
    pub fn with_staged(&self, staged: Option<Arc<Staged>>) -> RepoSnapshot {
        RepoSnapshot {
            name: self.name.clone(),
            root: self.root.clone(),
            beneath: self.beneath.clone(),
            generation: self.generation,
            published_at: self.published_at,
            files: self.files.clone(),
            signed_path: self.signed_path.clone(),
            not_held: self.not_held,
            staged,
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct PublishReport {
    pub repo: String,
    pub generation: u64,
    pub new_generation: bool,
    /// The generation customers are sent to: `generation` unless that one is staged.
    pub live_generation: u64,
    pub files: usize,
    pub changed_files: usize,
    pub hashed_files: usize,
    pub hashed_bytes: u64,
    pub skipped: Vec<(String, String)>,
    /// When this publish made a new generation: the info-hashes of the torrents of the one it
    /// replaced (the tracker keeps their swarms for pulls of it still running).
    pub replaced_torrents: Vec<[u8; 20]>,
}

pub struct Publisher {
    data_dir: PathBuf,
    key: Arc<ServerKey>,
    store: Store,
    artifacts: ArtifactSettings,
    /// This server's public URL, recorded with each generation it publishes into a shared
    /// store.
    published_by: String,
}

/// What loading a generation another server published did.
#[derive(Debug, Clone)]
pub struct AdoptReport {
    pub repo: String,
    pub generation: u64,
    pub files: usize,
    /// Files this server's tree does not hold as published: its origin does not send them
    /// until a later load finds them (customers go to volunteers, or wait).
    pub not_held: usize,
    pub hashed_files: usize,
    /// The torrents of the generation it replaced (as [`PublishReport::replaced_torrents`]).
    pub replaced_torrents: Vec<[u8; 20]>,
}

/// Which files get sync artifacts, and the tracker their torrents name.
#[derive(Debug, Clone)]
pub struct ArtifactSettings {
    pub min_bytes: u64,
    pub announce_url: String,
}

/// Content-addressed artifact files: `<data-dir>/artifacts/<sha256>.torrent` and `.sig`.
pub fn artifact_path(data_dir: &Path, sha256_hex: &str, ext: &str) -> PathBuf {
    data_dir
        .join("artifacts")
        .join(format!("{sha256_hex}.{ext}"))
}

pub fn repo_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("repos").join(name)
}

pub fn manifest_path(data_dir: &Path, name: &str, generation: u64) -> PathBuf {
    repo_dir(data_dir, name)
        .join("manifests")
        .join(format!("{generation}.json"))
}

/// Write `bytes` to `path` atomically: temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Give memory freed after a publish (the scan, the manifests, their JSON, the previous
/// snapshot) back to the system. glibc keeps freed heap for reuse otherwise, and a
/// million-file publish frees hundreds of megabytes the request path will never use.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live
    // allocation and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Publisher {
    pub fn new(
        data_dir: PathBuf,
        key: Arc<ServerKey>,
        store: Store,
        artifacts: ArtifactSettings,
        published_by: String,
    ) -> Self {
        Publisher {
            data_dir,
            key,
            store,
            artifacts,
            published_by,
        }
    }

    /// Give every large entry its torrent and block signature, computing only those that do
    /// not exist yet (artifacts are keyed by content, so unchanged files cost nothing).
    async fn attach_artifacts(&self, m: &mut Manifest, root: &Path) -> Result<usize> {
        let mut built = 0;
        for (path, e) in m.files.iter_mut() {
            if e.size < self.artifacts.min_bytes {
                continue;
            }
            let sha = e.sha256.to_hex();
            let torrent_path = artifact_path(&self.data_dir, &sha, "torrent");
            let sig_path = artifact_path(&self.data_dir, &sha, "sig");
            if let (Ok(t), true) = (std::fs::read(&torrent_path), sig_path.exists()) {
                if let Ok(h) = prsync::artifacts::torrent_info_hash(&t) {
                    e.btih = Some(manifest::Btih(h));
                    continue;
                }
            }
            let file = root.join(path);
            let announce = self.artifacts.announce_url.clone();
            let sha2 = sha.clone();
            let a = tokio::task::spawn_blocking(move || {
                prsync::artifacts::build(&file, &sha2, &announce)
            })
            .await
            .context("artifact task failed")?
            .with_context(|| format!("building sync artifacts for {path}"))?;
            write_atomic(&sig_path, &a.signature)
                .with_context(|| format!("writing {}", sig_path.display()))?;
            write_atomic(&torrent_path, &a.torrent)
                .with_context(|| format!("writing {}", torrent_path.display()))?;
            e.btih = Some(manifest::Btih(a.info_hash));
            built += 1;
        }
        Ok(built)
    }

    /// The newest generation published before, if any, read back and verified.
    pub fn load_latest(&self, name: &str) -> Result<Option<(Manifest, Bytes)>> {
        let dir = repo_dir(&self.data_dir, name).join("manifests");
        let newest = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")?
                        .parse::<u64>()
                        .ok()
                })
                .max(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let Some(generation) = newest else {
            return Ok(None);
        };
        let path = manifest_path(&self.data_dir, name, generation);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let m = SignedManifest::verify_expected(&bytes, &self.key.public(), name, Some(generation))
            .with_context(|| format!("verifying {}", path.display()))?;
        Ok(Some((m, Bytes::from(bytes))))
    }

    /// A stored generation's signed bytes (for volunteers verifying an older copy).
    pub fn read_generation(&self, name: &str, generation: u64) -> std::io::Result<Vec<u8>> {
        std::fs::read(manifest_path(&self.data_dir, name, generation))
    }

    /// Scan `root` and publish the next generation of `name` if anything changed. The
    /// snapshot returned is `previous` itself when the scan found exactly what it indexes.
    pub async fn publish(
        &self,
        name: &str,
        root: &Path,
        previous: Option<Arc<RepoSnapshot>>,
    ) -> Result<(Arc<RepoSnapshot>, PublishReport)> {
        let cache_path = repo_dir(&self.data_dir, name).join("scan-cache.json");
        // (Not if the directory at `root` is another one now: the snapshot serves from the one
        // it holds open.)
        if let Some(prev) = previous
            .as_ref()
            .filter(|p| p.root == root && p.beneath.is_at(root))
        {
            // The common republish: nothing changed. Checked by a walk that compares each
            // file's size and mtime with the index being served: nothing read, nothing to
            // sign, write or index.
            let (p, dir) = (prev.clone(), root.to_path_buf());
            let unchanged = tokio::task::spawn_blocking(move || {
                manifest::scan::unchanged_since(&dir, &*p.files, p.files.len())
            })
            .await
            .context("scan task failed")?
            .with_context(|| format!("scanning {}", root.display()))?;
            if let Some(skipped) = unchanged {
                for (path, why) in &skipped {
                    tracing::warn!(repo = name, path = %path, reason = %why, "not published");
                }
                let report = PublishReport {
                    repo: name.to_string(),
                    generation: prev.generation,
                    new_generation: false,
                    live_generation: prev.generation,
                    files: prev.files.len(),
                    changed_files: 0,
                    hashed_files: 0,
                    hashed_bytes: 0,
                    skipped,
                    replaced_torrents: Vec::new(),
                };
                return Ok((prev.clone(), report));
            }
        }
        let beneath =
            Arc::new(Root::open(root).with_context(|| format!("opening {}", root.display()))?);
        // What was hashed before: the index being served knows it; at start, the cache on disk.
        let (dir, prev, repo, cache_file) = (
            root.to_path_buf(),
            previous.clone(),
            name.to_string(),
            cache_path.clone(),
        );
        let (scanned, disk_cache) = tokio::task::spawn_blocking(move || match prev {
            Some(prev) => (scan_tree(&dir, &*prev.files), None),
            None => {
                let cache = read_scan_cache(&repo, &cache_file);
                (scan_tree(&dir, &cache), Some(cache))
            }
        })
        .await
        .context("scan task failed")?;
        let mut scanned = scanned.with_context(|| format!("scanning {}", root.display()))?;
        for (path, why) in &scanned.skipped {
            tracing::warn!(repo = name, path = %path, reason = %why, "not published");
        }
        // The previous generation as a manifest again, for the duration of this publish.
        let prev: Option<Manifest> = match &previous {
            Some(s) => Some(s.files.to_manifest(name, s.generation, s.published_at)),
            None => self.load_latest(name)?.map(|(m, _)| m),
        };
        let contents: BTreeMap<String, (u64, manifest::Sha256)> = scanned
            .files
            .iter()
            .map(|(p, c)| (p.clone(), (c.size, c.sha256)))
            .collect();
        let prev_gen = prev.as_ref().map_or(0, |m| m.generation);
        let candidate = Manifest::next(name, prev.as_ref(), contents, prev_gen + 1, now_secs());

        let unchanged = prev.as_ref().is_some_and(|m| m.same_content(&candidate));
        let replaced_torrents: Vec<[u8; 20]> = match &prev {
            Some(m) if !unchanged => m
                .files
                .values()
                .filter_map(|e| e.btih)
                .map(|b| b.0)
                .collect(),
            _ => Vec::new(),
        };
        let (manifest, new_generation) = match prev {
            Some(m) if unchanged => (m, false),
            _ => {
                let mut candidate = candidate;
                let built = self.attach_artifacts(&mut candidate, root).await?;
                if built > 0 {
                    tracing::info!(
                        repo = name,
                        files = built,
                        "built torrents and block signatures"
                    );
                }
                let signed = self.key.sign(&candidate)?.to_bytes()?;
                let path = manifest_path(&self.data_dir, name, candidate.generation);
                write_atomic(&path, &signed)
                    .with_context(|| format!("writing {}", path.display()))?;
                // The deltas volunteers will ask for first, while both manifests are here.
                crate::delta::keep_published(&self.data_dir, &self.key, prev.as_ref(), &candidate);
                (candidate, true)
            }
        };
        // Nothing read and nothing moved: the cache on disk already says all this.
        if scanned.hashed > 0 || disk_cache.as_ref() != Some(&scanned.files) {
            write_atomic(&cache_path, &serde_json::to_vec(&scanned.files)?)
                .with_context(|| format!("writing {}", cache_path.display()))?;
        }
        drop(disk_cache);
        if manifest.generation == 0 {
            bail!("internal: generation 0 published");
        }
        let changed_files = manifest
            .files
            .values()
            .filter(|e| e.changed_in == manifest.generation)
            .count();
        let record = GenerationRecord {
            repo: name.to_string(),
            generation: manifest.generation,
            published_at: manifest.published_at,
            files: manifest.files.len() as u64,
            bytes: manifest.total_bytes(),
            changed_files: changed_files as u64,
        };
        if self.store.shared() {
            // For the other servers sharing the store; a generation kept from before it was
            // shared (a mirror moved from SQLite) is recorded the first time too.
            let recorded = self.store.latest_published(name).await?;
            if new_generation || recorded.is_none_or(|(g, _)| g < manifest.generation) {
                self.share(&manifest, &record).await?;
            }
        } else if new_generation {
            self.store.record_generation(&record).await?;
        }
        let report = PublishReport {
            repo: name.to_string(),
            generation: manifest.generation,
            new_generation,
            live_generation: manifest.generation,
            files: manifest.files.len(),
            changed_files: if new_generation { changed_files } else { 0 },
            hashed_files: scanned.hashed,
            hashed_bytes: scanned.hashed_bytes,
            skipped: std::mem::take(&mut scanned.skipped),
            replaced_torrents,
        };
        let files = FileIndex::build(&manifest, &scanned.files)?;
        let snapshot = RepoSnapshot {
            name: name.to_string(),
            root: root.to_path_buf(),
            beneath,
            generation: manifest.generation,
            published_at: manifest.published_at,
            files: Arc::new(files),
            signed_path: manifest_path(&self.data_dir, name, manifest.generation),
            not_held: 0,
            staged: None,
        };
        Ok((Arc::new(snapshot), report))
    }
}

impl Publisher {
    /// Record `manifest` (published here, signed on disk) in the shared store with its large
    /// files' artifacts, for the other servers to load.
    async fn share(&self, manifest: &Manifest, record: &GenerationRecord) -> Result<()> {
        let path = manifest_path(&self.data_dir, &manifest.repo, manifest.generation);
        let signed = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut artifacts = Vec::new();
        for e in manifest.files.values().filter(|e| e.btih.is_some()) {
            let sha256 = e.sha256.to_hex();
            let read = |ext| {
                let p = artifact_path(&self.data_dir, &sha256, ext);
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
            };
            artifacts.push(crate::store::Artifact {
                torrent: read("torrent")?,
                signature: read("sig")?,
                sha256,
            });
        }
        self.store
            .record_published(record, &signed, &self.published_by, &artifacts)
            .await?;
        Ok(())
    }

    /// Load generation `signed` of `name`, which another server sharing the store published:
    /// verify it with the mirror's key, keep it and its artifacts in this data directory (to
    /// serve `/manifests/…` and `/artifacts/…`), and index it against this server's own tree
    /// at `root`, marking each file the tree does not hold as published, so that the origin
    /// never sends other bytes for it.
    pub async fn adopt(
        &self,
        name: &str,
        root: &Path,
        previous: Option<Arc<RepoSnapshot>>,
        generation: u64,
        signed: Vec<u8>,
    ) -> Result<(Arc<RepoSnapshot>, AdoptReport)> {
        let manifest =
            SignedManifest::verify_expected(&signed, &self.key.public(), name, Some(generation))
                .with_context(|| {
                    format!("verifying generation {generation} of `{name}` from the database")
                })?;
        let path = manifest_path(&self.data_dir, name, generation);
        if std::fs::read(&path).ok().as_deref() != Some(&signed[..]) {
            write_atomic(&path, &signed).with_context(|| format!("writing {}", path.display()))?;
        }
        for e in manifest.files.values() {
            let Some(btih) = e.btih else { continue };
            let sha = e.sha256.to_hex();
            let torrent_path = artifact_path(&self.data_dir, &sha, "torrent");
            let sig_path = artifact_path(&self.data_dir, &sha, "sig");
            if torrent_path.exists() && sig_path.exists() {
                continue;
            }
            let Some(a) = self.store.artifact(&sha).await? else {
                tracing::warn!(repo = name, sha256 = %sha, "the database holds no sync artifacts for this file; volunteers will fetch it whole");
                continue;
            };
            // The torrent must be the one the signed manifest names.
            if prsync::artifacts::torrent_info_hash(&a.torrent).ok() != Some(btih.0) {
                bail!("the database's torrent for {sha} is not the one generation {generation} of `{name}` names");
            }
            write_atomic(&sig_path, &a.signature)
                .with_context(|| format!("writing {}", sig_path.display()))?;
            write_atomic(&torrent_path, &a.torrent)
                .with_context(|| format!("writing {}", torrent_path.display()))?;
        }
        let beneath =
            Arc::new(Root::open(root).with_context(|| format!("opening {}", root.display()))?);
        let cache_path = repo_dir(&self.data_dir, name).join("scan-cache.json");
        let (dir, prev, repo, cache_file) = (
            root.to_path_buf(),
            previous.clone(),
            name.to_string(),
            cache_path.clone(),
        );
        let scanned = tokio::task::spawn_blocking(move || match prev {
            Some(prev) => scan_tree(&dir, &*prev.files),
            None => scan_tree(&dir, &read_scan_cache(&repo, &cache_file)),
        })
        .await
        .context("scan task failed")?
        .with_context(|| format!("scanning {}", root.display()))?;
        // For the next start (a running server's index is its cache): only when something
        // was read, since at millions of files it is hundreds of megabytes of JSON.
        if scanned.hashed > 0 || previous.is_none() {
            write_atomic(&cache_path, &serde_json::to_vec(&scanned.files)?)
                .with_context(|| format!("writing {}", cache_path.display()))?;
        }
        let held: manifest::scan::ScanCache = scanned
            .files
            .into_iter()
            .filter(|(p, c)| {
                manifest
                    .files
                    .get(p)
                    .is_some_and(|e| e.size == c.size && e.sha256 == c.sha256)
            })
            .collect();
        let files = FileIndex::build_held(&manifest, &held)?;
        let replaced_torrents = match &previous {
            Some(p) if p.generation != generation => p.files.torrents().to_vec(),
            _ => Vec::new(),
        };
        let not_held = files.not_held();
        let report = AdoptReport {
            repo: name.to_string(),
            generation,
            files: manifest.files.len(),
            not_held,
            hashed_files: scanned.hashed,
            replaced_torrents,
        };
        let snapshot = RepoSnapshot {
            name: name.to_string(),
            root: root.to_path_buf(),
            beneath,
            generation,
            published_at: manifest.published_at,
            files: Arc::new(files),
            signed_path: path,
            not_held,
            staged: None,
        };
        Ok((Arc::new(snapshot), report))
    }
}

/// The scan cache on disk; an unreadable one only costs a rehash.
fn read_scan_cache(repo: &str, path: &Path) -> ScanCache {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(repo, error = %e, "scan cache unreadable; rehashing everything");
            ScanCache::new()
        }),
        Err(_) => ScanCache::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_is_incremental_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(repo.join("a"), b"one").unwrap();
        std::fs::write(repo.join("sub/b"), b"two").unwrap();
        let key = Arc::new(ServerKey::from_bytes(&[9; 32]));
        let store = Store::open(&data.join("db")).await.unwrap();
        let arts = ArtifactSettings {
            min_bytes: 1 << 20,
            announce_url: "http://t/announce".into(),
        };
        let p = Publisher::new(
            data.clone(),
            key.clone(),
            store.clone(),
            arts.clone(),
            "http://a".into(),
        );

        let (s1, r1) = p.publish("r", &repo, None).await.unwrap();
        assert_eq!(
            (r1.generation, r1.new_generation, r1.hashed_files),
            (1, true, 2)
        );
        let (s1b, r1b) = p.publish("r", &repo, Some(s1.clone())).await.unwrap();
        assert_eq!(
            (r1b.generation, r1b.new_generation, r1b.hashed_files),
            (1, false, 0)
        );
        assert!(
            Arc::ptr_eq(&s1, &s1b),
            "an unchanged tree keeps the snapshot"
        );

        // Touched but not changed: read again, a new index (new mtime), the same generation.
        let f = std::fs::File::options()
            .write(true)
            .open(repo.join("a"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        drop(f);
        let (s1c, r1c) = p.publish("r", &repo, Some(s1b.clone())).await.unwrap();
        assert_eq!(
            (r1c.generation, r1c.new_generation, r1c.hashed_files),
            (1, false, 1)
        );
        assert!(!Arc::ptr_eq(&s1b, &s1c));
        assert_eq!(s1c.files.stat("a").unwrap().1, 7_000_000_000);
        let s1b = s1c;

        std::fs::write(repo.join("sub/b"), b"two, changed").unwrap();
        let (s2, r2) = p.publish("r", &repo, Some(s1b.clone())).await.unwrap();
        assert_eq!(
            (r2.generation, r2.changed_files, r2.hashed_files),
            (2, 1, 1)
        );
        assert_eq!(s2.files.get("a").unwrap().changed_in, 1);
        assert_eq!(s2.files.get("sub/b").unwrap().changed_in, 2);

        // A new publisher (server restart) continues from the files on disk.
        let p2 = Publisher::new(data.clone(), key.clone(), store, arts, "http://a".into());
        let (latest, _) = p2.load_latest("r").unwrap().unwrap();
        assert_eq!(latest.generation, 2);
        let (_, r3) = p2.publish("r", &repo, None).await.unwrap();
        assert_eq!(
            (r3.generation, r3.new_generation, r3.hashed_files),
            (2, false, 0)
        );
        // The older generation stays readable.
        let g1 = p2.read_generation("r", 1).unwrap();
        assert_eq!(
            SignedManifest::verify(&g1, &key.public())
                .unwrap()
                .generation,
            1
        );
    }
}
