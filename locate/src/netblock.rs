//! Netblocks (`192.0.2.0/24`, `2001:db8::/32`) and a table that finds the longest one holding
//! an address.
//!
//! Both families live in one 128-bit space: an IPv4 netblock is its IPv4-mapped IPv6 form
//! (`::ffff:192.0.2.0/120`), and an address is canonicalised the same way, so that a customer
//! reaching a dual-stack listener as `::ffff:192.0.2.7` matches `192.0.2.0/24`. The table
//! keeps one hash map per prefix length present, longest first: a lookup masks the address
//! once per length (a handful in any real configuration) and stops at the first hit, as a
//! router's FIB does.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// A network: its first address and its prefix length, in the 128-bit space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Netblock {
    network: u128,
    /// 0..=128; for an IPv4 netblock, 96 + its IPv4 prefix length.
    len: u8,
}

/// Why a netblock was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetblockError {
    #[error("`{0}` is not ADDRESS/LENGTH (for example 192.0.2.0/24 or 2001:db8::/32)")]
    Shape(String),
    #[error("`{0}`: the address is neither IPv4 nor IPv6")]
    Address(String),
    #[error("`{text}`: the prefix length must be 0 to {max}")]
    Length { text: String, max: u8 },
    #[error("`{text}` has address bits set beyond its prefix; the netblock is {network}")]
    HostBits { text: String, network: Netblock },
}

/// `ip` in the 128-bit space (IPv4 as IPv4-mapped IPv6).
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// Whether 128-bit `b` is an IPv4-mapped address.
fn is_mapped(b: u128) -> bool {
    b >> 32 == 0xffff
}

impl Netblock {
    /// Whether `ip` is in this netblock.
    pub fn contains(&self, ip: IpAddr) -> bool {
        bits(ip) & mask(self.len) == self.network
    }

    /// Whether this is an IPv4 netblock.
    pub fn is_v4(&self) -> bool {
        self.len >= 96 && is_mapped(self.network)
    }

    /// The network's first address and prefix length in the 128-bit space (IPv4 as
    /// IPv4-mapped), for writers that lay netblocks out bit by bit.
    pub(crate) fn bits_and_len(&self) -> (u128, u8) {
        (self.network, self.len)
    }

    /// The prefix length as written (an IPv4 netblock's in IPv4 terms).
    pub fn prefix_len(&self) -> u8 {
        if self.is_v4() {
            self.len - 96
        } else {
            self.len
        }
    }
}

impl FromStr for Netblock {
    type Err = NetblockError;

    fn from_str(text: &str) -> Result<Netblock, NetblockError> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| NetblockError::Shape(text.to_string()))?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| NetblockError::Address(text.to_string()))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 =
            len.parse()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| NetblockError::Length {
                    text: text.to_string(),
                    max,
                })?;
        let len = if ip.is_ipv4() { len + 96 } else { len };
        let b = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let network = Netblock {
            network: b & mask(len),
            len,
        };
        if network.network != b {
            return Err(NetblockError::HostBits {
                text: text.to_string(),
                network,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for Netblock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.network);
        match v6.to_ipv4_mapped().filter(|_| self.is_v4()) {
            Some(v4) => write!(f, "{v4}/{}", self.len - 96),
            None => write!(f, "{v6}/{}", self.len),
        }
    }
}

/// Values by netblock; a lookup finds the value of the longest netblock holding an address.
#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    /// By prefix length, longest first.
    by_len: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable { by_len: Vec::new() }
    }
}

impl<T> PrefixTable<T> {
    /// Add `block` with `value`; a netblock already in the table is refused with its value.
    pub fn insert(&mut self, block: Netblock, value: T) -> Result<(), &T> {
        let at = match self.by_len.iter().position(|(l, _)| *l <= block.len) {
            Some(i) if self.by_len[i].0 == block.len => i,
            Some(i) => {
                self.by_len.insert(i, (block.len, HashMap::new()));
                i
            }
            None => {
                self.by_len.push((block.len, HashMap::new()));
                self.by_len.len() - 1
            }
        };
        let map = &mut self.by_len[at].1;
        if map.contains_key(&block.network) {
            return Err(&map[&block.network]);
        }
        map.insert(block.network, value);
        Ok(())
    }

    /// The value of the longest netblock holding `ip`, with that netblock.
    pub fn lookup(&self, ip: IpAddr) -> Option<(Netblock, &T)> {
        let b = bits(ip);
        self.by_len.iter().find_map(|(len, map)| {
            let network = b & mask(*len);
            map.get(&network)
                .map(|v| (Netblock { network, len: *len }, v))
        })
    }

    /// The values of every netblock holding `ip`, longest first.
    pub fn each_holding(&self, ip: IpAddr) -> impl Iterator<Item = &T> + '_ {
        let b = bits(ip);
        self.by_len
            .iter()
            .filter_map(move |(len, map)| map.get(&(b & mask(*len))))
    }

    /// Whether any netblock holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.lookup(ip).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nb(s: &str) -> Netblock {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_netblock_holding_an_address_is_found_longest_first() {
        let mut t = PrefixTable::default();
        t.insert(nb("10.0.0.0/8"), "wide").unwrap();
        t.insert(nb("10.1.0.0/16"), "narrow").unwrap();
        t.insert(nb("10.2.0.0/16"), "other").unwrap();
        let all: Vec<_> = t.each_holding(ip("10.1.2.3")).copied().collect();
        assert_eq!(all, ["narrow", "wide"]);
        assert_eq!(t.each_holding(ip("192.0.2.1")).count(), 0);
    }

    #[test]
    fn netblocks_read_back_as_written_and_bad_ones_say_why() {
        for s in [
            "192.0.2.0/24",
            "0.0.0.0/0",
            "10.0.0.7/32",
            "2001:db8::/32",
            "::/0",
            "::1/128",
        ] {
            assert_eq!(nb(s).to_string(), s);
        }
        assert_eq!(nb("192.0.2.0/24").prefix_len(), 24);
        assert!(nb("192.0.2.0/24").is_v4() && !nb("2001:db8::/32").is_v4());
        let err = |s: &str| s.parse::<Netblock>().unwrap_err();
        assert!(matches!(err("192.0.2.0"), NetblockError::Shape(_)));
        assert!(matches!(err("192.0.2/24"), NetblockError::Address(_)));
        assert!(matches!(
            err("192.0.2.0/33"),
            NetblockError::Length { max: 32, .. }
        ));
        assert!(matches!(
            err("2001:db8::/129"),
            NetblockError::Length { max: 128, .. }
        ));
        assert!(matches!(err("10.0.0.0/x"), NetblockError::Length { .. }));
        let e = err("10.1.2.3/8");
        assert!(e.to_string().contains("the netblock is 10.0.0.0/8"), "{e}");
        let e = err("2001:db8::1/32");
        assert!(e.to_string().contains("2001:db8::/32"), "{e}");
    }

    #[test]
    fn the_longest_prefix_wins_in_both_families() {
        let mut t = PrefixTable::default();
        t.insert(nb("10.0.0.0/8"), "corp").unwrap();
        t.insert(nb("10.1.0.0/16"), "campus").unwrap();
        t.insert(nb("10.1.2.0/24"), "lab").unwrap();
        t.insert(nb("2001:db8::/32"), "corp6").unwrap();
        t.insert(nb("2001:db8:1::/48"), "campus6").unwrap();
        fn at<'a>(t: &PrefixTable<&'a str>, s: &str) -> Option<(String, &'a str)> {
            t.lookup(ip(s)).map(|(n, v)| (n.to_string(), *v))
        }
        assert_eq!(at(&t, "10.1.2.3"), Some(("10.1.2.0/24".into(), "lab")));
        assert_eq!(at(&t, "10.1.3.3"), Some(("10.1.0.0/16".into(), "campus")));
        assert_eq!(at(&t, "10.200.0.1"), Some(("10.0.0.0/8".into(), "corp")));
        assert_eq!(at(&t, "11.0.0.1"), None);
        // IPv4 as a dual-stack listener sees it.
        assert_eq!(
            at(&t, "::ffff:10.1.2.3"),
            Some(("10.1.2.0/24".into(), "lab"))
        );
        assert_eq!(
            at(&t, "2001:db8:1:ff::9"),
            Some(("2001:db8:1::/48".into(), "campus6"))
        );
        assert_eq!(
            at(&t, "2001:db8:2::9"),
            Some(("2001:db8::/32".into(), "corp6"))
        );
        assert_eq!(at(&t, "2001:db9::1"), None);
        // An IPv6 netblock never holds an IPv4 address by accident of bits.
        assert_eq!(at(&t, "::a01:203"), None);
        // The same netblock twice is refused, naming the first one's value.
        assert_eq!(t.insert(nb("10.1.0.0/16"), "again"), Err(&"campus"));
        // A default route.
        t.insert(nb("0.0.0.0/0"), "v4 world").unwrap();
        assert_eq!(at(&t, "8.8.8.8"), Some(("0.0.0.0/0".into(), "v4 world")));
        assert_eq!(at(&t, "2001:db9::1"), None, "0.0.0.0/0 is IPv4's only");
    }
}
