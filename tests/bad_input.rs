//! Hostile paths, malformed and forged announces, wrong tokens, and a volunteer whose copy was
//! altered on disk: each gets a clear refusal and nothing is read, served or lost.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;
use tracker::mirror::{build_mirror_query, sign_query, MirrorReport};

fn curl_status(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "--path-as-is",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_attempts_are_refused_by_server_and_volunteer() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    std::fs::write(root.join("secret.txt"), b"do not serve").unwrap();
    std::os::unix::fs::symlink(root.join("secret.txt"), repo.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", repo.join("etc")).unwrap();
    let server = start_server(root, &repo, &[]).await;
    let v = start_volunteer(root, &server, "v", &repo).await;
    server.wait_held("v", 1).await;
    for base in [&server.url, &v.url] {
        for path in [
            "/debian/../../etc/passwd",
            "/debian/%2e%2e/%2e%2e/etc/passwd",
            "/debian/%2E%2E/secret.txt",
            "/debian/big%2F..%2F..%2Fsecret.txt",
            "//etc/passwd",
            "/debian/big/a.bin%00",
            "/debian/big\\..\\a.bin",
            "/debian/./big/a.bin",
        ] {
            let code = curl_status(&format!("{base}{path}"));
            assert!(code == "400" || code == "404", "{base}{path} → {code}");
        }
        // Symlinks leading out of the root were never published.
        assert_eq!(curl_status(&format!("{base}/debian/escape.txt")), "404");
        assert_eq!(curl_status(&format!("{base}/debian/etc/passwd")), "404");
    }
    let log = server.proc.log_text();
    assert!(
        log.contains("escape.txt") && log.contains("not published"),
        "skips must be logged"
    );
}

fn credential(v: &Volunteer) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(v.data_dir.join("credential.json")).unwrap()).unwrap()
}

async fn announce(server: &Server, query: &str) -> String {
    let r = http()
        .get(format!("{}/announce?{query}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    String::from_utf8_lossy(&r.bytes().await.unwrap()).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_oversized_forged_and_replayed_announces_are_refused() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let v = start_volunteer(root, &server, "v", &repo).await;
    server.wait_held("v", 1).await;

    assert!(announce(&server, "").await.contains("failure reason"));
    assert!(announce(&server, "info_hash=abc&peer_id=x&port=1")
        .await
        .contains("info_hash must be 20 bytes"));
    let huge = format!("info_hash={}", "a".repeat(10_000));
    assert!(announce(&server, &huge).await.contains("failure reason"));
    assert!(announce(&server, "info_hash=%zz")
        .await
        .contains("failure reason"));

    let cred = credential(&v);
    let id = cred["volunteer_id"].as_str().unwrap().to_string();
    let secret = hex::decode(cred["secret"].as_str().unwrap()).unwrap();
    let report = |seq: u64, generation: u64| MirrorReport {
        volunteer: id.clone(),
        seq,
        generation,
        customer_conns: 0,
        sync_conns: 0,
        upload_bps: 0,
        capacity: 8,
        url: "http://127.0.0.1:9".into(),
        sync_bps: 0,
        link_bps: 0,
        paused: false,
        part: String::new(),
        nets: String::new(),
        private: false,
        other_urls: Vec::new(),
    };
    let unsigned = build_mirror_query("debian", *b"-MS0100-aaaaaaaaaaaa", 9, &report(1, 1));
    // Unsigned, forged with another key, tampered after signing.
    assert!(announce(&server, &unsigned)
        .await
        .contains("failure reason"));
    let forged = sign_query(b"not the secret", &unsigned);
    assert!(announce(&server, &forged).await.contains("bad signature"));
    let seq = u64::MAX / 2;
    let good = sign_query(
        &secret,
        &build_mirror_query("debian", *b"-MS0100-aaaaaaaaaaaa", 9, &report(seq, 1)),
    );
    let tampered = good.replace("ms_cc=0", "ms_cc=9");
    assert!(announce(&server, &tampered).await.contains("bad signature"));
    // Unknown volunteer and unknown repository.
    let mut stranger = report(1, 1);
    stranger.volunteer = "nobody".into();
    let q = sign_query(
        &secret,
        &build_mirror_query("debian", *b"-MS0100-aaaaaaaaaaaa", 9, &stranger),
    );
    assert!(announce(&server, &q).await.contains("unknown volunteer"));
    let q = sign_query(
        &secret,
        &build_mirror_query("other", *b"-MS0100-aaaaaaaaaaaa", 9, &report(seq, 1)),
    );
    assert!(announce(&server, &q).await.contains("unknown repository"));
    // A good one is accepted once; its replay is refused.
    let first = announce(&server, &good).await;
    assert!(!first.contains("failure reason"), "{first}");
    assert!(announce(&server, &good).await.contains("replayed"));
    // Scrape of something unknown answers with zeros, malformed scrape with a failure.
    let r = http()
        .get(format!("{}/scrape?info_hash=short", server.url))
        .send()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&r.bytes().await.unwrap()).contains("failure reason"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_reused_and_malformed_tokens_are_refused() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let mirror = root.join("m");
    copy_tree(&repo, &mirror);

    let run_volunteer = |token: &str, data: &str| {
        let args = volunteer_args(&server, token, free_port(), &root.join(data), &mirror);
        Command::new(BIN).args(&args).output().unwrap()
    };
    // A token of another server (its fingerprint says so) is never sent to this one.
    let out = run_volunteer(&format!("{}.{}", "0".repeat(32), "0".repeat(32)), "d1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("made by another server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A token of this server with a wrong secret is refused by the server.
    let fp = server
        .enroll("fp-source")
        .rsplit_once('.')
        .unwrap()
        .1
        .to_string();
    let out = run_volunteer(&format!("{}.{fp}", "0".repeat(32)), "d1b");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("enrollment refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_volunteer("garbage", "d2");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed token"));

    // A real token works once: the first volunteer enrolls, a second use is refused.
    let token = server.enroll("once");
    let mut first = Proc::spawn(
        &volunteer_args(&server, &token, free_port(), &root.join("d3"), &mirror)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &root.join("once.log"),
    );
    server.wait_held("once", 1).await;
    let out = run_volunteer(&token, "d4");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrollment refused"));
    first.terminate();

    // The enrollment endpoint refuses junk with 400s, not 500s.
    let c = http();
    let r = c
        .post(format!("{}/api/enroll", server.url))
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = c
        .post(format!("{}/api/enroll", server.url))
        .json(&serde_json::json!({"token": token, "url": "ftp://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Publishing needs the admin token.
    let r = c
        .post(format!("{}/admin/publish", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Enrolling a name twice is refused with a clear message.
    let out = Command::new(BIN)
        .args([
            "enroll",
            "--data-dir",
            server.data_dir.to_str().unwrap(),
            "--name",
            "once",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_altered_on_a_volunteer_is_neither_served_nor_announced() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let honest = start_volunteer(root, &server, "honest", &repo).await;
    let altered = start_volunteer(root, &server, "altered", &repo).await;
    server.wait_held("honest", 1).await;
    server.wait_held("altered", 1).await;

    let original = std::fs::read(altered.mirror.join("big/a.bin")).unwrap();
    let mut bad = original.clone();
    bad[1000] ^= 0xff;
    std::fs::write(altered.mirror.join("big/a.bin"), &bad).unwrap();

    // At once: the volunteer does not serve the changed file (it no longer matches what
    // verified) but sends the customer to the origin, and after its rescan it no longer
    // announces generation 1.
    let r = http()
        .get(format!("{}/debian/big/a.bin", altered.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("/.origin/debian/big/a.bin"));
    server.wait_held("altered", 0).await;
    // The origin is always a correct answer (a loaded machine may delay an announce); the
    // altered volunteer never is.
    for _ in 0..20 {
        for path in ["big/a.bin", "big/b.bin"] {
            if let Some(loc) = server.location(path).await {
                assert!(
                    loc.starts_with(&honest.url),
                    "{path} sent to the altered volunteer: {loc}"
                );
            }
        }
    }
    // The server's debug log names why it was excluded.
    let log = server.proc.log_text();
    assert!(
        log.contains("holds generation 0, file changed in 1"),
        "exclusion reasons must be logged"
    );
    // Its untouched files remain verified and servable directly.
    let r = http()
        .get(format!("{}/debian/big/b.bin", altered.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The admin restores the file: it verifies again and is chosen again.
    std::fs::write(altered.mirror.join("big/a.bin"), &original).unwrap();
    server.wait_held("altered", 1).await;
    wait_until(
        Duration::from_secs(20),
        "the restored volunteer to be chosen again",
        || async {
            server
                .location("big/a.bin")
                .await
                .is_some_and(|l| l.starts_with(&altered.url))
        },
    )
    .await;
}

/// `curl` (no redirects followed unless `follow`): status, response head, body.
fn curl(url: &str, follow: bool, extra: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"]);
    if follow {
        cmd.arg("-L");
    }
    let out = cmd.args(extra).arg(url).output().unwrap();
    let code = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (
        code,
        std::fs::read_to_string(&head).unwrap_or_default(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

/// A file outside every tree with the length and mtime of `like`: only where it is tells it
/// apart from the published file (a size or mtime check alone would pass it).
fn lookalike(like: &std::path::Path, at: &std::path::Path) -> Vec<u8> {
    let len = std::fs::metadata(like).unwrap().len() as usize;
    let bytes = vec![b'X'; len];
    std::fs::write(at, &bytes).unwrap();
    let mtime = std::fs::metadata(like).unwrap().modified().unwrap();
    let f = std::fs::File::options().write(true).open(at).unwrap();
    f.set_modified(mtime).unwrap();
    bytes
}

/// Replace `path` by a symbolic link to `target`.
fn swap_for_link(path: &std::path::Path, target: &std::path::Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_file_swapped_for_a_link_out_of_the_tree_is_never_served() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let pristine = root.join("pristine");
    copy_tree(&repo, &pristine);
    let release = std::fs::read(repo.join("dists/stable/Release")).unwrap();
    let server = start_server(root, &repo, &[]).await;
    let passwd = std::fs::read("/etc/passwd").unwrap();

    // After the publish: the issue's reproduction, and a look-alike of a large file.
    swap_for_link(
        &repo.join("dists/stable/Release"),
        std::path::Path::new("/etc/passwd"),
    );
    let fake_b = lookalike(&repo.join("big/b.bin"), &root.join("fake-b.bin"));
    swap_for_link(&repo.join("big/b.bin"), &root.join("fake-b.bin"));

    // No volunteer holds the published bytes: 503 with Retry-After, at either prefix, for
    // GET and HEAD; never the bytes from outside.
    for path in ["dists/stable/Release", "big/b.bin"] {
        for prefix in ["debian", ".origin/debian"] {
            let url = format!("{}/{prefix}/{path}", server.url);
            for extra in [&[][..], &["-I"][..]] {
                let (code, head, body) = curl(&url, true, extra);
                assert_eq!(code, 503, "{url} {extra:?}: {head}");
                assert!(
                    head.to_ascii_lowercase().contains("retry-after: "),
                    "{url}: {head}"
                );
                assert!(
                    body != passwd && body != fake_b,
                    "{url} sent the swapped bytes"
                );
            }
        }
    }
    let log = server.proc.log_text();
    assert!(
        log.contains("file on disk is not as published")
            && log.contains("dists/stable/Release")
            && log.contains("a symbolic link on the way leads out of the root"),
        "the server must log why: {log}"
    );

    // A volunteer that verified the published bytes: the origin sends customers there.
    let v = start_volunteer(root, &server, "v", &pristine).await;
    server.wait_held("v", 1).await;
    let url = format!("{}/debian/dists/stable/Release", server.url);
    let (code, head, _) = curl(&url, false, &[]);
    assert_eq!(code, 302, "{head}");
    assert!(
        head.contains(&format!("{}/debian/dists/stable/Release", v.url)),
        "{head}"
    );
    let (code, _, body) = curl(&url, true, &[]);
    assert_eq!((code, body == release), (200, true));
    // `/.origin/` never redirects: still 503.
    let (code, _, body) = curl(
        &format!("{}/.origin/debian/dists/stable/Release", server.url),
        true,
        &[],
    );
    assert_eq!(code, 503);
    assert_ne!(body, passwd);

    // The volunteer's own copy swapped for a look-alike out of its tree: not served; its
    // customer is sent to the origin, which has the published bytes.
    let a = std::fs::read(repo.join("big/a.bin")).unwrap();
    let fake_a = lookalike(&v.mirror.join("big/a.bin"), &root.join("fake-a.bin"));
    swap_for_link(&v.mirror.join("big/a.bin"), &root.join("fake-a.bin"));
    let (code, head, body) = curl(&format!("{}/debian/big/a.bin", v.url), false, &[]);
    assert_eq!(code, 302, "{head}");
    assert!(
        head.contains(&format!("{}/.origin/debian/big/a.bin", server.url)),
        "{head}"
    );
    assert_ne!(body, fake_a);
    let (code, _, body) = curl(&format!("{}/debian/big/a.bin", v.url), true, &[]);
    assert_eq!((code, body == a), (200, true));
    let (code, _, body) = curl(
        &format!("{}/debian/big/a.bin", v.url),
        true,
        &["-r", "0-99"],
    );
    assert_eq!((code, &body[..]), (206, &a[..100]));
    assert!(
        v.proc
            .log_text()
            .contains("a symbolic link on the way leads out of the root"),
        "the volunteer must log why"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volunteer_that_cannot_listen_keeps_its_token_unspent() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let mirror = root.join("m");
    copy_tree(&repo, &mirror);
    let token = server.enroll("late");
    // The port is taken: the start fails before the token is exchanged.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = root.join("d");
    let out = Command::new(BIN)
        .args(volunteer_args(&server, &token, port, &data, &mirror))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server.volunteer("late").await.is_null(),
        "no volunteer was registered"
    );
    drop(taken);
    // The same token works on a free port.
    let v = Proc::spawn(
        &volunteer_args(&server, &token, free_port(), &data, &mirror)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &root.join("late.log"),
    );
    server.wait_held("late", 1).await;
    drop(v);
}
