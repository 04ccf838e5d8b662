//! The mirror registry: which volunteer holds which generation of which repository, its last
//! reported workload, and what the redirector has sent it since.
//!
//! This is soft state. It is rebuilt from announces after a restart; until then the origin
//! serves. Every reason a volunteer is not eligible is a value ([`Exclusion`]) so the
//! redirector can log it and the admin can see it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ladder::{Customer, VolunteerPlace};
use crate::link_model::{LinkModel, Reported};
use crate::prefetch;
use crate::reach::{Reach, Urls};
use crate::recent::{RecentCounts, Slicing};
use manifest::select::{PatternError, Selection};
use tracker::mirror::MirrorReport;

/// The workload a volunteer reported in its last announce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub customer_conns: u32,
    pub sync_conns: u32,
    pub upload_bps: u64,
    /// Declared capacity: concurrent customer downloads it accepts.
    pub capacity: u32,
    /// Recent sync upload rate, bytes/s.
    pub sync_bps: u64,
    /// Declared uplink, bytes/s (0: unknown).
    pub link_bps: u64,
}

/// The part of a repository a volunteer holds, as it announced it: its patterns' text (to
/// see at the next announce whether they changed) and the patterns read.
#[derive(Debug)]
pub struct Part {
    pub text: String,
    pub selection: Selection,
}

/// What a volunteer holds of one repository: the generation it fully holds (of its part, if
/// it holds one), and the part.
#[derive(Debug, Clone)]
struct HeldRepo {
    repo: Arc<str>,
    generation: u64,
    /// `None`: all of it.
    part: Option<Arc<Part>>,
}

/// What a volunteer holds, per repository. Names are the registry's shared copies and the
/// first entry is held in place: the request path asks this of every candidate, and a
/// volunteer mirrors one repository or a few.
#[derive(Debug, Clone, Default)]
pub struct Held {
    first: Option<HeldRepo>,
    more: Vec<HeldRepo>,
}

impl Held {
    pub fn get(&self, repo: &str) -> Option<u64> {
        self.iter().find(|(r, _)| *r == repo).map(|(_, g)| g)
    }

    /// The part of `repo` held, `None` if all of it (or nothing).
    pub fn part(&self, repo: &str) -> Option<&Arc<Part>> {
        self.entries().find(|h| *h.repo == *repo)?.part.as_ref()
    }

    fn entries(&self) -> impl Iterator<Item = &HeldRepo> {
        self.first.iter().chain(self.more.iter())
    }

    /// [`Self::get`] by the registry's own copy of the name: compared by address, without a
    /// visit to each name's bytes (a cache miss per candidate on the request path).
    fn get_interned(&self, repo: &Arc<str>) -> Option<&HeldRepo> {
        self.entries().find(|h| Arc::ptr_eq(&h.repo, repo))
    }

    fn entry(&mut self, repo: Arc<str>) -> &mut HeldRepo {
        let fresh = |repo| HeldRepo {
            repo,
            generation: 0,
            part: None,
        };
        let first = self.first.get_or_insert_with(|| fresh(repo.clone()));
        if *first.repo == *repo {
            return first;
        }
        match self.more.iter().position(|h| *h.repo == *repo) {
            Some(i) => &mut self.more[i],
            None => {
                self.more.push(fresh(repo));
                self.more.last_mut().expect("just pushed")
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries().map(|h| (&*h.repo, h.generation))
    }

    /// [`Self::iter`] with the part held of each repository (`None`: all of it).
    pub fn with_parts(&self) -> impl Iterator<Item = (&str, u64, Option<&Arc<Part>>)> {
        self.entries()
            .map(|h| (&*h.repo, h.generation, h.part.as_ref()))
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// Live state of one volunteer.
///
/// Laid out in declaration order (`repr(C)`), what every sampled candidate's eligibility
/// reads first and together, so that it costs one or two cache lines of the four hundred
/// bytes: the request path probes random volunteers, and each is usually out of cache.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct VolunteerLive {
    /// It said it stopped. Kept (with its sequence number) rather than forgotten, so that an
    /// announce it sent just before stopping, arriving late, is refused as a replay instead of
    /// bringing it back.
    pub stopped: bool,
    pub draining: bool,
    /// Its admin paused it (it said so in its last announce).
    pub paused: bool,
    quarantined: bool,
    /// It serves only customers from its own netblocks (a copy of `place.private`, read
    /// with the flags above).
    private: bool,
    /// Which customers its URLs can take, by scheme and family (a copy of `urls.reach()`,
    /// read with the flags above).
    reach: Reach,
    pub last_report: Instant,
    /// Generation fully held, and the part held, per repository.
    pub generations: Held,
    pub id: String,
    /// Every URL it gave: its own first ([`Self::url`]), and any beside it (https, IPv6); a
    /// customer is sent to the one it can follow.
    pub urls: Urls,
    pub load: Load,
    pub last_seq: u64,
    /// Redirects issued since the last report: optimistic accounting, so that a burst between
    /// two reports does not all land on whoever looked idlest.
    pub issued_since_report: u32,
    pub issued_total: u64,
    /// Bytes of the files customers were redirected to it for.
    pub issued_bytes: u64,
    /// Redirects issued within the connection window (server-side connection estimates).
    recent: RecentCounts,
    /// Its downloads as they probably stand now: the last report plus the redirects since,
    /// drained at its declared link's rate.
    pub model: LinkModel,
    /// When it (re)joined: first report, or first after going stale. For slow start.
    pub joined: Instant,
    /// A copy of [`Registry`]'s observed speeds (as `quarantined` is of its quarantine set)
    /// for this volunteer, so the request path reads them without a lookup by name.
    observed_speed: f64,
    /// How much of its declared uplink it has been using, customers and sync together, as
    /// its reports said, averaged over about [`USAGE_WINDOW`] (0 where the link is
    /// undeclared).
    usage: f64,
    /// Where it is: the place of its address, and the netblocks it declared.
    pub place: VolunteerPlace,
}

/// How long a volunteer's reported uplink use is averaged over: long enough to span many
/// downloads (one report says little), short enough to follow a sync that starts or stops.
pub const USAGE_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

impl VolunteerLive {
    /// The URL it announced as its own (what spot checks and the admin's views use).
    pub fn url(&self) -> &str {
        self.urls.primary()
    }

    /// How fast the server's checks found it against its peers (1.0 unless slower).
    pub fn observed_speed(&self) -> f64 {
        self.observed_speed
    }

    /// The share of its declared uplink it has been sending, customers and sync together,
    /// averaged over about [`USAGE_WINDOW`] of reports: what a volunteer gives, which
    /// `feedback` evens out where customers lose little by it.
    pub fn usage(&self) -> f64 {
        self.usage
    }
}

impl Load {
    /// The uplink share this report says was used over its interval: customers' and sync's
    /// bytes/s over the declared link, bounded (a report can say anything); 0 where the link
    /// is undeclared.
    pub fn usage(&self) -> f64 {
        if self.link_bps == 0 {
            return 0.0;
        }
        let sent = self.upload_bps.saturating_add(self.sync_bps) as f64;
        (sent / self.link_bps as f64).clamp(0.0, 2.0)
    }
}

/// Why a volunteer was not chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// It has not announced this repository.
    NotMirroring,
    /// It holds part of the repository, and not this file.
    NotInPart,
    /// It holds generation `held`, but the file changed in `needed`.
    Behind {
        held: u64,
        needed: u64,
    },
    /// It claims a generation newer than any published.
    Ahead {
        held: u64,
        latest: u64,
    },
    /// Its last announce is older than the timeout.
    Stale {
        age_ms: u64,
    },
    Draining,
    /// Its admin paused it.
    Paused,
    /// A spot check found bytes that do not match the published hashes.
    Quarantined,
    /// It announced that it stopped.
    Stopped,
    /// It serves only its own networks, and the customer is outside them.
    Private,
    /// None of its URLs is one the customer can follow: the customer came over HTTPS and
    /// it gave no `https://` URL, or over one address family and every URL names the other.
    Unreachable,
    /// It reports as many customers as it accepts.
    Full {
        conns: u32,
        capacity: u32,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NotMirroring => write!(f, "does not mirror this repository"),
            Exclusion::NotInPart => write!(f, "holds part of the repository, not this file"),
            Exclusion::Behind { held, needed } => {
                write!(f, "holds generation {held}, file changed in {needed}")
            }
            Exclusion::Ahead { held, latest } => {
                write!(f, "holds generation {held}, newer than {latest}, the newest published with these bytes")
            }
            Exclusion::Stale { age_ms } => write!(f, "last announce {age_ms} ms ago"),
            Exclusion::Draining => write!(f, "draining"),
            Exclusion::Paused => write!(f, "paused by its admin"),
            Exclusion::Quarantined => write!(f, "quarantined"),
            Exclusion::Stopped => write!(f, "stopped"),
            Exclusion::Private => {
                write!(
                    f,
                    "serves only its own networks; the customer is outside them"
                )
            }
            Exclusion::Full { conns, capacity } => {
                write!(f, "full ({conns} of {capacity} connections)")
            }
            Exclusion::Unreachable => write!(
                f,
                "none of its URLs is one the customer can follow (https, or its address family)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("sequence number {got} is not after {last}: replayed or reordered announce")]
    Replay { got: u64, last: u64 },
    #[error("ms_part is not a part of a repository: {0}")]
    Part(#[from] PatternError),
}

/// Probes of [`Registry::sample`] drawn, and their records hinted, before the first check.
const PROBES_AHEAD: usize = 16;

/// Volunteers [`Registry::sample`] draws from each of a customer's tiers beyond the nearest
/// that has one: the best of two, to compare with the nearest tier's.
pub const NEAR_EACH: usize = 2;

/// Up to `want` more eligible volunteers from `group` into `out`: the whole group if it has
/// at most `all_up_to`, else by random probes.
fn draw_from(
    group: &[usize],
    want: usize,
    all_up_to: usize,
    eligible: &impl Fn(usize) -> bool,
    pick: &mut dyn FnMut(usize) -> usize,
    out: &mut Vec<usize>,
) {
    let take = |i: usize, out: &mut Vec<usize>| {
        let new = !out.contains(&i) && eligible(i);
        if new {
            out.push(i);
        }
        new
    };
    if group.len() <= all_up_to {
        for &i in group {
            take(i, out);
        }
        return;
    }
    let mut added = 0;
    for _ in 0..4 * want {
        added += usize::from(take(group[pick(group.len())], out));
        if added == want {
            return;
        }
    }
}

/// [`VolunteerPlace::admits`] and [`Reach::admits`] as an exclusion.
fn admits(v: &VolunteerLive, customer: Option<&Customer>) -> Result<(), Exclusion> {
    if !v.place.admits(customer) {
        Err(Exclusion::Private)
    } else if !reachable(v, customer) {
        Err(Exclusion::Unreachable)
    } else {
        Ok(())
    }
}

/// Whether one of its URLs can take `customer` (anyone nothing is known of).
#[inline]
fn reachable(v: &VolunteerLive, customer: Option<&Customer>) -> bool {
    customer.is_none_or(|c| v.reach.admits(c.reach))
}

/// The URLs an announce gives.
fn urls_of(report: &MirrorReport) -> Urls {
    Urls::new(&report.url, report.other_urls.iter().map(String::as_str))
}

/// Where the registry's volunteer records lie, readable without its lock: the request path
/// hints the CPU to load the records it is about to sample while it looks up the path, so
/// that the two lookups' cache misses overlap. A hint only: nothing is read through the
/// address, so a stale one (the registry changed since) costs a useless prefetch and no more.
#[derive(Debug, Default)]
pub struct RecordsAt {
    base: AtomicUsize,
    len: AtomicUsize,
}

impl RecordsAt {
    /// Hint the records that [`Registry::sample`] would probe first if `pick` gave it the
    /// same numbers (a copy of its generator: [`fast_rng::FastRng::peek`]). Mirrors
    /// `sample`'s first draws; where they differ, only the hint is wasted.
    pub fn prefetch_sample(
        &self,
        (k, all_up_to): (usize, usize),
        pick: &mut dyn FnMut(usize) -> usize,
    ) {
        let n = self.len.load(Ordering::Relaxed);
        if n <= all_up_to.max(k) {
            return;
        }
        let base = self.base.load(Ordering::Relaxed);
        let size = std::mem::size_of::<VolunteerLive>();
        for _ in 0..k.min(PROBES_AHEAD) {
            let at = base.wrapping_add(pick(n).wrapping_mul(size));
            prefetch::lines_of(at as *const u8, size);
        }
    }

    fn set(&self, records: &[VolunteerLive]) {
        self.base
            .store(records.as_ptr() as usize, Ordering::Relaxed);
        self.len.store(records.len(), Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Registry {
    /// Sorted by id: listings are stable, and a position is what the request path samples.
    volunteers: Vec<VolunteerLive>,
    index: HashMap<String, usize>,
    /// How redirects are counted within the redirector's connection window.
    slicing: Slicing,
    /// Repository names, one shared copy each.
    repo_names: Vec<Arc<str>>,
    /// Volunteers whose bytes failed a check. Kept apart from the live state so that it holds
    /// whether or not they announce.
    quarantined: std::collections::HashSet<String>,
    /// How fast the server's checks found each volunteer against its peers (1.0 if absent).
    observed_speed: HashMap<String, f64>,
    timeout: Duration,
    /// Kept up to date with `volunteers` (see [`RecordsAt`]).
    records_at: Arc<RecordsAt>,
    /// Servers the customers are spread over (replicas behind a load balancer or DNS round
    /// robin), this one among them: each redirect counted here stands for this many
    /// mirror-wide until the volunteer's next report says how many it really serves.
    servers: u32,
    /// Volunteers by where they are, for sampling near a customer.
    near: NearIndex,
}

/// Positions of volunteers by place: the groups a customer's nearer tiers draw from.
#[derive(Debug, Default)]
struct NearIndex {
    /// By each netblock declared (a volunteer in each of its netblocks' lists).
    nets: locate::PrefixTable<Vec<usize>>,
    site: HashMap<u16, Vec<usize>>,
    asn: HashMap<u32, Vec<usize>>,
    country: HashMap<[u8; 2], Vec<usize>>,
    region: HashMap<u16, Vec<usize>>,
    /// Some volunteer has a place or declared netblocks (else a customer's place is not
    /// worth working out).
    any: bool,
}

impl NearIndex {
    fn build(volunteers: &[VolunteerLive]) -> NearIndex {
        let mut ix = NearIndex::default();
        let mut nets: HashMap<locate::Netblock, Vec<usize>> = HashMap::new();
        for (i, v) in volunteers.iter().enumerate() {
            let p = &v.place;
            for &n in p.nets.iter() {
                nets.entry(n).or_default().push(i);
            }
            let pl = &p.place;
            if let Some(s) = pl.site {
                ix.site.entry(s).or_default().push(i);
            }
            if let Some(a) = pl.asn {
                ix.asn.entry(a).or_default().push(i);
            }
            if let Some(c) = pl.country {
                ix.country.entry(c).or_default().push(i);
            }
            if let Some(r) = pl.region {
                ix.region.entry(r).or_default().push(i);
            }
            ix.any |= !p.nets.is_empty() || *pl != locate::place::Place::default() || p.private;
        }
        for (n, at) in nets {
            // Distinct keys: no insert is refused.
            let _ = ix.nets.insert(n, at);
        }
        ix
    }

    /// The groups holding `c`'s nearer tiers, nearest first (the netblock tier may be
    /// several groups, one per declared netblock holding its address).
    fn groups<'a>(&'a self, c: &Customer, out: &mut Vec<&'a [usize]>) {
        out.clear();
        out.extend(self.nets.each_holding(c.addr).map(Vec::as_slice));
        let p = &c.place;
        let found = [
            p.site.and_then(|s| self.site.get(&s)),
            p.asn.and_then(|a| self.asn.get(&a)),
            p.country.and_then(|k| self.country.get(&k)),
            p.region.and_then(|r| self.region.get(&r)),
        ];
        out.extend(found.into_iter().flatten().map(Vec::as_slice));
    }
}

impl Registry {
    pub fn new(timeout: Duration) -> Self {
        Registry {
            volunteers: Vec::new(),
            index: HashMap::new(),
            slicing: Slicing::new(Duration::from_secs(10), Instant::now()),
            repo_names: Vec::new(),
            quarantined: Default::default(),
            observed_speed: HashMap::new(),
            timeout,
            records_at: Arc::default(),
            servers: 1,
            near: NearIndex::default(),
        }
    }

    /// Customers are spread evenly over `n` servers, this one among them (see `servers`).
    pub fn set_servers(&mut self, n: u32) {
        self.servers = n.max(1);
    }

    /// Where the volunteer records lie, for the request path's prefetch hints.
    pub fn records_at(&self) -> Arc<RecordsAt> {
        self.records_at.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long redirects count as open connections; older timestamps are dropped.
    pub fn set_connection_window(&mut self, window: Duration) {
        self.slicing = Slicing::new(window, Instant::now());
    }

    fn repo_name(&mut self, repo: &str) -> Arc<str> {
        if let Some(r) = self.repo_names.iter().find(|r| ***r == *repo) {
            return r.clone();
        }
        let r: Arc<str> = repo.into();
        self.repo_names.push(r.clone());
        r
    }

    /// After `volunteers` gained or lost one (it may have moved).
    fn reindex(&mut self) {
        self.records_at.set(&self.volunteers);
        self.near = NearIndex::build(&self.volunteers);
        self.index = self
            .volunteers
            .iter()
            .enumerate()
            .map(|(i, v)| (v.id.clone(), i))
            .collect();
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut VolunteerLive> {
        let i = *self.index.get(id)?;
        self.volunteers.get_mut(i)
    }

    /// Apply an authenticated mirror announce for `repo`.
    pub fn report(
        &mut self,
        repo: &str,
        report: &MirrorReport,
        draining: bool,
        now: Instant,
    ) -> Result<(), RegistryError> {
        let i = match self.index.get(&report.volunteer) {
            Some(&i) => i,
            None => {
                let urls = urls_of(report);
                let at = self.volunteers.partition_point(|v| v.id < report.volunteer);
                self.volunteers.insert(
                    at,
                    VolunteerLive {
                        id: report.volunteer.clone(),
                        reach: urls.reach(),
                        urls,
                        generations: Held::default(),
                        load: Load::default(),
                        last_seq: 0,
                        last_report: now,
                        issued_since_report: 0,
                        issued_total: 0,
                        issued_bytes: 0,
                        recent: RecentCounts::default(),
                        model: LinkModel::default(),
                        draining,
                        paused: report.paused,
                        stopped: false,
                        joined: now,
                        quarantined: self.quarantined.contains(&report.volunteer),
                        observed_speed: self
                            .observed_speed
                            .get(&report.volunteer)
                            .copied()
                            .unwrap_or(1.0),
                        usage: 0.0,
                        private: report.private,
                        place: VolunteerPlace {
                            private: report.private,
                            ..VolunteerPlace::default()
                        },
                    },
                );
                self.reindex();
                at
            }
        };
        let repo_name = self.repo_name(repo);
        let v = &mut self.volunteers[i];
        if report.seq <= v.last_seq {
            return Err(RegistryError::Replay {
                got: report.seq,
                last: v.last_seq,
            });
        }
        // The part is read only when its text changed: a volunteer sends it with every
        // announce.
        let part = if report.part.is_empty() {
            None
        } else {
            match v
                .generations
                .get_interned(&repo_name)
                .and_then(|h| h.part.as_ref())
            {
                Some(p) if p.text == report.part => Some(p.clone()),
                _ => Some(Arc::new(Part {
                    selection: report.part.parse()?,
                    text: report.part.clone(),
                })),
            }
        };
        let since_last = now.saturating_duration_since(v.last_report);
        // New, or back after stopping or going stale: what it did before says nothing now.
        let fresh = v.last_seq == 0 || v.stopped || since_last > self.timeout;
        if fresh {
            v.joined = now; // back after stopping or going stale: slow start again
        }
        v.stopped = false;
        v.last_seq = report.seq;
        if !v
            .urls
            .same_as(&report.url, report.other_urls.iter().map(String::as_str))
        {
            v.urls = urls_of(report);
            v.reach = v.urls.reach();
        }
        let held = v.generations.entry(repo_name);
        held.generation = report.generation;
        held.part = part;
        v.load = Load {
            customer_conns: report.customer_conns,
            sync_conns: report.sync_conns,
            upload_bps: report.upload_bps,
            capacity: report.capacity.max(1),
            sync_bps: report.sync_bps,
            link_bps: report.link_bps,
        };
        // Each report's rate covers the time since the one before, so it weighs by that.
        let used = v.load.usage();
        let weight = if fresh {
            1.0
        } else {
            1.0 - (-since_last.as_secs_f64() / USAGE_WINDOW.as_secs_f64()).exp()
        };
        v.usage += weight * (used - v.usage);
        let typical = typical_remaining(v);
        v.model.reconcile(
            Reported {
                customers: report.customer_conns,
                sync_conns: report.sync_conns,
                sync_bps: report.sync_bps,
                link_bps: report.link_bps,
            },
            typical,
            now,
        );
        v.last_report = now;
        v.issued_since_report = 0;
        v.draining = draining;
        v.paused = report.paused;
        if v.private != report.private {
            // Narrowed at once; widened only by the place the server works out next.
            v.private = report.private;
            v.place.private = report.private;
            self.near = NearIndex::build(&self.volunteers);
        }
        Ok(())
    }

    /// Where volunteer `id` is, as the server worked it out from its address and the
    /// netblocks it declared. Whether that changed it.
    pub fn set_place(&mut self, id: &str, place: VolunteerPlace) -> bool {
        let Some(v) = self.get_mut(id) else {
            return false;
        };
        if v.place == place {
            return false;
        }
        v.private = place.private;
        v.place = place;
        self.near = NearIndex::build(&self.volunteers);
        true
    }

    /// Put `part` in place of the part `id` holds of `repo`, if that is still the one it
    /// announced (the same text): a budget's files, worked out after its announce.
    pub fn set_part(&mut self, id: &str, repo: &str, part: Arc<Part>) {
        let Some(repo) = self.interned(repo).cloned() else {
            return;
        };
        let Some(v) = self.get_mut(id) else {
            return;
        };
        let held = v.generations.entry(repo);
        if held.part.as_ref().is_some_and(|p| p.text == part.text) {
            held.part = Some(part);
        }
    }

    /// Forget a volunteer (revoked).
    pub fn remove(&mut self, id: &str) {
        if let Some(i) = self.index.get(id).copied() {
            self.volunteers.remove(i);
            self.reindex();
        }
        self.observed_speed.remove(id);
    }

    /// A signed `stopped` announce: no more redirects until it announces again with a newer
    /// sequence number.
    pub fn stop(&mut self, id: &str, seq: u64) {
        if let Some(v) = self.get_mut(id) {
            if seq > v.last_seq {
                v.last_seq = seq;
                v.stopped = true;
                // Nothing runs there any more: its last report's customers and sync are not
                // load (the dashboard, `volunteers` and /metrics show what it does now).
                v.load.customer_conns = 0;
                v.load.sync_conns = 0;
                v.load.upload_bps = 0;
                v.load.sync_bps = 0;
                v.usage = 0.0;
            }
        }
    }

    pub fn set_quarantined(&mut self, id: &str, quarantined: bool) {
        if quarantined {
            self.quarantined.insert(id.to_string());
        } else {
            self.quarantined.remove(id);
        }
        if let Some(v) = self.get_mut(id) {
            v.quarantined = quarantined;
        }
    }

    /// Record how fast the server's own checks found `id`, relative to its peers.
    pub fn set_observed_speed(&mut self, id: &str, speed: f64) {
        self.observed_speed.insert(id.to_string(), speed);
        if let Some(v) = self.get_mut(id) {
            v.observed_speed = speed;
        }
    }

    /// 1.0 unless the server's checks found `id` slower than its peers.
    pub fn observed_speed(&self, id: &str) -> f64 {
        self.observed_speed.get(id).copied().unwrap_or(1.0)
    }

    pub fn is_quarantined(&self, id: &str) -> bool {
        self.quarantined.contains(id)
    }

    pub fn set_draining(&mut self, id: &str, draining: bool) {
        if let Some(v) = self.get_mut(id) {
            v.draining = draining;
        }
    }

    /// Whether `v` may serve the file `path` of `repo`, whose bytes changed in `needed`, when
    /// `latest` is the newest published generation.
    pub fn check(
        &self,
        v: &VolunteerLive,
        repo: &str,
        path: &str,
        needed: u64,
        latest: u64,
        now: Instant,
    ) -> Result<(), Exclusion> {
        self.check_interned(v, self.interned(repo), Some(path), needed, latest, now)
    }

    /// The registry's copy of a repository name, if any volunteer ever announced it.
    fn interned(&self, repo: &str) -> Option<&Arc<str>> {
        self.repo_names.iter().find(|r| ***r == *repo)
    }

    /// [`Self::check`] with the name as [`Self::interned`] gave it; with no path, whether it
    /// may serve any file of `repo` changed in `needed` (one holding part of it may).
    fn check_interned(
        &self,
        v: &VolunteerLive,
        repo: Option<&Arc<str>>,
        path: Option<&str>,
        needed: u64,
        latest: u64,
        now: Instant,
    ) -> Result<(), Exclusion> {
        let age = now.saturating_duration_since(v.last_report);
        if age > self.timeout {
            return Err(Exclusion::Stale {
                age_ms: age.as_millis() as u64,
            });
        }
        if v.stopped {
            return Err(Exclusion::Stopped);
        }
        if v.draining {
            return Err(Exclusion::Draining);
        }
        if v.paused {
            return Err(Exclusion::Paused);
        }
        if v.quarantined {
            return Err(Exclusion::Quarantined);
        }
        let held = repo
            .and_then(|r| v.generations.get_interned(r))
            .ok_or(Exclusion::NotMirroring)?;
        let (held, part) = (held.generation, &held.part);
        if held > latest {
            return Err(Exclusion::Ahead { held, latest });
        }
        if held < needed || held == 0 {
            return Err(Exclusion::Behind { held, needed });
        }
        // A part holds the generation's files it selects, and no others.
        if let (Some(part), Some(path)) = (part, path) {
            if !part.selection.holds(path) {
                return Err(Exclusion::NotInPart);
            }
        }
        // Headroom is the policy's judgement, not eligibility: the baselines ignore load.
        Ok(())
    }

    /// Volunteers a syncing peer may ask for files of `repo` in bulk, each with the
    /// generation it fully holds (of its part, if it holds one: see [`Held::part`]): fresh,
    /// neither stopped, draining, paused nor quarantined, and mirroring `repo` at any
    /// generation up to `latest`, 0 included (one still filling has verified some files
    /// already; the puller checks every byte).
    pub fn sync_sources(
        &self,
        repo: &str,
        latest: u64,
        now: Instant,
    ) -> Vec<(&VolunteerLive, u64)> {
        let repo = self.interned(repo);
        self.volunteers
            .iter()
            .filter_map(
                |v| match self.check_interned(v, repo, None, 0, latest, now) {
                    Ok(()) => Some((v, v.generations.get_interned(repo?)?.generation)),
                    Err(Exclusion::Behind { held: 0, .. }) => Some((v, 0)),
                    Err(_) => None,
                },
            )
            .collect()
    }

    /// Split all volunteers into eligible ones (as positions for [`Self::at`]) and excluded
    /// ones with reasons, for `customer` (a private volunteer takes only its own networks').
    #[allow(clippy::too_many_arguments)]
    pub fn candidates(
        &self,
        repo: &str,
        path: &str,
        needed: u64,
        latest: u64,
        customer: Option<&Customer>,
        now: Instant,
    ) -> (Vec<usize>, Vec<(&VolunteerLive, Exclusion)>) {
        let mut ok = Vec::new();
        let mut excluded = Vec::new();
        // In id order (the vector's), so policies with ties behave the same run to run.
        for (i, v) in self.volunteers.iter().enumerate() {
            match self
                .check(v, repo, path, needed, latest, now)
                .and_then(|()| admits(v, customer))
            {
                Ok(()) => ok.push(i),
                Err(e) => excluded.push((v, e)),
            }
        }
        (ok, excluded)
    }

    /// Whether any volunteer has a known place or declared netblocks: only then is a
    /// customer's place worth working out.
    pub fn places_known(&self) -> bool {
        self.near.any
    }

    /// The request path's view: eligible volunteers, as positions for [`Self::at`]. With at
    /// most `all_up_to` volunteers in all, every eligible one, in id order; otherwise `k`
    /// distinct ones found by random probes (`pick(n)` returns a random index below `n`), so a
    /// redirect costs the same with ten volunteers or ten thousand. When probes keep missing
    /// (most volunteers lag or are excluded), a walk from a random start fills the rest.
    ///
    /// For a `customer` whose nearer tiers hold volunteers, those groups are drawn from
    /// first (`k` from the nearest, [`NEAR_EACH`] from each farther one, a small group
    /// whole), and the random probes add `k` from anywhere: a near volunteer among ten
    /// thousand is seen, and so is a far one to spill to.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        repo: &str,
        path: &str,
        needed: u64,
        latest: u64,
        now: Instant,
        (k, all_up_to): (usize, usize),
        customer: Option<&Customer>,
        pick: &mut dyn FnMut(usize) -> usize,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let n = self.volunteers.len();
        let Some(repo) = self.interned(repo) else {
            return; // nobody ever announced it
        };
        let eligible = |i: usize| {
            let v = &self.volunteers[i];
            self.check_interned(v, Some(repo), Some(path), needed, latest, now)
                .is_ok()
                && (!v.private || v.place.admits(customer))
                && reachable(v, customer)
        };
        if n <= all_up_to.max(k) {
            out.extend((0..n).filter(|&i| eligible(i)));
            return;
        }
        if let Some(c) = customer.filter(|_| self.near.any) {
            let mut groups = Vec::new();
            self.near.groups(c, &mut groups);
            let mut want = k;
            for group in groups {
                let before = out.len();
                draw_from(group, want, all_up_to, &eligible, pick, out);
                if out.len() >= crate::balancer::MAX_SAMPLE {
                    // As many as a choice looks at, the nearest first.
                    out.truncate(crate::balancer::MAX_SAMPLE);
                    return;
                }
                if out.len() > before {
                    want = NEAR_EACH;
                }
            }
            // Then `k` more from anywhere, as far as the choice will look.
            let target = (k + out.len()).min(crate::balancer::MAX_SAMPLE);
            if out.len() < target {
                self.draw_anywhere(target, &eligible, pick, out);
            }
            return;
        }
        self.draw_anywhere(k, &eligible, pick, out);
    }

    /// Random probes over every volunteer until `out` holds `k` (see [`Self::sample`]); it
    /// holds fewer when called.
    fn draw_anywhere(
        &self,
        k: usize,
        eligible: &impl Fn(usize) -> bool,
        pick: &mut dyn FnMut(usize) -> usize,
        out: &mut Vec<usize>,
    ) {
        let n = self.volunteers.len();
        // The first probes are drawn at once and their records hinted together, so that
        // their cache misses overlap instead of each waiting for the check before it.
        let mut ahead = [0usize; PROBES_AHEAD];
        let drawn = k.min(PROBES_AHEAD);
        for a in &mut ahead[..drawn] {
            *a = pick(n);
            prefetch::lines(&self.volunteers[*a]);
        }
        for probe in 0..4 * k {
            let i = match ahead[..drawn].get(probe) {
                Some(&i) => i,
                None => pick(n),
            };
            if !out.contains(&i) && eligible(i) {
                self.volunteers[i].model.prefetch();
                out.push(i);
                if out.len() == k {
                    return;
                }
            }
        }
        let start = pick(n);
        for i in (start..n).chain(0..start) {
            if out.len() == k {
                break;
            }
            if !out.contains(&i) && eligible(i) {
                out.push(i);
            }
        }
    }

    /// Redirects to the volunteer at position `i` that are probably still open, in O(1):
    /// `(unreported, recent)`: those within the connection window, and of them the ones
    /// since its last report (at most all of them: the newest are the unreported ones).
    /// Reads only; a policy reads its [`LinkModel`] with `view(now)`.
    pub fn open_redirects(&self, i: usize, now: Instant) -> (u32, usize) {
        let Some(v) = self.volunteers.get(i) else {
            return (0, 0);
        };
        let recent = v.recent.count(&self.slicing, now);
        (recent.min(v.issued_since_report), recent as usize)
    }

    /// The number of customers the volunteer at position `i` serves right now, known from
    /// elsewhere than its reports (a policy's, see `Policy::live_customers`), corrects its
    /// model at once.
    pub fn correct_customers(&mut self, i: usize, customers: u32, now: Instant) {
        if let Some(v) = self.volunteers.get_mut(i) {
            let typical = typical_remaining(v);
            v.model.set_customers(customers, typical, now);
        }
    }

    /// The volunteer at a position [`Self::sample`] returned.
    pub fn at(&self, i: usize) -> &VolunteerLive {
        &self.volunteers[i]
    }

    /// Record that a customer was sent to `id` for a file of `bytes`.
    pub fn note_redirect(&mut self, id: &str, bytes: u64, now: Instant) {
        if let Some(i) = self.index.get(id).copied() {
            self.note_redirect_at(i, bytes, now);
        }
    }

    /// [`Self::note_redirect`] for a position [`Self::sample`] returned.
    pub fn note_redirect_at(&mut self, i: usize, bytes: u64, now: Instant) {
        let (slicing, servers) = (self.slicing, self.servers);
        let Some(v) = self.volunteers.get_mut(i) else {
            return;
        };
        v.issued_since_report = v.issued_since_report.saturating_add(servers);
        v.issued_total += 1;
        v.issued_bytes += bytes;
        v.model.add(bytes, now);
        v.recent.add(&slicing, now);
        // The other servers' customers, as they probably were sent too (see `servers`).
        for _ in 1..servers {
            v.model.add(bytes, now);
            v.recent.add(&slicing, now);
        }
    }

    pub fn get(&self, id: &str) -> Option<&VolunteerLive> {
        self.volunteers.get(*self.index.get(id)?)
    }

    /// Every volunteer, in id order.
    pub fn all(&self) -> impl Iterator<Item = &VolunteerLive> {
        self.volunteers.iter()
    }

    /// Whether a volunteer's last announce is recent enough.
    pub fn is_fresh(&self, v: &VolunteerLive, now: Instant) -> bool {
        now.saturating_duration_since(v.last_report) <= self.timeout
    }
}

/// What a download the model did not know of probably has left to send: half of what
/// customers were typically sent there for (half a mebibyte before any were).
fn typical_remaining(v: &VolunteerLive) -> u64 {
    match v.issued_bytes.checked_div(v.issued_total) {
        Some(mean) => mean / 2,
        None => 512 * 1024,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report from volunteer `id` (capacity 4, at `http://<id>.test`, no link declared).
    pub(crate) fn report(id: &str, seq: u64, generation: u64, conns: u32) -> MirrorReport {
        MirrorReport {
            volunteer: id.into(),
            seq,
            generation,
            customer_conns: conns,
            sync_conns: 0,
            upload_bps: 0,
            capacity: 4,
            url: format!("http://{id}.test"),
            sync_bps: 0,
            link_bps: 0,
            paused: false,
            part: String::new(),
            nets: String::new(),
            private: false,
            other_urls: Vec::new(),
        }
    }

    #[test]
    fn eligibility_follows_generation_freshness_and_capacity() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(3));
        r.report("deb", &report("a", 1, 2, 0), false, t0).unwrap();
        r.report("deb", &report("b", 1, 1, 0), false, t0).unwrap();
        r.report("deb", &report("c", 1, 0, 0), false, t0).unwrap();
        let (ok, ex) = r.candidates("deb", "pool/a.deb", 2, 2, None, t0);
        assert_eq!(
            ok.iter().map(|&i| r.at(i).id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(ex.len(), 2);
        let (ok, _) = r.candidates("deb", "pool/a.deb", 1, 2, None, t0);
        assert_eq!(ok.len(), 2);
        let (ok, ex) = r.candidates("rpm", "pool/a.deb", 1, 2, None, t0);
        assert!(ok.is_empty() && ex.iter().all(|(_, e)| *e == Exclusion::NotMirroring));
        let later = t0 + Duration::from_secs(4);
        let (ok, ex) = r.candidates("deb", "pool/a.deb", 1, 2, None, later);
        assert!(ok.is_empty());
        assert!(ex.iter().all(|(_, e)| matches!(e, Exclusion::Stale { .. })));
        // claims the future
        let (ok, _) = r.candidates("deb", "pool/a.deb", 1, 1, None, t0);
        assert_eq!(
            ok.iter().map(|&i| r.at(i).id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn a_stopped_volunteer_carries_no_load() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(3));
        let mut busy = report("a", 1, 1, 3);
        busy.sync_conns = 5;
        busy.sync_bps = 1_000_000;
        busy.upload_bps = 2_000_000;
        busy.link_bps = 4_000_000;
        r.report("deb", &busy, false, t0).unwrap();
        assert!(r.get("a").unwrap().usage() > 0.0);
        r.stop("a", 2);
        let v = r.get("a").unwrap();
        assert!(v.stopped);
        assert_eq!(
            (
                v.load.customer_conns,
                v.load.sync_conns,
                v.load.sync_bps,
                v.load.upload_bps
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(v.usage(), 0.0);
        // The declared link and capacity stay: they are facts about the machine.
        assert_eq!((v.load.link_bps, v.load.capacity), (4_000_000, 4));
    }

    #[test]
    fn replays_are_refused_and_redirects_counted() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(3));
        r.report("deb", &report("a", 5, 1, 0), false, t0).unwrap();
        assert_eq!(
            r.report("deb", &report("a", 5, 1, 0), false, t0),
            Err(RegistryError::Replay { got: 5, last: 5 })
        );
        for _ in 0..4 {
            r.note_redirect("a", 1, t0);
        }
        assert_eq!(r.get("a").unwrap().issued_since_report, 4);
        r.report("deb", &report("a", 6, 1, 1), false, t0).unwrap();
        assert_eq!(r.get("a").unwrap().issued_since_report, 0);
        assert_eq!(r.get("a").unwrap().issued_total, 4);
        let i = r.index["a"];
        // Still counted as open within the window, but none since the report.
        assert_eq!(r.open_redirects(i, t0), (0, 4));

        // One of three servers the customers are spread over: each redirect here stands
        // for three, until the next report says how many it serves.
        r.set_servers(3);
        r.note_redirect("a", 1, t0);
        assert_eq!(r.get("a").unwrap().issued_since_report, 3);
        assert_eq!(r.open_redirects(i, t0), (3, 7));
        assert_eq!(r.get("a").unwrap().issued_total, 5);
        r.report("deb", &report("a", 7, 1, 1), false, t0).unwrap();
        assert_eq!(r.get("a").unwrap().issued_since_report, 0);
    }

    #[test]
    fn uplink_use_is_averaged_over_reports_by_the_time_each_covers() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(60));
        let sending = |seq, customers_bps, sync_bps| MirrorReport {
            upload_bps: customers_bps,
            sync_bps,
            link_bps: 1_000_000,
            ..report("a", seq, 1, 0)
        };
        // The first report is all there is to go by.
        r.report("deb", &sending(1, 300_000, 300_000), false, t0)
            .unwrap();
        assert!((r.get("a").unwrap().usage() - 0.6).abs() < 1e-9);
        // Idle for one window: it moves about two thirds of the way to 0.
        r.report("deb", &sending(2, 0, 0), false, t0 + USAGE_WINDOW)
            .unwrap();
        let u = r.get("a").unwrap().usage();
        assert!((u - 0.6 * (-1.0f64).exp()).abs() < 1e-9, "{u}");
        // A report a moment later weighs little, and a wild one is bounded.
        r.report(
            "deb",
            &sending(3, u64::MAX, u64::MAX),
            false,
            t0 + USAGE_WINDOW + USAGE_WINDOW / 100,
        )
        .unwrap();
        let after = r.get("a").unwrap().usage();
        assert!(after > u && after < u + 0.05, "{u} -> {after}");
        // Back after going stale: its history starts again.
        r.report(
            "deb",
            &sending(4, 100_000, 0),
            false,
            t0 + Duration::from_secs(600),
        )
        .unwrap();
        assert!((r.get("a").unwrap().usage() - 0.1).abs() < 1e-9);
        // An undeclared uplink has no share to speak of.
        r.report("deb", &report("b", 1, 1, 0), false, t0).unwrap();
        assert_eq!(r.get("b").unwrap().usage(), 0.0);
    }

    #[test]
    fn a_late_announce_cannot_undo_a_stop() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(3));
        r.report("deb", &report("a", 1, 1, 0), false, t0).unwrap();
        r.stop("a", 3);
        assert_eq!(
            r.check(r.get("a").unwrap(), "deb", "pool/a.deb", 1, 1, t0),
            Err(Exclusion::Stopped)
        );
        assert!(r.report("deb", &report("a", 2, 1, 0), false, t0).is_err());
        assert_eq!(
            r.check(r.get("a").unwrap(), "deb", "pool/a.deb", 1, 1, t0),
            Err(Exclusion::Stopped)
        );
        r.report("deb", &report("a", 4, 1, 0), false, t0).unwrap();
        assert!(r
            .check(r.get("a").unwrap(), "deb", "pool/a.deb", 1, 1, t0)
            .is_ok());
    }

    #[test]
    fn a_part_is_served_only_its_files_and_read_again_only_when_it_changes() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(30));
        let partial = |seq, part: &str| MirrorReport {
            part: part.to_string(),
            ..report("p", seq, 2, 0)
        };
        r.report("deb", &partial(1, "+ pool/main/**\n"), false, t0)
            .unwrap();
        r.report("deb", &report("w", 1, 2, 0), false, t0).unwrap();
        let check =
            |r: &Registry, id: &str, path: &str| r.check(r.get(id).unwrap(), "deb", path, 1, 2, t0);
        assert_eq!(check(&r, "p", "pool/main/a.deb"), Ok(()));
        assert_eq!(
            check(&r, "p", "pool/contrib/b.deb"),
            Err(Exclusion::NotInPart)
        );
        assert_eq!(check(&r, "p", "dists/stable/Release"), Ok(()), "metadata");
        assert_eq!(check(&r, "w", "pool/contrib/b.deb"), Ok(()));
        // The request path's sample finds only who holds the file.
        let mut out = Vec::new();
        let mut pick = |n: usize| n - 1;
        r.sample(
            "deb",
            "pool/contrib/b.deb",
            1,
            2,
            t0,
            (4, 8),
            None,
            &mut pick,
            &mut out,
        );
        assert_eq!(
            out.iter().map(|&i| r.at(i).id.as_str()).collect::<Vec<_>>(),
            ["w"]
        );
        // The same text is the same part, not read again; another text replaces it.
        let before = r.get("p").unwrap().generations.part("deb").unwrap().clone();
        r.report("deb", &partial(2, "+ pool/main/**\n"), false, t0)
            .unwrap();
        let same = r.get("p").unwrap().generations.part("deb").unwrap();
        assert!(Arc::ptr_eq(&before, same));
        r.report("deb", &partial(3, "- pool/main/**\n"), false, t0)
            .unwrap();
        assert_eq!(check(&r, "p", "pool/contrib/b.deb"), Ok(()));
        assert_eq!(check(&r, "p", "pool/main/a.deb"), Err(Exclusion::NotInPart));
        // Holding it all again.
        r.report("deb", &partial(4, ""), false, t0).unwrap();
        assert!(r.get("p").unwrap().generations.part("deb").is_none());
        // A part that is not one is refused, and what was held stands.
        let err = r.report("deb", &partial(5, "+ /abs\n"), false, t0);
        assert!(matches!(err, Err(RegistryError::Part(_))), "{err:?}");
        assert_eq!(check(&r, "p", "pool/main/a.deb"), Ok(()));
        // Any part makes it a sync source: its peers ask it only for what it holds.
        let sources = r.sync_sources("deb", 2, t0);
        assert_eq!(sources.len(), 2);
    }

    #[test]
    fn draining_excludes() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(3));
        r.report("deb", &report("a", 1, 1, 0), true, t0).unwrap();
        assert_eq!(
            r.check(r.get("a").unwrap(), "deb", "pool/a.deb", 1, 1, t0),
            Err(Exclusion::Draining)
        );
    }

    #[test]
    fn quarantine_excludes_until_lifted_whatever_is_announced() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(3));
        r.set_quarantined("a", true);
        r.report("deb", &report("a", 1, 1, 0), false, t0).unwrap();
        assert_eq!(
            r.check(r.get("a").unwrap(), "deb", "pool/a.deb", 1, 1, t0),
            Err(Exclusion::Quarantined)
        );
        r.report("deb", &report("a", 2, 1, 0), false, t0).unwrap();
        assert!(r.is_quarantined("a"));
        r.set_quarantined("a", false);
        assert!(r
            .check(r.get("a").unwrap(), "deb", "pool/a.deb", 1, 1, t0)
            .is_ok());
    }

    #[test]
    fn sampling_finds_eligible_volunteers_among_many() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(3));
        // 300 volunteers; only every tenth holds generation 2.
        for i in 0..300u64 {
            let g = if i % 10 == 0 { 2 } else { 1 };
            r.report("deb", &report(&format!("v{i:03}"), 1, g, 0), false, t0)
                .unwrap();
        }
        let mut state = 12345u64;
        let mut pick = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            r.sample(
                "deb",
                "pool/a.deb",
                2,
                2,
                t0,
                (8, 8),
                None,
                &mut pick,
                &mut out,
            );
            let mut d = out.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 8, "eight distinct eligible volunteers");
            for &i in &out {
                assert_eq!(r.at(i).generations.get("deb"), Some(2));
                seen.insert(i);
            }
        }
        assert_eq!(seen.len(), 30, "every eligible volunteer gets sampled");
        r.sample(
            "deb",
            "pool/a.deb",
            3,
            3,
            t0,
            (8, 8),
            None,
            &mut pick,
            &mut out,
        );
        assert!(out.is_empty(), "none eligible: the walk ends empty");
        // Few volunteers: all eligible ones, in id order.
        let mut small = Registry::new(Duration::from_secs(3));
        for id in ["c", "a", "b"] {
            small
                .report("deb", &report(id, 1, 1, 0), false, t0)
                .unwrap();
        }
        small.sample(
            "deb",
            "pool/a.deb",
            1,
            1,
            t0,
            (4, 8),
            None,
            &mut pick,
            &mut out,
        );
        let ids: Vec<&str> = out.iter().map(|&i| small.at(i).id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        small.remove("b");
        assert_eq!(small.get("c").unwrap().id, "c");
        assert!(small.get("b").is_none());
    }

    #[test]
    fn redirects_count_within_the_connection_window() {
        let t0 = Instant::now();
        let mut r = Registry::new(Duration::from_secs(100));
        r.set_connection_window(Duration::from_secs(10));
        r.report("deb", &report("a", 1, 1, 0), false, t0).unwrap();
        for s in 0..30 {
            r.note_redirect("a", 1, t0 + Duration::from_secs(s));
        }
        let i = r.index["a"];
        assert_eq!(r.get("a").unwrap().issued_total, 30);
        // The last ten seconds' (exact to a slice of the window), all of them since the
        // report at t0.
        let (u, w) = r.open_redirects(i, t0 + Duration::from_millis(29_500));
        assert!((10..=11).contains(&w), "{w}");
        assert_eq!(u as usize, w);
        // A report: those open stay counted as open, none as unreported.
        r.report(
            "deb",
            &report("a", 2, 1, 3),
            false,
            t0 + Duration::from_secs(30),
        )
        .unwrap();
        let (u, w) = r.open_redirects(i, t0 + Duration::from_millis(30_500));
        assert_eq!(u, 0);
        assert!((9..=11).contains(&w), "{w}");
        r.note_redirect("a", 1, t0 + Duration::from_secs(31));
        let (u, _) = r.open_redirects(i, t0 + Duration::from_millis(31_500));
        assert_eq!(u, 1);
        // Long after: nothing is open.
        assert_eq!(r.open_redirects(i, t0 + Duration::from_secs(60)), (0, 0));
    }
}
