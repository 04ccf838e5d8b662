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
        "sync_uploaded_bytes": st.sync_uploaded.load(Ordering::Relaxed),
        "max_connections": st.config.max_connections,
        "mirrors": mirrors,
    }))
    .into_response()
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
    let path = decoded.trim_start_matches('/');
    let (repo, rel) = path.split_once('/').unwrap_or((path, ""));
    let Some(mirror) = st.mirrors.get(repo) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("this volunteer does not mirror `{repo}`"),
        );
    };
    let Some(verified) = mirror.view().servable.get(rel).copied() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("`{rel}` is not a verified file of `{repo}` here"),
        );
    };
    let file = match fileserve::safe_join(&mirror.dir, rel) {
        Ok(f) => f,
        Err(e) => return text(e.status(), format!("`{rel}`: {e}")),
    };
    // The file must still be what verified: a change on disk since the last scan (an admin
    // copying in a new version, or tampering) takes it out of service until it re-verifies.
    let unchanged = tokio::fs::metadata(&file)
        .await
        .map(|m| manifest::scan::stat_key(&m) == (verified.size, verified.mtime_ns))
        .unwrap_or(false);
    if !unchanged {
        tracing::warn!(
            repo,
            path = rel,
            "file changed on disk since it verified; not serving it"
        );
        st.rescan_now.notify_one();
        return text(
            StatusCode::NOT_FOUND,
            format!("`{rel}` changed on disk and is being re-verified"),
        );
    }
    let Some(guard) = try_acquire(
        &st.active,
        st.config.max_connections,
        st.oracle_feed.clone(),
    ) else {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many customers right now; retry shortly",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return r;
    };
    let opts = ServeOptions {
        etag: Some(verified.sha256.to_hex()),
        content_type: Some(fileserve::content_type_for(std::path::Path::new(rel))),
        extra_headers: HeaderMap::new(),
    };
    let resp = fileserve::serve_file(&method, &headers, &file, &opts).await;
    if method == Method::GET && resp.status().is_success() {
        let len = fileserve::declared_length(&resp);
        st.uploaded.fetch_add(len, Ordering::Relaxed);
        st.served.fetch_add(1, Ordering::Relaxed);
    }
    let resp = match &st.bucket {
        Some(b) => resp.map(|body| crate::limit::throttle(body, b.clone())),
        None => resp,
    };
    // A customer that stops reading must not keep its slot.
    fileserve::with_stall_guard(resp, guard, st.config.limits.client_stall())
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
