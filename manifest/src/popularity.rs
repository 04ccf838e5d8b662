//! A generation's popularity, signed: how much customers asked for each file lately, as the
//! server counted it when the generation was current. A volunteer with a disk budget holds
//! the most asked-for files that fit ([`fill_budget`]); the server derives the same files
//! from the same signed table, so a budget is announced as its size, not as a list.
//!
//! The fields are named apart from a manifest's and a delta's (`popularity_of`; unknown
//! fields refused), so none of the three signed documents parses as another.

use std::collections::{HashMap, HashSet};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::model::check_path;
use crate::select::{is_metadata, Selection};
use crate::{ManifestError, SignedManifest};

/// Requests per file of generation `generation` of repository `popularity_of`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Popularity {
    pub popularity_of: String,
    pub generation: u64,
    /// Each request counted half as much this long after it was made.
    pub half_life_secs: u64,
    /// When the counts were taken (seconds since the Unix epoch).
    pub taken_at: u64,
    /// Files asked for, most first (ties by path), each with its decayed count; files not
    /// listed were not asked for.
    pub files: Vec<(String, f64)>,
}

impl Popularity {
    /// From counts by path: sorted most asked for first, ties by path, so the same counts
    /// always make the same table.
    pub fn new(
        repo: &str,
        generation: u64,
        half_life_secs: u64,
        taken_at: u64,
        counts: impl IntoIterator<Item = (String, f64)>,
    ) -> Popularity {
        let mut files: Vec<(String, f64)> = counts
            .into_iter()
            .filter(|(_, n)| n.is_finite() && *n > 0.0)
            .collect();
        files.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Popularity {
            popularity_of: repo.to_string(),
            generation,
            half_life_secs,
            taken_at,
            files,
        }
    }

    /// Check what a signature cannot: safe paths, each once, counts finite and positive, in
    /// order.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut seen = HashSet::new();
        let bad = |why: String| ManifestError::Mismatch {
            expected: "a popularity table: each path once, counts positive, most first".into(),
            found: why,
        };
        for (i, (path, n)) in self.files.iter().enumerate() {
            check_path(path)?;
            if !(n.is_finite() && *n > 0.0) {
                return Err(bad(format!("`{path}` counted {n}")));
            }
            if !seen.insert(path.as_str()) {
                return Err(bad(format!("`{path}` twice")));
            }
            if i > 0 && self.files[i - 1].1 < *n {
                return Err(bad(format!("`{path}` out of order")));
            }
        }
        Ok(())
    }

    /// Verify a signed table and check it is the one asked for: of `repo`, for `generation`.
    pub fn verify_expected(
        bytes: &[u8],
        key: &VerifyingKey,
        repo: &str,
        generation: u64,
    ) -> Result<Popularity, ManifestError> {
        let payload = SignedManifest::verified_payload(bytes, key)?;
        let p: Popularity = serde_json::from_str(&payload)?;
        p.validate()?;
        if p.popularity_of != repo || p.generation != generation {
            return Err(ManifestError::Mismatch {
                expected: format!("the popularity of {repo} generation {generation}"),
                found: format!("that of {} generation {}", p.popularity_of, p.generation),
            });
        }
        Ok(p)
    }
}

/// The files a budget of `bytes` holds of a generation whose files and sizes are `files`:
/// the repository's metadata always (its bytes counted first), then, of the files `part`'s
/// patterns choose, the most asked for first (ties by path), each that still fits; files
/// never asked for come last, in path order, while any fit. The same inputs always give the
/// same files: a volunteer and the server work it out apart.
pub fn fill_budget<'a>(
    part: &Selection,
    files: impl IntoIterator<Item = (&'a str, u64)>,
    popularity: &Popularity,
    bytes: u64,
) -> HashSet<String> {
    let rank: HashMap<&str, usize> = popularity
        .files
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.as_str(), i))
        .collect();
    let mut used = 0u64;
    let mut chosen = HashSet::new();
    let mut candidates: Vec<(usize, &str, u64)> = Vec::new();
    for (path, size) in files {
        if is_metadata(path) {
            used = used.saturating_add(size);
            chosen.insert(path.to_string());
        } else if part.patterns_hold(path) {
            candidates.push((rank.get(path).copied().unwrap_or(usize::MAX), path, size));
        }
    }
    candidates.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    for (_, path, size) in candidates {
        if used.saturating_add(size) <= bytes {
            used += size;
            chosen.insert(path.to_string());
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerKey;

    fn table() -> Popularity {
        Popularity::new(
            "deb",
            3,
            86_400,
            1000,
            [
                ("pool/b.deb".to_string(), 5.0),
                ("pool/a.deb".to_string(), 9.0),
                ("pool/c.deb".to_string(), 5.0),
                ("big/x.iso".to_string(), 7.0),
                ("pool/never.deb".to_string(), 0.0),
            ],
        )
    }

    #[test]
    fn the_table_is_ordered_signed_and_checked() {
        let t = table();
        let order: Vec<&str> = t.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            order,
            ["pool/a.deb", "big/x.iso", "pool/b.deb", "pool/c.deb"]
        );
        let key = ServerKey::from_bytes(&[7; 32]);
        let signed = serde_json::to_vec(&key.sign_value(&t).unwrap()).unwrap();
        let vk = key.public();
        assert_eq!(
            Popularity::verify_expected(&signed, &vk, "deb", 3).unwrap(),
            t
        );
        assert!(Popularity::verify_expected(&signed, &vk, "deb", 2).is_err());
        assert!(Popularity::verify_expected(&signed, &vk, "rpm", 3).is_err());
        // A manifest is not a table, nor a table a manifest.
        let m = crate::Manifest::next("deb", None, Default::default(), 3, 0);
        let signed_m = serde_json::to_vec(&key.sign_value(&m).unwrap()).unwrap();
        assert!(Popularity::verify_expected(&signed_m, &vk, "deb", 3).is_err());
        assert!(SignedManifest::verify(&signed, &vk).is_err());
        // Out of order, or a path twice, is refused.
        let mut bad = t.clone();
        bad.files.swap(0, 1);
        assert!(bad.validate().is_err());
        let mut bad = t;
        bad.files.push(("pool/a.deb".into(), 1.0));
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_budget_holds_the_metadata_then_the_most_asked_for_that_fit() {
        let files = [
            ("dists/stable/Release", 10),
            ("pool/a.deb", 50),
            ("big/x.iso", 500),
            ("pool/b.deb", 30),
            ("pool/c.deb", 30),
            ("pool/d.deb", 5),
        ];
        let all = Selection::default();
        let chosen = |part: &Selection, bytes| {
            let mut v: Vec<String> = fill_budget(part, files, &table(), bytes)
                .into_iter()
                .collect();
            v.sort();
            v
        };
        // 10 of metadata, a (50); x.iso does not fit, b (30) does; c would not; d, never
        // asked for, fills what is left.
        assert_eq!(
            chosen(&all, 95),
            [
                "dists/stable/Release",
                "pool/a.deb",
                "pool/b.deb",
                "pool/d.deb"
            ]
        );
        // Enough for everything: everything.
        assert_eq!(chosen(&all, 10_000).len(), files.len());
        // Nothing but the metadata fits: the metadata anyway.
        assert_eq!(chosen(&all, 0), ["dists/stable/Release"]);
        // Patterns first: of pool/ only.
        let pool = Selection::new(&["pool/**".to_string()], &[]).unwrap();
        assert!(!chosen(&pool, 10_000).contains(&"big/x.iso".to_string()));
    }
}
