//! What may run beside a volunteer in its process, sharing its uplink and watching its load:
//! the lab's synthetic sync uploads and its oracle's feed of live counts. The product runs
//! with none; the lab passes one to [`crate::run_with_companion`].

use std::sync::Arc;

use crate::limit::TokenBucket;

pub trait Companion: Send + Sync {
    /// Once, before the volunteer serves: its id, and the uplink its customers take from
    /// (None: unlimited).
    fn start(&self, volunteer_id: &str, uplink: Option<Arc<TokenBucket>>);
    /// Sync connections it holds open: counted in the volunteer's announces with its own.
    fn sync_connections(&self) -> u32 {
        0
    }
    /// Sync bytes it has uploaded so far: counted with the volunteer's own.
    fn sync_uploaded(&self) -> u64 {
        0
    }
    /// The number of customers served at once is now `n` (at every change).
    fn customers(&self, _n: u32) {}
}
