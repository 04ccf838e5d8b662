//! Fetch one file from one source into the cache, hashing as it streams to disk. It gets its
//! name in the cache only if size and SHA-256 match what the server published.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::cache::Cache;

/// What the server published for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub sha256: [u8; 32],
    pub size: Option<u64>,
}

/// Why a source was not used. Every variant but `Local` is the source's doing.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered {0}")]
    Status(u16),
    #[error("sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("transfer broke off: {0}")]
    Broken(String),
    #[error("sent {got} bytes, the server published {want}")]
    WrongSize { got: u64, want: u64 },
    #[error("sent more than {0} bytes")]
    TooLarge(u64),
    #[error("bytes do not match the published SHA-256")]
    WrongDigest,
    #[error("local error: {0}")]
    Local(String),
}

/// Download `url` and keep it only if it is the published file.
pub async fn verified(
    client: &reqwest::Client,
    url: &str,
    expect: &Expected,
    cache: &Cache,
    max_bytes: u64,
    stall: Duration,
) -> Result<PathBuf, FetchError> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| FetchError::Unreachable(e.to_string()))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status(resp.status().as_u16()));
    }
    let limit = expect.size.unwrap_or(max_bytes);
    if let (Some(want), Some(got)) = (expect.size, resp.content_length()) {
        if want != got {
            return Err(FetchError::WrongSize { got, want });
        }
    }
    let partial = cache.partial_path();
    let result = stream_to(resp, &partial, limit, stall).await;
    let outcome = match result {
        Ok((got, digest)) => {
            if expect.size.is_some_and(|want| want != got) {
                Err(FetchError::WrongSize {
                    got,
                    want: expect.size.unwrap_or(0),
                })
            } else if digest != expect.sha256 {
                Err(FetchError::WrongDigest)
            } else {
                cache
                    .insert(&partial, &expect.sha256)
                    .map_err(|e| FetchError::Local(e.to_string()))
            }
        }
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    outcome
}

async fn stream_to(
    resp: reqwest::Response,
    path: &std::path::Path,
    limit: u64,
    stall: Duration,
) -> Result<(u64, [u8; 32]), FetchError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| FetchError::Local(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut body = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout(stall, body.next())
            .await
            .map_err(|_| FetchError::Stalled(stall))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| FetchError::Broken(e.to_string()))?;
        got += chunk.len() as u64;
        if got > limit {
            return Err(FetchError::TooLarge(limit));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| FetchError::Local(e.to_string()))?;
    }
    file.flush()
        .await
        .map_err(|e| FetchError::Local(e.to_string()))?;
    Ok((got, hasher.finalize().into()))
}
