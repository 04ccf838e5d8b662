//! The volunteer admin's controls, on the volunteer's own port: `GET /admin/status`,
//! `POST /admin/pause`, `POST /admin/resume` and `POST /admin/limits`. They need the bearer
//! token in `<data-dir>/control.token` (mode 0600, made on first start), so only someone who
//! can read the data directory can use them. `mirrorswarm volunteer-ctl` finds the volunteer
//! through `<data-dir>/volunteer.json` and reads the token.
//!
//! Changes take effect at once and are announced to the server right away; they last until
//! the volunteer restarts (put them in the TOML to keep them).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fileserve::text_response as text;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::VolunteerState;

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.token")
}

/// The volunteer's [`config::runlock`] in its data directory.
pub const RUN_LOCK: &str = "volunteer";

pub fn runtime_path(data_dir: &Path) -> PathBuf {
    data_dir.join("volunteer.json")
}

/// The control token, made (mode 0600) if there is none.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = token_path(data_dir);
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let t = hex::encode(b);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path)?;
    f.write_all(t.as_bytes())?;
    f.sync_all()?;
    Ok(t)
}

/// Where this volunteer can be reached by its admin's CLI.
pub fn write_runtime_info(data_dir: &Path, url: &str) -> std::io::Result<()> {
    let info = serde_json::json!({ "url": url, "pid": std::process::id() });
    let path = runtime_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, info.to_string())?;
    std::fs::rename(tmp, path)
}

fn authorized(st: &VolunteerState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if fileserve::bearer_matches(headers, &st.control_token) {
        Ok(())
    } else {
        Err(Box::new(text(
            StatusCode::UNAUTHORIZED,
            "control token required (see <data-dir>/control.token)",
        )))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ControlStatus {
    pub name: String,
    pub server: String,
    pub paused: bool,
    pub max_connections: u32,
    /// 0: unlimited.
    pub upload_bps: u64,
    pub active_connections: u32,
    pub served_requests: u64,
    pub uploaded_bytes: u64,
    /// Per repository: (held generation, newest known, files missing or different).
    pub mirrors: std::collections::BTreeMap<String, (u64, u64, usize)>,
}

pub fn status_of(st: &VolunteerState) -> ControlStatus {
    ControlStatus {
        name: st.credential.name.clone(),
        server: st.config.server.clone().unwrap_or_default(),
        paused: st.paused.load(Ordering::Relaxed),
        max_connections: st.max_connections.load(Ordering::Relaxed),
        upload_bps: st.uplink.bps(),
        active_connections: st.active.load(Ordering::Acquire),
        served_requests: st.served.load(Ordering::Relaxed),
        uploaded_bytes: st.uploaded.load(Ordering::Relaxed),
        mirrors: st
            .mirrors
            .iter()
            .map(|(r, m)| {
                let v = m.view();
                (r.clone(), (v.held, v.latest, v.missing.len()))
            })
            .collect(),
    }
}

pub async fn status(State(st): State<Arc<VolunteerState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    Json(status_of(&st)).into_response()
}

pub async fn pause(State(st): State<Arc<VolunteerState>>, headers: HeaderMap) -> Response {
    set_paused(st, headers, true).await
}

pub async fn resume(State(st): State<Arc<VolunteerState>>, headers: HeaderMap) -> Response {
    set_paused(st, headers, false).await
}

async fn set_paused(st: Arc<VolunteerState>, headers: HeaderMap, paused: bool) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    st.paused.store(paused, Ordering::Relaxed);
    tracing::info!(paused, "changed by the admin");
    st.announce_now.notify_one();
    Json(status_of(&st)).into_response()
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsChange {
    pub max_connections: Option<u32>,
    /// 0: unlimited.
    pub upload_bps: Option<u64>,
}

pub async fn limits(
    State(st): State<Arc<VolunteerState>>,
    headers: HeaderMap,
    body: Option<Json<LimitsChange>>,
) -> Response {
    if let Err(r) = authorized(&st, &headers) {
        return *r;
    }
    let Some(Json(change)) = body else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"max_connections\": N, \"upload_bps\": N}",
        );
    };
    if let Some(n) = change.max_connections {
        if !(1..=100_000).contains(&n) {
            return text(
                StatusCode::BAD_REQUEST,
                "max_connections must be 1..=100000",
            );
        }
        st.max_connections.store(n, Ordering::Relaxed);
    }
    if let Some(bps) = change.upload_bps {
        if bps != 0 && bps < 16_384 {
            return text(
                StatusCode::BAD_REQUEST,
                "upload_bps must be 0 (unlimited) or at least 16384",
            );
        }
        st.uplink.set(Some(bps));
    }
    tracing::info!(?change, "limits changed by the admin");
    st.announce_now.notify_one();
    Json(status_of(&st)).into_response()
}
