//! Near first, unless near is full: the proximity ladder over the policy's order.
//!
//! A customer and a volunteer are in the nearest [`Tier`] they share: the volunteer declared
//! a netblock holding the customer's address, they are at one of the operator's sites, in one
//! AS, one country, one region or continent, or anywhere. The policy orders the candidates by
//! load as it always does; the ladder then puts the nearest tier's first, keeping the
//! policy's order within each tier. A farther tier goes ahead only when the nearer one's best
//! modelled wait exceeds the farther one's by more than the extra round trips would cost (an
//! estimate per tier pair, [`Ladder::extra_secs`]). Mirror redirectors that rank by distance
//! alone pile a region's customers onto its one good mirror; ones that rank by load alone
//! send customers across an ocean while a volunteer in their own network sits idle.

use std::net::IpAddr;
use std::sync::Arc;

use locate::place::Place;
use locate::Netblock;

/// How near a volunteer is to a customer, nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// The volunteer declared a netblock holding the customer's address.
    Netblock,
    Site,
    As,
    Country,
    /// The site's region, or the continent.
    Region,
    World,
}

pub const TIERS: usize = 6;

impl Tier {
    pub const ALL: [Tier; TIERS] = [
        Tier::Netblock,
        Tier::Site,
        Tier::As,
        Tier::Country,
        Tier::Region,
        Tier::World,
    ];

    /// Its name in the configuration and the mirror list.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Netblock => "netblock",
            Tier::Site => "site",
            Tier::As => "as",
            Tier::Country => "country",
            Tier::Region => "region",
            Tier::World => "world",
        }
    }

    pub fn by_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Where a customer is: its address (behind trusted proxies) and that address's place, and
/// the URLs it can follow (by the scheme and the address family it came by).
#[derive(Debug, Clone, Copy)]
pub struct Customer {
    pub addr: IpAddr,
    pub place: Place,
    pub reach: crate::reach::Reach,
}

/// Where a volunteer is: the place of its address, and the networks it declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolunteerPlace {
    pub place: Place,
    /// Netblocks it declared that the server accepted (see the server's announce handling).
    pub nets: Arc<[Netblock]>,
    /// It serves only customers inside `nets`.
    pub private: bool,
}

impl VolunteerPlace {
    /// Whether one of its declared netblocks holds `addr`.
    pub fn holds(&self, addr: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(addr))
    }

    /// Whether it may take `customer` at all: a private volunteer only its own networks'
    /// (and, where nobody knows where the customer is, nobody's).
    pub fn admits(&self, customer: Option<&Customer>) -> bool {
        !self.private || customer.is_some_and(|c| self.holds(c.addr))
    }
}

/// Both known and equal: two places nobody knows are not one.
fn same<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
    a.is_some() && a == b
}

/// The nearest tier `customer` and `v` share.
pub fn tier(customer: &Customer, v: &VolunteerPlace) -> Tier {
    let (c, p) = (&customer.place, &v.place);
    if !v.nets.is_empty() && v.holds(customer.addr) {
        Tier::Netblock
    } else if same(c.site, p.site) {
        Tier::Site
    } else if same(c.asn, p.asn) {
        Tier::As
    } else if same(c.country, p.country) {
        Tier::Country
    } else if same(c.region, p.region) {
        Tier::Region
    } else {
        Tier::World
    }
}

/// When a customer goes past the nearest tier that has a volunteer with room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spill {
    /// When a farther volunteer's modelled wait plus the extra round trips is shorter.
    ByWait,
    /// Only when every nearer volunteer is full (or, with a load-blind policy, never).
    Never,
}

/// The ladder's estimates: round-trip times by tier, overrides per tier pair, and when to
/// spill.
#[derive(Debug, Clone)]
pub struct Ladder {
    /// Seconds: a typical round trip to a volunteer in each tier.
    round_trip: [f64; TIERS],
    /// Seconds: the extra round-trip time of a `far` tier over a `near` one, where the
    /// operator knows better than the difference of the two round trips.
    pair: [[Option<f64>; TIERS]; TIERS],
    spill: Spill,
}

/// Default round trips (ms) by tier: inside one network, one site (a city, a data centre),
/// one AS, one country, one continent, and across the world.
pub const DEFAULT_ROUND_TRIP_MS: [f64; TIERS] = [1.0, 5.0, 15.0, 30.0, 80.0, 200.0];

impl Default for Ladder {
    fn default() -> Self {
        Ladder {
            round_trip: DEFAULT_ROUND_TRIP_MS.map(|ms| ms / 1000.0),
            pair: [[None; TIERS]; TIERS],
            spill: Spill::ByWait,
        }
    }
}

/// TCP's first window, in bytes (RFC 6928: ten segments).
const FIRST_WINDOW: f64 = 10.0 * 1448.0;

/// Slow-start rounds counted at most: past them a window fills most links, and the link's
/// rate decides, which the modelled wait counts already.
const MAX_SLOW_START_ROUNDS: f64 = 8.0;

/// Round trips a download of `bytes` spends waiting on the path rather than on the link: the
/// connection's handshake, the request, and slow start's rounds (the window doubling from
/// [`FIRST_WINDOW`] until it has carried the file).
pub fn round_trips(bytes: u64) -> f64 {
    let rounds = (bytes as f64 / FIRST_WINDOW + 1.0).log2().ceil();
    2.0 + rounds.clamp(1.0, MAX_SLOW_START_ROUNDS)
}

impl Ladder {
    pub fn new(round_trip_ms: [f64; TIERS], pair_ms: &[(Tier, Tier, f64)], spill: Spill) -> Ladder {
        let mut pair = [[None; TIERS]; TIERS];
        for &(near, far, ms) in pair_ms {
            pair[near as usize][far as usize] = Some(ms / 1000.0);
        }
        Ladder {
            round_trip: round_trip_ms.map(|ms| ms / 1000.0),
            pair,
            spill,
        }
    }

    /// Seconds a download of `bytes` from a volunteer in tier `far` probably takes beyond one
    /// from a volunteer in tier `near`, its link's wait aside.
    pub fn extra_secs(&self, near: Tier, far: Tier, bytes: u64) -> f64 {
        if far <= near {
            return 0.0;
        }
        let per_trip = self.pair[near as usize][far as usize]
            .unwrap_or(self.round_trip[far as usize] - self.round_trip[near as usize]);
        per_trip.max(0.0) * round_trips(bytes)
    }

    /// Reorder `best_first` (a policy's order) for a customer: tiers as the ladder ranks them,
    /// the policy's order within each. `tier_of` and `wait_of` describe a candidate by its
    /// index; a wait is the modelled seconds one more download of `bytes` adds there (`None`
    /// where the link is undeclared: then tiers go nearest first).
    pub fn order(
        &self,
        best_first: &mut [usize],
        tier_of: impl Fn(usize) -> Tier,
        wait_of: impl Fn(usize) -> Option<f64>,
        bytes: u64,
    ) {
        let Some(near) = best_first.iter().map(|&i| tier_of(i)).min() else {
            return;
        };
        // Each tier's best (the policy's first of it) and what it would cost.
        let mut head: [Option<usize>; TIERS] = [None; TIERS];
        for &i in best_first.iter() {
            head[tier_of(i) as usize].get_or_insert(i);
        }
        let by_wait =
            self.spill == Spill::ByWait && head.iter().flatten().all(|&i| wait_of(i).is_some());
        let mut rank = [0.0f64; TIERS];
        for t in Tier::ALL {
            rank[t as usize] = match head[t as usize] {
                Some(i) if by_wait => {
                    wait_of(i).unwrap_or(f64::INFINITY) + self.extra_secs(near, t, bytes)
                }
                _ => t as usize as f64,
            };
        }
        // Stable: the policy's order holds within a tier, and a tie goes to the nearer.
        best_first.sort_by(|&a, &b| {
            let (ta, tb) = (tier_of(a), tier_of(b));
            rank[ta as usize]
                .total_cmp(&rank[tb as usize])
                .then(ta.cmp(&tb))
        });
    }

    /// Why the ladder put a tier's best where it did, for the mirror list.
    pub fn spill(&self) -> Spill {
        self.spill
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(addr: &str, site: Option<u16>) -> Customer {
        Customer {
            addr: addr.parse().unwrap(),
            place: Place {
                site,
                asn: Some(64500),
                country: Some(*b"NL"),
                region: Some(3),
            },
            reach: crate::reach::Reach::ANY,
        }
    }

    fn volunteer(site: Option<u16>, asn: Option<u32>, country: Option<[u8; 2]>) -> VolunteerPlace {
        VolunteerPlace {
            place: Place {
                site,
                asn,
                country,
                region: Some(3),
            },
            ..VolunteerPlace::default()
        }
    }

    #[test]
    fn the_nearest_shared_tier_is_found() {
        let c = customer("10.1.2.3", Some(1));
        let mut campus = volunteer(None, None, None);
        campus.nets = Arc::from(vec!["10.1.0.0/16".parse().unwrap()]);
        assert_eq!(tier(&c, &campus), Tier::Netblock);
        assert_eq!(tier(&c, &volunteer(Some(1), None, None)), Tier::Site);
        assert_eq!(tier(&c, &volunteer(Some(2), Some(64500), None)), Tier::As);
        assert_eq!(
            tier(&c, &volunteer(Some(2), Some(1), Some(*b"NL"))),
            Tier::Country
        );
        assert_eq!(tier(&c, &volunteer(None, None, Some(*b"DE"))), Tier::Region);
        let mut far = volunteer(None, None, None);
        far.place.region = None;
        assert_eq!(tier(&c, &far), Tier::World);
        // Unknown is not the same: two places nobody knows are not one.
        let nowhere = Customer {
            addr: "192.0.2.1".parse().unwrap(),
            place: Place::default(),
            reach: crate::reach::Reach::ANY,
        };
        assert_eq!(tier(&nowhere, &far), Tier::World);
    }

    #[test]
    fn a_private_volunteer_admits_only_its_own_networks() {
        let mut p = volunteer(None, None, None);
        p.nets = Arc::from(vec!["10.1.0.0/16".parse().unwrap()]);
        p.private = true;
        assert!(p.admits(Some(&customer("10.1.9.9", None))));
        assert!(!p.admits(Some(&customer("10.2.0.1", None))));
        assert!(!p.admits(None));
        p.private = false;
        assert!(p.admits(None));
    }

    /// Candidates 0..n with these tiers and waits, in the policy's order 0, 1, …
    fn ordered(ladder: &Ladder, tiers: &[Tier], waits: &[Option<f64>], bytes: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..tiers.len()).collect();
        ladder.order(&mut order, |i| tiers[i], |i| waits[i], bytes);
        order
    }

    #[test]
    fn near_goes_first_unless_its_wait_exceeds_far_by_more_than_the_round_trips() {
        let l = Ladder::default();
        let tiers = [Tier::World, Tier::Site, Tier::World, Tier::Site];
        // Near idle: near first, the policy's order kept within each tier.
        let waits = [Some(0.01), Some(0.02), Some(0.01), Some(0.03)];
        assert_eq!(ordered(&l, &tiers, &waits, 4096), [1, 3, 0, 2]);
        // 4 KiB from the world costs (0.2 - 0.005) s × 3 round trips ≈ 0.585 s more: a near
        // wait of 0.5 s still stays near, one of 1 s goes far.
        let waits = [Some(0.01), Some(0.5), Some(0.01), Some(0.6)];
        assert_eq!(ordered(&l, &tiers, &waits, 4096), [1, 3, 0, 2]);
        let waits = [Some(0.01), Some(1.0), Some(0.01), Some(1.2)];
        assert_eq!(ordered(&l, &tiers, &waits, 4096), [0, 2, 1, 3]);
        // Without a model of every tier's best, nearest first.
        let waits = [None, Some(5.0), Some(0.01), Some(1.2)];
        assert_eq!(ordered(&l, &tiers, &waits, 4096), [1, 3, 0, 2]);
        // Never spilling: nearest first whatever the waits.
        let never = Ladder::new(DEFAULT_ROUND_TRIP_MS, &[], Spill::Never);
        let waits = [Some(0.01), Some(9.0), Some(0.01), Some(9.0)];
        assert_eq!(ordered(&never, &tiers, &waits, 4096), [1, 3, 0, 2]);
    }

    #[test]
    fn a_pair_override_sets_the_extra_round_trip_time() {
        let l = Ladder::new(
            DEFAULT_ROUND_TRIP_MS,
            &[(Tier::Site, Tier::World, 75.0)],
            Spill::ByWait,
        );
        let extra = l.extra_secs(Tier::Site, Tier::World, 4096);
        assert!((extra - 0.075 * 3.0).abs() < 1e-9, "{extra}");
        // Other pairs keep the difference of their round trips.
        let extra = l.extra_secs(Tier::Site, Tier::Country, 4096);
        assert!((extra - 0.025 * 3.0).abs() < 1e-9, "{extra}");
        assert_eq!(l.extra_secs(Tier::World, Tier::Site, 4096), 0.0);
        // Larger files take more rounds of slow start, up to the cap.
        assert_eq!(round_trips(1), 3.0);
        assert_eq!(round_trips(1 << 20), 2.0 + 7.0);
        assert_eq!(round_trips(1 << 30), 2.0 + MAX_SLOW_START_ROUNDS);
    }
}
