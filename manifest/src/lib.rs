//! Signed repository manifests: what a generation of a repository holds, byte for byte.
//!
//! A manifest lists, for every path of one generation, its size, SHA-256 and `changed_in` (the
//! generation in which those bytes last changed). The server signs it with ed25519; volunteers
//! and customers' proxies trust a byte only if it hashes to what a signed manifest says.
//!
//! Modules: [`model`] the value types, [`delta`] the signed changes between two generations,
//! [`record`] a scan's findings kept compact from one pull to the next, [`beneath`] opening a listed path strictly inside its tree, [`signing`] keys and the signed envelope, [`scan`]
//! hashing a directory tree incrementally, [`walk`] walking it on every core, [`relpath`] the safe relative paths
//! every manifest key must be.

pub mod beneath;
pub mod delta;
pub mod model;
pub mod popularity;
pub mod record;
pub mod relpath;
pub mod scan;
pub mod select;
pub mod signing;
pub mod walk;

pub use model::{Btih, Entry, Manifest, Sha256};
pub use relpath::validate_rel_path;
pub use signing::{KeyFingerprint, ServerKey, SignedManifest};

/// Errors from reading, verifying or building manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest signature does not verify with the server's key")]
    BadSignature,
    #[error("malformed signature or key: {0}")]
    BadKey(String),
    #[error("unsafe path `{path}` in manifest: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("manifest is for {found}, expected {expected}")]
    Mismatch { expected: String, found: String },
    #[error("entry `{path}` changed_in {changed_in} is after the generation {generation}")]
    FutureChange {
        path: String,
        changed_in: u64,
        generation: u64,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl ManifestError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ManifestError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
