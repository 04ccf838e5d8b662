//! Synthetic sync traffic: uploads that take what a volunteer's capped uplink gives them, as
//! real sync uploads to other volunteers would, and are reported as sync connections. The
//! balancing study loads volunteers with it on loopback, where there is no real link.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use volunteer::limit::TokenBucket;

/// The size of a customer download's chunks, so that every upload gets an equal turn.
const CHUNK: usize = 64 * 1024;

pub struct SyntheticSync {
    conns: u32,
    demand_bps: Option<u64>,
    sent: Arc<AtomicU64>,
}

impl SyntheticSync {
    /// `conns` uploads that together want at most `demand_bps` (none: as much as they get).
    pub fn new(conns: u32, demand_bps: Option<u64>) -> SyntheticSync {
        SyntheticSync {
            conns,
            demand_bps,
            sent: Arc::default(),
        }
    }

    /// Start the uploads on `link` (a volunteer's uplink).
    pub fn start(&self, link: Arc<TokenBucket>) {
        for _ in 0..self.conns {
            let b = link.clone();
            // Each upload's own ceiling: the receiver's downlink, as it were.
            let own = self
                .demand_bps
                .map(|d| TokenBucket::new((d / u64::from(self.conns)).max(1), CHUNK as u64));
            let sent = self.sent.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(own) = &own {
                        own.take(CHUNK).await;
                    }
                    b.take(CHUNK).await;
                    sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
                }
            });
        }
    }

    pub fn connections(&self) -> u32 {
        self.conns
    }

    /// Bytes sent so far.
    pub fn uploaded(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    // Virtual time: the assertion is about the limiter's arithmetic, not this machine's speed.
    #[tokio::test(start_paused = true)]
    async fn capped_sync_leaves_the_rest_to_customers() {
        let link = Arc::new(TokenBucket::new(1_000_000, 1));
        let sync = SyntheticSync::new(2, Some(400_000));
        sync.start(link.clone());
        let t = Instant::now();
        let mut customer = 0u64;
        while t.elapsed() < Duration::from_secs(20) {
            link.take(64 * 1024).await;
            customer += 64 * 1024;
        }
        let sent = sync.uploaded();
        // 20 s of a 1 MB/s link: sync gets its 0.4 MB/s, the customer the other 0.6 MB/s.
        assert!((7_600_000..8_400_000).contains(&sent), "sync {sent}");
        assert!(
            (11_400_000..12_600_000).contains(&customer),
            "customer {customer}"
        );
    }
}
