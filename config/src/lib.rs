//! Configuration for every mirrorswarm role: TOML schemas, documented defaults and validation.
//!
//! Every key is optional. A file is parsed with unknown keys refused (a typo must not silently
//! fall back to a default), then command-line flags are applied on top by the CLI, then
//! [`ServerConfig::validate`] / [`VolunteerConfig::validate`] check the result and name the key
//! that is wrong.

pub mod runlock;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manifest::select::{PatternError, Selection};
use serde::Deserialize;

/// A configuration error. Messages name the file and the key, because an admin reading them
/// at 3 a.m. should not have to guess.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Load a TOML file into a config type, refusing unknown keys.
pub fn load_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The balancing policies the redirector knows, chosen by name.
pub const POLICY_NAMES: &[&str] = &[
    "feedback",
    "feedback-connections",
    "least-connections",
    "request-counting",
];

/// An HTTPS listener beside the plain one (`[tls]`), for the server, a volunteer or the proxy.
/// Certificates come from files (certbot's `fullchain.pem` and `privkey.pem`, or any ACME
/// client's), read again on SIGHUP and when they change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address to listen on for HTTPS (`--listen-tls`), e.g. `[::]:8443`. Default: none.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain, the leaf first (`--tls-cert`).
    pub cert: Option<PathBuf>,
    /// PEM private key of the leaf, PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: Option<PathBuf>,
    /// The `https://` URL customers reach it at. Default `https://<listen>`.
    pub public_url: Option<String>,
}

impl TlsConfig {
    /// Listener, certificate and key go together; the URL must be `https://`. (Whether the
    /// files hold a usable certificate is checked when they are read, at start.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.listen, &self.cert, &self.key) {
            (None, None, None) => {}
            (Some(_), Some(_), Some(_)) => {}
            (None, _, _) => return Err(invalid(
                "tls.listen",
                "a certificate and key are given but no address to serve HTTPS on (--listen-tls)",
            )),
            (Some(_), None, _) => {
                return Err(invalid(
                    "tls.cert",
                    "HTTPS needs a certificate chain file (--tls-cert)",
                ))
            }
            (Some(_), Some(_), None) => {
                return Err(invalid(
                    "tls.key",
                    "HTTPS needs a private key file (--tls-key)",
                ))
            }
        }
        if let Some(url) = &self.public_url {
            if self.listen.is_none() {
                return Err(invalid(
                    "tls.public_url",
                    "given without an HTTPS listener (tls.listen)",
                ));
            }
            validate_http_url(url).map_err(|r| invalid("tls.public_url", r))?;
            if !url.starts_with("https://") {
                return Err(invalid(
                    "tls.public_url",
                    format!("`{url}` must start with https://"),
                ));
            }
        }
        Ok(())
    }

    /// The certificate and key files, when HTTPS is on.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        match (&self.listen, &self.cert, &self.key) {
            (Some(_), Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        }
    }

    /// The names its certificate must cover: the host of the `public_url` given (none
    /// where it is derived from the listening address).
    pub fn names(&self) -> Vec<String> {
        let Some(url) = &self.public_url else {
            return Vec::new();
        };
        let rest = url.strip_prefix("https://").unwrap_or(url);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        if host.is_empty() {
            Vec::new()
        } else {
            vec![host.to_string()]
        }
    }

    /// The `https://` URL it is reached at, when HTTPS is on.
    pub fn public_url(&self) -> Option<String> {
        let listen = self.listen?;
        Some(match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("https://{listen}"),
        })
    }
}

/// Central server configuration (`mirrorswarm server`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Where the server keeps its database, signing key and manifests. Default `./mirrorswarm-data`.
    pub data_dir: PathBuf,
    /// Where the durable state lives (volunteers, credentials, tokens, generation history):
    /// `sqlite://PATH` or `postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE`. Servers that
    /// share one PostgreSQL database are replicas of one mirror. Default: SQLite in the data
    /// directory (`<data_dir>/db`).
    pub database: Option<String>,
    /// The URL customers and volunteers use to reach this server. Default `http://<listen>`.
    pub public_url: Option<String>,
    /// HTTPS beside plain HTTP (`[tls]`): customers that come over it are sent only to
    /// `https://` URLs, the origin's among them.
    pub tls: TlsConfig,
    /// Repositories to publish: name → directory.
    pub repos: BTreeMap<String, PathBuf>,
    pub tracker: TrackerConfig,
    pub redirect: RedirectConfig,
    pub prsync: PrsyncServerConfig,
    pub trust: TrustConfig,
    pub limits: LimitsConfig,
    pub staging: StagingConfig,
    pub location: LocationConfig,
}

/// Where customers are (`[location]`): the operator's sites, and the proxies whose word on a
/// customer's address is taken.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocationConfig {
    /// Netblocks of the proxies in front of this server (HAProxy before replicas): from them,
    /// the customer's address is read from `Forwarded` or `X-Forwarded-For`. Default none: the
    /// connection's peer is the customer.
    pub trusted_proxies: Vec<String>,
    /// Named sites, each its netblocks and the region it is in (`[[location.sites]]`).
    pub sites: Vec<SiteConfig>,
    /// MaxMind-format databases (`.mmdb`: GeoLite2-ASN, GeoLite2-Country or -City, DB-IP's)
    /// giving an address's AS, country and continent; the first that says wins. Read at
    /// start (an unreadable one is refused) and again when a file changes. Default none.
    pub mmdb: Vec<PathBuf>,
    /// A typical round trip to a volunteer in each tier, ms (`netblock`, `site`, `as`,
    /// `country`, `region`, `world`; defaults 1, 5, 15, 30, 80, 200): a customer goes to a
    /// farther tier only when the nearer one's modelled wait exceeds the farther one's by
    /// more than the extra round trips.
    pub round_trip_ms: BTreeMap<String, f64>,
    /// The extra round-trip time of one tier over another, ms, where the difference of their
    /// `round_trip_ms` is wrong for this mirror (`site-world = 75`).
    pub extra_round_trip_ms: BTreeMap<String, f64>,
    /// When a customer goes past the nearest tier with room: `by-wait` (default: when that
    /// is faster, round trips counted) or `never` (only when every nearer volunteer is full).
    pub spill: Spill,
}

/// See [`LocationConfig::spill`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spill {
    #[default]
    ByWait,
    Never,
}

/// The proximity tiers' names, nearest first, as `round_trip_ms` keys them.
pub const TIER_NAMES: [&str; 6] = ["netblock", "site", "as", "country", "region", "world"];

/// Longest round trip a tier may be given, ms.
const MAX_ROUND_TRIP_MS: f64 = 10_000.0;

fn tier_index(name: &str) -> Option<usize> {
    TIER_NAMES.iter().position(|t| *t == name)
}

fn round_trip(key: &str, ms: f64) -> Result<f64, ConfigError> {
    if !(0.0..=MAX_ROUND_TRIP_MS).contains(&ms) {
        return Err(invalid(
            key,
            format!("{ms} ms: a round trip is 0 to {MAX_ROUND_TRIP_MS} ms"),
        ));
    }
    Ok(ms)
}

/// One site (`[[location.sites]]`): customers and volunteers whose addresses fall in its
/// netblocks (the longest matching netblock decides) are at it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    /// A larger area the site is in (a country, a continent, a provider's region): sites of
    /// one region are nearer each other than the rest. Default: the site alone.
    #[serde(default)]
    pub region: Option<String>,
    pub netblocks: Vec<String>,
}

impl LocationConfig {
    /// The trusted proxies as a table; the error names the key.
    pub fn trusted_table(&self) -> Result<locate::PrefixTable<()>, ConfigError> {
        let mut t = locate::PrefixTable::default();
        for (i, text) in self.trusted_proxies.iter().enumerate() {
            let key = format!("location.trusted_proxies[{i}]");
            let block: locate::Netblock = text
                .parse()
                .map_err(|e: locate::NetblockError| invalid(&key, e.to_string()))?;
            if t.insert(block, ()).is_err() {
                return Err(invalid(&key, format!("`{text}` is listed twice")));
            }
        }
        Ok(t)
    }

    /// Every site's netblocks in one table, each naming its site's index; the error names the
    /// key. Nested netblocks are how sites within sites are written (the longest wins); the
    /// same netblock in two places is refused.
    pub fn site_table(&self) -> Result<locate::PrefixTable<usize>, ConfigError> {
        let mut t = locate::PrefixTable::default();
        let mut names = std::collections::HashSet::new();
        for (s, site) in self.sites.iter().enumerate() {
            let key = format!("location.sites[{s}]");
            validate_site_name(&site.name).map_err(|r| invalid(format!("{key}.name"), r))?;
            if !names.insert(site.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("a site named `{}` is defined twice", site.name),
                ));
            }
            if let Some(r) = &site.region {
                validate_site_name(r).map_err(|why| invalid(format!("{key}.region"), why))?;
            }
            if site.netblocks.is_empty() {
                return Err(invalid(
                    format!("{key}.netblocks"),
                    "a site needs at least one netblock",
                ));
            }
            for (i, text) in site.netblocks.iter().enumerate() {
                let key = format!("{key}.netblocks[{i}]");
                let block: locate::Netblock = text
                    .parse()
                    .map_err(|e: locate::NetblockError| invalid(&key, e.to_string()))?;
                if let Err(&other) = t.insert(block, s) {
                    return Err(invalid(
                        &key,
                        format!(
                            "`{text}` is already a netblock of site `{}`",
                            self.sites[other].name
                        ),
                    ));
                }
            }
        }
        Ok(t)
    }

    /// Round trips by tier, ms, nearest first (defaults where not given); the error names
    /// the key.
    pub fn round_trips(&self) -> Result<[f64; 6], ConfigError> {
        let mut out = [1.0, 5.0, 15.0, 30.0, 80.0, 200.0];
        for (name, &ms) in &self.round_trip_ms {
            let key = format!("location.round_trip_ms.{name}");
            let at = tier_index(name).ok_or_else(|| {
                invalid(
                    &key,
                    format!("no tier `{name}`: one of {}", TIER_NAMES.join(", ")),
                )
            })?;
            out[at] = round_trip(&key, ms)?;
        }
        Ok(out)
    }

    /// The extra round-trip times given per tier pair, as (near, far, ms) by tier index; the
    /// error names the key.
    pub fn extra_round_trips(&self) -> Result<Vec<(usize, usize, f64)>, ConfigError> {
        let mut out = Vec::new();
        for (pair, &ms) in &self.extra_round_trip_ms {
            let key = format!("location.extra_round_trip_ms.{pair}");
            let tiers = pair
                .split_once('-')
                .and_then(|(a, b)| Some((tier_index(a)?, tier_index(b)?)));
            let Some((near, far)) = tiers.filter(|(n, f)| n < f) else {
                return Err(invalid(
                    &key,
                    format!(
                        "not NEAR-FAR with two tiers, the nearer first (tiers: {})",
                        TIER_NAMES.join(", ")
                    ),
                ));
            };
            out.push((near, far, round_trip(&key, ms)?));
        }
        Ok(out)
    }

    /// The databases, opened (each read whole once here, to refuse a bad one at start); the
    /// error names the key.
    pub fn geo(&self) -> Result<Option<locate::GeoWatch>, ConfigError> {
        if self.mmdb.is_empty() {
            return Ok(None);
        }
        for (i, path) in self.mmdb.iter().enumerate() {
            locate::GeoDb::open(std::slice::from_ref(path))
                .map_err(|e| invalid(format!("location.mmdb[{i}]"), e.to_string()))?;
        }
        locate::GeoWatch::open(&self.mmdb)
            .map(Some)
            .map_err(|e| invalid("location.mmdb", e.to_string()))
    }

    /// The sites as the locator takes them (the table checked by [`Self::site_table`]).
    pub fn sites(&self) -> Result<Vec<locate::place::Site>, ConfigError> {
        self.site_table()?;
        Ok(self
            .sites
            .iter()
            .map(|s| locate::place::Site {
                name: s.name.clone(),
                region: s.region.clone(),
                // Read by `site_table` above.
                netblocks: s.netblocks.iter().filter_map(|t| t.parse().ok()).collect(),
            })
            .collect())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.trusted_table()?;
        self.site_table()?;
        self.round_trips()?;
        self.extra_round_trips()?;
        self.geo()?;
        Ok(())
    }
}

/// Site and region names: as repository names are, for logs and URLs.
fn validate_site_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}`: 1-64 characters from A-Z a-z 0-9 - _ ."))
    }
}

/// Staged publish (`[staging]`): a new generation is offered to volunteers first and becomes
/// the one customers see once volunteers holding its changed files can carry a share of their
/// expected demand, or at a deadline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagingConfig {
    /// Stage each new generation (`mirrorswarm publish --now` skips it). Default false: a
    /// generation goes live when it is published.
    pub enabled: bool,
    /// The share (0 < spread ≤ 1) of the changed files' expected demand that volunteers
    /// already holding them must be able to carry before customers are sent the generation.
    /// Default 0.5.
    pub spread: f64,
    /// A staged generation goes live this many seconds after it was published, however far
    /// it spread. Default 3600.
    pub deadline_secs: u64,
}

impl Default for StagingConfig {
    fn default() -> Self {
        StagingConfig {
            enabled: false,
            spread: 0.5,
            deadline_secs: 3600,
        }
    }
}

impl StagingConfig {
    pub fn validate(&self, shared_database: bool) -> Result<(), ConfigError> {
        if !(self.spread > 0.0 && self.spread <= 1.0) {
            return Err(invalid("staging.spread", "must be above 0 and at most 1"));
        }
        if !(1..=7 * 86400).contains(&self.deadline_secs) {
            return Err(invalid(
                "staging.deadline_secs",
                "must be 1..=604800 (a week)",
            ));
        }
        if self.enabled && shared_database {
            return Err(invalid(
                "staging.enabled",
                "staging is not available for servers sharing a PostgreSQL database yet: a staged generation would go live on the other servers at once",
            ));
        }
        Ok(())
    }
}

/// What a client may cost a server before it is cut off (`[limits]`), in the server and in
/// volunteers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A client must send a request's headers within this many seconds. Default 10.
    pub header_timeout_secs: u64,
    /// A client that takes nothing of a response for this many seconds is disconnected and
    /// its download slot freed. Default 60.
    pub client_stall_secs: u64,
    /// Open connections at once (customers beyond a volunteer's `max_connections` slots get
    /// a quick 503). Default 10000.
    pub max_connections: usize,
    /// Open connections at once from one IP address. Default 256.
    pub max_connections_per_ip: usize,
}

impl LimitsConfig {
    /// The accept loop's settings.
    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.header_timeout_secs)
    }
    pub fn client_stall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.client_stall_secs)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=3600).contains(&self.header_timeout_secs) {
            return Err(invalid("limits.header_timeout_secs", "must be 1..=3600"));
        }
        if !(1..=86400).contains(&self.client_stall_secs) {
            return Err(invalid("limits.client_stall_secs", "must be 1..=86400"));
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err(invalid(
                "limits.max_connections",
                "max_connections and max_connections_per_ip must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_timeout_secs: 10,
            client_stall_secs: 60,
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// How the server checks volunteers' bytes (`[trust]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Seconds between spot checks of each volunteer: the server fetches a random file (or
    /// one piece of a large one) and compares it with the published hashes. 0 turns spot
    /// checks off. Default 60.
    pub spot_check_secs: u64,
    /// A volunteer reported by a customer's proxy, or in quarantine, is checked this many
    /// times as often. Default 4.
    pub suspect_speedup: u32,
    /// Files up to this size are checked whole (SHA-256); larger ones by one random
    /// BitTorrent piece (SHA-1 from the published torrent). Default 4 MiB.
    pub whole_file_max_bytes: u64,
    /// A quarantined volunteer is let back after this many passed checks in a row, the first
    /// of them on the file it failed. Default 3.
    pub release_after_passes: u32,
    /// Give up on a check after this many seconds (counted as inconclusive, not as a
    /// failure). Default 30.
    pub check_timeout_secs: u64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            spot_check_secs: 60,
            suspect_speedup: 4,
            whole_file_max_bytes: 4 << 20,
            release_after_passes: 3,
            check_timeout_secs: 30,
        }
    }
}

/// Sync support on the server (`[prsync]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrsyncServerConfig {
    /// Files of at least this many bytes get torrent metadata and block signatures, and are
    /// seeded by the origin over BitTorrent; smaller ones are fetched over HTTP. Default 1 MiB.
    pub torrent_min_bytes: u64,
    /// Where the origin's BitTorrent seed listens (port 0: any). Default: the server's
    /// listen address with port 0.
    pub seed_listen: Option<SocketAddr>,
    /// Cap on the origin seed's upload in bytes/s (at least 16384), so that volunteers fetch
    /// from each other first. Default: none.
    pub seed_upload_bps: Option<u32>,
    /// Seed over BitTorrent at all. Default true.
    pub seed: bool,
}

impl Default for PrsyncServerConfig {
    fn default() -> Self {
        PrsyncServerConfig {
            torrent_min_bytes: 1 << 20,
            seed_listen: None,
            seed_upload_bps: None,
            seed: true,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("mirrorswarm-data"),
            database: None,
            public_url: None,
            tls: TlsConfig::default(),
            repos: BTreeMap::new(),
            tracker: TrackerConfig::default(),
            redirect: RedirectConfig::default(),
            prsync: PrsyncServerConfig::default(),
            trust: TrustConfig::default(),
            limits: LimitsConfig::default(),
            staging: StagingConfig::default(),
            location: LocationConfig::default(),
        }
    }
}

/// Tracker settings (`[tracker]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Seconds between announces that the tracker asks for. Short, because the load a volunteer
    /// reports is only as fresh as its last announce. Default 5.
    pub interval_secs: u64,
    /// A volunteer whose last announce is older than this many intervals stops being eligible
    /// for redirects. Default 1.5: a dead volunteer is out within two intervals.
    pub timeout_intervals: f64,
    /// How long a plain BitTorrent peer stays listed without announcing. Default 3 × interval.
    pub peer_ttl_secs: Option<u64>,
    /// Which torrents the tracker keeps swarms for: `published` (default), the torrents of
    /// every repository's current generation and the one before it, and the repositories'
    /// volunteer swarms, anything else refused (so unknown info-hashes cost nothing); or
    /// `open`, any torrent, unknown ones bounded by `max_swarms` and per creating address.
    pub torrents: TrackerTorrents,
    /// Peers one swarm holds at most. A full swarm refuses anonymous newcomers; an enrolled
    /// volunteer's peer or the origin's seed takes an anonymous peer's place. Default 2000.
    pub max_peers_per_swarm: usize,
    /// With `torrents = "open"`: swarms of unpublished torrents at most (published ones are
    /// not counted, so they are never crowded out). Default 100000.
    pub max_swarms: usize,
    /// Anonymous peers one address (an IPv4 address, an IPv6 /64) may have in one swarm.
    /// Enrolled volunteers' addresses and the origin are not bound. Default 16.
    pub max_peers_per_address: u32,
    /// Anonymous peers one prefix (IPv4 /24, IPv6 /48) may have in one swarm. Default 64.
    pub max_peers_per_prefix: u32,
    /// With `torrents = "open"`: live swarms of unpublished torrents one address may have
    /// created. Default 256.
    pub max_swarms_per_address: u32,
    /// With `torrents = "open"`: the same per prefix. Default 1024.
    pub max_swarms_per_prefix: u32,
    /// Announces and scrapes per second one address may send once its burst is spent; over
    /// it, a `failure reason`. Enrolled volunteers' addresses and the origin are not bound.
    /// Default 100.
    pub announce_rate: u32,
    /// Announces and scrapes one address may send at once (a pull starting hundreds of
    /// torrents announces each). Default 1000.
    pub announce_burst: u32,
}

/// Which torrents the tracker keeps swarms for ([`TrackerConfig::torrents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackerTorrents {
    /// The published torrents and the repositories' swarms only.
    Published,
    /// Any torrent, unpublished ones bounded.
    Open,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            interval_secs: 5,
            timeout_intervals: 1.5,
            peer_ttl_secs: None,
            torrents: TrackerTorrents::Published,
            max_peers_per_swarm: 2000,
            max_swarms: 100_000,
            max_peers_per_address: 16,
            max_peers_per_prefix: 64,
            max_swarms_per_address: 256,
            max_swarms_per_prefix: 1024,
            announce_rate: 100,
            announce_burst: 1000,
        }
    }
}

impl TrackerConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }
    /// After this long without an announce a volunteer is no longer eligible.
    pub fn volunteer_timeout(&self) -> Duration {
        self.interval().mul_f64(self.timeout_intervals)
    }
    pub fn peer_ttl(&self) -> Duration {
        Duration::from_secs(self.peer_ttl_secs.unwrap_or(self.interval_secs * 3).max(1))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_secs == 0 || self.interval_secs > 3600 {
            return Err(invalid("tracker.interval_secs", "must be 1..=3600"));
        }
        if !(1.0..=100.0).contains(&self.timeout_intervals) {
            return Err(invalid("tracker.timeout_intervals", "must be 1.0..=100.0"));
        }
        // Memory is what these bound: a peer costs about 150 bytes, a swarm a few hundred.
        if !(1..=1_000_000).contains(&self.max_peers_per_swarm) {
            return Err(invalid(
                "tracker.max_peers_per_swarm",
                "must be 1..=1000000",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_swarms) {
            return Err(invalid("tracker.max_swarms", "must be 1..=10000000"));
        }
        let at_least_one = [
            ("tracker.max_peers_per_address", self.max_peers_per_address),
            ("tracker.max_peers_per_prefix", self.max_peers_per_prefix),
            (
                "tracker.max_swarms_per_address",
                self.max_swarms_per_address,
            ),
            ("tracker.max_swarms_per_prefix", self.max_swarms_per_prefix),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_peers_per_address > self.max_peers_per_prefix {
            return Err(invalid(
                "tracker.max_peers_per_address",
                "must not exceed tracker.max_peers_per_prefix (an address is in its prefix)",
            ));
        }
        if self.max_swarms_per_address > self.max_swarms_per_prefix {
            return Err(invalid(
                "tracker.max_swarms_per_address",
                "must not exceed tracker.max_swarms_per_prefix (an address is in its prefix)",
            ));
        }
        if !(1..=1_000_000).contains(&self.announce_rate) {
            return Err(invalid(
                "tracker.announce_rate",
                "must be 1..=1000000 per second",
            ));
        }
        if !(1..=10_000_000).contains(&self.announce_burst) {
            return Err(invalid("tracker.announce_burst", "must be 1..=10000000"));
        }
        Ok(())
    }
}

/// Redirect settings (`[redirect]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Balancing policy: `feedback` (default), `least-connections`, `request-counting`, or
    /// `feedback-connections` (the paper's feedback, counting connections).
    pub policy: String,
    /// Files of at most this many bytes are served by the server itself: a redirect costs the
    /// customer a round trip more than such a file takes to send. Default 32768.
    pub direct_max_bytes: u64,
    /// How many alternatives (`Link: rel=duplicate`) a redirect lists, origin included. Default 4.
    pub alternatives: usize,
    /// When a redirect carries the Metalink/HTTP headers (the alternatives as `Link`, the
    /// file's `Digest`, `Repr-Digest` and `X-Mirrorswarm-Size`): `when-asked` (default) to
    /// clients that ask for a digest (`Want-Digest`, RFC 3230, as aria2 sends it;
    /// `Want-Repr-Digest`, RFC 9530, as `mirrorswarm proxy` does), `always` to every client.
    pub metalink_headers: MetalinkHeaders,
    /// Window in seconds over which `least-connections` counts the server's own redirects as
    /// connections still open. Default 10.
    pub connection_window_secs: u64,
    /// A volunteer that joins or rejoins gets a share growing from a tenth to all of its
    /// capacity over this many seconds, so it is not flooded. Default 10.
    pub slow_start_secs: u64,
}

/// Which redirects carry the Metalink/HTTP headers ([`RedirectConfig::metalink_headers`]).
///
/// apt, dnf, curl and wget read none of them, and on the hottest answer they were
/// three quarters of its bytes (the alternatives' URLs each repeat the path), which every
/// customer received and parsed for nothing; the clients that use them say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetalinkHeaders {
    WhenAsked,
    Always,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            policy: "feedback".into(),
            direct_max_bytes: 32 * 1024,
            alternatives: 4,
            metalink_headers: MetalinkHeaders::WhenAsked,
            connection_window_secs: 10,
            slow_start_secs: 10,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, dir) in &self.repos {
            validate_repo_name(name).map_err(|r| invalid(format!("repos.{name}"), r))?;
            if !dir.is_dir() {
                return Err(invalid(
                    format!("repos.{name}"),
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        if let Some(url) = &self.public_url {
            validate_http_url(url).map_err(|r| invalid("public_url", r))?;
        }
        self.tls.validate()?;
        if let Some(url) = &self.database {
            let known = ["sqlite://", "postgres://", "postgresql://"];
            if !known.iter().any(|k| url.starts_with(k)) {
                return Err(invalid(
                    "database",
                    "expected sqlite://PATH or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE",
                ));
            }
        }
        self.tracker.validate()?;
        if !POLICY_NAMES.contains(&self.redirect.policy.as_str()) {
            return Err(invalid(
                "redirect.policy",
                format!(
                    "unknown policy `{}`; choose one of {}",
                    self.redirect.policy,
                    POLICY_NAMES.join(", ")
                ),
            ));
        }
        self.limits.validate()?;
        let shared = self
            .database
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres"));
        self.staging.validate(shared)?;
        self.location.validate()?;
        if !(1..=64).contains(&self.trust.suspect_speedup) {
            return Err(invalid("trust.suspect_speedup", "must be 1..=64"));
        }
        if self.trust.release_after_passes == 0 {
            return Err(invalid("trust.release_after_passes", "must be at least 1"));
        }
        if self.trust.check_timeout_secs == 0 {
            return Err(invalid("trust.check_timeout_secs", "must be at least 1"));
        }
        if self.redirect.alternatives > 16 {
            return Err(invalid("redirect.alternatives", "must be 0..=16"));
        }
        if self.prsync.seed_upload_bps.is_some_and(|b| b < 16 * 1024) {
            return Err(invalid(
                "prsync.seed_upload_bps",
                "must be at least 16384 (BitTorrent's limiter refuses less)",
            ));
        }
        if self.redirect.connection_window_secs == 0 {
            return Err(invalid(
                "redirect.connection_window_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The URL the server is reached at: `public_url`, or one derived from `listen`.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// Other limits for a time of day (`[[upload_windows]]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UploadWindow {
    /// Start, `HH:MM` UTC.
    pub from: String,
    /// End (exclusive), `HH:MM` UTC; before `from` to wrap midnight.
    pub to: String,
    /// Uplink during the window, bytes/s (0: unlimited). Default: the usual.
    pub upload_bps: Option<u64>,
    /// Customers at once during the window. Default: the usual.
    pub max_connections: Option<u32>,
}

/// Minutes since midnight of `HH:MM`.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl UploadWindow {
    /// Whether `minute` (since midnight UTC) is inside the window.
    pub fn contains(&self, minute: u32) -> bool {
        match (parse_hhmm(&self.from), parse_hhmm(&self.to)) {
            (Some(a), Some(b)) if a <= b => (a..b).contains(&minute),
            (Some(a), Some(b)) => minute >= a || minute < b,
            _ => false,
        }
    }
}

/// The part of a repository a volunteer holds (`[parts.<name>]`): include and exclude
/// patterns over its paths (`pool/main/**`, `**/*_arm64.deb`; `*` and `?` within a path
/// segment, `**` whole segments). A path is held if it matches an include (or there are
/// none) and no exclude; apt's `dists/` and dnf's `repodata/` are held whatever the patterns.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PartConfig {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Hold at most this many bytes: the files customers asked for most (of those the
    /// patterns choose), by the popularity the server publishes with each generation; the
    /// metadata always. Default: no budget.
    pub budget_bytes: Option<u64>,
}

impl PartConfig {
    /// The patterns read, and the budget.
    pub fn selection(&self) -> Result<Selection, PatternError> {
        let s = Selection::new(&self.include, &self.exclude)?;
        Ok(match self.budget_bytes {
            Some(b) => s.with_budget(b),
            None => s,
        })
    }
}

/// The verifying proxy's configuration (`mirrorswarm proxy`, `/etc/mirrorswarm/proxy.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The mirrorswarm server's URL, the only host the proxy fetches for. Required.
    pub server: Option<String>,
    /// Where customers' apt, dnf, wget or curl reach it. Default `127.0.0.1:3142`.
    pub listen: SocketAddr,
    /// HTTPS beside plain HTTP (`[tls]`; `public_url` is not used).
    pub tls: TlsConfig,
    /// Where verified files are kept. Default `$XDG_CACHE_HOME/mirrorswarm-proxy`, else
    /// `~/.cache/mirrorswarm-proxy`.
    pub cache_dir: Option<PathBuf>,
    /// Bound on the cache's size, bytes. Default 1 GiB.
    pub cache_bytes: u64,
    /// Give up on a source that sends nothing for this many seconds, and try the next.
    /// Default 30.
    pub stall_secs: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            server: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 3142)),
            tls: TlsConfig::default(),
            cache_dir: None,
            cache_bytes: 1 << 30,
            stall_secs: 30,
        }
    }
}

impl ProxyConfig {
    /// The server's URL, checked; the error names the key.
    pub fn validate(&self) -> Result<&str, ConfigError> {
        let server = self
            .server
            .as_deref()
            .ok_or_else(|| invalid("server", "the server's URL is required (or --server)"))?;
        validate_http_url(server).map_err(|e| invalid("server", e))?;
        self.tls.validate()?;
        if self.cache_bytes == 0 {
            return Err(invalid("cache_bytes", "must be at least 1"));
        }
        if self.stall_secs == 0 {
            return Err(invalid("stall_secs", "must be at least 1"));
        }
        Ok(server)
    }
}

/// Volunteer daemon configuration (`mirrorswarm volunteer`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolunteerConfig {
    /// The central server's URL, e.g. `http://mirror.example.org:8080`.
    pub server: Option<String>,
    /// The other servers of the same mirror (replicas sharing its database): this volunteer
    /// announces its load to each of them too, so that every one balances by it. Default:
    /// none.
    pub replicas: Vec<String>,
    /// One-time enrollment token from `mirrorswarm enroll`; only needed until the volunteer
    /// has exchanged it for a credential kept in `data_dir`.
    pub token: Option<String>,
    /// Address to serve customers on. Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// The URL customers are redirected to. Default `http://<listen>`.
    pub public_url: Option<String>,
    /// HTTPS beside plain HTTP (`[tls]`): its `https://` URL is announced beside
    /// `public_url`, and customers that came to the server over HTTPS are sent to it.
    pub tls: TlsConfig,
    /// Other URLs the same files are served at (`--other-url`), e.g. an IPv6 address's beside
    /// an IPv4 one: `other_urls = ["http://[2001:db8::7]:8081"]`. A customer is sent to the
    /// one of its address family and scheme. At most 3 with the `tls` one. Default: none.
    pub other_urls: Vec<String>,
    /// Where the volunteer keeps its credential and verification cache. Default `./mirrorswarm-volunteer`.
    pub data_dir: PathBuf,
    /// Mirrored repositories: name → directory holding its copy.
    pub mirrors: BTreeMap<String, PathBuf>,
    /// The part of a repository held, where not all of it (`[parts.debian] include =
    /// ["pool/main/**"], exclude = ["**/*_arm64.deb"], budget_bytes = 50000000000`): only
    /// it is synced, verified, announced and served. Default: every repository whole.
    pub parts: BTreeMap<String, PartConfig>,
    /// Disk quota per repository, bytes: a generation (of its part, if one is held) larger
    /// than this is not synced (the
    /// volunteer keeps serving what it holds, and the server sends it only customers for
    /// files it still has current). Default: none.
    pub quotas: BTreeMap<String, u64>,
    /// Times of day (UTC) with other limits, e.g. a smaller uplink during office hours:
    /// `[[upload_windows]] from = "08:00", to = "18:00", upload_bps = 1000000,
    /// max_connections = 8`. A window may wrap midnight; the first that matches applies;
    /// outside every window the usual limits do. Default: none.
    pub upload_windows: Vec<UploadWindow>,
    /// Maximum concurrent customer downloads; beyond it customers are sent to the origin.
    /// Also reported to the server as the declared capacity. Default 64.
    pub max_connections: u32,
    /// Seconds between checks of the local copy for changes (by size and mtime). Default 5.
    pub rescan_secs: u64,
    /// Sync the mirror with PRsync whenever the server publishes a new generation. Turn off
    /// when the admin fills it by other means (rsync from cron). Default true.
    pub sync: bool,
    /// Where the BitTorrent engine listens for other volunteers (port 0: any). Default: the
    /// listen address's IP with port 0.
    pub seed_listen: Option<SocketAddr>,
    /// Cap on BitTorrent uploads to other volunteers, bytes/s (at least 16384). Default: none.
    pub seed_upload_bps: Option<u32>,
    /// Cap on customer downloads from this volunteer, bytes/s: its uplink as the balancer
    /// should see it. Default: none.
    pub upload_bps: Option<u64>,
    /// The networks this volunteer is inside (`["192.0.2.0/24", "2001:db8::/32"]`):
    /// customers from them are sent here first. Each must hold the volunteer's own address
    /// (the server ignores one that does not, unless the volunteer is private). Default none.
    pub netblocks: Vec<String>,
    /// Serve only customers from `netblocks` (a campus or company mirror); customers from
    /// anywhere else are never sent here. Default false.
    pub private: bool,
    pub limits: LimitsConfig,
    /// `--adopt` (a flag, not a key: adopting is done once, then the tree is marked): sync
    /// into mirror directories that hold files the manifest does not list, leaving those
    /// files alone.
    #[serde(skip)]
    pub adopt: bool,
}

impl Default for VolunteerConfig {
    fn default() -> Self {
        VolunteerConfig {
            server: None,
            replicas: Vec::new(),
            token: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            public_url: None,
            tls: TlsConfig::default(),
            other_urls: Vec::new(),
            data_dir: PathBuf::from("mirrorswarm-volunteer"),
            mirrors: BTreeMap::new(),
            parts: BTreeMap::new(),
            quotas: BTreeMap::new(),
            upload_windows: Vec::new(),
            max_connections: 64,
            rescan_secs: 5,
            sync: true,
            seed_listen: None,
            seed_upload_bps: None,
            upload_bps: None,
            netblocks: Vec::new(),
            private: false,
            adopt: false,
            limits: LimitsConfig::default(),
        }
    }
}

/// URLs a volunteer may announce beside its `public_url` (the tracker's bound).
pub const MAX_OTHER_URLS: usize = 3;

/// Netblocks a volunteer may declare at most: a campus's or a company's networks (they go
/// with every announce).
pub const MAX_VOLUNTEER_NETBLOCKS: usize = 16;

impl VolunteerConfig {
    /// The declared netblocks, checked, as the announce carries them (canonical, joined by
    /// commas); the error names the key.
    pub fn netblocks_text(&self) -> Result<String, ConfigError> {
        if self.netblocks.len() > MAX_VOLUNTEER_NETBLOCKS {
            return Err(invalid(
                "netblocks",
                format!("at most {MAX_VOLUNTEER_NETBLOCKS} netblocks"),
            ));
        }
        let mut out = Vec::with_capacity(self.netblocks.len());
        for (i, text) in self.netblocks.iter().enumerate() {
            let block: locate::Netblock = text.parse().map_err(|e: locate::NetblockError| {
                invalid(format!("netblocks[{i}]"), e.to_string())
            })?;
            out.push(block.to_string());
        }
        if self.private && out.is_empty() {
            return Err(invalid(
                "private",
                "a private volunteer serves only customers from its netblocks: declare them (`netblocks = [...]`)",
            ));
        }
        Ok(out.join(","))
    }

    /// The URLs announced beside `public_url`: the HTTPS one, then `other_urls`.
    pub fn other_public_urls(&self) -> Vec<String> {
        let mut out: Vec<String> = self.tls.public_url().into_iter().collect();
        for u in &self.other_urls {
            let u = u.trim_end_matches('/').to_string();
            if !out.contains(&u) && u != self.public_url() {
                out.push(u);
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        self.netblocks_text()?;
        self.tls.validate()?;
        for (i, u) in self.other_urls.iter().enumerate() {
            validate_http_url(u).map_err(|r| invalid(format!("other_urls[{i}]"), r))?;
        }
        if self.other_public_urls().len() > MAX_OTHER_URLS {
            return Err(invalid(
                "other_urls",
                format!("at most {MAX_OTHER_URLS} URLs beside public_url, the HTTPS one counted"),
            ));
        }
        for (i, w) in self.upload_windows.iter().enumerate() {
            for (k, v) in [("from", &w.from), ("to", &w.to)] {
                if parse_hhmm(v).is_none() {
                    return Err(invalid(
                        format!("upload_windows[{i}].{k}"),
                        format!("`{v}` is not a time HH:MM (UTC)"),
                    ));
                }
            }
            if w.max_connections == Some(0) {
                return Err(invalid(
                    format!("upload_windows[{i}].max_connections"),
                    "must be at least 1",
                ));
            }
        }
        for name in self.quotas.keys() {
            if !self.mirrors.contains_key(name) {
                return Err(invalid(
                    format!("quotas.{name}"),
                    "names no repository under [mirrors]",
                ));
            }
        }
        for (name, part) in &self.parts {
            if !self.mirrors.contains_key(name) {
                return Err(invalid(
                    format!("parts.{name}"),
                    "names no repository under [mirrors]",
                ));
            }
            for (key, list) in [("include", &part.include), ("exclude", &part.exclude)] {
                for p in list {
                    if let Err(e) = Selection::new(std::slice::from_ref(p), &[]) {
                        return Err(invalid(format!("parts.{name}.{key}"), e.to_string()));
                    }
                }
            }
            if part.budget_bytes.is_some() && !self.sync {
                return Err(invalid(
                    format!("parts.{name}.budget_bytes"),
                    "a budget is filled by syncing: it needs sync = true (not --no-sync)",
                ));
            }
            let text = part.selection().map(|s| s.canonical()).unwrap_or_default();
            if text.len() > manifest::select::MAX_CANONICAL_LEN {
                return Err(invalid(
                    format!("parts.{name}"),
                    "more patterns than a volunteer may announce (2048 bytes of them)",
                ));
            }
        }
        match &self.server {
            None => return Err(invalid("server", "the server URL is required")),
            Some(u) => validate_http_url(u).map_err(|r| invalid("server", r))?,
        }
        for u in &self.replicas {
            validate_http_url(u).map_err(|r| invalid("replicas", r))?;
        }
        if let Some(url) = &self.public_url {
            validate_http_url(url).map_err(|r| invalid("public_url", r))?;
        }
        if self.mirrors.is_empty() {
            return Err(invalid(
                "mirrors",
                "at least one mirror NAME=DIR is required",
            ));
        }
        for (name, dir) in &self.mirrors {
            validate_repo_name(name).map_err(|r| invalid(format!("mirrors.{name}"), r))?;
            // A syncing volunteer fills a new directory itself (in an existing parent, so a
            // mistyped path is still caught); one that does not sync serves what is there.
            let can_make = self.sync
                && !dir.exists()
                && dir
                    .parent()
                    .is_some_and(|p| p.as_os_str().is_empty() || p.is_dir());
            if !dir.is_dir() && !can_make {
                return Err(invalid(
                    format!("mirrors.{name}"),
                    format!(
                        "{} is not a directory{}",
                        dir.display(),
                        if self.sync {
                            " (nor one to make: its parent must exist)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.rescan_secs == 0 {
            return Err(invalid("rescan_secs", "must be at least 1"));
        }
        if self.seed_upload_bps.is_some_and(|b| b < 16 * 1024) {
            return Err(invalid(
                "seed_upload_bps",
                "must be at least 16384 (BitTorrent's limiter refuses less)",
            ));
        }
        Ok(())
    }

    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// Parses `NAME=PATTERN` (`--include`, `--exclude`): the pattern is checked where the
/// configuration is.
pub fn parse_name_pattern(s: &str) -> Result<(String, String), String> {
    let (name, pattern) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` must be NAME=PATTERN"))?;
    validate_repo_name(name)?;
    Ok((name.to_string(), pattern.to_string()))
}

/// Parses `NAME=BYTES` (`--budget`).
pub fn parse_name_bytes(s: &str) -> Result<(String, u64), String> {
    let (name, bytes) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` must be NAME=BYTES"))?;
    validate_repo_name(name)?;
    let bytes = bytes
        .parse::<u64>()
        .map_err(|_| format!("`{bytes}` is not a number of bytes"))?;
    Ok((name.to_string(), bytes))
}

/// Repository names appear in URLs and file names: keep them plain.
pub fn validate_repo_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository name `{name}` must be 1-64 characters of A-Z a-z 0-9 . _ - and not start with `.`"
        ))
    }
}

/// Volunteer names: same rules as repository names.
pub fn validate_volunteer_name(name: &str) -> Result<(), String> {
    validate_repo_name(name).map_err(|e| e.replace("repository", "volunteer"))
}

/// An `http://` or `https://` URL with a host and no whitespace.
pub fn validate_http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{url}` has no host"));
    }
    if url.len() > 512 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{url}` is too long or contains whitespace"));
    }
    Ok(())
}

/// Parse a `NAME=DIR` command-line pair.
pub fn parse_name_dir(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` must be NAME=DIR"))?;
    validate_repo_name(name)?;
    if dir.is_empty() {
        return Err(format!("`{s}` has an empty directory"));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_must_name_a_mirror_and_hold_patterns() {
        let base = "server = \"http://s\"\n[mirrors]\nd = \"/tmp\"\n";
        let load = |more: &str| {
            toml::from_str::<VolunteerConfig>(&format!("{base}{more}"))
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
        };
        let c = load("[parts.d]\ninclude = [\"pool/main/**\"]\nexclude = [\"**/*_arm64.deb\"]\n")
            .unwrap();
        let sel = c.parts["d"].selection().unwrap();
        assert!(sel.holds("pool/main/a_amd64.deb") && !sel.holds("pool/main/a_arm64.deb"));
        let e = load("[parts.x]\ninclude = [\"a/**\"]\n").unwrap_err();
        assert!(e.contains("parts.x"), "{e}");
        let e = load("[parts.d]\nexclude = [\"/abs\"]\n").unwrap_err();
        assert!(e.contains("parts.d.exclude") && e.contains("/abs"), "{e}");
        let c = load("[parts.d]\nbudget_bytes = 1000\n").unwrap();
        assert_eq!(
            c.parts["d"].selection().unwrap().budget().map(|b| b.bytes),
            Some(1000)
        );
        let mut no_sync = load("[parts.d]\nbudget_bytes = 1000\n").unwrap();
        no_sync.sync = false;
        let e = no_sync.validate().unwrap_err().to_string();
        assert!(e.contains("parts.d.budget_bytes"), "{e}");
        let e = load("[parts.d]\ninclud = [\"a\"]\n").unwrap_err();
        assert!(e.contains("includ"), "{e}");
        let many: Vec<String> = (0..300).map(|i| format!("\"pool/{i:04}/**\"")).collect();
        let e = load(&format!("[parts.d]\ninclude = [{}]\n", many.join(","))).unwrap_err();
        assert!(e.contains("parts.d") && e.contains("2048"), "{e}");
    }

    #[test]
    fn defaults_validate_without_repos() {
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_key_is_refused_and_named() {
        let err =
            toml::from_str::<ServerConfig>("[redirect]\npolicyy = \"feedback\"\n").unwrap_err();
        assert!(err.to_string().contains("policyy"), "{err}");
    }

    #[test]
    fn bad_policy_names_the_key() {
        let cfg: ServerConfig = toml::from_str("[redirect]\npolicy = \"fastest\"\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("redirect.policy") && err.contains("fastest"),
            "{err}"
        );
    }

    #[test]
    fn sites_and_trusted_proxies_are_checked_naming_the_key() {
        let check = |t: &str| {
            toml::from_str::<ServerConfig>(t)
                .map_err(|e| e.to_string())?
                .validate()
                .map_err(|e| e.to_string())
        };
        let good = r#"
[location]
trusted_proxies = ["127.0.0.1/32", "::1/128"]
[[location.sites]]
name = "campus"
region = "eu"
netblocks = ["10.0.0.0/8", "2001:db8::/32"]
[[location.sites]]
name = "lab"
netblocks = ["10.1.0.0/16"]
"#;
        check(good).unwrap();
        let cfg: ServerConfig = toml::from_str(good).unwrap();
        assert_eq!(cfg.location.spill, Spill::ByWait);
        assert_eq!(
            cfg.location.round_trips().unwrap(),
            [1.0, 5.0, 15.0, 30.0, 80.0, 200.0]
        );
        let tuned: ServerConfig = toml::from_str(
            "[location]\nspill = \"never\"\nround_trip_ms = { world = 120 }\nextra_round_trip_ms = { site-world = 75 }\n",
        )
        .unwrap();
        assert_eq!(tuned.location.spill, Spill::Never);
        assert_eq!(tuned.location.round_trips().unwrap()[5], 120.0);
        assert_eq!(tuned.location.extra_round_trips().unwrap(), [(1, 5, 75.0)]);
        let sites = cfg.location.site_table().unwrap();
        let at = |a: &str| sites.lookup(a.parse().unwrap()).map(|(_, s)| *s);
        assert_eq!(
            (at("10.1.2.3"), at("10.2.0.1"), at("192.0.2.1")),
            (Some(1), Some(0), None)
        );
        for (t, key, why) in [
            (
                "[location]\ntrusted_proxies = [\"10.0.0.1/8\"]\n",
                "location.trusted_proxies[0]",
                "10.0.0.0/8",
            ),
            (
                "[[location.sites]]\nname = \"a\"\nnetblocks = [\"10.0.0.0/8\", \"nope\"]\n",
                "location.sites[0].netblocks[1]",
                "ADDRESS/LENGTH",
            ),
            (
                "[[location.sites]]\nname = \"a\"\nnetblocks = [\"10.0.0.0/8\"]\n[[location.sites]]\nname = \"b\"\nnetblocks = [\"10.0.0.0/8\"]\n",
                "location.sites[1].netblocks[0]",
                "site `a`",
            ),
            (
                "[[location.sites]]\nname = \"a b\"\nnetblocks = [\"10.0.0.0/8\"]\n",
                "location.sites[0].name",
                "1-64",
            ),
            (
                "[[location.sites]]\nname = \"a\"\nnetblocks = []\n",
                "location.sites[0].netblocks",
                "at least one",
            ),
            (
                "[location]\nround_trip_ms = { site = -1 }\n",
                "location.round_trip_ms.site",
                "0 to 10000 ms",
            ),
            (
                "[location]\nextra_round_trip_ms = { site-site = 5 }\n",
                "location.extra_round_trip_ms.site-site",
                "the nearer first",
            ),
            (
                "[location]\nmmdb = [\"/nonexistent.mmdb\"]\n",
                "location.mmdb[0]",
                "cannot read /nonexistent.mmdb",
            ),
        ] {
            let e = check(t).unwrap_err();
            assert!(e.contains(key) && e.contains(why), "{t}: {e}");
        }
        let e = check("[location]\ntrusted = []\n").unwrap_err();
        assert!(e.contains("trusted"), "{e}");
    }

    #[test]
    fn staging_is_checked_naming_the_key() {
        let check = |t: &str| {
            toml::from_str::<ServerConfig>(t)
                .unwrap()
                .validate()
                .map_err(|e| e.to_string())
        };
        check("[staging]\nenabled = true\nspread = 0.8\ndeadline_secs = 600\n").unwrap();
        for (t, key) in [
            ("[staging]\nspread = 0\n", "staging.spread"),
            ("[staging]\nspread = 1.5\n", "staging.spread"),
            ("[staging]\nspread = nan\n", "staging.spread"),
            ("[staging]\ndeadline_secs = 0\n", "staging.deadline_secs"),
            (
                "database = \"postgres://u@h/m\"\n[staging]\nenabled = true\n",
                "staging.enabled",
            ),
        ] {
            let e = check(t).unwrap_err();
            assert!(e.contains(key), "{t}: {e}");
        }
        let e = toml::from_str::<ServerConfig>("[staging]\nspred = 0.5\n").unwrap_err();
        assert!(e.to_string().contains("spred"), "{e}");
    }

    #[test]
    fn a_database_of_an_unknown_engine_names_the_key() {
        let cfg: ServerConfig = toml::from_str("database = \"mysql://db/m\"\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("database") && err.contains("postgres://"),
            "{err}"
        );
        let cfg: ServerConfig = toml::from_str("database = \"postgres://u@h/m\"\n").unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn a_replica_that_is_not_an_http_url_names_the_key() {
        let mut cfg: VolunteerConfig = toml::from_str(
            "server = \"http://a.test\"\nreplicas = [\"http://b.test\", \"ftp://c.test\"]\n[mirrors]\nd = \"/\"\n",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("replicas"), "{err}");
        cfg.replicas.pop();
        cfg.validate().unwrap();
    }

    #[test]
    fn zero_interval_is_refused() {
        let cfg: ServerConfig = toml::from_str("[tracker]\ninterval_secs = 0\n").unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tracker.interval_secs"));
    }

    #[test]
    fn tracker_bounds_are_checked_and_named() {
        let cfg: ServerConfig = toml::from_str("[tracker]\ntorrents = \"open\"\n").unwrap();
        assert_eq!(cfg.tracker.torrents, TrackerTorrents::Open);
        cfg.validate().unwrap();
        let err = toml::from_str::<ServerConfig>("[tracker]\ntorrents = \"all\"\n").unwrap_err();
        assert!(err.to_string().contains("torrents"), "{err}");
        for (text, key) in [
            ("max_peers_per_swarm = 0", "tracker.max_peers_per_swarm"),
            ("max_swarms = 0", "tracker.max_swarms"),
            ("max_peers_per_address = 0", "tracker.max_peers_per_address"),
            ("max_peers_per_prefix = 0", "tracker.max_peers_per_prefix"),
            (
                "max_swarms_per_address = 0",
                "tracker.max_swarms_per_address",
            ),
            ("max_swarms_per_prefix = 0", "tracker.max_swarms_per_prefix"),
            ("announce_rate = 0", "tracker.announce_rate"),
            ("announce_burst = 0", "tracker.announce_burst"),
            (
                "max_peers_per_address = 100",
                "tracker.max_peers_per_address",
            ),
            (
                "max_swarms_per_address = 2000",
                "tracker.max_swarms_per_address",
            ),
        ] {
            let cfg: ServerConfig = toml::from_str(&format!("[tracker]\n{text}\n")).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn timeout_is_interval_times_factor() {
        let t = TrackerConfig {
            interval_secs: 2,
            timeout_intervals: 1.5,
            peer_ttl_secs: None,
            ..Default::default()
        };
        assert_eq!(t.volunteer_timeout(), Duration::from_secs(3));
        assert_eq!(t.peer_ttl(), Duration::from_secs(6));
    }

    #[test]
    fn repo_names_are_plain() {
        assert!(validate_repo_name("debian").is_ok());
        assert!(validate_repo_name("fedora-39_x86.64").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_repo_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(validate_http_url("http://127.0.0.1:8080").is_ok());
        assert!(validate_http_url("ftp://x").is_err());
        assert!(validate_http_url("http://").is_err());
        assert!(validate_http_url("http://a b").is_err());
    }

    #[test]
    fn name_dir_pairs() {
        assert_eq!(parse_name_dir("deb=/srv/deb").unwrap().0, "deb");
        assert!(parse_name_dir("deb").is_err());
        assert!(parse_name_dir("../x=/y").is_err());
        assert!(parse_name_dir("deb=").is_err());
    }

    #[test]
    fn volunteer_requires_server_and_mirror() {
        let cfg = VolunteerConfig::default();
        assert!(cfg.validate().unwrap_err().to_string().contains("`server`"));
        let cfg = VolunteerConfig {
            server: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`mirrors`"));
    }

    #[test]
    fn upload_windows_parse_wrap_and_are_checked() {
        assert_eq!(parse_hhmm("08:30"), Some(510));
        for bad in ["8:30", "24:00", "12:60", "ab:cd", ""] {
            assert_eq!(parse_hhmm(bad), None, "{bad}");
        }
        let day = UploadWindow {
            from: "08:00".into(),
            to: "18:00".into(),
            upload_bps: Some(1),
            max_connections: None,
        };
        assert!(day.contains(8 * 60) && !day.contains(18 * 60) && !day.contains(7 * 60));
        let night = UploadWindow {
            from: "22:00".into(),
            to: "06:00".into(),
            ..day.clone()
        };
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        let text = "server = \"http://s\"\n[mirrors]\nd = \"/tmp\"\n[[upload_windows]]\nfrom = \"8:00\"\nto = \"18:00\"\n";
        let c: VolunteerConfig = toml::from_str(text).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("upload_windows[0].from"), "{e}");
        let text = "server = \"http://s\"\n[mirrors]\nd = \"/tmp\"\n[quotas]\nx = 5\n";
        let c: VolunteerConfig = toml::from_str(text).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("quotas.x"));
    }

    #[test]
    fn the_proxy_needs_its_server_and_names_a_bad_key() {
        let c: ProxyConfig = toml::from_str("server = \"http://m.example:8080\"\n").unwrap();
        assert_eq!(c.validate().unwrap(), "http://m.example:8080");
        assert_eq!(c.listen.to_string(), "127.0.0.1:3142");
        for (text, key) in [
            ("", "server"),
            ("server = \"ftp://x\"\n", "server"),
            ("server = \"http://x\"\nstall_secs = 0\n", "stall_secs"),
        ] {
            let c: ProxyConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(toml::from_str::<ProxyConfig>("servr = \"x\"\n").is_err());
    }

    #[test]
    fn a_volunteer_declares_netblocks_read_canonically_and_private_needs_them() {
        let base = "server = \"http://s\"\n";
        let c: VolunteerConfig = toml::from_str(&format!(
            "{base}netblocks = [\"10.1.0.0/16\", \"2001:DB8::/32\"]\nprivate = true\n"
        ))
        .unwrap();
        assert_eq!(c.netblocks_text().unwrap(), "10.1.0.0/16,2001:db8::/32");
        for (more, key) in [
            ("netblocks = [\"10.1.0.1/16\"]\n", "netblocks[0]"),
            ("private = true\n", "private"),
        ] {
            let c: VolunteerConfig = toml::from_str(&format!("{base}{more}")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
