//! A customer sent to a volunteer gets the file: a volunteer that cannot serve a published
//! file (changed on its disk, missing, paused, full) sends the customer back to the origin,
//! tells the server at once, and both count it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const BIG_DEB: &str = "pool/main/m/ms-data/ms-data_0.3_all.deb";

/// The value of an unlabelled (or first labelled) Prometheus sample whose line starts with
/// `prefix`, summed over every line that does.
async fn metric(url: &str, prefix: &str) -> u64 {
    let body = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_wget_and_apt_get_exact_bytes_while_a_volunteers_file_changes() {
    let tmp = TestDir::new();
    let root = tmp.path();
    let repo = root.join("repo");
    sample_repo(&repo);
    let server = start_server(root, &repo, &["--direct-max-bytes", "1024"]).await;
    let v = start_volunteer(root, &server, "v1", &repo).await;
    server.wait_held("v1", 1).await;
    let expected = std::fs::read(repo.join(BIG_DEB)).unwrap();
    let loc = server.location(BIG_DEB).await;
    assert!(
        loc.as_deref().is_some_and(|l| l.starts_with(&v.url)),
        "{loc:?}"
    );

    let curl = |base: &str, n: usize| {
        let out = root.join(format!("curl-{n}.deb"));
        let o = Command::new("curl")
            .args(["-fsSL", "--max-time", "30", "-o", out.to_str().unwrap()])
            .arg(format!("{base}/debian/{BIG_DEB}"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read(&out).unwrap()
    };
    assert!(curl(&server.url, 0) == expected);

    // The volunteer's admin (or a disk fault) changes a byte in place.
    let flipped = root.join("flipped");
    std::fs::write(&flipped, [!expected[5000]]).unwrap();
    let o = Command::new("dd")
        .args(["bs=1", "count=1", "seek=5000", "conv=notrunc"])
        .arg(format!("if={}", flipped.display()))
        .arg(format!("of={}", v.mirror.join(BIG_DEB).display()))
        .output()
        .unwrap();
    assert!(o.status.success());

    // Customers of the server get the published bytes all along: first bounced by the
    // volunteer, then sent to the origin once the server knows.
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(3) && n < 30 {
        n += 1;
        assert!(
            curl(&server.url, n) == expected,
            "download {n} had wrong bytes"
        );
    }

    // A customer the server sent there before it knew: curl, wget and apt straight at the
    // volunteer are all sent on to the origin and get the right bytes.
    assert!(curl(&v.url, 100) == expected);
    let wget_file = root.join("wget.deb");
    let o = Command::new("wget")
        .args(["-O", wget_file.to_str().unwrap()])
        .arg(format!("{}/debian/{BIG_DEB}", v.url))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "wget: {log}");
    assert!(
        log.contains(&format!(
            "Location: {}/.origin/debian/{BIG_DEB}",
            server.url
        )),
        "{log}"
    );
    assert!(std::fs::read(&wget_file).unwrap() == expected);
    let apt = Apt::new(&root.join("apt"), &v.url);
    apt.run(&["update"]);
    apt.run(&["download", "ms-data"]);
    assert!(std::fs::read(apt.dir.join("work/ms-data_0.3_all.deb")).unwrap() == expected);

    // It told the server at once: no more customers for that file go there.
    server.wait_held("v1", 0).await;
    assert_eq!(server.location(BIG_DEB).await, None);

    // Both sides counted the bounces.
    let by_volunteer = metric(&v.url, "mirrorswarm_volunteer_bounced_total{").await;
    let at_server = metric(&server.url, "mirrorswarm_bounced_requests_total").await;
    assert!(by_volunteer >= 3, "volunteer counted {by_volunteer}");
    assert!(at_server >= 3, "server counted {at_server}");
    assert!(at_server <= by_volunteer, "{at_server} > {by_volunteer}");
    drop(v);
}
