//! The balancing study's tables: CSV for tools, markdown for BENCHMARKS.md.

use std::fmt::Write as _;

use super::world::RunResult;
use super::{BalanceArgs, Part, Scenario};

fn list(v: &[f64], sep: &str) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Spread of a normalised vector: the largest distance from 1.0 (the mean), as a fraction.
pub fn spread(v: &[f64]) -> f64 {
    v.iter().map(|x| (x - 1.0).abs()).fold(0.0, f64::max)
}

/// One CSV line per run. The first columns are stable (the CI regression test reads them).
pub fn csv(results: &[(Scenario, RunResult)]) -> String {
    let mut out = String::from(
        "policy,load,interval_s,requests,failed,mean_s,p50_s,p95_s,p99_s,max_s,busy,idle,origin,request_share,network_usage,part,slow_start_s,label\n",
    );
    for (sc, r) in results {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{:?},{},{}",
            r.policy,
            r.load,
            r.interval,
            r.requests,
            r.failed,
            r.mean,
            r.p50,
            r.p95,
            r.p99,
            r.max,
            r.busy_requests,
            r.idle_requests,
            r.origin_requests,
            list(&r.request_share, ";"),
            list(&r.network_usage, ";"),
            sc.part,
            sc.slow_start_secs,
            r.label
        );
    }
    out
}

pub fn md_row(r: &RunResult) -> String {
    format!(
        "| {} | {:.0}% | {} s | {} ({} failed) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} / {} | {} | {} |",
        r.policy,
        r.load * 100.0,
        r.interval,
        r.requests,
        r.failed,
        r.mean,
        r.p50,
        r.p95,
        r.p99,
        r.max,
        r.busy_requests,
        r.idle_requests,
        r.origin_requests,
        list(&r.network_usage, " "),
        list(&r.request_share, " "),
    )
}

const HEADER: &str = "| policy | load | interval | requests | mean (s) | p50 | p95 | p99 | max | busy / idle / origin | network usage ÷ mean (busy, idle, …) | customers ÷ mean |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";

pub fn markdown(a: &BalanceArgs, results: &[(Scenario, RunResult)]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} volunteers with {} B/s uplinks; the even-numbered half carry {} sync uploads wanting {} in all; {} B files; loads are fractions of {:.0} B/s, the capacity left for customers.\n",
        a.volunteers,
        a.upload_bps,
        a.sync_conns,
        if a.sync_bps == 0 {
            "all the link gives them".to_string()
        } else {
            format!("{} B/s", a.sync_bps)
        },
        a.file_size,
        a.customer_capacity()
    );
    let part = |p: Part| results.iter().filter(move |(s, _)| s.part == p);

    md.push_str("### Policies side by side\n\n");
    md.push_str(HEADER);
    for (_, r) in part(Part::Policies) {
        md.push_str(&md_row(r));
        md.push('\n');
    }
    let _ = writeln!(md, "\n| load | feedback max ÷ request-counting max | feedback mean ÷ request-counting mean | feedback mean ÷ oracle mean | feedback p95 ÷ least-connections p95 | feedback network usage, largest distance from the mean |\n|---|---|---|---|---|---|");
    for &load in &a.loads {
        let get = |p: &str| {
            part(Part::Policies)
                .map(|(_, r)| r)
                .find(|r| r.policy == p && r.load == load)
        };
        let ratio = |x: f64, y: f64| {
            if y > 0.0 {
                format!("{:.2}", x / y)
            } else {
                "–".to_string()
            }
        };
        if let Some(f) = get("feedback") {
            let rc = get("request-counting");
            let lc = get("least-connections");
            let o = get("oracle");
            let _ = writeln!(
                md,
                "| {:.0}% | {} | {} | {} | {} | ±{:.0}% |",
                load * 100.0,
                rc.map_or("–".into(), |rc| ratio(f.max, rc.max)),
                rc.map_or("–".into(), |rc| ratio(f.mean, rc.mean)),
                o.map_or("–".into(), |o| ratio(f.mean, o.mean)),
                lc.map_or("–".into(), |lc| ratio(f.p95, lc.p95)),
                spread(&f.network_usage) * 100.0
            );
        }
    }

    if part(Part::Sweep).next().is_some() {
        md.push_str("\n### Staleness sweep\n\n");
        md.push_str(HEADER);
        for (_, r) in part(Part::Sweep) {
            md.push_str(&md_row(r));
            md.push('\n');
        }
    }

    if part(Part::Join).next().is_some() {
        md.push_str("\n### A volunteer joins mid-run\n\n| run | interval | joined at | customers to the joiner in its first window | an equal share | joiner's peak concurrent downloads | others' peak | mean (s) | max (s) | failed |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (_, r) in part(Part::Join) {
            match &r.join {
                Some(j) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} s | {:.1} s | {} in {:.0} s | {:.1} | {} | {} | {:.2} | {:.2} | {} |",
                        r.label,
                        r.interval,
                        j.joined_at,
                        j.first_requests,
                        j.window,
                        j.fair_share,
                        j.peak_concurrent,
                        j.others_peak_concurrent,
                        r.mean,
                        r.max,
                        r.failed
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | – | – | the joiner never started | | | | | | |",
                        r.label
                    );
                }
            }
        }
    }
    md
}
