//! A manifest delta: what changed between two generations of a repository, signed like a
//! manifest. A pull whose tree holds generation `from` exactly (as its scan record shows)
//! fetches the delta to the newest generation instead of the whole manifest: for a tree of
//! millions of files, a few kilobytes instead of hundreds of megabytes, and nothing of the
//! whole to hold in memory.
//!
//! The delta's fields are named apart from a manifest's (`delta_of`, not `repo`; unknown
//! fields refused), so a signed delta never parses as a manifest, nor a manifest as a delta.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::model::{check_entry, check_path};
use crate::{Entry, Manifest, ManifestError, SignedManifest};

/// The changes from generation `from` to generation `to` of repository `delta_of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    pub delta_of: String,
    pub from: u64,
    pub to: u64,
    /// When `to` was published (seconds since the Unix epoch).
    pub published_at: u64,
    /// How many files `to` lists, and their bytes together.
    pub file_count: u64,
    pub total_bytes: u64,
    /// Every path whose entry in `to` is not its entry in `from` (new ones included).
    pub changed: BTreeMap<String, Entry>,
    /// Paths `from` lists and `to` does not.
    pub removed: Vec<String>,
}

impl Delta {
    /// What changed from `old` to `new` (both of one repository).
    pub fn between(old: &Manifest, new: &Manifest) -> Delta {
        let changed = new
            .files
            .iter()
            .filter(|(p, e)| old.files.get(*p) != Some(e))
            .map(|(p, e)| (p.clone(), *e))
            .collect();
        let removed = old
            .files
            .keys()
            .filter(|p| !new.files.contains_key(*p))
            .cloned()
            .collect();
        Delta {
            delta_of: new.repo.clone(),
            from: old.generation,
            to: new.generation,
            published_at: new.published_at,
            file_count: new.files.len() as u64,
            total_bytes: new.total_bytes(),
            changed,
            removed,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }

    /// Check what a signature cannot: safe paths, generations in order, no entry changed after
    /// `to`, no path both changed and removed.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.from > self.to || self.from == 0 {
            return Err(ManifestError::Mismatch {
                expected: "a delta from an earlier generation".into(),
                found: format!("a delta from {} to {}", self.from, self.to),
            });
        }
        for (path, e) in &self.changed {
            check_entry(path, e, self.to)?;
        }
        for path in &self.removed {
            check_path(path)?;
            if self.changed.contains_key(path) {
                return Err(ManifestError::Mismatch {
                    expected: "a path either changed or removed".into(),
                    found: format!("`{path}` both"),
                });
            }
        }
        Ok(())
    }

    /// Verify a signed delta and check it is the one asked for: of `repo`, from `from`.
    pub fn verify_expected(
        bytes: &[u8],
        key: &VerifyingKey,
        repo: &str,
        from: u64,
    ) -> Result<Delta, ManifestError> {
        let payload = SignedManifest::verified_payload(bytes, key)?;
        let d: Delta = serde_json::from_str(&payload)?;
        d.validate()?;
        if d.delta_of != repo || d.from != from {
            return Err(ManifestError::Mismatch {
                expected: format!("{repo} since generation {from}"),
                found: format!("{} since generation {}", d.delta_of, d.from),
            });
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ServerKey, Sha256};

    fn gen(g: u64, previous: Option<&Manifest>, files: &[(&str, u8)]) -> Manifest {
        let scanned = files
            .iter()
            .map(|(p, b)| (p.to_string(), (*b as u64, Sha256([*b; 32]))))
            .collect();
        Manifest::next("deb", previous, scanned, g, 100 + g)
    }

    #[test]
    fn holds_what_changed_and_what_went() {
        let g1 = gen(1, None, &[("a", 1), ("b", 2), ("c", 3)]);
        let g2 = gen(2, Some(&g1), &[("a", 1), ("b", 9), ("d", 4)]);
        let d = Delta::between(&g1, &g2);
        assert_eq!(d.changed.keys().collect::<Vec<_>>(), ["b", "d"]);
        assert_eq!(d.removed, ["c"]);
        assert_eq!((d.from, d.to, d.file_count, d.total_bytes), (1, 2, 3, 14));
        assert!(Delta::between(&g2, &g2).is_empty());
    }

    #[test]
    fn signed_deltas_and_manifests_are_never_taken_for_each_other() {
        let key = ServerKey::from_bytes(&[5; 32]);
        let g1 = gen(1, None, &[("a", 1)]);
        let g2 = gen(2, Some(&g1), &[("a", 2)]);
        let d = Delta::between(&g1, &g2);
        let signed_delta = key.sign_value(&d).unwrap().to_bytes().unwrap();
        let signed_manifest = key.sign(&g2).unwrap().to_bytes().unwrap();
        let public = key.public();
        assert_eq!(
            Delta::verify_expected(&signed_delta, &public, "deb", 1).unwrap(),
            d
        );
        assert!(SignedManifest::verify(&signed_delta, &public).is_err());
        assert!(Delta::verify_expected(&signed_manifest, &public, "deb", 1).is_err());
        // Another repository's, or from another generation: not the one asked for.
        assert!(Delta::verify_expected(&signed_delta, &public, "rpm", 1).is_err());
        assert!(Delta::verify_expected(&signed_delta, &public, "deb", 2).is_err());
        // Another key's.
        let other = ServerKey::from_bytes(&[6; 32]).public();
        assert!(Delta::verify_expected(&signed_delta, &other, "deb", 1).is_err());
    }

    #[test]
    fn unsafe_or_inconsistent_deltas_are_refused() {
        let key = ServerKey::from_bytes(&[5; 32]);
        let g1 = gen(1, None, &[("a", 1)]);
        let g2 = gen(2, Some(&g1), &[("b", 2)]);
        let good = Delta::between(&g1, &g2);
        let mut hostile = good.clone();
        hostile.removed.push("../etc/passwd".into());
        let mut both = good.clone();
        both.removed.push("b".into());
        let mut future = good.clone();
        future.changed.get_mut("b").unwrap().changed_in = 3;
        let mut backwards = good.clone();
        backwards.from = 3;
        for d in [hostile, both, future, backwards] {
            let bytes = key.sign_value(&d).unwrap().to_bytes().unwrap();
            assert!(
                Delta::verify_expected(&bytes, &key.public(), "deb", d.from).is_err(),
                "{d:?}"
            );
        }
    }
}
