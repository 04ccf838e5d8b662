//! The volunteer admin's controls on a running volunteer (pause, resume, limits, status) and
//! the operator's one-screen `mirrorswarm status`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn ctl(data_dir: &std::path::Path, args: &[&str]) -> String {
    let out = run(Command::new(BIN)
        .arg("volunteer-ctl")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir));
    assert!(
        out.status.success(),
        "volunteer-ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_pause_resume_and_change_limits_live() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--announce-interval", "5"]).await;
    let v = start_volunteer(root, &server, "v1", &repo).await;
    server.wait_held("v1", 1).await;

    let status = ctl(&v.data_dir, &["status"]);
    assert!(
        status.contains("v1: serving") && status.contains("of 64 customers"),
        "{status}"
    );
    assert!(status.contains("debian"), "{status}");

    // Pause: the volunteer refuses customers and the server knows at once (well within the
    // 5 s announce interval), so it stops sending any.
    ctl(&v.data_dir, &["pause"]);
    wait_until(
        Duration::from_secs(3),
        "the server to see the pause",
        || async { server.volunteer("v1").await["state"] == "paused" },
    )
    .await;
    assert_eq!(server.location("big/a.bin").await, None);
    let r = http()
        .get(format!("{}/debian/big/a.bin", v.url))
        .send()
        .await
        .unwrap();
    // A customer that still arrives (sent before the pause) is sent to the origin.
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("{}/.origin/debian/big/a.bin?bounced-by=v1", server.url).as_str()
    );

    ctl(&v.data_dir, &["resume"]);
    wait_until(
        Duration::from_secs(3),
        "the server to see the resume",
        || async { server.volunteer("v1").await["state"] == "healthy" },
    )
    .await;
    assert!(server.location("big/a.bin").await.is_some());

    // Limits, live: the server sees the new capacity and uplink.
    let out = ctl(
        &v.data_dir,
        &[
            "limits",
            "--max-connections",
            "7",
            "--upload-bps",
            "2000000",
        ],
    );
    assert!(
        out.contains("of 7 customers") && out.contains("2000000 B/s"),
        "{out}"
    );
    wait_until(Duration::from_secs(3), "the new capacity", || async {
        server.volunteer("v1").await["capacity"] == 7
    })
    .await;
    // Bad values are refused with a reason; the control token is required.
    let out = run(Command::new(BIN)
        .args(["volunteer-ctl", "limits", "--upload-bps", "5", "--data-dir"])
        .arg(&v.data_dir));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16384"));
    let r = http()
        .post(format!("{}/admin/pause", v.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The operator's one screen.
    let out =
        run(Command::new(BIN).args(["status", "--data-dir", server.data_dir.to_str().unwrap()]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("debian (generation 1)") && text.contains("1 healthy"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_windows_and_quotas_from_the_toml_are_respected() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;

    // A window around now (UTC) with 3 customers at once; the server sees that capacity.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        % 1440;
    let hhmm = |m: u64| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let (from, to) = (hhmm(now + 1440 - 2), hhmm(now + 5));
    let mirror = root.join("w").join("debian");
    copy_tree(&repo, &mirror);
    let cfg = root.join("w.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[upload_windows]]\nfrom = \"{from}\"\nto = \"{to}\"\nmax_connections = 3\nupload_bps = 0\n"
        ),
    )
    .unwrap();
    let token = server.enroll("w");
    let mut args = volunteer_args(&server, &token, free_port(), &root.join("w/data"), &mirror);
    args.extend(["--config".to_string(), cfg.display().to_string()]);
    let _w = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("w.log"),
    );
    server.wait_held("w", 1).await;
    wait_until(Duration::from_secs(10), "the window's capacity", || async {
        server.volunteer("w").await["capacity"] == 3
    })
    .await;

    // A volunteer that syncs, with a quota smaller than the repository: it does not sync,
    // says why, and holds nothing (so it gets no customers).
    let empty = root.join("q").join("debian");
    std::fs::create_dir_all(&empty).unwrap();
    let cfg = root.join("q.toml");
    std::fs::write(&cfg, "[quotas]\ndebian = 1000\n").unwrap();
    let token = server.enroll("q");
    let mut args = volunteer_args(&server, &token, free_port(), &root.join("q/data"), &empty);
    args.retain(|a| a != "--no-sync");
    args.extend(["--config".to_string(), cfg.display().to_string()]);
    let q = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("q.log"),
    );
    wait_until(
        Duration::from_secs(15),
        "the quota to be logged",
        || async { q.log_text().contains("exceeds this repository's quota") },
    )
    .await;
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(server.volunteer("q").await["generations"]["debian"], 0);
}

/// Prompt reports: with 30 s announces, a volunteer whose sync upload starts tells the server
/// within a few seconds, not at its next announce. (The lab's synthetic sync starts with the
/// volunteer, which the lab runs; its first announce, at once, has seen none of it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_burst_is_reported_at_once_not_at_the_next_interval() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--announce-interval", "30"]).await;
    let mirror = root.join("s").join("debian");
    copy_tree(&repo, &mirror);
    let token = server.enroll("s");
    let mut args = volunteer_args(&server, &token, free_port(), &root.join("s/data"), &mirror);
    args.extend(
        [
            "--upload-bps",
            "1000000",
            "--background-sync-conns",
            "4",
            "--background-sync-bps",
            "600000",
        ]
        .map(String::from),
    );
    let _s = Proc::spawn_of(
        LAB,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &root.join("s.log"),
    );
    server.wait_held("s", 1).await;
    // Well before the 30 s interval comes round: the sync as it goes (600 kB/s wanted, the
    // link has room for it), not a rate over no time or over the whole interval.
    wait_until(Duration::from_secs(10), "a report of the sync", || async {
        server.volunteer("s").await["sync_bps"]
            .as_u64()
            .is_some_and(|b| (400_000..=800_000).contains(&b))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_volunteer_per_data_directory_and_ctl_reaches_only_a_running_one() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let mut v = start_volunteer(root, &server, "v1", &repo).await;
    server.wait_held("v1", 1).await;
    // A second volunteer on the same data directory exits at once, naming the first.
    let pid = v.proc.child.as_ref().unwrap().id();
    let out = std::process::Command::new(BIN)
        .args(volunteer_args(
            &server,
            "unused",
            free_port(),
            &v.data_dir,
            &v.mirror,
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    assert!(ctl(&v.data_dir, &["status"]).contains("debian"));
    // Killed: volunteer.json stays behind, and volunteer-ctl no longer trusts it.
    v.proc.kill();
    let out = std::process::Command::new(BIN)
        .args([
            "volunteer-ctl",
            "status",
            "--data-dir",
            v.data_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no volunteer is running"),
        "{err}"
    );
}
