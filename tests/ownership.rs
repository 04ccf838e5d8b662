//! A sync never deletes what it did not put there: `prsync pull` and a syncing volunteer
//! refuse a directory holding files the manifest does not list unless told to adopt it,
//! leave such files alone after adopting, delete of a generation's dropped files only those
//! an earlier generation listed, and change nothing on a dry run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn pull(server: &Server, repo: &str, dest: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["prsync", "pull", "--server", &server.url, "--repo", repo])
        .args(["--dest", dest.to_str().unwrap(), "--linger-secs", "0"])
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `root` (mirrorswarm's own state aside) with its bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel.starts_with(".mirrorswarm") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A directory an admin already uses for other things: an rpm repository and notes.
fn foreign_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(dir.join("rpm/Packages")).unwrap();
    std::fs::write(dir.join("notes.txt"), b"my notes\n").unwrap();
    std::fs::write(dir.join("rpm/Packages/tool-1.0.x86_64.rpm"), noise(7, 5000)).unwrap();
    std::fs::write(dir.join("rpm/repomd.xml"), b"<repomd/>").unwrap();
    snapshot(dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_refuses_a_foreign_tree_and_after_adopting_deletes_only_what_it_put_there() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    let layout = sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let dest = root.join("dest");
    let mine = foreign_files(&dest);

    // Refused, with the files named and the flag that adopts; nothing touched.
    let o = pull(&server, "debian", &dest, &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "notes.txt",
        "rpm/Packages/tool-1.0.x86_64.rpm",
        "--adopt",
        "3 files",
    ] {
        assert!(err.contains(want), "refusal should say {want}: {err}");
    }
    assert_eq!(snapshot(&dest), mine);
    assert!(
        !dest.join(".mirrorswarm").exists(),
        "a refusal leaves no state behind"
    );

    // A dry run says what adopting would do and changes nothing.
    let o = pull(&server, "debian", &dest, &["--adopt", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains(&format!("install {}", layout.release_path)),
        "{plan}"
    );
    assert!(plan.contains("keep    notes.txt"), "{plan}");
    assert!(!plan.lines().any(|l| l.starts_with("delete")), "{plan}");
    assert_eq!(snapshot(&dest), mine);
    assert!(
        !dest.join(".mirrorswarm").exists(),
        "a dry run changes nothing"
    );

    // Adopted: the repository is there, and so is everything that was.
    let o = pull(&server, "debian", &dest, &["--adopt", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["left_alone_files"], 3, "{s}");
    let now = snapshot(&dest);
    for (p, b) in &mine {
        assert_eq!(now.get(p), Some(b), "{p} was changed or removed");
    }
    for (p, b) in snapshot(&repo) {
        assert_eq!(now.get(&p), Some(&b), "{p} not synced");
    }

    // The admin drops another file in; the operator drops a file of the repository.
    std::fs::write(dest.join("later.txt"), b"added after adopting").unwrap();
    std::fs::remove_file(repo.join("big/b.bin")).unwrap();
    assert!(server.publish().contains("(new)"));
    let o = pull(&server, "debian", &dest, &["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["removed_files"], 1, "{s}");
    assert!(
        !dest.join("big/b.bin").exists(),
        "the dropped file is deleted"
    );
    assert!(dest.join("later.txt").exists());
    for p in mine.keys() {
        assert!(dest.join(p).exists(), "{p} was deleted");
    }

    // An exact copy must be asked for: a dry run first, then the real thing.
    let o = pull(
        &server,
        "debian",
        &dest,
        &["--delete-extraneous", "--dry-run"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains("delete  notes.txt") && plan.contains("delete  later.txt"),
        "{plan}"
    );
    assert!(dest.join("notes.txt").exists());
    let o = pull(&server, "debian", &dest, &["--delete-extraneous"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot(&dest), snapshot(&repo));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_made_by_rsync_is_adopted_and_a_tree_of_another_repository_refused() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), b"x").unwrap();
    let server = start_server(
        root,
        &repo,
        &["--repo", &format!("extra={}", other.display())],
    )
    .await;

    // Every file listed (an older copy, one file missing): adopted without asking.
    let dest = root.join("dest");
    copy_tree(&repo, &dest);
    std::fs::remove_file(dest.join("big/a.bin")).unwrap();
    let o = pull(&server, "debian", &dest, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot(&dest), snapshot(&repo));

    // The tree is `debian`'s now: syncing `extra` into it is refused.
    let o = pull(&server, "extra", &dest, &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is a mirror of `debian`"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(&dest), snapshot(&repo));

    // A misspelt repository: the error lists those the server has.
    let o = pull(&server, "debain", &root.join("new"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no repository `debain`") && err.contains("debian, extra"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volunteer_refuses_a_foreign_directory_at_start_unless_told() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let mirror = root.join("mirror");
    let mine = foreign_files(&mirror);
    let token = server.enroll("v1");
    let port = free_port();
    let data = root.join("v1-data");
    let base = volunteer_args(&server, &token, port, &data, &mirror);
    let syncing: Vec<String> = base.iter().filter(|a| *a != "--no-sync").cloned().collect();

    // Refused at start, on stderr, with what to do.
    let o = Command::new(BIN).args(&syncing).output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in ["notes.txt", "--adopt", "--no-sync"] {
        assert!(err.contains(want), "refusal should say {want}: {err}");
    }
    assert_eq!(snapshot(&mirror), mine);

    // A misspelt repository is named with those the server has.
    let mut wrong = syncing.clone();
    let at = wrong.iter().position(|a| a.starts_with("debian=")).unwrap();
    wrong[at] = format!("debain={}", mirror.display());
    let o = Command::new(BIN).args(&wrong).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("no repository `debain`")
            && err.contains("it publishes: debian"),
        "{}",
        text(&o)
    );

    // Adopting: it syncs the repository in and leaves the admin's files alone.
    let mut adopt = syncing.clone();
    adopt.push("--adopt".into());
    let argv: Vec<&str> = adopt.iter().map(String::as_str).collect();
    let v = Proc::spawn(&argv, &root.join("v1.log"));
    server.wait_held("v1", 1).await;
    let now = snapshot(&mirror);
    for (p, b) in &mine {
        assert_eq!(
            now.get(p),
            Some(b),
            "{p} was changed or removed\n{}",
            dump_logs(&[&v])
        );
    }
    for (p, b) in snapshot(&repo) {
        assert_eq!(now.get(&p), Some(&b), "{p} not synced");
    }
    drop(v);
}

/// Runs `mirrorswarm prsync pull` with DEST on a 2 MiB tmpfs of its own (a private mount
/// namespace, gone when it exits), then prints how many bytes it holds (staged, and placed by
/// a first fill).
fn pull_on_a_small_disk(server: &Server, dest: &Path) -> Output {
    let script = format!(
        "mount -t tmpfs -o size=2m none {d} || exit 99; \
         {bin} prsync pull --server {s} --repo debian --dest {d} --linger-secs 0; rc=$?; \
         echo staged=$(find {d} -type f -not -path '*/.mirrorswarm/*' -printf '%s\\n' \
         -o -path '*/.mirrorswarm/staging/*' -type f -printf '%s\\n' | awk '{{s+=$1}} END {{print s+0}}'); exit $rc",
        d = dest.display(),
        bin = BIN,
        s = server.url
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_an_error_that_says_so_and_keeps_what_it_fetched() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("big")).unwrap();
    // Small files (HTTP) that fit, then ones that do not.
    for i in 0..4 {
        std::fs::write(repo.join(format!("big/{i}.bin")), noise(40 + i, 700_000)).unwrap();
    }
    let server = start_server(root, &repo, &["--torrent-min-bytes", "100000000"]).await;
    let dest = root.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let start = Instant::now();
    let o = pull_on_a_small_disk(&server, &dest);
    assert!(start.elapsed() < Duration::from_secs(120));
    assert_ne!(
        o.status.code(),
        Some(99),
        "cannot mount a tmpfs: {}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no space left"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    let staged: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("staged="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", text(&o)));
    // What the error says is kept was on disk when it was said (fetches still under way
    // may have added a little before they stopped).
    let said: u64 = err
        .split("the ")
        .find_map(|t| t.split_once(" bytes fetched so far are kept"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("the error should say what is kept: {err}"));
    assert!(
        said > 0 && said <= staged,
        "said {said} B, staged {staged} B"
    );
    assert!(err.contains(".mirrorswarm/staging"), "{err}");
}
