//! The speed bench's harness works end to end: a small run of `mirrorswarm-lab bench speed`
//! starts our server, a volunteer, nginx and opentracker, drives each with wrk, checks that
//! every answer was right, and reports every comparison. Figures from a debug build on a
//! shared CI machine mean nothing, so none is asserted; BENCHMARKS.md has the real run.

mod common;

use std::process::Command;

use common::*;

/// Run `mirrorswarm-lab bench speed ARGS --work WORK`; its CSV of results.
fn speed_bench(work: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(LAB)
        .args(["bench", "speed"])
        .args(args)
        .arg("--work")
        .arg(work)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stderr}");
    std::fs::read_to_string(work.join("speed-results.csv")).expect("CSV written")
}

#[test]
fn the_speed_bench_measures_every_part_against_its_reference() {
    let tmp = TestDir::new();
    let work = tmp.path().join("work");
    let csv = speed_bench(
        &work,
        &[
            "--files",
            "3000",
            "--volunteers",
            "20",
            "--secs",
            "1",
            "--connections",
            "8",
            "--hash-mib",
            "64",
        ],
    );
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let count = |part: &str, reference: &str| {
        rows.iter()
            .filter(|r| r[0] == part && r[4] == reference)
            .inspect(|r| {
                let ours: f64 = r[3].parse().unwrap();
                assert!(ours > 0.0, "{r:?}");
                if !reference.is_empty() {
                    let theirs: f64 = r[5].parse().unwrap();
                    assert!(theirs > 0.0, "{r:?}");
                }
            })
            .count()
    };
    assert_eq!(count("redirect", "nginx"), 2, "{csv}");
    assert_eq!(count("announce", "opentracker"), 2, "{csv}");
    assert_eq!(count("serve", "nginx"), 4, "{csv}");
    assert_eq!(count("publish", "sha256sum"), 2, "{csv}");
    assert_eq!(count("memory", ""), 1, "{csv}");
    assert_eq!(count("publish", ""), 2, "{csv}");
    let md = std::fs::read_to_string(work.join("speed-results.md")).expect("table written");
    assert!(md.contains("| redirect | 1 core"), "{md}");
}

/// The scale part end to end, small: two servers on a PostgreSQL cluster of the bench's own,
/// a few synthetic volunteers announcing to both, a changed publish reaching both.
#[test]
fn the_scale_part_runs_servers_sharing_postgresql_end_to_end() {
    let tmp = TestDir::new();
    let work = tmp.path().join("work");
    let csv = speed_bench(
        &work,
        &[
            "--parts",
            "scale",
            "--scale-files",
            "2000",
            "--scale-volunteers",
            "30",
            "--scale-interval",
            "1",
            "--scale-servers",
            "2",
            "--secs",
            "1",
            "--connections",
            "4",
        ],
    );
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .filter(|r: &Vec<&str>| r[0] == "scale")
        .collect();
    // Two starts, the enrollment, each server's announces, the redirects, the publish, its
    // reach and the unchanged republish.
    assert_eq!(rows.len(), 9, "{csv}");
    for r in &rows {
        assert!(r[3].parse::<f64>().unwrap() > 0.0, "{r:?}");
    }
    let md = std::fs::read_to_string(work.join("speed-results.md")).expect("table written");
    assert!(md.contains("failures 0"), "{md}");
}

/// The HTTPS part end to end, small: our server (checked first to redirect an HTTPS request
/// to an https:// volunteer) and nginx over TLS 1.3 with one certificate, keep-alive and a
/// handshake per request, every answer below 400 (wrk counts the others, failing the run).
#[test]
fn the_https_part_measures_redirects_over_tls_against_nginx() {
    let tmp = TestDir::new();
    let work = tmp.path().join("work");
    let csv = speed_bench(
        &work,
        &[
            "--parts",
            "redirect-tls",
            "--files",
            "2000",
            "--volunteers",
            "10",
            "--secs",
            "1",
            "--rounds",
            "1",
            "--connections",
            "4",
        ],
    );
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .filter(|r: &Vec<&str>| r[0] == "redirect-tls" && r[4] == "nginx")
        .collect();
    assert_eq!(rows.len(), 4, "{csv}");
    for r in &rows {
        assert!(r[3].parse::<f64>().unwrap() > 0.0, "{r:?}");
        assert!(r[5].parse::<f64>().unwrap() > 0.0, "{r:?}");
    }
}
