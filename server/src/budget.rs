//! A volunteer's disk budget, as the server reads it: its announce says only the budget and
//! the generation whose popularity filled it (`$ budget <bytes> @ <g>`); the server works out
//! the same files from generation `g`'s signed manifest and signed popularity
//! (`manifest::popularity::fill_budget`), off the request path, and puts them in the
//! registry within a second or so. Until then the volunteer is sent customers only for the
//! repository's metadata: never a file it may not hold.
//!
//! Volunteers with the same patterns and budget share the work: what was worked out is kept
//! per repository and part, and handed to the next one at its announce.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use balance::registry::Part;
use manifest::popularity::{fill_budget, Popularity};
use manifest::select::Selection;
use manifest::SignedManifest;

use crate::locks::lock;
use crate::state::AppState;

/// Parts worked out, kept before the cache starts again.
const KEEP: usize = 256;

/// Budget parts worked out, and those that could not be (logged once each).
#[derive(Debug, Default)]
pub struct Budgets {
    known: Mutex<HashMap<(String, String), Arc<Part>>>,
    failed: Mutex<HashSet<(String, String)>>,
}

/// How often the registry is looked through for budgets to work out.
const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Look through the registry every [`EVERY`] for volunteers holding a budget whose files are
/// not known, and put them in place: at once if another volunteer's same part was worked
/// out, else once they are (one at a time, off the request path).
pub async fn run(st: Arc<AppState>) {
    loop {
        tokio::time::sleep(EVERY).await;
        for (volunteer, repo, text, selection) in unchosen(&st) {
            let key = (repo, text);
            let known = lock(&st.budgets.known).get(&key).cloned();
            let part = match known {
                Some(p) => p,
                None => {
                    let Some(g) = selection.budget().map(|b| b.from).filter(|&g| g > 0) else {
                        continue; // not filled yet: it holds the metadata, and says so
                    };
                    match work_out(&st, &key.0, g, &key.1, selection).await {
                        Ok(p) => {
                            tracing::info!(volunteer, repo = %key.0, generation = g, "a volunteer's budget worked out into its files");
                            let mut known = lock(&st.budgets.known);
                            if known.len() >= KEEP {
                                known.clear();
                            }
                            known.insert(key.clone(), p.clone());
                            p
                        }
                        Err(why) => {
                            if lock(&st.budgets.failed).insert(key.clone()) {
                                tracing::warn!(volunteer, repo = %key.0, generation = g, error = %why, "cannot work out a volunteer's budget; it is sent customers for the repository's metadata only");
                            }
                            continue;
                        }
                    }
                }
            };
            st.balancer.registry().set_part(&volunteer, &key.0, part);
        }
    }
}

/// Volunteers, repositories and parts whose budget's files are not known.
fn unchosen(st: &AppState) -> Vec<(String, String, String, Selection)> {
    let reg = st.balancer.registry();
    let mut out = Vec::new();
    for v in reg.all() {
        for (repo, _, part) in v.generations.with_parts() {
            if let Some(p) = part.filter(|p| p.selection.is_unchosen()) {
                out.push((
                    v.id.clone(),
                    repo.to_string(),
                    p.text.clone(),
                    p.selection.clone(),
                ));
            }
        }
    }
    out
}

/// The files `selection`'s budget holds by generation `g`'s popularity.
async fn work_out(
    st: &AppState,
    repo: &str,
    g: u64,
    text: &str,
    selection: Selection,
) -> Result<Arc<Part>, String> {
    let manifest = crate::api::signed_manifest(st, repo, g)
        .await
        .map_err(|e| e.to_string())?;
    let table = crate::popularity::signed_table(st, repo, g)
        .await
        .map_err(|e| e.to_string())?;
    let (key, repo, text) = (st.key.public(), repo.to_string(), text.to_string());
    tokio::task::spawn_blocking(move || {
        let m = SignedManifest::verify(&manifest, &key).map_err(|e| e.to_string())?;
        let p = Popularity::verify_expected(&table, &key, &repo, g).map_err(|e| e.to_string())?;
        let bytes = selection.budget().map_or(0, |b| b.bytes);
        let files = m.files.iter().map(|(path, e)| (path.as_str(), e.size));
        let chosen = fill_budget(&selection, files, &p, bytes);
        Ok(Arc::new(Part {
            selection: selection.chosen_by(g, chosen),
            text,
        }))
    })
    .await
    .map_err(|e| e.to_string())?
}
