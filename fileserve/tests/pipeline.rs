//! The pieces used together the way the server and volunteers will: an axum
//! fallback handler that decodes, opens beneath the root, serves and guards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use mirrorswarm_fileserve::{decode_url_path, serve_file, with_guard, Root, ServeOptions};
use tower::ServiceExt;

#[derive(Clone)]
struct AppState {
    root: Arc<Root>,
    active: Arc<AtomicUsize>,
}

struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handler(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let decoded = match decode_url_path(uri.path()) {
        Ok(d) => d,
        Err(e) => return (e.status(), e.to_string()).into_response(),
    };
    let rel = decoded.strip_prefix('/').unwrap_or(&decoded);
    let resp = serve_file(
        &method,
        &headers,
        &state.root,
        rel,
        &ServeOptions::default(),
    )
    .await;
    state.active.fetch_add(1, Ordering::SeqCst);
    with_guard(resp, Active(state.active.clone()))
}

fn app() -> (tempfile::TempDir, Router, Arc<AtomicUsize>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("pool/main")).unwrap();
    std::fs::write(root.join("pool/main/a b.deb"), b"debdata").unwrap();
    std::fs::write(dir.path().join("secret"), b"secret").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak")).unwrap();
    let active = Arc::new(AtomicUsize::new(0));
    let state = AppState {
        root: Arc::new(Root::open(&root).unwrap()),
        active: active.clone(),
    };
    let router = Router::new().fallback(handler).with_state(state);
    (dir, router, active)
}

async fn call(router: &Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

#[tokio::test]
async fn serves_encoded_names() {
    let (_dir, router, active) = app();
    assert_eq!(
        call(&router, "/pool/main/a%20b.deb").await,
        (StatusCode::OK, b"debdata".to_vec())
    );
    assert_eq!(active.load(Ordering::SeqCst), 0, "guard not released");
}

#[tokio::test]
async fn hostile_paths_refused() {
    let (_dir, router, _active) = app();
    for uri in [
        "/pool/%2e%2e/%2e%2e/secret",
        "/pool/..%2F..%2Fsecret",
        "/pool/main/a%00.deb",
        "/pool//main/a%20b.deb",
        "/pool/main/a%5Cb",
    ] {
        let (status, body) = call(&router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_ne!(body, b"secret", "{uri}");
    }
    #[cfg(unix)]
    {
        let (status, body) = call(&router, "/leak").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_ne!(body, b"secret");
    }
    let (status, _) = call(&router, "/pool/main/missing.deb").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn guard_counts_streaming_download() {
    let (_dir, router, active) = app();
    let req = Request::get("/pool/main/a%20b.deb")
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(active.load(Ordering::SeqCst), 1, "download not counted");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"debdata");
    assert_eq!(active.load(Ordering::SeqCst), 0);

    // Client disconnects before reading anything.
    let req = Request::get("/pool/main/a%20b.deb")
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(active.load(Ordering::SeqCst), 1);
    drop(resp);
    assert_eq!(active.load(Ordering::SeqCst), 0);
}
