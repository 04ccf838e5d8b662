//! In-memory peer store: one swarm per info_hash, peers keyed by peer_id.
//!
//! Hard caps on swarm count and swarm size keep memory bounded no matter
//! what clients send; callers are expected to run [`Swarms::expire`]
//! periodically. Liveness is also checked on every read, so stale peers
//! are never handed out even between expiry runs.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

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

/// One peer as a swarm holds it: what a reply and the counts read, in 56 bytes (a
/// `SocketAddr` and a `left` would make it 80), so that a swarm's peers take fewer cache
/// lines to read for a reply.
#[derive(Debug, Clone)]
struct Peer {
    last_seen: Instant,
    id: [u8; 20],
    ip: IpAddr,
    port: u16,
    /// `left == 0` when it last announced.
    seeder: bool,
}

impl Peer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// One torrent's peers in a vector (read as a window for a reply, in order through memory),
/// with a map from peer id to place for the announces that update them. Removal moves the
/// last peer into the hole.
///
/// The seeder and leecher counts every announce answers with are kept as peers come, change
/// and go, over all peers held; they are the live counts whenever no peer held may have
/// outlived the TTL, which `oldest_seen` (at or before every peer's `last_seen`) tells
/// without a scan. Only a swarm that may hold a stale peer is scanned, and the scan tightens
/// the bound again.
#[derive(Debug, Default)]
struct Swarm {
    peers: Vec<Peer>,
    index: HashMap<[u8; 20], usize>,
    downloaded: u32,
    seeders: u32,
    leechers: u32,
    oldest_seen: Option<Instant>,
}

impl Swarm {
    fn get(&self, id: &[u8; 20]) -> Option<&Peer> {
        self.peers.get(*self.index.get(id)?)
    }

    fn count(&mut self, peer: &Peer, up: bool) {
        let n = if peer.seeder {
            &mut self.seeders
        } else {
            &mut self.leechers
        };
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    /// Add the peer, or update it in place if its id is known.
    fn upsert(&mut self, peer: Peer) {
        self.count(&peer, true);
        self.oldest_seen = Some(
            self.oldest_seen
                .map_or(peer.last_seen, |o| o.min(peer.last_seen)),
        );
        match self.index.get(&peer.id) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.peers[i], peer);
                self.count(&old, false);
            }
            None => {
                self.index.insert(peer.id, self.peers.len());
                self.peers.push(peer);
            }
        }
    }

    fn remove(&mut self, id: &[u8; 20]) {
        let Some(i) = self.index.remove(id) else {
            return;
        };
        let gone = self.peers.swap_remove(i);
        self.count(&gone, false);
        if let Some(moved) = self.peers.get(i) {
            self.index.insert(moved.id, i);
        }
    }

    /// Keep only the peers `keep` accepts; the counts and the bound are recomputed.
    fn retain(&mut self, keep: impl Fn(&Peer) -> bool) {
        let before = self.peers.len();
        self.peers.retain(|p| keep(p));
        if self.peers.len() != before {
            self.index = self
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| (p.id, i))
                .collect();
        }
        self.recount();
    }

    fn recount(&mut self) {
        let (all, oldest) = self.scan(Liveness::EVERYONE);
        self.seeders = all.complete;
        self.leechers = all.incomplete;
        self.oldest_seen = oldest;
    }

    /// Whether every peer held is alive: the kept counts are then the live ones.
    fn all_alive(&self, live: Liveness) -> bool {
        match (self.oldest_seen, live.since) {
            (None, _) | (_, None) => true,
            (Some(oldest), Some(since)) => oldest >= since,
        }
    }

    fn kept_stats(&self) -> SwarmStats {
        SwarmStats {
            complete: self.seeders,
            incomplete: self.leechers,
            downloaded: self.downloaded,
        }
    }

    /// The live counts: the kept ones when no peer may be stale, else a scan, which also
    /// tightens `oldest_seen` (a peer that announced again leaves the bound behind).
    fn stats(&mut self, live: Liveness) -> SwarmStats {
        if self.all_alive(live) {
            return self.kept_stats();
        }
        let (stats, oldest) = self.scan(live);
        self.oldest_seen = oldest;
        stats
    }

    /// [`Swarm::stats`] for a reader that may not tighten the bound (scrape).
    fn stats_now(&self, live: Liveness) -> SwarmStats {
        if self.all_alive(live) {
            return self.kept_stats();
        }
        self.scan(live).0
    }

    /// The live counts, and the oldest `last_seen` of all peers held.
    fn scan(&self, live: Liveness) -> (SwarmStats, Option<Instant>) {
        let mut stats = SwarmStats {
            downloaded: self.downloaded,
            ..SwarmStats::default()
        };
        let mut oldest: Option<Instant> = None;
        for peer in &self.peers {
            oldest = Some(oldest.map_or(peer.last_seen, |o| o.min(peer.last_seen)));
            if !live.alive(peer) {
                continue;
            }
            if peer.seeder {
                stats.complete = stats.complete.saturating_add(1);
            } else {
                stats.incomplete = stats.incomplete.saturating_add(1);
            }
        }
        (stats, oldest)
    }
}

/// Whether a peer was seen within the TTL, as one comparison of instants (not a duration
/// computed per peer).
#[derive(Clone, Copy)]
struct Liveness {
    /// Seen at or after this: alive. `None`: the TTL reaches back before the clock's start,
    /// so every peer is.
    since: Option<Instant>,
}

impl Liveness {
    /// Every peer alive, whenever it was seen.
    const EVERYONE: Liveness = Liveness { since: None };

    fn at(now: Instant, ttl: Duration) -> Self {
        Liveness {
            since: now.checked_sub(ttl),
        }
    }

    fn alive(self, peer: &Peer) -> bool {
        self.since.is_none_or(|since| peer.last_seen >= since)
    }
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
        let mut out = AnnounceOutcome::default();
        self.announce_into(req, peer_addr, now, &mut out)?;
        Ok(out)
    }

    /// [`Swarms::announce`], answered into `out`, whose peer buffer is reused: a server keeps
    /// one per thread, as a reply's peers are more bytes than the allocator caches per
    /// thread. On an error `out` holds no peers.
    pub fn announce_into(
        &mut self,
        req: &AnnounceRequest,
        peer_addr: SocketAddr,
        now: Instant,
        out: &mut AnnounceOutcome,
    ) -> Result<(), SwarmError> {
        out.peers.clear();
        out.complete = 0;
        out.incomplete = 0;
        let live = Liveness::at(now, self.limits.peer_ttl);

        if req.event == Event::Stopped {
            self.stop(req, live, out);
            return Ok(());
        }

        let full = self.swarms.len() >= self.limits.max_swarms;
        let swarm = match self.swarms.entry(req.info_hash) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if full => return Err(SwarmError::TooManySwarms),
            Entry::Vacant(e) => e.insert(Swarm::default()),
        };

        let was_seeder = swarm.get(&req.peer_id).map(|p| p.seeder);
        if was_seeder.is_none() && swarm.peers.len() >= self.limits.max_peers_per_swarm {
            // Make room from stale entries before turning anyone away.
            swarm.retain(|p| live.alive(p));
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
        if req.event == Event::Completed && was_seeder != Some(true) {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        swarm.upsert(Peer {
            last_seen: now,
            id: req.peer_id,
            ip: peer_addr.ip().to_canonical(),
            port: req.port,
            seeder: req.left == 0,
        });

        let stats = swarm.stats(live);
        out.complete = stats.complete;
        out.incomplete = stats.incomplete;
        select_peers(swarm, req, live, stats.incomplete > 0, &mut out.peers);
        Ok(())
    }

    /// Handles `event=stopped`: forget the peer, never create a swarm. A departing peer
    /// needs no peers, only the counts.
    fn stop(&mut self, req: &AnnounceRequest, live: Liveness, out: &mut AnnounceOutcome) {
        let Some(swarm) = self.swarms.get_mut(&req.info_hash) else {
            return;
        };
        swarm.remove(&req.peer_id);
        let stats = swarm.stats(live);
        if swarm.peers.is_empty() {
            self.swarms.remove(&req.info_hash);
        }
        out.complete = stats.complete;
        out.incomplete = stats.incomplete;
    }

    /// Stats for the given swarms, in the order asked (unknown ones as
    /// zeros). An empty `hashes` means every swarm, sorted by hash.
    pub fn scrape(&self, hashes: &[[u8; 20]], now: Instant) -> Vec<([u8; 20], SwarmStats)> {
        let live = Liveness::at(now, self.limits.peer_ttl);
        if hashes.is_empty() {
            let mut all: Vec<_> = self
                .swarms
                .iter()
                .map(|(h, s)| (*h, s.stats_now(live)))
                .collect();
            all.sort_unstable_by_key(|(hash, _)| *hash);
            return all;
        }
        hashes
            .iter()
            .map(|h| {
                let stats = self
                    .swarms
                    .get(h)
                    .map(|s| s.stats_now(live))
                    .unwrap_or_default();
                (*h, stats)
            })
            .collect()
    }

    /// Drops peers not seen within the TTL, then swarms left empty.
    pub fn expire(&mut self, now: Instant) {
        let live = Liveness::at(now, self.limits.peer_ttl);
        self.swarms.retain(|_, swarm| {
            swarm.retain(|p| live.alive(p));
            !swarm.peers.is_empty()
        });
    }
}

/// Up to `numwant` random live peers other than the announcer. A seeder
/// gets only leechers when there are any: other seeders are useless to it.
///
/// The peers are read as a window from a random place, wrapping round, as opentracker picks
/// them: where all are eligible every peer is as likely to be in a reply, and a reply costs
/// about what it returns, not the size of the swarm.
fn select_peers(
    swarm: &Swarm,
    req: &AnnounceRequest,
    live: Liveness,
    leechers_exist: bool,
    chosen: &mut Vec<SocketAddr>,
) {
    let want = usize::try_from(req.numwant).unwrap_or(usize::MAX);
    let n = swarm.peers.len();
    if want == 0 || n == 0 {
        return;
    }
    let only_leechers = req.left == 0 && leechers_exist;
    // With no peer past the TTL (the usual case), no peer's clock need be read.
    let all_alive = swarm.all_alive(live);
    let mut rng = crate::fast_rng::FastRng::hold();
    let start = rng.gen_range(0..n);
    let (tail, head) = swarm.peers.split_at(start);
    chosen.extend(
        head.iter()
            .chain(tail)
            .filter(|p| p.id != req.peer_id && (all_alive || live.alive(p)))
            .filter(|p| !only_leechers || !p.seeder)
            .map(Peer::addr)
            .take(want),
    );
    // Neighbours in the vector would otherwise come in the same order every time; shuffle
    // so nobody is systematically first in everyone's list.
    chosen.shuffle(&mut rng);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const H1: [u8; 20] = [1; 20];
    const H2: [u8; 20] = [2; 20];
    const TTL: Duration = Duration::from_secs(60);

    fn limits() -> SwarmLimits {
        SwarmLimits {
            max_peers_per_swarm: 100,
            max_swarms: 10,
            peer_ttl: TTL,
        }
    }

    fn req(hash: [u8; 20], id: u8, port: u16, left: u64, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: hash,
            peer_id: [id; 20],
            port,
            uploaded: 0,
            downloaded: 0,
            left,
            event,
            compact: true,
            numwant: 50,
            key: None,
            extra: vec![],
        }
    }

    fn lo(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    fn set(addrs: &[SocketAddr]) -> HashSet<SocketAddr> {
        addrs.iter().copied().collect()
    }

    #[test]
    fn loopback_peers_on_same_ip_are_distinct() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        let a = s
            .announce(&req(H1, 1, 7001, 5, Event::Started), lo(50000), t)
            .unwrap();
        assert_eq!(
            a,
            AnnounceOutcome {
                peers: vec![],
                complete: 0,
                incomplete: 1
            }
        );
        let b = s
            .announce(&req(H1, 2, 7002, 0, Event::Started), lo(50001), t)
            .unwrap();
        // Port comes from the request, not the socket.
        assert_eq!(
            b,
            AnnounceOutcome {
                peers: vec![lo(7001)],
                complete: 1,
                incomplete: 1
            }
        );
        let a2 = s
            .announce(&req(H1, 1, 7001, 5, Event::None), lo(50002), t)
            .unwrap();
        assert_eq!(a2.peers, vec![lo(7002)]);
        assert_eq!(s.peer_count(), 2);
        assert_eq!(s.swarm_count(), 1);
    }

    #[test]
    fn never_returns_self_and_respects_numwant() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        for id in 1..=20u8 {
            s.announce(&req(H1, id, 7000 + u16::from(id), 1, Event::None), lo(1), t)
                .unwrap();
        }
        let mut r = req(H1, 5, 7005, 1, Event::None);
        r.numwant = 7;
        let out = s.announce(&r, lo(1), t).unwrap();
        assert_eq!(out.peers.len(), 7);
        assert_eq!(set(&out.peers).len(), 7);
        assert!(!out.peers.contains(&lo(7005)));
        assert_eq!(out.incomplete, 20);
        r.numwant = 0;
        assert_eq!(s.announce(&r, lo(1), t).unwrap().peers, vec![]);
        r.numwant = 200;
        let all = s.announce(&r, lo(1), t).unwrap().peers;
        let expected: HashSet<_> = (1..=20u16)
            .filter(|&i| i != 5)
            .map(|i| lo(7000 + i))
            .collect();
        assert_eq!(set(&all), expected);
    }

    #[test]
    fn selection_is_random() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        for id in 1..=50u8 {
            s.announce(&req(H1, id, u16::from(id), 1, Event::None), lo(1), t)
                .unwrap();
        }
        let mut r = req(H1, 99, 9999, 1, Event::None);
        r.numwant = 5;
        let picks: HashSet<Vec<SocketAddr>> = (0..20)
            .map(|_| s.announce(&r, lo(1), t).unwrap().peers)
            .collect();
        // 20 draws of 5 from 50 colliding every time is astronomically unlikely.
        assert!(picks.len() > 1);
    }

    #[test]
    fn seeders_get_leechers_when_any_exist() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        s.announce(&req(H1, 1, 1, 0, Event::None), lo(1), t)
            .unwrap();
        s.announce(&req(H1, 2, 2, 0, Event::None), lo(1), t)
            .unwrap();
        let seeder = req(H1, 3, 3, 0, Event::None);
        // No leechers: other seeders are still returned.
        assert_eq!(
            set(&s.announce(&seeder, lo(1), t).unwrap().peers),
            set(&[lo(1), lo(2)])
        );
        s.announce(&req(H1, 4, 4, 10, Event::None), lo(1), t)
            .unwrap();
        let out = s.announce(&seeder, lo(1), t).unwrap();
        assert_eq!(
            out,
            AnnounceOutcome {
                peers: vec![lo(4)],
                complete: 3,
                incomplete: 1
            }
        );
        // A leecher still sees everyone.
        let out = s
            .announce(&req(H1, 4, 4, 10, Event::None), lo(1), t)
            .unwrap();
        assert_eq!(set(&out.peers), set(&[lo(1), lo(2), lo(3)]));
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()), 1);
        s.announce(&req(H1, 1, 6881, 1, Event::None), v6, t)
            .unwrap();
        s.announce(&req(H1, 2, 6882, 1, Event::None), mapped, t)
            .unwrap();
        let out = s
            .announce(&req(H1, 3, 6883, 1, Event::None), lo(1), t)
            .unwrap();
        let v6_peer = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 6881);
        let v4_peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 6882);
        assert_eq!(set(&out.peers), set(&[v6_peer, v4_peer]));
    }

    #[test]
    fn stopped_removes_peer_and_empty_swarm() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        s.announce(&req(H1, 1, 1, 1, Event::Started), lo(1), t)
            .unwrap();
        s.announce(&req(H1, 2, 2, 0, Event::Started), lo(1), t)
            .unwrap();
        let out = s
            .announce(&req(H1, 1, 1, 1, Event::Stopped), lo(1), t)
            .unwrap();
        assert_eq!(
            out,
            AnnounceOutcome {
                peers: vec![],
                complete: 1,
                incomplete: 0
            }
        );
        let out = s
            .announce(&req(H1, 3, 3, 1, Event::None), lo(1), t)
            .unwrap();
        assert_eq!(out.peers, vec![lo(2)]);
        s.announce(&req(H1, 2, 2, 0, Event::Stopped), lo(1), t)
            .unwrap();
        s.announce(&req(H1, 3, 3, 1, Event::Stopped), lo(1), t)
            .unwrap();
        assert_eq!(s.swarm_count(), 0);
        // Stopping in an unknown swarm never creates it.
        let out = s
            .announce(&req(H2, 9, 9, 1, Event::Stopped), lo(1), t)
            .unwrap();
        assert_eq!(out, AnnounceOutcome::default());
        assert_eq!(s.swarm_count(), 0);
    }

    #[test]
    fn completed_counts_once_per_transition() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        s.announce(&req(H1, 1, 1, 10, Event::Started), lo(1), t)
            .unwrap();
        s.announce(&req(H1, 1, 1, 0, Event::Completed), lo(1), t)
            .unwrap();
        s.announce(&req(H1, 1, 1, 0, Event::Completed), lo(1), t)
            .unwrap();
        // An unknown peer reporting completion (e.g. after a tracker restart) counts.
        s.announce(&req(H1, 2, 2, 0, Event::Completed), lo(1), t)
            .unwrap();
        let stats = s.scrape(&[H1], t);
        assert_eq!(
            stats,
            vec![(
                H1,
                SwarmStats {
                    complete: 2,
                    incomplete: 0,
                    downloaded: 2
                }
            )]
        );
    }

    #[test]
    fn scrape_specific_unknown_and_all() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        s.announce(&req(H2, 1, 1, 0, Event::None), lo(1), t)
            .unwrap();
        s.announce(&req(H1, 1, 1, 3, Event::None), lo(1), t)
            .unwrap();
        s.announce(&req(H1, 2, 2, 3, Event::None), lo(1), t)
            .unwrap();
        let unknown = [9u8; 20];
        assert_eq!(
            s.scrape(&[unknown, H2], t),
            vec![
                (unknown, SwarmStats::default()),
                (
                    H2,
                    SwarmStats {
                        complete: 1,
                        incomplete: 0,
                        downloaded: 0
                    }
                ),
            ]
        );
        assert_eq!(
            s.scrape(&[], t),
            vec![
                (
                    H1,
                    SwarmStats {
                        complete: 0,
                        incomplete: 2,
                        downloaded: 0
                    }
                ),
                (
                    H2,
                    SwarmStats {
                        complete: 1,
                        incomplete: 0,
                        downloaded: 0
                    }
                ),
            ]
        );
    }

    #[test]
    fn stale_peers_hidden_then_expired() {
        let mut s = Swarms::new(limits());
        let t0 = Instant::now();
        s.announce(&req(H1, 1, 1, 1, Event::None), lo(1), t0)
            .unwrap();
        s.announce(&req(H2, 1, 1, 1, Event::None), lo(1), t0)
            .unwrap();
        let t1 = t0 + TTL / 2;
        s.announce(&req(H1, 2, 2, 1, Event::None), lo(1), t1)
            .unwrap();
        // Exactly at the TTL a peer is still alive.
        let at_ttl = s
            .announce(&req(H1, 3, 3, 1, Event::None), lo(1), t0 + TTL)
            .unwrap();
        assert_eq!(set(&at_ttl.peers), set(&[lo(1), lo(2)]));
        let t2 = t0 + TTL + Duration::from_secs(1);
        let out = s
            .announce(&req(H1, 3, 3, 1, Event::None), lo(1), t2)
            .unwrap();
        assert_eq!(
            out,
            AnnounceOutcome {
                peers: vec![lo(2)],
                complete: 0,
                incomplete: 2
            }
        );
        assert_eq!(s.scrape(&[H2], t2)[0].1, SwarmStats::default());
        assert_eq!(s.peer_count(), 4);
        s.expire(t2);
        assert_eq!(s.swarm_count(), 1);
        assert_eq!(s.peer_count(), 2);
        s.expire(t2 + TTL * 2);
        assert_eq!(s.swarm_count(), 0);
        // An Instant earlier than last_seen must not panic or expire anyone.
        s.announce(&req(H1, 1, 1, 1, Event::None), lo(1), t2)
            .unwrap();
        s.expire(t0);
        assert_eq!(s.peer_count(), 1);
    }

    #[test]
    fn swarm_count_limit_refuses_new_swarms() {
        let mut s = Swarms::new(SwarmLimits {
            max_swarms: 2,
            ..limits()
        });
        let t = Instant::now();
        s.announce(&req([1; 20], 1, 1, 1, Event::None), lo(1), t)
            .unwrap();
        s.announce(&req([2; 20], 1, 1, 1, Event::None), lo(1), t)
            .unwrap();
        assert_eq!(
            s.announce(&req([3; 20], 1, 1, 1, Event::None), lo(1), t),
            Err(SwarmError::TooManySwarms)
        );
        assert_eq!(s.swarm_count(), 2);
        // Existing swarms keep working.
        assert!(s
            .announce(&req([1; 20], 2, 2, 1, Event::None), lo(1), t)
            .is_ok());
        assert_eq!(
            SwarmError::TooManySwarms.to_string(),
            "tracker is full: too many torrents"
        );
    }

    #[test]
    fn swarm_size_limit_evicts_stale_before_refusing() {
        let mut s = Swarms::new(SwarmLimits {
            max_peers_per_swarm: 2,
            ..limits()
        });
        let t0 = Instant::now();
        s.announce(&req(H1, 1, 1, 1, Event::None), lo(1), t0)
            .unwrap();
        s.announce(&req(H1, 2, 2, 1, Event::None), lo(1), t0 + TTL)
            .unwrap();
        assert_eq!(
            s.announce(&req(H1, 3, 3, 1, Event::None), lo(1), t0 + TTL),
            Err(SwarmError::SwarmFull)
        );
        // Known peers can still re-announce in a full swarm.
        assert!(s
            .announce(&req(H1, 1, 1, 1, Event::None), lo(1), t0 + TTL)
            .is_ok());
        // Once peer 2 is stale, its slot is reclaimed.
        let later = t0 + TTL * 2 + Duration::from_secs(1);
        s.announce(&req(H1, 1, 1, 1, Event::None), lo(1), later)
            .unwrap();
        let out = s
            .announce(&req(H1, 3, 3, 1, Event::None), lo(1), later)
            .unwrap();
        assert_eq!(out.peers, vec![lo(1)]);
        assert_eq!(s.peer_count(), 2);
    }

    #[test]
    fn zero_peer_limit_leaves_no_empty_swarm() {
        let mut s = Swarms::new(SwarmLimits {
            max_peers_per_swarm: 0,
            ..limits()
        });
        let t = Instant::now();
        assert_eq!(
            s.announce(&req(H1, 1, 1, 1, Event::None), lo(1), t),
            Err(SwarmError::SwarmFull)
        );
        assert_eq!(s.swarm_count(), 0);
    }

    #[test]
    fn peer_address_updates_on_reannounce() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        s.announce(&req(H1, 1, 1, 1, Event::None), lo(1), t)
            .unwrap();
        let moved = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 1);
        s.announce(&req(H1, 1, 4444, 1, Event::None), moved, t)
            .unwrap();
        let out = s
            .announce(&req(H1, 2, 2, 1, Event::None), lo(1), t)
            .unwrap();
        assert_eq!(out.peers, vec![SocketAddr::new(moved.ip(), 4444)]);
    }

    #[test]
    fn removing_from_the_middle_keeps_every_peer_reachable() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        for id in 1..=5u8 {
            s.announce(&req(H1, id, u16::from(id), 1, Event::None), lo(1), t)
                .unwrap();
        }
        // Peer 2 leaves: peer 5 moves into its place and must still be found by its id.
        s.announce(&req(H1, 2, 2, 1, Event::Stopped), lo(1), t)
            .unwrap();
        let out = s
            .announce(&req(H1, 5, 5, 0, Event::None), lo(1), t)
            .unwrap();
        assert_eq!((out.complete, out.incomplete), (1, 3));
        assert_eq!(
            s.peer_count(),
            4,
            "peer 5 updated in place, not added again"
        );
        s.announce(&req(H1, 5, 5, 0, Event::Stopped), lo(1), t)
            .unwrap();
        let out = s
            .announce(&req(H1, 9, 9, 1, Event::None), lo(1), t)
            .unwrap();
        assert_eq!(set(&out.peers), set(&[lo(1), lo(3), lo(4)]));
    }

    #[test]
    fn every_peer_gets_its_turn_in_replies() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        for id in 1..=10u8 {
            s.announce(&req(H1, id, u16::from(id), 1, Event::None), lo(1), t)
                .unwrap();
        }
        let mut r = req(H1, 1, 1, 1, Event::None);
        r.numwant = 3;
        let mut seen = HashSet::new();
        for _ in 0..300 {
            seen.extend(s.announce(&r, lo(1), t).unwrap().peers);
        }
        // Each of the 9 others is in a reply with probability 1/3 per draw.
        let others: HashSet<_> = (2..=10u16).map(lo).collect();
        assert_eq!(seen, others);
    }

    /// The kept counts agree with a count of every live peer, through announces that add,
    /// change, stop and outlive peers, in and out of time order, and expiry runs.
    #[test]
    fn kept_counts_match_a_scan_through_every_change() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut s = Swarms::new(SwarmLimits {
            max_peers_per_swarm: 12,
            ..limits()
        });
        let t0 = Instant::now();
        let mut now = t0;
        for step in 0..5000 {
            now += Duration::from_millis(rng.gen_range(0..4000));
            // Now and then an announce stamped earlier than the last.
            let at = if rng.gen_bool(0.05) { t0 } else { now };
            let event = match rng.gen_range(0..10) {
                0 => Event::Stopped,
                1 => Event::Completed,
                2 => Event::Started,
                _ => Event::None,
            };
            let hash = [rng.gen_range(0..3u8); 20];
            let left = if rng.gen_bool(0.4) { 0 } else { 7 };
            let r = req(hash, rng.gen_range(0..20), 1, left, event);
            let out = s.announce(&r, lo(1), at);
            if step % 500 == 0 {
                s.expire(now);
            }
            let live = Liveness::at(at, TTL);
            if let Ok(out) = out {
                let want = s
                    .swarms
                    .get(&hash)
                    .map(|sw| {
                        let n = |seeder: bool| {
                            sw.peers
                                .iter()
                                .filter(|p| p.seeder == seeder && live.alive(p))
                                .count() as u32
                        };
                        (n(true), n(false))
                    })
                    .unwrap_or_default();
                assert_eq!((out.complete, out.incomplete), want, "step {step}");
            }
            for sw in s.swarms.values() {
                let oldest = sw.peers.iter().map(|p| p.last_seen).min();
                assert!(
                    oldest.is_none() || sw.oldest_seen.is_some_and(|b| Some(b) <= oldest),
                    "the bound is at or before every peer"
                );
                let (all, _) = sw.scan(Liveness::EVERYONE);
                assert_eq!((sw.seeders, sw.leechers), (all.complete, all.incomplete));
            }
        }
    }
}
