//! Where customers and volunteers are, as the proximity ladder needs it: the customer's
//! address behind the trusted proxies and its place, and a volunteer's place from its own
//! address and the netblocks it declared. One [`Locator`] places both, so they compare.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use balance::ladder::{Spill, Tier, TIERS};
use balance::{Customer, Ladder, VolunteerPlace};
use locate::place::{Locator, Place};
use locate::{GeoWatch, Netblock, PrefixTable};

use crate::state::AppState;

/// How often the `.mmdb` files are looked at for a change.
const GEO_CHECK: Duration = Duration::from_secs(5);

pub struct Location {
    locator: Locator,
    trusted: PrefixTable<()>,
    geo: Option<Arc<GeoWatch>>,
}

impl Location {
    /// From the checked `[location]` configuration (the databases opened).
    pub fn from_config(cfg: &config::LocationConfig) -> Result<Location> {
        let geo = cfg.geo()?.map(Arc::new);
        if let Some(g) = &geo {
            for (path, kind) in g.current().files() {
                tracing::info!(file = %path.display(), kind, "location database open");
            }
        }
        let locator = Locator::new(&cfg.sites()?, geo.clone()).map_err(|e| anyhow!("{e}"))?;
        Ok(Location {
            locator,
            trusted: cfg.trusted_table()?,
            geo,
        })
    }

    /// The ladder's estimates as configured.
    pub fn ladder(cfg: &config::LocationConfig) -> Result<Ladder> {
        let round_trips: [f64; TIERS] = cfg.round_trips()?;
        let pairs: Vec<(Tier, Tier, f64)> = cfg
            .extra_round_trips()?
            .into_iter()
            .map(|(near, far, ms)| (Tier::ALL[near], Tier::ALL[far], ms))
            .collect();
        let spill = match cfg.spill {
            config::Spill::ByWait => Spill::ByWait,
            config::Spill::Never => Spill::Never,
        };
        Ok(Ladder::new(round_trips, &pairs, spill))
    }

    /// The customer behind a connection from `peer`, with the proxies' headers (each
    /// `Forwarded` line, each `X-Forwarded-For` line), and where it is.
    pub fn customer<'a>(
        &self,
        peer: IpAddr,
        secure: bool,
        forwarded: impl Iterator<Item = &'a [u8]>,
        xff: impl Iterator<Item = &'a [u8]>,
    ) -> Customer {
        self.customer_at(self.client_addr(peer, forwarded, xff), secure)
    }

    /// Whether a customer came over HTTPS: on this connection (`secure`), or to the trusted
    /// proxy in front, as its `Forwarded: proto=` or `X-Forwarded-Proto` says (HAProxy
    /// ending TLS for several servers).
    pub fn came_secure<'a>(
        &self,
        peer: IpAddr,
        secure: bool,
        forwarded: impl Iterator<Item = &'a [u8]>,
        xfp: impl Iterator<Item = &'a [u8]>,
    ) -> bool {
        secure
            || (!self.trusted.is_empty()
                && locate::client::forwarded_https(
                    peer.to_canonical(),
                    &self.trusted,
                    forwarded,
                    xfp,
                ))
    }

    /// The address of the client behind a connection from `peer`: the peer, or behind
    /// trusted proxies the first untrusted hop their headers name.
    pub fn client_addr<'a>(
        &self,
        peer: IpAddr,
        forwarded: impl Iterator<Item = &'a [u8]>,
        xff: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        if self.trusted.is_empty() {
            peer.to_canonical()
        } else {
            locate::client::customer_addr(peer.to_canonical(), &self.trusted, forwarded, xff)
        }
    }

    /// A customer at `addr`, as the admin names it (`?ip=`); `secure`: it came over HTTPS.
    pub fn customer_at(&self, addr: IpAddr, secure: bool) -> Customer {
        Customer {
            addr,
            place: self.place(addr),
            reach: balance::Reach::customer(secure, addr),
        }
    }

    fn place(&self, addr: IpAddr) -> Place {
        if self.locator.is_active() {
            self.locator.place(addr)
        } else {
            Place::default()
        }
    }

    /// Where a volunteer is: the place of the address customers reach it at (its URL's, if
    /// an IP address; else `from`, where it announced from), and of the netblocks it
    /// declared (`nets`, as the announce carried them), those that hold that address. A
    /// netblock elsewhere would draw another network's customers to it, so it is left out
    /// (and named in the second value), unless the volunteer is private: then it only
    /// narrows whom it serves.
    pub fn volunteer(
        &self,
        url: &str,
        from: IpAddr,
        nets: &str,
        private: bool,
    ) -> Result<(VolunteerPlace, Vec<Netblock>), locate::NetblockError> {
        let addr = url_ip(url).unwrap_or(from).to_canonical();
        let mut kept = Vec::new();
        let mut ignored = Vec::new();
        for text in nets.split(',').filter(|t| !t.is_empty()) {
            let block: Netblock = text.parse()?;
            if private || block.contains(addr) {
                kept.push(block);
            } else {
                ignored.push(block);
            }
        }
        let place = VolunteerPlace {
            place: self.place(addr),
            nets: Arc::from(kept),
            private,
        };
        Ok((place, ignored))
    }

    /// A site's or a region's name, for the mirror list.
    pub fn site_name(&self, site: u16) -> &str {
        self.locator.site_name(site)
    }

    pub fn region_name(&self, region: u16) -> &str {
        self.locator.region_name(region)
    }
}

/// The IP address in a URL's host, if it is one (`http://192.0.2.7:8081/`,
/// `http://[2001:db8::7]/`).
fn url_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split_once(']')?.0.parse().ok();
    }
    host.split(':').next()?.parse().ok()
}

/// Look at the `.mmdb` files every few seconds; a changed one is read again off the async
/// threads, and one that does not read keeps the previous database (the log says why).
pub async fn watch_geo(st: Arc<AppState>) {
    let Some(geo) = st.location.geo.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(GEO_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let g = geo.clone();
        match tokio::task::spawn_blocking(move || g.check()).await {
            Ok(Ok(true)) => tracing::info!("location database changed on disk; read again"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "location database changed on disk but does not read; kept the previous one")
            }
            Err(e) => tracing::warn!(error = %e, "location database check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_its_ip_when_it_is_one() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(url_ip("http://192.0.2.7:8081/"), ip("192.0.2.7"));
        assert_eq!(url_ip("https://192.0.2.7"), ip("192.0.2.7"));
        assert_eq!(url_ip("http://[2001:db8::7]:80/x"), ip("2001:db8::7"));
        assert_eq!(url_ip("http://u@192.0.2.7/"), ip("192.0.2.7"));
        assert_eq!(url_ip("http://mirror.example.org/"), None);
        assert_eq!(url_ip("nonsense"), None);
    }

    #[test]
    fn a_volunteer_keeps_only_netblocks_holding_its_address_unless_private() {
        let l = Location::from_config(&config::LocationConfig::default()).unwrap();
        let from: IpAddr = "198.51.100.1".parse().unwrap();
        let (place, ignored) = l
            .volunteer(
                "http://10.1.2.3:8081",
                from,
                "10.1.0.0/16,10.9.0.0/16",
                false,
            )
            .unwrap();
        assert_eq!(place.nets.len(), 1);
        assert_eq!(ignored, ["10.9.0.0/16".parse::<Netblock>().unwrap()]);
        let (place, ignored) = l
            .volunteer("http://mirror.example/", from, "10.9.0.0/16", true)
            .unwrap();
        assert!(place.private && place.nets.len() == 1 && ignored.is_empty());
        assert!(l.volunteer("http://x/", from, "10.0.0.1/8", false).is_err());
    }
}
