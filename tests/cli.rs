//! The command line as an admin meets it: help, config errors that name the key, the demo,
//! and the volunteer listing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn mirrorswarm(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn help_lists_every_role() {
    let out = mirrorswarm(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "server",
        "publish",
        "enroll",
        "volunteer",
        "volunteers",
        "demo",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    let out = mirrorswarm(&["server", "--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("--repo") && text.contains("NAME=DIR") && text.contains("feedback"),
        "{text}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let tmp = TestDir::new();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let cfg = tmp.path().join("server.toml");

    std::fs::write(&cfg, "[redirect]\npolicyy = \"feedback\"\n").unwrap();
    let out = mirrorswarm(&["server", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policyy") && err.contains("server.toml"),
        "{err}"
    );

    std::fs::write(&cfg, "[redirect]\npolicy = \"fastest\"\n").unwrap();
    let out = mirrorswarm(&[
        "server",
        "--config",
        cfg.to_str().unwrap(),
        "--repo",
        &format!("r={}", repo.display()),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("redirect.policy"));

    let out = mirrorswarm(&["server", "--repo", "../evil=/tmp"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("repository name"));

    let out = mirrorswarm(&[
        "server",
        "--data-dir",
        tmp.path().join("d").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no repository to publish"));

    let out = mirrorswarm(&[
        "server",
        "--repo",
        "api=/tmp",
        "--data-dir",
        tmp.path().join("d").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));

    let out = mirrorswarm(&["volunteer", "--mirror", &format!("r={}", repo.display())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`server`"));

    let out = mirrorswarm(&[
        "publish",
        "--data-dir",
        tmp.path().join("none").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the server running"));
}

#[tokio::test(flavor = "multi_thread")]
async fn volunteers_listing_from_server_and_from_database() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let mut server = start_server(root, &repo, &[]).await;
    let _v = start_volunteer(root, &server, "alice", &repo).await;
    server.wait_held("alice", 1).await;
    let out = mirrorswarm(&["volunteers", "--server", &server.url]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("alice"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("healthy") && line.contains("debian=1") && line.contains("127.0.0.1"),
        "{line}"
    );

    server.proc.terminate();
    let out = mirrorswarm(&[
        "volunteers",
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("alice") && l.contains("server not running")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_a_package_through_a_volunteer() {
    let tmp = TestDir::new();
    let mut child = Command::new(BIN)
        .args(["demo", "--port", "0", "--dir", tmp.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo did not become ready");
        lines.push(line.clone());
        if let Some(u) = line.strip_prefix("demo ready: ") {
            break u.to_string();
        }
    };
    let all = lines.join("\n");
    assert!(
        all.contains("curl -L") && all.contains("deb [trusted=yes]"),
        "{all}"
    );
    let curl_line = lines
        .iter()
        .find(|l| l.trim_start().starts_with("curl -L -O"))
        .unwrap();
    let target = curl_line.split_whitespace().last().unwrap();
    let out = Command::new("curl")
        .args(["-fsSL", "-o", "/dev/null", "-w", "%{url_effective}", target])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success());
    let effective = String::from_utf8(out.stdout).unwrap();
    assert!(
        !effective.starts_with(&url),
        "the demo should redirect to a volunteer, ended at {effective}"
    );
}
