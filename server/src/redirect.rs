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
use fileserve::protocol::{DIGEST, REPR_DIGEST, SIZE_HEADER, WANT_DIGEST, WANT_REPR_DIGEST};
use fileserve::text_response as text;
use fileserve::{encode_path_segment, fast, IndexEntry, ServeOptions};
use manifest::Entry;

use config::MetalinkHeaders;

use crate::counters::Outcome;
use crate::file_index::Slot;
use crate::kept;
use crate::metalink;
use crate::mirrorlist;
use crate::publish::RepoSnapshot;
use crate::state::AppState;
use crate::urls::{
    encoded_repo_path, origin_url, push_encoded_repo_path, push_origin_url, push_url, ORIGIN_PREFIX,
};
use balance::{Ask, Chosen, Customer, PathFacts};

/// Volunteers a Metalink document lists at most (before the origin).
pub const METALINK_SOURCES: usize = 8;

/// What the balancer needs to know of `entry`, the file `rel` of `snap`.
fn path_facts<'a>(snap: &'a RepoSnapshot, rel: &'a str, entry: &Entry) -> PathFacts<'a> {
    PathFacts {
        repo: &snap.name,
        rel,
        changed_in: entry.changed_in,
        current: snap.bytes_through(rel, entry),
    }
}

/// How many volunteers a redirect names: the alternatives with the Metalink/HTTP headers,
/// otherwise only the best (from a sample as large).
fn volunteers_named(st: &AppState, with_metalink: bool) -> usize {
    if with_metalink {
        st.config.redirect.alternatives.max(1)
    } else {
        1
    }
}

/// What the fast path reuses from one redirect to the next on a thread.
#[derive(Default)]
struct Scratch {
    chosen: Chosen,
    /// The request's `repo/rel`, percent-encoded.
    encoded: String,
    /// Each header value in turn, and the body.
    value: String,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The body bytes the answer to a request for `entry` will carry, wherever it is sent from:
/// none for `HEAD`; for a `Range` of one satisfiable range, that range's (unless an
/// `If-Range` names other validators than the file's strong ETag, its SHA-256, which every
/// mirror gives it: then the whole file may come); else the whole file. What a redirect is
/// counted as, in the offload and in the load the volunteer is expected to carry. The
/// origin counts what it sends from its answer's own `content-length`.
fn body_bytes<'a>(
    head: bool,
    header: impl Fn(&'static str) -> Option<&'a [u8]>,
    entry: &Entry,
) -> u64 {
    if head {
        return 0;
    }
    let Some(range) = header("range").and_then(|v| std::str::from_utf8(v).ok()) else {
        return entry.size;
    };
    if let Some(tag) = header("if-range") {
        let hex = entry.sha256.to_hex();
        let ours = tag.len() == hex.len() + 2
            && tag.starts_with(b"\"")
            && tag.ends_with(b"\"")
            && &tag[1..tag.len() - 1] == hex.as_bytes();
        if !ours {
            return entry.size;
        }
    }
    match fileserve::parse_range(range, entry.size) {
        fileserve::RangeOutcome::Full => entry.size,
        fileserve::RangeOutcome::Partial(start, end) => end - start + 1,
        fileserve::RangeOutcome::Unsatisfiable => 0,
    }
}

fn digest_headers(entry: &Entry, headers: &mut HeaderMap) {
    headers.insert(SIZE_HEADER, HeaderValue::from(entry.size));
    let b64 = entry.sha256.to_base64();
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256={b64}")) {
        headers.insert(DIGEST, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{b64}:")) {
        headers.insert(REPR_DIGEST, v);
    }
}

/// Whether a client asked for a digest, by either header (RFC 3230's `Want-Digest`, RFC
/// 9530's `Want-Repr-Digest`, whatever their values): the Metalink/HTTP clients do, and only
/// they read what [`Redirect`] adds for them (see [`MetalinkHeaders`]).
fn asks_for_digest<'a>(mut header: impl FnMut(&'static str) -> Option<&'a [u8]>) -> bool {
    [WANT_DIGEST, WANT_REPR_DIGEST]
        .iter()
        .any(|name| header(name).is_some())
}

/// Whether a redirect answering a request carries the Metalink/HTTP headers.
fn metalink_headers(st: &AppState, asked: impl FnOnce() -> bool) -> bool {
    match st.config.redirect.metalink_headers {
        MetalinkHeaders::Always => true,
        MetalinkHeaders::WhenAsked => asked(),
    }
}

fn wants_metalink<'a>(mut accept: impl Iterator<Item = &'a [u8]>) -> bool {
    accept.any(|v| {
        v.windows(METALINK_TYPE.len())
            .any(|w| w == METALINK_TYPE.as_bytes())
    })
}

const METALINK_TYPE: &str = "application/metalink4+xml";

/// What a customer's request path names, before anything is chosen or counted. Shared by the
/// router's handler and the fast path, so both read a path the same way.
/// `S` holds the snapshot: an `Arc` the router's handler keeps across its awaits, or a
/// reference into the serving thread's copy on the fast path.
enum Resolved<'a, S> {
    RepoList,
    /// A directory named without its trailing slash, or a file's directory: where to go.
    Moved(String),
    Directory(S, &'a str),
    NotFound(String),
    File(FileRequest<'a, S>),
}

struct FileRequest<'a, S> {
    snap: S,
    repo: &'a str,
    rel: &'a str,
    entry: Entry,
    /// Where a customer's request for it is counted ([`Self::count_hit`]).
    slot: Slot,
    /// Asked for at `/.origin/…`: never redirected.
    origin_only: bool,
    /// A Metalink document is wanted (`x.meta4`, or `Accept`).
    metalink: bool,
}

/// Read `decoded` (a strictly decoded request path) against the published snapshots, which
/// `snapshot` looks up by repository name. `accepts_metalink` is asked only for a file that
/// exists.
fn resolve<'a, S: std::ops::Deref<Target = RepoSnapshot>>(
    snapshot: impl FnOnce(&str) -> Option<S>,
    decoded: &'a str,
    accepts_metalink: impl FnOnce() -> bool,
) -> Resolved<'a, S> {
    let path = decoded.trim_start_matches('/');
    if path.is_empty() {
        return Resolved::RepoList;
    }
    let (origin_only, path) = match path.strip_prefix(ORIGIN_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            (true, rest.trim_start_matches('/'))
        }
        _ => (false, path),
    };
    // By byte: `split_once` with a char ran str's general searcher.
    let (repo, rel) = match path.bytes().position(|b| b == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (path, ""),
    };
    let Some(snap) = snapshot(repo) else {
        return Resolved::NotFound(format!("no repository named `{repo}`"));
    };
    if rel.is_empty() && !decoded.ends_with('/') {
        return Resolved::Moved(format!("/{}/", encode_path_segment(repo)));
    }
    if rel.is_empty() || rel.ends_with('/') {
        return Resolved::Directory(snap, rel);
    }
    // `x.meta4` is a Metalink for `x`, unless the repository really has a file called `x.meta4`.
    let (rel, metalink) = match rel.strip_suffix(".meta4") {
        Some(base) if !snap.files.contains(rel) => (base, true),
        _ => (rel, false),
    };
    let Some((entry, slot)) = snap.files.get_with_slot(rel) else {
        let dir_prefix = format!("{rel}/");
        if snap
            .files
            .range_from(&dir_prefix)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&dir_prefix))
        {
            return Resolved::Moved(format!("/{}/", encoded_repo_path(repo, rel)));
        }
        return Resolved::NotFound(format!(
            "`{rel}` is not in generation {} of `{repo}`",
            snap.generation()
        ));
    };
    let metalink = metalink || accepts_metalink();
    Resolved::File(FileRequest {
        snap,
        repo,
        rel,
        entry,
        slot,
        origin_only,
        metalink,
    })
}

impl<S: std::ops::Deref<Target = RepoSnapshot>> FileRequest<'_, S> {
    /// Count the request in the file's popularity: once per customer's request, where its
    /// answer is decided (the fast path's redirect, or the router's answer, never both). A
    /// request at `/.origin/…` is a bounce or a last resort, already counted where it began.
    fn count_hit(&self) {
        if !self.origin_only {
            self.snap.files.count_hit(self.slot);
        }
    }

    /// Whether this request is for a volunteer, if one may serve it.
    fn wants_volunteer(&self, st: &AppState) -> bool {
        !self.origin_only && !self.metalink && self.entry.size > st.config.redirect.direct_max_bytes
    }

    /// A redirect to a volunteer chosen for it, counted as `bytes` offloaded (what the
    /// customer will draw there, [`body_bytes`]); `None` if no volunteer may serve it. What
    /// it names is kept in `chosen` and `encoded`.
    fn redirect<'s>(
        &self,
        st: &'s AppState,
        (now, bytes): (Instant, u64),
        customer: &Customer,
        chosen: &'s mut Chosen,
        encoded: &'s mut String,
        with_metalink: bool,
    ) -> Option<Redirect<'s>> {
        let ask = Ask {
            sources: volunteers_named(st, with_metalink),
            bytes,
        };
        st.balancer.choose(
            path_facts(&self.snap, self.rel, &self.entry),
            ask,
            Some(customer),
            now,
            chosen,
        );
        if chosen.is_empty() {
            return None;
        }
        encoded.clear();
        push_encoded_repo_path(encoded, self.repo, self.rel);
        st.counters.count(Outcome::Volunteer);
        st.counters.redirected_bytes.add(bytes);
        Some(Redirect::new(
            st,
            st.base_for(customer.reach),
            encoded,
            chosen,
            &self.entry,
            with_metalink,
        ))
    }
}

/// The fallback handler for every path not claimed by the API.
pub async fn customer(State(st): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    // The request's parts by reference: extracting `HeaderMap` would copy it on every
    // redirect. (A customer's body, if any, is ignored.)
    let (parts, _) = req.into_parts();
    let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
    let secure = st.location.came_secure(
        peer,
        parts
            .extensions
            .get::<fileserve::listen::Secure>()
            .is_some(),
        headers.get_all("forwarded").iter().map(|v| v.as_bytes()),
        headers
            .get_all("x-forwarded-proto")
            .iter()
            .map(|v| v.as_bytes()),
    );
    let customer = st.location.customer(
        peer,
        secure,
        headers.get_all("forwarded").iter().map(|v| v.as_bytes()),
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes()),
    );
    let decoded = match fileserve::customer_path(method, uri) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let accept = || wants_metalink(headers.get_all(header::ACCEPT).iter().map(|v| v.as_bytes()));
    let pulled = pulled_generation(uri);
    let snapshot = |repo: &str| {
        let live = st.repo(repo)?;
        // Only a pull naming the staged generation reads it.
        Some(match (pulled, &live.staged) {
            (Some(g), Some(s)) if s.snap.generation == g => s.snap.clone(),
            _ => live,
        })
    };
    let file = match resolve(snapshot, &decoded, accept) {
        Resolved::RepoList => return repo_list(&st, method),
        Resolved::Moved(to) => return moved(&to),
        Resolved::Directory(snap, rel) => return directory(&snap, rel, method, uri),
        Resolved::NotFound(why) => return text(StatusCode::NOT_FOUND, why),
        Resolved::File(f) => f,
    };
    if mirrorlist::asked(uri.query()) && !file.origin_only {
        let subject = mirrorlist::Subject {
            facts: path_facts(&file.snap, file.rel, &file.entry),
            size: file.entry.size,
            generation: file.snap.generation(),
            origin: origin_url(
                st.base_for(customer.reach),
                &encoded_repo_path(file.repo, file.rel),
            ),
            origin_sends_it: file.entry.size <= st.config.redirect.direct_max_bytes,
        };
        return mirrorlist::answer(
            &st,
            &subject,
            customer,
            uri.query().unwrap_or_default(),
            headers,
        );
    }
    if pulled.is_none() {
        file.count_hit();
    }
    let entry = &file.entry;
    let mut extra = HeaderMap::new();
    digest_headers(entry, &mut extra);

    if file.metalink && !file.origin_only {
        let encoded = encoded_repo_path(file.repo, file.rel);
        let mut chosen = Chosen::default();
        let ask = Ask {
            sources: METALINK_SOURCES,
            bytes: entry.size,
        };
        st.balancer.choose(
            path_facts(&file.snap, file.rel, entry),
            ask,
            Some(&customer),
            Instant::now(),
            &mut chosen,
        );
        let mut urls: Vec<String> = chosen
            .iter()
            .map(|base| {
                let mut u = String::new();
                push_url(&mut u, base, &encoded);
                u
            })
            .collect();
        urls.push(origin_url(st.base_for(customer.reach), &encoded));
        let name = file.rel.rsplit('/').next().unwrap_or(file.rel);
        let doc = metalink::render(name, entry, &urls);
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
            [(header::CONTENT_TYPE, METALINK_TYPE)],
            body,
        )
            .into_response();
    }

    let (mut chosen, mut encoded) = (Chosen::default(), String::new());
    let asked = || asks_for_digest(|name| headers.get(name).map(|v| v.as_bytes()));
    let with_metalink = metalink_headers(&st, asked);
    let wants_volunteer = file.wants_volunteer(&st);
    let bytes = body_bytes(
        method == Method::HEAD,
        |name| headers.get(name).map(|v| v.as_bytes()),
        entry,
    );
    if wants_volunteer {
        if let Some(r) = file.redirect(
            &st,
            (Instant::now(), bytes),
            &customer,
            &mut chosen,
            &mut encoded,
            with_metalink,
        ) {
            return r.into_response();
        }
    }
    if file.origin_only {
        if let Some(by) = bounced_by(uri) {
            st.counters
                .bounced
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                repo = file.repo,
                path = file.rel,
                volunteer = by,
                "a volunteer sent a customer back to the origin"
            );
        }
    }
    // The origin sends only what it published: a regular file, reached without leaving the
    // root, of the published size, checked on the handle it sends from; or the copy of it
    // kept when it was published.
    let opened = match origin_copy(&st, &file.snap, file.rel, entry) {
        Ok(opened) => opened,
        Err(why) => {
            // As for a file being republished: a volunteer that verified the published
            // bytes, if one may serve them (not asked of `/.origin/`, nor again if one was
            // just asked), or come back later.
            let redirect = (!file.origin_only && !wants_volunteer)
                .then(|| {
                    file.redirect(
                        &st,
                        (Instant::now(), bytes),
                        &customer,
                        &mut chosen,
                        &mut encoded,
                        with_metalink,
                    )
                })
                .flatten();
            note_unservable(&file.snap.name, file.rel, &why, redirect.is_some());
            return match redirect {
                Some(r) => r.into_response(),
                None => {
                    st.counters.count(Outcome::OriginUnavailable);
                    republishing(file.rel)
                }
            };
        }
    };
    st.counters.count(if file.origin_only {
        Outcome::OriginRequested
    } else if entry.size <= st.config.redirect.direct_max_bytes {
        Outcome::OriginSmall
    } else {
        Outcome::OriginNoVolunteer
    });
    let resp = serve_origin(file.rel, entry, opened, method, headers, extra);
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

/// Seconds a customer is asked to wait for a file the origin cannot send as published: about
/// what an operator's `mirrorswarm publish` takes after changing the tree.
const REPUBLISH_RETRY_SECS: &str = "10";

/// `503` with `Retry-After`: the file on disk is not what was published (being replaced, or
/// swapped for something the origin will not send), and no volunteer holds the published
/// bytes. The reason is in the server's log, not in the answer.
fn republishing(rel: &str) -> Response {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("`{rel}` is being republished; retry shortly\n"),
    );
    let h = r.headers_mut();
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(REPUBLISH_RETRY_SECS),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Log why the origin did not send a published file. At warning level at most once a second
/// (a file swapped under load must not flood the log; the count is in `/metrics`), the rest
/// at debug.
fn note_unservable(repo: &str, rel: &str, why: &fileserve::OpenError, redirected: bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED: AtomicU64 = AtomicU64::new(u64::MAX);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let answer = if redirected {
        "redirected to a volunteer holding the published bytes"
    } else {
        "503, retry later"
    };
    if LAST_WARNED.swap(second, Ordering::Relaxed) != second {
        if matches!(why, fileserve::OpenError::NotHeld) {
            tracing::warn!(repo, path = rel, answer, "this server's tree does not hold the file as another server published it; the origin does not send it until the tree does (it is looked at again every 10 s)");
            return;
        }
        tracing::warn!(repo, path = rel, reason = %why, answer, "file on disk is not as published; the origin does not send it (run `mirrorswarm publish` if it changed on purpose)");
    } else {
        tracing::debug!(repo, path = rel, reason = %why, answer, "file on disk is not as published");
    }
}

/// The fast path's share of [`customer`]: a `GET` or `HEAD` of a file a volunteer can serve
/// is answered with its redirect; anything else goes to the router.
pub fn fast_customer(
    st: &AppState,
    req: &fast::Request<'_>,
    reply: &mut fast::Reply<'_>,
) -> fast::Answer {
    // A pull naming its generation, or a mirror list: the router answers.
    if req
        .query()
        .is_some_and(|q| q.contains(PULLED_PARAM) || q.contains(mirrorlist::PARAM))
    {
        return fast::Answer::Pass;
    }
    let Ok(decoded) = fileserve::decode_url_path_cow(req.path()) else {
        return fast::Answer::Pass;
    };
    let accept = || wants_metalink(req.all("accept"));
    let with_metalink = metalink_headers(st, || asks_for_digest(|name| req.header(name)));
    st.balancer.prefetch(volunteers_named(st, with_metalink));
    st.repos.with_current(|repos| {
        let snapshot = |repo: &str| repos.get(repo).map(|s| &**s);
        let Resolved::File(file) = resolve(snapshot, &decoded, accept) else {
            return fast::Answer::Pass;
        };
        if !file.wants_volunteer(st) {
            return fast::Answer::Pass;
        }
        SCRATCH.with(|s| {
            let Scratch {
                chosen,
                encoded,
                value,
            } = &mut *s.borrow_mut();
            let head = req.method == fast::Method::Head;
            let bytes = body_bytes(head, |name| req.header(name), &file.entry);
            let secure = st.location.came_secure(
                req.peer.ip(),
                req.secure,
                req.all("forwarded"),
                req.all("x-forwarded-proto"),
            );
            let customer = st.location.customer(
                req.peer.ip(),
                secure,
                req.all("forwarded"),
                req.all("x-forwarded-for"),
            );
            let at = (req.received, bytes);
            match file.redirect(st, at, &customer, chosen, encoded, with_metalink) {
                Some(r) => {
                    file.count_hit();
                    r.write(reply, value);
                    fast::Answer::Done
                }
                None => fast::Answer::Pass,
            }
        })
    })
}

/// The volunteer named in a bounced customer's `/.origin/…?bounced-by=NAME`, as it said
/// (shown in the log only: anyone can write it).
fn bounced_by(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(BOUNCED_BY_PARAM)?.strip_prefix('='))
        .map(|v| {
            if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()) {
                v
            } else {
                "(unreadable)"
            }
        })
}

/// The generation a syncing volunteer's pull names (`?generation=N`, [`PULLED_PARAM`]): it
/// wants that generation's bytes, which differ from those customers are sent while it is
/// staged. Not a customer's request: not counted in the popularity.
fn pulled_generation(uri: &Uri) -> Option<u64> {
    uri.query()?.split('&').find_map(|kv| {
        kv.strip_prefix(PULLED_PARAM)?
            .strip_prefix('=')?
            .parse()
            .ok()
    })
}

/// See [`pulled_generation`].
pub const PULLED_PARAM: &str = "generation";

/// The query parameter a volunteer adds when it sends a customer back to the origin.
pub const BOUNCED_BY_PARAM: &str = "bounced-by";

fn moved(location: &str) -> Response {
    let mut r = text(StatusCode::MOVED_PERMANENTLY, format!("see {location}"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A 302 to a volunteer, with the alternatives (volunteers, then the origin) as RFC 6249
/// `Link: rel=duplicate` and the Metalink as `rel=describedby`: the request path's hottest
/// answer, defined once and written by either path.
struct Redirect<'a> {
    public_url: &'a str,
    /// `repo/rel`, percent-encoded.
    encoded: &'a str,
    /// The volunteer redirected to, then the alternatives.
    chosen: &'a Chosen,
    /// Alternatives listed, origin included.
    max_alt: usize,
    size: u64,
    sha256: [u8; 32],
    /// Whether it carries the alternatives and the digests (the Metalink/HTTP headers), or
    /// only where to go.
    with_metalink: bool,
}

impl<'a> Redirect<'a> {
    /// `public_url`: where the customer reaches this server (over HTTPS if it came so).
    fn new(
        st: &'a AppState,
        public_url: &'a str,
        encoded: &'a str,
        chosen: &'a Chosen,
        entry: &Entry,
        with_metalink: bool,
    ) -> Self {
        Redirect {
            public_url,
            encoded,
            chosen,
            max_alt: st.config.redirect.alternatives,
            size: entry.size,
            sha256: entry.sha256.0,
            with_metalink,
        }
    }

    fn base(&self) -> &str {
        self.chosen.iter().next().unwrap_or_default()
    }

    /// Every header of the answer but the framing ones, in the order they are sent, each
    /// value built in one scratch buffer.
    fn each_header(&self, v: &mut String, mut emit: impl FnMut(&'static str, &[u8])) {
        v.clear();
        push_url(v, self.base(), self.encoded);
        emit("location", v.as_bytes());
        // The choice depends on live load: no cache may keep it.
        emit("cache-control", b"no-store");
        if self.with_metalink {
            self.each_metalink_header(v, emit);
        }
    }

    /// The Metalink/HTTP headers (RFC 6249): the alternatives, then what the file must be.
    fn each_metalink_header(&self, v: &mut String, mut emit: impl FnMut(&'static str, &[u8])) {
        use base64::Engine as _;
        v.clear();
        let volunteers = self
            .chosen
            .iter()
            .skip(1)
            .take(self.max_alt.saturating_sub(1));
        let mut pri = 0u32;
        let mut num = itoa::Buffer::new();
        for alt in volunteers {
            pri += 1;
            v.push('<');
            push_url(v, alt, self.encoded);
            v.push_str(">; rel=duplicate; pri=");
            v.push_str(num.format(pri));
            v.push_str(", ");
        }
        if self.max_alt > 0 {
            v.push('<');
            push_origin_url(v, self.public_url, self.encoded);
            v.push_str(">; rel=duplicate; pri=");
            v.push_str(num.format(pri + 1));
            v.push_str(", ");
        }
        v.push('<');
        push_url(v, self.public_url, self.encoded);
        v.push_str(".meta4>; rel=describedby; type=\"");
        v.push_str(METALINK_TYPE);
        v.push('"');
        emit("link", v.as_bytes());

        emit(SIZE_HEADER, num.format(self.size).as_bytes());
        let mut b64 = [0u8; 44];
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(self.sha256, &mut b64)
            .unwrap_or(0);
        // Base64 is ASCII.
        let b64 = std::str::from_utf8(&b64[..n]).unwrap_or_default();
        v.clear();
        v.push_str("sha-256=");
        v.push_str(b64);
        emit(DIGEST, v.as_bytes());
        v.clear();
        v.push_str("sha-256=:");
        v.push_str(b64);
        v.push(':');
        emit(REPR_DIGEST, v.as_bytes());
    }

    /// The answer into `reply`, each value built in `scratch`. It has no body: RFC 9110
    /// (15.4.3) makes the note a 302 "usually" carries optional, every client follows
    /// `Location`, and on the hottest answer a note repeating it (with its content type)
    /// was an eighth of the bytes each customer and the load generator had to parse.
    fn write(&self, reply: &mut fast::Reply<'_>, scratch: &mut String) {
        reply.status(302, "Found");
        self.each_header(scratch, |name, value| reply.header(name, value));
        reply.body(b"");
    }

    fn into_response(self) -> Response {
        let mut r = Response::new(Body::empty());
        let mut v = String::new();
        *r.status_mut() = StatusCode::FOUND;
        let h = r.headers_mut();
        let mut bad = false;
        self.each_header(&mut v, |name, value| match HeaderValue::from_bytes(value) {
            Ok(v) => {
                h.insert(name, v);
            }
            Err(_) => bad = true,
        });
        if bad {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "volunteer URL is not a valid header",
            );
        }
        r
    }
}

/// A published file as the origin may send it, and whether its bytes are vouched for: the
/// tree's copy if it is as published; else the copy kept when it was published ([`kept`],
/// repository metadata while staging: the tree may hold a staged generation's already);
/// else the tree's copy of the published size but rewritten since (another mtime), sent
/// unvouched (the origin always answers); else why it cannot be sent.
fn origin_copy(
    st: &AppState,
    snap: &RepoSnapshot,
    rel: &str,
    entry: &Entry,
) -> Result<Opened, fileserve::OpenError> {
    let tree = if snap.files.held_here(rel) {
        snap.beneath.open_sized(rel, entry.size)
    } else {
        Err(manifest::beneath::OpenError::NotHeld)
    };
    let as_published = tree.as_ref().is_ok_and(|(_, meta)| {
        snap.files
            .stat(rel)
            .is_some_and(|published| manifest::scan::stat_key(meta) == published)
    });
    if as_published {
        return tree.map(|file| Opened {
            file,
            vouched: true,
        });
    }
    if let Some(copy) = kept::open(&st.config.data_dir, &snap.name, entry) {
        return Ok(Opened {
            file: copy,
            vouched: true,
        });
    }
    let opened = tree?;
    tracing::warn!(repo = %snap.name, path = rel, "file changed on disk since it was published; run `mirrorswarm publish`");
    Ok(Opened {
        file: opened,
        vouched: false,
    })
}

/// What [`origin_copy`] opened.
struct Opened {
    file: (std::fs::File, std::fs::Metadata),
    /// Its bytes are the published ones (checked when published, unchanged since).
    vouched: bool,
}

/// The origin's answer for a published file it opened.
fn serve_origin(
    rel: &str,
    entry: &Entry,
    opened: Opened,
    method: &Method,
    headers: &HeaderMap,
    mut extra: HeaderMap,
) -> Response {
    let etag = if opened.vouched {
        Some(entry.sha256.to_hex())
    } else {
        extra.remove(DIGEST);
        extra.remove(REPR_DIGEST);
        None
    };
    let opts = ServeOptions {
        etag,
        content_type: None,
        extra_headers: extra,
    };
    let (f, meta) = opened.file;
    fileserve::serve_open(method, headers, f, &meta, std::path::Path::new(rel), &opts)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_counts_the_body_bytes_the_customer_will_draw() {
        let entry = Entry {
            size: 1000,
            sha256: manifest::Sha256([7; 32]),
            changed_in: 1,
            btih: None,
        };
        let tag = format!("\"{}\"", entry.sha256.to_hex());
        let count = |head: bool, h: &[(&'static str, &str)]| {
            let h: Vec<(&str, Vec<u8>)> =
                h.iter().map(|(n, v)| (*n, v.as_bytes().to_vec())).collect();
            body_bytes(
                head,
                |name| {
                    h.iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v.as_slice())
                },
                &entry,
            )
        };
        assert_eq!(count(false, &[]), 1000);
        assert_eq!(count(true, &[]), 0);
        assert_eq!(count(true, &[("range", "bytes=0-99")]), 0);
        assert_eq!(count(false, &[("range", "bytes=0-99")]), 100);
        assert_eq!(count(false, &[("range", "bytes=-10")]), 10);
        assert_eq!(count(false, &[("range", "bytes=990-")]), 10);
        assert_eq!(count(false, &[("range", "bytes=5000-")]), 0, "416: no body");
        assert_eq!(
            count(false, &[("range", "bytes=0-1,5-6")]),
            1000,
            "not one range: all"
        );
        assert_eq!(
            count(false, &[("range", "bytes=0-99"), ("if-range", &tag)]),
            100
        );
        let date = "Tue, 14 Nov 2023 22:13:20 GMT";
        assert_eq!(
            count(false, &[("range", "bytes=0-99"), ("if-range", date)]),
            1000
        );
    }

    #[test]
    fn a_path_copied_whole_encodes_as_segment_by_segment() {
        let by_segment = |repo: &str, rel: &str| {
            let mut out = String::new();
            fileserve::push_encoded_segment(&mut out, repo);
            for seg in rel.split('/') {
                out.push('/');
                fileserve::push_encoded_segment(&mut out, seg);
            }
            out
        };
        for (repo, rel) in [
            ("debian", "pool/main/h/hello_2.10-3_amd64.deb"),
            ("debian", ""),
            ("deb ian", "pool/a b/c"),
            ("r", "dir/ä/100%.txt"),
            ("r", "x?y#z/a+b=c@d!e$f,g~h"),
        ] {
            assert_eq!(
                encoded_repo_path(repo, rel),
                by_segment(repo, rel),
                "{repo} {rel}"
            );
        }
        assert_eq!(encoded_repo_path("r", "a/b c"), "r/a/b%20c");
    }
}
