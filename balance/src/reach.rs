//! Which customers a volunteer's URLs can take: by scheme and by address family.
//!
//! A customer that came over HTTPS must be sent to an `https://` URL: apt refuses a redirect
//! from https to http, and the customer asked for a channel nobody can read. A customer that
//! came over IPv4 may have no IPv6 at all, so a URL naming an IPv6 address is out of its
//! reach (and the other way round). A URL naming a host, not an address, is taken as
//! reachable over both: its DNS decides, as it does for any mirror.
//!
//! A volunteer may declare several URLs (an `http://` and an `https://` one, an IPv4 and an
//! IPv6 one); the registry keeps them as [`Urls`], with the union of their reach on the
//! volunteer's hot cache line, so the sample's eligibility check is one `and`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A set of (scheme, family) pairs: what a URL offers, or what a customer can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach(u8);

const HTTP4: u8 = 1;
const HTTP6: u8 = 2;
const HTTPS4: u8 = 4;
const HTTPS6: u8 = 8;

impl Reach {
    /// Everything: a customer nothing is known of (tests, the lab), or a URL of each kind.
    pub const ANY: Reach = Reach(HTTP4 | HTTP6 | HTTPS4 | HTTPS6);
    pub const NONE: Reach = Reach(0);

    /// What `url` offers: its scheme, and the family of the address it names (both for a
    /// host name). Nothing for a URL that is neither `http://` nor `https://`.
    pub fn of_url(url: &str) -> Reach {
        let (rest, v4, v6) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, HTTPS4, HTTPS6)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, HTTP4, HTTP6)
        } else {
            return Reach::NONE;
        };
        match host_family(rest) {
            Some(IpAddr::V4(_)) => Reach(v4),
            Some(IpAddr::V6(_)) => Reach(v6),
            None => Reach(v4 | v6),
        }
    }

    /// The URLs a customer can follow: one that came over HTTPS only `https://` ones; one that
    /// came over plain HTTP either (apt, curl and wget follow http to https); each only of
    /// the family of the address it came from.
    pub fn customer(secure: bool, addr: IpAddr) -> Reach {
        let v6 = matches!(addr.to_canonical(), IpAddr::V6(_));
        match (secure, v6) {
            (true, false) => Reach(HTTPS4),
            (true, true) => Reach(HTTPS6),
            (false, false) => Reach(HTTP4 | HTTPS4),
            (false, true) => Reach(HTTP6 | HTTPS6),
        }
    }

    /// Whether a URL offering `self` can take a customer who can follow `need`.
    #[inline]
    pub fn admits(self, need: Reach) -> bool {
        self.0 & need.0 != 0
    }

    /// For a customer that came over IPv6 and finds no volunteer reachable over it: the same
    /// schemes over IPv4. A customer reaching us over IPv6 nearly always has IPv4 too (the
    /// other way round is common), so it is sent there rather than to the origin. `None`
    /// for a customer that came over IPv4.
    pub fn over_ipv4_instead(self) -> Option<Reach> {
        let six = self.0 & (HTTP6 | HTTPS6);
        if six == 0 || self.0 & (HTTP4 | HTTPS4) != 0 {
            return None;
        }
        Some(Reach(six >> 1))
    }

    /// Whether it includes a plain `http://` scheme: a customer that came over plain HTTP.
    fn plain(self) -> bool {
        self.0 & (HTTP4 | HTTP6) != 0
    }

    /// A customer that can follow only `https://` URLs: it came over HTTPS.
    pub fn secure_only(self) -> bool {
        self.0 != 0 && !self.plain()
    }

    pub fn union(self, other: Reach) -> Reach {
        Reach(self.0 | other.0)
    }
}

/// The address a URL's authority names, if it names one rather than a host.
fn host_family(after_scheme: &str) -> Option<IpAddr> {
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(bracketed) = host.strip_prefix('[') {
        let inner = bracketed.split_once(']')?.0;
        // A zone (`%eth0`) is not part of the address.
        let inner = inner.split_once('%').map_or(inner, |(a, _)| a);
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A volunteer's URLs, each with what it offers, the first the one it announced as its own
/// (what spot checks and the admin's views use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    list: Arc<[(Reach, Arc<str>)]>,
    all: Reach,
}

impl Urls {
    /// `primary` first, then `others` (a repeat of one already listed is left out).
    pub fn new<'a>(primary: &str, others: impl IntoIterator<Item = &'a str>) -> Urls {
        let mut list: Vec<(Reach, Arc<str>)> = vec![(Reach::of_url(primary), primary.into())];
        for u in others {
            if !list.iter().any(|(_, l)| **l == *u) {
                list.push((Reach::of_url(u), u.into()));
            }
        }
        let all = list.iter().fold(Reach::NONE, |a, (r, _)| a.union(*r));
        Urls {
            list: list.into(),
            all,
        }
    }

    /// The union of what its URLs offer.
    pub fn reach(&self) -> Reach {
        self.all
    }

    /// The one it announced as its own.
    pub fn primary(&self) -> &str {
        &self.list[0].1
    }

    /// Whether it is these URLs, in this order (an announce usually repeats them).
    pub fn same_as<'a>(&self, primary: &str, others: impl IntoIterator<Item = &'a str>) -> bool {
        let mut others = others.into_iter();
        *self.list[0].1 == *primary
            && self.list[1..]
                .iter()
                .all(|(_, u)| others.next().is_some_and(|o| o == &**u))
            && others.next().is_none()
    }

    /// The URL to send a customer who can follow `need` to: one of the scheme it came by
    /// (plain HTTP for a plain customer, as it asked, where there is one), else any it can
    /// follow; the primary if none can (the caller checked [`Self::reach`] first).
    #[inline]
    pub fn for_customer(&self, need: Reach) -> &str {
        if self.list.len() == 1 {
            return &self.list[0].1;
        }
        let same_scheme = |r: Reach| !need.plain() || r.plain();
        self.list
            .iter()
            .find(|(r, _)| r.admits(need) && same_scheme(*r))
            .or_else(|| self.list.iter().find(|(r, _)| r.admits(need)))
            .map_or(&*self.list[0].1, |(_, u)| &**u)
    }

    /// Every URL, the primary first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|(_, u)| &**u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_url_offers_its_scheme_and_the_family_it_names() {
        assert_eq!(Reach::of_url("http://10.0.0.1:8081/x"), Reach(HTTP4));
        assert_eq!(Reach::of_url("https://10.0.0.1"), Reach(HTTPS4));
        assert_eq!(Reach::of_url("http://[2001:db8::1]:8081/"), Reach(HTTP6));
        assert_eq!(Reach::of_url("https://[::1]"), Reach(HTTPS6));
        assert_eq!(Reach::of_url("https://[fe80::1%25eth0]:1"), Reach(HTTPS6));
        assert_eq!(
            Reach::of_url("https://mirror.example.org:8443/debian?a=b"),
            Reach(HTTPS4 | HTTPS6)
        );
        assert_eq!(Reach::of_url("http://user@10.0.0.1/"), Reach(HTTP4));
        assert_eq!(Reach::of_url("ftp://10.0.0.1"), Reach::NONE);
        assert_eq!(
            Reach::of_url("http://[not-an-address]/"),
            Reach(HTTP4 | HTTP6)
        );
    }

    #[test]
    fn customers_follow_their_scheme_and_family() {
        let https4 = Reach::customer(true, ip("192.0.2.1"));
        let http6 = Reach::customer(false, ip("2001:db8::5"));
        // An IPv4-mapped address came over IPv4.
        assert_eq!(Reach::customer(true, ip("::ffff:192.0.2.1")), https4);
        assert!(!Reach::of_url("http://192.0.2.9").admits(https4));
        assert!(Reach::of_url("https://192.0.2.9").admits(https4));
        assert!(!Reach::of_url("https://[2001:db8::9]").admits(https4));
        assert!(Reach::of_url("https://m.example").admits(https4));
        assert!(Reach::of_url("http://[2001:db8::9]").admits(http6));
        assert!(Reach::of_url("https://[2001:db8::9]").admits(http6));
        assert!(!Reach::of_url("http://192.0.2.9").admits(http6));
        assert_eq!(http6.over_ipv4_instead(), Some(Reach(HTTP4 | HTTPS4)));
        assert_eq!(
            Reach::customer(true, ip("::1")).over_ipv4_instead(),
            Some(Reach(HTTPS4))
        );
        assert_eq!(https4.over_ipv4_instead(), None);
        assert_eq!(Reach::ANY.over_ipv4_instead(), None);
    }

    #[test]
    fn a_customer_gets_the_url_of_its_scheme_and_family() {
        let urls = Urls::new(
            "http://192.0.2.9:8081",
            [
                "https://192.0.2.9:8443",
                "http://[2001:db8::9]:8081",
                "https://mirror.example",
            ],
        );
        assert_eq!(urls.reach(), Reach::ANY);
        let pick = |secure, addr| urls.for_customer(Reach::customer(secure, ip(addr)));
        assert_eq!(pick(false, "192.0.2.1"), "http://192.0.2.9:8081");
        assert_eq!(pick(true, "192.0.2.1"), "https://192.0.2.9:8443");
        assert_eq!(pick(false, "2001:db8::1"), "http://[2001:db8::9]:8081");
        assert_eq!(pick(true, "2001:db8::1"), "https://mirror.example");
        // A plain customer goes to https where that is all there is.
        let only_tls = Urls::new("https://192.0.2.9", []);
        assert_eq!(
            only_tls.for_customer(Reach::customer(false, ip("192.0.2.1"))),
            "https://192.0.2.9"
        );
        assert!(urls.same_as(
            "http://192.0.2.9:8081",
            [
                "https://192.0.2.9:8443",
                "http://[2001:db8::9]:8081",
                "https://mirror.example"
            ]
        ));
        assert!(!urls.same_as("http://192.0.2.9:8081", ["https://192.0.2.9:8443"]));
        assert!(!only_tls.same_as("https://192.0.2.9", ["https://x"]));
        assert!(only_tls.same_as("https://192.0.2.9", []));
        // A repeat is listed once.
        assert_eq!(Urls::new("http://a", ["http://a"]).iter().count(), 1);
    }
}
