//! The customer path: `GET`/`HEAD /<repo>/<path>`.
//!
//! Small and read-only: look the path up in the current snapshot, ask the registry who may
//! serve those exact bytes, let the policy order them, and answer with a redirect, a Metalink
//! document, a directory index, or the file itself from the origin.

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

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

/// `repo/rel` percent-encoded segment by segment, once per request: every URL the answer
/// names ends with it.
pub fn encoded_repo_path(repo: &str, rel: &str) -> String {
    let mut out = String::with_capacity(repo.len() + rel.len() + 8);
    fileserve::push_encoded_segment(&mut out, repo);
    for seg in rel.split('/') {
        out.push('/');
        fileserve::push_encoded_segment(&mut out, seg);
    }
    out
}

/// Append `base` (without a trailing slash), `/`, and an encoded path.
fn push_url(out: &mut String, base: &str, encoded: &str) {
    out.push_str(base.trim_end_matches('/'));
    out.push('/');
    out.push_str(encoded);
}

/// Where a volunteer serves `repo/rel`.
pub fn volunteer_url(base: &str, repo: &str, rel: &str) -> String {
    let mut out = String::new();
    push_url(&mut out, base, &encoded_repo_path(repo, rel));
    out
}

pub fn origin_url(public: &str, encoded: &str) -> String {
    let mut out = String::with_capacity(public.len() + encoded.len() + 10);
    out.push_str(public);
    out.push('/');
    out.push_str(ORIGIN_PREFIX);
    out.push('/');
    out.push_str(encoded);
    out
}

/// How many eligible volunteers the policy sees per request: all of them in a small pool, a
/// random sample in a large one (best of a sample balances nearly as well as best of all,
/// and keeps a redirect's cost independent of the number of volunteers).
pub const SAMPLE: usize = 8;

/// Base URLs of up to `want` volunteers that may serve `entry`, best first (the policy's
/// order); the first is counted as redirected to.
pub fn choose(
    st: &AppState,
    snap: &RepoSnapshot,
    rel: &str,
    entry: &Entry,
    want: usize,
) -> Vec<Arc<str>> {
    let now = Instant::now();
    let mut rng = rand::thread_rng();
    let mut reg = lock(&st.registry);
    let mut sample = Vec::with_capacity(SAMPLE);
    reg.sample(
        &snap.name,
        entry.changed_in,
        snap.generation(),
        now,
        SAMPLE,
        &mut |n| rng.gen_range(0..n),
        &mut sample,
    );
    // The oracle's models are corrected by exact live counts before it chooses.
    if st.policy.wants_exact_load() {
        let live = crate::state::read(&st.oracle_live);
        for &i in &sample {
            if let Some(&(customers, _)) = live.get(&reg.at(i).id) {
                reg.set_live_customers(i, customers, now);
            }
        }
    }
    let open: Vec<(u32, usize)> = sample.iter().map(|&i| reg.open_redirects(i, now)).collect();
    let cands: Vec<Candidate> = sample
        .iter()
        .zip(&open)
        .map(|(&i, &(unreported, recent))| {
            let v = reg.at(i);
            Candidate {
                load: v.load,
                model: &v.model,
                issued_since_report: unreported,
                issued_total: v.issued_total,
                issued_recent: recent,
                age: now.saturating_duration_since(v.joined),
                observed_speed: reg.observed_speed(&v.id),
            }
        })
        .collect();
    let order = st.policy.order(&cands, entry.size, &mut rng);
    drop(cands);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let (_, excluded) = reg.candidates(&snap.name, entry.changed_in, snap.generation(), now);
        let why: Vec<String> = excluded
            .iter()
            .map(|(v, e)| format!("{}: {e}", v.id))
            .collect();
        tracing::debug!(
            repo = %snap.name, path = rel, changed_in = entry.changed_in,
            policy = st.policy.name(),
            chosen = order.first().map(|&i| reg.at(sample[i]).id.as_str()).unwrap_or("origin"),
            sampled = sample.len(), excluded = ?why,
            "redirect decision"
        );
    }
    let chosen: Vec<Arc<str>> = order
        .iter()
        .take(want)
        .filter_map(|&i| sample.get(i))
        .map(|&at| reg.at(at).url.clone())
        .collect();
    if let Some(&first) = order.first().and_then(|&i| sample.get(i)) {
        reg.note_redirect_at(first, entry.size, now);
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
pub async fn customer(State(st): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    // The request's parts by reference: extracting `HeaderMap` would copy it on every
    // redirect. (A customer's body, if any, is ignored.)
    let (parts, _) = req.into_parts();
    let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
    let decoded = match fileserve::customer_path(method, uri) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let path = decoded.trim_start_matches('/');
    if path.is_empty() {
        return repo_list(&st, method);
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
        return directory(&snap, rel, method, uri);
    }
    // `x.meta4` is a Metalink for `x`, unless the repository really has a file called `x.meta4`.
    let (rel, metalink) = match rel.strip_suffix(".meta4") {
        Some(base) if !snap.files.contains(rel) => (base, true),
        _ => (rel, wants_metalink(headers)),
    };
    let Some(entry) = snap.files.get(rel) else {
        let dir_prefix = format!("{rel}/");
        if snap
            .files
            .range_from(&dir_prefix)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&dir_prefix))
        {
            return moved(&format!("/{}/", encoded_repo_path(repo, rel)));
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
    let encoded = encoded_repo_path(repo, rel);
    let origin = origin_url(&st.public_url, &encoded);

    if metalink && !origin_only {
        let mut urls: Vec<String> = choose(&st, &snap, rel, &entry, SAMPLE)
            .into_iter()
            .map(|base| {
                let mut u = String::new();
                push_url(&mut u, &base, &encoded);
                u
            })
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
        let chosen = choose(
            &st,
            &snap,
            rel,
            &entry,
            st.config.redirect.alternatives.max(1),
        );
        if let Some(base) = chosen.first() {
            st.counters.count(Outcome::Volunteer);
            st.counters
                .redirected_bytes
                .fetch_add(entry.size, std::sync::atomic::Ordering::Relaxed);
            return redirect(&st, &encoded, base, &chosen[1..], &origin, extra);
        }
    }
    st.counters.count(if origin_only {
        Outcome::OriginRequested
    } else if entry.size <= st.config.redirect.direct_max_bytes {
        Outcome::OriginSmall
    } else {
        Outcome::OriginNoVolunteer
    });
    let resp = serve_origin(&snap, rel, &entry, method, headers, extra).await;
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

/// A 302 to `base`, with the alternatives (volunteers, then the origin) as RFC 6249
/// `Link: rel=duplicate` and the Metalink as `rel=describedby`. Built into one buffer per
/// header: this is the request path's hottest answer.
fn redirect(
    st: &AppState,
    encoded: &str,
    base: &str,
    alternatives: &[Arc<str>],
    origin: &str,
    mut headers: HeaderMap,
) -> Response {
    use std::fmt::Write as _;
    let mut target = String::with_capacity(base.len() + encoded.len() + 1);
    push_url(&mut target, base, encoded);
    let max_alt = st.config.redirect.alternatives;
    let mut link = String::with_capacity(96 * (max_alt + 1));
    let volunteers = alternatives.iter().take(max_alt.saturating_sub(1));
    let mut pri = 0;
    for alt in volunteers {
        pri += 1;
        link.push('<');
        push_url(&mut link, alt, encoded);
        let _ = write!(link, ">; rel=duplicate; pri={pri}, ");
    }
    if max_alt > 0 {
        let _ = write!(link, "<{origin}>; rel=duplicate; pri={}, ", pri + 1);
    }
    let _ = write!(
        link,
        "<{}/{encoded}.meta4>; rel=describedby; type=\"application/metalink4+xml\"",
        st.public_url
    );
    if let Ok(v) = HeaderValue::from_str(&link) {
        headers.insert(header::LINK, v);
    }
    match HeaderValue::from_str(&target) {
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
    target.insert_str(0, "redirecting to ");
    let mut r = text(StatusCode::FOUND, target);
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
    let file = match fileserve::join_listed(&snap.root, rel) {
        Ok(f) => f,
        Err(e) => return text(e.status(), format!("`{rel}`: {e}")),
    };
    // If the operator changed the file after publishing, its bytes no longer match the
    // published digest: serve it (the origin always answers) but do not vouch for it.
    let unchanged = match (std::fs::metadata(&file), snap.files.stat(rel)) {
        (Ok(meta), Some(published)) => manifest::scan::stat_key(&meta) == published,
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
    for (path, e) in snap.files.range_from(rel) {
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
