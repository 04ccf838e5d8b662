//! `least-loaded`: always the volunteer whose last report looks idlest, what best-of-two
//! guards against. On stale reports every customer between two announces goes to the same
//! volunteer (herding): the study shows what the product's policies avoid.

use balance::policy::{Candidate, Order, Policy};
use rand::RngCore;

pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }
    fn order_into(&self, cands: &[Candidate], _: u64, _: &mut dyn RngCore, out: &mut Order) {
        let load = |c: &Candidate| {
            f64::from(c.load.customer_conns + c.load.sync_conns) / f64::from(c.load.capacity.max(1))
        };
        out.best_first.clear();
        out.best_first.extend(0..cands.len());
        // Stable: ties keep input order (ids are sorted).
        out.best_first
            .sort_by(|&a, &b| load(&cands[a]).total_cmp(&load(&cands[b])));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balance::link_model::LinkModel;
    use balance::registry::Load;
    use rand::SeedableRng;
    use std::time::{Duration, Instant};

    fn cand(model: &LinkModel, conns: u32, now: Instant) -> Candidate<'_> {
        Candidate {
            load: Load {
                customer_conns: conns,
                capacity: 64,
                ..Default::default()
            },
            model: model.view(now),
            issued_since_report: 0,
            issued_total: 0,
            issued_recent: 0,
            age: Duration::from_secs(60),
            observed_speed: 1.0,
            usage: 0.0,
        }
    }

    #[test]
    fn the_idlest_report_first_and_the_same_one_while_reports_stand_still() {
        let now = Instant::now();
        let m = LinkModel::default();
        let cands = [cand(&m, 3, now), cand(&m, 1, now), cand(&m, 2, now)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(LeastLoaded.order(&cands, 1, &mut rng), [1, 2, 0]);
        // Between two reports nothing it reads changes: all 40 go to one volunteer.
        let same = [cand(&m, 0, now), cand(&m, 0, now), cand(&m, 0, now)];
        for _ in 0..40 {
            assert_eq!(LeastLoaded.order(&same, 1, &mut rng)[0], 0);
        }
    }
}
