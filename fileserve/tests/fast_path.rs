//! The fast path over real TCP on loopback: keep-alive, pipelining, HEAD, files by sendfile,
//! the limits (head size, header deadline, a client that stops reading), and the handover to
//! hyper and the router for everything the fast path does not take.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use mirrorswarm_fileserve::fast::{Answer, FastPath, Reply, Request};
use mirrorswarm_fileserve::listen::{serve, Limits};
use mirrorswarm_fileserve::{fast_whole_file, is_plain_file_request, Root, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct TestFast {
    root: Root,
    active: Arc<AtomicUsize>,
}

impl FastPath for TestFast {
    fn answer(&self, req: &Request<'_>, reply: &mut Reply<'_>) -> Answer {
        match req.path() {
            "/hello" => {
                reply.status(200, "OK");
                reply.header("content-type", b"text/plain");
                let body = format!("fast {}", req.query().unwrap_or("-"));
                reply.body(body.as_bytes());
                Answer::Done
            }
            // An answer larger than a socket takes at once, made in the reply buffer.
            "/large" => {
                reply.status(200, "OK");
                reply.body(&large_body());
                Answer::Done
            }
            p if p.starts_with("/file/") && is_plain_file_request(req) => {
                let rel = &p["/file/".len()..];
                let Ok((f, meta)) = self.root.open_file(rel) else {
                    return Answer::Pass;
                };
                self.active.fetch_add(1, Ordering::SeqCst);
                fast_whole_file(
                    reply,
                    f,
                    &meta,
                    std::path::Path::new(rel),
                    &ServeOptions::default(),
                    Box::new(Counted(self.active.clone())),
                    None,
                )
            }
            _ => Answer::Pass,
        }
    }
}

fn large_body() -> Vec<u8> {
    (0..(4u32 << 20)).map(|i| (i * 13 % 241) as u8).collect()
}

struct Running {
    addr: SocketAddr,
    active: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(limits: Limits) -> Running {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.txt"), b"small file\n").unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let active = Arc::new(AtomicUsize::new(0));
    let fast: Arc<dyn FastPath> = Arc::new(TestFast {
        root: Root::open(dir.path()).unwrap(),
        active: active.clone(),
    });
    let app = Router::new()
        .route(
            "/post",
            post(|body: String| async move { format!("router got {body}") }),
        )
        .fallback(|uri: axum::http::Uri| async move { format!("router {}", uri.path()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, app, Some(fast), limits, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        active,
        stop: Some(tx),
        done,
        _dir: dir,
    }
}

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(5),
        client_stall: Duration::from_secs(5),
        ..Default::default()
    }
}

/// One response: status code, head (lowercased), body.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Read one response from `s`, `pending` holding bytes already read past the last one.
/// `head_only`: a response to HEAD (a length, but no body).
async fn read_resp(s: &mut TcpStream, pending: &mut Vec<u8>, head_only: bool) -> Resp {
    let mut buf = [0u8; 65536];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = r.parse(pending) {
            let status = r.code.unwrap();
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            let head = String::from_utf8_lossy(&pending[..n]).to_lowercase();
            let want = if head_only { 0 } else { len };
            while pending.len() < n + want {
                let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                    .await
                    .expect("body in time")
                    .unwrap();
                assert!(k > 0, "connection closed mid-body");
                pending.extend_from_slice(&buf[..k]);
            }
            let body = pending[n..n + want].to_vec();
            pending.drain(..n + want);
            return Resp { status, head, body };
        }
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(k > 0, "connection closed before a response");
        pending.extend_from_slice(&buf[..k]);
    }
}

/// Whether the server closes `s` within `within`.
async fn closes(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn keep_alive_pipelining_and_head() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /hello?a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut pending, false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"fast a"[..]));
    assert!(
        r.head.contains("\r\ndate: ") && r.head.contains(" gmt\r\n"),
        "{}",
        r.head
    );
    assert!(!r.head.contains("connection: close"));
    // Two requests in one write, then a HEAD: answered in order on the same connection.
    s.write_all(
        b"GET /hello?b HTTP/1.1\r\n\r\nGET /hello?c HTTP/1.1\r\n\r\nHEAD /hello HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_resp(&mut s, &mut pending, false).await.body, b"fast b");
    assert_eq!(read_resp(&mut s, &mut pending, false).await.body, b"fast c");
    let head = read_resp(&mut s, &mut pending, true).await;
    assert!(head.head.contains("content-length: 6"), "{}", head.head);
    s.write_all(b"GET /hello?d HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut pending, false).await;
    assert_eq!(r.body, b"fast d");
    assert!(r.head.contains("connection: close"));
    assert!(pending.is_empty(), "nothing after the HEAD's head");
    assert!(closes(&mut s, Duration::from_secs(2)).await);
}

/// A connection's first request is answered as it is accepted, before the connection has a
/// task; each way it can go on from there must work.
#[tokio::test]
async fn first_requests_answered_on_accepting_and_every_way_on_from_there() {
    let srv = start(limits()).await;
    // A connection per request, as BitTorrent clients announce: answered, then closed.
    for i in 0..20 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let req = format!("GET /hello?{i} HTTP/1.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_resp(&mut s, &mut Vec::new(), false).await;
        assert_eq!(r.body, format!("fast {i}").as_bytes());
        assert!(r.head.contains("connection: close"), "{}", r.head);
        assert!(
            closes(&mut s, Duration::from_secs(5)).await,
            "closed after it"
        );
    }
    // A head that comes in two parts: the first read finds half of it.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /hello?split HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
    let mut pending = Vec::new();
    let r = read_resp(&mut s, &mut pending, false).await;
    assert_eq!(r.body, b"fast split");
    // ... and the connection goes on after it.
    s.write_all(b"GET /hello?again HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"fast again"
    );
    // An answer the socket cannot take at once, to a client that reads it only later: the
    // rest goes out from the connection's task, whole and in order, and the request
    // pipelined behind it is answered after it.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /large HTTP/1.1\r\n\r\nGET /hello?after HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pending = Vec::new();
    let r = read_resp(&mut s, &mut pending, false).await;
    assert_eq!(r.status, 200);
    assert!(r.body == large_body(), "the large answer's bytes, in order");
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"fast after"
    );
    // A first request the fast path does not take still reaches the router.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /elsewhere HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.body, b"router /elsewhere");
}

/// A keep-alive connection that has answered waits for its next request parked with the
/// others (no task), and its next requests are answered from there; each way a request can
/// need more than one answer on the spot must go on correctly from a parked connection too.
#[tokio::test]
async fn parked_keep_alive_connections_answered_every_way() {
    let srv = start(Limits {
        max_per_ip: 48,
        ..limits()
    })
    .await;
    // Parked, one answer each, then their requests taken in turns across all of them.
    let mut conns = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let mut pending = Vec::new();
        s.write_all(format!("GET /hello?{i} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            read_resp(&mut s, &mut pending, false).await.body,
            format!("fast {i}").as_bytes()
        );
        conns.push((s, pending));
    }
    for round in 0..4 {
        for (i, (s, _)) in conns.iter_mut().enumerate() {
            let req = format!("GET /hello?{round}-{i} HTTP/1.1\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
        }
        for (i, (s, pending)) in conns.iter_mut().enumerate() {
            let r = read_resp(s, pending, false).await;
            assert_eq!(r.body, format!("fast {round}-{i}").as_bytes());
        }
    }
    let mut parked = conns.into_iter();
    let mut next = || parked.next().unwrap();

    // Two requests in one write: the first answered from the set, the second after it.
    let (mut s, mut pending) = next();
    s.write_all(b"GET /hello?a HTTP/1.1\r\n\r\nGET /hello?b HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_resp(&mut s, &mut pending, false).await.body, b"fast a");
    assert_eq!(read_resp(&mut s, &mut pending, false).await.body, b"fast b");

    // A head in two parts, then the connection goes on.
    let (mut s, mut pending) = next();
    s.write_all(b"GET /hello?split HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"fast split"
    );
    s.write_all(b"GET /hello?on HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"fast on"
    );

    // An answer the socket cannot take at once, read late, with a request behind it.
    let (mut s, mut pending) = next();
    s.write_all(b"GET /large HTTP/1.1\r\n\r\nGET /hello?after HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = read_resp(&mut s, &mut pending, false).await;
    assert!(r.body == large_body(), "the large answer's bytes, in order");
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"fast after"
    );

    // A file body (sent from a task), then more requests on the same connection.
    let (mut s, mut pending) = next();
    s.write_all(b"GET /file/small.txt HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"small file\n"
    );
    s.write_all(b"GET /hello?file HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"fast file"
    );

    // What the fast path does not take reaches the router, and hyper has the rest.
    let (mut s, mut pending) = next();
    s.write_all(b"GET /elsewhere HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"router /elsewhere"
    );

    // Asked to close: answered, then closed.
    let (mut s, mut pending) = next();
    s.write_all(b"GET /hello?bye HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"fast bye"
    );
    assert!(closes(&mut s, Duration::from_secs(5)).await);
}

/// A parked connection holds its place among the address's connections, and gives it back
/// when its client closes it.
#[tokio::test]
async fn parked_connections_give_their_places_back_when_closed() {
    const PLACES: usize = 16;
    let srv = start(Limits {
        max_per_ip: PLACES,
        ..limits()
    })
    .await;
    // Whether a new connection is let in and answered (one over the cap is closed at once).
    async fn answered(addr: SocketAddr, tag: &str) -> Option<(TcpStream, Vec<u8>)> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /hello?{tag} HTTP/1.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        // Answered, or closed unanswered: whichever comes first.
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
        let r = read_resp(&mut s, &mut pending, false).await;
        assert_eq!(r.body, format!("fast {tag}").as_bytes());
        Some((s, pending))
    }
    let mut held = Vec::new();
    for i in 0..PLACES {
        held.push(
            answered(srv.addr, &i.to_string())
                .await
                .expect("within the cap"),
        );
    }
    assert!(
        answered(srv.addr, "over").await.is_none(),
        "one over the cap is refused while the parked ones hold their places"
    );
    drop(held);
    // The server learns of the closes as their sockets turn readable; a place may come back
    // a moment after its client closed.
    let mut back = Vec::new();
    for i in 0..PLACES {
        let mut got = None;
        for _ in 0..50 {
            got = answered(srv.addr, &format!("again{i}")).await;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        back.push(got.expect("the closed connections' places came back"));
    }
}

#[tokio::test]
async fn what_the_fast_path_does_not_take_goes_to_the_router() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /hello HTTP/1.1\r\n\r\nGET /elsewhere HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_resp(&mut s, &mut pending, false).await.body, b"fast -");
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"router /elsewhere"
    );
    // From the handover on, hyper serves the connection: a body, then what was fast.
    s.write_all(b"POST /post HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /hello HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"router got abc"
    );
    assert_eq!(
        read_resp(&mut s, &mut pending, false).await.body,
        b"router /hello"
    );

    // A body, HTTP/1.0 and a malformed head each go to hyper at once.
    for (req, want) in [
        (
            &b"POST /post HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"[..],
            &b"router got hi"[..],
        ),
        (b"GET /hello HTTP/1.0\r\n\r\n", b"router /hello"),
        (
            b"GET /file/small.txt HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n",
            b"router /file/small.txt",
        ),
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let mut pending = Vec::new();
        s.write_all(req).await.unwrap();
        assert_eq!(read_resp(&mut s, &mut pending, false).await.body, want);
    }
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn files_go_out_whole_and_release_their_guard() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut pending = Vec::new();
    // An empty file between two others: its head is sent alone (no body follows to carry
    // it), and the next answer must still come.
    s.write_all(
        b"GET /file/big.bin HTTP/1.1\r\n\r\nGET /file/empty HTTP/1.1\r\n\r\nGET /file/small.txt HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    let big = read_resp(&mut s, &mut pending, false).await;
    assert_eq!(big.status, 200);
    let want: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    assert!(big.body == want, "the big file's bytes");
    assert!(big.head.contains("accept-ranges: bytes"));
    assert!(big.head.contains("etag: w/\""), "{}", big.head);
    assert!(big.head.contains("last-modified: "));
    assert!(big.head.contains("content-type: application/octet-stream"));
    let empty = read_resp(&mut s, &mut pending, false).await;
    assert_eq!(empty.status, 200);
    assert!(empty.head.contains("content-length: 0"), "{}", empty.head);
    assert!(empty.body.is_empty());
    let small = read_resp(&mut s, &mut pending, false).await;
    assert_eq!(small.body, b"small file\n");
    assert!(small.head.contains("content-type: text/plain"));
    assert_eq!(srv.active.load(Ordering::SeqCst), 0, "guards released");
    s.write_all(b"HEAD /file/big.bin HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let head = read_resp(&mut s, &mut pending, true).await;
    assert!(
        head.head.contains("content-length: 3145728"),
        "{}",
        head.head
    );
    assert_eq!(srv.active.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_and_slot() {
    let srv = start(Limits {
        client_stall: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(srv.addr).await.unwrap();
    s.write_all(b"GET /file/big.bin HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        srv.active.load(Ordering::SeqCst),
        1,
        "the download holds a slot"
    );
    // It never reads: after the stall time the slot is free.
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if srv.active.load(Ordering::SeqCst) == 0 {
            freed = true;
            break;
        }
    }
    assert!(freed, "the stalled download kept its slot");
}

#[tokio::test]
async fn oversized_and_slow_heads_are_cut_off() {
    let srv = start(Limits {
        header_timeout: Duration::from_secs(1),
        max_header_bytes: 8192,
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let huge = format!(
        "GET /hello HTTP/1.1\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Half a head, then nothing: closed at the deadline.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        !closes(&mut s, Duration::from_millis(500)).await,
        "not before the deadline"
    );
    assert!(
        closes(&mut s, Duration::from_secs(3)).await,
        "at the deadline"
    );

    // An idle keep-alive connection is held to the deadline as well, counted from its last
    // answer: a busy connection keeps going past it.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..6 {
        s.write_all(b"GET /hello HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(read_resp(&mut s, &mut pending, false).await.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(closes(&mut s, Duration::from_secs(3)).await);
}

/// Accepts wait for a request's first bytes (`TCP_DEFER_ACCEPT`): a client that connects and
/// speaks late is still answered, and one that never speaks is still closed, once the kernel
/// stops waiting and the header deadline has passed.
#[tokio::test]
async fn silent_and_late_clients_with_deferred_accepts() {
    let srv = start(Limits {
        header_timeout: Duration::from_secs(2),
        ..limits()
    })
    .await;
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let mut late = TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    late.write_all(b"GET /hello?late HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut late, &mut Vec::new(), false).await;
    assert_eq!((r.status, r.body), (200, b"fast late".to_vec()));
    assert!(
        closes(&mut silent, Duration::from_secs(20)).await,
        "a silent connection is not held for ever"
    );
}

#[tokio::test]
async fn a_body_slower_than_the_header_deadline_does_not_cost_the_next_request() {
    let srv = start(Limits {
        header_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    // Larger than the socket buffers on both ends can hold while the client reads nothing.
    let big: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % 253) as u8).collect();
    std::fs::write(srv._dir.path().join("huge.bin"), &big).unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = sock.connect(srv.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /file/huge.bin HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    // The body takes longer to send than the header deadline: the client takes nothing for
    // 1.5 s, then all of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = read_resp(&mut s, &mut pending, false).await;
    assert_eq!((r.status, r.body.len()), (200, big.len()));
    // A moment later, the next request: its deadline counts from the end of the body, not
    // from the previous request's arrival.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"GET /hello HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_resp(&mut s, &mut pending, false).await.status, 200);
}

#[tokio::test]
async fn stopping_closes_idle_connections_and_ends_the_server() {
    let mut srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /hello HTTP/1.1\r\n\r\n").await.unwrap();
    read_resp(&mut s, &mut pending, false).await;
    let _ = srv.stop.take().unwrap().send(());
    assert!(closes(&mut s, Duration::from_secs(3)).await);
    let ended = tokio::time::timeout(Duration::from_secs(5), srv.done).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}
