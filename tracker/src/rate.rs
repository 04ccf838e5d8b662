//! A bounded announce rate per source address, in a table of fixed size.
//!
//! Each slot is one GCRA bucket (the "theoretical arrival time" form of a token bucket: one
//! `u64` per bucket, no separate token count and refill time). Addresses are hashed into the
//! table with keys drawn at start, and slots hold no address: two addresses that meet in a
//! slot share its rate. So the table costs the same however many addresses send, and needs
//! no expiry; the price is that a legitimate address sharing a slot with a flooding one is
//! slowed with it, a chance of one in [`SLOTS`] per flooding address, which an attacker
//! cannot aim without the keys.
//!
//! The hash is [`crate::source::SourceHash`], not SipHash: it runs on every announce, where
//! SipHash was 300 of the 400 instructions the table cost. A collision here only shares a
//! rate, it cannot make the table slower, so the strength asked of the hash is only that
//! outsiders cannot choose collisions with a given address; to learn the keys they would
//! have to infer them from which of their own addresses get slowed together.

use std::time::{Duration, Instant};

/// Slots in the table: 512 KiB of buckets, where one address among a thousand flooding ones
/// shares a slot with one of them with a chance of about 1.5 %.
pub const SLOTS: usize = 1 << 16;

/// Announces per second per address, with a burst.
#[derive(Debug)]
pub struct RateTable {
    /// Per slot, when its bucket is next empty of debt: microseconds since `epoch`.
    slots: Box<[u64]>,
    /// The slot hash, keyed at random per table.
    hash: crate::source::SourceHash,
    epoch: Instant,
    /// Microseconds one announce costs.
    interval_us: u64,
    /// How far ahead of now a bucket may run: the burst beyond the first announce.
    tolerance_us: u64,
}

impl RateTable {
    /// `per_sec` announces a second from one address, `burst` of them at once. Both are at
    /// least 1 (a zero is taken as 1: the config refuses it before).
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let interval_us = 1_000_000 / u64::from(per_sec.max(1));
        RateTable {
            slots: vec![0u64; SLOTS].into_boxed_slice(),
            hash: Default::default(),
            epoch: Instant::now(),
            interval_us: interval_us.max(1),
            tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1)) - 1),
        }
    }

    /// Whether one more announce from `addr` (a [`crate::source`] address key) is within the
    /// rate at `now`; it is counted only if so.
    pub fn admit(&mut self, addr: u128, now: Instant) -> bool {
        let slot = &mut self.slots[self.slot_of(addr)];
        let t = micros(now.saturating_duration_since(self.epoch));
        let due = (*slot).max(t);
        if due - t > self.tolerance_us {
            return false;
        }
        *slot = due + self.interval_us;
        true
    }

    fn slot_of(&self, addr: u128) -> usize {
        (self.hash.hash(addr) as usize) & (SLOTS - 1)
    }

    /// Bytes the table holds: fixed at creation.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<u64>()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut r = RateTable::new(10, 5);
        let t = Instant::now();
        let a = 1u128;
        let admitted = (0..20).filter(|_| r.admit(a, t)).count();
        assert_eq!(admitted, 5, "the burst, at once");
        // 10 a second: one more every 100 ms.
        assert!(!r.admit(a, t + Duration::from_millis(50)));
        assert!(r.admit(a, t + Duration::from_millis(100)));
        assert!(!r.admit(a, t + Duration::from_millis(100)));
        // Quiet for a second: the whole burst again, no more.
        let later = t + Duration::from_secs(2);
        assert_eq!((0..20).filter(|_| r.admit(a, later)).count(), 5);
    }

    #[test]
    fn addresses_have_their_own_buckets() {
        let mut r = RateTable::new(1, 1);
        let t = Instant::now();
        assert!(r.admit(1, t));
        assert!(!r.admit(1, t));
        // Another address is not slowed by the first (unless they share a slot: for two
        // addresses, 1 in 65536; the third makes it all but impossible that both do).
        assert!(r.admit(2, t) || r.admit(3, t));
    }

    #[test]
    fn the_table_does_not_grow_with_addresses() {
        let mut r = RateTable::new(1, 1);
        let before = r.heap_bytes();
        let t = Instant::now();
        for a in 0..200_000u128 {
            r.admit(a << 64, t);
        }
        assert_eq!(r.heap_bytes(), before);
        assert_eq!(before, SLOTS * 8);
    }
}
