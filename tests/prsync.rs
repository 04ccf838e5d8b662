//! PRsync end to end: volunteers sync from each other, reuse what they hold, survive lying
//! peers and kills, and never install a wrong byte.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn stats_sync(server: &Server) -> (u64, u64) {
    let out = Command::new("curl")
        .args(["-fsS", &format!("{}/api/stats", server.url)])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["seed_uploaded_bytes"].as_u64().unwrap(),
        v["origin_http_bytes"].as_u64().unwrap(),
    )
}

/// Every file of `a` is in `b` with the same bytes, and `b` has nothing else (state dir aside).
fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| -> Vec<String> {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                if rel.starts_with(".mirrorswarm") {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    v.push(rel);
                }
            }
        }
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(
        la,
        lb,
        "{} and {} list different files",
        a.display(),
        b.display()
    );
    for f in la {
        assert!(
            std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(),
            "{f} differs in {}",
            b.display()
        );
    }
}

fn pull(server: &Server, dest: &Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let out = Command::new(BIN)
        .args([
            "prsync",
            "pull",
            "--server",
            &server.url,
            "--repo",
            "debian",
            "--dest",
            dest.to_str().unwrap(),
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, summary)
}

/// [`pull`] that must succeed (its stderr shown if not), with `--linger-secs 0`: the summary.
fn pull_ok(server: &Server, dest: &Path, extra: &[&str]) -> serde_json::Value {
    let (out, summary) = pull(server, dest, &[&["--linger-secs", "0"], extra].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary
}

/// Whether a pull took only the changes since generation `from` (not the whole manifest).
fn took_delta(summary: &serde_json::Value, from: u64) -> bool {
    summary["since"].as_u64() == Some(from)
}

fn transferred(s: &serde_json::Value) -> u64 {
    s["from_peers_bytes"].as_u64().unwrap() + s["from_origin_bytes"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn four_volunteers_sync_a_generation_and_the_origin_uploads_it_about_once() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    // The origin's seed is capped, as an origin's uplink would be: volunteers then take
    // pieces from each other rather than all from the origin.
    let server = start_server(root, &repo, &["--seed-upload-bps", "4194304"]).await;
    let mut vols = Vec::new();
    for i in 1..=4 {
        let name = format!("v{i}");
        let mirror = root.join(&name).join("debian");
        copy_tree(&repo, &mirror);
        let token = server.enroll(&name);
        let port = free_port();
        let mut args = volunteer_args(
            &server,
            &token,
            port,
            &root.join(&name).join("data"),
            &mirror,
        );
        args.retain(|a| a != "--no-sync");
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        vols.push((
            name.clone(),
            mirror,
            Proc::spawn(&argv, &root.join(format!("{name}.log"))),
        ));
        server.wait_held(&name, 1).await;
    }

    // Generation 2: two new large files, one changed small file.
    let big1 = noise(11, 6 << 20);
    let big2 = noise(12, 6 << 20);
    std::fs::write(repo.join("big/new1.img"), &big1).unwrap();
    std::fs::write(repo.join("big/new2.img"), &big2).unwrap();
    std::fs::write(repo.join("big/a.bin"), noise(13, 300_000)).unwrap();
    let changed_large = (big1.len() + big2.len()) as u64;
    let (seed0, http0) = stats_sync(&server);
    let out = server.publish();
    assert!(out.contains("generation 2 (new)"), "{out}");
    let start = Instant::now();
    for (name, _, _) in &vols {
        server.wait_held(name, 2).await;
    }
    let took = start.elapsed();
    for (_, mirror, _) in &vols {
        assert_same_tree(&repo, mirror);
    }
    let (seed1, http1) = stats_sync(&server);
    let origin_seed = seed1 - seed0;
    let origin_http = http1 - http0;
    println!(
        "4 volunteers synced {changed_large} B of new large files in {:.1} s; origin uploaded {origin_seed} B over BitTorrent ({:.2}x the changed bytes) and {origin_http} B over HTTP",
        took.as_secs_f64(),
        origin_seed as f64 / changed_large as f64
    );
    assert!(
        origin_seed <= 2 * changed_large,
        "origin seeded {origin_seed} B for {changed_large} B of changes"
    );
    for (name, _, p) in &vols {
        assert!(
            p.log_text().contains("synced"),
            "{name} did not log its sync"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_files_cost_nothing_and_similar_ones_little() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("img")).unwrap();
    let disk = noise(21, 16 << 20);
    std::fs::write(repo.join("img/disk.img"), &disk).unwrap();
    std::fs::write(repo.join("README"), b"hello").unwrap();
    let server = start_server(root, &repo, &[]).await;
    let dest = root.join("dest");
    let (out, s) = pull(&server, &dest, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(transferred(&s), disk.len() as u64 + 5);
    assert_same_tree(&repo, &dest);

    // A new file identical to one already held: zero bytes transferred.
    std::fs::create_dir_all(repo.join("mirror-of")).unwrap();
    std::fs::write(repo.join("mirror-of/disk-copy.img"), &disk).unwrap();
    server.publish();
    let (out, s) = pull(&server, &dest, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "identical new file: {} B transferred, {} B reused locally",
        transferred(&s),
        s["reused_local_bytes"]
    );
    assert_eq!(transferred(&s), 0, "{s}");
    assert_same_tree(&repo, &dest);
    assert!(took_delta(&s, 1), "{s}");

    // A new version with local edits: most blocks come from the old one.
    let mut v2 = disk.clone();
    for at in [1_000_000usize, 7_000_000, 12_345_678] {
        for b in &mut v2[at..at + 3000] {
            *b = b.wrapping_add(1);
        }
    }
    v2.splice(9_000_000..9_000_000, noise(22, 5000));
    std::fs::write(repo.join("img/disk.img"), &v2).unwrap();
    server.publish();
    let (out, s) = pull(&server, &dest, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "edited {} B file: {} B transferred ({:.1}%), {} B reused locally; speedup {:.1}x",
        v2.len(),
        transferred(&s),
        100.0 * transferred(&s) as f64 / v2.len() as f64,
        s["reused_local_bytes"],
        s["repo_bytes"].as_u64().unwrap() as f64 / transferred(&s).max(1) as f64
    );
    assert!(transferred(&s) < v2.len() as u64 / 2, "{s}");
    assert_same_tree(&repo, &dest);
    // The copy that did not change is untouched; the dropped file goes away when removed.
    std::fs::remove_file(repo.join("mirror-of/disk-copy.img")).unwrap();
    server.publish();
    let (out, s) = pull(&server, &dest, &[]);
    assert!(out.status.success());
    assert_eq!(s["removed_files"], 1);
    assert_same_tree(&repo, &dest);
    assert!(took_delta(&s, 3), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_serving_corrupted_pieces_cannot_corrupt_the_sync() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("img")).unwrap();
    let disk = noise(31, 8 << 20);
    std::fs::write(repo.join("img/disk.img"), &disk).unwrap();
    let server = start_server(root, &repo, &[]).await;
    // A volunteer that synced honestly and seeds…
    let mirror = root.join("liar/debian");
    std::fs::create_dir_all(&mirror).unwrap();
    let token = server.enroll("liar");
    let mut args = volunteer_args(
        &server,
        &token,
        free_port(),
        &root.join("liar/data"),
        &mirror,
    );
    args.retain(|a| a != "--no-sync");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let _liar = Proc::spawn(&argv, &root.join("liar.log"));
    server.wait_held("liar", 1).await;
    // …then its copy rots in place, size and mtime kept, so it goes on seeding bad pieces.
    let f = mirror.join("img/disk.img");
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        for at in (0..disk.len() as u64).step_by(1 << 20) {
            file.write_all_at(&[0xAA; 4096], at + 100).unwrap();
        }
        file.set_modified(mtime).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dest = root.join("dest");
    let (out, s) = pull(&server, &dest, &["--stall-secs", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dest.join("img/disk.img")).unwrap(),
        disk,
        "a corrupted piece was installed"
    );
    println!("with a lying peer: {s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_pull_resumes_and_a_second_concurrent_pull_is_refused() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("img")).unwrap();
    let disk = noise(41, 12 << 20);
    std::fs::write(repo.join("img/disk.img"), &disk).unwrap();
    // A slow origin so there is time to interrupt.
    let server = start_server(root, &repo, &["--seed-upload-bps", "1048576"]).await;
    let dest = root.join("dest");
    let mut first = Command::new(BIN)
        .args([
            "prsync",
            "pull",
            "--server",
            &server.url,
            "--repo",
            "debian",
            "--dest",
            dest.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staged = dest.join(".mirrorswarm/staging");
    wait_until(
        Duration::from_secs(20),
        "the first pull to stage data",
        || {
            let staged = staged.clone();
            async move {
                std::fs::read_dir(&staged)
                    .map(|rd| {
                        rd.flatten()
                            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
                    })
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let (out, _) = pull(&server, &dest, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a concurrent pull must be refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("another prsync pull is running"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = first.kill(); // SIGKILL
    let _ = first.wait();
    assert!(
        !dest.join("img/disk.img").exists(),
        "nothing is installed before it verified"
    );

    let (out, s) = pull(&server, &dest, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dest.join("img/disk.img")).unwrap(), disk);
    println!(
        "resumed pull transferred {} of {} B",
        transferred(&s),
        disk.len()
    );
    assert!(
        transferred(&s) < disk.len() as u64,
        "the resumed pull refetched everything: {s}"
    );
}

/// A pull that reaches the server by another name than the one its torrents carry (the
/// server's public URL) announces to the server it was given, and shows its admin no
/// warning from the BitTorrent engine about trackers.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_announces_where_it_was_told_and_warns_of_nothing() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("img")).unwrap();
    std::fs::write(repo.join("img/disk.img"), noise(31, 3 << 20)).unwrap();
    let server = start_server(root, &repo, &[]).await;
    let dest = root.join("dest");
    let out = Command::new(BIN)
        .args(["prsync", "pull", "--repo", "debian", "--linger-secs", "0"])
        .args(["--server", &format!("http://localhost:{}", server.port)])
        .args([
            "--dest",
            dest.to_str().unwrap(),
            "--bt-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("private trackers"), "{err}");
    assert!(
        !err.contains("WARN"),
        "a clean pull warns of nothing: {err}"
    );
    assert_same_tree(&repo, &dest);
}

/// `sync_uploaded_bytes` of a volunteer's `/health`: what it sent to syncing peers.
async fn sync_uploaded(v: &Volunteer) -> u64 {
    let h = get_json(&format!("{}/health", v.url)).await;
    h["sync_uploaded_bytes"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_fill_takes_small_files_in_batches_from_volunteers_counted_as_sync() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    // Many small files: one request each would be hundreds of redirects.
    let mut small = 0u64;
    for i in 0..300u64 {
        let bytes = noise(100 + i, 200 + (i as usize * 37) % 2800);
        small += bytes.len() as u64;
        let dir = repo.join(format!("pool/small/{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.dat")), bytes).unwrap();
    }
    let server = start_server(root, &repo, &[]).await;
    let vols = [
        start_volunteer(root, &server, "v1", &repo).await,
        start_volunteer(root, &server, "v2", &repo).await,
    ];
    for v in &vols {
        server.wait_held(&v.name, 1).await;
    }
    let served_before: u64 = server
        .volunteers()
        .await
        .iter()
        .map(|v| v["redirects"].as_u64().unwrap_or(0))
        .sum();
    let (_, http0) = stats_sync(&server);
    let dest = root.join("dest");
    let (out, summary) = pull(&server, &dest, &["--linger-secs", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&repo, &dest);
    let (_, http1) = stats_sync(&server);
    // Every small file came from the volunteers, none from the origin over HTTP.
    assert_eq!(http1 - http0, 0, "origin sent small files: {summary}");
    assert!(
        summary["from_peers_bytes"].as_u64().unwrap() >= small,
        "{summary}"
    );
    // The volunteers count it as syncing, not as customers the server sent them.
    let mut synced = 0;
    for v in &vols {
        synced += sync_uploaded(v).await;
    }
    assert!(synced >= small, "volunteers counted {synced} B of sync");
    let served_after: u64 = server
        .volunteers()
        .await
        .iter()
        .map(|v| v["redirects"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(served_after, served_before, "small files went by redirects");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_with_nothing_to_do_writes_nothing_and_one_after_a_local_change_repairs_it() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let dest = root.join("dest");
    let (out, _) = pull(&server, &dest, &["--linger-secs", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = [".mirrorswarm/scan.rec", ".mirrorswarm/listed"];
    let stamp = |rel: &str| {
        std::fs::metadata(dest.join(rel))
            .and_then(|m| m.modified())
            .unwrap()
    };
    let before: Vec<_> = records.iter().map(|r| stamp(r)).collect();
    std::thread::sleep(Duration::from_millis(20));
    let (out, s) = pull(&server, &dest, &["--linger-secs", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["installed_files"], 0, "{s}");
    let after: Vec<_> = records.iter().map(|r| stamp(r)).collect();
    assert_eq!(
        before, after,
        "a pull with nothing to do rewrote the tree's records"
    );
    assert!(took_delta(&s, 1), "{s}");
    // A file changed here is put back, and the record follows.
    std::fs::write(dest.join("big/a.bin"), b"changed by hand").unwrap();
    let (out, s) = pull(&server, &dest, &["--linger-secs", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["installed_files"], 1, "{s}");
    assert_same_tree(&repo, &dest);
    assert_ne!(stamp(records[0]), after[0], "the record was not updated");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_of_a_tree_holding_the_last_generation_fetches_only_the_changes() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    std::fs::write(repo.join("gone.txt"), b"dropped in generation 2").unwrap();
    let server = start_server(root, &repo, &[]).await;
    let dest = root.join("dest");
    pull_ok(&server, &dest, &[]);
    // The admin's own file: the tree no longer matches its record, so the next pull takes
    // the whole manifest and scans (and leaves the file alone); the one after, a delta.
    std::fs::write(dest.join("notes.txt"), b"the admin's").unwrap();
    let s = pull_ok(&server, &dest, &[]);
    assert_eq!(s["left_alone_files"], 1, "{s}");
    assert!(!took_delta(&s, 1), "a tree that changed took a delta: {s}");

    std::fs::write(repo.join("big/a.bin"), noise(3, 200_000)).unwrap();
    std::fs::write(repo.join("new.txt"), b"new in generation 2").unwrap();
    std::fs::remove_file(repo.join("gone.txt")).unwrap();
    server.publish();
    let s = pull_ok(&server, &dest, &[]);
    assert!(took_delta(&s, 1), "{s}");
    assert_eq!(
        (s["installed_files"].as_u64(), s["removed_files"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(s["generation"], 2, "{s}");
    assert_eq!(
        std::fs::read(dest.join("notes.txt")).unwrap(),
        b"the admin's"
    );
    std::fs::remove_file(dest.join("notes.txt")).unwrap();
    assert_same_tree(&repo, &dest);

    // The endpoint refuses what it cannot give; the pull falls back to the whole manifest.
    let url = |q: &str| format!("{}/manifests/debian/latest?{q}", server.url);
    for (q, status) in [("since=3", 400), ("since=0", 404), ("since=x", 400)] {
        let r = http().get(url(q)).send().await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            status,
            "{q}: {}",
            r.text().await.unwrap()
        );
    }
    let r = http().get(url("since=1")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("delta_of") && !body.contains("big/b.bin"),
        "{body}"
    );
    // Publish made the deltas from the previous generation; one from further back is made
    // when asked, and holds what changed in every generation since.
    std::fs::write(repo.join("big/b.bin"), noise(4, 1000)).unwrap();
    server.publish();
    let r = http().get(url("since=1")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("new.txt") && body.contains("big/b.bin") && body.contains("gone.txt"),
        "{body}"
    );
    assert!(server
        .data_dir
        .join("repos/debian/deltas/3-since-1.json")
        .is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_pull_holds_what_its_patterns_choose_and_always_the_metadata() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let dest = root.join("dest");
    let in_repo = files_under(&repo);
    let metadata: Vec<&String> = in_repo.iter().filter(|p| p.starts_with("dists/")).collect();
    assert!(!metadata.is_empty());

    // One large file, and the metadata.
    let s = pull_ok(&server, &dest, &["--include", "big/a.bin"]);
    let held = files_under(&dest);
    let mut expected: std::collections::BTreeSet<String> =
        metadata.iter().map(|p| p.to_string()).collect();
    expected.insert("big/a.bin".into());
    assert_eq!(held, expected, "{s}");
    for p in &held {
        assert_eq!(
            std::fs::read(dest.join(p)).unwrap(),
            std::fs::read(repo.join(p)).unwrap(),
            "{p}"
        );
    }

    // Widened: the rest of big/ comes, and nothing held is fetched again.
    let s = pull_ok(&server, &dest, &["--include", "big/**"]);
    assert_eq!(s["installed_files"], 1, "{s}");
    assert!(files_under(&dest).contains("big/b.bin"));

    // Narrowed the other way: everything but big/. The two files a sync put there go; the
    // admin's file beside them stays.
    std::fs::write(dest.join("big/notes.txt"), b"the admin's").unwrap();
    let s = pull_ok(&server, &dest, &["--exclude", "big/**"]);
    assert_eq!(
        (s["removed_files"].as_u64(), s["left_alone_files"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    let held = files_under(&dest);
    let mut expected: std::collections::BTreeSet<String> = in_repo
        .iter()
        .filter(|p| !p.starts_with("big/"))
        .cloned()
        .collect();
    expected.insert("big/notes.txt".into());
    assert_eq!(held, expected);
    // The same again: nothing to do.
    let s = pull_ok(&server, &dest, &["--exclude", "big/**"]);
    assert_eq!(
        (s["installed_files"].as_u64(), s["removed_files"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );

    // A new generation: a partial tree that holds the same part takes only its part of the
    // changes, and counts what it holds.
    std::fs::write(repo.join("big/b.bin"), noise(9, 1000)).unwrap();
    std::fs::create_dir_all(repo.join("extra")).unwrap();
    std::fs::write(repo.join("extra/new.txt"), b"new and held").unwrap();
    server.publish();
    let s = pull_ok(&server, &dest, &["--exclude", "big/**"]);
    assert!(took_delta(&s, 1), "{s}");
    assert_eq!(
        (s["installed_files"].as_u64(), s["removed_files"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    let part: Vec<String> = files_under(&repo)
        .into_iter()
        .filter(|p| !p.starts_with("big/"))
        .collect();
    let part_bytes: u64 = part
        .iter()
        .map(|p| std::fs::metadata(repo.join(p)).unwrap().len())
        .sum();
    assert_eq!(s["files"].as_u64(), Some(part.len() as u64), "{s}");
    assert_eq!(s["repo_bytes"].as_u64(), Some(part_bytes), "{s}");
    assert!(!files_under(&dest).contains("big/b.bin"));
    assert_eq!(
        std::fs::read(dest.join("extra/new.txt")).unwrap(),
        b"new and held"
    );

    // A held file changed by hand: the pull takes the whole manifest, and still holds only
    // its part.
    std::fs::write(dest.join("extra/new.txt"), b"changed by hand").unwrap();
    let s = pull_ok(&server, &dest, &["--exclude", "big/**"]);
    assert!(!took_delta(&s, 2), "{s}");
    assert_eq!(s["installed_files"], 1, "{s}");
    assert_eq!(s["files"].as_u64(), Some(part.len() as u64), "{s}");
    assert_eq!(
        std::fs::read(dest.join("extra/new.txt")).unwrap(),
        b"new and held"
    );
    assert!(!files_under(&dest).contains("big/b.bin"));

    // A pattern that is not one is refused before anything is touched, naming it.
    let (out, _) = pull(&server, &dest, &["--include", "/pool/**"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/pool/**") && err.contains("leading"), "{err}");
}
