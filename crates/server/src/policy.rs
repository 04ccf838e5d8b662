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
    pub id: String,
    /// Last reported workload.
    pub load: Load,
    /// Redirects the server issued since that report.
    pub issued_since_report: u32,
    /// Redirects the server ever issued to it (since this server started).
    pub issued_total: u64,
    /// Redirects issued within the least-connections window.
    pub issued_recent: usize,
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
}

/// Build a policy by its configured name.
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "feedback" => Some(Box::new(Feedback)),
        "least-connections" => Some(Box::new(LeastConnections)),
        "request-counting" => Some(Box::new(RequestCounting)),
        _ => None,
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
/// choices, because always taking the apparent minimum of stale data herds onto one node.
pub struct Feedback;

impl Feedback {
    fn score(c: &Candidate) -> f64 {
        let busy = f64::from(c.load.customer_conns)
            + f64::from(c.load.sync_conns)
            + f64::from(c.issued_since_report);
        busy / c.capacity()
    }

    fn has_headroom(c: &Candidate) -> bool {
        c.load.customer_conns.saturating_add(c.issued_since_report) < c.load.capacity.max(1)
    }
}

impl Policy for Feedback {
    fn name(&self) -> &'static str {
        "feedback"
    }
    fn order(&self, cands: &[Candidate], rng: &mut dyn RngCore) -> Vec<usize> {
        let open: Vec<usize> = (0..cands.len())
            .filter(|&i| Self::has_headroom(&cands[i]))
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
                let (sa, sb) = (Self::score(&cands[a]), Self::score(&cands[b]));
                if sb < sa || (sb == sa && rng.gen_bool(0.5)) {
                    b
                } else {
                    a
                }
            }
        };
        let mut rest: Vec<usize> = sorted_by(cands, Self::score)
            .into_iter()
            .filter(|&i| i != first && Self::has_headroom(&cands[i]))
            .collect();
        rest.insert(0, first);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cand(id: &str, conns: u32, sync: u32, since: u32, total: u64, cap: u32) -> Candidate {
        Candidate {
            id: id.into(),
            load: Load {
                customer_conns: conns,
                sync_conns: sync,
                upload_bps: 0,
                capacity: cap,
            },
            issued_since_report: since,
            issued_total: total,
            issued_recent: total as usize,
        }
    }

    #[test]
    fn names_resolve() {
        for n in config::POLICY_NAMES {
            assert_eq!(by_name(n).unwrap().name(), *n);
        }
        assert!(by_name("nope").is_none());
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
            assert_eq!(Feedback.order(&c, &mut rng)[0], 1);
        }
    }

    #[test]
    fn feedback_counts_redirects_since_report_and_respects_capacity() {
        let c = [cand("a", 0, 0, 3, 0, 4), cand("b", 2, 0, 0, 0, 4)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(Feedback.order(&c, &mut rng)[0], 1);
        let full = [cand("a", 2, 0, 2, 0, 4), cand("b", 4, 0, 0, 0, 4)];
        assert!(Feedback.order(&full, &mut rng).is_empty());
    }

    #[test]
    fn feedback_spreads_over_equal_volunteers() {
        let c: Vec<Candidate> = (0..4)
            .map(|i| cand(&format!("v{i}"), 0, 0, 0, 0, 8))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[Feedback.order(&c, &mut rng)[0]] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
    }
}
