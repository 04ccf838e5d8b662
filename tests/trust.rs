//! Trust: a volunteer serving altered bytes cannot hand them to a customer who uses the
//! verifying proxy; the server catches it with spot checks and quarantines it until its files
//! match again; admins can drain, resume and revoke volunteers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A proxy for `server`, answering (its `/health` is the server's, fetched through it).
async fn start_proxy(root: &std::path::Path, server: &Server) -> (Proc, String) {
    let port = free_port();
    let cache = root.join("proxy-cache");
    let p = Proc::spawn(
        &[
            "proxy",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--server",
            &server.url,
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &root.join("proxy.log"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let c = http();
    wait_until(Duration::from_secs(20), "the proxy", || {
        let u = format!("{url}/health");
        let c = c.clone();
        async move { c.get(u).send().await.is_ok() }
    })
    .await;
    (p, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_bytes_never_reach_a_proxy_customer_and_the_volunteer_is_quarantined() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--spot-check-secs", "2"]).await;
    let bad = start_volunteer(root, &server, "bad", &repo).await;
    server.wait_held("bad", 1).await;
    let (proxy, proxy_url) = start_proxy(root, &server).await;
    let c = http();

    // Through the proxy, curl and wget get the right bytes from the (so far honest) volunteer.
    let good_b = std::fs::read(repo.join("big/b.bin")).unwrap();
    assert!(server
        .location("big/b.bin")
        .await
        .is_some_and(|l| l.starts_with(&bad.url)));
    let out = run(Command::new("curl")
        .args(["-fsS", "-x", &proxy_url])
        .arg(format!("{}/debian/big/b.bin", server.url)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, good_b);
    let wget_file = root.join("wget-b.bin");
    let out = run(Command::new("wget")
        .env("http_proxy", &proxy_url)
        .args(["-q", "-O", wget_file.to_str().unwrap()])
        .arg(format!("{}/debian/big/b.bin", server.url)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&wget_file).unwrap(), good_b);
    // A Range request through the proxy is answered from the verified copy.
    let out = run(Command::new("curl")
        .args(["-fsS", "-r", "1000-1999", "-x", &proxy_url])
        .arg(format!("{}/debian/big/b.bin", server.url)));
    assert_eq!(out.stdout, good_b[1000..2000]);

    // Now the volunteer's copy of a.bin is altered behind its back.
    let good_a = std::fs::read(repo.join("big/a.bin")).unwrap();
    let mut evil = good_a.clone();
    for b in evil.iter_mut().take(4096) {
        *b ^= 0xff;
    }
    replace_keeping_stat(&bad.mirror.join("big/a.bin"), &evil);
    let direct = c
        .get(format!("{}/debian/big/a.bin", bad.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        &direct[..],
        &evil[..],
        "the volunteer serves the altered bytes"
    );

    // A customer through the proxy still gets the published bytes (from the origin).
    let out = run(Command::new("curl")
        .args(["-fsS", "-x", &proxy_url])
        .arg(format!("{}/debian/big/a.bin", server.url)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, good_a, "the proxy released wrong bytes");

    // The proxy reported it; the server checks that file and quarantines the volunteer.
    wait_until(Duration::from_secs(20), "the quarantine", || async {
        server.volunteer("bad").await["state"] == "quarantined"
    })
    .await;
    let v = server.volunteer("bad").await;
    assert!(
        v["quarantine"].as_str().unwrap_or("").contains("big/a.bin"),
        "{v}"
    );
    let stats: serde_json::Value = c
        .get(format!("{}/api/stats", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["customer_reports"].as_u64() >= Some(1), "{stats}");
    assert!(stats["spot_checks_failed"].as_u64() >= Some(1), "{stats}");
    // The CLI shows it, with the reason.
    let out = run(Command::new(BIN).args([
        "volunteers",
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("quarantined") && listing.contains("big/a.bin"),
        "{listing}"
    );

    // No redirect points at it any more, for any file.
    for _ in 0..10 {
        for f in ["big/a.bin", "big/b.bin"] {
            assert_eq!(
                server.location(f).await,
                None,
                "redirected to a quarantined volunteer"
            );
        }
    }

    // Its admin restores the file; it passes its checks again and is let back.
    replace_keeping_stat(&bad.mirror.join("big/a.bin"), &good_a);
    wait_until(
        Duration::from_secs(40),
        "the end of the quarantine",
        || async { server.volunteer("bad").await["state"] == "healthy" },
    )
    .await;
    assert!(server
        .location("big/a.bin")
        .await
        .is_some_and(|l| l.starts_with(&bad.url)));
    // The proxy refuses to fetch for other hosts.
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &proxy_url,
        ])
        .arg("http://127.0.0.2:9/elsewhere"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_drain_resume_and_revoke_volunteers() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let v1 = start_volunteer(root, &server, "v1", &repo).await;
    server.wait_held("v1", 1).await;
    let admin = |verb: &str| {
        let out = run(Command::new(BIN).args([
            "volunteers",
            verb,
            "v1",
            "--data-dir",
            server.data_dir.to_str().unwrap(),
        ]));
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    admin("drain");
    assert_eq!(server.volunteer("v1").await["state"], "draining");
    for _ in 0..10 {
        assert_eq!(server.location("big/a.bin").await, None);
    }
    admin("resume");
    wait_until(
        Duration::from_secs(10),
        "v1 to be healthy again",
        || async { server.location("big/a.bin").await.is_some() },
    )
    .await;

    admin("revoke");
    assert_eq!(server.volunteer("v1").await["state"], "revoked");
    for _ in 0..10 {
        assert_eq!(server.location("big/a.bin").await, None);
    }
    // Its next announces are refused, and it says so in its log.
    wait_until(Duration::from_secs(10), "a refused announce", || async {
        v1.proc.log_text().contains("credential revoked")
    })
    .await;
    assert_eq!(server.volunteer("v1").await["state"], "revoked");
    // An unknown name is a clear error.
    let out = run(Command::new(BIN).args([
        "volunteers",
        "drain",
        "nobody",
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no volunteer named `nobody`"));
    // Admin endpoints need the admin token.
    let r = http()
        .post(format!("{}/admin/volunteers/v1/resume", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn apt_installs_a_package_through_the_proxy() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let v = start_volunteer(root, &server, "v", &repo).await;
    server.wait_held("v", 1).await;
    let (proxy, proxy_url) = start_proxy(root, &server).await;
    let c = http();

    // apt with its own state, and dpkg installing into a directory of ours with its own
    // database: nothing of the machine's own packages is touched.
    let apt = root.join("apt");
    let admin = apt.join("dpkg");
    let target = apt.join("root");
    for d in ["state/lists/partial", "cache/archives/partial", "work"] {
        std::fs::create_dir_all(apt.join(d)).unwrap();
    }
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(admin.join("status"), b"").unwrap();
    std::fs::write(
        apt.join("sources.list"),
        format!("deb [trusted=yes] {}/debian stable main\n", server.url),
    )
    .unwrap();
    let apt_get = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                apt.join("sources.list").display()
            ))
            .args([
                "-o",
                "Dir::Etc::SourceParts=/nonexistent",
                "-o",
                "Dir::Etc::Parts=/nonexistent",
            ])
            .arg("-o")
            .arg(format!("Dir::State={}", apt.join("state").display()))
            .arg("-o")
            .arg(format!(
                "Dir::State::status={}",
                admin.join("status").display()
            ))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .arg("-o")
            .arg(format!("Acquire::http::Proxy={proxy_url}"))
            .arg("-o")
            .arg(format!("DPkg::Options::=--admindir={}", admin.display()))
            .arg("-o")
            .arg(format!("DPkg::Options::=--instdir={}", target.display()))
            .args([
                "-o",
                "DPkg::Options::=--force-script-chrootless",
                "-o",
                "DPkg::Options::=--force-not-root",
                "-o",
                "Debug::NoLocking=1",
                "-o",
                "APT::Sandbox::User=root",
                "-o",
                "Acquire::Languages=none",
                "-y",
            ])
            .args(args)
            .current_dir(apt.join("work"));
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "apt-get {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apt_get(&["update"]);
    apt_get(&["install", "--no-install-recommends", "ms-hello", "ms-data"]);
    let installed = std::fs::read(target.join("usr/share/ms-hello/greeting.txt")).unwrap();
    assert!(!installed.is_empty());
    assert_eq!(
        std::fs::metadata(target.join("usr/share/ms-data/payload.bin"))
            .unwrap()
            .len(),
        200 * 1024
    );
    let status = std::fs::read_to_string(admin.join("status")).unwrap();
    assert_eq!(
        status.matches("Status: install ok installed").count(),
        2,
        "{status}"
    );
    // ms-data (too big to be served directly) came from the volunteer, through the
    // proxy's check.
    let health: serde_json::Value = c
        .get(format!("{}/health", v.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(health["served_requests"].as_u64() >= Some(1), "{health}");
    let log = proxy.log_text();
    assert!(!log.contains("source refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volunteer_that_reports_idle_but_serves_slowly_gets_a_smaller_share() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--spot-check-secs", "1"]).await;
    let fast = start_volunteer(root, &server, "fast", &repo).await;
    // The slow one's uplink is a trickle, but it reports no connections like any idle one.
    let mirror = root.join("slow").join("debian");
    copy_tree(&repo, &mirror);
    let token = server.enroll("slow");
    let port = free_port();
    let mut args = volunteer_args(&server, &token, port, &root.join("slow/data"), &mirror);
    args.extend(["--upload-bps".to_string(), "40000".to_string()]);
    let _slow = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("slow.log"),
    );
    server.wait_held("fast", 1).await;
    server.wait_held("slow", 1).await;

    // The server's checks measure both; the slow one's share is cut, towards the floor of a
    // tenth as the measurements accumulate.
    wait_until(
        Duration::from_secs(60),
        "the slow volunteer to be found out",
        || async { server.volunteer("slow").await["observed_speed"].as_f64() <= Some(0.2) },
    )
    .await;
    assert_eq!(
        server.volunteer("fast").await["observed_speed"].as_f64(),
        Some(1.0)
    );
    let slow_url = format!("http://127.0.0.1:{port}");
    let (mut to_slow, mut to_fast) = (0, 0);
    for _ in 0..60 {
        match server.location("big/a.bin").await {
            Some(l) if l.starts_with(&slow_url) => to_slow += 1,
            Some(l) if l.starts_with(&fast.url) => to_fast += 1,
            _ => {}
        }
    }
    // About one in ten at a speed factor of 0.1 (up to one in six at 0.2).
    assert!(
        to_slow <= 15,
        "{to_slow} of 60 customers went to the slow volunteer: {}",
        server.volunteer("slow").await
    );
    assert!(
        to_fast >= 40,
        "only {to_fast} of 60 went to the fast volunteer"
    );
}
