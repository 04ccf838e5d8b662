//! Slow and greedy clients cannot stop service to others: the server closes connections that
//! dawdle over their headers and caps connections per address; a volunteer takes the download
//! slot back from a customer that stops reading.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP connection from `from` (another loopback address than the honest customers') with
/// a small receive buffer, so that a client that does not read stops the sender soon.
async fn attacker(from: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_recv_buffer_size(4096)?;
    s.bind(format!("{from}:0").parse().unwrap())?;
    s.connect(to).await
}

/// Whether the peer has closed `s` within `within` (EOF or a reset).
async fn closed_by_peer(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 response before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_on_the_server_does_not_stop_service() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let cfg = root.join("server.toml");
    std::fs::write(
        &cfg,
        "[limits]\nheader_timeout_secs = 2\nmax_connections_per_ip = 40\n",
    )
    .unwrap();
    let server = start_server(root, &repo, &["--config", cfg.to_str().unwrap()]).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();

    // 120 connections from one address, each sending half a request head and then nothing.
    let mut slow = Vec::new();
    for _ in 0..120 {
        if let Ok(mut s) = attacker("127.0.0.2", addr).await {
            let _ = s.write_all(b"GET /debian/ HTTP/1.1\r\nHost: x\r\n").await;
            slow.push(s);
        }
    }
    assert!(slow.len() >= 100, "could not open the attack connections");

    // Honest customers from another address are served meanwhile, at once.
    let expected = std::fs::read(repo.join("big/a.bin")).unwrap();
    for _ in 0..5 {
        let out = run(Command::new("curl")
            .args(["-fsS", "--max-time", "5", "-o", "-"])
            .arg(format!("{}/.origin/debian/big/a.bin", server.url)));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, expected);
    }

    // Every attack connection is closed: those over the per-address cap at once, the others
    // when their header deadline passes.
    let mut still_open = 0;
    for s in &mut slow {
        if !closed_by_peer(s, Duration::from_secs(10)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "slow connections the server kept open");

    // Oversized request heads are refused, not buffered.
    let mut s = attacker("127.0.0.3", addr).await.unwrap();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut head)).await;
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "unexpected answer to a 200 kB header: {head}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn customers_that_stop_reading_lose_their_volunteer_slot() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    // Bigger than every socket buffer between the volunteer and a client that never reads.
    let big = noise(9, 24 << 20);
    std::fs::write(repo.join("big/huge.bin"), &big).unwrap();
    let server = start_server(root, &repo, &[]).await;

    let mirror = root.join("v").join("debian");
    copy_tree(&repo, &mirror);
    let token = server.enroll("v");
    let port = free_port();
    let cfg = root.join("volunteer.toml");
    std::fs::write(&cfg, "[limits]\nclient_stall_secs = 2\n").unwrap();
    let mut args = volunteer_args(&server, &token, port, &root.join("v/data"), &mirror);
    args.extend(
        ["--max-connections", "2", "--config", cfg.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string()),
    );
    let vol = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("v.log"),
    );
    server.wait_held("v", 1).await;
    let vurl = format!("http://127.0.0.1:{port}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let active = || async {
        let v: serde_json::Value = http()
            .get(format!("{vurl}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["active_connections"].as_u64().unwrap()
    };

    // Two customers ask for the big file and never read a byte: both slots are taken.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut s = attacker("127.0.0.2", addr).await.unwrap();
        s.write_all(b"GET /debian/big/huge.bin HTTP/1.1\r\nHost: v\r\n\r\n")
            .await
            .unwrap();
        stuck.push(s);
    }
    wait_until(Duration::from_secs(5), "both slots taken", || async {
        active().await == 2
    })
    .await;
    let r = http()
        .get(format!("{vurl}/debian/big/a.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        302,
        "a third customer should be sent to the origin"
    );

    // After the stall limit the slots come back, and an honest customer is served.
    wait_until(Duration::from_secs(15), "the slots to be freed", || async {
        active().await == 0
    })
    .await;
    let out = run(Command::new("curl")
        .args(["-fsS", "--max-time", "30", "-o", "-"])
        .arg(format!("{vurl}/debian/big/huge.bin")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == big, "wrong bytes");
    drop(vol);
}
