//! `/announce` and `/scrape`: the embedded BitTorrent tracker over HTTP.
//!
//! Plain BitTorrent clients get BEP 3/23/48 behaviour. Volunteers add signed `ms_*` parameters
//! (see `tracker::mirror`); their announces update the mirror registry, and the response also
//! carries `ms_generation`, the newest published generation of that repository. Every error is
//! a bencoded `failure reason` with HTTP 200, as BitTorrent clients expect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tracker::announce::{parse_announce, parse_scrape, Event};
use tracker::bencode::Value;
use tracker::mirror::{parse_mirror_report, split_signed_query, verify_query_signature};
use tracker::response::{announce_response, failure_response, scrape_response};
use tracker::swarm::AnnounceOutcome;

use crate::state::{lock, read, write, AppState};

fn bencoded(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

pub async fn announce(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    bencoded(announce_body(
        &st,
        peer,
        query.as_deref().unwrap_or_default(),
    ))
}

/// `GET /announce` on the fast path: every announce, answered as the router would.
pub fn fast_announce(
    st: &AppState,
    req: &fileserve::fast::Request<'_>,
    reply: &mut fileserve::fast::Reply<'_>,
) -> fileserve::fast::Answer {
    let body = announce_body(st, req.peer, req.query().unwrap_or_default());
    reply.status(200, "OK");
    reply.header("content-type", b"text/plain");
    reply.body(&body);
    fileserve::fast::Answer::Done
}

/// The bencoded answer to an announce with query `raw` from `peer`: always HTTP 200, errors
/// as a `failure reason`.
fn announce_body(st: &AppState, peer: SocketAddr, raw: &str) -> Vec<u8> {
    let req = match parse_announce(raw) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "malformed announce");
            return failure_response(&e.to_string());
        }
    };
    let interval = st.config.tracker.interval_secs as u32;
    let report = match parse_mirror_report(&req.extra) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%peer, error = %e, "refused mirror announce");
            return refused(st, &e.to_string());
        }
    };
    let Some(report) = report else {
        return plain_announce(st, &req, peer, interval);
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
    let latest = st.repo(&repo).map_or(0, |s| s.generation());
    let now = Instant::now();
    {
        let mut reg = lock(&st.registry);
        if req.event == Event::Stopped {
            reg.stop(&report.volunteer, report.seq);
            tracing::info!(volunteer = %cred.name, repo = %repo, "volunteer stopped");
        } else if let Err(e) = reg.report(&repo, &report, cred.draining, now) {
            tracing::warn!(volunteer = %cred.name, error = %e, "refused announce");
            return refused(st, &e.to_string());
        }
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
    announce_response(
        interval,
        1,
        &empty,
        true,
        &[("ms_generation", Value::Int(latest as i64))],
    )
}

pub async fn scrape(State(st): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let raw = query.unwrap_or_default();
    match parse_scrape(&raw) {
        Ok(hashes) => {
            let stats = lock(&st.swarms).scrape(&hashes, Instant::now());
            bencoded(scrape_response(&stats))
        }
        Err(e) => bencoded(failure_response(&e.to_string())),
    }
}

/// A plain BitTorrent announce (volunteers' and the origin's librqbit sessions, or any client).
/// Who is handed the origin's seed is the [`crate::origin_gate`]'s decision.
fn plain_announce(
    st: &AppState,
    req: &tracker::announce::AnnounceRequest,
    peer: SocketAddr,
    interval: u32,
) -> Vec<u8> {
    let is_origin = req.peer_id.starts_with(crate::seed::ORIGIN_PEER_PREFIX);
    if is_origin {
        write(&st.origin_peers).insert(SocketAddr::new(peer.ip().to_canonical(), req.port));
    }
    let now = Instant::now();
    OUTCOME.with(|o| {
        let o = &mut *o.borrow_mut();
        if let Err(e) = lock(&st.swarms).announce_into(req, peer, now, o) {
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
