//! A client that sends its request and then shuts down its write side (`shutdown(SHUT_WR)`,
//! as `nc -N` and some scripted clients do) is still answered, completely, on every path:
//! the routed ones (hyper and the router) and the fast path's, of the server and of a
//! volunteer.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// Send a `GET` of each of `paths` at once (the last with `Connection: close` if `close`),
/// shut down the write side, read to EOF (bounded by a read timeout), and return what came
/// back.
fn half_closed_gets(port: u16, paths: &[&str], close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = String::new();
    for (i, path) in paths.iter().enumerate() {
        let conn = if close && i + 1 == paths.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        req.push_str(&format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{conn}\r\n"
        ));
    }
    s.write_all(req.as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    // A timeout is an error here, so a server that never ends the answer fails the test.
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("{paths:?}: no EOF: {e} after {} bytes", got.len()));
    got
}

/// The statuses of the whole HTTP/1.1 answers in `raw`, each checked to be complete: a head,
/// and a body of its `content-length` or ended by its last chunk; nothing after the last.
fn complete_statuses(mut raw: &[u8], what: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    while !raw.is_empty() {
        let text = String::from_utf8_lossy(raw);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!("{what}: no complete head in {} bytes: {text:?}", raw.len());
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let body = &raw[end + 4..];
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no status: {head}"));
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let body_len = match length {
            Some(n) => {
                assert!(
                    body.len() >= n,
                    "{what}: body of {n} bytes promised: {head}"
                );
                n
            }
            None => {
                assert!(
                    head.contains("transfer-encoding: chunked"),
                    "{what}: neither a length nor chunks: {head}"
                );
                let last = body
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .unwrap_or_else(|| panic!("{what}: no last chunk: {head}"));
                last + 5
            }
        };
        statuses.push(status);
        raw = &body[body_len..];
    }
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_followed_by_a_half_close_is_answered_on_every_path() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let v = start_volunteer(root, &server, "v", &repo).await;
    server.wait_held("v", 1).await;
    let info_hash = "%01".repeat(20);
    let announce = format!(
        "/announce?info_hash={info_hash}&peer_id=-XX0000-000000000000&port=6881&left=0&compact=1"
    );
    let cases: [(u16, &str, u16); 10] = [
        // The server's routed paths.
        (server.port, "/api/info", 200),
        (server.port, "/health", 200),
        (server.port, "/metrics", 200),
        // A small file the origin serves through the router.
        (server.port, "/debian/dists/stable/Release", 200),
        // The server's fast path: a redirect to the volunteer, and an announce.
        (server.port, "/debian/big/a.bin", 302),
        (server.port, &announce, 200),
        // The volunteer's routed paths and its fast path (a whole file by sendfile).
        (v.port, "/status", 200),
        (v.port, "/health", 200),
        (v.port, "/metrics", 200),
        (v.port, "/debian/big/a.bin", 200),
    ];
    let cases = cases.map(|(port, path, status)| (port, path.to_string(), status));
    let (server_port, v_port) = (server.port, v.port);
    tokio::task::spawn_blocking(move || {
        for round in 0..20 {
            for (port, path, want) in &cases {
                for close in [false, true] {
                    let what = format!("{path} (round {round}, close {close})");
                    let got = half_closed_gets(*port, &[path], close);
                    assert_eq!(complete_statuses(&got, &what), [*want], "{what}");
                }
            }
            // Two at once: the fast path answers the first, hands the connection with the
            // second to hyper, and the EOF after it is read while the router works.
            for (port, paths) in [
                (server_port, ["/debian/big/a.bin", "/api/info"]),
                (v_port, ["/debian/big/a.bin", "/status"]),
            ] {
                let what = format!("{paths:?} (round {round})");
                let got = half_closed_gets(port, &paths, false);
                let want = if port == v_port { 200 } else { 302 };
                assert_eq!(complete_statuses(&got, &what), [want, 200], "{what}");
            }
        }
    })
    .await
    .unwrap();
}
