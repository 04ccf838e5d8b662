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
fn man_pages_and_completions_come_from_the_command_line() {
    let tmp = TestDir::new();
    let dir = tmp.path().join("man");
    let out = mirrorswarm(&["man", "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "mirrorswarm.1",
        "mirrorswarm-server.1",
        "mirrorswarm-prsync-pull.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text:.200}"
        );
    }
    // The server's page documents its flags, as --help does.
    let server = std::fs::read_to_string(dir.join("mirrorswarm-server.1")).unwrap();
    assert!(
        server.contains("listen") && server.contains("staging"),
        "{server:.2000}"
    );
    for (shell, marker) in [
        ("bash", "_mirrorswarm()"),
        ("zsh", "#compdef mirrorswarm"),
        ("fish", "complete -c mirrorswarm"),
    ] {
        let out = mirrorswarm(&["completions", shell]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains(marker) && text.contains("volunteer"),
            "{shell}"
        );
    }
    let out = mirrorswarm(&["completions", "tcsh"]);
    assert!(!out.status.success());
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

    // An unknown policy, a site's netblock with host bits set, staging on a shared database,
    // an unreadable `.mmdb` and an unknown tier: refused at start, naming the key.
    for (text, key) in [
        ("[redirect]\npolicy = \"fastest\"\n", "redirect.policy"),
        (
            "[[location.sites]]\nname = \"campus\"\nnetblocks = [\"10.1.2.3/16\"]\n",
            "location.sites[0].netblocks[0]",
        ),
        (
            "database = \"postgres://u@127.0.0.1:9/m\"\n[staging]\nenabled = true\n",
            "staging.enabled",
        ),
        (
            "[location]\nmmdb = [\"/nonexistent/geo.mmdb\"]\n",
            "location.mmdb[0]",
        ),
        (
            "[location]\nround_trip_ms = { planet = 5 }\n",
            "location.round_trip_ms.planet",
        ),
        (
            "[location]\nextra_round_trip_ms = { world-site = 5 }\n",
            "location.extra_round_trip_ms.world-site",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = mirrorswarm(&[
            "server",
            "--config",
            cfg.to_str().unwrap(),
            "--repo",
            &format!("r={}", repo.display()),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{err}");
    }

    // The proxy: its server is required, and its file's keys are checked as the others'.
    let out = mirrorswarm(&["proxy"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server"));
    let pcfg = tmp.path().join("proxy.toml");
    std::fs::write(&pcfg, "server = \"http://m.example\"\nstall_secs = 0\n").unwrap();
    let out = mirrorswarm(&["proxy", "--config", pcfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stall_secs"));

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
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is not a mirrorswarm server's data directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nor does `enroll` make a data directory (and a key) where none was.
    let out = mirrorswarm(&[
        "enroll",
        "--data-dir",
        tmp.path().join("none").to_str().unwrap(),
        "--name",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(!tmp.path().join("none").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_server_per_data_directory_and_every_admin_command_reaches_it_both_ways() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let mut server = start_server(root, &repo, &[]).await;
    let data = server.data_dir.to_str().unwrap().to_string();
    let pid = server.proc.child.as_ref().unwrap().id();

    // A second server on the same data directory exits at once, naming the first.
    let out = mirrorswarm(&[
        "server",
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--repo",
        &format!("debian={}", repo.display()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains(&server.url),
        "{err}"
    );

    // Every admin command, both ways: --data-dir, and --server with the token from a file
    // or the environment.
    let token_file = server.data_dir.join("admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let by_dir = ["--data-dir", data.as_str()];
    let tf = token_file.to_str().unwrap();
    let by_url = ["--server", server.url.as_str(), "--token-file", tf];
    let with = |args: &[&str], target: &[&str], env: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(args).args(target);
        c.env_remove("MIRRORSWARM_ADMIN_TOKEN");
        if let Some(t) = env {
            c.env("MIRRORSWARM_ADMIN_TOKEN", t.trim());
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{args:?} {target:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    for target in [&by_dir[..], &by_url[..]] {
        assert!(with(&["publish"], target, None).contains("debian: generation 1"));
        let t = with(
            &["enroll", "--name", &format!("v{}", target.len())],
            target,
            None,
        );
        assert!(t.trim().lines().last().unwrap().contains('.'), "{t}");
        assert!(with(&["status"], target, None).contains("repositories"));
        assert!(with(&["volunteers"], target, None).contains("NAME"));
    }
    let v = start_volunteer(root, &server, "alice", &repo).await;
    server.wait_held("alice", 1).await;
    let url_only = ["--server", server.url.as_str()];
    with(&["volunteers", "drain", "alice"], &url_only, Some(&token));
    let listed = with(&["volunteers"], &by_dir, None);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("alice") && l.contains("draining")),
        "{listed}"
    );
    with(&["volunteers", "resume", "alice"], &by_dir, None);
    drop(v);
    // Without a token, an admin action through the URL says where to get one.
    let o = Command::new(BIN)
        .args(["publish", "--server", &server.url])
        .env_remove("MIRRORSWARM_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--token-file"));
    let o = Command::new(BIN)
        .args(["publish", "--server", &server.url])
        .env("MIRRORSWARM_ADMIN_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused the admin token"));

    // Killed outright: the lock goes with the process; the data directory's server.json
    // no longer sends admin commands anywhere, and a new server starts.
    server.proc.kill();
    let o = Command::new(BIN)
        .args(["publish"])
        .args(by_dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no mirrorswarm server is running"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    server.restart();
    wait_until(Duration::from_secs(30), "the restarted server", || async {
        Command::new(BIN)
            .args(["status"])
            .args(by_dir)
            .output()
            .unwrap()
            .status
            .success()
    })
    .await;
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

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_advises_what_works_and_removes_its_folder_on_ctrl_c() {
    let tmp = TestDir::new();
    let mut child = Command::new(BIN)
        .args(["demo", "--port", "0"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Proc {
        child: None,
        log: tmp.path().join("none"),
    };
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    guard.child = Some(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo did not become ready");
        let done = line.starts_with("demo ready: ");
        lines.push(line);
        if done {
            break;
        }
    }
    let dir = tmp.path().join(format!("mirrorswarm-demo-{pid}"));
    assert!(dir.is_dir());
    // Every command it suggests works as printed.
    let all = lines.join("\n");
    let head = lines
        .iter()
        .find(|l| l.trim_start().starts_with("curl -sI"))
        .unwrap_or_else(|| panic!("{all}"));
    let out = Command::new("sh")
        .args(["-c", head.trim()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("digest: sha-256="), "{head}: {text}");
    let vols = lines
        .iter()
        .find(|l| l.contains(" volunteers --server "))
        .unwrap_or_else(|| panic!("{all}"));
    let out = Command::new("sh")
        .args(["-c", vols.trim()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("volunteer1"),
        "{vols}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ctrl-C: it stops and takes its folder with it.
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let mut child = guard.child.take().unwrap();
    let stopped = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < stopped, "the demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}
