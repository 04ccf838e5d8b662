//! In-memory peer store: one swarm per info_hash, peers keyed by peer_id.
//!
//! Hard caps on swarm count and swarm size keep memory bounded no matter
//! what clients send; callers are expected to run [`Swarms::expire`]
//! periodically. Liveness is also checked on every read, so stale peers
//! are never handed out even between expiry runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::{IteratorRandom, SliceRandom};

use crate::announce::{AnnounceRequest, Event};

/// Size and lifetime limits for [`Swarms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmLimits {
    pub max_peers_per_swarm: usize,
    pub max_swarms: usize,
    /// A peer that has not announced for this long is considered gone.
    pub peer_ttl: Duration,
}

impl Default for SwarmLimits {
    fn default() -> Self {
        SwarmLimits {
            max_peers_per_swarm: 2000,
            max_swarms: 100_000,
            peer_ttl: Duration::from_secs(45 * 60),
        }
    }
}

/// What the tracker tells an announcing peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceOutcome {
    pub peers: Vec<SocketAddr>,
    /// Live seeders (`left == 0`), including the announcer.
    pub complete: u32,
    /// Live leechers, including the announcer.
    pub incomplete: u32,
}

/// Per-swarm counters reported by scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SwarmStats {
    pub complete: u32,
    pub incomplete: u32,
    /// Number of `completed` events seen since the swarm was created.
    pub downloaded: u32,
}

/// Why an announce could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwarmError {
    #[error("tracker is full: too many torrents")]
    TooManySwarms,
    #[error("swarm is full")]
    SwarmFull,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    left: u64,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Swarm {
    peers: HashMap<[u8; 20], Peer>,
    downloaded: u32,
}

impl Swarm {
    fn stats(&self, now: Instant, ttl: Duration) -> SwarmStats {
        let mut stats = SwarmStats {
            downloaded: self.downloaded,
            ..SwarmStats::default()
        };
        for peer in self.peers.values().filter(|p| alive(p, now, ttl)) {
            if peer.left == 0 {
                stats.complete = stats.complete.saturating_add(1);
            } else {
                stats.incomplete = stats.incomplete.saturating_add(1);
            }
        }
        stats
    }
}

fn alive(peer: &Peer, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(peer.last_seen) <= ttl
}

/// All swarms the tracker knows about.
#[derive(Debug)]
pub struct Swarms {
    limits: SwarmLimits,
    swarms: HashMap<[u8; 20], Swarm>,
}

impl Swarms {
    pub fn new(limits: SwarmLimits) -> Self {
        Swarms {
            limits,
            swarms: HashMap::new(),
        }
    }

    pub fn limits(&self) -> SwarmLimits {
        self.limits
    }

    /// Number of swarms currently held (including ones awaiting expiry).
    pub fn swarm_count(&self) -> usize {
        self.swarms.len()
    }

    /// Number of peers currently held across all swarms.
    pub fn peer_count(&self) -> usize {
        self.swarms.values().map(|s| s.peers.len()).sum()
    }

    /// Records an announce and picks peers for the reply.
    ///
    /// The peer's address is the socket's IP (never a client-supplied one)
    /// with the port the client announced. IPv4-mapped IPv6 addresses from
    /// dual-stack sockets are folded back to IPv4 so they land in `peers`.
    pub fn announce(
        &mut self,
        req: &AnnounceRequest,
        peer_addr: SocketAddr,
        now: Instant,
    ) -> Result<AnnounceOutcome, SwarmError> {
        let ttl = self.limits.peer_ttl;
        let addr = SocketAddr::new(peer_addr.ip().to_canonical(), req.port);

        if req.event == Event::Stopped {
            return Ok(self.stop(req, now));
        }

        if !self.swarms.contains_key(&req.info_hash) && self.swarms.len() >= self.limits.max_swarms
        {
            return Err(SwarmError::TooManySwarms);
        }
        let swarm = self.swarms.entry(req.info_hash).or_default();

        let previous = swarm.peers.get(&req.peer_id).map(|p| p.left);
        if previous.is_none() && swarm.peers.len() >= self.limits.max_peers_per_swarm {
            // Make room from stale entries before turning anyone away.
            swarm.peers.retain(|_, p| alive(p, now, ttl));
            if swarm.peers.len() >= self.limits.max_peers_per_swarm {
                if swarm.peers.is_empty() {
                    // Only possible with a zero limit; don't leave a husk.
                    self.swarms.remove(&req.info_hash);
                }
                return Err(SwarmError::SwarmFull);
            }
        }

        // Count a download once per transition to seeder, so a seeder
        // repeating `completed` cannot inflate the counter.
        if req.event == Event::Completed && previous != Some(0) {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        swarm.peers.insert(
            req.peer_id,
            Peer {
                addr,
                left: req.left,
                last_seen: now,
            },
        );

        let stats = swarm.stats(now, ttl);
        let peers = select_peers(swarm, req, now, ttl, stats.incomplete > 0);
        Ok(AnnounceOutcome {
            peers,
            complete: stats.complete,
            incomplete: stats.incomplete,
        })
    }

    /// Handles `event=stopped`: forget the peer, never create a swarm.
    fn stop(&mut self, req: &AnnounceRequest, now: Instant) -> AnnounceOutcome {
        let Some(swarm) = self.swarms.get_mut(&req.info_hash) else {
            return AnnounceOutcome::default();
        };
        swarm.peers.remove(&req.peer_id);
        let stats = swarm.stats(now, self.limits.peer_ttl);
        if swarm.peers.is_empty() {
            self.swarms.remove(&req.info_hash);
        }
        // A departing peer needs no peers.
        AnnounceOutcome {
            peers: Vec::new(),
            complete: stats.complete,
            incomplete: stats.incomplete,
        }
    }

    /// Stats for the given swarms, in the order asked (unknown ones as
    /// zeros). An empty `hashes` means every swarm, sorted by hash.
    pub fn scrape(&self, hashes: &[[u8; 20]], now: Instant) -> Vec<([u8; 20], SwarmStats)> {
        let ttl = self.limits.peer_ttl;
        if hashes.is_empty() {
            let mut all: Vec<_> = self
                .swarms
                .iter()
                .map(|(h, s)| (*h, s.stats(now, ttl)))
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            return all;
        }
        hashes
            .iter()
            .map(|h| {
                let stats = self
                    .swarms
                    .get(h)
                    .map(|s| s.stats(now, ttl))
                    .unwrap_or_default();
                (*h, stats)
            })
            .collect()
    }

    /// Drops peers not seen within the TTL, then swarms left empty.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.limits.peer_ttl;
        self.swarms.retain(|_, swarm| {
            swarm.peers.retain(|_, p| alive(p, now, ttl));
            !swarm.peers.is_empty()
        });
    }
}

/// Up to `numwant` random live peers other than the announcer. A seeder
/// gets only leechers when there are any: other seeders are useless to it.
fn select_peers(
    swarm: &Swarm,
    req: &AnnounceRequest,
    now: Instant,
    ttl: Duration,
    leechers_exist: bool,
) -> Vec<SocketAddr> {
    let want = usize::try_from(req.numwant).unwrap_or(usize::MAX);
    if want == 0 {
        return Vec::new();
    }
    let only_leechers = req.left == 0 && leechers_exist;
    let candidates = swarm
        .peers
        .iter()
        .filter(|(id, p)| **id != req.peer_id && alive(p, now, ttl))
        .filter(|(_, p)| !only_leechers || p.left > 0)
        .map(|(_, p)| p.addr);
    let mut rng = rand::thread_rng();
    let mut chosen = candidates.choose_multiple(&mut rng, want);
    // choose_multiple does not randomise order; shuffle so nobody is
    // systematically first in everyone's list.
    chosen.shuffle(&mut rng);
    chosen
}
