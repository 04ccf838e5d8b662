//! The volunteer daemon: serves a mirror that its admin fills, proves each file against the
//! server's signed manifests, and announces the newest generation it fully holds together
//! with its live workload.
//!
//! Code map: [`credential`] enrollment and the durable credential; [`client`] the server's
//! HTTP API; [`holdings`] verification of the local copy; [`serve`] the customer path.

pub mod batch;
pub mod client;
pub mod companion;
pub mod control;
pub mod credential;
pub mod holdings;
pub mod limit;
pub mod prompt;
pub mod serve;
pub mod servers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use axum::routing::{get, post};
use axum::Router;
use config::VolunteerConfig;
use ed25519_dalek::VerifyingKey;
use fileserve::protocol::OwnRoutes;
use tokio::sync::{Mutex, Notify};
use tracker::mirror::{build_mirror_query, sign_query, MirrorReport};

use crate::client::ServerClient;
use crate::credential::Credential;
use crate::holdings::{Holdings, HoldingsView};

/// Most bytes of a customer's answer left queued unsent in the kernel
/// ([`fileserve::listen::Limits::unsent_bytes`]). Small against a package, so a download
/// ends within a fraction of a second of its last byte leaving on a slow uplink; large
/// enough that a fast one refills it only every 32 KiB.
const UNSENT_BYTES: u32 = 64 * 1024;

/// One mirrored repository: the slow verifier behind a mutex, and the view the request path
/// reads, swapped whole after each rescan.
pub struct Mirror {
    pub dir: PathBuf,
    /// The part of the repository held (everything unless `[parts.<name>]` says otherwise):
    /// what is synced, verified, announced (`ms_part`) and served. A budget's files are
    /// chosen again for each generation a pull installs.
    part: RwLock<manifest::select::Selection>,
    holdings: Mutex<Holdings>,
    view: RwLock<Arc<HoldingsView>>,
    /// The newest generation the server has named, as each announce's reply says: a pull
    /// under way for an older one watches it ([`prsync::pull::PullOptions::newest`]).
    newest: tokio::sync::watch::Sender<u64>,
    /// What a pull under way wrote after checking it: batches send it unhashed ([`batch`]).
    pub written: Arc<prsync::batched::Written>,
}

impl Mirror {
    pub fn view(&self) -> Arc<HoldingsView> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set_view(&self, v: HoldingsView) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
    }

    /// The part held now.
    pub fn part(&self) -> manifest::select::Selection {
        self.part.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether its budget (if any) was filled for a generation other than `latest`: a
    /// pull chooses its files again.
    fn budget_behind(&self, latest: u64) -> bool {
        let part = self.part.read().unwrap_or_else(|e| e.into_inner());
        part.budget().is_some_and(|b| b.from != latest)
    }

    /// Hold `part` from now on: once a pull installed what it chose.
    async fn set_part(&self, part: manifest::select::Selection) {
        self.holdings.lock().await.set_part(part.clone());
        *self.part.write().unwrap_or_else(|e| e.into_inner()) = part;
    }
}

/// Upload rates over the last second, bytes/s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub customers_bps: u64,
    pub sync_bps: u64,
}

pub struct VolunteerState {
    pub config: VolunteerConfig,
    pub credential: Credential,
    pub server_key: VerifyingKey,
    pub client: ServerClient,
    /// Every server of the mirror, each of which gets every announce ([`servers`]).
    pub servers: servers::Servers,
    pub mirrors: BTreeMap<String, Mirror>,
    pub active: Arc<AtomicU32>,
    pub uploaded: AtomicU64,
    /// Customers sent back to the origin, by why ([`serve::Bounce`]).
    pub bounces: serve::Bounces,
    /// The server's URL as customers reach it (its `public_url`): where bounces go.
    pub origin_base: String,
    /// Its `https://` URL, if it serves HTTPS: where customers that came over HTTPS bounce.
    pub origin_tls_base: Option<String>,
    /// Successful GETs served (for the status page and tests).
    pub served: AtomicU64,
    pub rescan_now: Notify,
    /// Announce now rather than at the end of the interval (after an admin's change).
    pub announce_now: Notify,
    /// Bearer token of the admin's controls (`control`).
    pub control_token: String,
    /// The uplink customers share (the admin can change it live).
    pub uplink: limit::Uplink,
    /// Customers at once (the admin can change it live); starts at `config.max_connections`.
    pub max_connections: AtomicU32,
    /// Paused by its admin: no customers, and the server is told.
    pub paused: std::sync::atomic::AtomicBool,
    /// Generations already reported as over quota, so the log says it once.
    quota_warned: std::sync::Mutex<std::collections::HashSet<(String, u64)>>,
    /// What runs beside it (the lab's synthetic sync and oracle feed; the product: none).
    pub companion: Option<Arc<dyn companion::Companion>>,
    /// Batch answers to syncing peers under way ([`batch`]), and the file bytes they sent.
    pub batches: AtomicU32,
    pub batch_uploaded: AtomicU64,
    /// BitTorrent: fetches for PRsync and seeds what we hold to other volunteers.
    pub seeder: Option<prsync::seeder::Seeder>,
    /// Repositories with a PRsync pull under way.
    syncing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Sync upload bytes/s over the last second ([`prompt`]), and what the last announce
    /// said, and when it was sent.
    recent_sync_bps: AtomicU64,
    /// Customer download bytes/s over the same last second.
    recent_customers_bps: AtomicU64,
    reported_sync_bps: AtomicU64,
    last_announce: std::sync::Mutex<Instant>,
    seq: AtomicU64,
    peer_id: [u8; 20],
}

/// Get a credential: the saved one, or exchange the token for one.
async fn obtain_credential(cfg: &VolunteerConfig, client: &ServerClient) -> Result<Credential> {
    if let Some(c) = credential::load(&cfg.data_dir)? {
        if c.server.trim_end_matches('/') != client.base() {
            tracing::warn!(saved = %c.server, now = %client.base(), "server URL differs from the one enrolled with; using the saved credential");
        }
        return Ok(c);
    }
    let token = cfg.token.as_deref().ok_or_else(|| {
        anyhow!("not enrolled yet: pass --token TOKEN (from `mirrorswarm enroll` on the server)")
    })?;
    let c = client.enroll(token, &cfg.public_url()).await?;
    credential::save(&cfg.data_dir, &c)?;
    tracing::info!(name = %c.name, id = %c.volunteer_id, "enrolled; credential saved");
    Ok(c)
}

impl VolunteerState {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel)
    }

    /// A customer was sent back to the origin: counted, and the server told at once (at
    /// most once per [`prompt::MIN_GAP`]) what this volunteer holds and how busy it is, so
    /// it stops sending customers here for what cannot be served.
    pub fn bounced(&self, why: serve::Bounce) {
        self.bounces.count(why);
        let last = *self.last_announce.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= prompt::MIN_GAP {
            self.announce_now.notify_one();
        }
    }

    /// Bring one mirror up to date with the server: fetch manifests we lack (verifying each),
    /// rescan the directory, publish a new view.
    async fn refresh(&self, repo: &str, latest_hint: Option<u64>) -> Result<()> {
        let Some(m) = self.mirrors.get(repo) else {
            return Ok(());
        };
        let mut h = m.holdings.lock().await;
        let need_latest = match latest_hint {
            Some(g) => g > h.latest_generation(),
            None => h.latest_generation() == 0,
        };
        if need_latest {
            let latest = self
                .client
                .manifest(&self.server_key, repo, "latest")
                .await?;
            tracing::info!(
                repo,
                generation = latest.generation,
                files = latest.files.len(),
                "new generation published"
            );
            h.add_manifest(latest);
        }
        h.rescan().await?;
        if h.held_generation() < h.latest_generation() {
            // Perhaps we hold an older generation: look back (each fetched once, then kept).
            for g in h.wanted_older() {
                match self
                    .client
                    .manifest(&self.server_key, repo, &g.to_string())
                    .await
                {
                    Ok(old) => h.add_manifest(old),
                    Err(e) => {
                        tracing::debug!(repo, generation = g, error = %format!("{e:#}"), "older manifest unavailable");
                        break;
                    }
                }
                if h.held_generation() == g {
                    break;
                }
            }
        }
        let view = h.view();
        let before = m.view();
        if view.held != before.held
            || view.latest != before.latest
            || view.servable.len() != before.servable.len()
        {
            tracing::info!(
                repo,
                held = view.held,
                latest = view.latest,
                servable = view.servable.len(),
                missing = view.missing.len(),
                "holdings"
            );
            for p in view.missing.iter().take(5) {
                tracing::info!(repo, path = %p, "missing or different from the latest manifest");
            }
        }
        let held_changed = view.held != before.held;
        m.set_view(view);
        if held_changed {
            // The server redirects by the held generation: it must know at once.
            self.announce_now.notify_one();
        }
        Ok(())
    }

    fn report(&self, repo: &str, rates: Rates) -> MirrorReport {
        let mirror = self.mirrors.get(repo);
        let held = mirror.map_or(0, |m| m.view().held);
        MirrorReport {
            volunteer: self.credential.volunteer_id.clone(),
            seq: self.next_seq(),
            generation: held,
            customer_conns: self.active.load(Ordering::Acquire),
            sync_conns: self.sync_connections(),
            upload_bps: rates.customers_bps,
            capacity: self.max_connections.load(Ordering::Relaxed).max(1),
            url: self.config.public_url(),
            sync_bps: rates.sync_bps,
            link_bps: self.uplink.bps(),
            paused: self.paused.load(Ordering::Relaxed),
            part: mirror.map_or_else(String::new, |m| m.part().canonical()),
            // Checked when the configuration was read.
            nets: self.config.netblocks_text().unwrap_or_default(),
            private: self.config.private,
            other_urls: self.config.other_public_urls(),
        }
    }

    fn signed_query(&self, repo: &str, rates: Rates, event: Option<&str>) -> Result<String> {
        let mut q = build_mirror_query(
            repo,
            self.peer_id,
            self.config.listen.port(),
            &self.report(repo, rates),
        );
        if let Some(ev) = event {
            q.push_str("&event=");
            q.push_str(ev);
        }
        Ok(sign_query(&self.credential.secret_bytes()?, &q))
    }

    /// Announce every mirror; returns the interval the server asked for. A newer generation
    /// starts a PRsync pull in the background (one per repository at a time).
    async fn announce_all(self: &Arc<Self>, rates: Rates) -> Option<Duration> {
        let mut interval = None;
        for repo in self.mirrors.keys() {
            let q = match self.signed_query(repo, rates, None) {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign announce");
                    continue;
                }
            };
            match self.servers.announce(&q).await {
                Ok(reply) => {
                    interval = Some(reply.interval);
                    if let Some(m) = self.mirrors.get(repo) {
                        m.newest.send_if_modified(|n| {
                            let newer = reply.latest_generation > *n;
                            *n = (*n).max(reply.latest_generation);
                            newer
                        });
                    }
                    let known = self.mirrors.get(repo).map_or(0, |m| m.view().latest);
                    if reply.latest_generation > known {
                        if let Err(e) = self.refresh(repo, Some(reply.latest_generation)).await {
                            tracing::warn!(repo, error = %format!("{e:#}"), "cannot refresh");
                        }
                        self.update_seeding().await;
                    }
                    self.maybe_sync(repo);
                }
                Err(e) => tracing::warn!(repo, error = %format!("{e:#}"), "announce failed"),
            }
        }
        interval
    }

    /// `m`'s budget filled by the popularity of the newest generation it knows: of the files
    /// its patterns choose, the most asked for that fit, as the server will work them out.
    async fn fill_budget(&self, repo: &str, m: &Mirror) -> Result<manifest::select::Selection> {
        let part = m.part();
        let bytes = part.budget().map_or(0, |b| b.bytes);
        let Some(latest) = m.holdings.lock().await.latest_manifest() else {
            bail!("no manifest yet");
        };
        let table = self
            .client
            .popularity(&self.server_key, repo, latest.generation)
            .await?;
        let g = latest.generation;
        let chosen = tokio::task::spawn_blocking(move || {
            let files = latest.files.iter().map(|(p, e)| (p.as_str(), e.size));
            manifest::popularity::fill_budget(&part, files, &table, bytes)
        })
        .await?;
        tracing::info!(
            repo,
            generation = g,
            files = chosen.len(),
            budget = bytes,
            "budget filled by popularity"
        );
        Ok(m.part().chosen_by(g, chosen))
    }

    /// Bytes uploaded for syncing so far: what the seeder and the batch answers sent to
    /// other volunteers, plus a companion's. (Uploads by a pull lingering as a seeder are not
    /// counted; they are short.)
    fn sync_uploaded_total(&self) -> u64 {
        self.companion.as_ref().map_or(0, |c| c.sync_uploaded())
            + self.batch_uploaded.load(Ordering::Relaxed)
            + self.seeder.as_ref().map_or(0, |s| s.bt.uploaded_bytes())
    }

    /// Connections used for syncing: BitTorrent peers, batch answers and pulls under way,
    /// plus a companion's.
    fn sync_connections(&self) -> u32 {
        let peers = self.seeder.as_ref().map_or(0, |s| s.bt.live_peers());
        let pulls = self.syncing.lock().map_or(0, |s| s.len() as u32);
        peers
            + pulls
            + self.batches.load(Ordering::Relaxed)
            + self.companion.as_ref().map_or(0, |c| c.sync_connections())
    }

    /// Start a pull for `repo` if it lags the newest generation and none is running.
    fn maybe_sync(self: &Arc<Self>, repo: &str) {
        if !self.config.sync {
            return;
        }
        let Some(m) = self.mirrors.get(repo) else {
            return;
        };
        let v = m.view();
        if v.latest == 0 || (v.held >= v.latest && !m.budget_behind(v.latest)) {
            return;
        }
        if let Some(&quota) = self.config.quotas.get(repo) {
            if v.latest_bytes > quota {
                let mut warned = self.quota_warned.lock().unwrap_or_else(|e| e.into_inner());
                if warned.insert((repo.to_string(), v.latest)) {
                    tracing::warn!(
                        repo, generation = v.latest, bytes = v.latest_bytes, quota,
                        "newest generation exceeds this repository's quota; not syncing it (serving what is held)"
                    );
                }
                return;
            }
        }
        {
            let Ok(mut s) = self.syncing.lock() else {
                return;
            };
            if !s.insert(repo.to_string()) {
                return;
            }
        }
        let me = self.clone();
        let repo = repo.to_string();
        tokio::spawn(async move {
            let dir = me
                .mirrors
                .get(&repo)
                .map(|m| m.dir.clone())
                .unwrap_or_default();
            let mut opts = prsync::pull::PullOptions::new(me.client.base(), &repo, &dir);
            opts.key = Some(me.server_key);
            opts.newest = me.mirrors.get(&repo).map(|m| m.newest.subscribe());
            opts.adopt = me.config.adopt;
            opts.own_url = Some(me.config.public_url());
            opts.written = me.mirrors.get(&repo).map(|m| m.written.clone());
            let mirror = me.mirrors.get(&repo);
            if let Some(m) = mirror {
                opts.select = m.part();
                if opts.select.budget().is_some() {
                    match me.fill_budget(&repo, m).await {
                        Ok(chosen) => opts.select = chosen,
                        Err(e) => {
                            tracing::warn!(repo = %repo, error = %format!("{e:#}"), "cannot fill the budget by the newest popularity; the pull keeps the files chosen before")
                        }
                    }
                }
            }
            let bt = me.seeder.as_ref().map(|s| &s.bt);
            match prsync::pull::pull(&opts, bt).await {
                Ok(sum) => {
                    tracing::info!(repo = %repo, summary = %sum.line(), "synced");
                    if let Some(m) = mirror {
                        m.set_part(opts.select.clone()).await;
                    }
                }
                Err(e @ prsync::pull::PullError::Superseded { .. }) => {
                    tracing::info!(repo = %repo, reason = %e, "pull gave way to a newer generation; the next announce starts it")
                }
                Err(e) => {
                    tracing::warn!(repo = %repo, error = %e, "sync failed; will retry at the next announce")
                }
            }
            // Still counted as syncing while the tree is rescanned: an announce meanwhile
            // must not start another pull of what this one just installed.
            if let Err(e) = me.refresh(&repo, None).await {
                tracing::warn!(repo = %repo, error = %format!("{e:#}"), "rescan after sync failed");
            }
            if let Some(m) = me.mirrors.get(&repo) {
                m.written.clear();
            }
            if let Ok(mut s) = me.syncing.lock() {
                s.remove(&repo);
            }
            me.update_seeding().await;
        });
    }

    /// Seed every verified large file of every mirror's newest generation; stop seeding the
    /// rest.
    async fn update_seeding(&self) {
        let Some(seeder) = &self.seeder else { return };
        let mut files = Vec::new();
        for m in self.mirrors.values() {
            let view = m.view();
            let Some(root) = &view.root else { continue };
            for (path, sha, btih) in &view.seedable {
                let Some(v) = view.servable.get(path) else {
                    continue;
                };
                files.push(prsync::seeder::SeedFile {
                    sha256_hex: sha.to_hex(),
                    btih: btih.0,
                    root: root.clone(),
                    rel: path.clone(),
                    size: v.size,
                    mtime_ns: v.mtime_ns,
                });
            }
        }
        for f in seeder.missing(&files).await {
            match self.client.artifact(&f.sha256_hex, "torrent").await {
                Ok(t) if prsync::artifacts::torrent_info_hash(&t).is_ok_and(|h| h == f.btih) => {
                    if let Err(e) = seeder.add(&f, t).await {
                        tracing::warn!(path = %f.rel, error = %format!("{e:#}"), "cannot seed");
                    }
                }
                Ok(_) => {
                    tracing::warn!(sha = %f.sha256_hex, "torrent does not match the manifest; not seeding")
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "torrent unavailable"),
            }
        }
        seeder.retain(&files).await;
    }

    async fn announce_stopped(&self) {
        for repo in self.mirrors.keys() {
            if let Ok(q) = self.signed_query(repo, Rates::default(), Some("stopped")) {
                let _ = self.servers.announce(&q).await;
            }
        }
    }
}

/// A volunteer that syncs deletes what generations drop, so each mirror directory must be
/// one a sync may fill ([`prsync::tree`]): refuse at start, naming the files, one that holds
/// files the newest manifest does not list (unless `--adopt`), or that mirrors another
/// repository. The manifest fetched is kept, so the first verification need not fetch it.
async fn check_trees(
    cfg: &VolunteerConfig,
    client: &ServerClient,
    key: &VerifyingKey,
    mirrors: &BTreeMap<String, Mirror>,
) -> Result<()> {
    for (repo, m) in mirrors {
        let latest = match client.manifest(key, repo, "latest").await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(repo, error = %format!("{e:#}"), "cannot check the mirror directory now (no manifest); each sync checks it before changing anything");
                continue;
            }
        };
        let (dir, name, l) = (m.dir.clone(), repo.clone(), latest.clone());
        let standing =
            tokio::task::spawn_blocking(move || prsync::tree::standing(&dir, &name, &l)).await?;
        let no_sync = "or start with --no-sync to serve only what verifies, syncing by other means";
        match standing {
            Ok(prsync::tree::Standing::Foreign(unknown)) if !cfg.adopt => {
                let e = prsync::tree::TreeError::NotOwn {
                    dest: m.dir.clone(),
                    repo: repo.clone(),
                    unknown,
                };
                bail!("mirror `{repo}`: {e}; {no_sync}");
            }
            Ok(prsync::tree::Standing::Foreign(unknown)) => {
                tracing::warn!(repo, dir = %m.dir.display(), unlisted = unknown.count, first = %unknown, "adopting a mirror directory that holds files the manifest does not list (--adopt): they are left alone");
            }
            Ok(_) => {}
            Err(e) => bail!("mirror `{repo}`: {e}; {no_sync}"),
        }
        m.holdings.lock().await.add_manifest(latest);
    }
    Ok(())
}

/// Run the volunteer until `shutdown` completes (the CLI passes Ctrl-C / SIGTERM), then tell
/// the tracker it stopped.
pub async fn run(
    cfg: VolunteerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with_companion(cfg, None, shutdown).await
}

/// [`run`] with a [`companion::Companion`] beside it: how the lab runs a volunteer with
/// synthetic sync traffic and its oracle's feed, which the product does not ship.
pub async fn run_with_companion(
    cfg: VolunteerConfig,
    companion: Option<Arc<dyn companion::Companion>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    // One volunteer per data directory: two would share a credential and its announce
    // sequence, and `volunteer-ctl` would reach whichever wrote volunteer.json last.
    let _one_volunteer = config::runlock::RunLock::acquire(&cfg.data_dir, control::RUN_LOCK)
        .map_err(|e| match e {
            config::runlock::RunLockError::Held { pid, .. } => anyhow!(
                "another mirrorswarm volunteer (pid {}) runs on the data directory {}; stop it first, or give this one a --data-dir of its own",
                pid.map_or("unknown".into(), |p| p.to_string()),
                cfg.data_dir.display()
            ),
            e => anyhow!(e),
        })?;
    if cfg.sync {
        for (name, dir) in &cfg.mirrors {
            if !dir.exists() {
                std::fs::create_dir(dir).with_context(|| {
                    format!("creating the mirror of `{name}` at {}", dir.display())
                })?;
                tracing::info!(repo = %name, dir = %dir.display(), "created an empty mirror directory; syncing fills it");
            }
        }
    }
    let server = cfg.server.clone().unwrap_or_default();
    let client = ServerClient::new(&server)?;
    // Bound before enrolling: a port in use must not spend the one-time token on a
    // volunteer that never announces.
    let listener = fileserve::listen::bind(cfg.listen)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    // HTTPS likewise, its certificate checked first.
    let mut cfg = cfg;
    let tls = fileserve::listen::bind_tls_if(cfg.tls.listen, cfg.tls.files(), cfg.tls.names())?;
    if let Some((l, _)) = &tls {
        let at = l.local_addr()?;
        cfg.tls
            .public_url
            .get_or_insert_with(|| format!("https://{at}"));
    }
    let credential = obtain_credential(&cfg, &client).await?;
    let configured: Vec<String> = std::iter::once(server.clone())
        .chain(cfg.replicas.iter().cloned())
        .collect();
    let servers = servers::Servers::new(configured, &credential.servers)?;
    let server_key = manifest::signing::parse_public_key(&credential.public_key)?;
    let mut origin_base = client.base().to_string();
    let mut origin_tls_base = None;
    match client.info().await {
        Ok(info) if info.public_key != credential.public_key => {
            bail!("the server at {server} presents a different signing key than the one enrolled with; refusing to trust it")
        }
        Ok(info) => {
            let unknown: Vec<&String> = cfg
                .mirrors
                .keys()
                .filter(|r| !info.repos.contains_key(*r))
                .collect();
            if let Some(r) = unknown.first() {
                bail!(
                    "--mirror {r}: the server at {server} has no repository `{r}`; it publishes: {}",
                    info.repos.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            if !info.public_url.is_empty() {
                origin_base = info.public_url.trim_end_matches('/').to_string();
            }
            origin_tls_base = info
                .public_tls_url
                .map(|u| u.trim_end_matches('/').to_string());
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "server unreachable at start; serving what verified before")
        }
    }
    let mirrors: BTreeMap<String, Mirror> = cfg
        .mirrors
        .iter()
        .map(|(name, dir)| {
            let part = match cfg.parts.get(name) {
                Some(p) => p.selection()?,
                None => Default::default(),
            };
            Ok((
                name.clone(),
                Mirror {
                    dir: dir.clone(),
                    holdings: Mutex::new(Holdings::new(name, dir, &cfg.data_dir, part.clone())),
                    part: RwLock::new(part),
                    view: RwLock::new(Arc::new(HoldingsView::default())),
                    newest: tokio::sync::watch::Sender::new(0),
                    written: Default::default(),
                },
            ))
        })
        .collect::<Result<_, manifest::select::PatternError>>()
        .context("[parts]")?;
    let mut peer_id = *b"-MS0100-000000000000";
    rand::Rng::fill(&mut rand::thread_rng(), &mut peer_id[8..]);
    // Sequence numbers start at the wall clock in microseconds so that they keep increasing
    // across restarts (the server refuses a sequence number it has seen).
    let seq0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    if cfg.sync {
        check_trees(&cfg, &client, &server_key, &mirrors).await?;
    }
    let seeder = if cfg.sync {
        let listen = cfg
            .seed_listen
            .unwrap_or(std::net::SocketAddr::new(cfg.listen.ip(), 0));
        let bt = prsync::bt::Bt::start(prsync::bt::BtConfig {
            listen,
            upload_bps: cfg.seed_upload_bps,
            peer_id: None,
            dir: cfg.data_dir.join("bt"),
        })
        .await;
        match bt {
            Ok(bt) => {
                tracing::info!(port = bt.port(), "BitTorrent engine listening");
                Some(prsync::seeder::Seeder::new(
                    bt,
                    &cfg.data_dir.join("seed"),
                    format!("{}/announce", client.base()),
                )?)
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "BitTorrent unavailable: syncing over HTTP only, not seeding");
                None
            }
        }
    } else {
        None
    };
    // The uplink: customers and a companion's traffic share it.
    let uplink = limit::Uplink::new(cfg.upload_bps);
    if let Some(c) = &companion {
        c.start(&credential.volunteer_id, uplink.current());
    }
    let cfg_max_connections = cfg.max_connections;
    let control_token = control::load_or_create_token(&cfg.data_dir)
        .with_context(|| format!("control token in {}", cfg.data_dir.display()))?;
    control::write_runtime_info(&cfg.data_dir, &format!("http://{}", listener.local_addr()?))
        .with_context(|| format!("writing {}", control::runtime_path(&cfg.data_dir).display()))?;
    let st = Arc::new(VolunteerState {
        config: cfg,
        credential,
        server_key,
        client,
        servers,
        mirrors,
        active: Arc::new(AtomicU32::new(0)),
        uploaded: AtomicU64::new(0),
        bounces: Default::default(),
        origin_base,
        origin_tls_base,
        served: AtomicU64::new(0),
        rescan_now: Notify::new(),
        announce_now: Notify::new(),
        control_token,
        uplink,
        max_connections: AtomicU32::new(cfg_max_connections),
        paused: std::sync::atomic::AtomicBool::new(false),
        quota_warned: Default::default(),
        companion,
        seeder,
        batches: AtomicU32::new(0),
        batch_uploaded: AtomicU64::new(0),
        syncing: std::sync::Mutex::new(Default::default()),
        recent_sync_bps: AtomicU64::new(0),
        recent_customers_bps: AtomicU64::new(0),
        reported_sync_bps: AtomicU64::new(0),
        last_announce: std::sync::Mutex::new(Instant::now()),
        seq: AtomicU64::new(seq0),
        peer_id,
    });
    for repo in st.mirrors.keys() {
        if let Err(e) = st.refresh(repo, None).await {
            tracing::warn!(repo, error = %format!("{e:#}"), "initial verification incomplete");
        }
        st.maybe_sync(repo);
    }
    st.update_seeding().await;

    // Rescan loop: notice the admin's changes to the directory.
    let rescanner = st.clone();
    tokio::spawn(async move {
        let period = Duration::from_secs(rescanner.config.rescan_secs);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = rescanner.rescan_now.notified() => {}
            }
            for repo in rescanner.mirrors.keys() {
                // A pull under way is changing the tree and rescans it when it ends; hashing
                // its half-filled tree every few seconds would only slow it.
                let pulling = rescanner.syncing.lock().is_ok_and(|s| s.contains(repo));
                if pulling {
                    continue;
                }
                if let Err(e) = rescanner.refresh(repo, None).await {
                    tracing::warn!(repo, error = %format!("{e:#}"), "rescan failed");
                }
            }
        }
    });

    // Upload windows: other limits at times of day, applied when a window starts or ends
    // (so an admin's live change holds until the next boundary).
    if !st.config.upload_windows.is_empty() {
        let w = st.clone();
        tokio::spawn(async move {
            let mut current: Option<Option<usize>> = None;
            loop {
                let minute = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| (d.as_secs() / 60 % 1440) as u32);
                let active = w
                    .config
                    .upload_windows
                    .iter()
                    .position(|x| x.contains(minute));
                if current != Some(active) {
                    current = Some(active);
                    let (bps, conns) = match active.map(|i| &w.config.upload_windows[i]) {
                        Some(win) => (
                            win.upload_bps.or(w.config.upload_bps),
                            win.max_connections.unwrap_or(w.config.max_connections),
                        ),
                        None => (w.config.upload_bps, w.config.max_connections),
                    };
                    w.uplink.set(bps);
                    w.max_connections.store(conns, Ordering::Relaxed);
                    tracing::info!(window = ?active, upload_bps = ?bps, max_connections = conns, "upload window limits apply");
                    w.announce_now.notify_one();
                }
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
        });
    }

    // Prompt reports: announce at once when the sync upload rate moves a lot (`prompt`).
    let watcher = st.clone();
    tokio::spawn(async move {
        let mut meter = prompt::RecentRate::default();
        let mut customers = prompt::RecentRate::default();
        let mut tick = tokio::time::interval(prompt::CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let bps = meter.sample(now, watcher.sync_uploaded_total());
            watcher.recent_sync_bps.store(bps, Ordering::Relaxed);
            let c = customers.sample(now, serve::uploaded(&watcher.uploaded));
            watcher.recent_customers_bps.store(c, Ordering::Relaxed);
            let last = *watcher
                .last_announce
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let reported = watcher.reported_sync_bps.load(Ordering::Relaxed);
            if now.saturating_duration_since(last) >= prompt::MIN_GAP
                && prompt::moved(reported, bps, watcher.uplink.bps())
            {
                tracing::debug!(reported, now = bps, "sync upload moved: announcing now");
                watcher.announce_now.notify_one();
            }
        }
    });

    // Announce loop.
    let announcer = st.clone();
    let announce_task = tokio::spawn(async move {
        let mut interval = Duration::from_secs(5);
        loop {
            // Both rates over the last second, whenever the announce goes: the balancer
            // models the link from here on. Averaged over a long interval a sync burst read
            // as a trickle; measured since the previous announce, one made at once after it
            // (a prompt report) read a few milliseconds: no bytes at all, or one BitTorrent
            // chunk as megabytes a second, and the balancer flooded a link that was half
            // full of sync, then shunned it.
            let rates = Rates {
                customers_bps: announcer.recent_customers_bps.load(Ordering::Relaxed),
                sync_bps: announcer.recent_sync_bps.load(Ordering::Relaxed),
            };
            if let Some(i) = announcer.announce_all(rates).await {
                interval = i;
            }
            announcer
                .reported_sync_bps
                .store(rates.sync_bps, Ordering::Relaxed);
            *announcer
                .last_announce
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = announcer.announce_now.notified() => {}
            }
        }
    });

    let own = |pattern| OWN_ROUTES.checked(pattern);
    let app = Router::new()
        .route(own("/health"), get(serve::health))
        .route(own("/metrics"), get(serve::metrics))
        .route(own("/status"), get(serve::status_page))
        .route(own("/admin/status"), get(control::status))
        .route(own("/admin/pause"), post(control::pause))
        .route(own("/admin/resume"), post(control::resume))
        .route(own("/admin/limits"), post(control::limits))
        .route(own("/api/batch/{repo}"), post(batch::answer))
        .route(own("/api/have/{repo}"), get(batch::have))
        .fallback(serve::customer)
        .with_state(st.clone());
    tracing::info!(
        listen = %st.config.listen, public_url = %st.config.public_url(), name = %st.credential.name,
        mirrors = ?st.mirrors.keys().collect::<Vec<_>>(), "volunteer ready"
    );
    let limits = fileserve::listen::Limits {
        header_timeout: st.config.limits.header_timeout(),
        max_connections: st.config.limits.max_connections,
        max_per_ip: st.config.limits.max_connections_per_ip,
        client_stall: st.config.limits.client_stall(),
        // A customer counts as served while its bytes are still on their way out, not just
        // while they are being queued: the reports the balancer steers by are made of that
        // count and the rate it gives.
        unsent_bytes: Some(UNSENT_BYTES),
        ..Default::default()
    };
    let fast: Arc<dyn fileserve::fast::FastPath> = Arc::new(FastRoutes(st.clone()));
    fileserve::listen::serve_both(listener, tls, app, Some(fast), limits, shutdown)
        .await
        .context("volunteer server failed")?;
    // No regular announce may follow the `stopped` one and make us look alive again.
    announce_task.abort();
    let _ = announce_task.await;
    st.announce_stopped().await;
    tracing::info!("volunteer stopped");
    Ok(())
}

/// The volunteer's own pages and admin endpoints ([`fileserve::protocol::VOLUNTEER_ROUTES`]).
const OWN_ROUTES: OwnRoutes = fileserve::protocol::VOLUNTEER_ROUTES;

/// Customers' downloads answered without the router (`fileserve::fast`); the volunteer's own
/// pages and admin endpoints ([`OWN_ROUTES`]) go to it.
struct FastRoutes(Arc<VolunteerState>);

impl fileserve::fast::FastPath for FastRoutes {
    fn answer(
        &self,
        req: &fileserve::fast::Request<'_>,
        reply: &mut fileserve::fast::Reply<'_>,
    ) -> fileserve::fast::Answer {
        let path = req.path();
        if OWN_ROUTES.contains(path) {
            return fileserve::fast::Answer::Pass;
        }
        serve::fast_customer(&self.0, req, reply)
    }
}
