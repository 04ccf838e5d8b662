//! BitTorrent through librqbit: one session per process, used to fetch the pieces a first
//! guess got wrong and to seed what we hold. Every piece is SHA-1 checked by librqbit before it
//! is kept; a file is installed only after its SHA-256 matches the signed manifest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use librqbit::api::TorrentIdOrHash;
use librqbit::limits::LimitsConfig;
use librqbit::{
    AddTorrent, AddTorrentOptions, ListenerMode, ListenerOptions, ManagedTorrent, Session,
    SessionOptions,
};

/// librqbit refuses rate limits below this.
pub const MIN_RATE_BPS: u32 = 16 * 1024;

#[derive(Debug, Clone)]
pub struct BtConfig {
    /// Address to accept peers on (port 0: any free port).
    pub listen: SocketAddr,
    /// Upload cap in bytes per second (at least 16 KiB/s), or none.
    pub upload_bps: Option<u32>,
    /// Fixed peer id (the origin uses one so its tracker can recognise it).
    pub peer_id: Option<[u8; 20]>,
    /// Default folder for the session's bookkeeping.
    pub dir: PathBuf,
}

pub struct Bt {
    session: Arc<Session>,
    port: u16,
    peer_id: [u8; 20],
}

/// What one torrent download did.
#[derive(Debug, Default, Clone)]
pub struct Fetched {
    /// Bytes fetched per peer address.
    pub per_peer: HashMap<String, u64>,
    pub finished: bool,
    /// Given up because `give_up` said so, not for a stall or an error.
    pub given_up: bool,
}

impl Bt {
    pub async fn start(cfg: BtConfig) -> Result<Bt> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        let upload = cfg
            .upload_bps
            .map(|b| b.max(MIN_RATE_BPS))
            .and_then(NonZeroU32::new);
        // librqbit announces no port of its own for a loopback listener (it would say 4240),
        // so pick the port here and announce it explicitly.
        let mut listen = cfg.listen;
        if listen.port() == 0 {
            let probe = std::net::TcpListener::bind(listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            listen.set_port(probe.local_addr()?.port());
        }
        let peer_id = cfg.peer_id.unwrap_or_else(|| {
            let mut id = *b"-MS0100-000000000000";
            rand_fill(&mut id[8..]);
            id
        });
        let opts = SessionOptions {
            dht: None,
            persistence: None,
            fastresume: false,
            disable_local_service_discovery: true,
            ipv4_only: cfg.listen.is_ipv4(),
            peer_id: Some(librqbit::dht::Id20::new(peer_id)),
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: listen,
                announce_port: Some(listen.port()),
                enable_upnp_port_forwarding: false,
                ipv4_only: cfg.listen.is_ipv4(),
                ..Default::default()
            }),
            ratelimits: LimitsConfig {
                upload_bps: upload,
                download_bps: None,
            },
            ..Default::default()
        };
        let session = Session::new_with_opts(cfg.dir.clone(), opts)
            .await
            .context("starting the BitTorrent session")?;
        Ok(Bt {
            session,
            port: listen.port(),
            peer_id,
        })
    }

    /// The port peers reach us on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Add a torrent whose single file lives (or will live) in `folder`. Existing bytes are
    /// re-checked piece by piece; only failing pieces are fetched.
    pub async fn add(
        &self,
        torrent: Bytes,
        folder: &Path,
        tracker: &str,
    ) -> Result<Arc<ManagedTorrent>> {
        self.add_with(torrent, folder, tracker, None).await
    }

    /// Seed a complete file, already open, without ever writing to it (`folder` only keeps
    /// librqbit's bookkeeping: the bytes come from `file`).
    pub async fn add_seed(
        &self,
        torrent: Bytes,
        file: std::fs::File,
        folder: &Path,
        tracker: &str,
    ) -> Result<Arc<ManagedTorrent>> {
        self.add_with(torrent, folder, tracker, Some(file)).await
    }

    async fn add_with(
        &self,
        torrent: Bytes,
        folder: &Path,
        tracker: &str,
        read_only: Option<std::fs::File>,
    ) -> Result<Arc<ManagedTorrent>> {
        use librqbit::storage::StorageFactoryExt;
        // Our tracker in place of the torrent's own, not beside it (see `with_tracker`).
        let torrent =
            Bytes::from(crate::artifacts::with_tracker(&torrent, tracker).map_err(|e| anyhow!(e))?);
        let opts = AddTorrentOptions {
            overwrite: true,
            output_folder: Some(folder.to_string_lossy().into_owned()),
            trackers: None,
            force_tracker_interval: Some(Duration::from_secs(2)),
            storage_factory: read_only.map(|f| crate::readonly::ReadOnlyFactory::new(f).boxed()),
            ..Default::default()
        };
        let resp = self
            .session
            .add_torrent(AddTorrent::TorrentFileBytes(torrent), Some(opts))
            .await
            .context("adding torrent")?;
        resp.into_handle()
            .ok_or_else(|| anyhow!("torrent was listed, not added"))
    }

    pub async fn remove(&self, info_hash: [u8; 20]) {
        let id = TorrentIdOrHash::Hash(librqbit::dht::Id20::new(info_hash));
        if let Err(e) = self.session.delete(id, false).await {
            tracing::debug!(error = %e, "removing torrent");
        }
    }

    /// Wait until the torrent completes, it makes no progress for `stall`, `limit` passes, or
    /// `give_up` (asked with how long it has made no progress) says to stop.
    pub async fn wait(
        &self,
        handle: &Arc<ManagedTorrent>,
        stall: Duration,
        limit: Duration,
        give_up: &(dyn Fn(Duration) -> bool + Sync),
    ) -> Fetched {
        let start = Instant::now();
        let mut last_progress = (0u64, Instant::now());
        let ended = |finished, given_up| Fetched {
            per_peer: per_peer(handle),
            finished,
            given_up,
        };
        loop {
            let st = handle.stats();
            if st.finished {
                return ended(true, false);
            }
            if let Some(e) = &st.error {
                tracing::warn!(error = %e, "torrent error");
                return ended(false, false);
            }
            if st.progress_bytes != last_progress.0 {
                last_progress = (st.progress_bytes, Instant::now());
            }
            if give_up(last_progress.1.elapsed()) {
                return ended(false, true);
            }
            if last_progress.1.elapsed() > stall || start.elapsed() > limit {
                return ended(false, false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Tell the tracker we left these swarms, so that nobody waits for us as a seeder (librqbit
    /// does not announce `stopped` when a torrent is removed).
    pub async fn announce_stopped(&self, tracker: &str, info_hashes: &[[u8; 20]]) {
        self.announce_event(tracker, info_hashes, "stopped").await
    }

    /// Tell the tracker at once that we now have these files (librqbit says so only at its next
    /// announce), so that a scrape no longer counts us as downloading.
    pub async fn announce_completed(&self, tracker: &str, info_hashes: &[[u8; 20]]) {
        self.announce_event(tracker, info_hashes, "completed").await
    }

    async fn announce_event(&self, tracker: &str, info_hashes: &[[u8; 20]], event: &str) {
        let client = reqwest::Client::new();
        for h in info_hashes {
            let url = format!(
                "{tracker}?info_hash={}&peer_id={}&port={}&uploaded=0&downloaded=0&left=0&event={event}",
                tracker::query::percent_encode(h),
                tracker::query::percent_encode(&self.peer_id),
                self.port
            );
            let _ = client.get(url).timeout(Duration::from_secs(5)).send().await;
        }
    }

    /// Bytes this session has uploaded to peers.
    pub fn uploaded_bytes(&self) -> u64 {
        self.session.stats_snapshot().counters.uploaded_bytes
    }

    /// Peers connected right now, over all torrents (the sync connections we report).
    pub fn live_peers(&self) -> u32 {
        self.session.with_torrents(|it| {
            it.filter_map(|(_, t)| t.live())
                .map(|l| l.per_peer_stats_snapshot(Default::default()).peers.len() as u32)
                .sum()
        })
    }
}

fn per_peer(handle: &Arc<ManagedTorrent>) -> HashMap<String, u64> {
    let Some(live) = handle.live() else {
        return HashMap::new();
    };
    // The filter type is not exported; it deserialises from its JSON form.
    let all = match serde_json::from_value(serde_json::json!({ "state": "all" })) {
        Ok(f) => f,
        Err(_) => return HashMap::new(),
    };
    live.per_peer_stats_snapshot(all)
        .peers
        .into_iter()
        .map(|(addr, s)| (addr, s.counters.fetched_bytes))
        .collect()
}

/// Whether a peer address string is the origin's seed.
pub fn is_origin(peer: &str, origin: Option<SocketAddr>) -> bool {
    let (Some(o), Ok(p)) = (origin, peer.parse::<SocketAddr>()) else {
        return false;
    };
    let canon = |ip: IpAddr| ip.to_canonical();
    p.port() == o.port() && canon(p.ip()) == canon(o.ip())
}

fn rand_fill(buf: &mut [u8]) {
    use sha1::Digest as _;
    // A peer id only needs to be unique among peers: time, pid and address suffice.
    let seed = format!("{:?}{}{:p}", Instant::now(), std::process::id(), buf);
    let d = sha1::Sha1::digest(seed.as_bytes());
    for (b, x) in buf.iter_mut().zip(d.iter().cycle()) {
        *b = b'0' + (x % 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A torrent nobody seeds (its tracker does not answer) makes no progress: `wait` ends
    /// when `give_up` says so, long before the stall timeout, and says why it ended.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_torrent_with_no_progress_is_given_up_when_the_caller_says() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f.bin");
        std::fs::write(&file, vec![7u8; 300_000]).unwrap();
        let sha = "0".repeat(64);
        // A tracker on a port nothing listens on: no peers ever.
        let art = crate::artifacts::build(&file, &sha, "http://127.0.0.1:9/announce").unwrap();
        let bt = Bt::start(BtConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upload_bps: None,
            peer_id: None,
            dir: tmp.path().join("bt"),
        })
        .await
        .unwrap();
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let h = bt
            .add(
                Bytes::from(art.torrent),
                &staging,
                "http://127.0.0.1:9/announce",
            )
            .await
            .unwrap();
        let got = bt
            .wait(
                &h,
                Duration::from_secs(60),
                Duration::from_secs(60),
                &|quiet| quiet >= Duration::from_millis(500),
            )
            .await;
        assert!(!got.finished && got.given_up, "{got:?}");
        // Without it, the stall timeout ends the wait, and says it was not given up.
        let got = bt
            .wait(
                &h,
                Duration::from_millis(500),
                Duration::from_secs(60),
                &|_| false,
            )
            .await;
        assert!(!got.finished && !got.given_up, "{got:?}");
    }
}
