//! How popular each file of a repository is: customers' requests per file, decayed with a
//! half-life, so that what was asked for lately counts most.
//!
//! The request path counts a hit in the file's place in the generation's index
//! (`FileIndex::count_hit`, with the place its lookup found: one relaxed add, no lock, no
//! lookup of its own), once per customer's request, where its answer is decided. Every few
//! seconds [`fold`] takes those hits into per-path counts here. The counts decay forward
//! (each request adds `e^((t - t0)/τ)`, a count now is its value times `e^(-(now - t0)/τ)`),
//! so adding is O(1) and nothing is swept to decay.
//!
//! A new generation's file takes over its predecessor's count ([`predecessor_key`]): the
//! same path, or the same package (name and architecture) at another version, whose count
//! moves to the new file when the old one is dropped. Counts of files no longer published,
//! and counts that decayed to nothing, are dropped: memory stays bounded by the files
//! customers ask for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::file_index::FileIndex;
use crate::locks::lock;

/// How long a request counts half as much: a day, so that a file's count is about its
/// requests of the last day or two (what `/api/volunteers` shows each volunteer's share of).
pub const HALF_LIFE: Duration = Duration::from_secs(24 * 3600);

/// A count below this is forgotten when a generation changes.
const FORGET_BELOW: f64 = 0.01;
/// The forward-decay exponent is rebased before it could lose precision.
const REBASE_AT: f64 = 40.0;

/// One repository's counts.
#[derive(Debug)]
struct Counts {
    /// Forward-decayed values by path.
    values: HashMap<Box<str>, f64>,
    t0: Instant,
}

impl Counts {
    fn new(now: Instant) -> Counts {
        Counts {
            values: HashMap::new(),
            t0: now,
        }
    }
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

    fn weight(&self, c: &Counts, at: Instant) -> f64 {
        (at.saturating_duration_since(c.t0).as_secs_f64() / self.tau_secs).exp()
    }

    /// Take the hits counted in `index` (a generation of `repo`) since the last fold.
    pub fn fold(&self, repo: &str, index: &FileIndex, now: Instant) {
        let mut repos = lock(&self.repos);
        let c = repos
            .entry(repo.to_string())
            .or_insert_with(|| Counts::new(now));
        if now.saturating_duration_since(c.t0).as_secs_f64() / self.tau_secs > REBASE_AT {
            let scale = 1.0 / self.weight(c, now);
            c.values.values_mut().for_each(|v| *v *= scale);
            c.t0 = now;
        }
        let w = self.weight(c, now);
        index.take_hits(|path, n| {
            *c.values.entry(path.into()).or_insert(0.0) += w * f64::from(n);
        });
    }

    /// `repo` moved to a new generation, `index`: a file new in it takes the count of its
    /// predecessor that it replaced (the same package at another version), and counts of
    /// files no longer published, or decayed to nothing, are dropped.
    pub fn carry_over(&self, repo: &str, index: &FileIndex, now: Instant) {
        let mut repos = lock(&self.repos);
        let Some(c) = repos.get_mut(repo) else {
            return;
        };
        let forget = FORGET_BELOW * self.weight(c, now);
        let (kept, gone): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut c.values)
            .into_iter()
            .filter(|(_, v)| *v >= forget)
            .partition(|(p, _)| index.contains(p));
        c.values = kept;
        // The dropped files' counts, by package: each goes to the one new file of that package.
        let mut by_package: HashMap<String, f64> = HashMap::new();
        for (p, v) in gone {
            if let Some(k) = predecessor_key(&p) {
                *by_package.entry(k).or_insert(0.0) += v;
            }
        }
        if by_package.is_empty() {
            return;
        }
        for (path, _) in index.iter() {
            if c.values.contains_key(path) {
                continue;
            }
            if let Some(v) = predecessor_key(path).and_then(|k| by_package.remove(&k)) {
                c.values.insert(path.into(), v);
            }
        }
    }

    /// Every counted file of `repo` with its requests as of `now` (decayed).
    pub fn counts(&self, repo: &str, now: Instant) -> Vec<(String, f64)> {
        let repos = lock(&self.repos);
        let Some(c) = repos.get(repo) else {
            return Vec::new();
        };
        let scale = 1.0 / self.weight(c, now);
        c.values
            .iter()
            .map(|(p, v)| (p.to_string(), v * scale))
            .collect()
    }

    /// The decay's half-life.
    pub fn half_life(&self) -> Duration {
        Duration::from_secs_f64(self.tau_secs * std::f64::consts::LN_2)
    }
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

/// Fold every repository's hits every few seconds, and carry counts over when a generation
/// changes (the previous generation's last hits are taken first).
pub async fn run(st: Arc<crate::state::AppState>) {
    let mut seen: HashMap<String, Arc<crate::publish::RepoSnapshot>> = HashMap::new();
    loop {
        tokio::time::sleep(FOLD_EVERY).await;
        fold_all(&st, &mut seen);
    }
}

/// How often hits are taken in.
const FOLD_EVERY: Duration = Duration::from_secs(2);

/// One round of [`run`]; also before the counts are read where they must be current.
pub fn fold_all(
    st: &crate::state::AppState,
    seen: &mut HashMap<String, Arc<crate::publish::RepoSnapshot>>,
) {
    let now = Instant::now();
    for name in st.repo_dirs.keys() {
        let Some(snap) = st.repo(name) else {
            continue;
        };
        if let Some(prev) = seen.get(name) {
            if !Arc::ptr_eq(prev, &snap) {
                st.popularity.fold(name, &prev.files, now);
                st.popularity.carry_over(name, &snap.files, now);
            }
        }
        st.popularity.fold(name, &snap.files, now);
        seen.insert(name.clone(), snap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ix = index(&["a", "b"]);
        for _ in 0..8 {
            hit(&ix, "a");
        }
        hit(&ix, "b");
        ix.get("b"); // not a customer's request
        p.fold("r", &ix, t0);
        assert!((count(&p, "a", t0) - 8.0).abs() < 1e-9);
        assert!((count(&p, "b", t0) - 1.0).abs() < 1e-9);
        let later = t0 + Duration::from_secs(100);
        assert!((count(&p, "a", later) - 4.0).abs() < 1e-6);
        // Taken once: folding again adds nothing.
        p.fold("r", &ix, later);
        assert!((count(&p, "a", later) - 4.0).abs() < 1e-6);
        // Long after, the base is moved and the counts stay right.
        let much_later = t0 + Duration::from_secs(100 * 60);
        hit(&ix, "a");
        p.fold("r", &ix, much_later);
        assert!((count(&p, "a", much_later) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_new_version_takes_over_its_predecessors_count() {
        let t0 = Instant::now();
        let p = Popularity::new(Duration::from_secs(3600));
        let old = index(&[
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
                hit(&old, path);
            }
        }
        p.fold("r", &old, t0);
        let new = index(&[
            "pool/main/h/hello/hello_1.1_amd64.deb",
            "pool/main/h/hello/hello_1.1_arm64.deb",
            "Packages/x/xz-5.6-1.x86_64.rpm",
            "README",
        ]);
        p.carry_over("r", &new, t0);
        let c = |path| count(&p, path, t0);
        assert_eq!(c("pool/main/h/hello/hello_1.1_amd64.deb"), 10.0);
        assert_eq!(c("pool/main/h/hello/hello_1.1_arm64.deb"), 3.0);
        assert_eq!(c("Packages/x/xz-5.6-1.x86_64.rpm"), 5.0);
        assert_eq!(c("README"), 2.0);
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
