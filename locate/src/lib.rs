//! Where a customer is, as far as the server can tell without asking anyone: the address it
//! came from (behind trusted proxies, [`client`]), and the netblocks that address falls in
//! ([`netblock`]: longest-prefix match over IPv4 and IPv6 alike). Knows nothing of HTTP
//! beyond the two headers proxies write, nor of volunteers.

pub mod client;
pub mod netblock;

pub use netblock::{Netblock, NetblockError, PrefixTable};
