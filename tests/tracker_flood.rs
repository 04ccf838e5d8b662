//! The tracker under a flood from one host (issue 30, item 4). The server listens on
//! 127.0.0.1; the flood comes from other loopback addresses (all of 127.0.0.0/8 is this
//! machine's): 2,100 fake peers into a real swarm from one address, a whole /24 of addresses
//! doing the same, 20,000 random info-hashes, 1,500 forged mirror announces, scrapes of
//! everything and of too much. Then a
//! real BitTorrent client (aria2c) from yet another address and a `mirrorswarm prsync pull`
//! still get peers and complete over BitTorrent, the flood's announces got failures past the
//! bounds, and the server's memory grew by what the bounds allow, not by what was sent.
//!
//! Before the bounds, the first flood filled the swarm ("swarm is full" for everyone after),
//! and aria2c found nobody.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The flooding host.
const FLOOD: &str = "127.0.2.2";
/// Another flooding host for the random info-hashes (a fresh announce rate).
const HASH_FLOOD: &str = "127.0.5.5";
/// A whole /24 of flooding hosts: 127.0.4.1 to 127.0.4.40.
const FLOOD_NET: &str = "127.0.4";
/// A host sending forged mirror announces.
const MIRROR_FLOOD: &str = "127.0.7.7";
/// The real BitTorrent client.
const CLIENT: &str = "127.0.3.3";

/// The server's bounds this test counts on: `[tracker]`'s defaults.
const PER_ADDRESS: usize = 16;
const PER_PREFIX: usize = 64;

/// A keep-alive HTTP/1.1 connection from a chosen source address, one request at a time.
struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(from: &str, to: SocketAddr) -> Conn {
        let from: IpAddr = from.parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = sock.connect(to).await.unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// GET `target`: the status and the body.
    async fn get(&mut self, target: &str) -> (u16, Vec<u8>) {
        let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status: u16 = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.fill().await;
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return (status, body);
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

fn announce_target(hash: &[u8; 20], peer_id: &[u8; 20], port: u16) -> String {
    format!(
        "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=1000&compact=1",
        tracker::query::percent_encode(hash),
        tracker::query::percent_encode(peer_id)
    )
}

/// Answers tallied: "ok" for a peer list, else the failure reason.
fn tally(into: &mut BTreeMap<String, usize>, body: &[u8]) {
    let v = bencode::decode(body).unwrap();
    let key = match v.get("failure reason").and_then(|r| r.as_bytes()) {
        Some(r) => String::from_utf8_lossy(r).to_string(),
        None => {
            assert!(v.get("peers").is_some(), "{v:?}");
            "ok".to_string()
        }
    };
    *into.entry(key).or_default() += 1;
}

fn count(t: &BTreeMap<String, usize>, reason_has: &str) -> usize {
    t.iter()
        .filter(|(k, _)| k.contains(reason_has))
        .map(|(_, n)| n)
        .sum()
}

fn flood_peer_id(tag: u8, i: u32) -> [u8; 20] {
    let mut id = *b"-FL0001-000000000000";
    id[8] = tag;
    id[16..].copy_from_slice(&i.to_be_bytes());
    id
}

/// The server's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

async fn scrape_complete(server: &Server, btih: &[u8; 20]) -> i64 {
    let url = format!(
        "{}/scrape?info_hash={}",
        server.url,
        tracker::query::percent_encode(btih)
    );
    let Ok(r) = http().get(url).send().await else {
        return 0;
    };
    let body = r.bytes().await.unwrap_or_default();
    bencode::decode(&body)
        .ok()
        .and_then(|v| {
            v.get("files")?
                .as_dict()?
                .values()
                .next()?
                .get("complete")?
                .as_int()
        })
        .unwrap_or(0)
}

async fn stats(server: &Server) -> (u64, u64) {
    let v = get_json(&format!("{}/api/stats", server.url)).await;
    (
        v["seed_uploaded_bytes"].as_u64().unwrap(),
        v["origin_http_bytes"].as_u64().unwrap(),
    )
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_host_does_not_stop_real_clients_on_others() {
    assert!(
        Command::new("sh")
            .args(["-c", "command -v aria2c"])
            .status()
            .unwrap()
            .success(),
        "aria2c is required (apt-get install aria2)"
    );
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let big = noise(30, 3_000_000);
    std::fs::write(repo.join("big.bin"), &big).unwrap();
    std::fs::write(repo.join("small.txt"), b"small").unwrap();
    // A 30 s interval makes peers live 90 s: the flood's peers all stay while it runs, so
    // the bounds are what turns them away, whatever the pace of this machine.
    let server = start_server(
        root,
        &repo,
        &["--torrent-min-bytes", "65536", "--announce-interval", "30"],
    )
    .await;
    let pid = server.proc.child.as_ref().unwrap().id();
    let to = SocketAddr::from(([127, 0, 0, 1], server.port));

    // The published torrent and its info-hash; the origin's seed announces it.
    let torrent = server
        .data_dir
        .join("artifacts")
        .join(format!("{}.torrent", sha256_hex(&big)));
    let btih = prsync::artifacts::torrent_info_hash(&std::fs::read(&torrent).unwrap()).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the origin's seed to announce",
        || async { scrape_complete(&server, &btih).await >= 1 },
    )
    .await;
    let rss_before = rss_kib(pid);

    let flood = tokio::time::timeout(Duration::from_secs(180), async {
        // 1. 2,100 fake peers from one address into the real swarm (what filled it before).
        let mut one_host = BTreeMap::new();
        let mut c = Conn::open(FLOOD, to).await;
        for i in 0..2100u32 {
            let (status, body) = c
                .get(&announce_target(&btih, &flood_peer_id(b'A', i), 10000))
                .await;
            assert_eq!(status, 200);
            tally(&mut one_host, &body);
        }
        // The origin's peer id prefix, from another local address: not the origin, so bound
        // like anyone (the origin is known by its whole id and an address of its own).
        let mut forged = BTreeMap::new();
        let mut c = Conn::open("127.0.6.6", to).await;
        for i in 0..(PER_ADDRESS as u32 + 8) {
            let mut id = flood_peer_id(b'O', i);
            id[..8].copy_from_slice(b"-MSORIG-");
            let (_, body) = c.get(&announce_target(&btih, &id, 10000)).await;
            tally(&mut forged, &body);
        }
        // 2. A /24 of hosts, four fake peers each.
        let mut one_net = BTreeMap::new();
        for host in 1..=40u32 {
            let mut c = Conn::open(&format!("{FLOOD_NET}.{host}"), to).await;
            for i in 0..4 {
                let id = flood_peer_id(b'N', host * 4 + i);
                let (_, body) = c.get(&announce_target(&btih, &id, 10000)).await;
                tally(&mut one_net, &body);
            }
        }
        // 3. 20,000 random info-hashes (what filled the tracker before).
        let mut hashes = BTreeMap::new();
        let mut c = Conn::open(HASH_FLOOD, to).await;
        for i in 0..20_000u32 {
            let mut h = [0x5au8; 20];
            h[..4].copy_from_slice(&i.to_be_bytes());
            let (_, body) = c
                .get(&announce_target(&h, &flood_peer_id(b'H', i), 10000))
                .await;
            tally(&mut hashes, &body);
        }
        // 4. Scrapes: of everything (refused), of too many hashes (refused), and many of the
        //    real one from the host that just flooded (its rate is spent).
        let (status, everything) = c.get("/scrape").await;
        let too_many = (0..75u8)
            .map(|i| format!("info_hash={}", tracker::query::percent_encode(&[i; 20])))
            .collect::<Vec<_>>()
            .join("&");
        let (_, too_many) = c.get(&format!("/scrape?{too_many}")).await;
        let mut scrapes = BTreeMap::new();
        for _ in 0..80 {
            let (_, body) = c
                .get(&format!(
                    "/scrape?info_hash={}",
                    tracker::query::percent_encode(&btih)
                ))
                .await;
            let v = bencode::decode(&body).unwrap();
            let key = if v.get("files").is_some() {
                "ok".to_string()
            } else {
                String::from_utf8_lossy(v.get("failure reason").unwrap().as_bytes().unwrap())
                    .to_string()
            };
            *scrapes.entry(key).or_insert(0usize) += 1;
        }
        // 5. Signed-looking announces of a volunteer nobody enrolled: each refusal costs a
        // signature check and a log line, so they count against the rate too.
        let mut mirror = BTreeMap::new();
        let mut m = Conn::open(MIRROR_FLOOD, to).await;
        for seq in 1..=1500u64 {
            let report = tracker::mirror::MirrorReport {
                volunteer: "nobody".into(),
                seq,
                generation: 1,
                customer_conns: 0,
                sync_conns: 0,
                upload_bps: 0,
                capacity: 8,
                url: "http://127.0.7.7:9".into(),
                sync_bps: 0,
                link_bps: 0,
                paused: false,
                part: String::new(),
                nets: String::new(),
                private: false,
                other_urls: Vec::new(),
            };
            let q = tracker::mirror::sign_query(
                b"not a secret the server issued",
                &tracker::mirror::build_mirror_query(
                    "debian",
                    *b"-MS0100-aaaaaaaaaaaa",
                    9,
                    &report,
                ),
            );
            let (_, body) = m.get(&format!("/announce?{q}")).await;
            let v = bencode::decode(&body).unwrap();
            let reason = v.get("failure reason").unwrap().as_bytes().unwrap();
            *mirror
                .entry(String::from_utf8_lossy(reason).to_string())
                .or_insert(0usize) += 1;
        }
        (
            (one_host, forged, one_net, hashes, mirror),
            (status, everything, too_many, scrapes),
        )
    })
    .await;
    let ((one_host, forged, one_net, hashes, mirror), (status, everything, too_many, scrapes)) =
        flood.expect("the flood ended within 180 s");
    let rss_after = rss_kib(pid);
    eprintln!("one host: {one_host:?}\nforged origin: {forged:?}\none /24: {one_net:?}\nrandom hashes: {hashes:?}\nforged mirror announces: {mirror:?}\nscrapes: {scrapes:?}");
    eprintln!("server RSS: {rss_before} KiB before the flood, {rss_after} KiB after");

    // One address got its bound, then failures: its own, then the rate's.
    assert_eq!(one_host.get("ok"), Some(&PER_ADDRESS), "{one_host:?}");
    assert!(count(&one_host, "too many peers from your address") > 0);
    assert!(count(&one_host, "announce rate exceeded") > 0);
    assert_eq!(one_host.values().sum::<usize>(), 2100);
    assert_eq!(forged.get("ok"), Some(&PER_ADDRESS), "{forged:?}");
    // The /24 got the prefix's bound in all, however many addresses it used.
    assert_eq!(one_net.get("ok"), Some(&PER_PREFIX), "{one_net:?}");
    // No random info-hash got a swarm.
    assert_eq!(hashes.get("ok"), None, "{hashes:?}");
    assert!(count(&hashes, "unknown torrent") > 0);
    assert!(count(&mirror, "unknown volunteer") > 0, "{mirror:?}");
    assert!(count(&mirror, "announce rate exceeded") > 0, "{mirror:?}");
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&everything).contains("failure reason") && everything.len() < 200,
        "{}",
        String::from_utf8_lossy(&everything)
    );
    assert!(String::from_utf8_lossy(&too_many).contains("too many info_hash"));
    assert!(count(&scrapes, "announce rate exceeded") > 0, "{scrapes:?}");

    // What the flood left in the tracker: one swarm, the origin and the bounded peers.
    let m = http()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&m, "mirrorswarm_tracker_swarms"), 1);
    assert_eq!(
        metric(&m, "mirrorswarm_tracker_peers") as usize,
        1 + 2 * PER_ADDRESS + PER_PREFIX
    );
    assert!(metric(&m, "mirrorswarm_tracker_refused_total{reason=\"rate\"}") > 0);
    assert!(
        metric(
            &m,
            "mirrorswarm_tracker_refused_total{reason=\"unknown_torrent\"}"
        ) > 0
    );
    assert!(
        metric(
            &m,
            "mirrorswarm_tracker_refused_total{reason=\"peers_per_source\"}"
        ) > 0
    );
    // Memory: the flood may leave at most PER_ADDRESS * 2 + PER_PREFIX peers (~15 KiB) and
    // no swarm; the rate table is allocated at start. What else moves is the allocator's
    // and the connections' buffers, a few MiB at most; unbounded, the same flood left
    // 2,000 peers and 20,000 swarms (BENCHMARKS.md has the figures of both builds).
    assert!(
        rss_after.saturating_sub(rss_before) < 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // A real BitTorrent client on another address gets peers and the file.
    let (seed_before, http_before) = stats(&server).await;
    let dl = root.join("aria2c");
    std::fs::create_dir_all(&dl).unwrap();
    let port = free_port().to_string();
    let out = Command::new("timeout")
        .args(["120", "aria2c"])
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--disable-ipv6=true",
            "--summary-interval=0",
            "--bt-stop-timeout=60",
            "--seed-time=0",
            &format!("--interface={CLIENT}"),
            "--listen-port",
            &port,
            "-d",
            dl.to_str().unwrap(),
            torrent.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aria2c did not complete: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        dump_logs(&[&server.proc])
    );
    let got = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none_or(|x| x != "torrent" && x != "aria2"))
        .unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&got).unwrap()), sha256_hex(&big));

    // And a pull gets the large file over BitTorrent, not from the origin's HTTP.
    let dest = root.join("pulled");
    let out = Command::new("timeout")
        .args(["120", BIN])
        .args([
            "prsync",
            "pull",
            "--server",
            &server.url,
            "--repo",
            "debian",
            "--dest",
            dest.to_str().unwrap(),
            "--stall-secs",
            "60",
            "--linger-secs",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prsync pull failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dump_logs(&[&server.proc])
    );
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), big);
    let (seed_after, http_after) = stats(&server).await;
    assert!(
        seed_after - seed_before >= 2 * big.len() as u64,
        "the origin's seed sent {} bytes; aria2c and the pull each needed {}",
        seed_after - seed_before,
        big.len()
    );
    assert!(
        http_after - http_before < big.len() as u64,
        "the large file came over HTTP ({} bytes)",
        http_after - http_before
    );
}
