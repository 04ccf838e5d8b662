//! How popular each file of a repository is: customers' requests per file, decayed with a
//! half-life, so that what was asked for lately counts most.
//!
//! The request path counts a hit in the file's place in the generation's index
//! (`FileIndex::count_hit`, with the place its lookup found: one relaxed add, no lock, no
//! lookup of its own), once per customer's request, where its answer is decided. Every few
//! seconds a thread of its own ([`run`]) folds those hits into a decayed count kept beside
//! them, one `f32` per place: a pass over two arrays, nothing allocated or looked up, however
//! many files were asked for (a map by path, folded on a serving thread, put the redirect's
//! p99 at 8-25 ms against 1-3 ms in an A/B against the build before). The counts decay forward (each request adds `e^((t - t0)/τ)`, a count now is its
//! value times `e^(-(now - t0)/τ)`), so nothing is swept to decay them.
//!
//! When a generation replaces another, each file's count moves to its place in the new
//! index; a file new in it takes over its predecessor's count ([`predecessor_key`]: the same
//! package, by name and architecture, at another version). Files no longer published are
//! forgotten. Memory: 8 bytes a place, 11 to 21 a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::ManifestUnavailable;
use crate::file_index::FileIndex;
use crate::locks::lock;
use crate::publish::RepoSnapshot;
use crate::state::AppState;

/// How long a request counts half as much: a day, so that a file's count is about its
/// requests of the last day or two (what `/api/volunteers` shows each volunteer's share of).
pub const HALF_LIFE: Duration = Duration::from_secs(24 * 3600);

/// The forward-decay exponent is rebased before an `f32` could lose its range.
const REBASE_AT: f64 = 30.0;

/// One repository's counts, by place in the index of the generation they were taken for.
#[derive(Debug)]
struct Counts {
    /// That generation.
    snap: Arc<RepoSnapshot>,
    /// Forward-decayed values, one per place of `snap.files`.
    values: Vec<f32>,
    t0: Instant,
}

/// Decayed request counts per file, per repository.
#[derive(Debug)]
pub struct Popularity {
    /// τ of the decay: the half-life over ln 2.
    tau_secs: f64,
    repos: Mutex<HashMap<String, Counts>>,
}

impl Popularity {
    /// Counts halving every `half_life`.
    pub fn new(half_life: Duration) -> Popularity {
        Popularity {
            tau_secs: half_life.as_secs_f64().max(1.0) / std::f64::consts::LN_2,
            repos: Mutex::new(HashMap::new()),
        }
    }

    fn weight(&self, t0: Instant, at: Instant) -> f64 {
        (at.saturating_duration_since(t0).as_secs_f64() / self.tau_secs).exp()
    }

    /// Take the hits counted in `snap` (the current generation of `repo`) since the last
    /// fold. Where it replaced the generation the counts were kept for, that one's last hits
    /// are taken first and the counts carried over ([`carry_over`]).
    pub fn fold(&self, repo: &str, snap: &Arc<RepoSnapshot>, now: Instant) {
        let mut repos = lock(&self.repos);
        let c = repos.entry(repo.to_string()).or_insert_with(|| Counts {
            snap: snap.clone(),
            values: vec![0.0; snap.files.slots()],
            t0: now,
        });
        if now.saturating_duration_since(c.t0).as_secs_f64() / self.tau_secs > REBASE_AT {
            let scale = (1.0 / self.weight(c.t0, now)) as f32;
            c.values.iter_mut().for_each(|v| *v *= scale);
            c.t0 = now;
        }
        let w = self.weight(c.t0, now) as f32;
        // (A generation staged on top of the same one shares its index, and its counters.)
        if !Arc::ptr_eq(&c.snap.files, &snap.files) {
            take(&c.snap.files, &mut c.values, w);
            let forget = FORGET_BELOW * w;
            c.values = carry_over(&c.snap.files, &c.values, &snap.files, forget);
        }
        c.snap = snap.clone();
        take(&snap.files, &mut c.values, w);
    }

    /// Every counted file of `repo` with its requests as of `now` (decayed).
    pub fn counts(&self, repo: &str, now: Instant) -> Vec<(String, f64)> {
        let repos = lock(&self.repos);
        let Some(c) = repos.get(repo) else {
            return Vec::new();
        };
        let scale = 1.0 / self.weight(c.t0, now);
        c.values
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0.0)
            .filter_map(|(slot, v)| {
                Some((
                    c.snap.files.path_in(slot)?.to_string(),
                    f64::from(*v) * scale,
                ))
            })
            .collect()
    }

    /// The counts of `repo` carried onto `index`, another generation's files (as a publish
    /// carries them, [`carry_over`]), as of `now`: what a staged generation's files can
    /// expect, its new package versions their predecessors' requests. The index the counts
    /// are kept for gives them as they are.
    pub fn counts_in(&self, repo: &str, index: &FileIndex, now: Instant) -> Vec<(String, f64)> {
        let repos = lock(&self.repos);
        let Some(c) = repos.get(repo) else {
            return Vec::new();
        };
        let w = self.weight(c.t0, now);
        let carried;
        let values = if std::ptr::eq(&*c.snap.files, index) {
            &c.values
        } else {
            carried = carry_over(&c.snap.files, &c.values, index, FORGET_BELOW * w as f32);
            &carried
        };
        values
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0.0)
            .filter_map(|(slot, v)| Some((index.path_in(slot)?.to_string(), f64::from(*v) / w)))
            .collect()
    }

    /// The decay's half-life.
    pub fn half_life(&self) -> Duration {
        Duration::from_secs_f64(self.tau_secs * std::f64::consts::LN_2)
    }
}

/// A count below this (in requests) is forgotten when a generation changes.
const FORGET_BELOW: f32 = 0.01;

/// Add `index`'s hits, weighed `w`, to `values`.
fn take(index: &FileIndex, values: &mut [f32], w: f32) {
    index.take_hits(|slot, n| {
        if let Some(v) = values.get_mut(slot) {
            *v += w * n as f32;
        }
    });
}

/// `old`'s counts (`values`) in `new`'s places: each file's to the same path, and each
/// dropped file's (if at least `forget`) to the new file of the same package, if there is
/// one; others are forgotten.
fn carry_over(old: &FileIndex, values: &[f32], new: &FileIndex, forget: f32) -> Vec<f32> {
    let mut out = vec![0.0; new.slots()];
    let mut by_package: HashMap<String, f32> = HashMap::new();
    for (slot, &v) in values.iter().enumerate() {
        if v < forget {
            continue;
        }
        let Some(path) = old.path_in(slot) else {
            continue;
        };
        match new.slot_of(path) {
            Some(to) => out[to] += v,
            None => {
                if let Some(k) = predecessor_key(path) {
                    *by_package.entry(k).or_insert(0.0) += v;
                }
            }
        }
    }
    if !by_package.is_empty() {
        for (slot, count) in out.iter_mut().enumerate() {
            let Some(path) = new.path_in(slot) else {
                continue;
            };
            if *count > 0.0 || old.contains(path) {
                continue;
            }
            if let Some(v) = predecessor_key(path).and_then(|k| by_package.remove(&k)) {
                *count = v;
            }
        }
    }
    out
}

/// What a file is another version of: for a Debian package (`name_version_arch.deb`) its
/// directory, name and architecture; for an RPM (`name-version-release.arch.rpm`) its
/// directory, name and architecture; anything else has none (only the same path carries its
/// count over).
pub fn predecessor_key(path: &str) -> Option<String> {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    for ext in [".deb", ".udeb", ".ddeb"] {
        if let Some(stem) = file.strip_suffix(ext) {
            let mut parts = stem.split('_');
            let (name, _version, arch) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || name.is_empty() {
                return None;
            }
            return Some(format!("{dir}/{name}_{arch}{ext}"));
        }
    }
    if let Some(stem) = file.strip_suffix(".rpm") {
        let (nvr, arch) = stem.rsplit_once('.')?;
        let mut parts = nvr.rsplitn(3, '-');
        let (_release, _version, name) = (parts.next()?, parts.next()?, parts.next()?);
        if name.is_empty() {
            return None;
        }
        return Some(format!("{dir}/{name}.{arch}.rpm"));
    }
    None
}

/// Fold every repository's hits every few seconds, on a thread of its own: never on a
/// thread that serves requests.
pub fn run(st: std::sync::Weak<AppState>) {
    let spawned = std::thread::Builder::new()
        .name("popularity".into())
        .spawn(move || {
            // The lowest priority: on a core the serving threads keep busy a fold waits its
            // turn, a few milliseconds at a time, instead of taking its whole pass at once (at
            // the default priority it put the redirect's p99 at 6.4 ms against 1.1 ms on one
            // core). On Linux a thread has its own nice value; 0 names the calling one.
            // SAFETY: setpriority only reads its arguments.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            loop {
                std::thread::sleep(FOLD_EVERY);
                let Some(st) = st.upgrade() else {
                    return;
                };
                fold_all(&st);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start counting popularity; /api/popularity stays empty");
    }
}

/// How often hits are taken in.
const FOLD_EVERY: Duration = Duration::from_secs(2);

/// Take in every repository's hits. Run every [`FOLD_EVERY`], and before a table is made.
pub fn fold_all(st: &AppState) {
    let now = Instant::now();
    for name in st.repo_dirs.keys() {
        if let Some(snap) = st.repo(name) {
            st.popularity.fold(name, &snap, now);
        }
    }
}

/// Tables kept per repository: those of the generations volunteers may still hold.
const KEEP_TABLES: u64 = 8;

fn tables_dir(data_dir: &Path, repo: &str) -> PathBuf {
    crate::publish::repo_dir(data_dir, repo).join("popularity")
}

/// `GET /manifests/<repo>/<g>/popularity`: the signed popularity of generation `g`. Made
/// once, from the counts as they stand, the first time it is asked for while `g` is the newest
/// (so a volunteer's budget and the server's reading of it rest on one table); kept, with
/// those of the last few generations, under `repos/<repo>/popularity/`.
pub async fn signed_table(
    st: &AppState,
    repo: &str,
    g: u64,
) -> Result<Vec<u8>, ManifestUnavailable> {
    let dir = tables_dir(&st.config.data_dir, repo);
    let path = dir.join(format!("{g}.json"));
    if let Ok(b) = tokio::fs::read(&path).await {
        return Ok(b);
    }
    let not_kept = || ManifestUnavailable::NotKept {
        repo: repo.to_string(),
        generation: g,
    };
    let _one_at_a_time = st.deltas.lock().await;
    if let Ok(b) = tokio::fs::read(&path).await {
        return Ok(b);
    }
    // The newest generation: a staged one's table is what budgets fill from before it goes
    // live.
    let snap = st
        .newest(repo)
        .filter(|s| s.generation() == g)
        .ok_or_else(not_kept)?;
    fold_all(st);
    let counts = st.popularity.counts_in(repo, &snap.files, Instant::now());
    let taken_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let table = manifest::popularity::Popularity::new(
        repo,
        g,
        st.popularity.half_life().as_secs(),
        taken_at,
        counts,
    );
    let bytes = st
        .key
        .sign_value(&table)
        .and_then(|s| s.to_bytes())
        .map_err(|e| ManifestUnavailable::Failed {
            repo: repo.to_string(),
            from: g,
            to: g,
            why: e.to_string(),
        })?;
    keep_table(&dir, &path, g, &bytes);
    Ok(bytes)
}

/// Write a table, and drop those older than the generations kept.
fn keep_table(dir: &Path, path: &Path, g: u64, bytes: &[u8]) {
    if let Err(e) =
        std::fs::create_dir_all(dir).and_then(|()| crate::publish::write_atomic(path, bytes))
    {
        // Served all the same; the next asking makes it again (from later counts).
        tracing::warn!(path = %path.display(), error = %e, "cannot keep a popularity table");
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|t| t + KEEP_TABLES <= g);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(paths: &[&str]) -> Arc<RepoSnapshot> {
        Arc::new(RepoSnapshot {
            name: "r".into(),
            root: Default::default(),
            beneath: Arc::new(manifest::beneath::Root::open(&std::env::temp_dir()).unwrap()),
            generation: 1,
            published_at: 0,
            files: Arc::new(index(paths)),
            signed_path: Default::default(),
            not_held: 0,
            staged: None,
        })
    }

    fn index(paths: &[&str]) -> FileIndex {
        let files = paths
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    manifest::Entry {
                        size: 1,
                        sha256: manifest::Sha256([0; 32]),
                        changed_in: 1,
                        btih: None,
                    },
                )
            })
            .collect();
        let m = manifest::Manifest {
            repo: "r".into(),
            generation: 1,
            published_at: 0,
            files,
        };
        FileIndex::build(&m, &Default::default()).unwrap()
    }

    fn hit(ix: &FileIndex, path: &str) {
        let (_, slot) = ix.get_with_slot(path).unwrap();
        ix.count_hit(slot);
    }

    fn count(p: &Popularity, path: &str, now: Instant) -> f64 {
        p.counts("r", now)
            .into_iter()
            .find(|(q, _)| q == path)
            .map_or(0.0, |(_, v)| v)
    }

    #[test]
    fn hits_are_counted_and_halve_each_half_life() {
        let t0 = Instant::now();
        let p = Popularity::new(Duration::from_secs(100));
        let sn = snap(&["a", "b"]);
        let ix = &sn.files;
        for _ in 0..8 {
            hit(ix, "a");
        }
        hit(ix, "b");
        ix.get("b"); // not a customer's request
        p.fold("r", &sn, t0);
        assert!((count(&p, "a", t0) - 8.0).abs() < 1e-9);
        assert!((count(&p, "b", t0) - 1.0).abs() < 1e-9);
        let later = t0 + Duration::from_secs(100);
        assert!((count(&p, "a", later) - 4.0).abs() < 1e-6);
        // Taken once: folding again adds nothing.
        p.fold("r", &sn, later);
        assert!((count(&p, "a", later) - 4.0).abs() < 1e-6);
        // Long after, the base is moved and the counts stay right.
        let much_later = t0 + Duration::from_secs(100 * 60);
        hit(ix, "a");
        p.fold("r", &sn, much_later);
        assert!((count(&p, "a", much_later) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_new_version_takes_over_its_predecessors_count() {
        let t0 = Instant::now();
        let p = Popularity::new(Duration::from_secs(3600));
        let old = snap(&[
            "pool/main/h/hello/hello_1.0_amd64.deb",
            "pool/main/h/hello/hello_1.0_arm64.deb",
            "Packages/x/xz-5.4-1.x86_64.rpm",
            "README",
            "gone.txt",
        ]);
        for (path, n) in [
            ("pool/main/h/hello/hello_1.0_amd64.deb", 10),
            ("pool/main/h/hello/hello_1.0_arm64.deb", 3),
            ("Packages/x/xz-5.4-1.x86_64.rpm", 5),
            ("README", 2),
            ("gone.txt", 7),
        ] {
            for _ in 0..n {
                hit(&old.files, path);
            }
        }
        p.fold("r", &old, t0);
        let new = snap(&[
            "pool/main/h/hello/hello_1.1_amd64.deb",
            "pool/main/h/hello/hello_1.1_arm64.deb",
            "Packages/x/xz-5.6-1.x86_64.rpm",
            "README",
        ]);
        // Hits on the old generation after the last fold are taken too.
        hit(&old.files, "README");
        p.fold("r", &new, t0);
        let c = |path| count(&p, path, t0);
        assert_eq!(c("pool/main/h/hello/hello_1.1_amd64.deb"), 10.0);
        assert_eq!(c("pool/main/h/hello/hello_1.1_arm64.deb"), 3.0);
        assert_eq!(c("Packages/x/xz-5.6-1.x86_64.rpm"), 5.0);
        assert_eq!(c("README"), 3.0);
        assert_eq!(p.counts("r", t0).len(), 4, "gone.txt is forgotten");
    }

    #[test]
    fn package_keys() {
        assert_eq!(
            predecessor_key("pool/main/h/hello/hello_2.10-3_amd64.deb").as_deref(),
            Some("pool/main/h/hello/hello_amd64.deb")
        );
        assert_eq!(
            predecessor_key("f/39/x86_64/Packages/b/bash-5.2.15-5.fc39.x86_64.rpm").as_deref(),
            Some("f/39/x86_64/Packages/b/bash.x86_64.rpm")
        );
        assert_eq!(predecessor_key("dists/stable/Release"), None);
        assert_eq!(predecessor_key("odd_name.deb"), None);
    }
}
