//! Serving one static file over HTTP: GET/HEAD, validators, conditional
//! requests and single byte ranges, streamed from disk.
//!
//! apt, wget and curl resume downloads with `Range` and revalidate index
//! files with `If-Modified-Since`/`If-None-Match`, so those must be exact;
//! multipart ranges are deliberately not supported (RFC 9110 lets a server
//! ignore them and answer 200).

mod conditional;
mod mime;
mod range;

use std::fs::Metadata;
use std::path::Path;

use axum::body::Body;
use axum::response::Response;
use http::header::{
    ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE,
    TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::fast;
use conditional::{http_date, if_range_allows, not_modified, ETag, Validators};
pub use manifest::beneath::{OpenError, Root};
pub use mime::content_type_for;
pub use range::{parse_range, RangeOutcome};

/// Bytes read from disk per body chunk; bodies up to this size are read in one go.
const CHUNK: usize = 64 * 1024;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Per-file choices the caller makes; `Default` derives everything.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Strong ETag value without quotes (e.g. a hex SHA-256 prefix), the same
    /// on every mirror. If `None`, or not valid inside an ETag, a weak one is
    /// derived from size and mtime.
    pub etag: Option<String>,
    /// Overrides [`content_type_for`].
    pub content_type: Option<&'static str>,
    /// Added to every response (e.g. `Digest`), replacing same-named headers
    /// this module sets. Framing headers (`Content-Length`,
    /// `Transfer-Encoding`, `Content-Range`) are ignored: getting those wrong
    /// would corrupt the download.
    pub extra_headers: HeaderMap,
}

/// Answer `method` on `rel` beneath `root` (see [`Root::open_file`]: a regular file reached
/// without leaving the root). Never fails: errors become 404/405/500 responses.
pub async fn serve_file(
    method: &Method,
    headers: &HeaderMap,
    root: &Root,
    rel: &str,
    opts: &ServeOptions,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        add_extra_headers(resp.headers_mut(), &opts.extra_headers);
        return resp;
    }
    // File system calls are made inline, as nginx makes them: open and fstat of files in the
    // page cache take microseconds, and a hop to tokio's blocking pool for each one cost
    // more than the call (a 16 KiB file took five). The price is that a cold disk stalls
    // this worker thread for the read, as it stalls an nginx worker.
    match root.open_file(rel) {
        Ok((f, meta)) => serve_open(method, headers, f, &meta, Path::new(rel), opts),
        Err(e) => {
            let mut resp = open_error_response(&e);
            add_extra_headers(resp.headers_mut(), &opts.extra_headers);
            resp
        }
    }
}

/// The answer to a path [`Root::open_file`] refused, revealing nothing of the disk: what
/// is not a regular file inside the root is reported as missing, so that probing cannot
/// tell which paths exist outside it.
pub fn open_error_response(e: &OpenError) -> Response {
    match e {
        OpenError::NotRegular("directory") => not_found("is a directory\n"),
        OpenError::NotRegular(_) => not_found("not a regular file\n"),
        OpenError::BadPath(_)
        | OpenError::NotFound
        | OpenError::OutsideRoot
        | OpenError::SizeChanged { .. }
        | OpenError::NotHeld => not_found("no such file\n"),
        OpenError::Io(e) => io_error_response(e),
    }
}

/// [`serve_file`] for a file [`Root::open_file`] opened (`path` names it, for its type).
pub fn serve_open(
    method: &Method,
    headers: &HeaderMap,
    f: std::fs::File,
    meta: &Metadata,
    path: &Path,
    opts: &ServeOptions,
) -> Response {
    let mut resp = respond(method, headers, f, meta, path, opts);
    add_extra_headers(resp.headers_mut(), &opts.extra_headers);
    resp
}

fn validators(meta: &Metadata, opts: &ServeOptions) -> Validators {
    let mtime = meta.modified().ok();
    Validators {
        etag: opts
            .etag
            .as_deref()
            .and_then(ETag::strong)
            .or_else(|| mtime.and_then(|m| ETag::weak_from(meta.len(), m))),
        last_modified: mtime.and_then(http_date),
    }
}

fn respond(
    method: &Method,
    headers: &HeaderMap,
    f: std::fs::File,
    meta: &Metadata,
    file: &Path,
    opts: &ServeOptions,
) -> Response {
    let len = meta.len();
    let validators = validators(meta, opts);

    let mut resp = Response::new(Body::empty());
    set_validator_headers(resp.headers_mut(), &validators);

    if not_modified(headers, &validators) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return resp;
    }

    let outcome = match headers.get(RANGE) {
        Some(value) if if_range_allows(headers, &validators) => value
            .to_str()
            .map_or(RangeOutcome::Full, |s| parse_range(s, len)),
        _ => RangeOutcome::Full,
    };
    let (start, body_len) = match outcome {
        RangeOutcome::Full => (0, len),
        RangeOutcome::Partial(start, end) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            insert_str(
                resp.headers_mut(),
                CONTENT_RANGE,
                &format!("bytes {start}-{end}/{len}"),
            );
            (start, end - start + 1)
        }
        RangeOutcome::Unsatisfiable => {
            let msg = "range not satisfiable\n";
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            insert_str(h, CONTENT_RANGE, &format!("bytes */{len}"));
            insert_str(h, CONTENT_TYPE, TEXT_PLAIN);
            h.insert(CONTENT_LENGTH, HeaderValue::from(msg.len()));
            *resp.body_mut() = Body::from(msg);
            return resp;
        }
    };

    let content_type = opts.content_type.unwrap_or_else(|| content_type_for(file));
    let h = resp.headers_mut();
    insert_str(h, CONTENT_TYPE, content_type);
    h.insert(CONTENT_LENGTH, HeaderValue::from(body_len));

    if method == Method::GET && body_len > 0 {
        // Exactly Content-Length bytes from `start`, even if the file grows meanwhile.
        *resp.body_mut() = if body_len <= CHUNK as u64 {
            let mut buf = vec![0u8; body_len as usize];
            if let Err(e) = read_exact_at(&f, &mut buf, start) {
                return io_error_response(&e);
            }
            Body::from(buf)
        } else {
            Body::from_stream(Chunks {
                file: f,
                pos: start,
                end: start + body_len,
            })
        };
    }
    resp
}

/// Whether the fast path can answer `req` for a file with [`fast_whole_file`]: it asks for
/// no range and makes no condition (those go to the full path, which knows them all).
pub fn is_plain_file_request(req: &fast::Request<'_>) -> bool {
    req.headers().all(|(name, _)| {
        !(name.eq_ignore_ascii_case("range")
            || name.eq_ignore_ascii_case("if-range")
            || name.eq_ignore_ascii_case("if-none-match")
            || name.eq_ignore_ascii_case("if-modified-since")
            || name.eq_ignore_ascii_case("if-match")
            || name.eq_ignore_ascii_case("if-unmodified-since"))
    })
}

/// The fast path's `200 OK` for a whole file opened by [`Root::open_file`] (for a request
/// [`is_plain_file_request`] accepted): the same headers [`serve_open`] sends, the body by
/// `sendfile`, `guard` kept until it is sent.
pub fn fast_whole_file(
    reply: &mut fast::Reply<'_>,
    f: std::fs::File,
    meta: &Metadata,
    path: &Path,
    opts: &ServeOptions,
    guard: Box<dyn Send>,
    pace: Option<std::sync::Arc<dyn fast::Pace>>,
) -> fast::Answer {
    let v = validators(meta, opts);
    reply.status(200, "OK");
    // As in `serve_open`, an extra header replaces the module's own of that name.
    let own = |name: http::HeaderName| !opts.extra_headers.contains_key(name);
    if own(ACCEPT_RANGES) {
        reply.header("accept-ranges", b"bytes");
    }
    if let Some(tag) = v.etag.as_ref().and_then(ETag::header_value) {
        if own(ETAG) {
            reply.header("etag", tag.as_bytes());
        }
    }
    if let Some(lm) = v.last_modified {
        if own(LAST_MODIFIED) {
            reply.header("last-modified", lm.to_string().as_bytes());
        }
    }
    if own(CONTENT_TYPE) {
        let content_type = opts.content_type.unwrap_or_else(|| content_type_for(path));
        reply.header("content-type", content_type.as_bytes());
    }
    for (name, value) in &opts.extra_headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONTENT_RANGE {
            continue;
        }
        reply.header(name.as_str(), value.as_bytes());
    }
    reply.end_head(meta.len());
    fast::Answer::File(fast::FileBody {
        file: f,
        offset: 0,
        len: meta.len(),
        guard,
        pace,
    })
}

/// `pread` until `buf` is full; a file that shrank is an error (the length was promised).
fn read_exact_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, offset)
}

/// A body read from an open file chunk by chunk, each chunk when the connection can take it.
struct Chunks {
    file: std::fs::File,
    pos: u64,
    end: u64,
}

impl futures_util::Stream for Chunks {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let left = self.end - self.pos;
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let mut buf = vec![0u8; left.min(CHUNK as u64) as usize];
        let r = read_exact_at(&self.file, &mut buf, self.pos);
        std::task::Poll::Ready(Some(match r {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(bytes::Bytes::from(buf))
            }
            Err(e) => {
                // A file cut short mid-body: end the stream after this error, which aborts
                // the response rather than sending fewer bytes than promised.
                self.pos = self.end;
                Err(e)
            }
        }))
    }
}

fn set_validator_headers(h: &mut HeaderMap, v: &Validators) {
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(value) = v.etag.as_ref().and_then(ETag::header_value) {
        h.insert(ETAG, value);
    }
    if let Some(lm) = v.last_modified {
        insert_str(h, LAST_MODIFIED, &lm.to_string());
    }
}

/// Insert a header whose value is built at runtime; skipped if invalid,
/// because a missing optional header beats a panic.
fn insert_str(h: &mut HeaderMap, name: http::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        h.insert(name, value);
    }
}

fn add_extra_headers(h: &mut HeaderMap, extra: &HeaderMap) {
    for name in extra.keys() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONTENT_RANGE {
            continue;
        }
        h.remove(name);
        for value in extra.get_all(name) {
            h.append(name.clone(), value.clone());
        }
    }
}

fn text_response(status: StatusCode, msg: &'static str) -> Response {
    let mut resp = Response::new(Body::from(msg));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    h.insert(CONTENT_LENGTH, HeaderValue::from(msg.len()));
    resp
}

fn not_found(reason: &'static str) -> Response {
    text_response(StatusCode::NOT_FOUND, reason)
}

/// Map an I/O error to a response without revealing paths or OS details.
fn io_error_response(e: &std::io::Error) -> Response {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => {
            not_found("no such file\n")
        }
        std::io::ErrorKind::PermissionDenied => {
            text_response(StatusCode::FORBIDDEN, "permission denied\n")
        }
        _ => text_response(StatusCode::INTERNAL_SERVER_ERROR, "error reading file\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::os::unix::fs::symlink;

    async fn get(root: &Root, rel: &str) -> (StatusCode, Vec<u8>) {
        let opts = ServeOptions::default();
        let resp = serve_file(&Method::GET, &HeaderMap::new(), root, rel, &opts).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    /// Each way a published file can be swapped after the root was opened: never the bytes
    /// from outside, never a hang, always a clear refusal.
    #[tokio::test]
    async fn a_file_swapped_after_publishing_is_never_served_from_outside() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("root");
        std::fs::create_dir_all(top.join("dists/stable")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside/stable")).unwrap();
        std::fs::write(dir.path().join("outside/stable/Release"), b"SECRET").unwrap();
        std::fs::write(dir.path().join("secret"), b"SECRET").unwrap();
        for f in ["Release", "InRelease", "Packages", "Sources", "Contents"] {
            std::fs::write(top.join("dists/stable").join(f), b"published").unwrap();
        }
        let root = Root::open(&top).unwrap();
        assert_eq!(
            get(&root, "dists/stable/Release").await,
            (StatusCode::OK, b"published".to_vec())
        );
        let stable = top.join("dists/stable");
        // A file swapped for a link out (absolute, and relative through `..`).
        std::fs::remove_file(stable.join("Release")).unwrap();
        symlink(dir.path().join("secret"), stable.join("Release")).unwrap();
        std::fs::remove_file(stable.join("InRelease")).unwrap();
        symlink("../../../secret", stable.join("InRelease")).unwrap();
        // A file swapped for a FIFO (opening it must not hang) and for a directory.
        std::fs::remove_file(stable.join("Packages")).unwrap();
        let fifo = std::ffi::CString::new(stable.join("Packages").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::remove_file(stable.join("Sources")).unwrap();
        std::fs::create_dir(stable.join("Sources")).unwrap();
        for rel in [
            "dists/stable/Release",
            "dists/stable/InRelease",
            "dists/stable/Packages",
            "dists/stable/Sources",
        ] {
            let (status, body) = get(&root, rel).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{rel}");
            assert_ne!(body, b"SECRET", "{rel}");
        }
        // A file rewritten with other bytes: the size published no longer matches.
        std::fs::write(stable.join("Contents"), b"longer than published").unwrap();
        assert!(matches!(
            root.open_sized("dists/stable/Contents", 9),
            Err(OpenError::SizeChanged {
                expected: 9,
                found: 21
            })
        ));
        // A directory on the way swapped for a link out.
        std::fs::rename(top.join("dists"), dir.path().join("old-dists")).unwrap();
        symlink(dir.path().join("outside"), top.join("dists")).unwrap();
        let (status, body) = get(&root, "dists/stable/Release").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_ne!(body, b"SECRET");
    }
}
