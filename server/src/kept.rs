//! Copies of each generation's repository metadata (apt's `dists/`, dnf's `repodata/`: what
//! `manifest::select::is_metadata` names), kept by content under
//! `<data-dir>/repos/<name>/kept/<sha256>` while staging is enabled.
//!
//! Why: an operator changes the tree in place and then publishes. While the new generation is
//! staged, customers are still sent the old one, whose `Release` and `Packages` the tree no
//! longer holds; the origin sends them from these copies, so that `apt-get update` never sees
//! a `Release` of one generation and a `Packages` of another. Copied when a generation is
//! published (the tree holds it then), checked against its digest as it is copied, and
//! dropped once neither the live nor the staged generation names it. Metadata is a small part
//! of a repository, and unchanged files are kept once.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use manifest::select::is_metadata;
use manifest::Entry;
use sha2::{Digest, Sha256};

use crate::publish::{repo_dir, RepoSnapshot};
use crate::state::AppState;

fn dir(data_dir: &Path, repo: &str) -> PathBuf {
    repo_dir(data_dir, repo).join("kept")
}

/// The kept copy of `entry`'s bytes, if there is one of its size.
pub fn open(data_dir: &Path, repo: &str, entry: &Entry) -> Option<(File, std::fs::Metadata)> {
    let f = File::open(dir(data_dir, repo).join(entry.sha256.to_hex())).ok()?;
    let meta = f.metadata().ok()?;
    (meta.is_file() && meta.len() == entry.size).then_some((f, meta))
}

/// Keep copies of `snap`'s metadata files not kept yet (when staging is enabled).
pub async fn keep(st: &AppState, snap: &Arc<RepoSnapshot>) {
    if !st.config.staging.enabled {
        return;
    }
    let (snap, data_dir) = (snap.clone(), st.config.data_dir.clone());
    let done = tokio::task::spawn_blocking(move || keep_all(&data_dir, &snap)).await;
    match done {
        Ok((copied, failed)) if copied + failed > 0 => {
            tracing::info!(
                copied,
                failed,
                "kept copies of the repository metadata, for customers of this generation while the next is staged"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "keeping metadata copies failed"),
    }
}

fn keep_all(data_dir: &Path, snap: &RepoSnapshot) -> (usize, usize) {
    let dir = dir(data_dir, &snap.name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot keep metadata copies");
        return (0, 0);
    }
    let (mut copied, mut failed) = (0, 0);
    for (path, e) in snap.files.iter().filter(|(p, _)| is_metadata(p)) {
        let to = dir.join(e.sha256.to_hex());
        if to.exists() {
            continue;
        }
        match copy_checked(snap, path, &e, &to) {
            Ok(()) => copied += 1,
            Err(why) => {
                failed += 1;
                tracing::warn!(repo = %snap.name, path, reason = %why, "metadata not kept: customers of this generation get it only from volunteers once the tree changes");
            }
        }
    }
    (copied, failed)
}

/// Copy `path` of `snap`'s tree to `to` if its bytes are the published ones.
fn copy_checked(snap: &RepoSnapshot, path: &str, e: &Entry, to: &Path) -> Result<(), String> {
    let (mut f, _) = snap
        .beneath
        .open_sized(path, e.size)
        .map_err(|w| w.to_string())?;
    let tmp = to.with_extension("tmp");
    let mut out = File::create(&tmp).map_err(|w| w.to_string())?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|w| w.to_string())?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|w| w.to_string())?;
    }
    if hash.finalize().as_slice() != e.sha256.0 {
        let _ = std::fs::remove_file(&tmp);
        return Err("changed on disk since it was published".into());
    }
    out.sync_all().map_err(|w| w.to_string())?;
    std::fs::rename(&tmp, to).map_err(|w| w.to_string())
}

/// Drop the copies neither the live nor the staged generation of `name` names.
pub async fn prune(st: &AppState, name: &str) {
    let Some(live) = st.repo(name) else { return };
    let data_dir = st.config.data_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let dir = dir(&data_dir, &live.name);
        let Ok(listing) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut named = std::collections::HashSet::new();
        for snap in [live.clone(), live.newest()] {
            for (p, e) in snap.files.iter() {
                if is_metadata(p) {
                    named.insert(e.sha256.to_hex());
                }
            }
        }
        for f in listing.flatten() {
            let n = f.file_name();
            if !n.to_str().is_some_and(|n| named.contains(n)) {
                let _ = std::fs::remove_file(f.path());
            }
        }
    })
    .await;
}
