//! Staged publish: a new generation is offered to volunteers first; customers stay on the
//! generation before (with a consistent apt repository throughout) until volunteers holding
//! what changed can carry their share of the demand, or a deadline passes; `publish --now`
//! skips it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const RELEASE: &str = "dists/stable/Release";
const PACKAGES: &str = "dists/stable/main/binary-all/Packages";

/// The sample repository's next release: ms-data 0.4 beside 0.3 (new `Packages` and
/// `Release`), and `big/b.bin` rewritten.
fn next_release(repo: &Path) {
    let mut pkgs = server::sample_repo::default_packages();
    let data = pkgs.iter_mut().find(|p| p.name == "ms-data").unwrap();
    data.version = "0.4".into();
    data.files[0].1 = noise(4, 150_000);
    let mut both = server::sample_repo::default_packages();
    both.push(data.clone());
    server::sample_repo::write_apt_repo(repo, "stable", "main", &both).unwrap();
    std::fs::write(repo.join("big/b.bin"), noise(3, 300_000)).unwrap();
}

fn admin(server: &Server, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--data-dir", server.data_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

async fn health(server: &Server) -> serde_json::Value {
    get_json(&format!("{}/health", server.url)).await
}

/// The bytes at `url`, following redirects.
async fn body(url: &str) -> Vec<u8> {
    let r = reqwest::get(url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.bytes().await.unwrap().to_vec()
}

/// A test directory with the sample repository, a copy of it as it is (generation 1), and a
/// staging server publishing it with `staging` arguments.
async fn staging_server(
    staging: &[&str],
) -> (TestDir, std::path::PathBuf, std::path::PathBuf, Server) {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let old = root.join("repo-before");
    copy_tree(&repo, &old);
    let mut args = vec!["--direct-max-bytes", "0", "--staging"];
    args.extend(staging);
    let server = start_server(root, &repo, &args).await;
    (tmp, repo, old, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_generation_reaches_volunteers_first_and_goes_live_on_spread() {
    // Every share of the volunteers must hold it: with one that never syncs, it stays staged
    // until that one is drained.
    let (tmp, repo, old, server) =
        staging_server(&["--staging-spread", "1", "--staging-deadline-secs", "600"]).await;
    let root = tmp.path();
    let (syncer, _) = start_syncing(root, &server, "syncer", &[]);
    let keeper = start_volunteer(root, &server, "keeper", &old).await;
    server.wait_held("syncer", 1).await;
    server.wait_held("keeper", 1).await;

    next_release(&repo);
    let out = server.publish();
    assert!(out.contains("generation 2 (new)"), "{out}");
    assert!(out.contains("generation 2 staged"), "{out}");
    let h = health(&server).await;
    assert_eq!(h["repos"]["debian"], 1, "{h}");
    assert_eq!(h["staged"]["debian"]["generation"], 2, "{h}");

    // Volunteers are told of it and sync it; customers stay on generation 1.
    server.wait_held("syncer", 2).await;
    wait_until(Duration::from_secs(10), "the spread worked out", || async {
        health(&server).await["staged"]["debian"]["ready_volunteers"] == 1
    })
    .await;
    let h = health(&server).await;
    let spread = h["staged"]["debian"]["spread"].as_f64().unwrap();
    assert!(
        spread > 0.3 && spread < 0.7,
        "one of two equal volunteers: {h}"
    );
    let status = admin(&server, &["status"]);
    assert!(
        status.contains("staged        debian: generation 2 staged"),
        "{status}"
    );
    // The dashboard shows it too, in a real browser.
    let dom = run(chromium(&root.join("profile"))
        .arg("--dump-dom")
        .arg(format!("{}/dashboard", server.url)));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("debian 1 → 2: 50% of 100%"), "{dom}");

    // A file the staged generation changed goes only to the volunteer holding its live bytes;
    // one it did not change, to either.
    let mut unchanged_to_syncer = false;
    for _ in 0..12 {
        let to = server.location("big/b.bin").await.unwrap_or_default();
        assert!(to.starts_with(&keeper.url), "big/b.bin → {to}");
        let to = server.location(RELEASE).await.unwrap_or_default();
        assert!(to.starts_with(&keeper.url), "{RELEASE} → {to}");
        let to = server.location("big/a.bin").await.unwrap_or_default();
        unchanged_to_syncer |= to.starts_with(&syncer.url);
    }
    assert!(
        unchanged_to_syncer,
        "a file both hold went only to the one not syncing"
    );
    // The origin sends generation 1's metadata from the copies it kept (its tree holds
    // generation 2's), and generation 2's to a pull that names it.
    let origin = |p: &str| format!("{}/.origin/debian/{p}", server.url);
    for p in [RELEASE, PACKAGES] {
        assert_eq!(
            body(&origin(p)).await,
            std::fs::read(old.join(p)).unwrap(),
            "{p}"
        );
        assert_eq!(
            body(&format!("{}?generation=2", origin(p))).await,
            std::fs::read(repo.join(p)).unwrap(),
            "{p}"
        );
    }
    // apt sees one consistent generation 1 (a Packages of 2 under a Release of 1 would fail
    // its hash check): ms-data 0.3.
    let apt = Apt::new(&root.join("apt"), &server.url);
    apt.run(&["update"]);
    apt.run(&["download", "ms-data"]);
    assert!(apt.dir.join("work/ms-data_0.3_all.deb").exists());
    assert!(!apt.dir.join("work/ms-data_0.4_all.deb").exists());

    // The one not syncing is drained: every volunteer left holds it, and it goes live.
    admin(&server, &["volunteers", "drain", "keeper"]);
    wait_until(Duration::from_secs(15), "generation 2 live", || async {
        health(&server).await["repos"]["debian"] == 2
    })
    .await;
    let h = health(&server).await;
    assert!(h["staged"]["debian"].is_null(), "{h}");
    let log = server.proc.log_text();
    assert!(
        log.contains("staged generation is live") && log.contains("can carry their share"),
        "{log}"
    );
    let to = server.location("big/b.bin").await.unwrap_or_default();
    assert!(to.starts_with(&syncer.url), "big/b.bin → {to}");
    assert_eq!(
        body(&format!("{}/debian/big/b.bin", server.url)).await,
        std::fs::read(repo.join("big/b.bin")).unwrap()
    );
    apt.run(&["update"]);
    apt.run(&["download", "ms-data"]);
    assert!(apt.dir.join("work/ms-data_0.4_all.deb").exists());
    drop((syncer, keeper));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_generation_goes_live_at_its_deadline_and_publish_now_skips_staging() {
    let (tmp, repo, old, server) = staging_server(&["--staging-deadline-secs", "4"]).await;
    let root = tmp.path();
    // It never syncs: the staged generation does not spread.
    let keeper = start_volunteer(root, &server, "keeper", &old).await;
    server.wait_held("keeper", 1).await;

    next_release(&repo);
    let out = server.publish();
    assert!(out.contains("generation 2 staged"), "{out}");
    assert_eq!(health(&server).await["repos"]["debian"], 1);
    wait_until(Duration::from_secs(20), "generation 2 live", || async {
        health(&server).await["repos"]["debian"] == 2
    })
    .await;
    let log = server.proc.log_text();
    assert!(log.contains("its deadline passed"), "{log}");
    // Customers are on generation 2 now: b.bin's new bytes, from the origin (the volunteer
    // holds generation 1's).
    assert_eq!(server.location("big/b.bin").await, None);
    assert_eq!(
        body(&format!("{}/debian/big/b.bin", server.url)).await,
        std::fs::read(repo.join("big/b.bin")).unwrap()
    );

    // `--now`: live at once.
    std::fs::write(repo.join("big/a.bin"), noise(5, 300_000)).unwrap();
    let out = admin(&server, &["publish", "--now"]);
    assert!(
        out.contains("generation 3 (new)") && !out.contains("staged"),
        "{out}"
    );
    let h = health(&server).await;
    assert_eq!(h["repos"]["debian"], 3, "{h}");
    assert!(h["staged"]["debian"].is_null(), "{h}");
    drop(keeper);
}
