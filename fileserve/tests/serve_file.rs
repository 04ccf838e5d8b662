//! End-to-end behaviour of `serve_file` on real files in a temp dir.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::Response;
use http::header::{
    ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use mirrorswarm_fileserve::{Root, ServeOptions};

const MTIME_SECS: u64 = 1_700_000_000;
const MTIME_HTTP: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
const CONTENT: &[u8] = b"0123456789";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let f = Fixture { _dir: dir, root };
        f.write("pool/hello.deb", CONTENT);
        f
    }

    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME_SECS))
            .unwrap();
        path
    }

    fn deb(&self) -> PathBuf {
        self.root.join("pool/hello.deb")
    }
}

fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(name.clone(), HeaderValue::from_str(value).unwrap());
    }
    h
}

fn strong(tag: &str) -> ServeOptions {
    ServeOptions {
        etag: Some(tag.to_owned()),
        ..ServeOptions::default()
    }
}

/// `serve_file` for a fixture's file named by its path, as these tests name them: the
/// fixture's directory (the temporary one, `.tmp…`) held open, the rest relative to it.
async fn serve_file(
    method: &Method,
    headers: &HeaderMap,
    path: &Path,
    opts: &ServeOptions,
) -> Response {
    let top = path
        .ancestors()
        .find(|a| {
            a.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
        })
        .expect("a fixture's path");
    let rel = path.strip_prefix(top).unwrap().to_str().unwrap();
    let root = Root::open(top).unwrap();
    mirrorswarm_fileserve::serve_file(method, headers, &root, rel, opts).await
}

async fn get(path: &Path, pairs: &[(HeaderName, &str)], opts: &ServeOptions) -> Response {
    serve_file(&Method::GET, &headers(pairs), path, opts).await
}

async fn body_bytes(resp: Response) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn header<'a>(resp: &'a Response, name: &HeaderName) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn get_full_file() {
    let fx = Fixture::new();
    let resp = get(&fx.deb(), &[], &strong("abc123")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, &CONTENT_LENGTH), "10");
    assert_eq!(
        header(&resp, &CONTENT_TYPE),
        "application/vnd.debian.binary-package"
    );
    assert_eq!(header(&resp, &ACCEPT_RANGES), "bytes");
    assert_eq!(header(&resp, &ETAG), "\"abc123\"");
    assert_eq!(header(&resp, &LAST_MODIFIED), MTIME_HTTP);
    assert!(resp.headers().get(CONTENT_RANGE).is_none());
    assert_eq!(body_bytes(resp).await, CONTENT);
}

#[tokio::test]
async fn weak_etag_derived_without_one() {
    let fx = Fixture::new();
    let resp = get(&fx.deb(), &[], &ServeOptions::default()).await;
    let etag = header(&resp, &ETAG).to_owned();
    assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
    // Stable across requests for an unchanged file.
    let again = get(&fx.deb(), &[], &ServeOptions::default()).await;
    assert_eq!(header(&again, &ETAG), etag);
    // And it changes with the content length.
    let other = fx.write("pool/other.deb", b"01234567890");
    let resp = get(&other, &[], &ServeOptions::default()).await;
    assert_ne!(header(&resp, &ETAG), etag);
}

#[tokio::test]
async fn invalid_caller_etag_falls_back_to_weak() {
    let fx = Fixture::new();
    let resp = get(&fx.deb(), &[], &strong("bad\"tag")).await;
    assert!(header(&resp, &ETAG).starts_with("W/\""));
}

#[tokio::test]
async fn head_sends_headers_only() {
    let fx = Fixture::new();
    let resp = serve_file(&Method::HEAD, &HeaderMap::new(), &fx.deb(), &strong("t")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, &CONTENT_LENGTH), "10");
    assert_eq!(header(&resp, &ETAG), "\"t\"");
    assert_eq!(header(&resp, &LAST_MODIFIED), MTIME_HTTP);
    assert!(body_bytes(resp).await.is_empty());
}

#[tokio::test]
async fn head_with_range() {
    let fx = Fixture::new();
    let h = headers(&[(RANGE, "bytes=2-5")]);
    let resp = serve_file(&Method::HEAD, &h, &fx.deb(), &ServeOptions::default()).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, &CONTENT_LENGTH), "4");
    assert_eq!(header(&resp, &CONTENT_RANGE), "bytes 2-5/10");
    assert!(body_bytes(resp).await.is_empty());
}

#[tokio::test]
async fn other_methods_are_405() {
    let fx = Fixture::new();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let resp = serve_file(
            &method,
            &HeaderMap::new(),
            &fx.deb(),
            &ServeOptions::default(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(header(&resp, &ALLOW), "GET, HEAD");
        let len: usize = header(&resp, &CONTENT_LENGTH).parse().unwrap();
        assert_eq!(body_bytes(resp).await.len(), len);
    }
    // 405 wins even for a missing file.
    let resp = serve_file(
        &Method::POST,
        &HeaderMap::new(),
        &fx.root.join("nope"),
        &ServeOptions::default(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn ranges_give_206() {
    let fx = Fixture::new();
    let cases = [
        ("bytes=2-5", "bytes 2-5/10", &CONTENT[2..=5]),
        ("bytes=0-0", "bytes 0-0/10", &CONTENT[..1]),
        ("bytes=7-", "bytes 7-9/10", &CONTENT[7..]),
        ("bytes=-3", "bytes 7-9/10", &CONTENT[7..]),
        ("bytes=-100", "bytes 0-9/10", CONTENT),
        ("bytes=5-1000", "bytes 5-9/10", &CONTENT[5..]),
    ];
    for (range, content_range, want) in cases {
        let resp = get(&fx.deb(), &[(RANGE, range)], &strong("t")).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&resp, &CONTENT_RANGE), content_range, "{range}");
        assert_eq!(header(&resp, &CONTENT_LENGTH), want.len().to_string());
        assert_eq!(header(&resp, &ETAG), "\"t\"");
        assert_eq!(
            header(&resp, &CONTENT_TYPE),
            "application/vnd.debian.binary-package"
        );
        assert_eq!(body_bytes(resp).await, want, "{range}");
    }
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let fx = Fixture::new();
    for range in ["bytes=10-", "bytes=100-200", "bytes=-0"] {
        let resp = get(&fx.deb(), &[(RANGE, range)], &ServeOptions::default()).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(header(&resp, &CONTENT_RANGE), "bytes */10");
        let len: usize = header(&resp, &CONTENT_LENGTH).parse().unwrap();
        assert_eq!(body_bytes(resp).await.len(), len);
    }
}

#[tokio::test]
async fn multiple_or_malformed_ranges_send_full() {
    let fx = Fixture::new();
    for range in [
        "bytes=0-1,4-5",
        "bytes=5-2",
        "bytes=abc",
        "lines=1-2",
        "bytes=1 - 2",
    ] {
        let resp = get(&fx.deb(), &[(RANGE, range)], &ServeOptions::default()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert!(resp.headers().get(CONTENT_RANGE).is_none());
        assert_eq!(header(&resp, &CONTENT_LENGTH), "10");
        assert_eq!(body_bytes(resp).await, CONTENT, "{range}");
    }
}

#[tokio::test]
async fn empty_file() {
    let fx = Fixture::new();
    let empty = fx.write("empty.txt", b"");
    let resp = get(&empty, &[], &ServeOptions::default()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, &CONTENT_LENGTH), "0");
    assert_eq!(header(&resp, &CONTENT_TYPE), "text/plain; charset=utf-8");
    assert!(body_bytes(resp).await.is_empty());

    let resp = get(&empty, &[(RANGE, "bytes=0-")], &ServeOptions::default()).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, &CONTENT_RANGE), "bytes */0");

    let resp = get(&empty, &[(RANGE, "bytes=-5")], &ServeOptions::default()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, &CONTENT_LENGTH), "0");
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let fx = Fixture::new();
    let opts = strong("abc123");
    for inm in [
        "\"abc123\"",
        "\"zzz\", \"abc123\"",
        "W/\"abc123\"",
        "*",
        " \"x\",W/\"abc123\" ",
    ] {
        let resp = get(&fx.deb(), &[(IF_NONE_MATCH, inm)], &opts).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{inm}");
        assert_eq!(header(&resp, &ETAG), "\"abc123\"");
        assert_eq!(header(&resp, &LAST_MODIFIED), MTIME_HTTP);
        assert!(resp.headers().get(CONTENT_LENGTH).is_none());
        assert!(body_bytes(resp).await.is_empty(), "{inm}");
    }
    // HEAD revalidates the same way.
    let h = headers(&[(IF_NONE_MATCH, "\"abc123\"")]);
    let resp = serve_file(&Method::HEAD, &h, &fx.deb(), &opts).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn if_none_match_across_header_lines() {
    let fx = Fixture::new();
    let pairs = [(IF_NONE_MATCH, "\"a\""), (IF_NONE_MATCH, "\"abc123\"")];
    let resp = get(&fx.deb(), &pairs, &strong("abc123")).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn if_none_match_mismatch_gives_200_and_overrides_ims() {
    let fx = Fixture::new();
    let opts = strong("abc123");
    for inm in ["\"abc12\"", "\"abc1234\"", "abc123", "\"x\", \"y\""] {
        let resp = get(
            &fx.deb(),
            &[(IF_NONE_MATCH, inm), (IF_MODIFIED_SINCE, MTIME_HTTP)],
            &opts,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{inm}");
        assert_eq!(body_bytes(resp).await, CONTENT);
    }
}

#[tokio::test]
async fn weak_etag_matches_in_if_none_match() {
    let fx = Fixture::new();
    let first = get(&fx.deb(), &[], &ServeOptions::default()).await;
    let etag = header(&first, &ETAG).to_owned();
    let resp = get(
        &fx.deb(),
        &[(IF_NONE_MATCH, &etag)],
        &ServeOptions::default(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn if_modified_since() {
    let fx = Fixture::new();
    let opts = ServeOptions::default();
    let later = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME_SECS + 60));
    let earlier = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME_SECS - 1));

    let resp = get(&fx.deb(), &[(IF_MODIFIED_SINCE, MTIME_HTTP)], &opts).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let resp = get(&fx.deb(), &[(IF_MODIFIED_SINCE, &later)], &opts).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let resp = get(&fx.deb(), &[(IF_MODIFIED_SINCE, &earlier)], &opts).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, CONTENT);
    let resp = get(&fx.deb(), &[(IF_MODIFIED_SINCE, "yesterday")], &opts).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn sub_second_mtime_still_revalidates() {
    // Last-Modified has one-second resolution; a file modified at x.5s must
    // still match an If-Modified-Since of x.
    let fx = Fixture::new();
    let path = fx.write("frac.txt", b"x");
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_millis(MTIME_SECS * 1000 + 500))
        .unwrap();
    let resp = get(
        &path,
        &[(IF_MODIFIED_SINCE, MTIME_HTTP)],
        &ServeOptions::default(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn if_range() {
    let fx = Fixture::new();
    let opts = strong("abc123");
    let other_date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME_SECS - 1));
    let cases: [(&str, StatusCode); 6] = [
        ("\"abc123\"", StatusCode::PARTIAL_CONTENT),
        (MTIME_HTTP, StatusCode::PARTIAL_CONTENT),
        ("\"other\"", StatusCode::OK),
        ("W/\"abc123\"", StatusCode::OK),
        (&other_date, StatusCode::OK),
        ("nonsense", StatusCode::OK),
    ];
    for (if_range, want) in cases {
        let resp = get(
            &fx.deb(),
            &[(RANGE, "bytes=1-2"), (IF_RANGE, if_range)],
            &opts,
        )
        .await;
        assert_eq!(resp.status(), want, "{if_range}");
        let body = body_bytes(resp).await;
        if want == StatusCode::OK {
            assert_eq!(body, CONTENT);
        } else {
            assert_eq!(body, b"12");
        }
    }
}

#[tokio::test]
async fn missing_and_directory_are_404() {
    let fx = Fixture::new();
    for path in [
        fx.root.join("nope.deb"),
        fx.root.join("pool"),
        fx.deb().join("x"),
    ] {
        let resp = get(&path, &[], &ServeOptions::default()).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{}", path.display());
        assert_eq!(header(&resp, &CONTENT_TYPE), "text/plain; charset=utf-8");
        let len: usize = header(&resp, &CONTENT_LENGTH).parse().unwrap();
        let body = body_bytes(resp).await;
        assert_eq!(body.len(), len);
        assert!(!body.is_empty());
    }
    let resp = get(&fx.root.join("pool"), &[], &ServeOptions::default()).await;
    assert_eq!(body_bytes(resp).await, b"is a directory\n");
}

#[tokio::test]
async fn extra_headers_on_every_response() {
    let fx = Fixture::new();
    let mut extra = HeaderMap::new();
    extra.insert("digest", HeaderValue::from_static("sha-256=abc="));
    extra.insert("cache-control", HeaderValue::from_static("max-age=60"));
    // Framing headers from the caller must not break the body.
    extra.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
    let opts = ServeOptions {
        etag: Some("t".into()),
        extra_headers: extra,
        ..ServeOptions::default()
    };
    let cases = [
        (Method::GET, vec![], StatusCode::OK),
        (Method::HEAD, vec![], StatusCode::OK),
        (
            Method::GET,
            vec![(RANGE, "bytes=0-1")],
            StatusCode::PARTIAL_CONTENT,
        ),
        (
            Method::GET,
            vec![(RANGE, "bytes=50-")],
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
        (
            Method::GET,
            vec![(IF_NONE_MATCH, "\"t\"")],
            StatusCode::NOT_MODIFIED,
        ),
        (Method::POST, vec![], StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (method, pairs, want) in cases {
        let resp = serve_file(&method, &headers(&pairs), &fx.deb(), &opts).await;
        assert_eq!(resp.status(), want);
        assert_eq!(
            header(&resp, &HeaderName::from_static("digest")),
            "sha-256=abc="
        );
        assert_eq!(header(&resp, &http::header::CACHE_CONTROL), "max-age=60");
        assert_ne!(
            resp.headers().get(CONTENT_LENGTH).map(|v| v.as_bytes()),
            Some(&b"999"[..])
        );
    }
    let resp = get(&fx.root.join("missing"), &[], &opts).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&resp, &HeaderName::from_static("digest")),
        "sha-256=abc="
    );
}

#[tokio::test]
async fn extra_headers_replace_defaults() {
    let fx = Fixture::new();
    let mut extra = HeaderMap::new();
    extra.insert(ACCEPT_RANGES, HeaderValue::from_static("none"));
    let opts = ServeOptions {
        extra_headers: extra,
        ..ServeOptions::default()
    };
    let resp = get(&fx.deb(), &[], &opts).await;
    let values: Vec<_> = resp.headers().get_all(ACCEPT_RANGES).iter().collect();
    assert_eq!(values, vec!["none"]);
}

#[tokio::test]
async fn content_type_override_and_table() {
    let fx = Fixture::new();
    let opts = ServeOptions {
        content_type: Some("application/x-custom"),
        ..ServeOptions::default()
    };
    let resp = get(&fx.deb(), &[], &opts).await;
    assert_eq!(header(&resp, &CONTENT_TYPE), "application/x-custom");

    let release = fx.write("dists/stable/InRelease", b"Origin: x\n");
    let resp = get(&release, &[], &ServeOptions::default()).await;
    assert_eq!(header(&resp, &CONTENT_TYPE), "text/plain; charset=utf-8");
    let xz = fx.write("dists/stable/main/binary-amd64/Packages.xz", b"\xfd7zXZ");
    let resp = get(&xz, &[], &ServeOptions::default()).await;
    assert_eq!(header(&resp, &CONTENT_TYPE), "application/x-xz");
}

/// Deterministic pseudo-random bytes, so chunk-boundary bugs show up.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn large_file_streams_in_chunks() {
    let fx = Fixture::new();
    let data = noise(3 * 1024 * 1024 + 123);
    let path = fx.write("big.iso", &data);
    let resp = get(&path, &[], &ServeOptions::default()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, &CONTENT_LENGTH), data.len().to_string());
    assert_eq!(header(&resp, &CONTENT_TYPE), "application/x-iso9660-image");

    let mut body = resp.into_body();
    let mut got = Vec::with_capacity(data.len());
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        let chunk = frame.unwrap().into_data().unwrap();
        assert!(chunk.len() <= 64 * 1024, "chunk of {}", chunk.len());
        got.extend_from_slice(&chunk);
        frames += 1;
    }
    assert!(frames >= 49, "only {frames} frames: not streamed");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "content differs");
}

#[tokio::test]
async fn large_file_range_across_chunks() {
    let fx = Fixture::new();
    let data = noise(2 * 1024 * 1024);
    let path = fx.write("big.bin", &data);
    let (start, end) = (65_530usize, 1_500_000usize);
    let range = format!("bytes={start}-{end}");
    let resp = get(&path, &[(RANGE, &range)], &ServeOptions::default()).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&resp, &CONTENT_RANGE),
        format!("bytes {start}-{end}/{}", data.len())
    );
    assert_eq!(
        header(&resp, &CONTENT_LENGTH),
        (end - start + 1).to_string()
    );
    let body = body_bytes(resp).await;
    assert!(body == data[start..=end], "range content differs");
}

#[tokio::test]
async fn last_modified_is_file_mtime() {
    let fx = Fixture::new();
    let path = fx.write("now.txt", b"x");
    let now = SystemTime::now();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(now).unwrap();
    let resp = get(&path, &[], &ServeOptions::default()).await;
    assert_eq!(header(&resp, &LAST_MODIFIED), httpdate::fmt_http_date(now));
}

#[cfg(unix)]
#[tokio::test]
async fn pre_epoch_mtime_does_not_panic() {
    let fx = Fixture::new();
    let path = fx.write("old.txt", b"old");
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(UNIX_EPOCH - Duration::from_secs(86_400))
        .unwrap();
    let resp = get(
        &path,
        &[(IF_MODIFIED_SINCE, MTIME_HTTP)],
        &ServeOptions::default(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(LAST_MODIFIED).is_none());
    assert_eq!(body_bytes(resp).await, b"old");
}
