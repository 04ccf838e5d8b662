//! A realistic server state: many enrolled volunteers, each announcing with a signed report
//! that it holds the newest generation. They go through the real enrollment and announce
//! paths; only their URLs lead nowhere, since the bench never follows a redirect.

use std::path::Path;

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use tracker::mirror::{build_mirror_query, sign_query, MirrorReport};
use volunteer::client::ServerClient;

/// An enrolled volunteer the bench announces for.
pub struct Member {
    pub id: String,
    pub secret: Vec<u8>,
    pub url: String,
    /// URLs it announces beside `url` (an `https://` one for the HTTPS redirects).
    pub other_urls: Vec<String>,
}

impl Member {
    /// Its signed announce (the `i`-th member's peer id, sequence number `seq`): it holds
    /// `generation` of `repo`, is idle, and has a 100 Mbit/s uplink.
    pub fn signed_announce(&self, repo: &str, i: usize, generation: u64, seq: u64) -> String {
        let report = MirrorReport {
            volunteer: self.id.clone(),
            seq,
            generation,
            customer_conns: 0,
            sync_conns: 0,
            upload_bps: 0,
            // Room for every customer the bench sends within the connection window, so the
            // run measures redirecting, not admission control.
            capacity: 1_000_000,
            url: self.url.clone(),
            sync_bps: 0,
            // A declared 100 Mbit/s uplink: `feedback` then weighs each candidate by its
            // link model, as it does for volunteers that declare theirs.
            link_bps: 12_500_000,
            paused: false,
            part: String::new(),
            nets: String::new(),
            private: false,
            other_urls: self.other_urls.clone(),
        };
        let mut peer_id = [b'-'; 20];
        peer_id[..8].copy_from_slice(b"-MSBNCH-");
        peer_id[8..16].copy_from_slice(format!("{:08}", i % 100_000_000).as_bytes());
        sign_query(
            &self.secret,
            &build_mirror_query(repo, peer_id, 8080, &report),
        )
    }
}

/// Enroll `n` volunteers named `bench-0000…`: each token made by the server's
/// `/admin/enroll` (so the bench never opens the database itself, which a build of another
/// schema version would refuse afterwards), then spent on its `/api/enroll`.
pub async fn enroll(server_url: &str, data_dir: &Path, n: usize) -> Result<Vec<Member>> {
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))
        .with_context(|| format!("reading the admin token in {}", data_dir.display()))?;
    let http = reqwest::Client::new();
    let client = ServerClient::new(server_url)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-{i:04}");
        let r = http
            .post(format!("{server_url}/admin/enroll?name={name}&ttl_hours=1"))
            .bearer_auth(admin.trim())
            .send()
            .await?;
        let status = r.status();
        let token = r.text().await?.trim().to_string();
        if !status.is_success() {
            bail!("a token for {name}: {status} {token}");
        }
        // Distinct hosts, so nothing could merge them; the bench never connects to them.
        let url = format!(
            "http://10.{}.{}.{}:8080",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        );
        let cred = client
            .enroll(&token, &url)
            .await
            .with_context(|| format!("enrolling {name}"))?;
        out.push(Member {
            id: cred.volunteer_id.clone(),
            secret: cred.secret_bytes()?,
            url,
            other_urls: Vec::new(),
        });
    }
    Ok(out)
}

/// Give every member an `https://` URL beside its own (the same host, port 8443), as a
/// volunteer serving HTTPS announces it.
pub fn with_https(members: &mut [Member]) {
    for m in members {
        let host = m.url.trim_start_matches("http://");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        m.other_urls = vec![format!("https://{host}:8443")];
    }
}

/// Every member announces, once, that it holds `generation` of `repo`, is idle, and has a
/// 100 Mbit/s uplink.
pub async fn announce_all(
    server_url: &str,
    repo: &str,
    generation: u64,
    members: &[Member],
) -> Result<()> {
    let client = ServerClient::new(server_url)?;
    // Sequence numbers must grow across server restarts too: the clock does.
    let seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    stream::iter(members.iter().enumerate())
        .map(|(i, m)| {
            let client = &client;
            async move {
                client
                    .announce(&m.signed_announce(repo, i, generation, seq))
                    .await
                    .with_context(|| format!("announce of {}", m.id))
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// How many volunteers the server counts as eligible for `repo` (from `/api/volunteers`).
pub async fn check_registered(server_url: &str, want: usize) -> Result<()> {
    let v: serde_json::Value = reqwest::get(format!("{server_url}/api/volunteers"))
        .await?
        .json()
        .await?;
    let n = v
        .as_array()
        .or_else(|| v.get("volunteers").and_then(|x| x.as_array()))
        .map_or(0, |a| a.len());
    if n < want {
        bail!("the server lists {n} volunteers, want {want}");
    }
    Ok(())
}
