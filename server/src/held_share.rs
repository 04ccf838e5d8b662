//! What share of a repository a volunteer holds now: of its files, of its bytes, and of the
//! requests customers made lately (the decayed counts of [`crate::popularity`]). Files it
//! holds are those of the current generation in its part (all of them if it holds the whole
//! repository) whose bytes changed no later than the generation it announced.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use balance::registry::{Part, VolunteerLive};
use serde::{Deserialize, Serialize};

use crate::locks::lock;
use crate::state::AppState;

/// One repository's share held by one volunteer, each between 0 and 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HeldShare {
    pub files: f64,
    pub bytes: f64,
    /// Of the customers' requests of about the last day (0 when there were none).
    pub requests: f64,
}

/// Files and bytes held, by what decides them: the repository, its current generation, the
/// generation held, the part's text and whether a budget's files are known yet. Walking a
/// generation's files per volunteer per dashboard poll would cost seconds on a large
/// repository; these change only when one of them does.
#[derive(Debug, Default)]
pub struct HeldTotals {
    known: Mutex<HashMap<TotalsKey, Totals>>,
}

/// The repository, its current generation, the generation held, the part's text, and
/// whether a budget's files are not known yet.
type TotalsKey = (String, u64, u64, String, bool);

/// Held files and bytes, and the generation's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    files: u64,
    bytes: u64,
    all_bytes: u64,
}

/// Entries kept before the cache starts again.
const KEEP: usize = 1024;

fn holds(part: Option<&Part>, held: u64, path: &str, changed_in: u64) -> bool {
    changed_in <= held && part.is_none_or(|p| p.selection.holds(path))
}

/// What a volunteer holds, per repository: the generation and the part (`None`: all), taken
/// from the registry so that the shares are worked out without its lock (which every
/// redirect takes).
pub type Holding = Vec<(String, u64, Option<Arc<Part>>)>;

pub fn holding(v: &VolunteerLive) -> Holding {
    v.generations
        .with_parts()
        .map(|(r, g, p)| (r.to_string(), g, p.cloned()))
        .collect()
}

/// A volunteer's share of each repository it holds a generation of.
pub fn shares(
    st: &AppState,
    holding: &Holding,
    requests: &HashMap<String, Vec<(String, f64)>>,
) -> BTreeMap<String, HeldShare> {
    let mut out = BTreeMap::new();
    for (repo, held, part) in holding {
        let (repo, held) = (repo.as_str(), *held);
        let Some(snap) = st.repo(repo) else {
            continue;
        };
        let part = part.as_deref();
        // A budget's text is the same before the server worked its files out and after.
        let key = (
            repo.to_string(),
            snap.generation(),
            held,
            part.map_or_else(String::new, |p| p.text.clone()),
            part.is_some_and(|p| p.selection.is_unchosen()),
        );
        let cached = lock(&st.held_totals.known).get(&key).copied();
        let t = cached.unwrap_or_else(|| {
            let mut t = Totals::default();
            for (path, e) in snap.files.iter() {
                t.all_bytes += e.size;
                if holds(part, held, path, e.changed_in) {
                    t.files += 1;
                    t.bytes += e.size;
                }
            }
            let mut known = lock(&st.held_totals.known);
            if known.len() >= KEEP {
                known.clear();
            }
            known.insert(key, t);
            t
        });
        let (mut asked, mut here) = (0.0, 0.0);
        for (path, n) in requests.get(repo).into_iter().flatten() {
            asked += n;
            if snap
                .files
                .get(path)
                .is_some_and(|e| holds(part, held, path, e.changed_in))
            {
                here += n;
            }
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        out.insert(
            repo.to_string(),
            HeldShare {
                files: ratio(t.files as f64, snap.files.len() as f64),
                bytes: ratio(t.bytes as f64, t.all_bytes as f64),
                requests: ratio(here, asked),
            },
        );
    }
    out
}

/// Every repository's decayed request counts as of `now`, read once for all volunteers.
pub fn requests(st: &AppState, now: Instant) -> HashMap<String, Vec<(String, f64)>> {
    st.repo_dirs
        .keys()
        .map(|r| (r.clone(), st.popularity.counts(r, now)))
        .collect()
}
