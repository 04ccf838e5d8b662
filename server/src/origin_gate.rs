//! Who may download from the origin's BitTorrent seed.
//!
//! The origin should upload each new file about once, however many volunteers sync it. So
//! while no volunteer has the whole file, one downloader per torrent (the first to ask, until
//! it goes quiet) is handed the origin; the others get only their fellow volunteers and take
//! pieces from the designated one as they arrive. Once any volunteer seeds the file, nobody is
//! handed the origin. The origin itself is handed nobody, so it never dials out: every
//! connection to it is made to its listening port, which lets downloaders tell its bytes apart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct OriginGate {
    designated: HashMap<[u8; 20], ([u8; 20], Instant)>,
    /// A designated downloader silent for this long loses its place.
    ttl: Duration,
}

impl OriginGate {
    pub fn new(ttl: Duration) -> Self {
        OriginGate {
            designated: HashMap::new(),
            ttl,
        }
    }

    /// Whether `peer_id`, announcing for `info_hash` with `left` bytes to go, may be given the
    /// origin's address. `other_seeders`: complete peers besides the origin and the announcer.
    pub fn may_see_origin(
        &mut self,
        info_hash: [u8; 20],
        peer_id: [u8; 20],
        left: u64,
        stopped: bool,
        other_seeders: u32,
        now: Instant,
    ) -> bool {
        let current = self.designated.get(&info_hash).copied();
        if stopped || left == 0 {
            if current.is_some_and(|(p, _)| p == peer_id) {
                self.designated.remove(&info_hash);
            }
            return false;
        }
        if other_seeders >= 1 {
            self.designated.remove(&info_hash);
            return false;
        }
        match current {
            Some((p, seen)) if p != peer_id && now.saturating_duration_since(seen) < self.ttl => {
                false
            }
            _ => {
                self.designated.insert(info_hash, (peer_id, now));
                true
            }
        }
    }

    /// Forget downloaders quiet for longer than the TTL: they have lost their place anyway,
    /// and without this a torrent's entry would stay after its swarm went (with an open
    /// tracker, one per info-hash anyone ever announced).
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.designated
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ttl);
    }

    /// Torrents with a designated downloader.
    pub fn len(&self) -> usize {
        self.designated.len()
    }

    pub fn is_empty(&self) -> bool {
        self.designated.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_downloader_at_a_time_until_someone_seeds() {
        let t0 = Instant::now();
        let mut g = OriginGate::new(Duration::from_secs(10));
        let (h, a, b) = ([1; 20], [0xa; 20], [0xb; 20]);
        assert!(g.may_see_origin(h, a, 100, false, 0, t0));
        assert!(!g.may_see_origin(h, b, 100, false, 0, t0));
        assert!(g.may_see_origin(h, a, 50, false, 0, t0 + Duration::from_secs(5)));
        // a goes quiet: b takes over
        assert!(g.may_see_origin(h, b, 100, false, 0, t0 + Duration::from_secs(16)));
        // a seeder exists: nobody
        assert!(!g.may_see_origin(h, b, 100, false, 1, t0 + Duration::from_secs(17)));
        // a finished downloader frees the place
        assert!(g.may_see_origin(h, a, 10, false, 0, t0 + Duration::from_secs(18)));
        assert!(!g.may_see_origin(h, a, 0, false, 0, t0 + Duration::from_secs(19)));
        assert!(g.may_see_origin(h, b, 10, false, 0, t0 + Duration::from_secs(19)));
        assert!(!g.may_see_origin(h, b, 10, true, 0, t0 + Duration::from_secs(20)));
        assert!(g.may_see_origin(h, a, 10, false, 0, t0 + Duration::from_secs(20)));
    }

    #[test]
    fn quiet_designations_are_forgotten() {
        let t0 = Instant::now();
        let mut g = OriginGate::new(Duration::from_secs(10));
        for i in 0..100u8 {
            assert!(g.may_see_origin([i; 20], [1; 20], 100, false, 0, t0));
        }
        g.expire(t0 + Duration::from_secs(5));
        assert_eq!(g.len(), 100);
        assert!(g.may_see_origin([0; 20], [1; 20], 100, false, 0, t0 + Duration::from_secs(8)));
        g.expire(t0 + Duration::from_secs(11));
        assert_eq!(g.len(), 1, "only the one still asking");
        g.expire(t0 + Duration::from_secs(30));
        assert!(g.is_empty());
    }
}
