//! In-memory peer store: one swarm per info_hash, peers keyed by peer_id.
//!
//! Everything it holds is bounded whatever clients send, per source as well as in all, so
//! that one host cannot take what others need:
//! - **which torrents**: with [`Torrents::Published`] only the listed ones
//!   ([`Swarms::set_listed`]: the server's published torrents and repository swarms) get a
//!   swarm; with [`Torrents::Open`] any, but unlisted swarms are capped in all and per
//!   creating address and prefix, and a listed torrent is never refused for want of room;
//! - **peers per swarm**, in all and per address and prefix ([`crate::source`]); a full swarm
//!   refuses anonymous newcomers, and a trusted one (an enrolled volunteer's address, the
//!   origin's seed) takes the place of an anonymous peer instead of being refused;
//! - **announces per address per second** ([`crate::rate`], a table of fixed size); trusted
//!   sources are exempt;
//! - **trusted addresses** themselves: they expire with the peer TTL and are capped.
//!
//! Callers are expected to run [`Swarms::expire`] periodically. Liveness is also checked on
//! every read, so stale peers are never handed out even between expiry runs.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use crate::announce::{AnnounceRequest, Event};
use crate::rate::RateTable;
use crate::source::{addr_key, Source, SourceHash};

/// Which torrents the tracker keeps swarms for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Torrents {
    /// Only the listed ones; an announce for anything else is refused.
    #[default]
    Published,
    /// Any torrent; swarms of unlisted ones are bounded in all and per source.
    Open,
}

/// Size, rate and lifetime limits for [`Swarms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmLimits {
    pub torrents: Torrents,
    pub max_peers_per_swarm: usize,
    /// Swarms of unlisted torrents at most (open mode). Listed ones are not counted, so
    /// unknown info-hashes cannot crowd them out.
    pub max_swarms: usize,
    /// Anonymous peers one address may have in one swarm.
    pub max_peers_per_addr: u32,
    /// Anonymous peers one prefix may have in one swarm.
    pub max_peers_per_prefix: u32,
    /// Live unlisted swarms one anonymous address may have created (open mode).
    pub max_swarms_per_addr: u32,
    /// Live unlisted swarms one anonymous prefix may have created (open mode).
    pub max_swarms_per_prefix: u32,
    /// Announces and scrapes per second from one anonymous address, once its burst is spent.
    pub announce_rate: u32,
    /// Announces and scrapes one anonymous address may send at once.
    pub announce_burst: u32,
    /// A peer that has not announced for this long is considered gone; so is the trust of
    /// an address not vouched for for this long.
    pub peer_ttl: Duration,
}

impl Default for SwarmLimits {
    fn default() -> Self {
        SwarmLimits {
            torrents: Torrents::Published,
            max_peers_per_swarm: 2000,
            max_swarms: 100_000,
            max_peers_per_addr: 16,
            max_peers_per_prefix: 64,
            max_swarms_per_addr: 256,
            max_swarms_per_prefix: 1024,
            announce_rate: 100,
            announce_burst: 1000,
            peer_ttl: Duration::from_secs(45 * 60),
        }
    }
}

/// Addresses trusted at once at most: an enrolled volunteer that keeps changing addresses
/// cannot grow the set without bound (past it, a new address is simply not trusted).
pub const MAX_TRUSTED: usize = 65_536;

/// Who an announce is from, as far as the bounds are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Anyone: every bound applies (unless its address is trusted: [`Swarms::trust`]).
    Anonymous,
    /// The origin's own seed, or an address an enrolled volunteer announced from: no rate or
    /// per-source bound, and in a full swarm it takes an anonymous peer's place.
    Trusted,
}

/// What an announce is told.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SwarmError {
    #[error("tracker is full: too many torrents")]
    TooManySwarms,
    #[error("swarm is full")]
    SwarmFull,
    #[error("announce rate exceeded: too many requests from your address, slow down")]
    RateLimited,
    #[error("unknown torrent: this tracker serves only the torrents its server publishes")]
    UnknownTorrent,
    #[error("too many torrents created from your address or its network")]
    SourceSwarmsFull,
    #[error("too many peers from your address or its network in this swarm")]
    SourcePeersFull,
    #[error("peer id in use by an enrolled peer at another address")]
    PeerIdTaken,
}

/// Announces refused (and anonymous peers evicted) since start, by reason: for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Refusals {
    pub rate: u64,
    pub unknown_torrent: u64,
    pub too_many_swarms: u64,
    pub source_swarms: u64,
    pub source_peers: u64,
    pub swarm_full: u64,
    pub peer_id_taken: u64,
    /// Anonymous peers that gave their place to a trusted newcomer in a full swarm.
    pub evicted: u64,
}

impl Refusals {
    fn count(&mut self, e: SwarmError) {
        let n = match e {
            SwarmError::TooManySwarms => &mut self.too_many_swarms,
            SwarmError::SwarmFull => &mut self.swarm_full,
            SwarmError::RateLimited => &mut self.rate,
            SwarmError::UnknownTorrent => &mut self.unknown_torrent,
            SwarmError::SourceSwarmsFull => &mut self.source_swarms,
            SwarmError::SourcePeersFull => &mut self.source_peers,
            SwarmError::PeerIdTaken => &mut self.peer_id_taken,
        };
        *n += 1;
    }
}

/// `Peer::flags`: it was a seeder (`left == 0`) when it last announced.
const SEEDER: u8 = 1;
/// `Peer::flags`: it announced as trusted ([`Standing::Trusted`]).
const TRUSTED: u8 = 2;

/// One peer as a swarm holds it: what a reply and the counts read, in 56 bytes (a
/// `SocketAddr` and a `left` would make it 80), so that a swarm's peers take fewer cache
/// lines to read for a reply.
#[derive(Debug, Clone, Copy)]
struct Peer {
    last_seen: Instant,
    id: [u8; 20],
    ip: IpAddr,
    port: u16,
    flags: u8,
}

impl Peer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    fn seeder(&self) -> bool {
        self.flags & SEEDER != 0
    }

    fn trusted(&self) -> bool {
        self.flags & TRUSTED != 0
    }
}

/// How many anonymous peers (or swarms created) each address and each prefix holds. An entry
/// goes when its count does, so the maps never hold more entries than what they count.
#[derive(Debug, Default)]
struct SourceCounts {
    addr: HashMap<u128, u32, SourceHash>,
    prefix: HashMap<u128, u32, SourceHash>,
}

impl SourceCounts {
    fn add(&mut self, s: Source) {
        *self.addr.entry(s.addr).or_insert(0) += 1;
        *self.prefix.entry(s.prefix).or_insert(0) += 1;
    }

    fn sub(&mut self, s: Source) {
        fn dec(map: &mut HashMap<u128, u32, SourceHash>, k: u128) {
            if let Entry::Occupied(mut e) = map.entry(k) {
                if *e.get() <= 1 {
                    e.remove();
                } else {
                    *e.get_mut() -= 1;
                }
            }
        }
        dec(&mut self.addr, s.addr);
        dec(&mut self.prefix, s.prefix);
    }

    /// Whether `s` has reached either bound.
    fn reached(&self, s: Source, max_addr: u32, max_prefix: u32) -> bool {
        self.addr.get(&s.addr).is_some_and(|&n| n >= max_addr)
            || self.prefix.get(&s.prefix).is_some_and(|&n| n >= max_prefix)
    }

    fn clear(&mut self) {
        self.addr.clear();
        self.prefix.clear();
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
/// the bound again. The anonymous peers are counted per address and prefix the same way (a
/// peer that re-announces from where it was costs no count).
#[derive(Debug, Default)]
struct Swarm {
    peers: Vec<Peer>,
    index: HashMap<[u8; 20], usize>,
    downloaded: u32,
    seeders: u32,
    leechers: u32,
    oldest_seen: Option<Instant>,
    /// Anonymous peers held, in all and by source (trusted ones are bound by nothing).
    anonymous: u32,
    by_source: SourceCounts,
    /// A listed torrent's swarm.
    listed: bool,
    /// Who created this unlisted swarm, counted in [`Swarms`]'s `created` while it lives.
    creator: Option<Source>,
}

impl Swarm {
    fn get(&self, id: &[u8; 20]) -> Option<&Peer> {
        self.peers.get(*self.index.get(id)?)
    }

    fn count_role(&mut self, peer: &Peer, up: bool) {
        let n = if peer.seeder() {
            &mut self.seeders
        } else {
            &mut self.leechers
        };
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    fn count_source(&mut self, peer: &Peer, up: bool) {
        if peer.trusted() {
            return;
        }
        if up {
            self.anonymous += 1;
            self.by_source.add(Source::of(peer.ip));
        } else {
            self.anonymous = self.anonymous.saturating_sub(1);
            self.by_source.sub(Source::of(peer.ip));
        }
    }

    /// Add the peer, or update it in place if its id is known.
    fn upsert(&mut self, peer: Peer) {
        self.count_role(&peer, true);
        self.oldest_seen = Some(
            self.oldest_seen
                .map_or(peer.last_seen, |o| o.min(peer.last_seen)),
        );
        match self.index.get(&peer.id) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.peers[i], peer);
                self.count_role(&old, false);
                if old.ip != peer.ip || old.trusted() != peer.trusted() {
                    self.count_source(&old, false);
                    self.count_source(&peer, true);
                }
            }
            None => {
                self.count_source(&peer, true);
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
        self.count_role(&gone, false);
        self.count_source(&gone, false);
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
            self.anonymous = 0;
            self.by_source.clear();
            for i in 0..self.peers.len() {
                let p = self.peers[i];
                self.count_source(&p, true);
            }
        }
        self.recount();
    }

    /// Make room for one peer by forgetting an anonymous one: the first after a random place,
    /// so that where one source holds most of the anonymous peers, most likely one of its.
    /// Runs only for a trusted newcomer to a full swarm.
    fn evict_anonymous(&mut self) -> bool {
        let n = self.peers.len();
        if self.anonymous == 0 || n == 0 {
            return false;
        }
        let start = fast_rng::FastRng::hold().gen_range(0..n);
        let found = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !self.peers[i].trusted());
        match found {
            Some(i) => {
                let id = self.peers[i].id;
                self.remove(&id);
                true
            }
            None => false,
        }
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

    /// Forget stale peers, if any may be held.
    fn drop_stale(&mut self, live: Liveness) {
        if !self.all_alive(live) {
            self.retain(|p| live.alive(p));
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
            if peer.seeder() {
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

/// Whether an announce from `at` may change or remove `peer`, which holds its peer id: an
/// enrolled volunteer's (or the origin's) peer is not someone else's to move or stop, so only
/// its own address or another trusted source may; an anonymous peer may move (a client whose
/// address changed keeps its id), as before.
fn may_take(peer: &Peer, at: IpAddr, trusted: bool) -> bool {
    trusted || !peer.trusted() || addr_key(peer.ip) == addr_key(at)
}

/// All swarms the tracker knows about.
#[derive(Debug)]
pub struct Swarms {
    limits: SwarmLimits,
    swarms: HashMap<[u8; 20], Swarm>,
    /// The published torrents and repository swarms ([`Swarms::set_listed`]).
    listed: HashSet<[u8; 20]>,
    /// Swarms held of unlisted torrents (open mode), bounded by `max_swarms`.
    unlisted: usize,
    /// Live unlisted swarms by the source that created them.
    created: SourceCounts,
    rate: RateTable,
    /// Address keys an enrolled volunteer announced from, and when it last did (looked up on
    /// every announce while any is trusted).
    trusted: HashMap<u128, Instant, SourceHash>,
    refusals: Refusals,
}

/// A swarm is gone: what was counted for it is given back.
fn released(created: &mut SourceCounts, unlisted: &mut usize, gone: &Swarm) {
    if !gone.listed {
        *unlisted = unlisted.saturating_sub(1);
    }
    if let Some(c) = gone.creator {
        created.sub(c);
    }
}

impl Swarms {
    pub fn new(limits: SwarmLimits) -> Self {
        Swarms {
            limits,
            swarms: HashMap::new(),
            listed: HashSet::new(),
            unlisted: 0,
            created: SourceCounts::default(),
            rate: RateTable::new(limits.announce_rate, limits.announce_burst),
            trusted: HashMap::default(),
            refusals: Refusals::default(),
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

    /// Torrents listed ([`Swarms::set_listed`]).
    pub fn listed_count(&self) -> usize {
        self.listed.len()
    }

    /// Addresses trusted now (some may be past their time, awaiting [`Swarms::expire`]).
    pub fn trusted_count(&self) -> usize {
        self.trusted.len()
    }

    /// Announces refused since start, by reason.
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// Replace the listed torrents: the server's published ones and its repositories'
    /// swarms. In published mode, swarms of torrents no longer listed are dropped at once; in
    /// open mode they stay, counted with the unlisted ones from now on.
    pub fn set_listed(&mut self, listed: HashSet<[u8; 20]>) {
        self.listed = listed;
        let Swarms {
            limits,
            swarms,
            listed,
            unlisted,
            created,
            ..
        } = self;
        let open = limits.torrents == Torrents::Open;
        *unlisted = 0;
        swarms.retain(|hash, s| {
            if listed.contains(hash) {
                if let Some(c) = s.creator.take() {
                    created.sub(c);
                }
                s.listed = true;
                return true;
            }
            if !open {
                if let Some(c) = s.creator.take() {
                    created.sub(c);
                }
                return false;
            }
            s.listed = false;
            *unlisted += 1;
            true
        });
    }

    /// Vouch for `ip`: an enrolled volunteer announced from it (signed). Its peers are
    /// trusted until [`SwarmLimits::peer_ttl`] passes without another such announce. False
    /// when [`MAX_TRUSTED`] live addresses are trusted already.
    pub fn trust(&mut self, ip: IpAddr, now: Instant) -> bool {
        let addr = addr_key(ip);
        if self.trusted.len() >= MAX_TRUSTED && !self.trusted.contains_key(&addr) {
            let ttl = self.limits.peer_ttl;
            self.trusted
                .retain(|_, seen| now.saturating_duration_since(*seen) <= ttl);
            if self.trusted.len() >= MAX_TRUSTED {
                return false;
            }
        }
        self.trusted.insert(addr, now);
        true
    }

    fn is_trusted(&self, addr: u128, now: Instant) -> bool {
        !self.trusted.is_empty()
            && self
                .trusted
                .get(&addr)
                .is_some_and(|&seen| now.saturating_duration_since(seen) <= self.limits.peer_ttl)
    }

    /// Count one request (announce or scrape) from `ip` against its rate, unless it is
    /// trusted (`standing`, or an address vouched for). `Ok(true)`: trusted.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        standing: Standing,
        now: Instant,
    ) -> Result<bool, SwarmError> {
        let addr = addr_key(ip);
        let trusted = standing == Standing::Trusted || self.is_trusted(addr, now);
        if !trusted && !self.rate.admit(addr, now) {
            self.refusals.count(SwarmError::RateLimited);
            return Err(SwarmError::RateLimited);
        }
        Ok(trusted)
    }

    /// Records an anonymous announce and picks peers for the reply (see
    /// [`Swarms::announce_into`]).
    pub fn announce(
        &mut self,
        req: &AnnounceRequest,
        peer_addr: SocketAddr,
        now: Instant,
    ) -> Result<AnnounceOutcome, SwarmError> {
        self.announce_as(req, peer_addr, Standing::Anonymous, now)
    }

    /// [`Swarms::announce`] with the caller's word on who it is from.
    pub fn announce_as(
        &mut self,
        req: &AnnounceRequest,
        peer_addr: SocketAddr,
        standing: Standing,
        now: Instant,
    ) -> Result<AnnounceOutcome, SwarmError> {
        let mut out = AnnounceOutcome::default();
        self.announce_into(req, peer_addr, standing, now, &mut out)?;
        Ok(out)
    }

    /// Records an announce and picks peers for the reply, into `out`, whose peer buffer is
    /// reused: a server keeps one per thread, as a reply's peers are more bytes than the
    /// allocator caches per thread. On an error `out` holds no peers, and the error counts in
    /// [`Swarms::refusals`].
    ///
    /// The peer's address is the socket's IP (never a client-supplied one) with the port the
    /// client announced. IPv4-mapped IPv6 addresses from dual-stack sockets are folded back
    /// to IPv4 so they land in `peers`.
    ///
    /// A peer already held that announces again from its address costs O(1) and no
    /// allocation: the rate slot, the swarm and the peer id are each one lookup.
    pub fn announce_into(
        &mut self,
        req: &AnnounceRequest,
        peer_addr: SocketAddr,
        standing: Standing,
        now: Instant,
        out: &mut AnnounceOutcome,
    ) -> Result<(), SwarmError> {
        out.peers.clear();
        out.complete = 0;
        out.incomplete = 0;
        let ip = peer_addr.ip().to_canonical();
        let trusted = self.admit(ip, standing, now)?;
        let result = self.record(req, ip, trusted, now, out);
        if let Err(e) = result {
            self.refusals.count(e);
        }
        result
    }

    fn record(
        &mut self,
        req: &AnnounceRequest,
        ip: IpAddr,
        trusted: bool,
        now: Instant,
        out: &mut AnnounceOutcome,
    ) -> Result<(), SwarmError> {
        let live = Liveness::at(now, self.limits.peer_ttl);
        if req.event == Event::Stopped {
            self.stop(req, ip, trusted, live, out);
            return Ok(());
        }

        let Swarms {
            limits,
            swarms,
            listed,
            unlisted,
            created,
            refusals,
            ..
        } = self;
        let swarm = match swarms.entry(req.info_hash) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let is_listed = listed.contains(&req.info_hash);
                let creator = if is_listed {
                    None
                } else {
                    if limits.torrents == Torrents::Published {
                        return Err(SwarmError::UnknownTorrent);
                    }
                    if *unlisted >= limits.max_swarms {
                        return Err(SwarmError::TooManySwarms);
                    }
                    let src = Source::of(ip);
                    // No source can be at a bound while the unlisted swarms are fewer.
                    let (max_addr, max_prefix) =
                        (limits.max_swarms_per_addr, limits.max_swarms_per_prefix);
                    if !trusted
                        && *unlisted >= max_addr.min(max_prefix) as usize
                        && created.reached(src, max_addr, max_prefix)
                    {
                        return Err(SwarmError::SourceSwarmsFull);
                    }
                    *unlisted += 1;
                    created.add(src);
                    Some(src)
                };
                e.insert(Swarm {
                    listed: is_listed,
                    creator,
                    ..Swarm::default()
                })
            }
        };

        let known = swarm.get(&req.peer_id).copied();
        let was_seeder = known.map(|p| p.seeder());
        if let Err(e) = admit_peer(swarm, known, ip, trusted, limits, live, refusals) {
            if swarm.peers.is_empty() {
                // Only possible with a zero limit; don't leave a husk.
                if let Some(gone) = swarms.remove(&req.info_hash) {
                    released(created, unlisted, &gone);
                }
            }
            return Err(e);
        }

        // Count a download once per transition to seeder, so a seeder
        // repeating `completed` cannot inflate the counter.
        if req.event == Event::Completed && was_seeder != Some(true) {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        let mut flags = 0;
        if req.left == 0 {
            flags |= SEEDER;
        }
        if trusted {
            flags |= TRUSTED;
        }
        swarm.upsert(Peer {
            last_seen: now,
            id: req.peer_id,
            ip,
            port: req.port,
            flags,
        });

        let stats = swarm.stats(live);
        out.complete = stats.complete;
        out.incomplete = stats.incomplete;
        select_peers(swarm, req, live, stats.incomplete > 0, &mut out.peers);
        Ok(())
    }

    /// Handles `event=stopped`: forget the peer, never create a swarm. A departing peer
    /// needs no peers, only the counts. A trusted peer is not stopped from someone else's
    /// address (see [`may_take`]).
    fn stop(
        &mut self,
        req: &AnnounceRequest,
        ip: IpAddr,
        trusted: bool,
        live: Liveness,
        out: &mut AnnounceOutcome,
    ) {
        let Some(swarm) = self.swarms.get_mut(&req.info_hash) else {
            return;
        };
        match swarm.get(&req.peer_id) {
            Some(p) if !may_take(p, ip, trusted) => {
                self.refusals.count(SwarmError::PeerIdTaken);
            }
            _ => swarm.remove(&req.peer_id),
        }
        let stats = swarm.stats(live);
        if swarm.peers.is_empty() {
            if let Some(gone) = self.swarms.remove(&req.info_hash) {
                released(&mut self.created, &mut self.unlisted, &gone);
            }
        }
        out.complete = stats.complete;
        out.incomplete = stats.incomplete;
    }

    /// Stats for the given swarms, in the order asked (unknown ones as zeros). No hashes, no
    /// stats: a scrape of every swarm is not offered (its answer grows with the tracker).
    pub fn scrape(&self, hashes: &[[u8; 20]], now: Instant) -> Vec<([u8; 20], SwarmStats)> {
        let live = Liveness::at(now, self.limits.peer_ttl);
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

    /// Drops peers not seen within the TTL, then swarms left empty, and trust not renewed
    /// within it.
    pub fn expire(&mut self, now: Instant) {
        let live = Liveness::at(now, self.limits.peer_ttl);
        let Swarms {
            swarms,
            created,
            unlisted,
            trusted,
            limits,
            ..
        } = self;
        swarms.retain(|_, swarm| {
            swarm.retain(|p| live.alive(p));
            let keep = !swarm.peers.is_empty();
            if !keep {
                released(created, unlisted, swarm);
            }
            keep
        });
        let ttl = limits.peer_ttl;
        trusted.retain(|_, seen| now.saturating_duration_since(*seen) <= ttl);
    }
}

/// Whether the announcer, from `ip`, may be held in `swarm`: it is held already at this
/// address, or there is room for it. A peer known at another address is taken as a newcomer
/// there (its old place given up), unless it is trusted and the announcer is not.
///
/// An anonymous newcomer needs its address and prefix under their bounds and the swarm
/// under its size; a trusted one needs only a place, and takes an anonymous peer's if the
/// swarm is full. Stale peers are forgotten first, and only where one may be held, so a
/// refusal costs O(1) until a peer may have gone stale again.
fn admit_peer(
    swarm: &mut Swarm,
    known: Option<Peer>,
    ip: IpAddr,
    trusted: bool,
    limits: &SwarmLimits,
    live: Liveness,
    refusals: &mut Refusals,
) -> Result<(), SwarmError> {
    if let Some(old) = known {
        // The common case, a peer announcing again from where it was, costs one comparison.
        if old.ip == ip || addr_key(old.ip) == addr_key(ip) {
            return Ok(());
        }
        if !may_take(&old, ip, trusted) {
            return Err(SwarmError::PeerIdTaken);
        }
        swarm.remove(&old.id);
    }
    if !trusted {
        let src = Source::of(ip);
        let (max_addr, max_prefix) = (limits.max_peers_per_addr, limits.max_peers_per_prefix);
        // No source can be at a bound while all anonymous peers together are under both:
        // most swarms then cost no lookup.
        if swarm.anonymous >= max_addr.min(max_prefix)
            && swarm.by_source.reached(src, max_addr, max_prefix)
        {
            swarm.drop_stale(live);
            if swarm.by_source.reached(src, max_addr, max_prefix) {
                return Err(SwarmError::SourcePeersFull);
            }
        }
    }
    if swarm.peers.len() >= limits.max_peers_per_swarm {
        swarm.drop_stale(live);
        if swarm.peers.len() >= limits.max_peers_per_swarm {
            if trusted && swarm.evict_anonymous() {
                refusals.evicted += 1;
            } else {
                return Err(SwarmError::SwarmFull);
            }
        }
    }
    Ok(())
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
    let mut rng = fast_rng::FastRng::hold();
    let start = rng.gen_range(0..n);
    let (tail, head) = swarm.peers.split_at(start);
    chosen.extend(
        head.iter()
            .chain(tail)
            .filter(|p| p.id != req.peer_id && (all_alive || live.alive(p)))
            .filter(|p| !only_leechers || !p.seeder())
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

    /// Open, and no per-source bound the tests that are not about them would meet: they
    /// announce every peer from 127.0.0.1.
    fn limits() -> SwarmLimits {
        SwarmLimits {
            torrents: Torrents::Open,
            max_peers_per_swarm: 100,
            max_swarms: 10,
            max_peers_per_addr: 1000,
            max_peers_per_prefix: 1000,
            max_swarms_per_addr: 1000,
            max_swarms_per_prefix: 1000,
            announce_rate: 1_000_000,
            announce_burst: 1_000_000,
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
    fn scrape_specific_unknown_and_never_all() {
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
        // No hashes is not "every swarm": the answer would grow with the tracker.
        assert_eq!(s.scrape(&[], t), vec![]);
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
                                .filter(|p| p.seeder() == seeder && live.alive(p))
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

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn listed(hashes: &[[u8; 20]]) -> HashSet<[u8; 20]> {
        hashes.iter().copied().collect()
    }

    /// Published mode with `H1` listed, small per-source bounds, no rate to speak of.
    fn bounded() -> Swarms {
        let mut s = Swarms::new(SwarmLimits {
            torrents: Torrents::Published,
            max_peers_per_swarm: 20,
            max_peers_per_addr: 4,
            max_peers_per_prefix: 8,
            ..limits()
        });
        s.set_listed(listed(&[H1]));
        s
    }

    /// What the issue reproduced: 2,100 peers from one address filled a real swarm and the
    /// next newcomer heard "swarm is full". Now one address gets its bound, its /24 its own,
    /// and newcomers elsewhere still get in.
    #[test]
    fn one_address_cannot_fill_a_swarm() {
        let mut s = bounded();
        let t = Instant::now();
        let mut r = req(H1, 0, 6881, 1, Event::Started);
        let mut refused = 0;
        for i in 0..2100u32 {
            r.peer_id[..4].copy_from_slice(&i.to_be_bytes());
            match s.announce(&r, at("10.0.0.1"), t) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, SwarmError::SourcePeersFull);
                    refused += 1;
                }
            }
        }
        assert_eq!((s.peer_count(), refused), (4, 2096));
        assert_eq!(s.refusals().source_peers, 2096);
        // A peer held re-announces as ever.
        r.peer_id[..4].copy_from_slice(&0u32.to_be_bytes());
        assert!(s.announce(&r, at("10.0.0.1"), t).is_ok());
        // Its neighbours in the /24 share the prefix's bound.
        let mut held = 4;
        for host in 2..=9u8 {
            for id in 0..4u8 {
                let r = req(H1, 100 + host * 4 + id, 6881, 1, Event::None);
                if s.announce(&r, at(&format!("10.0.0.{host}")), t).is_ok() {
                    held += 1;
                }
            }
        }
        assert_eq!(held, 8, "the /24's bound");
        assert_eq!(s.peer_count(), 8);
        // Another network is not affected, and sees the peers.
        let out = s
            .announce(&req(H1, 250, 7000, 1, Event::None), at("192.0.2.1"), t)
            .unwrap();
        assert_eq!(out.peers.len(), 8);
    }

    #[test]
    fn ipv6_is_bounded_per_slash_64_and_slash_48() {
        let mut s = bounded();
        let t = Instant::now();
        // A host rotating addresses within its /64 is one address.
        let mut ok = 0;
        for i in 1..=10u8 {
            let ip = format!("2001:db8:1:1::{i}");
            if s.announce(&req(H1, i, 6881, 1, Event::None), at(&ip), t)
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 4);
        // Rotating /64s within a /48 is one prefix.
        for i in 1..=10u8 {
            let ip = format!("2001:db8:1:{:x}::1", 100 + u16::from(i));
            if s.announce(&req(H1, 50 + i, 6881, 1, Event::None), at(&ip), t)
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 8);
        assert!(s
            .announce(&req(H1, 99, 6881, 1, Event::None), at("2001:db8:2::1"), t)
            .is_ok());
    }

    /// A full swarm refuses anonymous newcomers; a trusted one (the origin, or an address an
    /// enrolled volunteer announced from) takes an anonymous peer's place; nobody takes a
    /// trusted peer's.
    #[test]
    fn trusted_newcomers_take_anonymous_places_never_the_reverse() {
        let mut s = Swarms::new(SwarmLimits {
            max_peers_per_swarm: 6,
            max_peers_per_addr: 1,
            max_peers_per_prefix: 1,
            ..limits()
        });
        let t = Instant::now();
        for i in 1..=6u8 {
            s.announce(
                &req(H1, i, 6881, 1, Event::None),
                at(&format!("10.0.{i}.1")),
                t,
            )
            .unwrap();
        }
        let anon = req(H1, 7, 6881, 1, Event::None);
        assert_eq!(
            s.announce(&anon, at("10.0.7.1"), t),
            Err(SwarmError::SwarmFull)
        );
        // The origin's seed: trusted by the caller's word.
        let origin = req(H1, 100, 6999, 0, Event::Started);
        let out = s
            .announce_as(&origin, at("198.51.100.1"), Standing::Trusted, t)
            .unwrap();
        assert_eq!(out.complete, 1);
        assert_eq!(s.peer_count(), 6);
        assert_eq!(s.refusals().evicted, 1);
        // A volunteer's address, vouched for by its signed announce.
        assert!(s.trust("198.51.100.7".parse().unwrap(), t));
        for i in 101..=105u8 {
            s.announce(&req(H1, i, 7000, 1, Event::None), at("198.51.100.7"), t)
                .unwrap();
        }
        assert_eq!(s.refusals().evicted, 6, "every anonymous peer gave way");
        // Only trusted peers now: a trusted newcomer is refused too, and the others stay.
        assert_eq!(
            s.announce(&req(H1, 106, 7000, 1, Event::None), at("198.51.100.7"), t),
            Err(SwarmError::SwarmFull)
        );
        assert_eq!(s.peer_count(), 6);
        // Anonymous newcomers cannot push them out.
        for i in 8..=40u8 {
            assert!(s
                .announce(
                    &req(H1, i, 6881, 1, Event::None),
                    at(&format!("10.1.{i}.1")),
                    t
                )
                .is_err());
        }
        assert_eq!(s.peer_count(), 6);
        // Trust lapses with the TTL unless renewed: then the address is anonymous again.
        let later = t + TTL + Duration::from_secs(1);
        s.expire(later);
        assert_eq!(s.trusted_count(), 0);
    }

    /// Peer ids are not secret (a BitTorrent handshake tells them): an anonymous announce
    /// with an enrolled peer's id, from elsewhere, neither moves nor stops it.
    #[test]
    fn an_anonymous_announce_cannot_move_or_stop_a_trusted_peer() {
        let mut s = Swarms::new(limits());
        let t = Instant::now();
        let vol = req(H1, 1, 7000, 0, Event::None);
        s.announce_as(&vol, at("198.51.100.7"), Standing::Trusted, t)
            .unwrap();
        let mut hijack = req(H1, 1, 9, 1, Event::None);
        assert_eq!(
            s.announce(&hijack, at("10.0.0.1"), t),
            Err(SwarmError::PeerIdTaken)
        );
        hijack.event = Event::Stopped;
        s.announce(&hijack, at("10.0.0.1"), t).unwrap();
        assert_eq!(s.refusals().peer_id_taken, 2);
        let out = s
            .announce(&req(H1, 2, 6881, 1, Event::None), at("10.0.0.2"), t)
            .unwrap();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(out.peers, vec![SocketAddr::new(ip, 7000)]);
        // From its own address it stops as ever.
        let mut own = vol.clone();
        own.event = Event::Stopped;
        s.announce(&own, at("198.51.100.7"), t).unwrap();
        assert_eq!(s.peer_count(), 1);
    }

    #[test]
    fn published_mode_refuses_unknown_torrents_and_follows_the_list() {
        let mut s = bounded();
        let t = Instant::now();
        assert_eq!(
            s.announce(&req(H2, 1, 1, 1, Event::None), at("10.0.0.1"), t),
            Err(SwarmError::UnknownTorrent)
        );
        // The second flood: random info-hashes. None gets a swarm.
        let mut r = req(H2, 1, 1, 1, Event::None);
        for i in 0..10_000u32 {
            r.info_hash[..4].copy_from_slice(&i.to_be_bytes());
            assert!(s.announce(&r, at("10.0.0.1"), t).is_err());
        }
        assert_eq!(s.swarm_count(), 0);
        assert_eq!(s.refusals().unknown_torrent, 10_001);
        s.announce(&req(H1, 1, 1, 1, Event::None), at("10.0.0.1"), t)
            .unwrap();
        // A publish replaced H1 by H2: H1's swarm goes, H2 is welcome.
        s.set_listed(listed(&[H2]));
        assert_eq!(s.swarm_count(), 0);
        assert_eq!(
            s.announce(&req(H1, 1, 1, 1, Event::None), at("10.0.0.1"), t),
            Err(SwarmError::UnknownTorrent)
        );
        assert!(s
            .announce(&req(H2, 1, 1, 1, Event::None), at("10.0.0.1"), t)
            .is_ok());
    }

    /// Open mode: unknown info-hashes get swarms, bounded in all and per creator, and never
    /// at the expense of listed torrents; a creator's count is given back when its swarms go.
    #[test]
    fn open_mode_bounds_unknown_torrents_without_crowding_out_listed_ones() {
        let mut s = Swarms::new(SwarmLimits {
            max_swarms: 5,
            max_swarms_per_addr: 2,
            max_swarms_per_prefix: 3,
            ..limits()
        });
        s.set_listed(listed(&[H1]));
        let t = Instant::now();
        let hash = |i: u8| [100 + i; 20];
        let create = |s: &mut Swarms, i: u8, ip: &str| {
            s.announce(&req(hash(i), 1, 1, 1, Event::None), at(ip), t)
        };
        assert!(create(&mut s, 1, "10.0.0.1").is_ok());
        assert!(create(&mut s, 2, "10.0.0.1").is_ok());
        assert_eq!(
            create(&mut s, 3, "10.0.0.1"),
            Err(SwarmError::SourceSwarmsFull)
        );
        assert!(create(&mut s, 3, "10.0.0.2").is_ok());
        assert_eq!(
            create(&mut s, 4, "10.0.0.3"),
            Err(SwarmError::SourceSwarmsFull),
            "the /24 created three"
        );
        assert!(create(&mut s, 4, "10.0.1.1").is_ok());
        assert!(create(&mut s, 5, "10.0.2.1").is_ok());
        assert_eq!(
            create(&mut s, 6, "10.0.3.1"),
            Err(SwarmError::TooManySwarms)
        );
        // Joining an existing swarm is not creating one.
        assert!(s
            .announce(&req(hash(1), 2, 1, 1, Event::None), at("10.0.0.1"), t)
            .is_ok());
        // The mirror's own torrent is never refused for room.
        assert!(s
            .announce(&req(H1, 1, 1, 1, Event::None), at("10.0.3.1"), t)
            .is_ok());
        assert_eq!(s.swarm_count(), 6);
        // Once its swarms are gone, an address may create again.
        let later = t + TTL + Duration::from_secs(1);
        s.expire(later);
        assert_eq!(s.swarm_count(), 0);
        assert!(s.created.addr.is_empty() && s.created.prefix.is_empty());
        assert_eq!(s.unlisted, 0);
        assert!(s
            .announce(&req(hash(3), 1, 1, 1, Event::None), at("10.0.0.1"), later)
            .is_ok());
        // Listing a torrent someone created gives its creator's count back.
        s.set_listed(listed(&[H1, hash(3)]));
        assert!(s.created.addr.is_empty());
        assert_eq!(s.unlisted, 0);
    }

    #[test]
    fn the_rate_bounds_an_address_but_not_trusted_ones() {
        let mut s = Swarms::new(SwarmLimits {
            announce_rate: 10,
            announce_burst: 5,
            ..limits()
        });
        let t = Instant::now() + Duration::from_secs(1);
        let r = req(H1, 1, 1, 1, Event::None);
        let ok = (0..50)
            .filter(|_| s.announce(&r, at("10.0.0.1"), t).is_ok())
            .count();
        assert_eq!(ok, 5);
        assert_eq!(s.refusals().rate, 45);
        assert_eq!(
            s.announce(&r, at("10.0.0.1"), t),
            Err(SwarmError::RateLimited)
        );
        // Scrapes count against the same rate.
        assert_eq!(
            s.admit("10.0.0.1".parse().unwrap(), Standing::Anonymous, t),
            Err(SwarmError::RateLimited)
        );
        // A tenth of a second later, one more.
        let soon = t + Duration::from_millis(100);
        assert!(s.announce(&r, at("10.0.0.1"), soon).is_ok());
        assert!(s.announce(&r, at("10.0.0.1"), soon).is_err());
        // Trusted addresses are not rate-bound.
        s.trust("10.0.0.1".parse().unwrap(), soon);
        assert!((0..50).all(|_| s.announce(&r, at("10.0.0.1"), soon).is_ok()));
        assert!((0..50).all(|_| s
            .announce_as(&r, at("10.9.9.9"), Standing::Trusted, soon)
            .is_ok()));
    }

    /// Per-source state cannot be grown without bound by many addresses: the rate table is
    /// fixed, the trusted set capped, the per-source counts go with what they count.
    #[test]
    fn per_source_state_is_bounded_and_expires() {
        let mut s = Swarms::new(SwarmLimits {
            max_peers_per_swarm: 50,
            ..limits()
        });
        let t = Instant::now();
        let rate_bytes = s.rate.heap_bytes();
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i));
            let mut r = req(H1, 0, 1, 1, Event::None);
            r.peer_id[..4].copy_from_slice(&i.to_be_bytes());
            let _ = s.announce(&r, SocketAddr::new(ip, 1), t);
        }
        assert_eq!(s.rate.heap_bytes(), rate_bytes);
        assert_eq!(s.peer_count(), 50);
        let sw = &s.swarms[&H1];
        assert_eq!(sw.by_source.addr.len(), 50);
        for i in 0..(MAX_TRUSTED as u32 + 10) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 | i));
            let trusted = s.trust(ip, t);
            assert_eq!(trusted, (i as usize) < MAX_TRUSTED);
        }
        assert_eq!(s.trusted_count(), MAX_TRUSTED);
        // Once they lapse, room again (the full set is swept for the newcomer).
        let later = t + TTL + Duration::from_secs(1);
        assert!(s.trust("192.0.2.1".parse().unwrap(), later));
        assert_eq!(s.trusted_count(), 1);
        s.expire(later);
        assert_eq!(s.swarm_count(), 0);
    }

    /// The per-source counts agree with a count of the peers held, through announces from
    /// several addresses and standings that add, move, stop and outlive peers, evictions and
    /// expiry runs.
    #[test]
    fn source_counts_match_a_scan_through_every_change() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut s = Swarms::new(SwarmLimits {
            max_peers_per_swarm: 10,
            max_peers_per_addr: 3,
            max_peers_per_prefix: 5,
            ..limits()
        });
        let ips = [
            "10.0.0.1",
            "10.0.0.2",
            "10.0.1.1",
            "2001:db8::1",
            "2001:db8::2",
        ];
        let t0 = Instant::now();
        let mut now = t0;
        for step in 0..5000 {
            now += Duration::from_millis(rng.gen_range(0..3000));
            let event = match rng.gen_range(0..8) {
                0 => Event::Stopped,
                _ => Event::None,
            };
            let r = req(
                [rng.gen_range(0..2u8); 20],
                rng.gen_range(0..16),
                1,
                1,
                event,
            );
            let standing = if rng.gen_bool(0.2) {
                Standing::Trusted
            } else {
                Standing::Anonymous
            };
            let _ = s.announce_as(&r, at(ips[rng.gen_range(0..ips.len())]), standing, now);
            if step % 400 == 0 {
                s.expire(now);
            }
            for sw in s.swarms.values() {
                let mut want = SourceCounts::default();
                let mut anonymous = 0;
                for p in sw.peers.iter().filter(|p| !p.trusted()) {
                    want.add(Source::of(p.ip));
                    anonymous += 1;
                }
                assert_eq!(sw.anonymous, anonymous, "step {step}");
                assert_eq!(sw.by_source.addr, want.addr, "step {step}");
                assert_eq!(sw.by_source.prefix, want.prefix, "step {step}");
                assert!(sw.peers.len() <= 10);
            }
        }
    }
}
