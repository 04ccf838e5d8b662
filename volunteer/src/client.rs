//! Talking to the central server: enrollment, server info, manifests, announces.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::VerifyingKey;
use manifest::{KeyFingerprint, Manifest, SignedManifest};
use serde::Deserialize;

use crate::credential::{token_fingerprint, Credential};

/// Manifests are bounded: a hostile or broken server must not exhaust memory.
const MAX_MANIFEST_BYTES: usize = 512 << 20;

#[derive(Clone)]
pub struct ServerClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct EnrollResponse {
    volunteer_id: String,
    name: String,
    secret: String,
    public_key: String,
    /// The mirror's servers, when it has several (absent from a server of before).
    #[serde(default)]
    servers: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ServerInfo {
    pub public_key: String,
    pub fingerprint: String,
    pub interval_secs: u64,
    /// Repository → newest generation.
    #[serde(default)]
    pub repos: std::collections::BTreeMap<String, u64>,
    /// Where customers reach the server (empty from an older server).
    #[serde(default)]
    pub public_url: String,
    /// Where customers reach it over HTTPS, if it serves HTTPS.
    #[serde(default)]
    pub public_tls_url: Option<String>,
}

/// What an announce told us.
#[derive(Debug, Clone)]
pub struct AnnounceReply {
    pub interval: Duration,
    pub latest_generation: u64,
    /// The mirror's servers (`ms_servers`), when it has several: announce to each.
    pub servers: Option<Vec<String>>,
}

impl ServerClient {
    pub fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ServerClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn error_text(resp: reqwest::Response) -> String {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        format!("{status}: {}", body.trim())
    }

    /// Exchange a one-time token for a durable credential, checking that the server's key is
    /// the one the token vouches for.
    pub async fn enroll(&self, token: &str, url: &str) -> Result<Credential> {
        let expected_fp = token_fingerprint(token)?;
        // A token is a secret of the server that made it: never show it to another one.
        let info = self.info().await?;
        if !info.fingerprint.eq_ignore_ascii_case(expected_fp) {
            bail!(
                "this token was made by another server (key fingerprint {expected_fp}); the \
                 server at {} has {}. Not sending it: check --server",
                self.base,
                info.fingerprint
            );
        }
        let resp = self
            .http
            .post(format!("{}/api/enroll", self.base))
            .json(&serde_json::json!({ "token": token, "url": url }))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !resp.status().is_success() {
            bail!("enrollment refused: {}", Self::error_text(resp).await);
        }
        let r: EnrollResponse = resp.json().await.context("bad enrollment response")?;
        let key = manifest::signing::parse_public_key(&r.public_key)?;
        if KeyFingerprint::of(&key).0 != expected_fp {
            bail!("the server's key does not match the fingerprint in the token: wrong server or tampered response");
        }
        Ok(Credential {
            server: self.base.clone(),
            volunteer_id: r.volunteer_id,
            name: r.name,
            secret: r.secret,
            public_key: r.public_key,
            servers: r.servers,
        })
    }

    pub async fn info(&self) -> Result<ServerInfo> {
        let resp = self
            .http
            .get(format!("{}/api/info", self.base))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !resp.status().is_success() {
            bail!("server info: {}", Self::error_text(resp).await);
        }
        Ok(resp.json().await?)
    }

    /// The body at `path` under the server, at most [`MAX_MANIFEST_BYTES`]; `what` names it
    /// in errors.
    async fn signed_document(&self, path: &str, what: &str) -> Result<Vec<u8>> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !resp.status().is_success() {
            bail!("{what}: {}", Self::error_text(resp).await);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                bail!("{what} is larger than {MAX_MANIFEST_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Fetch and verify a manifest (`which` is a generation number or `latest`).
    pub async fn manifest(&self, key: &VerifyingKey, repo: &str, which: &str) -> Result<Manifest> {
        let what = format!("manifest {repo}/{which}");
        let body = self
            .signed_document(&format!("/manifests/{repo}/{which}"), &what)
            .await?;
        let generation = which.parse::<u64>().ok();
        SignedManifest::verify_expected(&body, key, repo, generation)
            .with_context(|| format!("{what} failed verification"))
    }

    /// Fetch and verify generation `generation`'s popularity (what a budget is filled by).
    pub async fn popularity(
        &self,
        key: &VerifyingKey,
        repo: &str,
        generation: u64,
    ) -> Result<manifest::popularity::Popularity> {
        let what = format!("popularity of {repo} generation {generation}");
        let body = self
            .signed_document(&format!("/manifests/{repo}/{generation}/popularity"), &what)
            .await?;
        manifest::popularity::Popularity::verify_expected(&body, key, repo, generation)
            .with_context(|| format!("{what} failed verification"))
    }

    /// A sync artifact (`<sha256>.torrent` or `.sig`).
    pub async fn artifact(&self, sha256_hex: &str, ext: &str) -> Result<bytes::Bytes> {
        let resp = self
            .http
            .get(format!("{}/artifacts/{sha256_hex}.{ext}", self.base))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !resp.status().is_success() {
            bail!(
                "artifact {sha256_hex}.{ext}: {}",
                Self::error_text(resp).await
            );
        }
        Ok(resp.bytes().await?)
    }

    /// Send a signed announce query; returns the interval and newest generation.
    pub async fn announce(&self, signed_query: &str) -> Result<AnnounceReply> {
        let resp = self
            .http
            .get(format!("{}/announce?{signed_query}", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("announce: HTTP {status}");
        }
        let v =
            bencode::decode(&body).map_err(|e| anyhow!("announce reply is not bencode: {e}"))?;
        if let Some(reason) = v.get("failure reason").and_then(|r| r.as_bytes()) {
            bail!("announce refused: {}", String::from_utf8_lossy(reason));
        }
        let interval = v
            .get("interval")
            .and_then(|i| i.as_int())
            .unwrap_or(5)
            .clamp(1, 3600) as u64;
        let latest = v
            .get("ms_generation")
            .and_then(|g| g.as_int())
            .unwrap_or(0)
            .max(0) as u64;
        let servers = v.get("ms_servers").and_then(|l| l.as_list()).map(|l| {
            l.iter()
                .filter_map(|u| u.as_bytes())
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .collect()
        });
        Ok(AnnounceReply {
            interval: Duration::from_secs(interval),
            latest_generation: latest,
            servers,
        })
    }
}
