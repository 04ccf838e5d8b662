//! Serving customers: only verified files, within the admin's connection cap.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fileserve::text_response as text;
use fileserve::ServeOptions;

use crate::companion::Companion;
use crate::VolunteerState;

/// Counts one active customer download for as long as it lives.
pub struct ActiveGuard {
    active: Arc<AtomicU32>,
    /// Told of every change of the count (see [`crate::companion`]).
    watcher: Option<Arc<dyn Companion>>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let now = self.active.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if let Some(w) = &self.watcher {
            w.customers(now);
        }
    }
}

/// Take a slot if fewer than `max` are taken.
fn try_acquire(
    active: &Arc<AtomicU32>,
    max: u32,
    watcher: Option<Arc<dyn Companion>>,
) -> Option<ActiveGuard> {
    let before = active
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
    if let Some(w) = &watcher {
        w.customers(before + 1);
    }
    Some(ActiveGuard {
        active: active.clone(),
        watcher,
    })
}

pub async fn health(State(st): State<Arc<VolunteerState>>) -> Response {
    let mut mirrors = serde_json::Map::new();
    for (name, m) in &st.mirrors {
        let v = m.view();
        mirrors.insert(
            name.clone(),
            serde_json::json!({ "held": v.held, "latest": v.latest, "servable_files": v.servable.len(), "missing_files": v.missing.len() }),
        );
    }
    Json(serde_json::json!({
        "status": "ok",
        "name": st.credential.name,
        "active_connections": st.active.load(Ordering::Acquire),
        "served_requests": st.served.load(Ordering::Relaxed),
        "uploaded_bytes": st.uploaded.load(Ordering::Relaxed),
        "sync_uploaded_bytes": st.sync_uploaded_total(),
        "max_connections": st.max_connections.load(Ordering::Relaxed),
        "paused": st.paused.load(Ordering::Relaxed),
        "upload_bps": st.uplink.bps(),
        "mirrors": mirrors,
    }))
    .into_response()
}

/// Why a published file cannot be served here now. The customer is sent back to the
/// origin, which always has it: a customer the server sent here must get its file, not a
/// 404 or a 503 it may not retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounce {
    /// Not the bytes that verified (or gone): out of service until it verifies again.
    Changed,
    /// Listed by the manifest, not verified here (yet, or any more).
    Missing,
    /// Paused by its admin.
    Paused,
    /// Every download slot is taken.
    Busy,
}

impl Bounce {
    pub const ALL: [Bounce; 4] = [
        Bounce::Changed,
        Bounce::Missing,
        Bounce::Paused,
        Bounce::Busy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bounce::Changed => "changed",
            Bounce::Missing => "missing",
            Bounce::Paused => "paused",
            Bounce::Busy => "busy",
        }
    }
}

/// Bounces counted by reason, for `/metrics` and the status page.
#[derive(Default)]
pub struct Bounces([AtomicU64; 4]);

impl Bounces {
    pub fn count(&self, b: Bounce) {
        self.0[b as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, b: Bounce) -> u64 {
        self.0[b as usize].load(Ordering::Relaxed)
    }
}

/// Why a customer's request was not served; every answer says why.
#[derive(Debug)]
enum Refusal {
    NotMirrored(String),
    /// Not a file of any generation this volunteer knows.
    NotPublished {
        repo: String,
        rel: String,
    },
    /// A published file this volunteer cannot serve now: back to the origin (over HTTPS if
    /// the customer came so, `secure`).
    Bounced {
        repo: String,
        rel: String,
        secure: bool,
    },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NotMirrored(_) | Refusal::NotPublished { .. } => StatusCode::NOT_FOUND,
            Refusal::Bounced { .. } => StatusCode::FOUND,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::NotMirrored(repo) => format!("this volunteer does not mirror `{repo}`"),
            Refusal::NotPublished { repo, rel } => {
                format!("`{rel}` is not a published file of `{repo}`")
            }
            Refusal::Bounced { .. } => String::new(),
        }
    }

    /// Where a bounced customer goes: the server's origin for the same file (of a server
    /// of the mirror that answered the last announce, when the servers named themselves).
    fn location(&self, st: &VolunteerState) -> Option<String> {
        let Refusal::Bounced { repo, rel, secure } = self else {
            return None;
        };
        let named = st.servers.answering_named();
        let base = match (&st.origin_tls_base, secure) {
            // Never from https to http: apt refuses it.
            (Some(tls), true) => tls.as_str(),
            _ => named.as_deref().unwrap_or(&st.origin_base),
        };
        let mut to = String::with_capacity(base.len() + rel.len() + 48);
        to.push_str(base);
        to.push_str("/.origin/");
        fileserve::push_encoded_segment(&mut to, repo);
        for seg in rel.split('/') {
            to.push('/');
            fileserve::push_encoded_segment(&mut to, seg);
        }
        to.push('?');
        to.push_str(BOUNCED_BY_PARAM);
        to.push('=');
        to.push_str(&st.credential.name);
        Some(to)
    }

    fn into_response(self, st: &VolunteerState) -> Response {
        let mut r = text(self.status(), self.message());
        if let Some(to) = self
            .location(st)
            .and_then(|l| HeaderValue::from_str(&l).ok())
        {
            r.headers_mut().insert(header::LOCATION, to);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        r
    }

    fn write(&self, st: &VolunteerState, reply: &mut fileserve::fast::Reply<'_>) {
        let status = self.status();
        reply.status(status.as_u16(), status.canonical_reason().unwrap_or(""));
        if let Some(to) = self.location(st) {
            reply.header("location", to.as_bytes());
            reply.header("cache-control", b"no-store");
            reply.body(b"");
            return;
        }
        reply.header("content-type", b"text/plain; charset=utf-8");
        let mut body = self.message();
        body.push('\n');
        reply.body(body.as_bytes());
    }
}

/// The query parameter the server counts bounces by (`redirect::BOUNCED_BY_PARAM` there).
const BOUNCED_BY_PARAM: &str = "bounced-by";

/// Why a verified file is not sent: what is on disk under its name now is not what verified.
#[derive(Debug, thiserror::Error)]
enum NotAsVerified {
    #[error(transparent)]
    Open(fileserve::OpenError),
    #[error("modified since it verified")]
    Modified,
}

/// A download that passed every check: the open file, what it verified as, and its slot.
struct Grant {
    file: std::fs::File,
    meta: std::fs::Metadata,
    content_type: &'static str,
    etag: String,
    guard: ActiveGuard,
}

impl Grant {
    fn options(&self) -> ServeOptions {
        ServeOptions {
            etag: Some(self.etag.clone()),
            content_type: Some(self.content_type),
            extra_headers: HeaderMap::new(),
        }
    }
}

/// The name `serve_open` and `fast_whole_file` take for a file's type: none, since a
/// [`Grant`]'s options give it.
const TYPE_GIVEN: &str = "";

/// Check a customer's request for `decoded` (a strictly decoded path) and take a download
/// slot for it: only verified files whose bytes are still those that verified, and only if
/// the admin has not paused this volunteer and a slot is free. Shared by the router's
/// handler and the fast path.
fn grant(st: &VolunteerState, decoded: &str, secure: bool) -> Result<Grant, Refusal> {
    let path = decoded.trim_start_matches('/');
    let (repo, rel) = path.split_once('/').unwrap_or((path, ""));
    let Some(mirror) = st.mirrors.get(repo) else {
        return Err(Refusal::NotMirrored(repo.to_string()));
    };
    let bounce = |why: Bounce| {
        tracing::debug!(
            repo,
            path = rel,
            why = why.name(),
            "customer sent back to the origin"
        );
        st.bounced(why);
        Refusal::Bounced {
            repo: repo.to_string(),
            rel: rel.to_string(),
            secure,
        }
    };
    let view = mirror.view();
    let Some(verified) = view.servable.get(rel).copied() else {
        if view.publishes(rel) {
            // The server thinks it is here: tell it otherwise, now.
            return Err(bounce(Bounce::Missing));
        }
        return Err(Refusal::NotPublished {
            repo: repo.to_string(),
            rel: rel.to_string(),
        });
    };
    // The file must still be what verified, checked on the handle that is sent from: opened
    // beneath the mirror's directory (a link swapped in that leads out of it is refused),
    // a regular file of the size and mtime that verified. Anything else (an admin copying in
    // a new version, or tampering) takes it out of service until it verifies again, and its
    // customer goes to the origin.
    let opened = match &view.root {
        Some(root) => root
            .open_sized(rel, verified.size)
            .map_err(NotAsVerified::Open)
            .and_then(|(f, meta)| {
                let unchanged = manifest::scan::stat_key(&meta).1 == verified.mtime_ns;
                unchanged
                    .then_some((f, meta))
                    .ok_or(NotAsVerified::Modified)
            }),
        None => Err(NotAsVerified::Open(fileserve::OpenError::NotFound)),
    };
    drop(view);
    let (file, meta) = match opened {
        Ok(o) => o,
        Err(why) => {
            tracing::warn!(
                repo,
                path = rel,
                reason = %why,
                "file on disk is not what verified; sending its customer to the origin and re-verifying"
            );
            st.rescan_now.notify_one();
            return Err(bounce(Bounce::Changed));
        }
    };
    if st.paused.load(Ordering::Relaxed) {
        return Err(bounce(Bounce::Paused));
    }
    let Some(guard) = try_acquire(
        &st.active,
        st.max_connections.load(Ordering::Relaxed),
        st.companion.clone(),
    ) else {
        return Err(bounce(Bounce::Busy));
    };
    Ok(Grant {
        file,
        meta,
        content_type: fileserve::content_type_for(std::path::Path::new(rel)),
        etag: verified.sha256.to_hex(),
        guard,
    })
}

pub async fn customer(
    State(st): State<Arc<VolunteerState>>,
    secure: Option<axum::Extension<fileserve::listen::Secure>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let decoded = match fileserve::customer_path(&method, &uri) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let g = match grant(&st, &decoded, secure.is_some()) {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(&st),
    };
    let opts = g.options();
    let resp = fileserve::serve_open(
        &method,
        &headers,
        g.file,
        &g.meta,
        std::path::Path::new(TYPE_GIVEN),
        &opts,
    );
    if method == Method::GET && resp.status().is_success() {
        let len = fileserve::declared_length(&resp);
        st.uploaded.fetch_add(len, Ordering::Relaxed);
        st.served.fetch_add(1, Ordering::Relaxed);
    }
    let resp = match st.uplink.current() {
        Some(b) => resp.map(|body| crate::limit::throttle(body, b)),
        None => resp,
    };
    // A customer that stops reading must not keep its slot.
    fileserve::with_stall_guard(resp, g.guard, st.config.limits.client_stall())
}

/// The fast path's share of [`customer`]: a plain `GET` or `HEAD` of a whole file, sent with
/// `sendfile` (paced by the uplink, if it has a limit). Ranges and conditional requests go
/// to the router.
pub fn fast_customer(
    st: &VolunteerState,
    req: &fileserve::fast::Request<'_>,
    reply: &mut fileserve::fast::Reply<'_>,
) -> fileserve::fast::Answer {
    use fileserve::fast::Answer;
    if !fileserve::is_plain_file_request(req) {
        return Answer::Pass;
    }
    let Ok(decoded) = fileserve::decode_url_path_cow(req.path()) else {
        return Answer::Pass;
    };
    let g = match grant(st, &decoded, req.secure) {
        Ok(g) => g,
        Err(refusal) => {
            refusal.write(st, reply);
            return Answer::Done;
        }
    };
    if !reply.head_only() {
        st.uploaded.fetch_add(g.meta.len(), Ordering::Relaxed);
        st.served.fetch_add(1, Ordering::Relaxed);
    }
    let opts = g.options();
    let pace = st
        .uplink
        .current()
        .map(|b| b as Arc<dyn fileserve::fast::Pace>);
    fileserve::fast_whole_file(
        reply,
        g.file,
        &g.meta,
        std::path::Path::new(TYPE_GIVEN),
        &opts,
        Box::new(g.guard),
        pace,
    )
}

/// `GET /status`: a small page for the volunteer's admin, readable in any browser.
pub async fn status_page(State(st): State<Arc<VolunteerState>>) -> Response {
    use std::fmt::Write as _;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut rows = String::new();
    for (repo, m) in &st.mirrors {
        let v = m.view();
        let state = if v.held == 0 {
            "not serving yet"
        } else if v.held < v.latest {
            "behind"
        } else {
            "current"
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(repo),
            esc(&m.dir.display().to_string()),
            v.held,
            v.latest,
            v.missing.len(),
            state
        );
    }
    let sync = st.sync_uploaded_total();
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mirrorswarm volunteer {name}</title>\
<style>body{{font:14px system-ui,sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
td,th{{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left}}</style></head><body>\
<h1>volunteer {name}</h1><p>server: {server}<br>customers now: {active} of {max}<br>\
downloads served: {served}<br>bytes to customers: {up}<br>bytes to other volunteers: {sync}<br>\
sent back to the origin: {busy} busy, {paused} while paused, {changed} changed on disk, \
{missing} not held</p>\
<table><tr><th>repository</th><th>directory</th><th>held generation</th><th>newest</th>\
<th>files missing or different</th><th>state</th></tr>{rows}</table></body></html>",
        name = esc(&st.credential.name),
        server = esc(st.config.server.as_deref().unwrap_or("?")),
        active = st.active.load(Ordering::Acquire),
        max = st.max_connections.load(Ordering::Relaxed),
        served = st.served.load(Ordering::Relaxed),
        up = st.uploaded.load(Ordering::Relaxed),
        busy = st.bounces.get(Bounce::Busy),
        paused = st.bounces.get(Bounce::Paused),
        changed = st.bounces.get(Bounce::Changed),
        missing = st.bounces.get(Bounce::Missing),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text exposition of this volunteer.
pub async fn metrics(State(st): State<Arc<VolunteerState>>) -> Response {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2048);
    let name = st.credential.name.replace(['\\', '"', '\n'], "_");
    let sync = st.sync_uploaded_total();
    let simple: [(&str, &str, &str, u64); 7] = [
        (
            "mirrorswarm_volunteer_active_connections",
            "gauge",
            "Customer downloads in progress.",
            u64::from(st.active.load(Ordering::Acquire)),
        ),
        (
            "mirrorswarm_volunteer_max_connections",
            "gauge",
            "Customer downloads accepted at once.",
            u64::from(st.config.max_connections),
        ),
        (
            "mirrorswarm_volunteer_served_requests_total",
            "counter",
            "Customer downloads started.",
            st.served.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_volunteer_uploaded_bytes_total",
            "counter",
            "Bytes sent to customers.",
            st.uploaded.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_volunteer_sync_uploaded_bytes_total",
            "counter",
            "Bytes sent to other volunteers for syncing.",
            sync,
        ),
        (
            "mirrorswarm_volunteer_verification_failures_total",
            "counter",
            "Requests for a file that changed on disk since it verified (sent to the origin).",
            st.bounces.get(Bounce::Changed),
        ),
        (
            "mirrorswarm_volunteer_upload_limit_bytes_per_second",
            "gauge",
            "Configured uplink (0: none).",
            st.config.upload_bps.unwrap_or(0),
        ),
    ];
    for (metric, kind, help, v) in simple {
        let _ = writeln!(
            out,
            "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric}{{volunteer=\"{name}\"}} {v}"
        );
    }
    let _ = writeln!(out, "# HELP mirrorswarm_volunteer_bounced_total Customers sent back to the origin because a published file could not be served here, by why.\n# TYPE mirrorswarm_volunteer_bounced_total counter");
    for b in Bounce::ALL {
        let _ = writeln!(
            out,
            "mirrorswarm_volunteer_bounced_total{{volunteer=\"{name}\",reason=\"{}\"}} {}",
            b.name(),
            st.bounces.get(b)
        );
    }
    let _ = writeln!(out, "# HELP mirrorswarm_volunteer_held_generation Generation fully held and verified.\n# TYPE mirrorswarm_volunteer_held_generation gauge");
    let mut per_repo = Vec::new();
    for (repo, m) in &st.mirrors {
        let v = m.view();
        per_repo.push((repo.clone(), v.held, v.latest, v.missing.len()));
    }
    for (repo, held, _, _) in &per_repo {
        let _ = writeln!(
            out,
            "mirrorswarm_volunteer_held_generation{{volunteer=\"{name}\",repo=\"{repo}\"}} {held}"
        );
    }
    let _ = writeln!(out, "# HELP mirrorswarm_volunteer_latest_generation Newest generation published, as far as it knows.\n# TYPE mirrorswarm_volunteer_latest_generation gauge");
    for (repo, _, latest, _) in &per_repo {
        let _ = writeln!(out, "mirrorswarm_volunteer_latest_generation{{volunteer=\"{name}\",repo=\"{repo}\"}} {latest}");
    }
    let _ = writeln!(out, "# HELP mirrorswarm_volunteer_missing_files Files of the newest generation missing or different here.\n# TYPE mirrorswarm_volunteer_missing_files gauge");
    for (repo, _, _, missing) in &per_repo {
        let _ = writeln!(
            out,
            "mirrorswarm_volunteer_missing_files{{volunteer=\"{name}\",repo=\"{repo}\"}} {missing}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Bytes uploaded, for the reported upload rate.
pub fn uploaded(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_released() {
        let active = Arc::new(AtomicU32::new(0));
        let a = try_acquire(&active, 2, None).unwrap();
        let _b = try_acquire(&active, 2, None).unwrap();
        assert!(try_acquire(&active, 2, None).is_none());
        drop(a);
        assert!(try_acquire(&active, 2, None).is_some());
    }
}
