//! How many redirects a volunteer was sent within the last connection window: counted in
//! slices of the window, in place, so adding and counting cost the same whatever the rate
//! (a queue of timestamps held a window of them, thousands at a busy server, and cost a
//! cache miss per candidate on the request path).

use std::time::{Duration, Instant};

/// Slices per window. The count is exact to a slice: a redirect counts for at least the
/// window and at most a slice longer.
const SLICES: usize = 32;

#[derive(Debug, Clone)]
pub struct RecentCounts {
    counts: [u32; SLICES],
    /// The slice number (since `epoch`) of the newest slice.
    newest: u64,
    total: u32,
}

impl Default for RecentCounts {
    fn default() -> Self {
        RecentCounts {
            counts: [0; SLICES],
            newest: 0,
            total: 0,
        }
    }
}

/// The clock the counts are read on: a start and the slice length for a window.
#[derive(Debug, Clone, Copy)]
pub struct Slicing {
    epoch: Instant,
    /// The slice length in nanoseconds: a 64-bit division per candidate, where dividing
    /// `Duration::as_nanos`'s `u128` was a call into the compiler's runtime.
    slice_ns: u64,
}

impl Slicing {
    pub fn new(window: Duration, epoch: Instant) -> Self {
        // One slice fewer than the ring: the newest is still filling.
        let slice = (window / (SLICES as u32 - 1)).max(Duration::from_millis(1));
        Slicing {
            epoch,
            slice_ns: nanos(slice),
        }
    }

    fn at(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch)) / self.slice_ns
    }
}

/// `d` in nanoseconds, saturating (at 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RecentCounts {
    /// Forget the slices older than a window before `now`.
    fn roll(&mut self, s: &Slicing, now: Instant) {
        let at = s.at(now);
        if at <= self.newest {
            return;
        }
        let gone = (at - self.newest).min(SLICES as u64);
        for k in 1..=gone {
            let i = ((self.newest + k) % SLICES as u64) as usize;
            self.total -= self.counts[i];
            self.counts[i] = 0;
        }
        self.newest = at;
    }

    /// One redirect at `now`.
    pub fn add(&mut self, s: &Slicing, now: Instant) {
        self.roll(s, now);
        let i = (self.newest % SLICES as u64) as usize;
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total = self.total.saturating_add(1);
    }

    /// Redirects within the window before `now`.
    /// Read only: a candidate looked at is not written to (see `LinkModel::view`).
    pub fn count(&self, s: &Slicing, now: Instant) -> u32 {
        let at = s.at(now);
        if at <= self.newest {
            return self.total;
        }
        let gone = (at - self.newest).min(SLICES as u64);
        let forgotten: u32 = (1..=gone)
            .map(|k| self.counts[((self.newest + k) % SLICES as u64) as usize])
            .sum();
        self.total.saturating_sub(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_window_and_forgets_what_is_older() {
        let t0 = Instant::now();
        let s = Slicing::new(Duration::from_secs(10), t0);
        let mut r = RecentCounts::default();
        for k in 0..30 {
            r.add(&s, t0 + Duration::from_secs(k));
        }
        // At 29.5 s: the last ten seconds' ten, give or take the slice being filled.
        let n = r.count(&s, t0 + Duration::from_millis(29_500));
        assert!((10..=11).contains(&n), "{n}");
        assert_eq!(r.count(&s, t0 + Duration::from_secs(60)), 0);
        // A long pause, then a burst: counted from nothing.
        for _ in 0..5 {
            r.add(&s, t0 + Duration::from_secs(100));
        }
        assert_eq!(r.count(&s, t0 + Duration::from_secs(101)), 5);
        assert_eq!(r.count(&s, t0 + Duration::from_secs(111)), 0);
    }
}
