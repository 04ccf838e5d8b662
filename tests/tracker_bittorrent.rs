//! The embedded tracker with real BitTorrent clients from Debian: transmission-create makes a
//! torrent announcing to us, one aria2c seeds it, another downloads it, finding its peer only
//! through our tracker (DHT, local discovery and peer exchange off). The torrent is none the
//! server published, so the tracker runs open (`--tracker-torrents open`); by default it
//! would refuse it (`tracker_flood` shows that side).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn aria2c(args: &[&str]) -> Command {
    let mut c = Command::new("aria2c");
    c.args([
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        "--summary-interval=0",
        "--bt-tracker-interval=1",
    ])
    .args(args);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn two_aria2c_peers_move_a_torrent_through_the_tracker() {
    for tool in ["aria2c", "transmission-create"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is required (apt-get install aria2 transmission-cli)"
        );
    }
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("x"), b"x").unwrap();
    let server = start_server(root, &repo, &["--tracker-torrents", "open"]).await;

    let seed_dir = root.join("seed");
    let dl_dir = root.join("dl");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::create_dir_all(&dl_dir).unwrap();
    let payload = noise(7, 3_000_000);
    std::fs::write(seed_dir.join("payload.bin"), &payload).unwrap();
    let torrent = root.join("t.torrent");
    let out = Command::new("transmission-create")
        .arg("-o")
        .arg(&torrent)
        .arg("-t")
        .arg(format!("{}/announce", server.url))
        .arg(seed_dir.join("payload.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let seed_port = free_port().to_string();
    let mut seeder = aria2c(&[
        "--listen-port",
        &seed_port,
        "--seed-ratio=0.0",
        "--seed-time=60",
        "--check-integrity=true",
        "-d",
        seed_dir.to_str().unwrap(),
        torrent.to_str().unwrap(),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();

    // The seeder shows up in a scrape (BEP 48) of its torrent.
    let btih = prsync::artifacts::torrent_info_hash(&std::fs::read(&torrent).unwrap()).unwrap();
    let c = http();
    wait_until(Duration::from_secs(20), "the seeder to announce", || {
        let c = c.clone();
        let url = format!(
            "{}/scrape?info_hash={}",
            server.url,
            tracker::query::percent_encode(&btih)
        );
        async move {
            let body = c.get(url).send().await.unwrap().bytes().await.unwrap();
            let v = bencode::decode(&body).unwrap();
            v.get("files").and_then(|f| f.as_dict()).is_some_and(|f| {
                f.values()
                    .any(|s| s.get("complete").and_then(|c| c.as_int()) == Some(1))
            })
        }
    })
    .await;

    let dl_port = free_port().to_string();
    let out = aria2c(&[
        "--listen-port",
        &dl_port,
        "--seed-time=0",
        "-d",
        dl_dir.to_str().unwrap(),
        torrent.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let _ = seeder.kill();
    let _ = seeder.wait();
    assert!(
        out.status.success(),
        "aria2c download failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(dl_dir.join("payload.bin")).unwrap(), payload);
}
