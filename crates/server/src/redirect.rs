//! The customer path: `GET`/`HEAD /<repo>/<path>`.
//!
//! Small and read-only: look the path up in the current snapshot, ask the registry who may
//! serve those exact bytes, let the policy order them, and answer with a redirect, a Metalink
//! document, a directory index, or the file itself from the origin.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use fileserve::text_response as text;
use fileserve::{encode_path_segment, IndexEntry, ServeOptions};
use manifest::Entry;

use crate::metalink;
use crate::metrics::Outcome;
use crate::policy::Candidate;
use crate::publish::RepoSnapshot;
use crate::state::{lock, AppState};

/// URL prefix that always serves from the origin, never redirects. Repository names cannot
/// start with `.`, so it cannot clash with one.
pub const ORIGIN_PREFIX: &str = ".origin";

fn encode_rel(rel: &str) -> String {
    rel.split('/')
        .map(encode_path_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Where a volunteer serves `repo/rel`.
pub fn volunteer_url(base: &str, repo: &str, rel: &str) -> String {
    format!(
        "{}/{}/{}",
        base.trim_end_matches('/'),
        encode_path_segment(repo),
        encode_rel(rel)
    )
}

pub fn origin_url(public: &str, repo: &str, rel: &str) -> String {
    format!(
        "{public}/{ORIGIN_PREFIX}/{}/{}",
        encode_path_segment(repo),
        encode_rel(rel)
    )
}

/// The volunteers that may serve `entry`, best first (the policy's order).
pub fn choose(
    st: &AppState,
    snap: &RepoSnapshot,
    rel: &str,
    entry: &Entry,
) -> Vec<(String, String)> {
    let now = Instant::now();
    let window = std::time::Duration::from_secs(st.config.redirect.connection_window_secs);
    let mut reg = lock(&st.registry);
    let (eligible, excluded) = reg.candidates(&snap.name, entry.changed_in, snap.generation(), now);
    let oracle = crate::state::read(&st.oracle_live);
    let cands: Vec<Candidate> = eligible
        .iter()
        .map(|v| Candidate {
            id: v.id.clone(),
            load: v.load,
            issued_since_report: v.unreported_within(window, now),
            issued_total: v.issued_total,
            issued_recent: v.issued_within(window, now),
            age: now.saturating_duration_since(v.joined),
            exact: oracle.get(&v.id).copied(),
            observed_speed: reg.observed_speed(&v.id),
        })
        .collect();
    drop(oracle);
    let urls: Vec<(String, String)> = eligible
        .iter()
        .map(|v| (v.id.clone(), v.url.clone()))
        .collect();
    let order = st.policy.order(&cands, &mut rand::thread_rng());
    if tracing::enabled!(tracing::Level::DEBUG) {
        let why: Vec<String> = excluded
            .iter()
            .map(|(v, e)| format!("{}: {e}", v.id))
            .collect();
        tracing::debug!(
            repo = %snap.name, path = rel, changed_in = entry.changed_in,
            policy = st.policy.name(),
            chosen = order.first().map(|&i| cands[i].id.as_str()).unwrap_or("origin"),
            eligible = cands.len(), excluded = ?why,
            "redirect decision"
        );
    }
    let chosen: Vec<(String, String)> = order
        .into_iter()
        .filter_map(|i| urls.get(i).cloned())
        .collect();
    if let Some((id, _)) = chosen.first() {
        reg.note_redirect(id, entry.size, now);
    }
    chosen
}

/// The header that tells a verifying client (`mirrorswarm proxy`) how many bytes to expect
/// after a redirect, so that a lying volunteer cannot make it download without end.
pub const SIZE_HEADER: &str = "x-mirrorswarm-size";

fn digest_headers(entry: &Entry, headers: &mut HeaderMap) {
    headers.insert(SIZE_HEADER, HeaderValue::from(entry.size));
    let b64 = entry.sha256.to_base64();
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256={b64}")) {
        headers.insert("digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{b64}:")) {
        headers.insert("repr-digest", v);
    }
}

fn wants_metalink(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/metalink4+xml"))
}

/// The fallback handler for every path not claimed by the API.
pub async fn customer(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let decoded = match fileserve::customer_path(&method, &uri) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let path = decoded.trim_start_matches('/');
    if path.is_empty() {
        return repo_list(&st, &method);
    }
    let (origin_only, path) = match path.strip_prefix(ORIGIN_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            (true, rest.trim_start_matches('/'))
        }
        _ => (false, path),
    };
    let (repo, rel) = path.split_once('/').unwrap_or((path, ""));
    let Some(snap) = st.repo(repo) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no repository named `{repo}`"),
        );
    };
    if rel.is_empty() && !decoded.ends_with('/') {
        return moved(&format!("/{}/", encode_path_segment(repo)));
    }
    if rel.is_empty() || rel.ends_with('/') {
        return directory(&snap, rel, &method, &uri);
    }
    // `x.meta4` is a Metalink for `x`, unless the repository really has a file called `x.meta4`.
    let (rel, metalink) = match rel.strip_suffix(".meta4") {
        Some(base) if !snap.manifest.files.contains_key(rel) => (base, true),
        _ => (rel, wants_metalink(&headers)),
    };
    let Some(entry) = snap.manifest.files.get(rel).copied() else {
        let dir_prefix = format!("{rel}/");
        if snap
            .manifest
            .files
            .range(dir_prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&dir_prefix))
        {
            return moved(&format!(
                "/{}/{}/",
                encode_path_segment(repo),
                encode_rel(rel)
            ));
        }
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "`{rel}` is not in generation {} of `{repo}`",
                snap.generation()
            ),
        );
    };

    let mut extra = HeaderMap::new();
    digest_headers(&entry, &mut extra);
    let origin = origin_url(&st.public_url, repo, rel);

    if metalink && !origin_only {
        let mut urls: Vec<String> = choose(&st, &snap, rel, &entry)
            .into_iter()
            .map(|(_, base)| volunteer_url(&base, repo, rel))
            .collect();
        urls.push(origin);
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let doc = metalink::render(name, &entry, &urls);
        st.counters.count(Outcome::Metalink);
        // No Digest headers here: they would describe this document, not the file, and
        // aria2c checks them against what it downloaded.
        let body = if method == Method::HEAD {
            String::new()
        } else {
            doc
        };
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/metalink4+xml")],
            body,
        )
            .into_response();
    }

    if !origin_only && entry.size > st.config.redirect.direct_max_bytes {
        let chosen = choose(&st, &snap, rel, &entry);
        if let Some((_, base)) = chosen.first() {
            st.counters.count(Outcome::Volunteer);
            st.counters
                .redirected_bytes
                .fetch_add(entry.size, std::sync::atomic::Ordering::Relaxed);
            return redirect(
                &st,
                repo,
                rel,
                &volunteer_url(base, repo, rel),
                &chosen[1..],
                &origin,
                extra,
            );
        }
    }
    st.counters.count(if origin_only {
        Outcome::OriginRequested
    } else if entry.size <= st.config.redirect.direct_max_bytes {
        Outcome::OriginSmall
    } else {
        Outcome::OriginNoVolunteer
    });
    let resp = serve_origin(&snap, rel, &entry, &method, &headers, extra).await;
    if method == Method::GET
        && (resp.status() == StatusCode::OK || resp.status() == StatusCode::PARTIAL_CONTENT)
    {
        let len = fileserve::declared_length(&resp);
        st.origin_http_bytes
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        // A customer that stops reading must not hold an open file and a task forever.
        return fileserve::with_stall_guard(resp, (), st.config.limits.client_stall());
    }
    resp
}

fn moved(location: &str) -> Response {
    let mut r = text(StatusCode::MOVED_PERMANENTLY, format!("see {location}"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn redirect(
    st: &AppState,
    repo: &str,
    rel: &str,
    target: &str,
    alternatives: &[(String, String)],
    origin: &str,
    mut headers: HeaderMap,
) -> Response {
    let max_alt = st.config.redirect.alternatives;
    let mut links: Vec<String> = alternatives
        .iter()
        .take(max_alt.saturating_sub(1))
        .map(|(_, base)| volunteer_url(base, repo, rel))
        .chain(std::iter::once(origin.to_string()))
        .take(max_alt)
        .enumerate()
        .map(|(i, u)| format!("<{u}>; rel=duplicate; pri={}", i + 1))
        .collect();
    links.push(format!(
        "<{}/{}/{}.meta4>; rel=describedby; type=\"application/metalink4+xml\"",
        st.public_url,
        encode_path_segment(repo),
        encode_rel(rel)
    ));
    if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
        headers.insert(header::LINK, v);
    }
    match HeaderValue::from_str(target) {
        Ok(loc) => headers.insert(header::LOCATION, loc),
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "volunteer URL is not a valid header",
            )
        }
    };
    // The choice depends on live load: never cache it.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut r = text(StatusCode::FOUND, format!("redirecting to {target}"));
    r.headers_mut().extend(headers);
    r
}

async fn serve_origin(
    snap: &RepoSnapshot,
    rel: &str,
    entry: &Entry,
    method: &Method,
    headers: &HeaderMap,
    mut extra: HeaderMap,
) -> Response {
    let file = match fileserve::safe_join(&snap.root, rel) {
        Ok(f) => f,
        Err(e) => return text(e.status(), format!("`{rel}`: {e}")),
    };
    // If the operator changed the file after publishing, its bytes no longer match the
    // published digest: serve it (the origin always answers) but do not vouch for it.
    let unchanged = match (tokio::fs::metadata(&file).await, snap.stat.get(rel)) {
        (Ok(meta), Some(c)) => manifest::scan::stat_key(&meta) == (c.size, c.mtime_ns),
        _ => false,
    };
    let etag = if unchanged {
        Some(entry.sha256.to_hex())
    } else {
        tracing::warn!(repo = %snap.name, path = rel, "file changed on disk since it was published; run `mirrorswarm publish`");
        extra.remove("digest");
        extra.remove("repr-digest");
        None
    };
    let opts = ServeOptions {
        etag,
        content_type: None,
        extra_headers: extra,
    };
    fileserve::serve_file(method, headers, &file, &opts).await
}

fn directory(snap: &RepoSnapshot, rel: &str, method: &Method, uri: &Uri) -> Response {
    let mut entries: Vec<IndexEntry> = Vec::new();
    for (path, e) in snap.manifest.files.range(rel.to_string()..) {
        let Some(rest) = path.strip_prefix(rel) else {
            break;
        };
        match rest.split_once('/') {
            Some((dir, _)) => {
                if entries.last().is_none_or(|l| !(l.is_dir && l.name == dir)) {
                    entries.push(IndexEntry {
                        name: dir.to_string(),
                        is_dir: true,
                        size: 0,
                    });
                }
            }
            None => entries.push(IndexEntry {
                name: rest.to_string(),
                is_dir: false,
                size: e.size,
            }),
        }
    }
    if entries.is_empty() && !rel.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("no directory `{rel}` in `{}`", snap.name),
        );
    }
    html(method, fileserve::render_index(uri.path(), &entries))
}

fn html(method: &Method, page: String) -> Response {
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(page)
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn repo_list(st: &AppState, method: &Method) -> Response {
    let entries: Vec<IndexEntry> = st
        .latest_generations()
        .into_keys()
        .map(|name| IndexEntry {
            name,
            is_dir: true,
            size: 0,
        })
        .collect();
    html(method, fileserve::render_index("/", &entries))
}
