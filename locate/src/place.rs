//! Where an address is: the operator's site holding it (and that site's region), and, from an
//! operator-supplied `.mmdb`, its AS, country and continent. The same [`Locator`] places
//! customers and volunteers, so the two compare.
//!
//! Names become small numbers once, when the locator is built: the request path compares a
//! customer's place with each candidate volunteer's, and comparing numbers costs nothing.

use std::net::IpAddr;
use std::sync::Arc;

use crate::geo::GeoWatch;
use crate::{Netblock, PrefixTable};

/// What is known of where one address is. `None`: not known (no site holds it, no database,
/// or the database does not say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Place {
    /// The operator's site (an index into the locator's sites).
    pub site: Option<u16>,
    pub asn: Option<u32>,
    /// ISO 3166 code, upper case.
    pub country: Option<[u8; 2]>,
    /// The site's region, else the continent the database gives (an index into the
    /// locator's regions). A region named like a continent code (`EU`) is that continent.
    pub region: Option<u16>,
}

/// The continent codes a MaxMind database uses, regions from the start.
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// One operator-configured site, as the locator is given it.
#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub region: Option<String>,
    pub netblocks: Vec<Netblock>,
}

/// Places addresses: by the operator's sites (longest netblock wins), and by the database if
/// one is configured.
#[derive(Debug, Default)]
pub struct Locator {
    table: PrefixTable<u16>,
    sites: Vec<String>,
    site_region: Vec<Option<u16>>,
    regions: Vec<String>,
    geo: Option<Arc<GeoWatch>>,
}

/// Why a locator was not built (the configuration checks say it first, naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocatorError {
    #[error("`{block}` is a netblock of both site `{first}` and site `{second}`")]
    Overlap {
        block: Netblock,
        first: String,
        second: String,
    },
    #[error("more than {} sites", u16::MAX)]
    TooMany,
}

impl Locator {
    pub fn new(sites: &[Site], geo: Option<Arc<GeoWatch>>) -> Result<Locator, LocatorError> {
        let mut l = Locator {
            regions: CONTINENTS.iter().map(|c| c.to_string()).collect(),
            geo,
            ..Locator::default()
        };
        if sites.len() > usize::from(u16::MAX) {
            return Err(LocatorError::TooMany);
        }
        for (i, site) in sites.iter().enumerate() {
            let id = i as u16;
            l.sites.push(site.name.clone());
            let region = site.region.as_deref().map(|r| l.region_id(r));
            l.site_region.push(region);
            for &block in &site.netblocks {
                if let Err(&other) = l.table.insert(block, id) {
                    return Err(LocatorError::Overlap {
                        block,
                        first: sites[usize::from(other)].name.clone(),
                        second: site.name.clone(),
                    });
                }
            }
        }
        Ok(l)
    }

    fn region_id(&mut self, name: &str) -> u16 {
        match self.regions.iter().position(|r| r == name) {
            Some(i) => i as u16,
            None => {
                self.regions.push(name.to_string());
                (self.regions.len() - 1) as u16
            }
        }
    }

    /// Whether there is anything to place addresses by: without sites or a database every
    /// place is unknown.
    pub fn is_active(&self) -> bool {
        !self.sites.is_empty() || self.geo.is_some()
    }

    /// Where `ip` is.
    pub fn place(&self, ip: IpAddr) -> Place {
        let site = self.table.lookup(ip).map(|(_, &s)| s);
        let mut place = Place {
            site,
            region: site.and_then(|s| self.site_region[usize::from(s)]),
            ..Place::default()
        };
        if let Some(geo) = &self.geo {
            let found = geo.current().lookup(ip);
            place.asn = found.asn;
            place.country = found.country;
            if place.region.is_none() {
                place.region = found
                    .continent
                    .and_then(|c| CONTINENTS.iter().position(|k| k.as_bytes() == c))
                    .map(|i| i as u16);
            }
        }
        place
    }

    /// A site's name, for the people reading a mirror list.
    pub fn site_name(&self, site: u16) -> &str {
        self.sites
            .get(usize::from(site))
            .map_or("?", |s| s.as_str())
    }

    /// A region's name (a configured one, or a continent code).
    pub fn region_name(&self, region: u16) -> &str {
        self.regions
            .get(usize::from(region))
            .map_or("?", |s| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, region: Option<&str>, blocks: &[&str]) -> Site {
        Site {
            name: name.into(),
            region: region.map(Into::into),
            netblocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_longest_site_netblock_places_an_address_and_its_region_follows() {
        let l = Locator::new(
            &[
                site("ams", Some("EU"), &["10.1.0.0/16", "2001:db8:1::/48"]),
                site("ams-campus", Some("EU"), &["10.1.7.0/24"]),
                site("nyc", Some("us-east"), &["10.2.0.0/16"]),
            ],
            None,
        )
        .unwrap();
        assert!(l.is_active());
        let at = |ip: &str| l.place(ip.parse().unwrap());
        assert_eq!(at("10.1.2.3").site, Some(0));
        assert_eq!(at("10.1.7.9").site, Some(1));
        assert_eq!(at("::ffff:10.1.7.9").site, Some(1));
        assert_eq!(at("2001:db8:1::5").site, Some(0));
        assert_eq!(at("10.1.2.3").region, at("10.1.7.9").region);
        assert_eq!(l.region_name(at("10.1.2.3").region.unwrap()), "EU");
        assert_eq!(l.region_name(at("10.2.0.1").region.unwrap()), "us-east");
        assert_eq!(l.site_name(at("10.2.0.1").site.unwrap()), "nyc");
        assert_eq!(at("192.0.2.1"), Place::default());
    }

    #[test]
    fn one_netblock_in_two_sites_is_refused_naming_both() {
        let e = Locator::new(
            &[
                site("a", None, &["10.0.0.0/8"]),
                site("b", None, &["10.0.0.0/8"]),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`10.0.0.0/8` is a netblock of both site `a` and site `b`"
        );
    }

    #[test]
    fn nothing_configured_places_nothing() {
        let l = Locator::new(&[], None).unwrap();
        assert!(!l.is_active());
        assert_eq!(l.place("10.0.0.1".parse().unwrap()), Place::default());
    }
}
