//! Generation-exact redirects: a volunteer that has not caught up with a changed file is never
//! sent customers for it, but still for files that did not change; a restart loses nothing.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

/// The volunteers `n` requests for `path` were sent to. Answers from the origin are left
/// out: on a loaded machine a volunteer may miss an announce deadline, and the origin is
/// always a correct answer; what must never happen is a redirect to the wrong volunteer.
async fn targets(server: &Server, path: &str, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        if let Some(loc) = server.location(path).await {
            seen.insert(loc.split("/debian/").next().unwrap_or(&loc).to_string());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_volunteer_is_excluded_per_file_until_its_admin_catches_up() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let mut server = start_server(root, &repo, &[]).await;
    let fresh = start_volunteer(root, &server, "fresh", &repo).await;
    let behind = start_volunteer(root, &server, "behind", &repo).await;
    server.wait_held("fresh", 1).await;
    server.wait_held("behind", 1).await;
    let both: HashSet<String> = [fresh.url.clone(), behind.url.clone()].into();
    assert_eq!(targets(&server, "big/a.bin", 20).await, both);

    // Generation 2 changes big/a.bin only.
    let new_a = noise(99, 310_000);
    std::fs::write(repo.join("big/a.bin"), &new_a).unwrap();
    let out = server.publish();
    assert!(out.contains("generation 2 (new)"), "{out}");
    // Until anyone holds generation 2, the changed file comes from the origin…
    wait_until(
        Duration::from_secs(10),
        "the server to serve a.bin itself",
        || async { server.location("big/a.bin").await.is_none() },
    )
    .await;
    // …and the unchanged one still from volunteers, the lagging one included.
    assert!(targets(&server, "big/b.bin", 20)
        .await
        .contains(&behind.url));

    // The fresh volunteer's admin updates its copy.
    std::fs::write(fresh.mirror.join("big/a.bin"), &new_a).unwrap();
    server.wait_held("fresh", 2).await;
    server.wait_held("behind", 1).await;
    let for_a = targets(&server, "big/a.bin", 30).await;
    assert_eq!(
        for_a,
        [fresh.url.clone()].into(),
        "a.bin must only go to the volunteer holding generation 2"
    );
    // b.bin did not change: the lagging volunteer still serves it (and, after the burst of
    // a.bin redirects to the fresh one, it is the less loaded of the two).
    assert!(targets(&server, "big/b.bin", 20)
        .await
        .contains(&behind.url));
    // The customer gets the new bytes.
    let body = reqwest::get(format!("{}/debian/big/a.bin", server.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(&new_a));

    // The lagging admin catches up: it is chosen again.
    std::fs::write(behind.mirror.join("big/a.bin"), &new_a).unwrap();
    server.wait_held("behind", 2).await;
    assert_eq!(targets(&server, "big/a.bin", 30).await, both);

    // Restart the server: generation, credentials and history survive; live state returns
    // with the next announces while the origin serves.
    server.restart();
    server.wait_healthy().await;
    let health = get_json(&format!("{}/health", server.url)).await;
    assert_eq!(
        health["repos"]["debian"], 2,
        "the generation must survive a restart: {health}"
    );
    server.wait_held("fresh", 2).await;
    server.wait_held("behind", 2).await;
    assert_eq!(targets(&server, "big/a.bin", 30).await, both);
    let log = server.proc.log_text();
    assert!(
        log.contains("unchanged; generation kept"),
        "restart must not publish a new generation:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_is_incremental_and_keeps_older_manifests() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let out = server.publish();
    assert!(
        out.contains("generation 1 (unchanged)") && out.contains("0 hashed"),
        "{out}"
    );
    std::fs::write(repo.join("new.txt"), b"hello").unwrap();
    let out = server.publish();
    assert!(
        out.contains("generation 2 (new)") && out.contains("1 changed") && out.contains("1 hashed"),
        "{out}"
    );
    for g in ["1", "2", "latest"] {
        let r = http()
            .get(format!("{}/manifests/debian/{g}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "manifest {g}");
    }
    let r = http()
        .get(format!("{}/manifests/debian/3", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
