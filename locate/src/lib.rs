//! Where a customer is, as far as the server can tell without asking anyone: the address it
//! came from (behind trusted proxies, [`client`]), the netblocks that address falls in
//! ([`netblock`]: longest-prefix match over IPv4 and IPv6 alike), and the AS number, country
//! and continent the operator's MaxMind-format databases give it ([`geo`]). Knows nothing of
//! HTTP beyond the two headers proxies write, nor of volunteers.

pub mod client;
pub mod geo;
// Writes small .mmdb files so that tests (this crate's, the server's end-to-end tests) and
// the lab can make databases; the `maxminddb` crate only reads. Not for production data.
#[doc(hidden)]
pub mod mmdb_writer;
pub mod netblock;
pub mod place;

pub use geo::{Geo, GeoDb, GeoError, GeoWatch};
pub use netblock::{Netblock, NetblockError, PrefixTable};
