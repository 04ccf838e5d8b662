//! Balancing policies, chosen by name in config.
//!
//! A policy sees only the eligible volunteers (the registry has already excluded stale,
//! behind and draining ones) and orders them: the first gets the redirect, the next few are
//! offered as alternatives. An empty order sends the customer to the origin.

use rand::{Rng, RngCore};
use tracker::registry::Load;

/// What a policy may know of one eligible volunteer.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Last reported workload.
    pub load: Load,
    /// Redirects the server issued since that report (within the connection window).
    pub issued_since_report: u32,
    /// Redirects the server ever issued to it (since this server started).
    pub issued_total: u64,
    /// Redirects issued within the least-connections window.
    pub issued_recent: usize,
    /// Time since it (re)joined: for slow start.
    pub age: std::time::Duration,
    /// Live customer and sync connections, for the `oracle` experiment only.
    pub exact: Option<(u32, u32)>,
    /// How fast the server's own checks found it, against its peers: 1.0 unless it served
    /// them markedly slower than the median (down to 0.1). Reports can lie; this cannot.
    pub observed_speed: f64,
}

impl Candidate {
    fn capacity(&self) -> f64 {
        f64::from(self.load.capacity.max(1))
    }
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Indices into `cands`, best first. Empty: no volunteer should take this request.
    fn order(&self, cands: &[Candidate], rng: &mut dyn RngCore) -> Vec<usize>;
    /// Whether candidates need the exact live load (the oracle's experiment feed).
    fn wants_exact_load(&self) -> bool {
        false
    }
}

/// Build a policy by its configured name. `slow_start`: how long a (re)joining volunteer's
/// share takes to grow to its full capacity (feedback only).
pub fn by_name(name: &str, slow_start: std::time::Duration) -> Option<Box<dyn Policy>> {
    match name {
        "feedback" => Some(Box::new(Feedback {
            slow_start,
            use_rates: false,
        })),
        "feedback-bandwidth" => Some(Box::new(Feedback {
            slow_start,
            use_rates: true,
        })),
        "least-connections" => Some(Box::new(LeastConnections)),
        "request-counting" => Some(Box::new(RequestCounting)),
        "least-loaded" => Some(Box::new(LeastLoaded)),
        "oracle" => Some(Box::new(Oracle)),
        _ => None,
    }
}

/// Always the volunteer whose last report looks idlest: what best-of-two guards against. On
/// stale reports every customer between two announces goes to the same volunteer (herding).
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }
    fn order(&self, cands: &[Candidate], _rng: &mut dyn RngCore) -> Vec<usize> {
        sorted_by(cands, |c| {
            f64::from(c.load.customer_conns + c.load.sync_conns) / c.capacity()
        })
    }
}

/// The bound for experiments: the exact live connection counts, streamed by each volunteer on
/// every change. Falls back to reported load for a volunteer that streams nothing.
pub struct Oracle;

impl Policy for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn wants_exact_load(&self) -> bool {
        true
    }
    fn order(&self, cands: &[Candidate], rng: &mut dyn RngCore) -> Vec<usize> {
        let load = |c: &Candidate| {
            let (cc, sc) = c
                .exact
                .unwrap_or((c.load.customer_conns, c.load.sync_conns));
            f64::from(cc + sc) / c.capacity()
        };
        // Ties broken at random so that equal volunteers share.
        let jitter: Vec<f64> = cands.iter().map(|_| rng.gen::<f64>() * 1e-9).collect();
        let mut idx: Vec<usize> = (0..cands.len()).collect();
        idx.sort_by(|&a, &b| {
            (load(&cands[a]) + jitter[a]).total_cmp(&(load(&cands[b]) + jitter[b]))
        });
        idx
    }
}

/// Indices sorted by a score, lowest first; ties keep input order (ids are sorted).
fn sorted_by(cands: &[Candidate], score: impl Fn(&Candidate) -> f64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    idx.sort_by(|&a, &b| score(&cands[a]).total_cmp(&score(&cands[b])));
    idx
}

/// Apache `byrequests`, the paper's baseline: spread requests in proportion to capacity,
/// blind to how long each one keeps a volunteer busy.
pub struct RequestCounting;

impl Policy for RequestCounting {
    fn name(&self) -> &'static str {
        "request-counting"
    }
    fn order(&self, cands: &[Candidate], _rng: &mut dyn RngCore) -> Vec<usize> {
        sorted_by(cands, |c| c.issued_total as f64 / c.capacity())
    }
}

/// Least connections as the server alone can see them: redirects issued within a recent
/// window stand in for open connections. Blind to sync traffic and to slow transfers.
pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-connections"
    }
    fn order(&self, cands: &[Candidate], _rng: &mut dyn RngCore) -> Vec<usize> {
        sorted_by(cands, |c| c.issued_recent as f64 / c.capacity())
    }
}

/// The default: each volunteer's last reported customer and sync connections plus the
/// redirects issued since that report, relative to declared capacity; best of two random
/// choices, because always taking the apparent minimum of stale data herds onto one node. A
/// volunteer that (re)joined recently counts with a reduced capacity (slow start).
pub struct Feedback {
    pub slow_start: std::time::Duration,
    /// Weigh sync by bandwidth where every candidate declared its uplink
    /// (`feedback-bandwidth`, an experiment: not clearly better so far); off, it counts
    /// connections as the paper does (`feedback`, the default).
    pub use_rates: bool,
}

impl Feedback {
    /// The share of its capacity a volunteer of this age gets: a tenth at once, all of it after
    /// `slow_start`.
    fn ramp(&self, c: &Candidate) -> f64 {
        if self.slow_start.is_zero() {
            return 1.0;
        }
        (0.1 + 0.9 * c.age.as_secs_f64() / self.slow_start.as_secs_f64()).min(1.0)
    }

    /// The load it would have with one more customer, relative to its effective capacity:
    /// declared capacity, cut by slow start and by how slow the server observed it. The "+1"
    /// makes two idle volunteers compare by capacity instead of tying at zero.
    fn score(&self, c: &Candidate, by_rate: bool) -> f64 {
        let cut = self.ramp(c) * c.observed_speed.clamp(0.01, 1.0);
        match expected_rate(c) {
            Some(rate) if by_rate => 1.0 / (rate * cut).max(1e-9),
            _ => {
                let busy = f64::from(c.load.customer_conns)
                    + f64::from(c.load.sync_conns)
                    + f64::from(c.issued_since_report)
                    + 1.0;
                busy / (c.capacity() * cut)
            }
        }
    }

    fn has_headroom(&self, c: &Candidate) -> bool {
        let cap = (f64::from(c.load.capacity.max(1)) * self.ramp(c)).ceil() as u32;
        c.load.customer_conns.saturating_add(c.issued_since_report) < cap.max(1)
    }
}

/// The rate, bytes/s, one more customer would get from `c`, if it declared its uplink: its
/// fair share among all flows, or what sync leaves over split among the customers, whichever
/// is more. Sync uploads often want less than a fair share (their receivers are limited
/// too), so counting each as a whole connection would keep customers off volunteers that
/// still have bandwidth to spare.
fn expected_rate(c: &Candidate) -> Option<f64> {
    let link = c.load.link_bps as f64;
    if link <= 0.0 {
        return None;
    }
    let customers = f64::from(c.load.customer_conns) + f64::from(c.issued_since_report);
    let sync = (c.load.sync_bps as f64).min(link);
    let fair = link / (customers + f64::from(c.load.sync_conns) + 1.0);
    Some(fair.max((link - sync) / (customers + 1.0)))
}

impl Policy for Feedback {
    fn name(&self) -> &'static str {
        if self.use_rates {
            "feedback-bandwidth"
        } else {
            "feedback"
        }
    }
    fn order(&self, cands: &[Candidate], rng: &mut dyn RngCore) -> Vec<usize> {
        // Rates compare only if every candidate declared its uplink; else count connections.
        let by_rate = self.use_rates && cands.iter().all(|c| c.load.link_bps > 0);
        let open: Vec<usize> = (0..cands.len())
            .filter(|&i| self.has_headroom(&cands[i]))
            .collect();
        let first = match open.len() {
            0 => return Vec::new(),
            1 => open[0],
            n => {
                let a = open[rng.gen_range(0..n)];
                let mut b = open[rng.gen_range(0..n - 1)];
                if b == a {
                    b = open[n - 1];
                }
                let (sa, sb) = (
                    self.score(&cands[a], by_rate),
                    self.score(&cands[b], by_rate),
                );
                if sb < sa || (sb == sa && rng.gen_bool(0.5)) {
                    b
                } else {
                    a
                }
            }
        };
        let mut rest: Vec<usize> = sorted_by(cands, |c| self.score(c, by_rate))
            .into_iter()
            .filter(|&i| i != first && self.has_headroom(&cands[i]))
            .collect();
        rest.insert(0, first);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cand(_name: &str, conns: u32, sync: u32, since: u32, total: u64, cap: u32) -> Candidate {
        Candidate {
            load: Load {
                customer_conns: conns,
                sync_conns: sync,
                upload_bps: 0,
                capacity: cap,
                sync_bps: 0,
                link_bps: 0,
            },
            issued_since_report: since,
            issued_total: total,
            issued_recent: total as usize,
            age: std::time::Duration::from_secs(3600),
            exact: None,
            observed_speed: 1.0,
        }
    }

    const FB: Feedback = Feedback {
        slow_start: std::time::Duration::from_secs(10),
        use_rates: true,
    };

    #[test]
    fn names_resolve() {
        for n in config::POLICY_NAMES {
            assert_eq!(by_name(n, Default::default()).unwrap().name(), *n);
        }
        assert!(by_name("nope", Default::default()).is_none());
    }

    #[test]
    fn request_counting_spreads_by_capacity() {
        let c = [cand("a", 0, 0, 0, 10, 10), cand("b", 0, 0, 0, 3, 1)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(RequestCounting.order(&c, &mut rng), [0, 1]);
    }

    #[test]
    fn feedback_never_picks_the_busier_of_two() {
        // With two candidates best-of-two always compares both.
        let c = [cand("busy", 1, 5, 0, 0, 8), cand("idle", 1, 0, 0, 0, 8)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            assert_eq!(FB.order(&c, &mut rng)[0], 1);
        }
    }

    #[test]
    fn feedback_counts_redirects_since_report_and_respects_capacity() {
        let c = [cand("a", 0, 0, 3, 0, 4), cand("b", 2, 0, 0, 0, 4)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(FB.order(&c, &mut rng)[0], 1);
        let full = [cand("a", 2, 0, 2, 0, 4), cand("b", 4, 0, 0, 0, 4)];
        assert!(FB.order(&full, &mut rng).is_empty());
    }

    #[test]
    fn feedback_spreads_over_equal_volunteers() {
        let c: Vec<Candidate> = (0..4)
            .map(|i| cand(&format!("v{i}"), 0, 0, 0, 0, 8))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[FB.order(&c, &mut rng)[0]] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
    }

    #[test]
    fn a_joining_volunteer_is_ramped_up_not_flooded() {
        let mut young = cand("young", 0, 0, 0, 0, 20);
        young.age = std::time::Duration::from_secs(1);
        // 19% of its capacity at one second: at most 4 of its 20 slots while it ramps up.
        let mut c = vec![young, cand("old", 0, 0, 0, 0, 20)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut to_young = 0;
        for _ in 0..20 {
            let Some(&first) = FB.order(&c, &mut rng).first() else {
                break;
            };
            c[first].issued_since_report += 1;
            to_young += usize::from(first == 0);
        }
        assert!(
            to_young <= 4,
            "{to_young} of 20 went to the volunteer that just joined"
        );
    }

    #[test]
    fn least_loaded_herds_where_feedback_spreads() {
        // Between two reports, every request sees the same stale numbers.
        let c: Vec<Candidate> = (0..4)
            .map(|i| cand(&format!("v{i}"), i, 0, 0, 0, 64))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut herd = [0u32; 4];
        for _ in 0..40 {
            herd[LeastLoaded.order(&c, &mut rng)[0]] += 1;
        }
        assert_eq!(herd, [40, 0, 0, 0]);
        let mut c = c;
        let mut spread = [0u32; 4];
        for _ in 0..40 {
            let first = FB.order(&c, &mut rng)[0];
            c[first].issued_since_report += 1;
            spread[first] += 1;
        }
        assert!(spread.iter().all(|&n| n >= 5), "{spread:?}");
    }

    #[test]
    fn oracle_uses_exact_load() {
        let mut a = cand("a", 0, 0, 0, 0, 8);
        a.exact = Some((6, 1));
        let mut b = cand("b", 5, 0, 0, 0, 8);
        b.exact = Some((1, 0));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(Oracle.order(&[a, b], &mut rng)[0], 1);
    }

    #[test]
    fn a_volunteer_observed_slow_gets_a_smaller_share_whatever_it_reports() {
        // Both report no connections; the server's checks found one ten times slower.
        let mut slow = cand("slow", 0, 0, 0, 0, 200);
        slow.observed_speed = 0.1;
        let mut c = vec![slow, cand("fast", 0, 0, 0, 0, 200)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut to_slow = 0;
        for _ in 0..110 {
            let first = FB.order(&c, &mut rng)[0];
            c[first].issued_since_report += 1;
            to_slow += usize::from(first == 0);
        }
        assert!(to_slow <= 15, "{to_slow} of 110 went to the slow volunteer");
    }

    #[test]
    fn feedback_bandwidth_weighs_sync_by_its_bandwidth_where_uplinks_are_declared() {
        // A volunteer whose 4 sync uploads use half its link, no customers; another with two
        // customers and no sync. Counting connections (5 vs 3) prefers the second; a new
        // customer would get half the link from the first and a third from the second.
        let mut busy = cand("busy", 0, 4, 0, 0, 64);
        busy.load.sync_bps = 500_000;
        let idle = cand("idle", 2, 0, 0, 0, 64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        assert_eq!(FB.order(&[busy.clone(), idle.clone()], &mut rng)[0], 1);
        let (mut busy, mut idle) = (busy, idle);
        busy.load.link_bps = 1_000_000;
        idle.load.link_bps = 1_000_000;
        assert_eq!(FB.order(&[busy.clone(), idle.clone()], &mut rng)[0], 0);
        // The default `feedback` counts connections whatever is declared.
        let paper = by_name("feedback", std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(paper.order(&[busy.clone(), idle.clone()], &mut rng)[0], 1);
        // Greedy sync (using the whole link) counts like connections again: the fair share
        // among 5 flows is less than among 3.
        busy.load.sync_bps = 1_000_000;
        assert_eq!(FB.order(&[busy, idle], &mut rng)[0], 1);
    }
}
