//! Serving customers: only verified files, within the admin's connection cap.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fileserve::text_response as text;
use fileserve::ServeOptions;

use crate::VolunteerState;

/// Counts one active customer download for as long as it lives.
pub struct ActiveGuard {
    active: Arc<AtomicU32>,
    feed: Option<Arc<crate::oracle_feed::OracleFeed>>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let now = self.active.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if let Some(f) = &self.feed {
            f.send(now);
        }
    }
}

/// Take a slot if fewer than `max` are taken.
fn try_acquire(
    active: &Arc<AtomicU32>,
    max: u32,
    feed: Option<Arc<crate::oracle_feed::OracleFeed>>,
) -> Option<ActiveGuard> {
    let before = active
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
    if let Some(f) = &feed {
        f.send(before + 1);
    }
    Some(ActiveGuard {
        active: active.clone(),
        feed,
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

/// Why a customer's request was not served; every answer says why.
#[derive(Debug)]
enum Refusal {
    NotMirrored(String),
    NotVerified {
        repo: String,
        rel: String,
    },
    /// Not the bytes that verified (or gone): out of service until it verifies again.
    Changed(String),
    Paused,
    Busy,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NotMirrored(_) | Refusal::NotVerified { .. } | Refusal::Changed(_) => {
                StatusCode::NOT_FOUND
            }
            Refusal::Paused | Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::NotMirrored(repo) => format!("this volunteer does not mirror `{repo}`"),
            Refusal::NotVerified { repo, rel } => {
                format!("`{rel}` is not a verified file of `{repo}` here")
            }
            Refusal::Changed(rel) => format!("`{rel}` changed on disk and is being re-verified"),
            Refusal::Paused => {
                "this volunteer is paused by its admin; the mirror server has other sources".into()
            }
            Refusal::Busy => "too many customers right now; retry shortly".into(),
        }
    }

    fn retry_after(&self) -> Option<&'static str> {
        match self {
            Refusal::Paused => Some("60"),
            Refusal::Busy => Some("2"),
            _ => None,
        }
    }

    fn into_response(self) -> Response {
        let mut r = text(self.status(), self.message());
        if let Some(secs) = self.retry_after() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        r
    }

    fn write(&self, reply: &mut fileserve::fast::Reply<'_>) {
        let status = self.status();
        reply.status(status.as_u16(), status.canonical_reason().unwrap_or(""));
        reply.header("content-type", b"text/plain; charset=utf-8");
        if let Some(secs) = self.retry_after() {
            reply.header("retry-after", secs.as_bytes());
        }
        let mut body = self.message();
        body.push('\n');
        reply.body(body.as_bytes());
    }
}

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
fn grant(st: &VolunteerState, decoded: &str) -> Result<Grant, Refusal> {
    let path = decoded.trim_start_matches('/');
    let (repo, rel) = path.split_once('/').unwrap_or((path, ""));
    let Some(mirror) = st.mirrors.get(repo) else {
        return Err(Refusal::NotMirrored(repo.to_string()));
    };
    let view = mirror.view();
    let Some(verified) = view.servable.get(rel).copied() else {
        return Err(Refusal::NotVerified {
            repo: repo.to_string(),
            rel: rel.to_string(),
        });
    };
    // The file must still be what verified, checked on the handle that is sent from: opened
    // beneath the mirror's directory (a link swapped in that leads out of it is refused),
    // a regular file of the size and mtime that verified. Anything else (an admin copying in
    // a new version, or tampering) takes it out of service until it verifies again.
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
    let (file, meta) = match opened {
        Ok(o) => o,
        Err(why) => {
            tracing::warn!(
                repo,
                path = rel,
                reason = %why,
                "file on disk is not what verified; not serving it"
            );
            st.rescan_now.notify_one();
            st.refused_changed.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Changed(rel.to_string()));
        }
    };
    if st.paused.load(Ordering::Relaxed) {
        return Err(Refusal::Paused);
    }
    let Some(guard) = try_acquire(
        &st.active,
        st.max_connections.load(Ordering::Relaxed),
        st.oracle_feed.clone(),
    ) else {
        st.refused_busy.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::Busy);
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
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let decoded = match fileserve::customer_path(&method, &uri) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let g = match grant(&st, &decoded) {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(),
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
    let g = match grant(st, &decoded) {
        Ok(g) => g,
        Err(refusal) => {
            refusal.write(reply);
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
refused (busy): {busy}<br>refused (file changed on disk): {changed}</p>\
<table><tr><th>repository</th><th>directory</th><th>held generation</th><th>newest</th>\
<th>files missing or different</th><th>state</th></tr>{rows}</table></body></html>",
        name = esc(&st.credential.name),
        server = esc(st.config.server.as_deref().unwrap_or("?")),
        active = st.active.load(Ordering::Acquire),
        max = st.max_connections.load(Ordering::Relaxed),
        served = st.served.load(Ordering::Relaxed),
        up = st.uploaded.load(Ordering::Relaxed),
        busy = st.refused_busy.load(Ordering::Relaxed),
        changed = st.refused_changed.load(Ordering::Relaxed),
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
    let simple: [(&str, &str, &str, u64); 8] = [
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
            "mirrorswarm_volunteer_refused_busy_total",
            "counter",
            "Customers refused with 503: every slot taken.",
            st.refused_busy.load(Ordering::Relaxed),
        ),
        (
            "mirrorswarm_volunteer_verification_failures_total",
            "counter",
            "Requests for a file that changed on disk since it verified (not served).",
            st.refused_changed.load(Ordering::Relaxed),
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
