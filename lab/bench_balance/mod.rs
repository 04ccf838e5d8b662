//! `mirrorswarm bench balance`: the paper's balancing experiment (section 4.2) with real
//! processes. A server and N volunteers; half of the volunteers carry sync traffic beside
//! their customers. Either on loopback, each volunteer's uplink a token bucket that customer
//! downloads share with synthetic sync uploads, or (`--links netns`, as root) each volunteer
//! in a network namespace behind a `tc tbf` link, the sync real PRsync pulls of a
//! repository republished as it runs. A Poisson stream of customer downloads of equal-size files runs at a fraction of the
//! capacity left for customers; every policy sees the same arrivals, one run after the other.
//!
//! Three parts: the policies side by side at each load; a staleness sweep over the announce
//! interval; and a volunteer joining mid-run, with and without slow start.

mod links;
mod plot;
mod report;
mod world;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Clone)]
pub struct BalanceArgs {
    /// Volunteers (half of them carry background sync traffic).
    #[arg(long, default_value_t = 8)]
    volunteers: usize,
    /// Each volunteer's uplink, bytes/s.
    #[arg(long, default_value_t = 1_000_000)]
    upload_bps: u64,
    /// `bucket`: everything on loopback, each uplink a token bucket in the volunteer, the
    /// sync synthetic. `netns` (needs root and iproute2): each volunteer in a network
    /// namespace of its own behind a `tc tbf` link of `--upload-bps`, the busy half
    /// syncing a repository the bench republishes with PRsync (BitTorrent among them).
    #[arg(long, default_value = "bucket", value_parser = ["bucket", "netns"])]
    links: String,
    /// With `--links netns`: the size of the sync repository's one file, given new bytes
    /// as often as makes the busy half upload about `--sync-bps` each.
    #[arg(long, default_value_t = 4 << 20)]
    sync_file_bytes: usize,
    /// Synthetic background sync uploads on each busy volunteer (4: BitTorrent's upload
    /// slots); with `--links netns` the sync connections are real and this is unused.
    #[arg(long, default_value_t = 4)]
    sync_conns: u32,
    /// What those sync uploads want together, bytes/s; they share the uplink with customers
    /// and get less when it is full. 0: as much as they can get.
    #[arg(long, default_value_t = 500_000)]
    sync_bps: u64,
    /// Size of every customer download, bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    file_size: usize,
    /// Seconds of arrivals per run.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Offered loads, as fractions of the capacity left for customers (the aggregate uplink
    /// less the sync demand).
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.5,1.0")]
    loads: Vec<f64>,
    /// Policies, side by side.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "request-counting,least-connections,feedback-connections,feedback,oracle"
    )]
    policies: Vec<String>,
    /// Announce interval (s) of the main runs.
    #[arg(long, default_value_t = 1)]
    interval: u64,
    /// Staleness sweep: announce intervals (s) for least-loaded and both feedback policies.
    #[arg(long, value_delimiter = ',', default_value = "1,5,15,30")]
    sweep: Vec<u64>,
    /// Offered load of the staleness sweep.
    #[arg(long, default_value_t = 1.0)]
    sweep_load: f64,
    /// Skip the staleness sweep.
    #[arg(long)]
    no_sweep: bool,
    /// Announce interval (s) of the join runs: one volunteer starts a third of the way in.
    #[arg(long, default_value_t = 5)]
    join_interval: u64,
    /// Seconds after the join over which the joiner's treatment is measured.
    #[arg(long, default_value_t = 10)]
    join_window: u64,
    /// Skip the join runs.
    #[arg(long)]
    no_join: bool,
    /// At most this many requests per run.
    #[arg(long, default_value_t = 5000)]
    max_requests: usize,
    /// Servers of the mirror (replicas on one PostgreSQL database, a throwaway cluster of
    /// the bench's own): every volunteer announces to each, and the customers are spread
    /// over them in turn, each server counting only the redirects it sent since a
    /// volunteer's report. 1: one server on SQLite, as the paper's.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Where to write results.csv, results.md and the plots.
    #[arg(long, default_value = "bench-balance")]
    out: PathBuf,
    /// Seed of the arrival process (the same for every policy).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Repeat the side-by-side runs with this many arrival processes (seeds `--seed`,
    /// `--seed`+1, …): at full load queues grow as a random walk, so one run's ratios say
    /// little on their own. The sweep and the join runs use the first seed.
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// Also write, per run, what shows where a slow request was sent and why:
    /// `trace/<run>-requests.csv` (every request: when it was sent, how long it took, which
    /// volunteer), `trace/<run>-links.csv` (each volunteer's bytes sent, all and for
    /// syncing, every half second) and `trace/<run>-reports.csv` (each volunteer's last
    /// report as the server held it, every half second); and keep every run's directory,
    /// its processes' logs (at info) among it, in `trace/runs`.
    #[arg(long)]
    trace: bool,
}

impl BalanceArgs {
    /// Bytes/s the volunteers can give customers: the aggregate uplink less what the busy
    /// half's sync wants. With greedy sync (`--sync-bps 0`) the whole aggregate uplink.
    fn customer_capacity(&self) -> f64 {
        let busy = (0..self.volunteers).filter(|&i| world::is_busy(i)).count() as f64;
        let sync = self.sync_bps.min(self.upload_bps) as f64;
        self.volunteers as f64 * self.upload_bps as f64 - busy * sync
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub label: String,
    pub part: Part,
    pub policy: String,
    pub load: f64,
    pub interval: u64,
    pub slow_start_secs: u64,
    /// One volunteer starts during the run instead of before it.
    pub join: bool,
    pub duration: u64,
    /// Seed of the arrivals.
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Policies,
    Sweep,
    Join,
}

/// The slow start the server uses unless a scenario turns it off.
const SLOW_START_SECS: u64 = 10;

fn plan(a: &BalanceArgs) -> Vec<Scenario> {
    let mut plan = Vec::new();
    for seed in a.seed..a.seed + a.repeat.max(1) {
        for &load in &a.loads {
            for p in &a.policies {
                plan.push(Scenario {
                    label: if a.repeat > 1 {
                        format!("{p} at {:.0}% (seed {seed})", load * 100.0)
                    } else {
                        format!("{p} at {:.0}%", load * 100.0)
                    },
                    part: Part::Policies,
                    policy: p.clone(),
                    load,
                    interval: a.interval,
                    slow_start_secs: SLOW_START_SECS,
                    join: false,
                    duration: a.duration,
                    seed,
                });
            }
        }
    }
    if !a.no_sweep {
        for &iv in &a.sweep {
            for p in ["least-loaded", "feedback-connections", "feedback"] {
                plan.push(Scenario {
                    label: format!("{p}, {iv} s announces"),
                    part: Part::Sweep,
                    policy: p.to_string(),
                    load: a.sweep_load,
                    interval: iv,
                    slow_start_secs: SLOW_START_SECS,
                    join: false,
                    // A stale-information run must see several announce intervals.
                    duration: a.duration.max(2 * iv),
                    seed: a.seed,
                });
            }
        }
    }
    if !a.no_join {
        for (p, ss) in [
            ("feedback", SLOW_START_SECS),
            ("feedback", 0),
            ("least-loaded", 0),
        ] {
            plan.push(Scenario {
                label: if p == "feedback" && ss > 0 {
                    format!("join: {p}, slow start {ss} s")
                } else if p == "feedback" {
                    format!("join: {p}, no slow start")
                } else {
                    format!("join: {p}")
                },
                part: Part::Join,
                policy: p.to_string(),
                load: 0.5,
                interval: a.join_interval,
                slow_start_secs: ss,
                join: true,
                // The joiner starts a third of the way in and is watched for a window.
                duration: a.duration.max(3 * a.join_window / 2 + a.join_window),
                seed: a.seed,
            });
        }
    }
    plan
}

pub async fn run(a: BalanceArgs) -> Result<()> {
    anyhow::ensure!(a.volunteers >= 2, "--volunteers must be at least 2");
    anyhow::ensure!(
        (1..=8).contains(&a.servers),
        "--servers must be from 1 to 8"
    );
    anyhow::ensure!(
        a.servers == 1 || (a.links == "bucket" && !a.policies.iter().any(|p| p == "oracle")),
        "--servers above 1 runs on --links bucket and without the oracle (its feed reaches one server)"
    );
    anyhow::ensure!(
        a.customer_capacity() > 0.0,
        "--sync-bps leaves no capacity for customers"
    );
    let links = if a.links == "netns" {
        let busy = (0..a.volunteers).filter(|&i| world::is_busy(i)).count();
        anyhow::ensure!(
            busy >= 2,
            "--links netns needs at least 4 volunteers: the busy half trade the sync pieces"
        );
        anyhow::ensure!(
            a.file_size < a.sync_file_bytes,
            "--file-size must be below --sync-file-bytes (only the sync file gets a torrent)"
        );
        anyhow::ensure!(a.sync_bps > 0, "--links netns needs a --sync-bps above 0");
        Some(links::Links::create(a.volunteers, a.upload_bps)?)
    } else {
        None
    };
    // Ctrl-C or SIGTERM stops the study cleanly: dropping it kills every process it
    // started, and then `links` removes the namespaces.
    tokio::select! {
        r = study(&a, links.as_ref()) => r,
        _ = crate::shutdown::shutdown_signal() => {
            anyhow::bail!("interrupted; what was measured so far is in {}", a.out.join("results.csv").display())
        }
    }
}

async fn study(a: &BalanceArgs, links: Option<&links::Links>) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // With `--trace` each run's directory (its processes' logs among it) stays with the
    // trace; otherwise it is scratch.
    let work = if a.trace {
        std::path::absolute(a.out.join("trace").join("runs"))?
    } else {
        std::env::temp_dir().join(format!("mirrorswarm-balance-{}", std::process::id()))
    };
    std::fs::create_dir_all(&work)?;
    let mut results = Vec::new();
    for sc in plan(a) {
        let mut args = a.clone();
        args.duration = sc.duration;
        // A run whose world did not come up (a port taken between choosing and binding it,
        // a machine too loaded to start eight processes in time) is tried once more rather
        // than ending an hour's study; a second failure ends it.
        let r = match world::run_one(&args, &work, &sc, links).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e:#}; trying it once more", sc.label);
                world::run_one(&args, &work, &sc, links)
                    .await
                    .with_context(|| sc.label.clone())?
            }
        };
        eprintln!("{}", report::md_row(&r));
        results.push((sc, r));
        // Written after every run, so what was measured survives a later failure.
        std::fs::write(a.out.join("results.csv"), report::csv(&results))?;
    }
    if a.trace {
        println!("every run's processes and logs: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    std::fs::write(a.out.join("results.csv"), report::csv(&results))?;
    let md = report::markdown(a, &results);
    std::fs::write(a.out.join("results.md"), &md)?;
    println!("{md}");
    match plot::response_time_cdfs(&a.out, &results) {
        Ok(files) => {
            for f in files {
                println!("plot: {}", f.display());
            }
        }
        Err(e) => eprintln!("no plots: {e:#}"),
    }
    println!(
        "written: {} and {}",
        a.out.join("results.csv").display(),
        a.out.join("results.md").display()
    );
    Ok(())
}
