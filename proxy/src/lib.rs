//! `mirrorswarm proxy`: the customer-side verifying proxy the paper proposes. apt, dnf, wget
//! and curl use it as an ordinary HTTP proxy. For a file the server redirects, the proxy
//! learns the published SHA-256 and size from the redirect, fetches the file from the
//! volunteer into a temporary file while hashing it, and releases it only if it matches.
//! Otherwise it reports the volunteer to the server and tries the next alternative, then the
//! origin. Nothing unverified ever reaches the customer; nothing large is held in memory.
//!
//! What the server itself sends (index files, small files served directly, errors) is passed
//! through: the server is the party customers trust.

mod cache;
mod fetch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use fileserve::protocol::{DIGEST, REPR_DIGEST, SIZE_HEADER, WANT_REPR_DIGEST};
use fileserve::text_response as text;

pub use cache::Cache;
pub use fetch::{Expected, FetchError};

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// The mirrorswarm server, e.g. `http://mirror.example.org:8080`.
    pub server: String,
    /// Where verified files are kept.
    pub cache_dir: PathBuf,
    /// Bound on the cache's total size.
    pub cache_bytes: u64,
    /// Give up on a source that sends nothing for this long, and try the next.
    pub stall: Duration,
    /// Largest file accepted when the server does not say a size.
    pub max_file_bytes: u64,
    /// HTTPS beside plain HTTP: where, and the certificate and key files.
    pub tls: Option<(SocketAddr, (PathBuf, PathBuf))>,
}

impl ProxyConfig {
    pub fn new(listen: SocketAddr, server: &str, cache_dir: PathBuf) -> Self {
        ProxyConfig {
            listen,
            server: server.trim_end_matches('/').to_string(),
            cache_dir,
            cache_bytes: 1 << 30,
            stall: Duration::from_secs(30),
            max_file_bytes: 64 << 30,
            tls: None,
        }
    }
}

#[derive(Default)]
pub struct ProxyStats {
    pub verified: AtomicU64,
    pub cache_hits: AtomicU64,
    pub rejected_sources: AtomicU64,
    pub passed_through: AtomicU64,
}

pub struct Proxy {
    cfg: ProxyConfig,
    /// `host:port` of the server, as clients write it in absolute-form request targets.
    authority: String,
    client: reqwest::Client,
    cache: Cache,
    pub stats: ProxyStats,
}

impl Proxy {
    pub fn new(cfg: ProxyConfig) -> Result<Proxy> {
        let uri: Uri = cfg
            .server
            .parse()
            .with_context(|| format!("--server {}: not a URL", cfg.server))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "--server {}: only http:// servers can be proxied",
            cfg.server
        );
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .context("--server has no host")?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(cfg.stall)
            .build()?;
        let cache = Cache::open(&cfg.cache_dir, cfg.cache_bytes)
            .with_context(|| format!("opening the cache at {}", cfg.cache_dir.display()))?;
        Ok(Proxy {
            authority,
            client,
            cache,
            cfg,
            stats: ProxyStats::default(),
        })
    }
}

pub fn router(p: Arc<Proxy>) -> Router {
    Router::new().fallback(handle).with_state(p)
}

/// Run until `shutdown` resolves.
pub async fn run(
    cfg: ProxyConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listen = cfg.listen;
    let (tls_listen, tls_files) = cfg.tls.clone().unzip();
    let tls = fileserve::listen::bind_tls_if(tls_listen, tls_files, Vec::new())?;
    let proxy = Arc::new(Proxy::new(cfg)?);
    let listener =
        fileserve::listen::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, server = %proxy.cfg.server, cache = %proxy.cfg.cache_dir.display(), "verifying proxy ready");
    // No fast path: every request is the proxy's router's, on this runtime (its client's).
    let limits = fileserve::listen::Limits {
        on_caller_runtime: true,
        ..Default::default()
    };
    fileserve::listen::serve_both(listener, tls, router(proxy), None, limits, shutdown)
        .await
        .context("proxy failed")?;
    Ok(())
}

/// Request headers worth passing to the server for what it serves itself.
const FORWARDED: [HeaderName; 5] = [
    header::RANGE,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::IF_RANGE,
    header::ACCEPT,
];

/// Response headers that describe one hop, not the content.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

async fn handle(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "this proxy fetches files with GET and HEAD only (no CONNECT: use http:// URLs of the mirror)",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    // Absolute form (a client using us as its proxy) must name our server; origin form
    // (`curl http://proxy/deb/...`) is taken as a path on the server.
    if let Some(a) = uri.authority() {
        if uri.scheme_str() != Some("http") || a.as_str() != p.authority {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "this proxy only fetches from the mirror at {}; configure it for that host only",
                    p.cfg.server
                ),
            );
        }
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if !path.starts_with('/') {
        return text(StatusCode::BAD_REQUEST, "bad request target");
    }
    let url = format!("{}{}", p.cfg.server, path);
    // Asking for the digest (RFC 9530) is what makes the server's redirect carry it, the
    // size and the alternatives: without them there is nothing to verify against.
    let mut req = p
        .client
        .request(method.clone(), &url)
        .header(WANT_REPR_DIGEST, "sha-256=10");
    for h in FORWARDED {
        if let Some(v) = headers.get(&h) {
            req = req.header(h, v);
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%url, error = %e, "server unreachable");
            return text(
                StatusCode::BAD_GATEWAY,
                format!("the mirror server at {} did not answer: {e}", p.cfg.server),
            );
        }
    };
    match expected_from(resp.headers()) {
        Some(expect) if resp.status().is_redirection() => {
            let sources = sources(&p, resp.headers(), uri.path());
            deliver_verified(&p, &method, &headers, uri.path(), &expect, &sources).await
        }
        _ => pass_through(&p, resp),
    }
}

/// The digest (and size) the server published for a redirected file.
fn expected_from(h: &reqwest::header::HeaderMap) -> Option<Expected> {
    let sha256 = h
        .get(REPR_DIGEST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha-256=:")?.strip_suffix(':'))
        .or_else(|| {
            h.get(DIGEST)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("sha-256="))
        })
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())?;
    let size = h
        .get(SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Some(Expected { sha256, size })
}

/// Where to fetch from, in order: the redirect target, the alternatives the server listed
/// (`Link: <…>; rel=duplicate`), and the origin last.
fn sources(p: &Proxy, h: &reqwest::header::HeaderMap, path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(l) = h
        .get(header::LOCATION.as_str())
        .and_then(|v| v.to_str().ok())
    {
        out.push(absolute(p, l));
    }
    for v in h.get_all(header::LINK.as_str()) {
        let Ok(v) = v.to_str() else { continue };
        for link in v.split(',') {
            let mut parts = link.split(';').map(str::trim);
            let Some(target) = parts
                .next()
                .and_then(|t| t.strip_prefix('<')?.strip_suffix('>'))
            else {
                continue;
            };
            if parts.any(|a| a == "rel=duplicate") {
                out.push(absolute(p, target));
            }
        }
    }
    let origin = format!("{}/.origin{}", p.cfg.server, path);
    out.retain(|u| *u != origin);
    out.dedup();
    out.push(origin);
    out
}

fn absolute(p: &Proxy, url: &str) -> String {
    if url.starts_with('/') {
        format!("{}{}", p.cfg.server, url)
    } else {
        url.to_string()
    }
}

async fn deliver_verified(
    p: &Arc<Proxy>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    expect: &Expected,
    sources: &[String],
) -> Response {
    let opened = match p.cache.get(&expect.sha256, expect.size) {
        Some(f) => {
            p.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            f
        }
        None => {
            let mut got = false;
            let mut tried = Vec::new();
            for src in sources {
                match fetch::verified(
                    &p.client,
                    src,
                    expect,
                    &p.cache,
                    p.cfg.max_file_bytes,
                    p.cfg.stall,
                )
                .await
                {
                    Ok(_) => {
                        p.stats.verified.fetch_add(1, Ordering::Relaxed);
                        got = true;
                        break;
                    }
                    Err(e) => {
                        p.stats.rejected_sources.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(source = %src, error = %e, "source refused; trying the next");
                        tried.push(format!("{src}: {e}"));
                        if !src.starts_with(&format!("{}/", p.cfg.server)) {
                            report(p.clone(), src.clone(), e.to_string());
                        }
                    }
                }
            }
            if !got {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("no source sent the published bytes:\n{}", tried.join("\n")),
                );
            }
            // Opened by its name in the cache, as a hit is: what is sent is what is there.
            match p.cache.get(&expect.sha256, expect.size) {
                Some(f) => f,
                None => return text(StatusCode::BAD_GATEWAY, "the verified file is gone"),
            }
        }
    };
    let mut extra = HeaderMap::new();
    let b64 = base64::engine::general_purpose::STANDARD.encode(expect.sha256);
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{b64}:")) {
        extra.insert(REPR_DIGEST, v);
    }
    let opts = fileserve::ServeOptions {
        etag: Some(hex::encode(expect.sha256)),
        content_type: Some(fileserve::content_type_for(std::path::Path::new(path))),
        extra_headers: extra,
    };
    let (f, meta) = opened;
    fileserve::serve_open(method, headers, f, &meta, std::path::Path::new(path), &opts)
}

/// Tell the server, in the background, that `url` sent wrong bytes or failed.
fn report(p: Arc<Proxy>, url: String, reason: String) {
    tokio::spawn(async move {
        let r = p
            .client
            .post(format!("{}/api/report", p.cfg.server))
            .timeout(Duration::from_secs(10))
            .json(&serde_json::json!({ "url": url, "reason": reason }))
            .send()
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not report a source to the server");
        }
    });
}

/// Send the server's own answer on, streaming.
fn pass_through(p: &Proxy, resp: reqwest::Response) -> Response {
    p.stats.passed_through.fetch_add(1, Ordering::Relaxed);
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HeaderMap::new();
    for (k, v) in resp.headers() {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_str().as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            if !hop_by_hop(&k) {
                out.append(k, v);
            }
        }
    }
    let mut r = Response::new(Body::from_stream(resp.bytes_stream()));
    *r.status_mut() = status;
    *r.headers_mut() = out;
    r.into_response()
}
