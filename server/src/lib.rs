//! The central server: publishes repositories as signed generations, embeds the tracker,
//! enrolls volunteers, and redirects customers to the volunteer best able to serve them — or
//! serves them itself, since the origin always answers.
//!
//! Code map: [`store`] durable state (SQLite, or PostgreSQL shared by replicas); [`follow`]
//! what another server sharing the database changed; [`publish`] scanning and signing generations
//! into read-only snapshots; [`redirect`] the customer path (the balancing is the `balance`
//! crate's); [`spotcheck`] checking volunteers' bytes and quarantine; [`tracker_http`] announce/scrape; [`api`] JSON endpoints; [`metalink`] RFC 5854
//! documents; [`sample_repo`] a generated apt repository for the demo and tests.

pub mod api;
pub mod batch;
pub mod budget;
pub mod counters;
pub mod delta;
pub mod file_index;
pub mod follow;
pub mod held_share;
pub mod kept;
pub mod lease;
pub mod location;
pub mod locks;
pub mod metalink;
pub mod metrics;
pub mod mirrorlist;
pub mod origin_gate;
pub mod popularity;
pub mod publish;
pub mod redirect;
pub mod sample_repo;
pub mod seed;
pub mod snapshots;
pub mod spot_ledger;
pub mod spotcheck;
pub mod staging;
pub mod state;
pub mod stats;
pub mod store;
pub mod torrents;
pub mod tracker_http;
pub mod urls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use axum::routing::{get, post};
use axum::Router;
use balance::registry::Registry;
use balance::Balancer;
use config::ServerConfig;
use fileserve::protocol::OwnRoutes;
use manifest::ServerKey;
use rand::RngCore;
use tracker::swarm::{SwarmLimits, Swarms, Torrents};

use crate::locks::lock;
use crate::publish::{PublishReport, Publisher};
use crate::state::AppState;
use crate::store::Store;

/// Paths of the server's data directory.
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// The data directory of a server that has run, for an admin command: a mistyped
    /// `--data-dir` is named as such, not met with a database error or a new empty one.
    pub fn existing(path: &Path) -> Result<DataDir> {
        let d = DataDir(path.to_path_buf());
        if !d.key().is_file() {
            anyhow::bail!(
                "{} is not a mirrorswarm server's data directory (it has no server.key); check --data-dir",
                path.display()
            );
        }
        Ok(d)
    }

    /// The SQLite database in an existing data directory, for the admin commands that work
    /// on it with no server running; an error if this server keeps its state elsewhere.
    pub fn existing_sqlite(path: &Path) -> Result<PathBuf> {
        let db = DataDir::existing(path)?.db();
        if !db.is_file() {
            anyhow::bail!(
                "{} holds no SQLite database: this server keeps its state in the database its --database names; start it and use --server, or --data-dir while it runs",
                path.display()
            );
        }
        Ok(db)
    }

    pub fn key(&self) -> PathBuf {
        self.0.join("server.key")
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("mirrorswarm.sqlite")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.0.join("admin.token")
    }
    /// Written at start: where the running server listens, for `publish` and `volunteers`.
    pub fn server_json(&self) -> PathBuf {
        self.0.join("server.json")
    }
}

/// The name of the server's [`config::runlock`] in its data directory.
const RUN_LOCK: &str = "server";

/// The URL in `server.json`, as far as it can be read.
fn written_url(data: &DataDir) -> Option<String> {
    std::fs::read(data.server_json())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("url")?.as_str().map(str::to_string))
}

/// When a generation a publish makes goes live for customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoLive {
    /// Staged first if `staging.enabled` (see [`staging`]), else at once.
    AsConfigured,
    /// At once (`mirrorswarm publish --now`): a generation staged before goes live too.
    Now,
}

/// Publish one repository now and swap the new snapshot in, or stage it (see [`GoLive`]). On
/// a store shared with other servers, under the repository's publish lease, and on top of the
/// newest generation any of them recorded (loaded first if this server has not yet).
pub async fn publish_repo(st: &AppState, name: &str, when: GoLive) -> Result<PublishReport> {
    let dir = st
        .repo_dirs
        .get(name)
        .ok_or_else(|| anyhow!("no repository named `{name}`"))?;
    let _guard = st.publish_lock.lock().await;
    let lease = if st.store.shared() {
        Some(lease::PublishLease::take(&st.store, name, &st.public_url).await?)
    } else {
        None
    };
    let published = async {
        if lease.is_some() {
            adopt_newest(st, name, dir).await?;
        }
        let live = st.repo(name);
        // On top of the newest published, staged or not.
        let newest = live.as_ref().map(|l| l.newest());
        let (snap, mut report) = st.publisher.publish(name, dir, newest.clone()).await?;
        let unchanged = newest.as_ref().is_some_and(|n| Arc::ptr_eq(n, &snap));
        let staging = when == GoLive::AsConfigured && st.config.staging.enabled;
        match live {
            // Staged over the live generation: customers stay on it.
            Some(live) if staging && live.generation < snap.generation => {
                report.live_generation = live.generation;
                if !unchanged {
                    let deadline = st.config.staging.deadline_secs;
                    let staged = staging::staged_on(&live, snap.clone(), deadline);
                    install(st, name, &staged, Some(live), &report.replaced_torrents).await;
                }
            }
            live => make_live(st, name, snap.clone(), live, &report.replaced_torrents).await,
        }
        if !unchanged {
            kept::keep(st, &snap).await;
        }
        anyhow::Ok(report)
    }
    .await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    let report = published?;
    if report.live_generation < report.generation {
        tracing::info!(
            repo = name,
            generation = report.generation,
            live = report.live_generation,
            files = report.files,
            changed = report.changed_files,
            hashed = report.hashed_files,
            deadline_secs = st.config.staging.deadline_secs,
            "staged: volunteers sync it first; customers are sent to it once enough of them hold what changed, or at the deadline"
        );
    } else if report.new_generation {
        tracing::info!(
            repo = name,
            generation = report.generation,
            files = report.files,
            changed = report.changed_files,
            hashed = report.hashed_files,
            "published new generation"
        );
    } else {
        tracing::info!(
            repo = name,
            generation = report.generation,
            "unchanged; generation kept"
        );
    }
    Ok(report)
}

/// Make `snap` the generation customers are sent to, over `live` (nothing staged on top);
/// `replaced`: the torrents of the generation it replaces as the newest.
pub(crate) async fn make_live(
    st: &AppState,
    name: &str,
    snap: Arc<publish::RepoSnapshot>,
    live: Option<Arc<publish::RepoSnapshot>>,
    replaced: &[[u8; 20]],
) {
    let snap = if snap.staged.is_some() {
        Arc::new(snap.with_staged(None))
    } else {
        snap
    };
    install(st, name, &snap, live, replaced).await;
    kept::prune(st, name).await;
}

/// Load the newest generation of `name` another server sharing the store published, if it
/// is newer than this server's. The request path goes on with the current generation until
/// the new one is loaded whole.
pub async fn load_published(st: &AppState, name: &str) -> Result<Option<publish::AdoptReport>> {
    let dir = st
        .repo_dirs
        .get(name)
        .ok_or_else(|| anyhow!("no repository named `{name}`"))?;
    let _guard = st.publish_lock.lock().await;
    adopt_newest(st, name, dir).await
}

/// [`load_published`] with the publish lock held.
async fn adopt_newest(
    st: &AppState,
    name: &str,
    dir: &Path,
) -> Result<Option<publish::AdoptReport>> {
    let Some((generation, by)) = st.store.latest_published(name).await? else {
        return Ok(None);
    };
    let previous = st.repo(name);
    // Loaded already, unless its tree lacked files then (looked for again).
    if previous.as_ref().is_some_and(|p| {
        p.generation > generation || (p.generation == generation && p.not_held == 0)
    }) {
        return Ok(None);
    }
    // Kept here already when its tree lacked files at the last load (then verified again).
    let kept = std::fs::read(publish::manifest_path(
        &st.config.data_dir,
        name,
        generation,
    ));
    let signed = match kept {
        Ok(b) => b,
        Err(_) => st
            .store
            .signed_manifest(name, generation)
            .await?
            .ok_or_else(|| {
                anyhow!("generation {generation} of `{name}` vanished from the database")
            })?,
    };
    let (snap, report) = st
        .publisher
        .adopt(name, dir, previous.clone(), generation, signed)
        .await?;
    install(st, name, &snap, previous, &report.replaced_torrents).await;
    if report.not_held > 0 {
        tracing::warn!(repo = name, generation, published_by = %by, not_held = report.not_held, tree = %dir.display(), "loaded a generation this server's tree does not fully hold: its origin sends none of those files (customers go to volunteers or wait) until the tree holds them and the generation is loaded again; fill the tree from the publishing server (see the operator's guide, \"Running several servers\")");
    } else {
        tracing::info!(repo = name, generation, published_by = %by, files = report.files, hashed = report.hashed_files, "loaded the generation another server published");
    }
    Ok(Some(report))
}

/// Swap `snap` in as the current generation of `name` (unless it is `previous` itself), and
/// have the tracker and the origin's seed follow its newest (staged, if one is).
async fn install(
    st: &AppState,
    name: &str,
    snap: &Arc<publish::RepoSnapshot>,
    previous: Option<Arc<publish::RepoSnapshot>>,
    replaced_torrents: &[[u8; 20]],
) {
    if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, snap)) {
        let replaced = st.repos.install(name, snap.clone());
        // Requests still holding the old snapshot free it when they finish, and each serving
        // thread's copy at its next request; most memory of the publish itself is free now.
        drop((replaced, previous));
    }
    publish::release_freed_memory();
    let snap = &snap.newest();
    list_published_torrents(st, name, snap, replaced_torrents);
    if let Some(seed) = st.seed.get() {
        if let Err(e) = seed.sync(snap).await {
            tracing::warn!(repo = name, error = %format!("{e:#}"), "origin seeding incomplete");
        }
    }
}

/// After a publish of `name`: the tracker lists the torrents of its current generation and
/// of the one replaced ([`torrents`]), and every repository's own swarm. The set is built
/// before the swarms' lock is taken; a publish that changed nothing changes nothing here.
fn list_published_torrents(
    st: &AppState,
    name: &str,
    snap: &publish::RepoSnapshot,
    replaced_torrents: &[[u8; 20]],
) {
    let listed = {
        let mut published = lock(&st.published);
        let changed = published.published(
            name,
            snap.generation,
            snap.files.torrents(),
            replaced_torrents,
        );
        if !changed {
            return;
        }
        let mut all = published.all();
        all.extend(st.info_hashes.keys().copied());
        all
    };
    let n = listed.len();
    lock(&st.swarms).set_listed(listed);
    tracing::debug!(
        repo = name,
        torrents = n,
        "tracker lists the published torrents"
    );
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn load_or_create_admin_token(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => {
            let t = random_hex(24);
            crate::publish::write_atomic(path, t.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            }
            Ok(t)
        }
    }
}

/// Build the server's state: open the store, load the key, publish every repository; balance
/// with `policy` if given, else the one the config names (see [`run_with_policy`]).
pub async fn build_state(
    cfg: ServerConfig,
    policy: Option<Box<dyn balance::policy::Policy>>,
) -> Result<Arc<AppState>> {
    cfg.validate()?;
    for name in cfg.repos.keys() {
        if fileserve::protocol::reserved_repo_name(name) {
            anyhow::bail!("invalid value for `repos.{name}`: `{name}` is reserved for the server's own endpoints");
        }
    }
    let data = DataDir(cfg.data_dir.clone());
    std::fs::create_dir_all(&data.0)
        .with_context(|| format!("creating data dir {}", data.0.display()))?;
    let key = Arc::new(ServerKey::load_or_create(&data.key())?);
    let store = match &cfg.database {
        Some(url) => Store::connect(url).await?,
        None => Store::open(&data.db())
            .await
            .with_context(|| format!("opening {}", data.db().display()))?,
    };
    tracing::info!(database = %cfg.database.as_deref().map_or_else(|| data.db().display().to_string(), store::redacted), "store open");
    store.claim_mirror(&key.fingerprint().0).await?;
    let admin_token = load_or_create_admin_token(&data.admin_token())?;
    let slow_start = std::time::Duration::from_secs(cfg.redirect.slow_start_secs);
    let policy = match policy {
        Some(p) => p,
        None => balance::policy::by_name(&cfg.redirect.policy, slow_start)
            .ok_or_else(|| anyhow!("unknown policy `{}`", cfg.redirect.policy))?,
    };
    let info_hashes: HashMap<[u8; 20], String> = cfg
        .repos
        .keys()
        .map(|n| (tracker::mirror::mirror_info_hash(n), n.clone()))
        .collect();
    let mut registry = Registry::new(cfg.tracker.volunteer_timeout());
    registry.set_connection_window(std::time::Duration::from_secs(
        cfg.redirect.connection_window_secs,
    ));
    let st = Arc::new(AppState {
        background: tokio::runtime::Handle::current(),
        public_url: cfg.public_url(),
        public_tls_url: cfg.tls.public_url(),
        publisher: Publisher::new(
            cfg.data_dir.clone(),
            key.clone(),
            store.clone(),
            publish::ArtifactSettings {
                min_bytes: cfg.prsync.torrent_min_bytes,
                announce_url: urls::announce_url(&cfg.public_url()),
            },
            cfg.public_url(),
        ),
        key,
        store,
        publish_lock: tokio::sync::Mutex::new(()),
        deltas: tokio::sync::Mutex::new(()),
        repos: Default::default(),
        repo_dirs: cfg.repos.clone(),
        info_hashes,
        balancer: Balancer::new(registry, policy)
            .with_ladder(location::Location::ladder(&cfg.location)?),
        location: location::Location::from_config(&cfg.location)?,
        swarms: Mutex::new(Swarms::new(swarm_limits(&cfg.tracker))),
        published: Default::default(),
        credentials: RwLock::new(HashMap::new()),
        admin_token,
        origin_http_bytes: Default::default(),
        seed: tokio::sync::OnceCell::new(),
        origin_peers: RwLock::new(Default::default()),
        servers: RwLock::new(Arc::from([])),
        spot: Default::default(),
        popularity: popularity::Popularity::new(popularity::HALF_LIFE),
        held_totals: Default::default(),
        budgets: Default::default(),
        staging: Default::default(),
        counters: Default::default(),
        origin_gate: Mutex::new(origin_gate::OriginGate::new(
            std::time::Duration::from_secs(10),
        )),
        config: cfg,
    });
    st.reload_credentials().await?;
    {
        // Quarantines outlive restarts.
        let creds = locks::read(&st.credentials);
        let mut reg = st.balancer.registry();
        for c in creds.values().filter(|c| c.quarantine.is_some()) {
            reg.set_quarantined(&c.id, true);
        }
    }
    for name in st.repo_dirs.keys() {
        // A replica catches up with what the others published before it answers anyone, and
        // publishes its own tree only if it published the newest generation itself (a tree
        // changed while it was down, as a server alone does): never another's tree rolled
        // back to its own older copy.
        let newest = st.store.latest_published(name).await?;
        if newest.as_ref().is_some_and(|(_, by)| *by != st.public_url) {
            load_published(&st, name)
                .await
                .with_context(|| format!("loading `{name}` from the database"))?;
        } else {
            publish_repo(&st, name, GoLive::Now)
                .await
                .with_context(|| format!("publishing `{name}`"))?;
        }
    }
    Ok(st)
}

/// The tracker's bounds as configured (`[tracker]`).
fn swarm_limits(t: &config::TrackerConfig) -> SwarmLimits {
    SwarmLimits {
        torrents: match t.torrents {
            config::TrackerTorrents::Published => Torrents::Published,
            config::TrackerTorrents::Open => Torrents::Open,
        },
        max_peers_per_swarm: t.max_peers_per_swarm,
        max_swarms: t.max_swarms,
        max_peers_per_addr: t.max_peers_per_address,
        max_peers_per_prefix: t.max_peers_per_prefix,
        max_swarms_per_addr: t.max_swarms_per_address,
        max_swarms_per_prefix: t.max_swarms_per_prefix,
        announce_rate: t.announce_rate,
        announce_burst: t.announce_burst,
        peer_ttl: t.peer_ttl(),
    }
}

/// The server's own routes ([`fileserve::protocol::SERVER_ROUTES`]).
const OWN_ROUTES: OwnRoutes = fileserve::protocol::SERVER_ROUTES;

pub fn router(st: Arc<AppState>) -> Router {
    let own = |pattern| OWN_ROUTES.checked(pattern);
    Router::new()
        .route(own("/announce"), get(tracker_http::announce))
        .route(own("/scrape"), get(tracker_http::scrape))
        .route(own("/health"), get(api::health))
        .route(own("/api/info"), get(api::info))
        .route(own("/api/enroll"), post(api::enroll))
        .route(own("/api/volunteers"), get(api::volunteers))
        .route(own("/manifests/{repo}/{which}"), get(api::manifest))
        .route(
            own("/manifests/{repo}/{which}/popularity"),
            get(api::popularity_table),
        )
        .route(own("/admin/publish"), post(api::publish))
        .route(own("/admin/enroll"), post(api::admin_enroll))
        .route(
            own("/admin/volunteers/{name}/{action}"),
            post(api::admin_volunteer),
        )
        .route(own("/artifacts/{file}"), get(api::artifact))
        .route(own("/api/stats"), get(api::stats))
        .route(own("/api/report"), post(api::report))
        .route(own("/api/batch/{repo}"), post(batch::origin_batch))
        .route(own("/api/sources/{repo}"), get(batch::sources))
        .route(own("/api/popularity/{repo}"), get(api::popularity))
        .route(own("/metrics"), get(api::metrics))
        .route(own("/dashboard"), get(api::dashboard))
        .fallback(redirect::customer)
        .with_state(st)
}

/// The requests answered without the router (`fileserve::fast`): announces and customers'
/// redirects, nearly all a busy server sees. Everything else goes to [`router`].
struct FastRoutes(Arc<AppState>);

impl fileserve::fast::FastPath for FastRoutes {
    fn answer(
        &self,
        req: &fileserve::fast::Request<'_>,
        reply: &mut fileserve::fast::Reply<'_>,
    ) -> fileserve::fast::Answer {
        let path = req.path();
        if path == "/announce" {
            return tracker_http::fast_announce(&self.0, req, reply);
        }
        if OWN_ROUTES.contains(path) {
            return fileserve::fast::Answer::Pass;
        }
        redirect::fast_customer(&self.0, req, reply)
    }
}

/// Start the origin's BitTorrent seed and seed every repository's large files. A failure
/// is logged, not fatal: volunteers then fetch from each other and over HTTP.
async fn start_seed(st: &Arc<AppState>, local: SocketAddr) {
    let listen = st
        .config
        .prsync
        .seed_listen
        .unwrap_or(SocketAddr::new(local.ip(), 0));
    let tracker = urls::announce_url(&st.public_url);
    match seed::OriginSeed::start(
        &st.config.data_dir,
        listen,
        st.config.prsync.seed_upload_bps,
        tracker,
    )
    .await
    {
        Ok(s) => {
            let s = st.seed.get_or_init(|| async { Arc::new(s) }).await.clone();
            let snaps = st.repos.all();
            for snap in snaps.iter().map(|s| s.newest()) {
                if let Err(e) = s.sync(&snap).await {
                    tracing::warn!(repo = %snap.name, error = %format!("{e:#}"), "origin seeding incomplete");
                }
            }
        }
        Err(e) => tracing::error!(error = %format!("{e:#}"), "origin seed not started"),
    }
}

/// Run the server until `shutdown` completes (the CLI passes Ctrl-C / SIGTERM).
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with_policy(cfg, None, shutdown).await
}

/// [`run`], balancing with `policy` if given instead of the one the config names: how the
/// lab runs the server with its experiment policies (an oracle, least-loaded), which the
/// product does not ship.
pub async fn run_with_policy(
    cfg: ServerConfig,
    policy: Option<Box<dyn balance::policy::Policy>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listen = cfg.listen;
    let data = DataDir(cfg.data_dir.clone());
    std::fs::create_dir_all(&data.0)
        .with_context(|| format!("creating data dir {}", data.0.display()))?;
    // One server per data directory (see `config::runlock`).
    let _one_server = config::runlock::RunLock::acquire(&data.0, RUN_LOCK).map_err(|e| match e {
        config::runlock::RunLockError::Held { pid, .. } => anyhow!(
            "another mirrorswarm server (pid {}, at {}) runs on the data directory {}; stop it first, or give this one a --data-dir of its own",
            pid.map_or("unknown".into(), |p| p.to_string()),
            written_url(&data).unwrap_or_else(|| "an address not yet written".into()),
            data.0.display()
        ),
        e => anyhow!(e),
    })?;
    let listener =
        fileserve::listen::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    // HTTPS: the certificate is checked (and the port taken) before anything starts.
    let mut cfg = cfg;
    let tls = fileserve::listen::bind_tls_if(cfg.tls.listen, cfg.tls.files(), cfg.tls.names())?;
    if let Some((l, _)) = &tls {
        let at = l.local_addr()?;
        cfg.tls
            .public_url
            .get_or_insert_with(|| format!("https://{at}"));
    }
    let tls_local = tls.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let st = build_state(cfg, policy).await?;
    if st.config.prsync.seed {
        start_seed(&st, local).await;
    }
    let info = serde_json::json!({
        "listen": local.to_string(),
        "url": format!("http://{local}"),
        "tls_url": tls_local.map(|a| format!("https://{a}")),
        "public_url": st.public_url,
        "public_tls_url": st.public_tls_url,
        "pid": std::process::id(),
    });
    publish::write_atomic(&data.server_json(), info.to_string().as_bytes())?;
    tracing::info!(listen = %local, public_url = %st.public_url, repos = ?st.latest_generations(), policy = st.balancer.policy().name(), "server ready");

    tokio::spawn(spotcheck::run(st.clone()));
    popularity::run(Arc::downgrade(&st));
    tokio::spawn(budget::run(st.clone()));
    tokio::spawn(staging::run(st.clone()));
    tokio::spawn(location::watch_geo(st.clone()));
    tokio::spawn(follow::run(st.clone()));
    let sweeper = st.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweeper.config.tracker.interval());
        loop {
            tick.tick().await;
            let now = Instant::now();
            lock(&sweeper.swarms).expire(now);
            lock(&sweeper.origin_gate).expire(now);
        }
    });

    let limits = fileserve::listen::Limits {
        header_timeout: st.config.limits.header_timeout(),
        max_connections: st.config.limits.max_connections,
        max_per_ip: st.config.limits.max_connections_per_ip,
        client_stall: st.config.limits.client_stall(),
        ..Default::default()
    };
    let fast: Arc<dyn fileserve::fast::FastPath> = Arc::new(FastRoutes(st.clone()));
    fileserve::listen::serve_both(listener, tls, router(st), Some(fast), limits, shutdown)
        .await
        .context("server failed")?;
    tracing::info!("server stopped");
    Ok(())
}

/// Create a one-time token in the server's store (the server may be running; SQLite's WAL
/// lets both write). Makes the data directory and key if there are none yet (the demo
/// prepares volunteers before its server starts); `mirrorswarm enroll` checks first.
pub async fn create_enrollment_token(data_dir: &Path, name: &str, ttl_secs: u64) -> Result<String> {
    config::validate_volunteer_name(name).map_err(|e| anyhow!(e))?;
    let data = DataDir(data_dir.to_path_buf());
    std::fs::create_dir_all(&data.0).with_context(|| format!("creating {}", data.0.display()))?;
    let key = ServerKey::load_or_create(&data.key())?;
    let store = Store::open(&data.db()).await?;
    Ok(store
        .create_enrollment(name, &key.fingerprint().0, ttl_secs)
        .await?)
}

/// Where the server running on `data_dir` listens (from its `server.json`), or an error if
/// none runs there now: a `server.json` left by a stopped server must not send an admin
/// command to whatever listens on that port today.
pub fn running_server_url(data_dir: &Path) -> Result<String> {
    let data = DataDir::existing(data_dir)?;
    if config::runlock::running(&data.0, RUN_LOCK) == Some(false) {
        anyhow::bail!(
            "no mirrorswarm server is running on the data directory {} (the last one{} has stopped)",
            data_dir.display(),
            config::runlock::holder(&data.0, RUN_LOCK).map_or(String::new(), |p| format!(", pid {p},"))
        );
    }
    let p = data.server_json();
    let bytes = std::fs::read(&p)
        .with_context(|| format!("reading {} (is the server running?)", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))?;
    v.get("url")
        .and_then(|u| u.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} has no url", p.display()))
}

pub fn admin_token(data_dir: &Path) -> Result<String> {
    let p = DataDir::existing(data_dir)?.admin_token();
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// `mirrorswarm migrate-store`: copy everything durable from the SQLite database in
/// `data_dir` into the empty database `to` (PostgreSQL, to run replicas), with no server
/// running on it. The SQLite file is left as it was. Returns what moved, for the admin.
pub async fn migrate_store(data_dir: &Path, to: &str) -> Result<String> {
    let db = DataDir::existing_sqlite(data_dir)?;
    if config::runlock::running(data_dir, RUN_LOCK) == Some(true) {
        anyhow::bail!(
            "a mirrorswarm server runs on {}: stop it first, so that nothing changes while its store moves",
            data_dir.display()
        );
    }
    let from = Store::open(&db).await?;
    let dump = from.dump().await?;
    let target = Store::connect(to).await?;
    target.load(&dump).await?;
    Ok(format!(
        "moved {} volunteers, {} enrollment tokens and {} generation records from {} to {}; start the server with --database {} (the SQLite file is left as it was)",
        dump.volunteers.len(),
        dump.tokens.len(),
        dump.generations.len(),
        db.display(),
        target.name(),
        target.name()
    ))
}

/// Durable volunteer records, for `mirrorswarm volunteers --data-dir` when no server runs.
pub async fn stored_volunteers(data_dir: &Path) -> Result<Vec<store::VolunteerRecord>> {
    let store = Store::open(&DataDir::existing_sqlite(data_dir)?).await?;
    Ok(store.volunteers().await?)
}

/// `mirrorswarm volunteers <verb> NAME` with no server running: change the database.
pub async fn change_stored_volunteer(data_dir: &Path, verb: &str, name: &str) -> Result<()> {
    let store = Store::open(&DataDir::existing_sqlite(data_dir)?).await?;
    match verb {
        "revoke" => store.revoke(name).await?,
        "drain" => store.set_draining(name, true).await?,
        "resume" => store.set_draining(name, false).await?,
        "release" => store.release(name).await?,
        _ => anyhow::bail!("unknown action `{verb}`"),
    };
    Ok(())
}
