//! The counters the request path bumps (relaxed atomics, striped where every request adds),
//! read by `/metrics`, `/api/stats` and the dashboard.

use std::sync::atomic::{AtomicU64, Ordering};

/// What happened to a customer request for a file.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Redirected to a volunteer.
    Volunteer,
    /// A Metalink document listing sources.
    Metalink,
    /// Served by the origin: small enough to serve directly.
    OriginSmall,
    /// Served by the origin: no eligible volunteer with room.
    OriginNoVolunteer,
    /// Served by the origin because the customer asked for `/.origin/`.
    OriginRequested,
    /// Not sent: the file on disk is not as published, and no volunteer holds the published
    /// bytes (`503` with `Retry-After`).
    OriginUnavailable,
}

pub(crate) const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Volunteer, "volunteer"),
    (Outcome::Metalink, "metalink"),
    (Outcome::OriginSmall, "origin_small"),
    (Outcome::OriginNoVolunteer, "origin_no_volunteer"),
    (Outcome::OriginRequested, "origin_requested"),
    (Outcome::OriginUnavailable, "origin_unavailable"),
];

#[derive(Default)]
pub struct Counters {
    outcomes: [Striped; OUTCOMES.len()],
    /// Bytes of the files customers were redirected to volunteers for.
    pub redirected_bytes: Striped,
    pub announces_ok: AtomicU64,
    pub announces_refused: AtomicU64,
    pub quarantines: AtomicU64,
    /// Customers a volunteer sent back to the origin (`/.origin/…?bounced-by=NAME`).
    pub bounced: AtomicU64,
}

impl Counters {
    pub fn count(&self, o: Outcome) {
        self.outcomes[o as usize].add(1);
    }

    pub fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].sum()
    }
}

/// Stripes of a [`Striped`] counter: threads beyond this many share them.
const STRIPES: usize = 8;

/// A counter every request bumps, kept in one cache line per thread and summed when read:
/// a single atomic that every core adds to moves its cache line between the cores on each
/// request.
#[derive(Default)]
pub struct Striped([Stripe; STRIPES]);

#[derive(Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

thread_local! {
    /// This thread's stripe, given out in turn as threads first count.
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % STRIPES
    };
}

impl Striped {
    pub fn add(&self, n: u64) {
        let i = STRIPE.with(|i| *i);
        self.0[i].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_striped_counter_sums_what_every_thread_added() {
        let c = Arc::new(Striped::default());
        // More threads than stripes, so some share one.
        let threads: Vec<_> = (0..STRIPES + 3)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(t as u64 + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (STRIPES + 3) as u64;
        assert_eq!(c.sum(), 1000 * n * (n + 1) / 2);
    }
}
