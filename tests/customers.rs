//! Customers with unmodified tools (curl, wget, apt-get, aria2c) are redirected to volunteers
//! and get the exact bytes.

mod common;

use std::process::Command;

use common::*;

const BIG_DEB: &str = "pool/main/m/ms-data/ms-data_0.3_all.deb";

async fn served_total(vols: &[&Volunteer]) -> u64 {
    let mut n = 0;
    for v in vols {
        if let Ok(r) = http().get(format!("{}/health", v.url)).send().await {
            let j: serde_json::Value = r.json().await.unwrap_or_default();
            n += j["served_requests"].as_u64().unwrap_or(0);
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_wget_apt_and_aria2c_get_exact_bytes_from_volunteers() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--direct-max-bytes", "1024"]).await;
    let mut vols = Vec::new();
    for i in 1..=3 {
        vols.push(start_volunteer(root, &server, &format!("v{i}"), &repo).await);
    }
    for v in &vols {
        server.wait_held(&v.name, 1).await;
    }
    let vol_urls: Vec<String> = vols.iter().map(|v| v.url.clone()).collect();
    let expected = std::fs::read(repo.join(BIG_DEB)).unwrap();

    // curl -L: the final URL is a volunteer's, and the bytes are exact.
    let out_file = root.join("curl.deb");
    let out = run(Command::new("curl")
        .args([
            "-fsSL",
            "-o",
            out_file.to_str().unwrap(),
            "-w",
            "%{url_effective}",
        ])
        .arg(format!("{}/debian/{BIG_DEB}", server.url)));
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective = String::from_utf8(out.stdout).unwrap();
    assert!(
        vol_urls.iter().any(|u| effective.starts_with(u)),
        "curl ended at {effective}"
    );
    assert_eq!(std::fs::read(&out_file).unwrap(), expected);

    // A Range request is redirected the same way and answered by the volunteer.
    let out = run(Command::new("curl")
        .args(["-fsSL", "-r", "100-199"])
        .arg(format!("{}/debian/{BIG_DEB}", server.url)));
    assert!(out.status.success());
    assert_eq!(out.stdout, expected[100..200]);

    // wget follows the redirect too; its log names the volunteer.
    let wget_file = root.join("wget.deb");
    let out = run(Command::new("wget")
        .args(["-O", wget_file.to_str().unwrap()])
        .arg(format!("{}/debian/{BIG_DEB}", server.url)));
    assert!(
        out.status.success(),
        "wget failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        vol_urls
            .iter()
            .any(|u| log.contains(&format!("Location: {u}/"))),
        "wget log: {log}"
    );
    assert_eq!(std::fs::read(&wget_file).unwrap(), expected);

    // apt-get update + download with an isolated state directory.
    let before = served_total(&vols.iter().collect::<Vec<_>>()).await;
    let apt = Apt::new(&root.join("apt"), &server.url);
    apt.run(&["update"]);
    apt.run(&["download", "ms-data", "ms-hello"]);
    let apt = &apt.dir;
    assert_eq!(
        std::fs::read(apt.join("work/ms-data_0.3_all.deb")).unwrap(),
        expected
    );
    assert_eq!(
        std::fs::read(apt.join("work/ms-hello_1.0_all.deb")).unwrap(),
        std::fs::read(repo.join("pool/main/m/ms-hello/ms-hello_1.0_all.deb")).unwrap()
    );
    let after = served_total(&vols.iter().collect::<Vec<_>>()).await;
    assert!(
        after >= before + 2,
        "volunteers served {before} → {after}: apt's packages did not come from volunteers"
    );

    // aria2c with the Metalink document: several sources, checked against the SHA-256.
    {
        assert!(
            which("aria2c"),
            "aria2c is required (apt-get install aria2)"
        );
        let meta = http()
            .get(format!("{}/debian/{BIG_DEB}.meta4", server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(meta.contains(&sha256_hex(&expected)), "{meta}");
        assert!(
            vol_urls
                .iter()
                .filter(|u| meta.contains(u.as_str()))
                .count()
                >= 2,
            "{meta}"
        );
        let adir = root.join("aria2");
        let out = run(Command::new("aria2c")
            .args(["--allow-overwrite=true", "-q", "-d", adir.to_str().unwrap()])
            .arg(format!("{}/debian/{BIG_DEB}.meta4", server.url)));
        assert!(
            out.status.success(),
            "aria2c: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            std::fs::read(adir.join("ms-data_0.3_all.deb")).unwrap(),
            expected
        );
    }

    // Small files are served by the server directly; a redirect carries the digests, the
    // size and the alternatives to a client that asks for a digest (aria2's `Want-Digest`).
    let r = http()
        .head(format!("{}/debian/{BIG_DEB}", server.url))
        .header("want-digest", "SHA-512;q=1, SHA-256;q=1, SHA;q=0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(hex::decode(sha256_hex(&expected)).unwrap())
    };
    assert_eq!(r.headers()["digest"], format!("sha-256={b64}").as_str());
    assert_eq!(
        r.headers()["repr-digest"],
        format!("sha-256=:{b64}:").as_str()
    );
    assert_eq!(
        r.headers()["x-mirrorswarm-size"],
        expected.len().to_string().as_str()
    );
    let link = r.headers()["link"].to_str().unwrap();
    assert!(
        link.contains("rel=duplicate") && link.contains("/.origin/debian/"),
        "{link}"
    );
    // RFC 9530's `Want-Repr-Digest` (what `mirrorswarm proxy` sends) asks as well.
    let r = http()
        .head(format!("{}/debian/{BIG_DEB}", server.url))
        .header("want-repr-digest", "sha-256=10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["repr-digest"],
        format!("sha-256=:{b64}:").as_str()
    );
    assert!(r.headers().contains_key("link"));
    // A plain GET's redirect (apt's, curl's, wget's) is all head and only where to go:
    // Location, no note beside it and none of the headers above, which such clients do not
    // read (apt, wget and curl above followed such answers).
    let r = http()
        .get(format!("{}/debian/{BIG_DEB}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers().contains_key("location"));
    assert_eq!(r.headers()["cache-control"], "no-store");
    for h in ["link", "digest", "repr-digest", "x-mirrorswarm-size"] {
        assert!(!r.headers().contains_key(h), "{h} on a plain redirect");
    }
    assert_eq!(r.headers()["content-length"], "0");
    assert!(r.bytes().await.unwrap().is_empty());
}

/// `--metalink-headers always` puts the alternatives and digests on every redirect, asked or
/// not, on both of the server's request paths (the fast path answers a plain `GET`; a request
/// with a body goes through the router).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metalink_headers_can_go_to_every_client() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(
        root,
        &repo,
        &["--direct-max-bytes", "1024", "--metalink-headers", "always"],
    )
    .await;
    let _v = start_volunteer(root, &server, "v1", &repo).await;
    server.wait_held("v1", 1).await;
    let url = format!("{}/debian/{BIG_DEB}", server.url);
    let plain = http().get(&url).send().await.unwrap();
    let routed = http().get(&url).body("x").send().await.unwrap();
    for r in [plain, routed] {
        assert_eq!(r.status(), 302);
        for h in ["link", "digest", "repr-digest", "x-mirrorswarm-size"] {
            assert!(
                r.headers().contains_key(h),
                "{h} missing: {:?}",
                r.headers()
            );
        }
    }
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}
