//! Plain HTTP fetches for files where a torrent costs more than it saves, and the fallback
//! for everything else. Bytes stream to a `.part` file while being hashed; a `.part` left by
//! a killed run is resumed with a Range request; nothing is staged unless its SHA-256 matches.

use std::path::Path;

use manifest::Entry;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP {status} from {url}")]
    Status {
        status: reqwest::StatusCode,
        url: String,
    },
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{url} sent {got} bytes, the manifest says {want}")]
    Size { url: String, got: u64, want: u64 },
    #[error("{url} sent bytes whose SHA-256 does not match the signed manifest")]
    Mismatch { url: String },
    #[error("no source")]
    NoSource,
}

/// Where the bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: u64,
    pub from_peer: bool,
}

async fn hash_prefix(path: &Path) -> std::io::Result<(sha2::Sha256, u64)> {
    use tokio::io::AsyncReadExt;
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((h, 0)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h, n))
}

/// Fetch `url` (following redirects) into `staged`, via `part`. `server_base` tells origin
/// answers from a peer's.
pub async fn fetch_verified(
    client: &reqwest::Client,
    url: &str,
    server_base: &str,
    entry: &Entry,
    part: &Path,
    staged: &Path,
) -> Result<Fetched, FetchError> {
    let (mut hasher, mut have) = hash_prefix(part).await?;
    if have > entry.size {
        tokio::fs::remove_file(part).await?;
        hasher = sha2::Sha256::new();
        have = 0;
    }
    let mut req = client.get(url);
    if have > 0 && have < entry.size {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(|source| FetchError::Http {
        url: url.into(),
        source,
    })?;
    let status = resp.status();
    let from_peer = !resp.url().as_str().starts_with(server_base);
    let mut file = if status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0 {
        tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await?
    } else if status.is_success() {
        // A full answer (the server ignored the range, or there was nothing to resume).
        hasher = sha2::Sha256::new();
        have = 0;
        tokio::fs::File::create(part).await?
    } else if have == entry.size {
        // Nothing left to fetch (416 on a complete part).
        tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await?
    } else {
        return Err(FetchError::Status {
            status,
            url: url.into(),
        });
    };
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|source| FetchError::Http {
        url: url.into(),
        source,
    })? {
        if have + got + chunk.len() as u64 > entry.size {
            drop(file);
            let _ = tokio::fs::remove_file(part).await;
            return Err(FetchError::Size {
                url: url.into(),
                got: have + got + chunk.len() as u64,
                want: entry.size,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
        got += chunk.len() as u64;
    }
    file.sync_all().await?;
    drop(file);
    if have + got != entry.size {
        return Err(FetchError::Size {
            url: url.into(),
            got: have + got,
            want: entry.size,
        });
    }
    if hasher.finalize().as_slice() != entry.sha256.0 {
        let _ = tokio::fs::remove_file(part).await;
        return Err(FetchError::Mismatch { url: url.into() });
    }
    tokio::fs::rename(part, staged).await?;
    Ok(Fetched {
        bytes: got,
        from_peer,
    })
}
