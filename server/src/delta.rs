//! Manifest deltas as the server serves them: `GET /manifests/<repo>/<g>?since=<f>`, the
//! signed changes from generation `f` to `g` ([`manifest::delta::Delta`]).
//!
//! The deltas volunteers ask for first (from the previous generation, and from the new one
//! itself) are made at publish, while both manifests are in memory. Any other is made the
//! first time a volunteer asks for it, from the two signed manifests (each verified with the
//! mirror's key, as one another server published is), signed, and kept under
//! `repos/<repo>/deltas/` for the next volunteer; one is made at a time. For a
//! repository of millions of files that costs seconds and about a gigabyte once per pair of
//! generations, and saves every volunteer holding `f` the whole manifest: hundreds of
//! megabytes to fetch, parse and hold.

use std::path::{Path, PathBuf};

use manifest::delta::Delta;
use manifest::{Manifest, ServerKey, SignedManifest};

use crate::api::{signed_manifest, ManifestUnavailable};
use crate::state::AppState;

fn deltas_dir(data_dir: &Path, repo: &str) -> PathBuf {
    crate::publish::repo_dir(data_dir, repo).join("deltas")
}

fn delta_file(to: u64, from: u64) -> String {
    format!("{to}-since-{from}.json")
}

/// The signed delta of `repo` from generation `from` to `to` (both published and kept).
pub async fn signed(
    st: &AppState,
    repo: &str,
    from: u64,
    to: u64,
) -> Result<Vec<u8>, ManifestUnavailable> {
    if from > to {
        return Err(ManifestUnavailable::Backwards {
            repo: repo.to_string(),
            from,
            to,
        });
    }
    let dir = deltas_dir(&st.config.data_dir, repo);
    let path = dir.join(delta_file(to, from));
    if let Ok(b) = tokio::fs::read(&path).await {
        return Ok(b);
    }
    let _one_at_a_time = st.deltas.lock().await;
    if let Ok(b) = tokio::fs::read(&path).await {
        return Ok(b);
    }
    let old = signed_manifest(st, repo, from).await?;
    let new = match from == to {
        true => None,
        false => Some(signed_manifest(st, repo, to).await?),
    };
    let (key, name) = (st.key.clone(), repo.to_string());
    let made = tokio::task::spawn_blocking(move || {
        let bytes = make(&key, &name, (from, old), (to, new))?;
        keep(&dir, &path, to, &bytes);
        Ok::<_, String>(bytes)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    made.map_err(|why| {
        tracing::warn!(repo, from, to, error = %why, "cannot make a manifest delta");
        ManifestUnavailable::Failed {
            repo: repo.to_string(),
            from,
            to,
            why,
        }
    })
}

/// At publish, with both manifests in memory: keep the deltas volunteers ask for first, from
/// the previous generation and from this one (a volunteer holding it, with nothing to do), so
/// that the first of them does not wait for both manifests to be read again. One that cannot
/// be made is made on asking; the log says why.
pub fn keep_published(
    data_dir: &Path,
    key: &ServerKey,
    previous: Option<&Manifest>,
    new: &Manifest,
) {
    let dir = deltas_dir(data_dir, &new.repo);
    for old in previous.into_iter().chain([new]) {
        let made = key
            .sign_value(&Delta::between(old, new))
            .and_then(|s| s.to_bytes());
        match made {
            Ok(bytes) => {
                let path = dir.join(delta_file(new.generation, old.generation));
                keep(&dir, &path, new.generation, &bytes);
            }
            Err(e) => tracing::warn!(repo = %new.repo, error = %e, "cannot make a manifest delta"),
        }
    }
}

/// Verify both manifests (each one's bytes dropped once parsed), diff and sign.
fn make(
    key: &ServerKey,
    repo: &str,
    (from, old): (u64, Vec<u8>),
    (to, new): (u64, Option<Vec<u8>>),
) -> Result<Vec<u8>, String> {
    let public = key.public();
    let parse = |bytes: Vec<u8>, g: u64| {
        SignedManifest::verify_expected(&bytes, &public, repo, Some(g))
            .map_err(|e| format!("manifest {g}: {e}"))
    };
    let old = parse(old, from)?;
    let new = new.map(|b| parse(b, to)).transpose()?;
    let delta = Delta::between(&old, new.as_ref().unwrap_or(&old));
    key.sign_value(&delta)
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())
}

/// Keep a delta for the next volunteer, and drop those to older generations. A delta that
/// cannot be kept is still sent; the log says why.
fn keep(dir: &Path, path: &Path, to: u64, bytes: &[u8]) {
    if let Err(e) =
        std::fs::create_dir_all(dir).and_then(|()| crate::publish::write_atomic(path, bytes))
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot keep a manifest delta");
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let older = name
            .to_str()
            .and_then(|n| n.split_once("-since-"))
            .and_then(|(t, _)| t.parse::<u64>().ok())
            .is_some_and(|t| t < to);
        if older {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
