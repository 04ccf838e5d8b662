//! `mirrorswarm bench balance`: the paper's balancing experiment (section 4.2) with real
//! processes on loopback. A server and N volunteers; each volunteer's uplink is a token bucket
//! that customer downloads share with background sync uploads, which half of the volunteers
//! carry. A Poisson stream of customer downloads of equal-size files runs at a fraction of
//! the aggregate uplink; every policy sees the same workload, one run after the other.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};

#[derive(Args, Clone)]
pub struct BalanceArgs {
    /// Volunteers (half of them carry background sync traffic).
    #[arg(long, default_value_t = 8)]
    volunteers: usize,
    /// Each volunteer's uplink, bytes/s.
    #[arg(long, default_value_t = 1_000_000)]
    upload_bps: u64,
    /// Background sync uploads on each busy volunteer.
    #[arg(long, default_value_t = 2)]
    sync_conns: u32,
    /// Size of every customer download, bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    file_size: usize,
    /// Seconds of arrivals per run.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Offered loads, as fractions of the aggregate uplink.
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.5,1.0")]
    loads: Vec<f64>,
    /// Policies, side by side.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "request-counting,least-connections,feedback,oracle"
    )]
    policies: Vec<String>,
    /// Announce interval (s) of the main runs.
    #[arg(long, default_value_t = 1)]
    interval: u64,
    /// Staleness sweep: announce intervals (s) for least-loaded and feedback at full load
    /// (empty: no sweep).
    #[arg(long, value_delimiter = ',', default_value = "1,5,15,30")]
    sweep: Vec<u64>,
    /// Skip the staleness sweep.
    #[arg(long)]
    no_sweep: bool,
    /// At most this many requests per run.
    #[arg(long, default_value_t = 5000)]
    max_requests: usize,
    /// Where to write results.csv and results.md.
    #[arg(long, default_value = "bench-balance")]
    out: PathBuf,
    /// Seed of the arrival process (the same for every policy).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One finished customer download.
struct Sample {
    secs: f64,
    volunteer: Option<usize>,
    ok: bool,
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub policy: String,
    pub load: f64,
    pub interval: u64,
    pub requests: usize,
    pub failed: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub busy_requests: usize,
    pub idle_requests: usize,
    pub origin_requests: usize,
    /// Bytes served per volunteer ÷ the mean over volunteers (1.0 = its fair share).
    pub normalized: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// Start a server and volunteers, drive the workload, stop everything.
pub async fn run_one(
    a: &BalanceArgs,
    work: &Path,
    policy: &str,
    load: f64,
    interval: u64,
) -> Result<RunResult> {
    let exe = std::env::current_exe()?;
    let dir = work.join(format!("{policy}-{load}-{interval}"));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    let files = 16;
    for i in 0..files {
        let mut data = vec![0u8; a.file_size];
        rand::thread_rng().fill(&mut data[..]);
        std::fs::write(repo.join(format!("f{i}.bin")), data)?;
    }
    let port = free_port()?;
    let oracle_port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let quiet = |c: &mut Command| {
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut cmd = Command::new(&exe);
    cmd.args([
        "server",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir.join("data"))
    .arg("--repo")
    .arg(format!("bench={}", repo.display()))
    .args([
        "--policy",
        policy,
        "--announce-interval",
        &interval.to_string(),
        "--direct-max-bytes",
        "0",
    ])
    .args([
        "--torrent-min-bytes",
        "1099511627776",
        "--oracle-listen",
        &format!("127.0.0.1:{oracle_port}"),
    ]);
    quiet(&mut cmd);
    let _server = Proc(cmd.spawn().context("starting the server")?);
    crate::demo::wait_until(
        &format!("{url}/health"),
        |v| v["status"] == "ok",
        "the server",
    )
    .await?;

    let mut vols = Vec::new();
    let mut urls = Vec::new();
    for i in 0..a.volunteers {
        let name = format!("v{i}");
        let out = Command::new(&exe)
            .args(["enroll", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--name", &name])
            .output()?;
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        let vport = free_port()?;
        urls.push(format!("http://127.0.0.1:{vport}"));
        let busy = i % 2 == 0;
        let mut c = Command::new(&exe);
        c.args([
            "volunteer",
            "--server",
            &url,
            "--token",
            &token,
            "--listen",
            &format!("127.0.0.1:{vport}"),
            "--data-dir",
        ])
        .arg(dir.join(&name))
        .arg("--mirror")
        .arg(format!("bench={}", repo.display()))
        .args([
            "--no-sync",
            "--upload-bps",
            &a.upload_bps.to_string(),
            "--max-connections",
            "64",
        ])
        .args(["--oracle-feed", &format!("127.0.0.1:{oracle_port}")]);
        if busy {
            c.args(["--background-sync-conns", &a.sync_conns.to_string()]);
        }
        quiet(&mut c);
        vols.push(Proc(c.spawn().context("starting a volunteer")?));
    }
    let n = a.volunteers;
    crate::demo::wait_until(
        &format!("{url}/api/volunteers"),
        |v| {
            v.as_array().is_some_and(|x| {
                x.iter()
                    .filter(|e| e["state"] == "healthy" && e["generations"]["bench"] == 1)
                    .count()
                    == n
            })
        },
        "the volunteers",
    )
    .await?;
    // Let slow start finish (a fresh volunteer counts with part of its capacity at first).
    tokio::time::sleep(Duration::from_secs(11)).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()?;
    let rate = load * (a.volunteers as f64 * a.upload_bps as f64) / a.file_size as f64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut next = 0.0f64;
    let mut sent = 0;
    while next < a.duration as f64 && sent < a.max_requests {
        let at = start + Duration::from_secs_f64(next);
        tokio::time::sleep_until(at.into()).await;
        let (client, samples, urls) = (client.clone(), samples.clone(), urls.clone());
        let target = format!("{url}/bench/f{}.bin", rng.gen_range(0..files));
        tasks.spawn(async move {
            let t0 = Instant::now();
            let res = async {
                let r = client.get(&target).send().await?;
                let final_url = r.url().to_string();
                let ok = r.status().is_success();
                let body = r.bytes().await?;
                Ok::<_, reqwest::Error>((final_url, ok && !body.is_empty()))
            }
            .await;
            let s = match res {
                Ok((u, ok)) => Sample {
                    secs: t0.elapsed().as_secs_f64(),
                    volunteer: urls.iter().position(|v| u.starts_with(v)),
                    ok,
                },
                Err(_) => Sample {
                    secs: t0.elapsed().as_secs_f64(),
                    volunteer: None,
                    ok: false,
                },
            };
            if let Ok(mut v) = samples.lock() {
                v.push(s);
            }
        });
        sent += 1;
        next += -rng.gen::<f64>().max(1e-12).ln() / rate;
    }
    // Drain, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(180), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    drop(vols);

    let samples = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let mut times: Vec<f64> = samples.iter().filter(|s| s.ok).map(|s| s.secs).collect();
    times.sort_by(f64::total_cmp);
    let mut per = vec![0usize; n];
    let (mut busy, mut idle, mut origin) = (0, 0, 0);
    for s in samples.iter().filter(|s| s.ok) {
        match s.volunteer {
            Some(i) => {
                per[i] += 1;
                if i % 2 == 0 {
                    busy += 1
                } else {
                    idle += 1
                }
            }
            None => origin += 1,
        }
    }
    let mean_count = per.iter().sum::<usize>() as f64 / n as f64;
    Ok(RunResult {
        policy: policy.to_string(),
        load,
        interval,
        requests: samples.len(),
        failed: samples.iter().filter(|s| !s.ok).count(),
        mean: if times.is_empty() {
            0.0
        } else {
            times.iter().sum::<f64>() / times.len() as f64
        },
        p50: percentile(&times, 0.50),
        p95: percentile(&times, 0.95),
        p99: percentile(&times, 0.99),
        max: times.last().copied().unwrap_or(0.0),
        busy_requests: busy,
        idle_requests: idle,
        origin_requests: origin,
        normalized: per
            .iter()
            .map(|&c| {
                if mean_count > 0.0 {
                    c as f64 / mean_count
                } else {
                    0.0
                }
            })
            .collect(),
    })
}

fn csv_line(r: &RunResult) -> String {
    format!(
        "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{}",
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
        r.normalized
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(";")
    )
}

fn md_row(r: &RunResult) -> String {
    format!(
        "| {} | {:.0}% | {} s | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} / {} | {} |",
        r.policy,
        r.load * 100.0,
        r.interval,
        r.requests,
        r.mean,
        r.p50,
        r.p95,
        r.p99,
        r.max,
        r.busy_requests,
        r.idle_requests,
        r.origin_requests,
        r.normalized
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

pub async fn run(a: BalanceArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let work = std::env::temp_dir().join(format!("mirrorswarm-balance-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut results = Vec::new();
    let mut plan: Vec<(String, f64, u64)> = Vec::new();
    for &load in &a.loads {
        for p in &a.policies {
            plan.push((p.clone(), load, a.interval));
        }
    }
    for &iv in a.sweep.iter().filter(|_| !a.no_sweep) {
        for p in ["least-loaded", "feedback"] {
            plan.push((p.to_string(), 1.0, iv));
        }
    }
    for (p, load, iv) in plan {
        let mut args = a.clone();
        // A stale-information run must see several announce intervals.
        args.duration = a.duration.max(2 * iv);
        let r = run_one(&args, &work, &p, load, iv)
            .await
            .with_context(|| format!("{p} at {load}"))?;
        eprintln!("{}", md_row(&r));
        results.push(r);
    }
    let _ = std::fs::remove_dir_all(&work);
    let mut csv = String::from("policy,load,interval_s,requests,failed,mean_s,p50_s,p95_s,p99_s,max_s,busy,idle,origin,normalized_bytes\n");
    let mut md = String::from(
        "| policy | load | interval | requests | mean (s) | p50 | p95 | p99 | max | busy / idle / origin | bytes per volunteer ÷ mean (busy, idle, …) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        csv.push_str(&csv_line(r));
        csv.push('\n');
        md.push_str(&md_row(r));
        md.push('\n');
    }
    // Ratios against the goals of the study, per load.
    // The main runs come first; the sweep repeats some (policy, load, interval) keys: keep the first.
    let mut by: BTreeMap<(String, String, u64), &RunResult> = BTreeMap::new();
    for r in &results {
        by.entry((r.policy.clone(), format!("{}", r.load), r.interval))
            .or_insert(r);
    }
    let _ = writeln!(md, "\n| load | feedback max ÷ request-counting max | feedback mean ÷ request-counting mean | feedback mean ÷ oracle mean | feedback p95 ÷ least-connections p95 |\n|---|---|---|---|---|");
    for &load in &a.loads {
        let get = |p: &str| {
            by.get(&(p.to_string(), format!("{load}"), a.interval))
                .copied()
        };
        if let (Some(f), Some(rc), Some(lc), Some(o)) = (
            get("feedback"),
            get("request-counting"),
            get("least-connections"),
            get("oracle"),
        ) {
            let _ = writeln!(
                md,
                "| {:.0}% | {:.2} | {:.2} | {:.2} | {:.2} |",
                load * 100.0,
                f.max / rc.max.max(1e-9),
                f.mean / rc.mean.max(1e-9),
                f.mean / o.mean.max(1e-9),
                f.p95 / lc.p95.max(1e-9)
            );
        }
    }
    std::fs::write(a.out.join("results.csv"), &csv)?;
    std::fs::write(a.out.join("results.md"), &md)?;
    println!("{md}");
    println!(
        "written: {} and {}",
        a.out.join("results.csv").display(),
        a.out.join("results.md").display()
    );
    Ok(())
}
