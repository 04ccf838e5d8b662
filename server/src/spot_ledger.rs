//! What the spot checker knows of each volunteer (when it was last checked, passes in a row,
//! a file to check first, proxies' reports, observed speed), shared with the handlers that
//! read it (`/api/report`, `/api/stats`, `/metrics`). The checker itself is `spotcheck`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::locks::lock;

/// Per-volunteer bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Track {
    pub(crate) last: Option<Instant>,
    /// Passed checks in a row while quarantined.
    pub(crate) passes: u32,
    /// A file to check first: the one it failed, or one a customer's proxy reported.
    pub(crate) suspect: Option<(String, String)>,
    /// Proxy reports received.
    pub(crate) reports: u64,
    /// Throughput seen by passed checks, bytes/s (exponentially weighted).
    pub(crate) observed_bps: Option<f64>,
    /// How many checks contributed to `observed_bps`.
    pub(crate) speed_samples: u32,
}

/// The checker's state, shared with the handlers (`/api/report`, `/api/stats`).
#[derive(Default)]
pub struct SpotChecks {
    pub(crate) tracks: Mutex<HashMap<String, Track>>,
    pub(crate) wake: tokio::sync::Notify,
    pub passed: AtomicU64,
    pub failed: AtomicU64,
    pub inconclusive: AtomicU64,
    pub reports: AtomicU64,
}

impl SpotChecks {
    /// A customer's proxy says `repo/rel` from volunteer `id` did not match: check that file
    /// next, and this volunteer more often until it passes.
    pub fn report(&self, id: &str, repo: &str, rel: &str) {
        {
            let mut t = lock(&self.tracks);
            let tr = t.entry(id.to_string()).or_default();
            tr.suspect = Some((repo.to_string(), rel.to_string()));
            tr.reports += 1;
        }
        self.reports.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Proxy reports received about `id` so far.
    pub fn reports_about(&self, id: &str) -> u64 {
        lock(&self.tracks).get(id).map_or(0, |t| t.reports)
    }

    /// Throughput the checks observed from `id`, bytes/s.
    pub fn observed_bps(&self, id: &str) -> Option<f64> {
        lock(&self.tracks).get(id).and_then(|t| t.observed_bps)
    }
}
