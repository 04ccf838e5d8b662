//! The server's ed25519 key and the signed manifest envelope.
//!
//! The envelope carries the manifest JSON as a string and a signature over exactly those
//! bytes, so verification never depends on re-serialising JSON the same way twice.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{Manifest, ManifestError};

/// The first 16 bytes of SHA-256 over the server's public key, in hex. Enrollment tokens carry
/// it, so a volunteer can check the key it downloads from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFingerprint(pub String);

impl KeyFingerprint {
    pub fn of(key: &VerifyingKey) -> Self {
        let d = sha2::Sha256::digest(key.as_bytes());
        KeyFingerprint(hex::encode(&d[..16]))
    }
}

/// The server's signing key, kept in the data directory.
pub struct ServerKey {
    key: SigningKey,
}

impl ServerKey {
    /// Load the key at `path`, or create one (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, ManifestError> {
        match fs::read(path) {
            Ok(bytes) => {
                let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    ManifestError::BadKey(format!("{} must hold exactly 32 bytes", path.display()))
                })?;
                Ok(ServerKey {
                    key: SigningKey::from_bytes(&arr),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                write_private(path, key.as_bytes()).map_err(|e| ManifestError::io(path, e))?;
                Ok(ServerKey { key })
            }
            Err(e) => Err(ManifestError::io(path, e)),
        }
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        ServerKey {
            key: SigningKey::from_bytes(bytes),
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public().as_bytes())
    }

    pub fn fingerprint(&self) -> KeyFingerprint {
        KeyFingerprint::of(&self.public())
    }

    pub fn sign(&self, manifest: &Manifest) -> Result<SignedManifest, ManifestError> {
        self.sign_value(manifest)
    }

    /// Sign any value's JSON in the manifests' envelope (a manifest, a delta: their fields
    /// differ, so neither parses as the other).
    pub fn sign_value(
        &self,
        value: &impl serde::Serialize,
    ) -> Result<SignedManifest, ManifestError> {
        let payload = serde_json::to_string(value)?;
        let signature = self.key.sign(payload.as_bytes());
        Ok(SignedManifest {
            payload,
            signature: hex::encode(signature.to_bytes()),
        })
    }
}

/// Write a secret file readable by its owner only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Parse a hex public key.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, ManifestError> {
    let mut arr = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut arr)
        .map_err(|_| ManifestError::BadKey("public key must be 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| ManifestError::BadKey(e.to_string()))
}

/// A manifest as stored and served: the JSON payload and a signature over its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedManifest {
    pub payload: String,
    pub signature: String,
}

impl SignedManifest {
    pub fn to_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// The payload of a signed envelope (a manifest's or a [`crate::delta::Delta`]'s), once
    /// its signature verified.
    pub fn verified_payload(bytes: &[u8], key: &VerifyingKey) -> Result<String, ManifestError> {
        let env: SignedManifest = serde_json::from_slice(bytes)?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&env.signature, &mut sig).map_err(|_| ManifestError::BadSignature)?;
        key.verify(env.payload.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| ManifestError::BadSignature)?;
        Ok(env.payload)
    }

    /// Verify the signature, then parse and validate the manifest it covers.
    pub fn verify(bytes: &[u8], key: &VerifyingKey) -> Result<Manifest, ManifestError> {
        let payload = Self::verified_payload(bytes, key)?;
        let manifest: Manifest = serde_json::from_str(&payload)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Verify and check that it is the manifest asked for.
    pub fn verify_expected(
        bytes: &[u8],
        key: &VerifyingKey,
        repo: &str,
        generation: Option<u64>,
    ) -> Result<Manifest, ManifestError> {
        let m = Self::verify(bytes, key)?;
        let gen_ok = generation.is_none_or(|g| g == m.generation);
        if m.repo != repo || !gen_ok {
            return Err(ManifestError::Mismatch {
                expected: format!("{repo} generation {generation:?}"),
                found: format!("{} generation {}", m.repo, m.generation),
            });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sha256;

    fn sample() -> Manifest {
        Manifest::next(
            "deb",
            None,
            [("a/b".to_string(), (3, Sha256([7; 32])))].into(),
            1,
            42,
        )
    }

    #[test]
    fn sign_and_verify() {
        let key = ServerKey::from_bytes(&[1; 32]);
        let bytes = key.sign(&sample()).unwrap().to_bytes().unwrap();
        let m = SignedManifest::verify_expected(&bytes, &key.public(), "deb", Some(1)).unwrap();
        assert_eq!(m, sample());
        assert!(matches!(
            SignedManifest::verify_expected(&bytes, &key.public(), "other", None),
            Err(ManifestError::Mismatch { .. })
        ));
    }

    #[test]
    fn tampering_and_wrong_key_fail() {
        let key = ServerKey::from_bytes(&[1; 32]);
        let signed = key.sign(&sample()).unwrap();
        let mut tampered = signed.clone();
        tampered.payload = tampered.payload.replace("\"size\":3", "\"size\":4");
        assert_ne!(tampered.payload, signed.payload);
        assert!(matches!(
            SignedManifest::verify(&tampered.to_bytes().unwrap(), &key.public()),
            Err(ManifestError::BadSignature)
        ));
        let other = ServerKey::from_bytes(&[2; 32]);
        assert!(matches!(
            SignedManifest::verify(&signed.to_bytes().unwrap(), &other.public()),
            Err(ManifestError::BadSignature)
        ));
        assert!(SignedManifest::verify(b"{not json", &key.public()).is_err());
        assert!(SignedManifest::verify(b"", &key.public()).is_err());
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.key");
        let a = ServerKey::load_or_create(&p).unwrap();
        let b = ServerKey::load_or_create(&p).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        assert_eq!(parse_public_key(&a.public_hex()).unwrap(), a.public());
        std::fs::write(&p, b"short").unwrap();
        assert!(ServerKey::load_or_create(&p).is_err());
        assert_eq!(a.fingerprint().0.len(), 32);
    }
}
