//! Where an announce comes from, as the tracker's per-source bounds count it.
//!
//! One party rarely holds one IPv6 address: a host is normally given a whole /64 (SLAAC and
//! privacy addresses pick any address in it), so an IPv6 "address" here is its /64, as an IPv4
//! address is itself. A prefix is what one operator typically holds: an IPv4 /24, an IPv6 /48
//! (a site's allocation). Bounds per address stop one host; bounds per prefix stop one host
//! that rotates addresses within its network.
//!
//! Keys are the masked address as a `u128`, IPv4 as its IPv4-mapped IPv6 form, so keys of
//! the two families never meet (a mapped key has `ffff` in bits 32..48, which a masked /64 or
//! /48 never has).

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

/// The address and prefix an announce is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// IPv4 /32 or IPv6 /64.
    pub addr: u128,
    /// IPv4 /24 or IPv6 /48.
    pub prefix: u128,
}

impl Source {
    /// The keys of `ip` (an IPv4-mapped IPv6 address counts as the IPv4 address it maps).
    pub fn of(ip: IpAddr) -> Source {
        Source {
            addr: addr_key(ip),
            prefix: prefix_key(ip),
        }
    }
}

/// `ip`'s address key: IPv4 /32, IPv6 /64.
pub fn addr_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

/// `ip`'s prefix key: IPv4 /24, IPv6 /48.
pub fn prefix_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()) & !0xff,
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 80) - 1),
    }
}

/// A keyed hash of source keys, for the per-source counts and the rate table: two folded
/// multiplies (as foldhash and wyhash mix), keys random per instance. SipHash was most of
/// what the bounds cost an announce. What is asked of it is that outsiders cannot choose
/// keys that collide (they do not know the keys, and nothing they see tells them a hash);
/// a collision costs a longer probe in a map of at most a swarm's peers, or a shared rate.
#[derive(Debug, Clone, Copy)]
pub struct SourceHash {
    keys: [u64; 3],
}

impl Default for SourceHash {
    fn default() -> Self {
        SourceHash {
            keys: rand::random(),
        }
    }
}

impl SourceHash {
    pub fn hash(&self, key: u128) -> u64 {
        let [k0, k1, k2] = self.keys;
        let h = fold(key as u64 ^ k0, (key >> 64) as u64 ^ k1);
        // The second round spreads the first's bits over all of them.
        fold(h ^ k2, 0x9e37_79b9_7f4a_7c15)
    }
}

/// The 128-bit product of `a` and `b`, its halves xored.
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

impl BuildHasher for SourceHash {
    type Hasher = SourceHasher;

    fn build_hasher(&self) -> SourceHasher {
        SourceHasher {
            hash: *self,
            state: 0,
        }
    }
}

/// [`SourceHash`] as a [`Hasher`]: made for one `u128`, any other input folded in 8 bytes at
/// a time.
#[derive(Debug, Clone)]
pub struct SourceHasher {
    hash: SourceHash,
    state: u64,
}

impl Hasher for SourceHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            let word = u64::from_le_bytes(b);
            self.state = self
                .hash
                .hash(u128::from(self.state) << 64 | u128::from(word));
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.state = self.hash.hash(v ^ u128::from(self.state));
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_address_and_slash_24() {
        assert_eq!(addr_key(ip("10.1.2.3")), addr_key(ip("10.1.2.3")));
        assert_ne!(addr_key(ip("10.1.2.3")), addr_key(ip("10.1.2.4")));
        assert_eq!(prefix_key(ip("10.1.2.3")), prefix_key(ip("10.1.2.250")));
        assert_ne!(prefix_key(ip("10.1.2.3")), prefix_key(ip("10.1.3.3")));
        // A dual-stack socket's mapped form is the same source.
        assert_eq!(
            Source::of(ip("::ffff:10.1.2.3")),
            Source::of(ip("10.1.2.3"))
        );
    }

    #[test]
    fn ipv6_slash_64_and_slash_48() {
        let a = ip("2001:db8:1:2:aaaa::1");
        assert_eq!(addr_key(a), addr_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(addr_key(a), addr_key(ip("2001:db8:1:3::1")));
        assert_eq!(prefix_key(a), prefix_key(ip("2001:db8:1:ffff::1")));
        assert_ne!(prefix_key(a), prefix_key(ip("2001:db8:2::1")));
    }

    /// Keys that differ little (neighbours in a /24, /64s of one /48) spread as random ones
    /// would, in the low bits (a table's slot) and the high ones (hashbrown's tag).
    #[test]
    fn neighbouring_keys_spread() {
        let h = SourceHash::default();
        let v4 = |i: u32| addr_key(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        let v6 = |i: u128| (0x2001_0db8_0001u128 << 80) | (i << 64);
        for keys in [
            (0..4096u32).map(v4).collect::<Vec<_>>(),
            (0..4096u128).map(v6).collect(),
        ] {
            let low: std::collections::HashSet<_> =
                keys.iter().map(|&k| h.hash(k) & 0xffff).collect();
            // 4096 random draws from 65536 values leave about 3,970 distinct.
            assert!(low.len() > 3900, "{}", low.len());
            let tags: std::collections::HashSet<_> =
                keys.iter().map(|&k| h.hash(k) >> 57).collect();
            assert_eq!(tags.len(), 128);
        }
    }

    #[test]
    fn families_never_share_a_key() {
        // The v6 /64 and /48 holding the mapped range, against the v4 address they map.
        let v4 = ip("0.0.0.0");
        let v6 = ip("::ffff:0:0").to_canonical();
        assert!(v6.is_ipv4(), "mapped folds to v4");
        let zero6 = ip("::1");
        assert_ne!(addr_key(v4), addr_key(zero6));
        assert_ne!(prefix_key(v4), prefix_key(zero6));
    }
}
