//! Staged publish: a new generation is offered to volunteers before customers are sent to it.
//!
//! A staged generation hangs off the snapshot customers see ([`Staged`]): volunteers are told
//! it is the newest (announce replies, `/manifests/<repo>/latest`, batches, spot checks) and
//! sync it, while customers are still redirected for the generation before, each file only
//! to volunteers holding its bytes ([`RepoSnapshot::bytes_through`]), and the origin sends
//! that generation's repository metadata from the copies it kept ([`crate::kept`]). Once a
//! second, [`run`] works out how far it spread, and makes it live when the spread reaches
//! `staging.spread`, when its deadline passes, or at once when no volunteer would hold what
//! changed (waiting would not help).
//!
//! **Spread.** For each file the staged generation changed or added, its expected demand is
//! its expected requests (its own or its predecessor's, [`crate::popularity`], plus one so
//! that a file nobody asked for yet still counts) times its size. The capacity that would
//! serve it is that of the fresh, eligible volunteers whose part admits it (each its declared
//! uplink; one with none declared, the median of those declared, or 1 if none did); of that,
//! the share already holding the staged bytes is the file's readiness. The spread is the
//! demand-weighed mean readiness. A file no volunteer would hold counts for neither side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::locks::lock;
use crate::publish::{RepoSnapshot, Staged};
use crate::state::AppState;
use crate::store::now_secs;

/// How far each staged generation spread, as [`run`] last worked it out: for the dashboard,
/// `/api/status` and `mirrorswarm status`.
#[derive(Debug, Default)]
pub struct Progress(Mutex<HashMap<String, Spread>>);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Spread {
    pub generation: u64,
    /// The generation customers are sent to meanwhile.
    pub live: u64,
    pub since: u64,
    pub deadline: u64,
    /// 0..=1, against `goal`.
    pub spread: f64,
    pub goal: f64,
    /// Files the staged generation changed or added, and their bytes.
    pub changed_files: usize,
    pub changed_bytes: u64,
    /// Volunteers holding the staged generation (of their part).
    pub ready_volunteers: usize,
}

impl Progress {
    pub fn get(&self, repo: &str) -> Option<Spread> {
        lock(&self.0).get(repo).cloned()
    }

    fn set(&self, repo: &str, s: Option<Spread>) {
        let mut m = lock(&self.0);
        match s {
            Some(s) => m.insert(repo.to_string(), s),
            None => m.remove(repo),
        };
    }
}

/// `live` with `newest` staged on top: customers stay on `live`. A generation staged on top
/// of another staged one keeps the first one's start and deadline (customers have waited
/// since then).
pub fn staged_on(
    live: &RepoSnapshot,
    newest: Arc<RepoSnapshot>,
    deadline_secs: u64,
) -> Arc<RepoSnapshot> {
    let since = live.staged.as_ref().map_or_else(now_secs, |s| s.since);
    let deadline = live
        .staged
        .as_ref()
        .map_or(since + deadline_secs, |s| s.deadline);
    Arc::new(live.with_staged(Some(Arc::new(Staged {
        snap: newest,
        since,
        deadline,
    }))))
}

/// The files of `staged` whose bytes changed since `live`: path and size.
fn changed_files(live: &RepoSnapshot, staged: &RepoSnapshot) -> Vec<(String, u64)> {
    staged
        .files
        .iter()
        .filter(|(_, e)| e.changed_in > live.generation)
        .map(|(p, e)| (p.to_string(), e.size))
        .collect()
}

/// What one volunteer brings to a repository's spread, copied out of the registry.
struct Holder {
    held: u64,
    part: Option<Arc<balance::registry::Part>>,
    /// Declared uplink, bytes/s (0: not declared).
    link_bps: u64,
}

impl Holder {
    fn admits(&self, path: &str) -> bool {
        self.part.as_ref().is_none_or(|p| p.selection.holds(path))
    }
}

/// Work the spread out (see the module's notes). `None` when no volunteer would hold any
/// changed file, or nothing changed: nothing to wait for.
fn spread(
    changed: &[(String, u64)],
    expected: &HashMap<String, f64>,
    holders: &[Holder],
    staged: &RepoSnapshot,
) -> Option<f64> {
    let mut declared: Vec<u64> = holders
        .iter()
        .map(|h| h.link_bps)
        .filter(|&b| b > 0)
        .collect();
    declared.sort_unstable();
    let unknown = declared.get(declared.len() / 2).copied().unwrap_or(1) as f64;
    let capacity = |h: &Holder| {
        if h.link_bps > 0 {
            h.link_bps as f64
        } else {
            unknown
        }
    };
    let (mut weighed, mut demand) = (0.0, 0.0);
    for (path, size) in changed {
        let Some(changed_in) = staged.files.changed_in(path) else {
            continue;
        };
        let (mut all, mut ready) = (0.0, 0.0);
        for h in holders.iter().filter(|h| h.admits(path)) {
            all += capacity(h);
            if h.held >= changed_in && h.held <= staged.generation {
                ready += capacity(h);
            }
        }
        if all == 0.0 {
            continue;
        }
        let d = (expected.get(path).copied().unwrap_or(0.0) + 1.0) * (*size).max(1) as f64;
        demand += d;
        weighed += d * (ready / all).min(1.0);
    }
    (demand > 0.0).then(|| weighed / demand)
}

/// Why a staged generation goes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Spread,
    Deadline,
    NoVolunteer,
}

/// Every second: each staged generation's spread worked out, and those due made live.
pub async fn run(st: Arc<AppState>) {
    // The changed files of a staged generation, worked out once (a walk of its files), by
    // repository, live and staged generation.
    type Key = (String, u64, u64);
    let mut changed: HashMap<Key, Arc<Vec<(String, u64)>>> = HashMap::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        for name in st.repo_dirs.keys() {
            let Some(live) = st.repo(name) else { continue };
            let Some(staged) = live.staged.clone() else {
                st.staging.set(name, None);
                continue;
            };
            let key = (name.clone(), live.generation, staged.snap.generation);
            let files = match changed.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let (l, s) = (live.clone(), staged.snap.clone());
                    let Ok(c) =
                        tokio::task::spawn_blocking(move || Arc::new(changed_files(&l, &s))).await
                    else {
                        continue;
                    };
                    changed.retain(|k, _| k.0 != *name);
                    changed.insert(key, c.clone());
                    c
                }
            };
            // A walk of the changed files and the volunteers, and of the counts: off the
            // async threads (a release of thousands of files to thousands of volunteers).
            let (st2, name2, staged2) = (st.clone(), name.clone(), staged.clone());
            let why =
                tokio::task::spawn_blocking(move || assess(&st2, &name2, &live, &staged2, &files))
                    .await;
            if let Ok(Some(why)) = why {
                go_live(&st, name, &staged, why).await;
            }
        }
    }
}

/// Work out `staged`'s spread, record it, and say whether it is due.
fn assess(
    st: &AppState,
    name: &str,
    live: &RepoSnapshot,
    staged: &Staged,
    files: &[(String, u64)],
) -> Option<Why> {
    let holders: Vec<Holder> = {
        let reg = st.balancer.registry();
        reg.sync_sources(name, u64::MAX, std::time::Instant::now())
            .into_iter()
            .filter(|(_, held)| *held > 0)
            .map(|(v, held)| Holder {
                held,
                part: v.generations.part(name).cloned(),
                link_bps: v.load.link_bps,
            })
            .collect()
    };
    let expected: HashMap<String, f64> = st
        .popularity
        .counts_in(name, &staged.snap.files, std::time::Instant::now())
        .into_iter()
        .collect();
    let spread = spread(files, &expected, &holders, &staged.snap);
    let goal = st.config.staging.spread;
    st.staging.set(
        name,
        Some(Spread {
            generation: staged.snap.generation,
            live: live.generation,
            since: staged.since,
            deadline: staged.deadline,
            spread: spread.unwrap_or(0.0),
            goal,
            changed_files: files.len(),
            changed_bytes: files.iter().map(|(_, s)| s).sum(),
            ready_volunteers: holders
                .iter()
                .filter(|h| h.held >= staged.snap.generation)
                .count(),
        }),
    );
    match spread {
        None => Some(Why::NoVolunteer),
        Some(s) if s >= goal => Some(Why::Spread),
        Some(_) if now_secs() >= staged.deadline => Some(Why::Deadline),
        Some(_) => None,
    }
}

/// Make `staged` the generation customers see, unless a publish replaced it meanwhile.
async fn go_live(st: &AppState, name: &str, staged: &Arc<Staged>, why: Why) {
    let _guard = st.publish_lock.lock().await;
    let Some(live) = st.repo(name) else { return };
    if !live.staged.as_ref().is_some_and(|s| Arc::ptr_eq(s, staged)) {
        return;
    }
    let spread = st.staging.get(name).map_or(0.0, |s| s.spread);
    let waited = now_secs().saturating_sub(staged.since);
    let reason = match why {
        Why::Spread => "volunteers holding its changed files can carry their share of the demand",
        Why::Deadline => "its deadline passed (staging.deadline_secs)",
        Why::NoVolunteer => "no volunteer would hold what it changed",
    };
    tracing::info!(
        repo = name,
        generation = staged.snap.generation,
        replaces = live.generation,
        spread = format!("{:.0}%", spread * 100.0),
        waited_secs = waited,
        reason,
        "staged generation is live"
    );
    // Its torrents are listed and seeded since it was staged: nothing is replaced there.
    crate::make_live(st, name, staged.snap.clone(), Some(live), &[]).await;
    st.staging.set(name, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(generation: u64, files: &[(&str, u64, u64)]) -> RepoSnapshot {
        let manifest = manifest::Manifest {
            repo: "r".into(),
            generation,
            published_at: 0,
            files: files
                .iter()
                .map(|(p, size, changed_in)| {
                    (
                        p.to_string(),
                        manifest::Entry {
                            size: *size,
                            sha256: manifest::Sha256([*changed_in as u8; 32]),
                            changed_in: *changed_in,
                            btih: None,
                        },
                    )
                })
                .collect(),
        };
        let files = crate::file_index::FileIndex::build(&manifest, &Default::default()).unwrap();
        RepoSnapshot {
            name: "r".into(),
            root: Default::default(),
            beneath: Arc::new(manifest::beneath::Root::open(&std::env::temp_dir()).unwrap()),
            generation,
            published_at: 0,
            files: Arc::new(files),
            signed_path: Default::default(),
            not_held: 0,
            staged: None,
        }
    }

    fn holder(held: u64, link_bps: u64, part: Option<&str>) -> Holder {
        Holder {
            held,
            part: part.map(|text| {
                Arc::new(balance::registry::Part {
                    text: text.into(),
                    selection: text.parse().unwrap(),
                })
            }),
            link_bps,
        }
    }

    #[test]
    fn spread_weighs_readiness_by_demand_and_capacity() {
        let live = snapshot(1, &[("a", 10, 1), ("big", 100, 1)]);
        let staged = snapshot(2, &[("a", 10, 1), ("big", 100, 2), ("new", 100, 2)]);
        let changed = changed_files(&live, &staged);
        assert_eq!(changed, [("big".into(), 100), ("new".into(), 100)]);
        let none = HashMap::new();
        // Two equal volunteers, one ready: half.
        let h = [holder(2, 0, None), holder(1, 0, None)];
        assert_eq!(spread(&changed, &none, &h, &staged), Some(0.5));
        // The ready one has three times the uplink: three quarters.
        let h = [holder(2, 300, None), holder(1, 100, None)];
        assert_eq!(spread(&changed, &none, &h, &staged), Some(0.75));
        // `new` is asked for 9 times as much as `big` (9 + 1 against 0 + 1); only a ready
        // volunteer's part holds `new`, so `new` is ready whole, and `big` half.
        let expected = HashMap::from([("new".to_string(), 9.0)]);
        let h = [
            holder(2, 0, Some("+ new")),
            holder(2, 0, Some("+ big")),
            holder(1, 0, Some("+ big")),
        ];
        let s = spread(&changed, &expected, &h, &staged).unwrap();
        assert!((s - (10.0 * 1.0 + 1.0 * 0.5) / 11.0).abs() < 1e-9, "{s}");
        // Nobody would hold them: nothing to wait for.
        assert_eq!(spread(&changed, &none, &[], &staged), None);
        assert_eq!(spread(&[], &none, &h, &staged), None);
        // A volunteer claiming a generation beyond the staged one holds none of it.
        let h = [holder(3, 0, None)];
        assert_eq!(spread(&changed, &none, &h, &staged), Some(0.0));
    }

    #[test]
    fn bytes_through_names_the_staged_generation_only_where_it_kept_the_bytes() {
        let live = snapshot(1, &[("same", 1, 1), ("changed", 1, 1), ("gone", 1, 1)]);
        let staged = Arc::new(snapshot(2, &[("same", 1, 1), ("changed", 2, 2)]));
        let live = staged_on(&live, staged, 60);
        let through = |p: &str| live.bytes_through(p, &live.files.get(p).unwrap());
        assert_eq!(
            (through("same"), through("changed"), through("gone")),
            (2, 1, 1)
        );
        assert_eq!(live.newest().generation, 2);
        let s = live.staged.as_ref().unwrap();
        assert_eq!(s.deadline, s.since + 60);
    }
}
