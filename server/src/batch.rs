//! What a syncing volunteer asks of the server in bulk: `POST /api/batch/<repo>` (many small
//! files in one answer, [`prsync::batch`]) and `GET /api/sources/<repo>` (the volunteers it
//! may ask the same of first).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::seq::SliceRandom;

use crate::state::AppState;
use fileserve::text_response as text;
use prsync::batch::Check;

/// `POST /api/batch/<repo>`: the origin's answer to a batch. It sends what it published and
/// holds (as `/.origin/` would, checked on the handle it reads), `N` for the rest: a file of
/// another generation, one its tree lacks, one not of the published size.
pub async fn origin_batch(
    State(st): State<Arc<AppState>>,
    Path(repo): Path<String>,
    body: Bytes,
) -> Response {
    let Some(snap) = st.newest(&repo) else {
        return text(StatusCode::NOT_FOUND, format!("no repository `{repo}`"));
    };
    let items = match prsync::batch::parse_request(&body) {
        Ok(items) => items,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let asked = items.len();
    let open = move |w: &prsync::batch::Wanted| {
        let entry = snap.files.get(&w.path)?;
        if entry.sha256 != w.sha256 || entry.size != w.size || !snap.files.held_here(&w.path) {
            return None;
        }
        let (f, meta) = snap.beneath.open_sized(&w.path, w.size).ok()?;
        // Rewritten in place since it was published: sent only if its bytes still match.
        let unchanged = snap.files.stat(&w.path) == Some(manifest::scan::stat_key(&meta));
        let check = if unchanged { Check::Known } else { Check::Hash };
        Some((f, check))
    };
    let counted = st.clone();
    let body = prsync::batch::answer(items, open, move |n| {
        counted.origin_http_bytes.fetch_add(n, Ordering::Relaxed);
    });
    tracing::debug!(repo, files = asked, "batch from the origin");
    (
        [(header::CONTENT_TYPE, prsync::batch::CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct SourcesQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// How many sources a syncing volunteer is told of, unless it asks for fewer or more (up to
/// [`MAX_SOURCES`]).
const DEFAULT_SOURCES: usize = 8;
const MAX_SOURCES: usize = 32;

/// One volunteer a syncing peer may ask for batches.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub url: String,
    /// The generation it fully holds (0: still filling; it may hold some files), of its part
    /// if it holds one.
    pub held: u64,
    /// The part it holds (its patterns, `manifest::select::Selection`'s canonical text),
    /// empty if all of it: a peer asks it only for files in it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub part: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    pub generation: u64,
    pub sources: Vec<Source>,
}

/// `GET /api/sources/<repo>[?limit=N]`: volunteers a syncing peer may ask for batches before
/// the origin: those holding the newest generation first, the least loaded of them first,
/// then those holding less (ties in random order, so pullers spread out). Their addresses are
/// what redirects hand out anyway.
pub async fn sources(
    State(st): State<Arc<AppState>>,
    Path(repo): Path<String>,
    Query(q): Query<SourcesQuery>,
) -> Response {
    let Some(snap) = st.newest(&repo) else {
        return text(StatusCode::NOT_FOUND, format!("no repository `{repo}`"));
    };
    let latest = snap.generation;
    let limit = q.limit.unwrap_or(DEFAULT_SOURCES).min(MAX_SOURCES);
    let mut found: Vec<(bool, f64, Source)> = {
        let reg = st.balancer.registry();
        reg.sync_sources(&repo, latest, Instant::now())
            .into_iter()
            .map(|(v, held)| {
                let load = v.load.customer_conns as f64 / v.load.capacity.max(1) as f64;
                let source = Source {
                    url: v.url().to_string(),
                    held,
                    part: v
                        .generations
                        .part(&repo)
                        .map_or_else(String::new, |p| p.text.clone()),
                };
                (held < latest, load, source)
            })
            .collect()
    };
    found.shuffle(&mut rand::thread_rng());
    found.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    Json(Sources {
        generation: latest,
        sources: found.into_iter().take(limit).map(|(_, _, s)| s).collect(),
    })
    .into_response()
}
