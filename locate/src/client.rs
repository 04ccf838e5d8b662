//! The customer's address: the connection's peer, unless the peer is a proxy the operator
//! trusts (HAProxy in front of replicas); then the address that proxy says it served, from
//! `Forwarded` (RFC 7239) or else `X-Forwarded-For`, read from the right: the first address
//! that is not itself a trusted proxy is the customer. Anything a customer writes in those
//! headers is left of what the trusted proxies appended, so a forged entry is never reached
//! (or, behind an untrusted peer, never read at all).

use std::net::IpAddr;

use crate::PrefixTable;

/// The customer behind `peer`. `forwarded` yields each `Forwarded` header line, `xff` each
/// `X-Forwarded-For` line, in the order received.
pub fn customer_addr<'a>(
    peer: IpAddr,
    trusted: &PrefixTable<()>,
    forwarded: impl Iterator<Item = &'a [u8]>,
    xff: impl Iterator<Item = &'a [u8]>,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for line in forwarded.filter_map(|l| std::str::from_utf8(l).ok()) {
        for element in line.split(',') {
            let value = element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            });
            // An element without `for` is a hop that did not say: unknown.
            hops.push(value.unwrap_or("unknown"));
        }
    }
    if hops.is_empty() {
        for line in xff.filter_map(|l| std::str::from_utf8(l).ok()) {
            hops.extend(line.split(',').map(str::trim));
        }
    }
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        match parse_node(hop) {
            Some(ip) if trusted.contains(ip) => nearest = ip,
            Some(ip) => return ip,
            // `unknown`, an obfuscated name, garbage: the trusted proxy that wrote it is the
            // nearest that can be vouched for.
            None => return nearest,
        }
    }
    nearest
}

/// Whether the customer behind `peer` reached the proxy in front over HTTPS, as that proxy
/// says: the nearest hop's `proto=` in `Forwarded` (RFC 7239), else the last
/// `X-Forwarded-Proto` value (HAProxy's `http-request set-header X-Forwarded-Proto https if
/// { ssl_fc }`). Only a trusted peer's word counts: anyone else's headers are the customer's
/// own. The proxy nearest us wrote the last value, so that one is read.
pub fn forwarded_https<'a>(
    peer: IpAddr,
    trusted: &PrefixTable<()>,
    forwarded: impl Iterator<Item = &'a [u8]>,
    xfp: impl Iterator<Item = &'a [u8]>,
) -> bool {
    if !trusted.contains(peer) {
        return false;
    }
    let last_element = forwarded
        .filter_map(|l| std::str::from_utf8(l).ok())
        .flat_map(|l| l.split(','))
        .last();
    if let Some(element) = last_element {
        let proto = element.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("proto")
                .then(|| v.trim().trim_matches('"'))
        });
        if let Some(p) = proto {
            return p.eq_ignore_ascii_case("https");
        }
    }
    xfp.filter_map(|l| std::str::from_utf8(l).ok())
        .flat_map(|l| l.split(','))
        .last()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A node as `Forwarded` or `X-Forwarded-For` write it: `192.0.2.60`, `192.0.2.60:4711`,
/// `"[2001:db8::17]:4711"`, `2001:db8::17`.
fn parse_node(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Some(rest) = t.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse().ok();
    }
    if let Ok(ip) = t.parse() {
        return Some(ip);
    }
    let (addr, port) = t.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(blocks: &[&str]) -> PrefixTable<()> {
        let mut t = PrefixTable::default();
        for b in blocks {
            t.insert(b.parse().unwrap(), ()).unwrap();
        }
        t
    }

    fn who(peer: &str, t: &PrefixTable<()>, fwd: &[&str], xff: &[&str]) -> IpAddr {
        customer_addr(
            ip(peer),
            t,
            fwd.iter().map(|s| s.as_bytes()),
            xff.iter().map(|s| s.as_bytes()),
        )
    }

    #[test]
    fn only_a_trusted_proxy_says_the_customer_came_over_https() {
        let t = trusted(&["10.0.0.0/8"]);
        let https = |peer: &str, fwd: &[&str], xfp: &[&str]| {
            forwarded_https(
                ip(peer),
                &t,
                fwd.iter().map(|l| l.as_bytes()),
                xfp.iter().map(|l| l.as_bytes()),
            )
        };
        assert!(https("10.0.0.1", &["for=192.0.2.1;proto=https"], &[]));
        assert!(https("10.0.0.1", &[], &["https"]));
        assert!(https("10.0.0.1", &[], &["http, HTTPS"]));
        // The nearest hop's word: a customer's own `proto=https` further left is not it.
        assert!(!https(
            "10.0.0.1",
            &["for=192.0.2.1;proto=https, for=192.0.2.2;proto=http"],
            &[]
        ));
        // Forwarded without proto: X-Forwarded-Proto decides.
        assert!(https("10.0.0.1", &["for=192.0.2.1"], &["https"]));
        assert!(!https("10.0.0.1", &[], &[]));
        // An untrusted peer's headers are its own.
        assert!(!https(
            "192.0.2.9",
            &["for=1.2.3.4;proto=https"],
            &["https"]
        ));
    }

    #[test]
    fn an_untrusted_peer_is_the_customer_whatever_it_writes() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            who("198.51.100.9", &t, &["for=192.0.2.1"], &["192.0.2.1"]),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right() {
        let t = trusted(&["10.0.0.0/8", "::1/128"]);
        // The customer forged the leftmost entry; the proxy appended the real address.
        assert_eq!(
            who("10.0.0.2", &t, &[], &["203.0.113.66, 192.0.2.7"]),
            ip("192.0.2.7")
        );
        // Two proxies, across two header lines.
        assert_eq!(
            who(
                "10.0.0.2",
                &t,
                &[],
                &["203.0.113.66, 192.0.2.7", "10.0.0.3"]
            ),
            ip("192.0.2.7")
        );
        // Forwarded wins over X-Forwarded-For, and reads quoted IPv6 with a port.
        assert_eq!(
            who(
                "::1",
                &t,
                &["for=192.0.2.43;proto=http, for=\"[2001:db8:cafe::17]:4711\""],
                &["198.51.100.1"]
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            who("10.0.0.2", &t, &["For=\"192.0.2.9:8080\";by=10.0.0.2"], &[]),
            ip("192.0.2.9")
        );
        // Nothing said: the proxy itself.
        assert_eq!(who("10.0.0.2", &t, &[], &[]), ip("10.0.0.2"));
        // Every hop trusted: the farthest of them.
        assert_eq!(
            who("10.0.0.2", &t, &[], &["10.9.9.9, 10.0.0.3"]),
            ip("10.9.9.9")
        );
        // An unreadable hop stops the walk at the trusted proxy that wrote it.
        assert_eq!(
            who(
                "10.0.0.2",
                &t,
                &["for=192.0.2.1, for=unknown, for=10.0.0.3"],
                &[]
            ),
            ip("10.0.0.3")
        );
        assert_eq!(
            who("10.0.0.2", &t, &[], &["192.0.2.1, garbage"]),
            ip("10.0.0.2")
        );
    }
}
