//! The volunteer as its admin sees it: a TOML config, a credential that survives restarts, a
//! connection cap that customers and the balancer both respect.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn config_file_restart_without_token_and_connection_cap() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    // Large enough that socket buffers cannot swallow it: a slow reader keeps the slot.
    std::fs::write(repo.join("big/huge.bin"), noise(3, 40 << 20)).unwrap();
    let server = start_server(root, &repo, &[]).await;
    let mirror = root.join("v").join("debian");
    copy_tree(&repo, &mirror);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cfg = root.join("volunteer.toml");
    std::fs::write(
        &cfg,
        format!(
            "server = \"{}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nmax_connections = 1\nrescan_secs = 1\n[mirrors]\ndebian = \"{}\"\n",
            server.url,
            root.join("v/data").display(),
            mirror.display()
        ),
    )
    .unwrap();
    let token = server.enroll("capped");
    let mut v = Proc::spawn(
        &[
            "volunteer",
            "--config",
            cfg.to_str().unwrap(),
            "--token",
            &token,
        ],
        &root.join("v1.log"),
    );
    server.wait_held("capped", 1).await;

    // Restart with no token: the saved credential is reused.
    v.terminate();
    let mut v = Proc::spawn(
        &["volunteer", "--config", cfg.to_str().unwrap()],
        &root.join("v2.log"),
    );
    server.wait_held("capped", 1).await;
    assert!(v.log_text().contains("volunteer ready"), "{}", v.log_text());

    // One slow customer takes the only slot…
    let mut slow = Command::new("curl")
        .args([
            "-s",
            "--limit-rate",
            "100k",
            "-o",
            "/dev/null",
            &format!("{url}/debian/big/huge.bin"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the slow download to start",
        || async {
            let h: serde_json::Value = http()
                .get(format!("{url}/health"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            h["active_connections"] == 1
        },
    )
    .await;
    // …so the next one is sent to the origin, which always has room.
    let r = http()
        .get(format!("{url}/debian/big/b.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with(&format!("{}/.origin/debian/big/b.bin", server.url)));
    // The volunteer reports the connection; with no headroom left the server serves itself.
    wait_until(Duration::from_secs(10), "the load report", || async {
        server
            .volunteers()
            .await
            .iter()
            .any(|x| x["name"] == "capped" && x["customer_conns"] == 1)
    })
    .await;
    assert_eq!(
        server.location("big/b.bin").await,
        None,
        "a full volunteer must not get more customers"
    );
    let _ = slow.kill();
    let _ = slow.wait();
    wait_until(Duration::from_secs(10), "the slot to free", || async {
        server
            .volunteers()
            .await
            .iter()
            .any(|x| x["name"] == "capped" && x["customer_conns"] == 0)
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "the volunteer to be chosen again",
        || async {
            server
                .location("big/b.bin")
                .await
                .is_some_and(|l| l.starts_with(&url))
        },
    )
    .await;
    // Small files are served by the server itself, volunteers or not.
    assert_eq!(server.location("dists/stable/Release").await, None);
    v.terminate();
    let log = server.proc.log_text();
    assert!(
        log.contains("redirect decision"),
        "debug redirect decisions must be logged"
    );
}
