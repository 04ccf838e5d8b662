//! The volunteer's upload link, shared by customer downloads and sync traffic: a token bucket
//! that hands out bytes in the order they were asked for, so concurrent uploads share it
//! roughly equally, as TCP flows share a real uplink.

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

/// Background sync traffic for experiments: `n` uploads that take what the link gives them,
/// as real sync uploads to other volunteers would.
pub fn spawn_background_uploads(bucket: Arc<TokenBucket>, n: u32) {
    for _ in 0..n {
        let b = bucket.clone();
        tokio::spawn(async move {
            loop {
                b.take(64 * 1024).await;
            }
        });
    }
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
