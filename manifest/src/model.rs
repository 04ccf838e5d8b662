//! The manifest value types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{relpath::validate_rel_path, ManifestError};

/// A SHA-256 digest; hex in JSON and logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Sha256(out))
    }
    /// Base64 (standard alphabet), as the `Digest` and `Repr-Digest` headers want it.
    pub fn to_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <&str>::deserialize(d)?;
        Sha256::from_hex(s).ok_or_else(|| serde::de::Error::custom("sha256 must be 64 hex digits"))
    }
}

/// One file of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    pub sha256: Sha256,
    /// The generation in which these bytes last changed. A volunteer that fully holds
    /// generation `g >= changed_in` holds exactly these bytes.
    pub changed_in: u64,
    /// For large files: the info-hash of the torrent the server publishes for these bytes
    /// (`/artifacts/<sha256>.torrent`), so a fetched torrent can be checked against this
    /// signed manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btih: Option<Btih>,
}

/// A BitTorrent v1 info-hash; hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Btih(pub [u8; 20]);

impl Btih {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Btih {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl Serialize for Btih {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Btih {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <&str>::deserialize(d)?;
        let mut out = [0u8; 20];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| serde::de::Error::custom("btih must be 40 hex digits"))?;
        Ok(Btih(out))
    }
}

/// Everything one generation of one repository holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub repo: String,
    pub generation: u64,
    /// Seconds since the Unix epoch.
    pub published_at: u64,
    pub files: BTreeMap<String, Entry>,
}

/// One entry of a generation `generation` lists: a safe relative path, and bytes that changed
/// in a generation from 1 to that one.
pub(crate) fn check_entry(path: &str, e: &Entry, generation: u64) -> Result<(), ManifestError> {
    check_path(path)?;
    if e.changed_in > generation || e.changed_in == 0 {
        return Err(ManifestError::FutureChange {
            path: path.to_string(),
            changed_in: e.changed_in,
            generation,
        });
    }
    Ok(())
}

/// A path a manifest or a delta names must be a safe relative one.
pub(crate) fn check_path(path: &str) -> Result<(), ManifestError> {
    validate_rel_path(path).map_err(|reason| ManifestError::UnsafePath {
        path: path.to_string(),
        reason,
    })
}

impl Manifest {
    /// Check what a signature cannot: every key is a safe relative path and no entry claims to
    /// have changed after this generation.
    pub fn validate(&self) -> Result<(), ManifestError> {
        for (path, e) in &self.files {
            check_entry(path, e, self.generation)?;
        }
        Ok(())
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|e| e.size).sum()
    }

    /// Build the next generation from freshly scanned `(size, sha256)` per path: entries whose
    /// bytes are unchanged keep their `changed_in`, others get `generation`.
    pub fn next(
        repo: &str,
        previous: Option<&Manifest>,
        scanned: BTreeMap<String, (u64, Sha256)>,
        generation: u64,
        published_at: u64,
    ) -> Manifest {
        let files = scanned
            .into_iter()
            .map(|(path, (size, sha256))| {
                let changed_in = previous
                    .and_then(|p| p.files.get(&path))
                    .filter(|old| old.size == size && old.sha256 == sha256)
                    .map_or(generation, |old| old.changed_in);
                (
                    path,
                    Entry {
                        size,
                        sha256,
                        changed_in,
                        btih: None,
                    },
                )
            })
            .collect();
        Manifest {
            repo: repo.to_string(),
            generation,
            published_at,
            files,
        }
    }

    /// True when both list exactly the same paths with the same bytes.
    pub fn same_content(&self, other: &Manifest) -> bool {
        self.files.len() == other.files.len()
            && self
                .files
                .iter()
                .zip(other.files.iter())
                .all(|((pa, a), (pb, b))| pa == pb && a.size == b.size && a.sha256 == b.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> Sha256 {
        Sha256([b; 32])
    }

    #[test]
    fn next_keeps_changed_in_for_unchanged_bytes() {
        let g1 = Manifest::next(
            "r",
            None,
            [("a".to_string(), (1, h(1))), ("b".to_string(), (2, h(2)))].into(),
            1,
            0,
        );
        assert_eq!(g1.files["a"].changed_in, 1);
        let g2 = Manifest::next(
            "r",
            Some(&g1),
            [
                ("a".to_string(), (1, h(1))),
                ("b".to_string(), (2, h(3))),
                ("c".to_string(), (3, h(4))),
            ]
            .into(),
            2,
            0,
        );
        assert_eq!(g2.files["a"].changed_in, 1);
        assert_eq!(g2.files["b"].changed_in, 2);
        assert_eq!(g2.files["c"].changed_in, 2);
        assert!(!g2.same_content(&g1));
        assert!(g1.same_content(&g1.clone()));
        g2.validate().unwrap();
    }

    #[test]
    fn validate_refuses_hostile_paths_and_future_changes() {
        let mut m = Manifest::next("r", None, [("a".to_string(), (1, h(1)))].into(), 1, 0);
        m.files.insert(
            "../etc/passwd".into(),
            Entry {
                size: 1,
                sha256: h(1),
                changed_in: 1,
                btih: None,
            },
        );
        assert!(matches!(
            m.validate(),
            Err(ManifestError::UnsafePath { .. })
        ));
        let mut m = Manifest::next("r", None, [("a".to_string(), (1, h(1)))].into(), 1, 0);
        m.files.get_mut("a").unwrap().changed_in = 2;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::FutureChange { .. })
        ));
    }

    #[test]
    fn sha_hex_round_trip() {
        let s = h(0xab);
        assert_eq!(Sha256::from_hex(&s.to_hex()), Some(s));
        assert_eq!(Sha256::from_hex("zz"), None);
        assert_eq!(
            h(0).to_base64(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
    }
}
