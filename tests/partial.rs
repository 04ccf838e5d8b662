//! Partial volunteers: a volunteer holding part of a repository syncs, verifies, announces
//! and serves only that part, always with the repository's metadata; the server sends it
//! customers only for its files, and its spot checks pick from what it claims.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const DEB: &str = "pool/main/m/ms-data/ms-data_0.3_all.deb";

/// A syncing volunteer holding the part `include`/`exclude` of the server's repository,
/// filled by PRsync into an empty directory.
fn start_partial(
    root: &Path,
    server: &Server,
    name: &str,
    include: &[&str],
    exclude: &[&str],
) -> Volunteer {
    let (v, _) = start_partial_with(root, server, name, include, exclude, &[]);
    v
}

/// [`start_partial`] with more arguments; also the command line, to start it again.
fn start_partial_with(
    root: &Path,
    server: &Server,
    name: &str,
    include: &[&str],
    exclude: &[&str],
    more: &[String],
) -> (Volunteer, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    for p in include {
        args.extend(["--include".to_string(), format!("debian={p}")]);
    }
    for p in exclude {
        args.extend(["--exclude".to_string(), format!("debian={p}")]);
    }
    args.extend(more.iter().cloned());
    start_syncing(root, server, name, &args)
}

async fn served(v: &Volunteer) -> u64 {
    get_json(&format!("{}/health", v.url)).await["served_requests"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_volunteers_are_sent_only_their_files_and_carry_apt() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--direct-max-bytes", "0"]).await;
    // One holds the packages, the other the large files but b.bin.
    let pkgs = start_partial(root, &server, "pkgs", &["pool/**"], &[]);
    let bigs = start_partial(root, &server, "bigs", &["big/**"], &["big/b.bin"]);
    server.wait_held("pkgs", 1).await;
    server.wait_held("bigs", 1).await;

    // Each synced its part and the metadata, nothing else.
    let all = files_under(&repo);
    let metadata: Vec<&String> = all.iter().filter(|p| p.starts_with("dists/")).collect();
    assert!(!metadata.is_empty());
    for (v, holds) in [
        (
            &pkgs,
            &(|p: &str| p.starts_with("pool/")) as &dyn Fn(&str) -> bool,
        ),
        (&bigs, &|p: &str| p == "big/a.bin"),
    ] {
        let expected: std::collections::BTreeSet<String> = all
            .iter()
            .filter(|p| holds(p) || p.starts_with("dists/"))
            .cloned()
            .collect();
        assert_eq!(files_under(&v.mirror), expected, "{}", v.name);
    }
    // The server knows each part.
    let parts = server.volunteer("bigs").await["parts"]["debian"].clone();
    assert_eq!(parts, "+ big/**\n- big/b.bin\n", "{parts}");
    assert!(server.volunteer("pkgs").await["parts"]["debian"].is_string());

    // Each file goes only to who holds it; a file nobody holds goes to the origin.
    for _ in 0..8 {
        let to_deb = server.location(DEB).await.unwrap_or_default();
        assert!(to_deb.starts_with(&pkgs.url), "{DEB} → {to_deb}");
        let to_a = server.location("big/a.bin").await.unwrap_or_default();
        assert!(to_a.starts_with(&bigs.url), "big/a.bin → {to_a}");
        assert_eq!(
            server.location("big/b.bin").await,
            None,
            "b.bin is nobody's"
        );
    }

    // Each one's share: of the files and bytes it holds, and of the requests just made (a
    // third each went to a file of pkgs, of bigs, and of nobody).
    let bigs_files = (metadata.len() + 1) as f64 / all.len() as f64;
    let share = |v: serde_json::Value| v["shares"]["debian"].clone();
    let bigs_share = share(server.volunteer("bigs").await);
    assert!(
        (bigs_share["files"].as_f64().unwrap() - bigs_files).abs() < 1e-9,
        "{bigs_share}"
    );
    let b = bigs_share["bytes"].as_f64().unwrap();
    assert!(b > 0.0 && b < 1.0, "{bigs_share}");
    wait_until(Duration::from_secs(10), "the requests counted", || async {
        let r = share(server.volunteer("bigs").await)["requests"]
            .as_f64()
            .unwrap_or(0.0);
        (r - 1.0 / 3.0).abs() < 1e-6
    })
    .await;
    // The counts themselves, most asked for first; a HEAD counts once, whoever answers it.
    let pop = get_json(&format!("{}/api/popularity/debian", server.url)).await;
    let counted: Vec<(String, f64)> = pop["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["requests"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counted.len(), 3, "{pop}");
    assert!(counted.iter().all(|(_, n)| (n - 8.0).abs() < 0.01), "{pop}");
    // The same counts, signed as generation 1's popularity: what a budget is filled by.
    // Made once and kept: asked again, the same bytes.
    let table_url = format!("{}/manifests/debian/1/popularity", server.url);
    let signed = http()
        .get(&table_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let info = get_json(&format!("{}/api/info", server.url)).await;
    let key = manifest::signing::parse_public_key(info["public_key"].as_str().unwrap()).unwrap();
    let table =
        manifest::popularity::Popularity::verify_expected(&signed, &key, "debian", 1).unwrap();
    assert_eq!(table.files.len(), 3, "{table:?}");
    let again = http()
        .get(&table_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(signed, again);
    let r = http()
        .get(format!("{}/manifests/debian/7/popularity", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    let pkgs_share = share(server.volunteer("pkgs").await);
    assert!(
        (pkgs_share["requests"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-6,
        "{pkgs_share}"
    );

    // apt-get update and download, through the server, served by the partial volunteers:
    // the metadata by either, the packages by pkgs.
    let (pkgs_before, bigs_before) = (served(&pkgs).await, served(&bigs).await);
    let apt = Apt::new(&root.join("apt"), &server.url);
    apt.run(&["update"]);
    apt.run(&["download", "ms-data", "ms-hello"]);
    assert_eq!(
        std::fs::read(apt.dir.join("work/ms-data_0.3_all.deb")).unwrap(),
        std::fs::read(repo.join(DEB)).unwrap()
    );
    let (pkgs_after, bigs_after) = (served(&pkgs).await, served(&bigs).await);
    assert!(
        pkgs_after >= pkgs_before + 2,
        "pkgs served {pkgs_before} → {pkgs_after}: the packages did not come from it"
    );
    assert!(
        pkgs_after + bigs_after >= pkgs_before + bigs_before + 4,
        "apt's metadata did not come from the volunteers ({pkgs_before}+{bigs_before} → {pkgs_after}+{bigs_after})"
    );

    // A new generation changes a file of each part and one outside both: each takes its part
    // of it, and the file outside stays the origin's.
    std::fs::write(repo.join("big/a.bin"), noise(11, 300_000)).unwrap();
    std::fs::write(repo.join("big/b.bin"), noise(12, 300_000)).unwrap();
    server.publish();
    server.wait_held("bigs", 2).await;
    server.wait_held("pkgs", 2).await;
    assert_eq!(
        std::fs::read(bigs.mirror.join("big/a.bin")).unwrap(),
        noise(11, 300_000)
    );
    assert!(!bigs.mirror.join("big/b.bin").exists());
    assert!(server
        .location("big/a.bin")
        .await
        .is_some_and(|l| l.starts_with(&bigs.url)));
    assert_eq!(server.location("big/b.bin").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_volunteer_lying_about_its_part_is_caught_by_spot_checks() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    // Many files customers are redirected for, of which it will claim one: a check picking
    // from the whole repository would rarely find it.
    std::fs::create_dir_all(repo.join("extra")).unwrap();
    for i in 0..300 {
        std::fs::write(repo.join(format!("extra/f{i}.bin")), noise(100 + i, 40_000)).unwrap();
    }
    let server = start_server(root, &repo, &["--spot-check-secs", "1"]).await;
    // It claims one file (and the metadata) of a repository of many; its copy of that file
    // is altered behind its back, so it verifies and announces, then serves wrong bytes.
    let liar = start_partial(root, &server, "liar", &["big/a.bin"], &[]);
    server.wait_held("liar", 1).await;
    assert!(!liar.mirror.join("pool").exists(), "it holds only its part");
    let path = liar.mirror.join("big/a.bin");
    let mut evil = std::fs::read(&path).unwrap();
    for b in evil.iter_mut().take(4096) {
        *b ^= 0xff;
    }
    replace_keeping_stat(&path, &evil);
    // The checks pick from what it claims, so they find the altered file rather than
    // asking, again and again, for files it never said it held.
    wait_until(Duration::from_secs(20), "the liar's quarantine", || async {
        server.volunteer("liar").await["state"] == "quarantined"
    })
    .await;
    let v = server.volunteer("liar").await;
    assert!(
        v["quarantine"].as_str().unwrap_or("").contains("big/a.bin"),
        "{v}"
    );
    assert_eq!(server.location("big/a.bin").await, None);
}

/// A volunteer with a disk budget holds the files customers asked for most that fit, and
/// the metadata; the server works out the same files and sends it customers for those only.
/// A smaller budget drops the least asked for.
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_holds_the_most_asked_for_files_and_a_smaller_one_drops_some() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    std::fs::create_dir_all(repo.join("pop")).unwrap();
    for i in 0..10u64 {
        std::fs::write(repo.join(format!("pop/f{i}.bin")), noise(200 + i, 40_000)).unwrap();
    }
    let server = start_server(root, &repo, &["--direct-max-bytes", "0"]).await;
    // Customers ask for f0 most, then f1, f2, f3; the rest never.
    for (i, n) in [(0, 12), (1, 9), (2, 6), (3, 3)] {
        for _ in 0..n {
            server.location(&format!("pop/f{i}.bin")).await;
        }
    }
    // Room for the metadata and three of them.
    let metadata: u64 = files_under(&repo)
        .iter()
        .filter(|p| p.starts_with("dists/"))
        .map(|p| std::fs::metadata(repo.join(p)).unwrap().len())
        .sum();
    let budget = metadata + 3 * 40_000 + 100;
    let (mut v, mut args) = start_partial_with(
        root,
        &server,
        "budget",
        &["pop/**"],
        &[],
        &["--budget".to_string(), format!("debian={budget}")],
    );
    let held = |v: &Volunteer| -> Vec<String> {
        if !v.mirror.join("dists").exists() {
            return Vec::new();
        }
        files_under(&v.mirror)
            .into_iter()
            .filter(|p| p.starts_with("pop/f"))
            .collect()
    };
    wait_until(Duration::from_secs(30), "the budget filled", || async {
        held(&v) == ["pop/f0.bin", "pop/f1.bin", "pop/f2.bin"]
    })
    .await;
    server.wait_held("budget", 1).await;
    let part = server.volunteer("budget").await["parts"]["debian"].clone();
    assert_eq!(part, format!("+ pop/**\n$ budget {budget} @ 1\n"), "{part}");
    // The server works out the same files: the popular ones go to it, the others not.
    wait_until(Duration::from_secs(10), "f0 redirected to it", || async {
        server
            .location("pop/f0.bin")
            .await
            .is_some_and(|l| l.starts_with(&v.url))
    })
    .await;
    // Its share: the metadata and three files of the repository's.
    let share = server.volunteer("budget").await["shares"]["debian"].clone();
    let files = files_under(&repo).len() as f64;
    let want = (files_under(&repo)
        .iter()
        .filter(|p| p.starts_with("dists/"))
        .count()
        + 3) as f64;
    assert!(
        (share["files"].as_f64().unwrap() - want / files).abs() < 1e-9,
        "{share}"
    );
    for _ in 0..4 {
        assert!(server
            .location("pop/f2.bin")
            .await
            .is_some_and(|l| l.starts_with(&v.url)));
        assert_eq!(server.location("pop/f3.bin").await, None);
        assert_eq!(server.location(DEB).await, None, "outside its patterns");
    }

    // A smaller budget: f2 goes, the rest stays where it is (nothing fetched again), and
    // the admin's own file beside them stays too: a shrink deletes only what PRsync placed.
    let mine = v.mirror.join("pop/mine.txt");
    std::fs::write(&mine, b"the volunteer admin's notes").unwrap();
    let small = metadata + 2 * 40_000 + 100;
    v.proc.kill();
    let at = args.iter().position(|a| a == "--budget").unwrap();
    args[at + 1] = format!("debian={small}");
    v.proc = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("budget-2.log"),
    );
    wait_until(Duration::from_secs(30), "the budget shrunk", || async {
        held(&v) == ["pop/f0.bin", "pop/f1.bin"]
    })
    .await;
    // (Started again, it holds only the metadata until its pull filled the budget anew and
    // the server worked the files out.)
    wait_until(
        Duration::from_secs(10),
        "f1 redirected to it again",
        || async {
            server
                .location("pop/f1.bin")
                .await
                .is_some_and(|l| l.starts_with(&v.url))
        },
    )
    .await;
    assert_eq!(server.location("pop/f2.bin").await, None);
    let part = server.volunteer("budget").await["parts"]["debian"].clone();
    assert_eq!(part, format!("+ pop/**\n$ budget {small} @ 1\n"), "{part}");
    assert_eq!(
        std::fs::read(&mine).unwrap(),
        b"the volunteer admin's notes",
        "the admin's file survives the shrink"
    );
}
