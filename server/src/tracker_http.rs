//! `/announce` and `/scrape`: the embedded BitTorrent tracker over HTTP.
//!
//! Plain BitTorrent clients get BEP 3/23/48 behaviour. Volunteers add signed `ms_*` parameters
//! (see `tracker::mirror`); their announces update the mirror registry, and the response also
//! carries `ms_generation`, the newest published generation of that repository, and vouch
//! for the address they came from: the plain announces from it (the volunteer's BitTorrent
//! session) are trusted by the swarms' bounds ([`tracker::swarm`]). Every error is a bencoded
//! `failure reason` with HTTP 200, as BitTorrent clients expect, except a scrape naming no
//! torrent: HTTP 400 (with a bencoded `failure reason`), since it asks for something this
//! tracker does not offer rather than for something that failed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bencode::Value;
use tracker::announce::AnnounceError;
use tracker::announce::{parse_announce, parse_scrape, Event};
use tracker::mirror::{parse_mirror_report, split_signed_query, verify_query_signature};
use tracker::response::{announce_response, failure_response, scrape_response};
use tracker::swarm::{AnnounceOutcome, Standing};

use crate::locks::{lock, read, write};
use crate::state::AppState;

fn bencoded(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

pub async fn announce(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Response {
    let from = st.location.client_addr(
        peer.ip(),
        headers.get_all("forwarded").iter().map(|v| v.as_bytes()),
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes()),
    );
    bencoded(announce_body(
        &st,
        (peer, from),
        query.as_deref().unwrap_or_default(),
    ))
}

/// `GET /announce` on the fast path: every announce, answered as the router would.
pub fn fast_announce(
    st: &AppState,
    req: &fileserve::fast::Request<'_>,
    reply: &mut fileserve::fast::Reply<'_>,
) -> fileserve::fast::Answer {
    let from = st.location.client_addr(
        req.peer.ip(),
        req.all("forwarded"),
        req.all("x-forwarded-for"),
    );
    let body = announce_body(st, (req.peer, from), req.query().unwrap_or_default());
    reply.status(200, "OK");
    reply.header("content-type", b"text/plain");
    reply.body(&body);
    fileserve::fast::Answer::Done
}

/// The bencoded answer to an announce with query `raw` from `peer`: always HTTP 200, errors
/// as a `failure reason`.
/// (`from`: where it came from, behind the trusted proxies.)
fn announce_body(st: &AppState, (peer, from): (SocketAddr, IpAddr), raw: &str) -> Vec<u8> {
    let req = match parse_announce(raw) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "malformed announce");
            return failure_response(&e.to_string());
        }
    };
    let interval = st.config.tracker.interval_secs as u32;
    let report = match parse_mirror_report(&req.extra) {
        Ok(None) => return plain_announce(st, &req, peer, interval),
        Ok(Some(r)) => Ok(r),
        Err(e) => Err(e),
    };
    // A mirror announce, good or not, counts against its sender's rate as a plain one does
    // (in `Swarms::announce_into`): each refusal below costs a signature check and a log
    // line, and a flood of them is one host's to bound. A volunteer's address is exempt from
    // its first accepted announce on.
    let admitted = lock(&st.swarms).admit(
        peer.ip().to_canonical(),
        Standing::Anonymous,
        Instant::now(),
    );
    if let Err(e) = admitted {
        return refused(st, &e.to_string());
    }
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%peer, error = %e, "refused mirror announce");
            return refused(st, &e.to_string());
        }
    };

    let Some(repo) = st.info_hashes.get(&req.info_hash).cloned() else {
        return refused(
            st,
            "unknown repository: info_hash is no repository this server publishes",
        );
    };
    let Some(cred) = st.credential(&report.volunteer) else {
        tracing::info!(%peer, volunteer = %report.volunteer, "announce from unknown volunteer");
        return refused(st, "unknown volunteer: enroll first");
    };
    let verified = split_signed_query(raw)
        .map(|(signed, sig)| verify_query_signature(&cred.secret, signed, &sig))
        .unwrap_or(false);
    if !verified {
        tracing::warn!(%peer, volunteer = %cred.name, "announce with a bad signature");
        return refused(st, "bad signature: announce not authenticated");
    }
    if cred.revoked {
        return refused(st, "credential revoked");
    }
    let (place, ignored) = match st.location.volunteer(
        &report.url,
        from,
        &report.nets,
        report.private,
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(volunteer = %cred.name, error = %e, "refused announce: a declared netblock does not read");
            return refused(st, &format!("ms_nets: {e}"));
        }
    };
    let latest = st.newest(&repo).map_or(0, |s| s.generation());
    let now = Instant::now();
    {
        let mut reg = st.balancer.registry();
        if req.event == Event::Stopped {
            reg.stop(&report.volunteer, report.seq);
            tracing::info!(volunteer = %cred.name, repo = %repo, "volunteer stopped");
        } else if let Err(e) = reg.report(&repo, &report, cred.draining, now) {
            tracing::warn!(volunteer = %cred.name, error = %e, "refused announce");
            return refused(st, &e.to_string());
        } else if reg.set_place(&report.volunteer, place) {
            let ignored: Vec<String> = ignored.iter().map(|n| n.to_string()).collect();
            if ignored.is_empty() {
                tracing::info!(volunteer = %cred.name, nets = %report.nets, private = report.private, "volunteer's place set");
            } else {
                tracing::warn!(volunteer = %cred.name, ignored = %ignored.join(","), "declared netblocks that do not hold the volunteer's own address are ignored (a public volunteer may not draw another network's customers); its URL's address, or the one it announces from, must be inside them");
            }
        }
    }
    // Authenticated, in sequence, not revoked: the volunteer's BitTorrent peers announce from
    // this address too, and are not to be crowded out by anonymous ones.
    if req.event != Event::Stopped && !lock(&st.swarms).trust(peer.ip(), now) {
        tracing::warn!(%peer, volunteer = %cred.name, "too many trusted addresses; this one's peers stay anonymous");
    }
    st.counters
        .announces_ok
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::trace!(volunteer = %cred.name, repo = %repo, generation = report.generation, conns = report.customer_conns, "mirror announce");
    let empty = AnnounceOutcome {
        peers: Vec::new(),
        complete: 0,
        incomplete: 0,
    };
    let servers = crate::locks::read(&st.servers).clone();
    if servers.is_empty() {
        return announce_response(
            interval,
            1,
            &empty,
            true,
            &[("ms_generation", Value::Int(latest as i64))],
        );
    }
    // Every server of the mirror, for the volunteer to announce to each.
    let servers = servers
        .iter()
        .map(|u| Value::Bytes(u.as_bytes().to_vec()))
        .collect();
    announce_response(
        interval,
        1,
        &empty,
        true,
        &[
            ("ms_generation", Value::Int(latest as i64)),
            ("ms_servers", Value::List(servers)),
        ],
    )
}

/// `GET /scrape?info_hash=…` (BEP 48), one to [`tracker::announce::MAX_SCRAPE_HASHES`]
/// torrents, counted against the address's announce rate. Without `info_hash`: HTTP 400 with
/// a bencoded failure reason (a scrape of every swarm is not offered: its answer grows with
/// the tracker). Other errors are failure reasons with HTTP 200.
pub async fn scrape(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let raw = query.unwrap_or_default();
    let hashes = match parse_scrape(&raw) {
        Ok(h) => h,
        Err(e @ AnnounceError::Missing(_)) => {
            let body = failure_response(&format!(
                "{e}: name the torrents to scrape (a scrape of every torrent is not offered)"
            ));
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain")],
                body,
            )
                .into_response();
        }
        Err(e) => return bencoded(failure_response(&e.to_string())),
    };
    let now = Instant::now();
    let mut swarms = lock(&st.swarms);
    if let Err(e) = swarms.admit(peer.ip().to_canonical(), Standing::Anonymous, now) {
        return bencoded(failure_response(&e.to_string()));
    }
    let stats = swarms.scrape(&hashes, now);
    drop(swarms);
    bencoded(scrape_response(&stats))
}

/// Addresses the origin's seed is remembered at, at most: it announces from one or two (IPv4
/// and IPv6), and only the seed itself is recorded; the bound keeps the set from growing if
/// that ever changes.
pub const MAX_ORIGIN_ADDRS: usize = 8;

/// Whether an announce is the origin's own seed: its whole peer id (not the prefix, which
/// anyone may send), from an address of this host (the id is no secret: the seed tells it to
/// every peer in the BitTorrent handshake). The address is checked only for the right id.
fn is_origin_seed(st: &AppState, peer_id: &[u8; 20], ip: IpAddr) -> bool {
    if !peer_id.starts_with(crate::seed::ORIGIN_PEER_PREFIX) {
        return false;
    }
    st.seed.get().is_some_and(|s| s.peer_id() == *peer_id) && is_own_address(ip)
}

/// Whether `ip` is one of this host's addresses: only those can be bound (unless the
/// `net.ipv4.ip_nonlocal_bind` sysctl says otherwise, which servers do not set).
fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip.to_canonical(), 0)).is_ok()
}

/// A plain BitTorrent announce (volunteers' and the origin's librqbit sessions, or any client).
/// Who is handed the origin's seed is the [`crate::origin_gate`]'s decision.
fn plain_announce(
    st: &AppState,
    req: &tracker::announce::AnnounceRequest,
    peer: SocketAddr,
    interval: u32,
) -> Vec<u8> {
    let is_origin = is_origin_seed(st, &req.peer_id, peer.ip());
    if is_origin {
        let addr = SocketAddr::new(peer.ip().to_canonical(), req.port);
        let mut origins = write(&st.origin_peers);
        if !origins.contains(&addr) {
            if origins.len() >= MAX_ORIGIN_ADDRS {
                origins.clear();
            }
            origins.insert(addr);
        }
    }
    let standing = if is_origin {
        Standing::Trusted
    } else {
        Standing::Anonymous
    };
    let now = Instant::now();
    OUTCOME.with(|o| {
        let o = &mut *o.borrow_mut();
        if let Err(e) = lock(&st.swarms).announce_into(req, peer, standing, now, o) {
            tracing::trace!(%peer, error = %e, "announce refused");
            return failure_response(&e.to_string());
        }
        if is_origin {
            o.peers.clear();
        } else {
            let origins = read(&st.origin_peers);
            let origin_listed = o.peers.iter().any(|p| origins.contains(p));
            let other_seeders = o
                .complete
                .saturating_sub(u32::from(req.left == 0))
                .saturating_sub(u32::from(origin_listed));
            let stopped = req.event == Event::Stopped;
            let allowed = lock(&st.origin_gate).may_see_origin(
                req.info_hash,
                req.peer_id,
                req.left,
                stopped,
                other_seeders,
                now,
            );
            if !allowed {
                o.peers.retain(|p| !origins.contains(p));
            }
        }
        announce_response(interval, 1, o, req.compact, &[])
    })
}

thread_local! {
    /// Each serving thread's announce outcome, its peer buffer reused from one announce to
    /// the next.
    static OUTCOME: std::cell::RefCell<AnnounceOutcome> =
        std::cell::RefCell::new(AnnounceOutcome::default());
}

/// A refused mirror announce: counted, then answered with a bencoded failure reason.
fn refused(st: &AppState, reason: &str) -> Vec<u8> {
    st.counters
        .announces_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    failure_response(reason)
}
