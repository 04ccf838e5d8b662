//! A realistic server state: many enrolled volunteers, each announcing with a signed report
//! that it holds the newest generation. They go through the real enrollment and announce
//! paths; only their URLs lead nowhere, since the bench never follows a redirect.

use std::path::Path;

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use manifest::ServerKey;
use server::store::Store;
use tracker::mirror::{build_mirror_query, sign_query, MirrorReport};
use volunteer::client::ServerClient;

/// An enrolled volunteer the bench announces for.
pub struct Member {
    pub id: String,
    pub secret: Vec<u8>,
    pub url: String,
}

/// Enroll `n` volunteers named `bench-0000…` through the server's `/api/enroll`.
pub async fn enroll(
    server_url: &str,
    data_dir: &Path,
    database: Option<&str>,
    n: usize,
) -> Result<Vec<Member>> {
    let key = ServerKey::load_or_create(&data_dir.join("server.key"))?;
    let fingerprint = key.fingerprint().0;
    let store = match database {
        Some(url) => Store::connect(url).await,
        None => Store::open(&data_dir.join("mirrorswarm.sqlite")).await,
    }
    .context("opening the server's database")?;
    let client = ServerClient::new(server_url)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-{i:04}");
        let token = store.create_enrollment(&name, &fingerprint, 3600).await?;
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
        });
    }
    Ok(out)
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
                let report = MirrorReport {
                    volunteer: m.id.clone(),
                    seq,
                    generation,
                    customer_conns: 0,
                    sync_conns: 0,
                    upload_bps: 0,
                    // Room for every customer the bench sends within the connection
                    // window, so the run measures redirecting, not admission control.
                    capacity: 1_000_000,
                    url: m.url.clone(),
                    sync_bps: 0,
                    // A declared 100 Mbit/s uplink: `feedback` then weighs each candidate by
                    // its link model, as it does for volunteers that declare theirs.
                    link_bps: 12_500_000,
                    paused: false,
                };
                let mut peer_id = [b'-'; 20];
                peer_id[..8].copy_from_slice(b"-MSBNCH-");
                peer_id[8..16].copy_from_slice(format!("{i:08}").as_bytes());
                let q = build_mirror_query(repo, peer_id, 8080, &report);
                client
                    .announce(&sign_query(&m.secret, &q))
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
