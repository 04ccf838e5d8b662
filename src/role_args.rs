//! The server's and the volunteer's flags, and the configuration they make with the config
//! file: shared by the product binary and the lab (which runs both roles with its experiment
//! policies and companions beside them).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use config::{ServerConfig, VolunteerConfig};

/// HTTPS beside plain HTTP: the flags of `[tls]`, shared by the server, the volunteer and
/// the proxy.
#[derive(Args)]
pub struct TlsArgs {
    /// Address to serve HTTPS on as well, e.g. [::]:8443 (needs --tls-cert and --tls-key).
    #[arg(long)]
    pub listen_tls: Option<std::net::SocketAddr>,
    /// PEM certificate chain, the leaf first (certbot's fullchain.pem); read again on SIGHUP
    /// and when the file changes.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (certbot's privkey.pem).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The https:// URL it is reached at [default: https://<listen-tls>].
    #[arg(long)]
    pub public_tls_url: Option<String>,
}

impl TlsArgs {
    /// Put the flags given over the file's `[tls]`.
    pub fn apply(self, tls: &mut config::TlsConfig) {
        if let Some(v) = self.listen_tls {
            tls.listen = Some(v);
        }
        if let Some(v) = self.tls_cert {
            tls.cert = Some(v);
        }
        if let Some(v) = self.tls_key {
            tls.key = Some(v);
        }
        if let Some(v) = self.public_tls_url {
            tls.public_url = Some(v);
        }
    }
}

#[derive(Args)]
pub struct ServerArgs {
    /// TOML config file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Data directory: database, signing key, manifests [default: ./mirrorswarm-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A repository to publish, NAME=DIR (repeatable).
    #[arg(long = "repo", value_parser = config::parse_name_dir)]
    pub repos: Vec<(String, PathBuf)>,
    /// URL customers and volunteers reach this server at [default: http://<listen>].
    #[arg(long)]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Database: sqlite://PATH or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE; servers
    /// sharing one PostgreSQL database are replicas of one mirror [default: SQLite in the data
    /// directory]. MIRRORSWARM_DATABASE also sets it (keeps a password off the command line).
    #[arg(long, env = "MIRRORSWARM_DATABASE")]
    pub database: Option<String>,
    /// Balancing policy: feedback, least-connections, request-counting or
    /// feedback-connections [default: feedback].
    #[arg(long)]
    pub policy: Option<String>,
    /// Seconds between volunteer announces [default: 5].
    #[arg(long)]
    pub announce_interval: Option<u64>,
    /// A volunteer silent for this many intervals gets no redirects [default: 1.5].
    #[arg(long)]
    pub timeout_intervals: Option<f64>,
    /// Files up to this size are served directly instead of redirected [default: 32768].
    #[arg(long)]
    pub direct_max_bytes: Option<u64>,
    /// Which redirects carry the alternatives and the file's digests (`Link`, `Digest`,
    /// `Repr-Digest`, `X-Mirrorswarm-Size`): `when-asked`, to clients that send
    /// `Want-Digest` or `Want-Repr-Digest` (aria2, `mirrorswarm proxy`), or `always`
    /// [default: when-asked].
    #[arg(long, value_parser = ["when-asked", "always"])]
    pub metalink_headers: Option<String>,
    /// Seconds over which a (re)joining volunteer's share grows to its full capacity under
    /// the feedback policy; 0 turns slow start off [default: 10].
    #[arg(long)]
    pub slow_start_secs: Option<u64>,
    /// Stage each new generation: volunteers sync it before customers are sent to it
    /// (`[staging] enabled`; `mirrorswarm publish --now` skips it) [default: off].
    #[arg(long)]
    pub staging: bool,
    /// With --staging: the share (0–1] of the changed files' expected demand that volunteers
    /// already holding them must be able to carry before the generation goes live
    /// [default: 0.5].
    #[arg(long)]
    pub staging_spread: Option<f64>,
    /// With --staging: a staged generation goes live this many seconds after it was
    /// published, however far it spread [default: 3600].
    #[arg(long)]
    pub staging_deadline_secs: Option<u64>,
    /// Files of at least this size get torrents and block signatures [default: 1048576].
    #[arg(long)]
    pub torrent_min_bytes: Option<u64>,
    /// Cap on the origin seed's BitTorrent upload, bytes/s [default: none].
    #[arg(long)]
    pub seed_upload_bps: Option<u32>,
    /// Seconds between spot checks of each volunteer's bytes; 0 turns them off [default: 60].
    #[arg(long)]
    pub spot_check_secs: Option<u64>,
    /// Which torrents the tracker keeps swarms for: `published` (the published generations'
    /// torrents and the repositories' swarms; anything else is refused) or `open` (any
    /// torrent, unpublished ones bounded) [default: published].
    #[arg(long, value_parser = ["published", "open"])]
    pub tracker_torrents: Option<String>,
}

#[derive(Args)]
pub struct VolunteerArgs {
    /// TOML config file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The central server's URL; repeated, the first is where it enrolls and syncs from and
    /// every one (replicas of one mirror) gets its announces.
    #[arg(long)]
    pub server: Vec<String>,
    /// Enrollment token (needed only for the first start).
    #[arg(long)]
    pub token: Option<String>,
    /// Address to serve customers on [default: 127.0.0.1:8081].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// URL customers are redirected to [default: http://<listen>].
    #[arg(long)]
    pub public_url: Option<String>,
    /// Another URL serving the same files, e.g. http://[2001:db8::7]:8081 beside an IPv4
    /// one (repeatable; at most 3 with the HTTPS one): customers go to the one of their
    /// address family and scheme.
    #[arg(long = "other-url")]
    pub other_urls: Vec<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Data directory: credential and verification cache [default: ./mirrorswarm-volunteer].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A mirrored repository, NAME=DIR (repeatable).
    #[arg(long = "mirror", value_parser = config::parse_name_dir)]
    pub mirrors: Vec<(String, PathBuf)>,
    /// Hold only part of a repository: NAME=PATTERN (repeatable), e.g.
    /// `debian=pool/main/**`. `*` and `?` match within a path segment, `**` whole segments;
    /// `dists/` and `repodata/` are held anyway. Adds to `[parts.NAME] include`.
    #[arg(long = "include", value_parser = config::parse_name_pattern)]
    pub include: Vec<(String, String)>,
    /// Leave files out of a repository's part: NAME=PATTERN (repeatable), e.g.
    /// `debian=**/*_arm64.deb`. Adds to `[parts.NAME] exclude`.
    #[arg(long = "exclude", value_parser = config::parse_name_pattern)]
    pub exclude: Vec<(String, String)>,
    /// Hold at most this many bytes of a repository, the files customers ask for most:
    /// NAME=BYTES, e.g. `debian=50000000000` (the metadata always). Sets `[parts.NAME]
    /// budget_bytes`.
    #[arg(long = "budget", value_parser = config::parse_name_bytes)]
    pub budget: Vec<(String, u64)>,
    /// Maximum concurrent customers; more are sent to the origin [default: 64].
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Seconds between checks of the local copy [default: 5].
    #[arg(long)]
    pub rescan_secs: Option<u64>,
    /// Do not sync with PRsync: the admin fills the mirror by other means.
    #[arg(long)]
    pub no_sync: bool,
    /// Sync into mirror directories that hold files the newest manifest does not list
    /// (refused otherwise): listed files are verified and kept or replaced, the others are
    /// left alone. Needed once; the directory is then marked as mirrorswarm's.
    #[arg(long)]
    pub adopt: bool,
    /// Cap on BitTorrent uploads to other volunteers, bytes/s [default: none].
    #[arg(long)]
    pub seed_upload_bps: Option<u32>,
    /// Cap on customer downloads, bytes/s: the uplink the balancer should see [default: none].
    #[arg(long)]
    pub upload_bps: Option<u64>,
    /// A network this volunteer is inside, e.g. 192.0.2.0/24 (repeatable): its customers are
    /// sent here first. It must hold this volunteer's own address.
    #[arg(long = "netblock", value_name = "NETBLOCK")]
    pub netblocks: Vec<String>,
    /// Serve only customers from the declared netblocks (a campus or company mirror).
    #[arg(long)]
    pub private: bool,
}

pub fn server_config(a: ServerArgs) -> Result<ServerConfig> {
    let mut cfg: ServerConfig = match &a.config {
        Some(p) => config::load_file(p)?,
        None => ServerConfig::default(),
    };
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    for (name, dir) in a.repos {
        cfg.repos.insert(name, dir);
    }
    if let Some(v) = a.public_url {
        cfg.public_url = Some(v);
    }
    a.tls.apply(&mut cfg.tls);
    if let Some(v) = a.database {
        cfg.database = Some(v);
    }
    if let Some(v) = a.policy {
        cfg.redirect.policy = v;
    }
    if let Some(v) = a.announce_interval {
        cfg.tracker.interval_secs = v;
    }
    if let Some(v) = a.timeout_intervals {
        cfg.tracker.timeout_intervals = v;
    }
    if let Some(v) = a.direct_max_bytes {
        cfg.redirect.direct_max_bytes = v;
    }
    if let Some(v) = a.metalink_headers {
        cfg.redirect.metalink_headers = if v == "always" {
            config::MetalinkHeaders::Always
        } else {
            config::MetalinkHeaders::WhenAsked
        };
    }
    if let Some(v) = a.slow_start_secs {
        cfg.redirect.slow_start_secs = v;
    }
    if a.staging {
        cfg.staging.enabled = true;
    }
    if let Some(v) = a.staging_spread {
        cfg.staging.spread = v;
    }
    if let Some(v) = a.staging_deadline_secs {
        cfg.staging.deadline_secs = v;
    }
    if let Some(v) = a.torrent_min_bytes {
        cfg.prsync.torrent_min_bytes = v;
    }
    if let Some(v) = a.seed_upload_bps {
        cfg.prsync.seed_upload_bps = Some(v);
    }
    if let Some(v) = a.spot_check_secs {
        cfg.trust.spot_check_secs = v;
    }
    if let Some(v) = a.tracker_torrents {
        cfg.tracker.torrents = if v == "open" {
            config::TrackerTorrents::Open
        } else {
            config::TrackerTorrents::Published
        };
    }
    if cfg.repos.is_empty() {
        bail!("no repository to publish: pass --repo NAME=DIR or set [repos] in the config file");
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn volunteer_config(a: VolunteerArgs) -> Result<VolunteerConfig> {
    let mut cfg: VolunteerConfig = match &a.config {
        Some(p) => config::load_file(p)?,
        None => VolunteerConfig::default(),
    };
    let mut servers = a.server.into_iter();
    if let Some(v) = servers.next() {
        cfg.server = Some(v);
    }
    cfg.replicas.extend(servers);
    if let Some(v) = a.token {
        cfg.token = Some(v);
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.public_url {
        cfg.public_url = Some(v);
    }
    cfg.other_urls.extend(a.other_urls);
    a.tls.apply(&mut cfg.tls);
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    for (name, dir) in a.mirrors {
        cfg.mirrors.insert(name, dir);
    }
    for (name, pattern) in a.include {
        cfg.parts.entry(name).or_default().include.push(pattern);
    }
    for (name, pattern) in a.exclude {
        cfg.parts.entry(name).or_default().exclude.push(pattern);
    }
    for (name, bytes) in a.budget {
        cfg.parts.entry(name).or_default().budget_bytes = Some(bytes);
    }
    if let Some(v) = a.max_connections {
        cfg.max_connections = v;
    }
    if let Some(v) = a.rescan_secs {
        cfg.rescan_secs = v;
    }
    if a.no_sync {
        cfg.sync = false;
    }
    cfg.adopt = a.adopt;
    if let Some(v) = a.seed_upload_bps {
        cfg.seed_upload_bps = Some(v);
    }
    if let Some(v) = a.upload_bps {
        cfg.upload_bps = Some(v);
    }
    cfg.netblocks.extend(a.netblocks);
    cfg.private |= a.private;
    cfg.validate()?;
    Ok(cfg)
}
