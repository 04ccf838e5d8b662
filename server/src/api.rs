//! JSON endpoints for volunteers, the CLI and admins: `/health`, `/api/info`, `/api/enroll`,
//! `/api/volunteers`, `/manifests/<repo>/<generation|latest>[?since=<g>]`, `POST /admin/publish`,
//! `POST /admin/volunteers/<name>/<revoke|drain|resume|release>`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::locks::write;
use crate::state::AppState;
use crate::store::StoreError;
use fileserve::text_response as text;

pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    let staged: serde_json::Map<String, serde_json::Value> = st
        .repo_dirs
        .keys()
        .filter_map(|r| Some((r.clone(), st.staging_of(r)?)))
        .collect();
    Json(serde_json::json!({
        "status": "ok",
        "repos": st.latest_generations(),
        "staged": staged,
    }))
    .into_response()
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ServerInfo {
    pub public_key: String,
    /// The origin's BitTorrent seed port, if it seeds.
    #[serde(default)]
    pub seed_port: Option<u16>,
    pub fingerprint: String,
    pub interval_secs: u64,
    pub repos: std::collections::BTreeMap<String, u64>,
    /// Where customers reach this server: a volunteer that cannot serve a file sends its
    /// customer back here (`/.origin/…`).
    #[serde(default)]
    pub public_url: String,
    /// Where customers reach it over HTTPS, if it serves HTTPS.
    #[serde(default)]
    pub public_tls_url: Option<String>,
}

pub async fn info(State(st): State<Arc<AppState>>) -> Json<ServerInfo> {
    Json(ServerInfo {
        public_key: st.key.public_hex(),
        seed_port: st.seed.get().map(|s| s.port()),
        fingerprint: st.key.fingerprint().0,
        interval_secs: st.config.tracker.interval_secs,
        repos: st.latest_generations(),
        public_url: st.public_url.clone(),
        public_tls_url: st.public_tls_url.clone(),
    })
}

#[derive(Serialize, Deserialize, Debug)]
pub struct EnrollRequest {
    pub token: String,
    pub url: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct EnrollResponse {
    pub volunteer_id: String,
    pub name: String,
    pub secret: String,
    pub public_key: String,
    /// The mirror's servers when it has several (see `AppState::servers`): the volunteer
    /// announces to each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

pub async fn enroll(
    State(st): State<Arc<AppState>>,
    body: Option<Json<EnrollRequest>>,
) -> Response {
    let Some(Json(req)) = body else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"token\": …, \"url\": …}",
        );
    };
    if let Err(e) = config::validate_http_url(&req.url) {
        return text(StatusCode::BAD_REQUEST, format!("url: {e}"));
    }
    match st.store.redeem(&req.token, &req.url).await {
        Ok(rec) => {
            tracing::info!(volunteer = %rec.name, id = %rec.id, url = %rec.url, "volunteer enrolled");
            let resp = EnrollResponse {
                volunteer_id: rec.id.clone(),
                name: rec.name.clone(),
                secret: hex::encode(&rec.secret),
                public_key: st.key.public_hex(),
                servers: crate::locks::read(&st.servers).to_vec(),
            };
            write(&st.credentials).insert(rec.id.clone(), rec);
            Json(resp).into_response()
        }
        Err(e @ (StoreError::BadToken | StoreError::MalformedToken)) => {
            tracing::warn!(error = %e, "enrollment refused");
            text(StatusCode::FORBIDDEN, e.to_string())
        }
        Err(e @ StoreError::NameTaken(_)) => text(StatusCode::CONFLICT, e.to_string()),
        Err(e) => store_failed(&st, "enrollment", &e),
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct VolunteerView {
    pub name: String,
    pub id: String,
    pub url: String,
    /// `healthy`, `stale` (missed announces), `stopped`, `paused` (by its admin), `draining`,
    /// `quarantined`, `revoked` or `never-announced`.
    pub state: String,
    /// Why it is quarantined, when it is.
    #[serde(default)]
    pub quarantine: Option<String>,
    pub generations: std::collections::BTreeMap<String, u64>,
    /// The part it holds of each repository it holds part of (its patterns, one a line:
    /// `+ ` include, `- ` exclude); a repository it holds whole is not listed.
    #[serde(default)]
    pub parts: std::collections::BTreeMap<String, String>,
    /// Its share of each repository it holds a generation of: of the current generation's
    /// files and bytes, and of customers' requests of about the last day.
    #[serde(default)]
    pub shares: std::collections::BTreeMap<String, crate::held_share::HeldShare>,
    pub customer_conns: u32,
    pub sync_conns: u32,
    /// Bytes/s its sync uploads sent, as its last report said.
    #[serde(default)]
    pub sync_bps: u64,
    pub upload_bps: u64,
    pub capacity: u32,
    pub last_announce_ms_ago: Option<u64>,
    pub redirects: u64,
    /// Throughput the server's spot checks observed, bytes/s.
    #[serde(default)]
    pub observed_bps: Option<u64>,
    /// Its share relative to its declared capacity given what the checks observed (1.0: not
    /// held back).
    #[serde(default = "one")]
    pub observed_speed: f64,
    /// Customers' proxies that reported bad bytes from it.
    #[serde(default)]
    pub reports: u64,
    /// Bytes of the files customers were redirected to it for.
    #[serde(default)]
    pub redirected_bytes: u64,
    /// The share of its declared uplink it has been sending lately, customers and sync
    /// together (what `feedback` evens out; 0 where the uplink is undeclared).
    #[serde(default)]
    pub uplink_usage: f64,
}

fn one() -> f64 {
    1.0
}

pub async fn volunteers(State(st): State<Arc<AppState>>) -> Json<Vec<VolunteerView>> {
    let creds: Vec<_> = crate::locks::read(&st.credentials)
        .values()
        .cloned()
        .collect();
    let now = Instant::now();
    let reg = st.balancer.registry();
    let mut holdings = Vec::new();
    let mut out: Vec<VolunteerView> = creds
        .into_iter()
        .map(|c| {
            let live = reg.get(&c.id);
            let state = match live {
                _ if c.revoked => "revoked",
                _ if c.quarantine.is_some() => "quarantined",
                _ if c.draining => "draining",
                None => "never-announced",
                Some(v) if v.stopped => "stopped",
                Some(v) if v.paused => "paused",
                Some(v) if !reg.is_fresh(v, now) => "stale",
                Some(_) => "healthy",
            };
            VolunteerView {
                name: c.name.clone(),
                id: c.id.clone(),
                url: live.map_or(c.url.clone(), |v| v.url().to_string()),
                state: state.into(),
                quarantine: c.quarantine.clone(),
                generations: live
                    .map(|v| {
                        v.generations
                            .iter()
                            .map(|(k, g)| (k.to_string(), g))
                            .collect()
                    })
                    .unwrap_or_default(),
                parts: live
                    .map(|v| {
                        v.generations
                            .with_parts()
                            .filter_map(|(k, _, p)| Some((k.to_string(), p?.text.clone())))
                            .collect()
                    })
                    .unwrap_or_default(),
                shares: Default::default(),
                customer_conns: live.map_or(0, |v| v.load.customer_conns),
                sync_conns: live.map_or(0, |v| v.load.sync_conns),
                sync_bps: live.map_or(0, |v| v.load.sync_bps),
                upload_bps: live.map_or(0, |v| v.load.upload_bps),
                capacity: live.map_or(0, |v| v.load.capacity),
                last_announce_ms_ago: live
                    .map(|v| now.saturating_duration_since(v.last_report).as_millis() as u64),
                redirects: live.map_or(0, |v| v.issued_total),
                observed_bps: st.spot.observed_bps(&c.id).map(|b| b as u64),
                observed_speed: reg.observed_speed(&c.id),
                reports: st.spot.reports_about(&c.id),
                redirected_bytes: live.map_or(0, |v| v.issued_bytes),
                uplink_usage: live.map_or(0.0, |v| v.usage()),
            }
        })
        .collect();
    for v in &out {
        holdings.push(reg.get(&v.id).map(crate::held_share::holding));
    }
    drop(reg);
    let requests = crate::held_share::requests(&st, now);
    for (v, held) in out.iter_mut().zip(holdings) {
        if let Some(held) = held {
            v.shares = crate::held_share::shares(&st, &held, &requests);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Json(out)
}

#[derive(Deserialize)]
pub struct PopularityQuery {
    /// How many files to list, most asked for first (default 100, at most 10,000).
    pub limit: Option<usize>,
}

/// `GET /api/popularity/<repo>[?limit=N]`: the files customers asked for most lately, with
/// their decayed request counts (each request counts half as much a half-life later).
pub async fn popularity(
    State(st): State<Arc<AppState>>,
    Path(repo): Path<String>,
    Query(q): Query<PopularityQuery>,
) -> Response {
    let Some(snap) = st.repo(&repo) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no repository named `{repo}`"),
        );
    };
    let mut files = st.popularity.counts(&repo, Instant::now());
    files.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    files.truncate(q.limit.unwrap_or(100).min(10_000));
    Json(serde_json::json!({
        "repo": repo,
        "generation": snap.generation(),
        "half_life_secs": st.popularity.half_life().as_secs(),
        "files": files
            .into_iter()
            .map(|(path, n)| serde_json::json!({"path": path, "requests": n}))
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `GET /manifests/<repo>/<generation|latest>/popularity`: the generation's signed
/// popularity ([`manifest::popularity::Popularity`]), what a volunteer's disk budget is
/// filled by.
pub async fn popularity_table(
    State(st): State<Arc<AppState>>,
    Path((repo, which)): Path<(String, String)>,
) -> Response {
    let g = match published_generation(&st, &repo, &which) {
        Ok(g) => g,
        Err(resp) => return *resp,
    };
    match crate::popularity::signed_table(&st, &repo, g).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => e.response(),
    }
}

#[derive(Deserialize)]
pub struct ManifestQuery {
    /// Ask for the changes since this generation rather than the whole manifest.
    pub since: Option<u64>,
}

/// The generation a `/manifests/<repo>/<which>/…` path names (`latest` or a number), if
/// `repo` published it; else the answer that says why not.
fn published_generation(st: &AppState, repo: &str, which: &str) -> Result<u64, Box<Response>> {
    // A staged generation is published: volunteers sync it before customers see it.
    let Some(snap) = st.newest(repo) else {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            format!("no repository named `{repo}`"),
        )));
    };
    let g = match which {
        "latest" => snap.generation(),
        n => n.parse::<u64>().map_err(|_| {
            Box::new(text(
                StatusCode::BAD_REQUEST,
                "generation must be a number or `latest`",
            ))
        })?,
    };
    if g > snap.generation() || g == 0 {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            format!("generation {g} of `{repo}` is not published"),
        )));
    }
    Ok(g)
}

/// `GET /manifests/<repo>/<generation|latest>[?since=<g>]`: the signed manifest, or with
/// `since` the signed [`manifest::delta::Delta`] from generation `g` to that one.
pub async fn manifest(
    State(st): State<Arc<AppState>>,
    Path((repo, which)): Path<(String, String)>,
    Query(q): Query<ManifestQuery>,
) -> Response {
    let g = match published_generation(&st, &repo, &which) {
        Ok(g) => g,
        Err(resp) => return *resp,
    };
    let bytes = match q.since {
        Some(from) => crate::delta::signed(&st, &repo, from, g).await,
        None => signed_manifest(&st, &repo, g).await,
    };
    match bytes {
        Ok(b) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            b,
        )
            .into_response(),
        Err(e) => e.response(),
    }
}

/// Why a manifest or a delta cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum ManifestUnavailable {
    #[error("generation {generation} of `{repo}` is no longer kept")]
    NotKept { repo: String, generation: u64 },
    #[error("a delta goes forward: from generation {from} to {to} of `{repo}` does not")]
    Backwards { repo: String, from: u64, to: u64 },
    #[error("cannot make the delta of `{repo}` from {from} to {to}: {why}")]
    Failed {
        repo: String,
        from: u64,
        to: u64,
        why: String,
    },
}

impl ManifestUnavailable {
    pub(crate) fn response(&self) -> Response {
        let status = match self {
            ManifestUnavailable::NotKept { .. } => StatusCode::NOT_FOUND,
            ManifestUnavailable::Backwards { .. } => StatusCode::BAD_REQUEST,
            ManifestUnavailable::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(status, self.to_string())
    }
}

/// A published generation's signed manifest. Served from disk: a million-file manifest is
/// ~150 MB of JSON that the server need not hold, and volunteers fetch it once a generation.
pub async fn signed_manifest(
    st: &AppState,
    repo: &str,
    g: u64,
) -> Result<Vec<u8>, ManifestUnavailable> {
    let on_disk =
        tokio::fs::read(crate::publish::manifest_path(&st.config.data_dir, repo, g)).await;
    if let Ok(b) = on_disk {
        return Ok(b);
    }
    // A generation published by another server sharing the database before this one
    // joined: the database has it.
    if st.store.shared() {
        if let Ok(Some(b)) = st.store.signed_manifest(repo, g).await {
            return Ok(b);
        }
    }
    Err(ManifestUnavailable::NotKept {
        repo: repo.to_string(),
        generation: g,
    })
}

#[derive(Deserialize)]
pub struct PublishQuery {
    pub repo: Option<String>,
    /// Live at once, not staged (`mirrorswarm publish --now`).
    #[serde(default)]
    pub now: bool,
}

/// `POST /admin/publish[?repo=NAME]` with `Authorization: Bearer <admin token>`.
pub async fn publish(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<PublishQuery>,
) -> Response {
    if let Err(r) = require_admin(&st, &headers) {
        return *r;
    }
    let names: Vec<String> = match q.repo {
        Some(r) if st.repo_dirs.contains_key(&r) => vec![r],
        Some(r) => return text(StatusCode::NOT_FOUND, format!("no repository named `{r}`")),
        None => st.repo_dirs.keys().cloned().collect(),
    };
    let when = if q.now {
        crate::GoLive::Now
    } else {
        crate::GoLive::AsConfigured
    };
    let mut reports = Vec::new();
    for name in names {
        // On the runtime the server started on: requests may be served by per-core
        // single-threaded runtimes, and the BitTorrent seed that publishing updates needs
        // the multi-threaded one it was created on.
        let job = {
            let (st, name) = (st.clone(), name.clone());
            st.background
                .clone()
                .spawn(async move { crate::publish_repo(&st, &name, when).await })
        };
        let outcome = match job.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("publish task failed: {e}")),
        };
        match outcome {
            Ok(r) => reports.push(serde_json::json!({
                "repo": r.repo, "generation": r.generation, "new_generation": r.new_generation,
                "live_generation": r.live_generation,
                "staged": st.staging_of(&r.repo),
                "files": r.files, "changed_files": r.changed_files,
                "hashed_files": r.hashed_files, "hashed_bytes": r.hashed_bytes,
                "skipped": r.skipped.len(),
            })),
            Err(e) => {
                // Another server sharing the database publishes it now, or did meanwhile.
                if let Some(b) = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<crate::lease::PublishBusy>())
                {
                    return text(StatusCode::CONFLICT, b.to_string());
                }
                let store = e.chain().find_map(|c| c.downcast_ref::<StoreError>());
                if let Some(s @ StoreError::GenerationTaken { .. }) = store {
                    return text(StatusCode::CONFLICT, format!("{s}; publish again"));
                }
                if let Some(s) = store {
                    return store_failed(&st, &format!("publishing `{name}`"), s);
                }
                tracing::error!(repo = %name, error = %format!("{e:#}"), "publish failed");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("publishing `{name}` failed: {e:#}"),
                );
            }
        }
    }
    Json(reports).into_response()
}

#[derive(Deserialize)]
pub struct EnrollQuery {
    pub name: String,
    #[serde(default = "default_ttl_hours")]
    pub ttl_hours: u64,
}

fn default_ttl_hours() -> u64 {
    168
}

/// `POST /admin/enroll?name=NAME[&ttl_hours=H]` with the admin token: a one-time enrollment
/// token for a volunteer called NAME, as the body (`mirrorswarm enroll --server URL`).
pub async fn admin_enroll(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<EnrollQuery>,
) -> Response {
    if let Err(r) = require_admin(&st, &headers) {
        return *r;
    }
    if let Err(e) = config::validate_volunteer_name(&q.name) {
        return text(StatusCode::BAD_REQUEST, format!("name: {e}"));
    }
    let Some(ttl) = q.ttl_hours.checked_mul(3600).filter(|t| *t > 0) else {
        return text(StatusCode::BAD_REQUEST, "ttl_hours: must be at least 1");
    };
    match st
        .store
        .create_enrollment(&q.name, &st.key.fingerprint().0, ttl)
        .await
    {
        Ok(token) => {
            tracing::info!(volunteer = %q.name, ttl_hours = q.ttl_hours, "enrollment token created");
            (StatusCode::OK, token).into_response()
        }
        Err(e @ StoreError::NameTaken(_)) => text(StatusCode::CONFLICT, e.to_string()),
        Err(e) => store_failed(&st, "creating the token", &e),
    }
}

/// The answer to a store failure while doing `what`: a 503 naming the database when it is
/// out of reach (nothing changed; retry when it is back; redirects and announces go on from
/// memory meanwhile), else a 500.
fn store_failed(st: &AppState, what: &str, e: &StoreError) -> Response {
    if e.is_unavailable() {
        tracing::warn!(error = %e, database = st.store.name(), "{what} refused: the database is unavailable");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{what} failed: the database {} is unavailable ({e}); nothing was changed, retry when it is back (customers and announces are served meanwhile)",
                st.store.name()
            ),
        );
    }
    tracing::error!(error = %e, "{what} failed");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{what} failed; see the server log"),
    )
}

/// Admin endpoints need `Authorization: Bearer <the contents of <data-dir>/admin.token>`.
pub fn require_admin(st: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if fileserve::bearer_matches(headers, &st.admin_token) {
        Ok(())
    } else {
        Err(Box::new(text(
            StatusCode::UNAUTHORIZED,
            "admin token required (see <data-dir>/admin.token)",
        )))
    }
}

/// `POST /admin/volunteers/<name>/<action>`: `revoke` (for good), `drain` (no customers,
/// still syncing), `resume` (undo drain), `release` (lift a quarantine by hand).
pub async fn admin_volunteer(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if let Err(r) = require_admin(&st, &headers) {
        return *r;
    }
    let res = match action.as_str() {
        "revoke" => st.store.revoke(&name).await,
        "drain" => st.store.set_draining(&name, true).await,
        "resume" => st.store.set_draining(&name, false).await,
        "release" => st.store.release(&name).await,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("unknown action `{action}`: expected revoke, drain, resume or release"),
            )
        }
    };
    let rec = match res {
        Ok(r) => r,
        Err(e @ StoreError::NoSuchVolunteer(_)) => {
            return text(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => return store_failed(&st, &action, &e),
    };
    st.apply_standing(&rec);
    tracing::info!(volunteer = %rec.name, id = %rec.id, action = %action, "volunteer standing changed by the admin");
    write(&st.credentials).insert(rec.id.clone(), rec.clone());
    Json(serde_json::json!({
        "name": rec.name, "revoked": rec.revoked, "draining": rec.draining,
        "quarantine": rec.quarantine,
    }))
    .into_response()
}

/// `GET /artifacts/<sha256>.torrent|.sig`: sync artifacts, content-addressed.
pub async fn artifact(State(st): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let Some((sha, ext)) = file.split_once('.') else {
        return text(
            StatusCode::NOT_FOUND,
            "expected <sha256>.torrent or <sha256>.sig",
        );
    };
    let valid = sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let ctype = match ext {
        "torrent" => "application/x-bittorrent",
        "sig" => "application/octet-stream",
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "expected <sha256>.torrent or <sha256>.sig",
            )
        }
    };
    if !valid {
        return text(
            StatusCode::BAD_REQUEST,
            "artifact name must be a lowercase hex SHA-256",
        );
    }
    match tokio::fs::read(crate::publish::artifact_path(&st.config.data_dir, sha, ext)).await {
        Ok(b) => (StatusCode::OK, [(header::CONTENT_TYPE, ctype)], b).into_response(),
        Err(_) => text(StatusCode::NOT_FOUND, format!("no artifact {file}")),
    }
}

/// `GET /metrics`: Prometheus text exposition ([`crate::metrics`]).
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    crate::metrics::response(&st.metrics_sources())
}

/// `GET /api/stats`: what the origin has uploaded, by HTTP and as a BitTorrent seed.
pub async fn stats(State(st): State<Arc<AppState>>) -> Response {
    let mut own = crate::stats::own(&st);
    if st.store.shared() {
        // The mirror's: every live server's counters as it last wrote them, summed.
        match st.store.live_servers(crate::follow::SERVER_TIMEOUT).await {
            Ok(servers) => {
                let mirror = crate::stats::sum(servers.iter().map(|(_, s)| s.as_str()));
                own.insert("mirror".into(), mirror.into());
                own.insert(
                    "servers".into(),
                    servers
                        .into_iter()
                        .map(|(u, _)| u)
                        .collect::<Vec<_>>()
                        .into(),
                );
            }
            Err(e) => {
                own.insert(
                    "mirror".into(),
                    format!(
                        "unknown: the database {} is unavailable ({e})",
                        st.store.name()
                    )
                    .into(),
                );
            }
        }
    }
    Json(own).into_response()
}

#[derive(Deserialize, Debug)]
pub struct BadBytesReport {
    /// The URL that served bytes which did not match the server's digest.
    pub url: String,
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/report` from a customer's proxy: `{"url": …, "reason": …}`. Anyone may report;
/// a report only makes the server check that volunteer's file sooner, so it cannot be used
/// to push an honest volunteer out.
pub async fn report(
    State(st): State<Arc<AppState>>,
    body: Option<Json<BadBytesReport>>,
) -> Response {
    let Some(Json(r)) = body else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"url\": …, \"reason\": …}",
        );
    };
    if r.url.len() > 8192 || r.reason.len() > 1024 {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "report too long");
    }
    // Which volunteer serves that URL, and which file of which repository it is.
    let found = {
        let reg = st.balancer.registry();
        let hit = reg.all().find_map(|v| {
            let base = v.url().trim_end_matches('/');
            let rest = r.url.strip_prefix(base)?.strip_prefix('/')?;
            Some((v.id.clone(), rest.to_string()))
        });
        hit
    };
    let Some((id, rest)) = found else {
        return text(StatusCode::NOT_FOUND, "no volunteer serves that URL");
    };
    let decoded = match fileserve::decode_url_path(&format!("/{rest}")) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("url: {e}")),
    };
    let path = decoded.trim_start_matches('/');
    let Some((repo, rel)) = path.split_once('/') else {
        return text(StatusCode::BAD_REQUEST, "url names no file of a repository");
    };
    if st.repo(repo).is_none_or(|s| !s.files.contains(rel)) {
        return text(StatusCode::NOT_FOUND, "url names no published file");
    }
    tracing::warn!(volunteer = %id, repo, path = rel, reason = %r.reason, "a customer reported bad bytes; checking that volunteer now");
    st.spot.report(&id, repo, rel);
    text(
        StatusCode::ACCEPTED,
        "thanks: the server will check that volunteer",
    )
}

/// `GET /dashboard`: one self-contained page that polls `/api/volunteers`, `/api/stats` and
/// `/health` every two seconds. No build step: the page is in the binary.
pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}
