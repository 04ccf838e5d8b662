//! What operators and admins watch: Prometheus counters that move with traffic, the server's
//! dashboard in a real browser (headless Chromium), and a volunteer's status page.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The value of the sample `name{labels}` (labels as written, or "" for none).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

async fn scrape(url: &str) -> String {
    let r = http().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_happens() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let v = start_volunteer(root, &server, "v1", &repo).await;
    server.wait_held("v1", 1).await;

    let s0 = scrape(&server.url).await;
    let v0 = scrape(&v.url).await;
    let redirected = "mirrorswarm_requests_total{policy=\"feedback\",outcome=\"volunteer\"}";
    let small = "mirrorswarm_requests_total{policy=\"feedback\",outcome=\"origin_small\"}";
    let to_v1 = "mirrorswarm_volunteer_redirects_total{volunteer=\"v1\"}";
    let served = "mirrorswarm_volunteer_served_requests_total{volunteer=\"v1\"}";
    let uploaded = "mirrorswarm_volunteer_uploaded_bytes_total{volunteer=\"v1\"}";
    assert!(
        sample(&s0, "mirrorswarm_announces_accepted_total").unwrap() >= 1.0,
        "{s0}"
    );
    assert_eq!(
        sample(
            &s0,
            "mirrorswarm_volunteer_generation{volunteer=\"v1\",repo=\"debian\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&s0, "mirrorswarm_volunteer_up{volunteer=\"v1\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &v0,
            "mirrorswarm_volunteer_held_generation{volunteer=\"v1\",repo=\"debian\"}"
        ),
        Some(1.0)
    );

    for _ in 0..3 {
        let out = run(Command::new("curl")
            .args([
                "-fsSL",
                "--retry",
                "3",
                "--retry-all-errors",
                "-o",
                "/dev/null",
            ])
            .arg(format!("{}/debian/big/a.bin", server.url)));
        assert!(out.status.success());
    }
    let out = run(Command::new("curl")
        .args(["-fsSL", "-o", "/dev/null"])
        .arg(format!("{}/debian/dists/stable/Release", server.url)));
    assert!(out.status.success());

    let s1 = scrape(&server.url).await;
    let v1 = scrape(&v.url).await;
    let delta =
        |a: &str, b: &str, k: &str| sample(b, k).unwrap_or(0.0) - sample(a, k).unwrap_or(0.0);
    // Under load a request may go to the origin instead; most go to the volunteer.
    assert!(delta(&s0, &s1, redirected) >= 2.0, "{s1}");
    assert!(delta(&s0, &s1, to_v1) >= 2.0, "{s1}");
    assert!(delta(&s0, &s1, small) >= 1.0, "{s1}");
    assert!(
        delta(&s0, &s1, "mirrorswarm_redirected_bytes_total") >= 2.0 * 300_000.0,
        "{s1}"
    );
    assert!(delta(&v0, &v1, served) >= 2.0, "{v1}");
    assert!(delta(&v0, &v1, uploaded) >= 2.0 * 300_000.0, "{v1}");
    // A forged announce is counted as refused.
    let r = http()
        .get(format!(
            "{}/announce?info_hash=%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00\
&peer_id=aaaaaaaaaaaaaaaaaaaa&port=1&uploaded=0&downloaded=0&left=0&ms_vid=nobody&ms_seq=1\
&ms_gen=1&ms_cc=0&ms_sc=0&ms_up=0&ms_cap=1&ms_url=http%3A%2F%2Fx&ms_sig={}",
            server.url,
            "0".repeat(64)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s2 = scrape(&server.url).await;
    assert!(
        delta(&s1, &s2, "mirrorswarm_announces_refused_total") >= 1.0,
        "{s2}"
    );

    // The volunteer's status page says what it holds.
    let page = http()
        .get(format!("{}/status", v.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("volunteer v1") && page.contains("current"),
        "{page}"
    );
}

/// `curl` of `url` following redirects, with `extra` arguments; whether it was redirected.
fn curl_counting(url: &str, extra: &[&str]) -> bool {
    let out = run(Command::new("curl")
        .args([
            "-fsSL",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{num_redirects}",
        ])
        .args(extra)
        .arg(url));
    assert!(out.status.success(), "{url} {extra:?}");
    String::from_utf8_lossy(&out.stdout).trim() != "0"
}

/// The offload line of `mirrorswarm status`: bytes to volunteers, bytes from the origin.
fn status_bytes(server: &Server) -> (u64, u64) {
    let out = run(Command::new(BIN)
        .args(["status", "--data-dir"])
        .arg(&server.data_dir));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("offload"))
        .unwrap_or_else(|| panic!("{text}"));
    // "… (X B vs Y B from the origin)"
    let nums: Vec<u64> = line
        .split(['(', ' '])
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[nums.len() - 2], nums[nums.len() - 1])
}

/// What every view of the offload says at one moment.
struct Offload {
    metrics_redirected: f64,
    metrics_origin: f64,
    stats_redirected: u64,
    stats_origin: u64,
    to_v1: u64,
    status: (u64, u64),
    v1_uploaded: f64,
    v1_page: u64,
}

async fn offload(server: &Server, v: &Volunteer) -> Offload {
    let s = scrape(&server.url).await;
    let vm = scrape(&v.url).await;
    let stats = get_json(&format!("{}/api/stats", server.url)).await;
    let page = http()
        .get(format!("{}/status", v.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v1_page = page
        .split("bytes to customers: ")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{page}"));
    Offload {
        metrics_redirected: sample(&s, "mirrorswarm_redirected_bytes_total").unwrap(),
        metrics_origin: sample(&s, "mirrorswarm_origin_http_bytes_total").unwrap(),
        stats_redirected: stats["redirected_bytes"].as_u64().unwrap(),
        stats_origin: stats["origin_http_bytes"].as_u64().unwrap(),
        to_v1: server.volunteer("v1").await["redirected_bytes"]
            .as_u64()
            .unwrap(),
        status: status_bytes(server),
        v1_uploaded: sample(
            &vm,
            "mirrorswarm_volunteer_uploaded_bytes_total{volunteer=\"v1\"}",
        )
        .unwrap(),
        v1_page,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_counts_no_bytes_and_a_range_its_own() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    // No spot checks: their fetches from the volunteer would move its counters.
    let server = start_server(root, &repo, &["--spot-check-secs", "0"]).await;
    let v = start_volunteer(root, &server, "v1", &repo).await;
    server.wait_held("v1", 1).await;
    let big = format!("{}/debian/big/a.bin", server.url);
    let origin = format!("{}/.origin/debian/big/a.bin", server.url);

    let before = offload(&server, &v).await;
    // Through the redirect (or the origin, if the policy sent it there), then at the origin.
    let mut via_v1 = 0;
    let mut at_origin = 0;
    for (url, extra, bytes) in [
        (&big, &["-I"][..], 0u64),
        (&big, &["-r", "0-99"][..], 100),
        (&origin, &["-I"][..], 0),
        (&origin, &["-r", "0-99"][..], 100),
    ] {
        if curl_counting(url, extra) {
            via_v1 += bytes;
        } else {
            at_origin += bytes;
        }
    }
    assert!(at_origin >= 100, "the /.origin/ range is the origin's");
    let after = offload(&server, &v).await;

    let (b, a) = (&before, &after);
    assert_eq!(a.metrics_redirected - b.metrics_redirected, via_v1 as f64);
    assert_eq!(a.metrics_origin - b.metrics_origin, at_origin as f64);
    assert_eq!(a.stats_redirected - b.stats_redirected, via_v1);
    assert_eq!(a.stats_origin - b.stats_origin, at_origin);
    assert_eq!(a.to_v1 - b.to_v1, via_v1);
    assert_eq!(a.status.0 - b.status.0, via_v1);
    assert_eq!(a.status.1 - b.status.1, at_origin);
    assert_eq!(a.v1_uploaded - b.v1_uploaded, via_v1 as f64);
    assert_eq!(a.v1_page - b.v1_page, via_v1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_volunteers_in_a_real_browser() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &[]).await;
    let _a = start_volunteer(root, &server, "alpha", &repo).await;
    let _b = start_volunteer(root, &server, "bravo", &repo).await;
    server.wait_held("alpha", 1).await;
    server.wait_held("bravo", 1).await;
    for _ in 0..4 {
        let out = run(Command::new("curl")
            .args([
                "-fsSL",
                "--retry",
                "3",
                "--retry-all-errors",
                "-o",
                "/dev/null",
            ])
            .arg(format!("{}/debian/big/b.bin", server.url)));
        assert!(out.status.success());
    }
    let url = format!("{}/dashboard", server.url);

    // The DOM after the page's script ran: both volunteers, healthy, and the figures.
    let mut dom = String::new();
    for attempt in 0..3 {
        let out = run(chromium(&root.join(format!("profile-dom-{attempt}")))
            .arg("--dump-dom")
            .arg(&url));
        dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if dom.contains("data-volunteer=\"bravo\"") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for want in [
        "data-volunteer=\"alpha\"",
        "data-volunteer=\"bravo\"",
        "state-healthy",
        "debian (1)",
        "2 / 2",
        // Each holds all of the repository's files and bytes.
        "debian 100% · 100% · ",
    ] {
        assert!(
            dom.contains(want),
            "`{want}` missing from the dashboard:\n{dom}"
        );
    }
    assert!(dom.contains("<div id=\"error\"></div>"), "{dom}");
    // The offload tile shows a percentage once customers were redirected.
    assert!(dom.contains(" %</div>"), "{dom}");

    // And a screenshot, for people.
    let shot = std::env::var_os("MIRRORSWARM_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("dashboard.png"));
    let out = run(chromium(&root.join("profile-shot"))
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1280,720", "--hide-scrollbars"])
        .arg(&url));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_can_be_json_lines_and_refusals_say_why() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--log-format", "json"]).await;
    // An announce that claims to be a volunteer but is not signed right.
    let r = http()
        .get(format!(
            "{}/announce?info_hash=%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00\
&peer_id=aaaaaaaaaaaaaaaaaaaa&port=1&uploaded=0&downloaded=0&left=0&ms_vid=v&ms_seq=x",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = server.proc.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "server ready"),
        "{log}"
    );
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["message"] == "refused mirror announce")
        .unwrap_or_else(|| panic!("no refusal logged: {log}"));
    assert_eq!(refusal["level"], "INFO");
    assert!(
        refusal["fields"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("ms_seq"),
        "{refusal}"
    );
}
