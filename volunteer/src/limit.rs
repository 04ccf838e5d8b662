//! The volunteer's upload link, shared by customer downloads (and a companion's traffic, see
//! [`crate::companion`]): a token bucket that hands out bytes in the order they were asked
//! for, so concurrent uploads share it roughly equally, as TCP flows share a real uplink.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use futures_util::StreamExt;
use tokio::sync::Mutex;

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` bytes per second, at most `burst` bytes saved up while idle.
    pub fn new(rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        }
    }

    /// Wait until `n` bytes may be sent. Waiters queue in order (the lock is fair and held
    /// while waiting), so no upload starves.
    pub async fn take(&self, n: usize) {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * self.rate).min(self.burst);
        st.1 = now;
        st.0 -= n as f64;
        if st.0 < 0.0 {
            let wait = Duration::from_secs_f64(-st.0 / self.rate);
            tokio::time::sleep(wait).await;
            st.0 = 0.0;
            st.1 = Instant::now();
        }
    }
}

/// File bodies on the fast path take their turns on the link as streamed bodies do.
impl fileserve::fast::Pace for TokenBucket {
    fn take(
        &self,
        n: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(TokenBucket::take(self, n))
    }
}

/// The uplink as the volunteer's admin set it: unlimited, or a token bucket. The admin can
/// change it while the volunteer runs; downloads already under way finish at the old rate.
pub struct Uplink {
    bucket: std::sync::RwLock<Option<Arc<TokenBucket>>>,
    bps: std::sync::atomic::AtomicU64,
}

impl Uplink {
    pub fn new(bps: Option<u64>) -> Self {
        Uplink {
            bucket: std::sync::RwLock::new(bps.map(Self::bucket_for)),
            bps: std::sync::atomic::AtomicU64::new(bps.unwrap_or(0)),
        }
    }

    /// The burst is small so that a download's rate follows the link at once.
    fn bucket_for(bps: u64) -> Arc<TokenBucket> {
        Arc::new(TokenBucket::new(bps, (bps / 20).max(64 * 1024)))
    }

    /// The bucket new downloads take from (None: unlimited).
    pub fn current(&self) -> Option<Arc<TokenBucket>> {
        self.bucket
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Set the uplink (None or 0: unlimited).
    pub fn set(&self, bps: Option<u64>) {
        let bps = bps.filter(|&b| b > 0);
        *self.bucket.write().unwrap_or_else(|e| e.into_inner()) = bps.map(Self::bucket_for);
        self.bps
            .store(bps.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes/s (0: unlimited).
    pub fn bps(&self) -> u64 {
        self.bps.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Send `body` no faster than `bucket` allows.
pub fn throttle(body: Body, bucket: Arc<TokenBucket>) -> Body {
    let stream = body.into_data_stream().then(move |chunk| {
        let bucket = bucket.clone();
        async move {
            if let Ok(c) = &chunk {
                bucket.take(c.len()).await;
            }
            chunk
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Virtual time: the assertion is about the limiter's arithmetic, not this machine's speed.
    #[tokio::test(start_paused = true)]
    async fn rate_is_enforced() {
        let b = TokenBucket::new(1_000_000, 10_000);
        let t = Instant::now();
        for _ in 0..50 {
            b.take(10_000).await;
        }
        // 500 kB at 1 MB/s after a 10 kB burst: 0.49 s.
        let e = t.elapsed().as_secs_f64();
        assert!((0.489..0.491).contains(&e), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_uploads_share_the_link() {
        let b = Arc::new(TokenBucket::new(100_000, 1));
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for id in 0..2 {
            let (b, done) = (b.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    b.take(10_000).await;
                }
                done.lock().unwrap().push((id, Instant::now()));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let d = done.lock().unwrap();
        // Both finish near the end (2 s in all), neither long before the other.
        let gap = (d[1].1 - d[0].1).as_secs_f64();
        assert!(gap <= 0.11, "{gap}");
    }
}
