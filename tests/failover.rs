//! Volunteers die; customers do not notice. With no volunteer left, the origin serves
//! everything, with full HTTP semantics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn killed_volunteer_is_dropped_within_two_intervals_and_customers_keep_succeeding() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--timeout-intervals", "1.5"]).await;
    let mut vols = Vec::new();
    for i in 1..=3 {
        vols.push(start_volunteer(root, &server, &format!("v{i}"), &repo).await);
    }
    for v in &vols {
        server.wait_held(&v.name, 1).await;
    }
    let expected = sha256_hex(&std::fs::read(repo.join("big/a.bin")).unwrap());

    // Customers download in the background while a volunteer is killed. A download in flight
    // on the killed machine necessarily breaks; like apt (Acquire::Retries), the customers
    // retry, and each retry asks the server again, which must not send them back there.
    let url = format!("{}/debian/big/a.bin", server.url);
    let out_dir = root.join("downloads");
    std::fs::create_dir_all(&out_dir).unwrap();
    let customers = std::thread::spawn({
        let out_dir = out_dir.clone();
        move || {
            let mut results = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut i = 0;
            while Instant::now() < deadline && i < 400 {
                let f = out_dir.join(format!("{i}.bin"));
                let ok = Command::new("curl")
                    .args([
                        "-fsSL",
                        "--retry",
                        "5",
                        "--retry-all-errors",
                        "--max-time",
                        "20",
                        "-o",
                    ])
                    .arg(&f)
                    .arg(&url)
                    .status()
                    .is_ok_and(|s| s.success());
                results.push((
                    ok,
                    std::fs::read(&f)
                        .map(|b| sha256_hex(&b))
                        .unwrap_or_default(),
                ));
                i += 1;
            }
            results
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim_url = vols[0].url.clone();
    vols[0].proc.kill();
    let killed_at = Instant::now();

    // Within two announce intervals (2 s) no redirect points at it.
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(killed_at.elapsed())).await;
    for _ in 0..40 {
        let loc = server.location("big/a.bin").await.unwrap_or_default();
        assert!(
            !loc.starts_with(&victim_url),
            "redirected to the killed volunteer: {loc}"
        );
    }
    let results = customers.join().unwrap();
    assert!(
        results.len() >= 5,
        "too few customer downloads: {}",
        results.len()
    );
    for (i, (ok, sha)) in results.iter().enumerate() {
        assert!(ok, "customer download {i} failed");
        assert_eq!(sha, &expected, "customer download {i} has wrong bytes");
    }
    let state = server.volunteers().await;
    let v1 = state.iter().find(|v| v["name"] == "v1").unwrap();
    assert_eq!(v1["state"], "stale", "{v1}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_volunteer_gone_the_origin_serves_everything() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let mut a = start_volunteer(root, &server, "a", &repo).await;
    let mut b = start_volunteer(root, &server, "b", &repo).await;
    server.wait_held("a", 1).await;
    server.wait_held("b", 1).await;
    assert!(server.location("big/a.bin").await.is_some());
    // One stops cleanly (it tells the tracker), the other is killed.
    a.proc.terminate();
    b.proc.kill();
    // Wait on the tracker's view, not on redirects: a dead volunteer that has not gone stale
    // yet can look full (redirects counted since its last report) and briefly get none.
    wait_until(Duration::from_secs(15), "no volunteer left", || async {
        server
            .volunteers()
            .await
            .iter()
            .all(|v| v["state"] != "healthy")
    })
    .await;
    assert!(server.location("big/a.bin").await.is_none());

    let c = http();
    let expected = std::fs::read(repo.join("big/a.bin")).unwrap();
    let url = format!("{}/debian/big/a.bin", server.url);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let last_modified = r.headers()["last-modified"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("digest"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), expected.as_slice());

    let r = c
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", expected.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &expected[1000..2000]);

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    assert!(r.bytes().await.unwrap().is_empty());

    assert_eq!(
        c.get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap()
            .status(),
        304
    );
    assert_eq!(
        c.get(&url)
            .header("if-modified-since", &last_modified)
            .send()
            .await
            .unwrap()
            .status(),
        304
    );

    // A .deb has its type; the whole apt tree comes from the origin.
    let r = c
        .get(format!(
            "{}/debian/pool/main/m/ms-data/ms-data_0.3_all.deb",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.debian.binary-package"
    );
    let out = Command::new("curl")
        .args(["-fsSL"])
        .arg(format!("{}/debian/dists/stable/Release", server.url))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        out.stdout,
        std::fs::read(repo.join("dists/stable/Release")).unwrap()
    );

    // The Metalink lists only the origin now.
    let meta = c
        .get(format!("{url}.meta4"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(meta.matches("<url ").count(), 1, "{meta}");
    assert!(meta.contains("/.origin/debian/big/a.bin"));

    // Directories get an index; a directory without its slash is sent to it; unknown → 404.
    let r = c
        .get(format!("{}/debian/big/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("a.bin") && page.contains("b.bin"), "{page}");
    let r = c
        .get(format!("{}/debian/big", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/debian/big/");
    assert_eq!(
        c.get(format!("{}/debian/nope.bin", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(format!("{}/nosuchrepo/x", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(c.post(&url).send().await.unwrap().status(), 405);
    let stopped = server.proc.log_text();
    assert!(
        stopped.contains("volunteer stopped"),
        "a clean stop must tell the tracker"
    );
}
