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
        "policy,load,interval_s,requests,failed,mean_s,p50_s,p95_s,p99_s,max_s,busy,idle,origin,request_share,network_usage,part,slow_start_s,seed,label,sync_bps,usage_floor\n",
    );
    for (sc, r) in results {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{:?},{},{},{},{},{:.3}",
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
            r.seed,
            r.label.replace(',', ";"),
            r.sync_bps
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(";"),
            r.usage_floor
        );
    }
    out
}

/// Mean sync upload of the busy half, kB/s.
fn busy_sync_kbps(r: &RunResult) -> f64 {
    let busy: Vec<f64> = r
        .sync_bps
        .iter()
        .enumerate()
        .filter(|(i, _)| super::world::is_busy(*i))
        .map(|(_, &x)| x)
        .collect();
    busy.iter().sum::<f64>() / busy.len().max(1) as f64 / 1000.0
}

pub fn md_row(r: &RunResult) -> String {
    format!(
        "| {} | {:.0}% | {} s | {} | {} ({} failed) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} / {} | {} | {} | {:.0} |",
        r.policy,
        r.load * 100.0,
        r.interval,
        r.seed,
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
        busy_sync_kbps(r),
    )
}

const HEADER: &str = "| policy | load | interval | seed | requests | mean (s) | p50 | p95 | p99 | max | busy / idle / origin | network usage ÷ mean (busy, idle, …) | customers ÷ mean | busy half's sync (kB/s each) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

/// `feedback` against the others at each load and seed, as the study's goals compare them;
/// with several seeds, the median of each ratio too.
fn goals(a: &BalanceArgs, results: &[(Scenario, RunResult)]) -> String {
    let mut md = String::from("\n| load | seed | feedback max ÷ request-counting max | feedback mean ÷ request-counting mean | feedback mean ÷ oracle mean | feedback p95 ÷ least-connections p95 | feedback network usage, largest distance from the mean | the least any split of the customers could reach, given that run's sync |\n|---|---|---|---|---|---|---|---|\n");
    let seeds = a.seed..a.seed + a.repeat.max(1);
    for &load in &a.loads {
        let mut per_seed: Vec<[Option<f64>; 6]> = Vec::new();
        for seed in seeds.clone() {
            let get = |p: &str| {
                results
                    .iter()
                    .filter(|(s, _)| s.part == Part::Policies)
                    .map(|(_, r)| r)
                    .find(|r| r.policy == p && r.load == load && r.seed == seed)
            };
            let Some(f) = get("feedback") else { continue };
            let ratio = |other: Option<&RunResult>, pick: fn(&RunResult) -> f64| {
                other.and_then(|o| (pick(o) > 0.0).then(|| pick(f) / pick(o)))
            };
            let row = [
                ratio(get("request-counting"), |r| r.max),
                ratio(get("request-counting"), |r| r.mean),
                ratio(get("oracle"), |r| r.mean),
                ratio(get("least-connections"), |r| r.p95),
                Some(spread(&f.network_usage)),
                Some(f.usage_floor),
            ];
            let _ = writeln!(md, "| {:.0}% | {seed} | {} |", load * 100.0, cells(&row));
            per_seed.push(row);
        }
        if per_seed.len() > 1 {
            let medians: Vec<Option<f64>> = (0..6)
                .map(|k| median(per_seed.iter().filter_map(|r| r[k]).collect()))
                .collect();
            let _ = writeln!(
                md,
                "| {:.0}% | median | {} |",
                load * 100.0,
                cells(&medians)
            );
        }
    }
    md
}

/// Ratios as table cells; the last two are spreads, shown as ±percent.
fn cells(v: &[Option<f64>]) -> String {
    let n = v.len();
    v.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Some(x) if i + 2 >= n => format!("±{:.0}%", x * 100.0),
            Some(x) => format!("{x:.2}"),
            None => "–".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn markdown(a: &BalanceArgs, results: &[(Scenario, RunResult)]) -> String {
    let mut md = String::new();
    let sync = if a.links == "netns" {
        format!(
            "each in a network namespace behind a tc tbf link; the even-numbered half sync a {} B file republished for them to upload about {} B/s each with PRsync (real BitTorrent traffic on the same links)",
            a.sync_file_bytes, a.sync_bps
        )
    } else {
        format!(
            "on loopback, each uplink a token bucket; the even-numbered half carry {} synthetic sync uploads wanting {} in all",
            a.sync_conns,
            if a.sync_bps == 0 {
                "all the link gives them".to_string()
            } else {
                format!("{} B/s", a.sync_bps)
            }
        )
    };
    let _ = writeln!(
        md,
        "{} volunteers with {} B/s uplinks, {sync}; {} B files; loads are fractions of {:.0} B/s, the capacity left for customers.\n",
        a.volunteers,
        a.upload_bps,
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
    md.push_str(&goals(a, results));

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
