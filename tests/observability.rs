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

/// Headless Chromium as the probe of this machine kind starts it.
fn chromium(profile: &std::path::Path) -> Command {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is required for the dashboard test (apt-get install chromium)");
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
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
