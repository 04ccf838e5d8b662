//! The server's stop, as fast-path connections wait for it.
//!
//! A connection waiting for its next request must end when the server stops. It waited on a
//! `watch::Receiver::changed` future made anew for each request, and each one registered in
//! and left a shared waiter list under its lock: two locked list edits and a random draw
//! (the list's shard) per request, on the path every redirect and announce takes. Here a
//! connection registers its waker once, when it starts waiting for the first time, and
//! leaves when it ends; while it waits, a request costs one atomic load and one comparison
//! of wakers.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// Raised once by the accept loop; the connections waiting for a request are woken.
#[derive(Default)]
pub(crate) struct Stop {
    stopped: Flag,
    waiting: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
}

/// The flag every request reads, in a cache line of its own: beside the waiter list and the
/// id counter, which every new connection writes, each read on another core was a miss.
#[derive(Default)]
#[repr(align(128))]
struct Flag(AtomicBool);

impl Stop {
    /// Stop: every connection registered is woken, and none waits again.
    pub(crate) fn raise(&self) {
        self.stopped.0.store(true, Ordering::SeqCst);
        let woken: Vec<Waker> = {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.drain().map(|(_, waker)| waker).collect()
        };
        for w in woken {
            w.wake();
        }
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.stopped.0.load(Ordering::Acquire)
    }
}

/// One connection's place among those [`Stop`] wakes; it leaves when dropped.
pub(crate) struct StopWatch {
    stop: Arc<Stop>,
    id: u64,
    /// The waker registered, if any: while a poll's waker wakes the same task, nothing is
    /// locked.
    registered: Option<Waker>,
}

impl StopWatch {
    pub(crate) fn new(stop: Arc<Stop>) -> StopWatch {
        let id = stop.next_id.fetch_add(1, Ordering::Relaxed);
        StopWatch {
            stop,
            id,
            registered: None,
        }
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.stop.is_raised()
    }

    /// Ready once the server stops.
    pub(crate) async fn raised(&mut self) {
        poll_fn(|cx| {
            if self.stop.is_raised() {
                return Poll::Ready(());
            }
            if self
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            let waker = cx.waker().clone();
            {
                let mut w = self.stop.waiting.lock().unwrap_or_else(|e| e.into_inner());
                w.insert(self.id, waker.clone());
            }
            self.registered = Some(waker);
            // Raised between the check and the registration: `raise` may have drained the
            // list before this waker was in it.
            if self.stop.is_raised() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if self.registered.is_some() {
            let mut w = self.stop.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiting_connection_is_woken_once_and_leaves_when_dropped() {
        let stop = Arc::new(Stop::default());
        let mut watch = StopWatch::new(stop.clone());
        // Not raised: still waiting after a while, and registered once.
        let waited = tokio::time::timeout(Duration::from_millis(20), watch.raised()).await;
        assert!(waited.is_err());
        assert_eq!(stop.waiting.lock().unwrap().len(), 1);
        let waiter = tokio::spawn(async move {
            watch.raised().await;
            watch
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.raise();
        let watch = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the stop")
            .unwrap();
        assert!(watch.is_raised());
        drop(watch);
        assert!(stop.waiting.lock().unwrap().is_empty());
        // A connection that starts waiting after the stop does not wait at all.
        let mut late = StopWatch::new(stop.clone());
        tokio::time::timeout(Duration::from_secs(5), late.raised())
            .await
            .expect("already raised");
    }
}
