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
