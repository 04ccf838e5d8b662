//! `POST /api/batch/<repo>`: a syncing peer's batch of small files ([`prsync::batch`]),
//! answered from what this volunteer verified, and from what its own pull under way has
//! checked against the signed manifest and staged or (a first fill) placed in the tree
//! ([`prsync::batched::Written`]): a volunteer still filling already helps the others, and
//! sends nothing it has not checked. It is a sync connection: the balancer sees it in `sync_conns` and its bytes
//! in the sync rate, not as a customer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use fileserve::text_response as text;
use prsync::batch::{Check, Wanted};

use crate::VolunteerState;

/// Counts one batch answer being sent (`VolunteerState::batches`, among the sync
/// connections) until dropped.
struct Place(Arc<VolunteerState>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.batches.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn answer(
    State(st): State<Arc<VolunteerState>>,
    Path(repo): Path<String>,
    body: Bytes,
) -> Response {
    let Some(mirror) = st.mirrors.get(&repo) else {
        return text(StatusCode::NOT_FOUND, format!("not mirroring `{repo}`"));
    };
    if st.paused.load(Ordering::Relaxed) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "paused by its admin");
    }
    let items = match prsync::batch::parse_request(&body) {
        Ok(items) => items,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let view = mirror.view();
    let written = mirror.written.clone();
    let staging = prsync::local::StateDir::new(&mirror.dir);
    // Where a first fill places files as they arrive, before any scan verified them.
    let tree = match &view.root {
        Some(root) => Some(root.clone()),
        None => manifest::beneath::Root::open(&mirror.dir)
            .ok()
            .map(Arc::new),
    };
    st.batches.fetch_add(1, Ordering::Relaxed);
    let place = Place(st.clone());
    let open = move |w: &Wanted| {
        let _held = &place; // released when the answer is read through, or abandoned
                            // Only what is known to hold the asked bytes, looked up in memory first: a peer
                            // asks of files this volunteer mostly lacks while both fill, and a miss must cost
                            // no file system lookup.
        if let Some(f) = verified(&view, w) {
            return Some((f, Check::Known));
        }
        if written.placed(&w.path, &w.sha256) {
            return placed(tree.as_deref(), w).map(|f| (f, Check::Known));
        }
        if written.staged(&w.sha256) {
            return staged(&staging, w).map(|f| (f, Check::Known));
        }
        None
    };
    let counted = st.clone();
    let body = Body::from_stream(prsync::batch::answer(items, open, move |n| {
        counted.batch_uploaded.fetch_add(n, Ordering::Relaxed);
    }));
    let body = match st.uplink.current() {
        Some(b) => crate::limit::throttle(body, b),
        None => body,
    };
    ([(header::CONTENT_TYPE, prsync::batch::CONTENT_TYPE)], body).into_response()
}

/// `GET /api/have/<repo>`: the batches this volunteer's pull under way has written whole
/// ([`prsync::batched::Written::batches`]), so filling peers ask it only for those.
pub async fn have(State(st): State<Arc<VolunteerState>>, Path(repo): Path<String>) -> Response {
    match st.mirrors.get(&repo) {
        Some(m) => axum::Json(m.written.batches()).into_response(),
        None => text(StatusCode::NOT_FOUND, format!("not mirroring `{repo}`")),
    }
}

/// A file of the tree that verified with these bytes and is unchanged since.
fn verified(view: &crate::holdings::HoldingsView, w: &Wanted) -> Option<std::fs::File> {
    let v = view.servable.get(&w.path)?;
    if v.sha256 != w.sha256 || v.size != w.size {
        return None;
    }
    let (f, meta) = view.root.as_ref()?.open_sized(&w.path, w.size).ok()?;
    (manifest::scan::stat_key(&meta).1 == v.mtime_ns).then_some(f)
}

/// A file of the tree a first fill placed as it arrived, not verified by a scan yet.
fn placed(tree: Option<&manifest::beneath::Root>, w: &Wanted) -> Option<std::fs::File> {
    tree?.open_sized(&w.path, w.size).ok().map(|(f, _)| f)
}

/// A content this volunteer's pull fetched, verified and staged, not installed yet.
fn staged(staging: &prsync::local::StateDir, w: &Wanted) -> Option<std::fs::File> {
    let f = std::fs::File::open(staging.staged(&w.sha256.to_hex())).ok()?;
    let meta = f.metadata().ok()?;
    (meta.is_file() && meta.len() == w.size).then_some(f)
}
