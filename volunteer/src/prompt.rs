//! Reports when the load moves. A volunteer announces at the interval the server asks for;
//! between two announces the balancer has only its last report and its own redirects. Sync
//! traffic is what it cannot see coming: a pull elsewhere starts taking pieces from us, or
//! stops. So the volunteer watches its sync upload rate over the last second and announces at
//! once when it has moved by a quarter of the link since the last report, at most once per
//! [`MIN_GAP`]: with 30 s announces the server learns of a sync burst within about a second
//! rather than up to 30 s later, and the tracker sees at most one more announce a second.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often the rate is sampled.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// No prompt announce within this long of the previous announce.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// The window the rate is measured over (and the rate a report states).
const WINDOW: Duration = Duration::from_secs(1);

/// A move smaller than this never counts, whatever the link: noise on a slow link.
const MIN_STEP_BPS: u64 = 32_000;

/// A move of this much counts where no link is declared.
const UNDECLARED_STEP_BPS: u64 = 128_000;

/// Whether a sync rate of `now_bps` differs enough from the last reported `reported_bps` to
/// report at once: by a quarter of the declared link (`link_bps`, 0 if undeclared).
pub fn moved(reported_bps: u64, now_bps: u64, link_bps: u64) -> bool {
    let step = if link_bps > 0 {
        link_bps / 4
    } else {
        UNDECLARED_STEP_BPS
    };
    reported_bps.abs_diff(now_bps) > step.max(MIN_STEP_BPS)
}

/// Bytes/s of a growing byte counter over the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct RecentRate {
    samples: VecDeque<(Instant, u64)>,
}

impl RecentRate {
    /// Record the counter's value at `at`; returns the rate over the window that ends there
    /// (over what has been seen, while less than a window has).
    pub fn sample(&mut self, at: Instant, total: u64) -> u64 {
        self.samples.push_back((at, total));
        // Keep the newest sample at least a window old, as the window's start.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| at.saturating_duration_since(t) >= WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(&(t0, b0)) = self.samples.front() else {
            return 0;
        };
        let secs = at.saturating_duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        (total.saturating_sub(b0) as f64 / secs) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_link_counts_less_does_not() {
        // 1 MB/s link: a sync that starts at 300 kB/s is news, one of 200 kB/s is not.
        assert!(moved(0, 300_000, 1_000_000));
        assert!(!moved(0, 200_000, 1_000_000));
        // Stopping counts the same as starting.
        assert!(moved(600_000, 0, 1_000_000));
        // A slow link still needs a move of 32 kB/s.
        assert!(!moved(0, 30_000, 40_000));
        assert!(moved(0, 40_000, 40_000));
        // Undeclared: 128 kB/s.
        assert!(!moved(0, 100_000, 0));
        assert!(moved(0, 200_000, 0));
    }

    #[test]
    fn the_rate_is_over_the_last_second() {
        let t = Instant::now();
        let ms = |m: u64| t + Duration::from_millis(m);
        let mut r = RecentRate::default();
        assert_eq!(r.sample(ms(0), 0), 0);
        // Quiet for 10 s, then 500 kB in the last half second: the rate says so at once,
        // not averaged over the quiet.
        for i in 1..=40 {
            r.sample(ms(i * 250), 0);
        }
        r.sample(ms(10_250), 250_000);
        let rate = r.sample(ms(10_500), 500_000);
        assert!((450_000..=550_000).contains(&rate), "{rate}");
        // A second later with nothing more sent, the burst has left the window.
        for i in 43..=46 {
            r.sample(ms(i * 250), 500_000);
        }
        assert_eq!(r.sample(ms(11_750), 500_000), 0);
    }
}
