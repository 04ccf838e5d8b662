//! One run of the balancing study: a server and volunteers as real processes (on loopback, or
//! each volunteer in a network namespace of its own behind a real rate-limited link), a
//! Poisson stream of customer downloads, and what each download saw.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};

use super::links::Links;
use super::{BalanceArgs, Scenario};

/// A child process that dies with its handle, so that no run outlives the bench.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: std::net::IpAddr) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// The port every volunteer listens on inside its own namespace (each has its own ports).
const NETNS_PORT: u16 = 8000;

/// A child's output goes to `<log>` (kept with the run's directory for a failed run's
/// post-mortem), none to the terminal, where the bench's own progress goes.
/// `verbose` (`--trace`): what the processes did, not only what went wrong.
fn logged(c: &mut Command, log: &Path, verbose: bool) -> Result<()> {
    let f = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    c.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f).env(
        "RUST_LOG",
        if verbose {
            "info,librqbit=warn,librqbit_core=warn"
        } else {
            "warn"
        },
    );
    Ok(())
}

/// Files in the benchmark repository (all of `file_size` bytes).
const FILES: usize = 16;

/// One finished customer download.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds after the first arrival at which the request was sent.
    pub start: f64,
    pub secs: f64,
    pub volunteer: Option<usize>,
    pub ok: bool,
}

/// How a volunteer that joined during the run was treated in its first seconds.
#[derive(Debug, Clone)]
pub struct JoinStats {
    /// Seconds after the first arrival at which the joiner was started.
    pub joined_at: f64,
    /// Customers sent to the joiner within `window` seconds of its start.
    pub first_requests: usize,
    /// What an equal share of those customers would have been.
    pub fair_share: f64,
    /// Most downloads the joiner served at once within the window, and the most any other
    /// volunteer served at once in the same window.
    pub peak_concurrent: usize,
    pub others_peak_concurrent: usize,
    pub window: f64,
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub label: String,
    pub policy: String,
    pub load: f64,
    pub interval: u64,
    pub seed: u64,
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
    /// Customer requests per volunteer ÷ the mean over volunteers.
    pub request_share: Vec<f64>,
    /// Bytes each volunteer sent (customers and sync) during the arrivals ÷ the mean over
    /// volunteers, as the paper's Fig. 18 normalises network usage.
    pub network_usage: Vec<f64>,
    /// Bytes/s each volunteer uploaded for syncing during the arrivals (synthetic, or what
    /// its BitTorrent session sent).
    pub sync_bps: Vec<f64>,
    /// The least "largest distance from the mean" of `network_usage` that any split of the
    /// customers could have reached in this run: a link sends at least its own sync bytes,
    /// so where one link's sync alone is above the mean usage, no policy brings it down to
    /// the mean (0 where every link's sync is at or below it).
    pub usage_floor: f64,
    /// Response times of the successful downloads, sorted.
    pub times: Vec<f64>,
    pub join: Option<JoinStats>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// What a volunteer has sent so far, in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    /// Everything: on real links, what crossed the link (headers and retransmissions
    /// included); on loopback, customer downloads plus synthetic sync uploads.
    total: u64,
    /// Uploads for syncing (synthetic, or what its BitTorrent session sent).
    sync: u64,
}

/// `link`: the link's own counter (`--links netns`); without one, what the volunteer counts.
async fn bytes_sent(client: &reqwest::Client, url: &str, link: Option<&Path>) -> Option<Sent> {
    let v: serde_json::Value = client
        .get(format!("{url}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let sync = v["sync_uploaded_bytes"].as_u64()?;
    let total = match link {
        Some(f) => std::fs::read_to_string(f).ok()?.trim().parse().ok()?,
        None => v["uploaded_bytes"].as_u64()? + sync,
    };
    Some(Sent { total, sync })
}

/// Real sync traffic for `--links netns`: the busy half mirror a second repository,
/// `sync`, whose one large file the server republishes with new bytes every `period`;
/// each new generation is pulled by PRsync, pieces traded among the busy volunteers (the
/// origin hands its copy to one of them), as the paper's "one half of the volunteer nodes
/// periodically download files".
async fn republish_sync(
    exe: std::path::PathBuf,
    data: std::path::PathBuf,
    repo: std::path::PathBuf,
    bytes: usize,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: generation 1 (`sync-0.bin`) was published at the start.
    tick.tick().await;
    for k in 1u64.. {
        tick.tick().await;
        let (exe, data, repo) = (exe.clone(), data.clone(), repo.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<()> {
            // A new name each time, as new package versions come: a file under way to a
            // volunteer must not change under it. The two before stay for pulls that lag.
            let mut buf = vec![0u8; bytes];
            rand::thread_rng().fill(&mut buf[..]);
            std::fs::write(repo.join(format!("sync-{k}.bin")), buf)?;
            if let Some(old) = k.checked_sub(3) {
                let _ = std::fs::remove_file(repo.join(format!("sync-{old}.bin")));
            }
            let out = Command::new(&exe)
                .args(["publish", "--repo", "sync", "--data-dir"])
                .arg(&data)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "publish: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("republishing the sync repository: {e:#}"),
            Err(e) => eprintln!("republishing the sync repository: {e}"),
        }
    }
}

/// One reading of a volunteer's counters for `--trace`: seconds after the first arrival,
/// the volunteer, and what it had sent (all, and for syncing).
type Reading = (f64, usize, Sent);

/// What the server held as a volunteer's last report, for `--trace`: seconds after the first
/// arrival, then its `/api/volunteers` entry.
type HeldReport = (f64, serde_json::Value);

/// Reads every volunteer's counters every half second until aborted.
async fn sample_links(
    client: reqwest::Client,
    urls: Vec<String>,
    counters: Vec<Option<std::path::PathBuf>>,
    server: String,
    start: Instant,
    into: Arc<std::sync::Mutex<(Vec<Reading>, Vec<HeldReport>)>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let reports = async {
            client
                .get(format!("{server}/api/volunteers"))
                .send()
                .await
                .ok()?
                .json::<serde_json::Value>()
                .await
                .ok()
        };
        if let Some(serde_json::Value::Array(vs)) = reports.await {
            let t = start.elapsed().as_secs_f64();
            if let Ok(mut v) = into.lock() {
                v.1.extend(vs.into_iter().map(|x| (t, x)));
            }
        }
        for (i, u) in urls.iter().enumerate() {
            if let Some(s) = bytes_sent(&client, u, counters[i].as_deref()).await {
                let t = start.elapsed().as_secs_f64();
                if let Ok(mut v) = into.lock() {
                    v.0.push((t, i, s));
                }
            }
        }
    }
}

fn write_trace(
    out: &Path,
    label: &str,
    samples: &[Sample],
    (timeline, reports): &(Vec<Reading>, Vec<HeldReport>),
) -> Result<()> {
    let dir = out.join("trace");
    std::fs::create_dir_all(&dir)?;
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut reqs = String::from("start,secs,volunteer,ok\n");
    for s in samples {
        let v = s.volunteer.map(|v| v.to_string()).unwrap_or_default();
        reqs.push_str(&format!("{:.3},{:.3},{v},{}\n", s.start, s.secs, s.ok));
    }
    std::fs::write(dir.join(format!("{name}-requests.csv")), reqs)?;
    let mut lines = String::from("t,volunteer,sent_bytes,sync_bytes\n");
    for (t, i, s) in timeline {
        lines.push_str(&format!("{t:.3},{i},{},{}\n", s.total, s.sync));
    }
    std::fs::write(dir.join(format!("{name}-links.csv")), lines)?;
    let mut held = String::from(
        "t,volunteer,customer_conns,sync_conns,sync_bps,customers_bps,last_announce_ms_ago\n",
    );
    for (t, r) in reports {
        held.push_str(&format!(
            "{t:.3},{},{},{},{},{},{}\n",
            r["name"].as_str().unwrap_or_default(),
            r["customer_conns"],
            r["sync_conns"],
            r["sync_bps"],
            r["upload_bps"],
            r["last_announce_ms_ago"]
        ));
    }
    std::fs::write(dir.join(format!("{name}-reports.csv")), held)?;
    Ok(())
}

/// How often the sync repository gets a new generation for the busy half to upload about
/// `sync_bps` each: of a new file's `bytes`, the origin sends one copy and the busy
/// volunteers the other `busy - 1` among themselves.
pub fn sync_period(bytes: usize, busy: usize, sync_bps: u64) -> Duration {
    let per_volunteer = bytes as f64 * (busy.saturating_sub(1)) as f64 / busy.max(1) as f64;
    Duration::from_secs_f64((per_volunteer / sync_bps.max(1) as f64).max(0.5))
}

/// Most intervals `[start, start + secs)` of `samples` open at one instant within `[from, to)`.
fn peak_concurrency<'a>(samples: impl Iterator<Item = &'a Sample>, from: f64, to: f64) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for s in samples {
        let (a, b) = (s.start, s.start + s.secs);
        if b > from && a < to {
            edges.push((a.max(from), 1));
            edges.push((b.min(to), -1));
        }
    }
    // Ends before starts at the same instant.
    edges.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        peak = peak.max(open);
    }
    peak.max(0) as usize
}

/// The volunteers that carry background sync traffic: the even-numbered half.
pub fn is_busy(i: usize) -> bool {
    i % 2 == 0
}

/// Start a server and volunteers, drive the workload, stop everything.
pub async fn run_one(
    a: &BalanceArgs,
    work: &Path,
    sc: &Scenario,
    links: Option<&Links>,
) -> Result<RunResult> {
    // The product binary enrolls and publishes; the server and the volunteers are this
    // binary's roles (the product's code with the oracle, least-loaded and synthetic sync).
    let exe = crate::product_binary()?;
    let lab = std::env::current_exe().context("finding this binary")?;
    let dir = work.join(sc.label.replace([' ', '/'], "_"));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    for i in 0..FILES {
        let mut data = vec![0u8; a.file_size];
        rand::thread_rng().fill(&mut data[..]);
        std::fs::write(repo.join(format!("f{i}.bin")), data)?;
    }
    let host: std::net::IpAddr = match links {
        Some(l) => l.host().into(),
        None => std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let sync_repo = dir.join("sync");
    if links.is_some() {
        std::fs::create_dir_all(&sync_repo)?;
        let mut data = vec![0u8; a.sync_file_bytes];
        rand::thread_rng().fill(&mut data[..]);
        std::fs::write(sync_repo.join("sync-0.bin"), data)?;
    }
    let oracle_port = free_port(host)?;
    // More than one server: replicas sharing a PostgreSQL database of the bench's own (held
    // until the run ends), the first one's key copied to the others.
    let cluster = match a.servers {
        1 => None,
        _ => Some(tokio::task::spawn_blocking(pgtest::Cluster::start).await?),
    };
    let database = cluster.as_ref().map(|c| c.create_database("balance"));
    let mut servers = Vec::new();
    let mut server_urls = Vec::new();
    for k in 0..a.servers {
        let port = free_port(host)?;
        let data = dir.join(if k == 0 {
            "data".into()
        } else {
            format!("data-{k}")
        });
        if k > 0 {
            std::fs::create_dir_all(&data)?;
            std::fs::copy(dir.join("data/server.key"), data.join("server.key"))?;
        }
        let mut cmd = Command::new(&lab);
        cmd.args([
            "server",
            "--listen",
            &format!("{host}:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .arg("--repo")
        .arg(format!("bench={}", repo.display()));
        if let Some(db) = &database {
            cmd.args(["--database", db]);
        }
        if links.is_some() {
            cmd.arg("--repo")
                .arg(format!("sync={}", sync_repo.display()));
        }
        cmd.args([
            "--policy",
            &sc.policy,
            "--announce-interval",
            &sc.interval.to_string(),
            "--direct-max-bytes",
            "0",
            "--slow-start-secs",
            &sc.slow_start_secs.to_string(),
            // The study is about what volunteers report; spot checks would add a signal of
            // their own (the speed they observe) to `feedback` only.
            "--spot-check-secs",
            "0",
        ])
        .args([
            // Torrents for the sync repository's large file only: customers' files go by
            // HTTP.
            "--torrent-min-bytes",
            &match links {
                Some(_) => a.sync_file_bytes.to_string(),
                None => "1099511627776".to_string(),
            },
        ]);
        if k == 0 {
            cmd.args(["--oracle-listen", &format!("{host}:{oracle_port}")]);
        }
        let log = match k {
            0 => dir.join("server.log"),
            _ => dir.join(format!("server-{k}.log")),
        };
        logged(&mut cmd, &log, a.trace)?;
        servers.push(Proc(cmd.spawn().context("starting the server")?));
        let url = format!("http://{host}:{port}");
        crate::wait::wait_until(
            &format!("{url}/health"),
            |v| v["status"] == "ok",
            "the server",
        )
        .await?;
        server_urls.push(url);
    }
    let url = server_urls[0].clone();

    let n = a.volunteers;
    let mut commands = Vec::new();
    let mut urls = Vec::new();
    for i in 0..n {
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
        anyhow::ensure!(!token.is_empty(), "enrolling {name} printed no token");
        let (listen, mut c) = match links {
            Some(l) => (
                std::net::SocketAddr::new(l.volunteer(i).into(), NETNS_PORT),
                l.command(i, &lab),
            ),
            None => (
                std::net::SocketAddr::new(host, free_port(host)?),
                Command::new(&lab),
            ),
        };
        urls.push(format!("http://{listen}"));
        c.args([
            "volunteer",
            "--server",
            &url,
            "--token",
            &token,
            "--listen",
            &listen.to_string(),
            "--data-dir",
        ])
        .arg(dir.join(&name))
        .arg("--mirror")
        .arg(format!("bench={}", repo.display()))
        // On real links `--upload-bps` declares the link to the balancer (the link itself
        // is the limit); on loopback it is the limit.
        .args([
            "--upload-bps",
            &a.upload_bps.to_string(),
            "--max-connections",
            "64",
        ])
        .args(["--oracle-feed", &format!("{host}:{oracle_port}")]);
        for other in &server_urls[1..] {
            c.args(["--server", other]);
        }
        match (links, is_busy(i)) {
            (Some(_), true) => {
                let mine = dir.join(format!("{name}-sync"));
                std::fs::create_dir_all(&mine)?;
                c.arg("--mirror").arg(format!("sync={}", mine.display()));
            }
            (Some(_), false) => {
                c.arg("--no-sync");
            }
            (None, busy) => {
                c.arg("--no-sync");
                if busy {
                    c.args(["--background-sync-conns", &a.sync_conns.to_string()]);
                    if a.sync_bps > 0 {
                        c.args(["--background-sync-bps", &a.sync_bps.to_string()]);
                    }
                }
            }
        }
        logged(&mut c, &dir.join(format!("{name}.log")), a.trace)?;
        commands.push(c);
    }
    // In a join scenario the last volunteer starts a third of the way into the arrivals.
    let joiner = sc.join.then(|| n - 1);
    let mut vols = Vec::new();
    for (i, c) in commands.iter_mut().enumerate() {
        if Some(i) != joiner {
            vols.push(Proc(c.spawn().context("starting a volunteer")?));
        }
    }
    let first = n - usize::from(sc.join);
    // Generous: with 30 s announces a volunteer may need two before it counts as healthy,
    // and a loaded machine starts eight processes slowly.
    for url in &server_urls {
        crate::wait::wait_until_within(
            &format!("{url}/api/volunteers"),
            |v| {
                v.as_array().is_some_and(|x| {
                    x.iter()
                        .filter(|e| e["state"] == "healthy" && e["generations"]["bench"] == 1)
                        .count()
                        == first
                })
            },
            "the volunteers",
            Duration::from_secs(90),
        )
        .await
        .with_context(|| format!("their logs: {}", dir.display()))?;
    }
    // Real sync runs from here on, so that it is under way when the customers come.
    let _republisher = links.map(|_| {
        let busy = (0..n).filter(|&i| is_busy(i)).count();
        AbortOnDrop(tokio::spawn(republish_sync(
            exe.clone(),
            dir.join("data"),
            sync_repo.clone(),
            a.sync_file_bytes,
            sync_period(a.sync_file_bytes, busy, a.sync_bps),
        )))
    });
    // Let slow start finish (a fresh volunteer counts with part of its capacity at first),
    // and real sync reach its pace.
    tokio::time::sleep(Duration::from_secs(
        (sc.slow_start_secs + 1).max(if links.is_some() { 10 } else { 0 }),
    ))
    .await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()?;
    let counters: Vec<Option<std::path::PathBuf>> = (0..n)
        .map(|i| links.map(|l| l.sent_bytes_file(i)))
        .collect();
    let mut sent_before = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        sent_before.push(bytes_sent(&client, u, counters[i].as_deref()).await);
    }
    let timeline = Arc::new(std::sync::Mutex::new((Vec::new(), Vec::new())));
    let start = Instant::now();
    let _sampler = a.trace.then(|| {
        AbortOnDrop(tokio::spawn(sample_links(
            client.clone(),
            urls.clone(),
            counters.clone(),
            url.clone(),
            start,
            timeline.clone(),
        )))
    });
    let rate = sc.load * a.customer_capacity() / a.file_size as f64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(sc.seed);
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let join_at = a.duration as f64 / 3.0;
    let mut joined_at = None;
    let mut next = 0.0f64;
    let mut sent = 0;
    while next < a.duration as f64 && sent < a.max_requests {
        let at = start + Duration::from_secs_f64(next);
        tokio::time::sleep_until(at.into()).await;
        if let (Some(j), None) = (joiner, joined_at) {
            if next >= join_at {
                vols.push(Proc(commands[j].spawn().context("starting the joiner")?));
                joined_at = Some(start.elapsed().as_secs_f64());
            }
        }
        let (client, samples, urls) = (client.clone(), samples.clone(), urls.clone());
        // Customers spread over the servers in turn, as a load balancer would.
        let server = &server_urls[sent % server_urls.len()];
        let target = format!("{server}/bench/f{}.bin", rng.gen_range(0..FILES));
        tasks.spawn(async move {
            let offset = start.elapsed().as_secs_f64();
            let t0 = Instant::now();
            let res = async {
                let r = client.get(&target).send().await?;
                let final_url = r.url().to_string();
                let ok = r.status().is_success();
                let body = r.bytes().await?;
                Ok::<_, reqwest::Error>((final_url, ok && !body.is_empty()))
            }
            .await;
            let (volunteer, ok) = match res {
                Ok((u, ok)) => (urls.iter().position(|v| u.starts_with(v.as_str())), ok),
                Err(_) => (None, false),
            };
            let s = Sample {
                start: offset,
                secs: t0.elapsed().as_secs_f64(),
                volunteer,
                ok,
            };
            if let Ok(mut v) = samples.lock() {
                v.push(s);
            }
        });
        sent += 1;
        next += -rng.gen::<f64>().max(1e-12).ln() / rate;
    }
    let mut sent_after = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        sent_after.push(bytes_sent(&client, u, counters[i].as_deref()).await);
    }
    let arrivals_secs = start.elapsed().as_secs_f64().max(0.001);
    // Drain, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(180), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    drop(vols);
    drop((servers, cluster));

    let samples = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    if a.trace {
        let timeline =
            std::mem::take(&mut *timeline.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        write_trace(&a.out, &sc.label, &samples, &timeline)?;
    }
    let mut times: Vec<f64> = samples.iter().filter(|s| s.ok).map(|s| s.secs).collect();
    times.sort_by(f64::total_cmp);
    let mut per = vec![0usize; n];
    let (mut busy, mut idle, mut origin) = (0, 0, 0);
    for s in samples.iter().filter(|s| s.ok) {
        match s.volunteer {
            Some(i) => {
                per[i] += 1;
                if is_busy(i) {
                    busy += 1
                } else {
                    idle += 1
                }
            }
            None => origin += 1,
        }
    }
    let during = |pick: fn(&Sent) -> u64| -> Vec<f64> {
        sent_before
            .iter()
            .zip(&sent_after)
            .map(|(b, a)| {
                let (b, a) = (b.unwrap_or_default(), a.unwrap_or_default());
                pick(&a).saturating_sub(pick(&b)) as f64
            })
            .collect()
    };
    let usage = during(|s| s.total);
    let sync_bytes = during(|s| s.sync);
    let usage_floor = usage_floor(&usage, &sync_bytes);
    let sync_bps = sync_bytes.iter().map(|b| b / arrivals_secs).collect();
    let join = match (joiner, joined_at) {
        (Some(j), Some(at)) => {
            let window = a.join_window as f64;
            let in_window = |s: &&Sample| s.ok && s.start >= at && s.start < at + window;
            let first_requests = samples
                .iter()
                .filter(in_window)
                .filter(|s| s.volunteer == Some(j))
                .count();
            let all = samples.iter().filter(in_window).count();
            let others_peak = (0..n)
                .filter(|&i| i != j)
                .map(|i| {
                    peak_concurrency(
                        samples.iter().filter(|s| s.ok && s.volunteer == Some(i)),
                        at,
                        at + window,
                    )
                })
                .max()
                .unwrap_or(0);
            Some(JoinStats {
                joined_at: at,
                first_requests,
                fair_share: all as f64 / n as f64,
                peak_concurrent: peak_concurrency(
                    samples.iter().filter(|s| s.ok && s.volunteer == Some(j)),
                    at,
                    at + window,
                ),
                others_peak_concurrent: others_peak,
                window,
            })
        }
        _ => None,
    };
    Ok(RunResult {
        label: sc.label.clone(),
        policy: sc.policy.clone(),
        load: sc.load,
        interval: sc.interval,
        seed: sc.seed,
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
        request_share: normalise(per.iter().map(|&c| c as f64).collect()),
        network_usage: normalise(usage),
        sync_bps,
        usage_floor,
        times,
        join,
    })
}

/// A task that ends with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The floor under the spread of network usage that the customers' placement cannot go
/// below: how far the link whose sync alone sent the most is above the mean usage.
fn usage_floor(usage: &[f64], sync: &[f64]) -> f64 {
    let mean = usage.iter().sum::<f64>() / usage.len().max(1) as f64;
    if mean <= 0.0 {
        return 0.0;
    }
    let most = sync.iter().copied().fold(0.0, f64::max);
    (most / mean - 1.0).max(0.0)
}

/// Each value ÷ the mean of all (0 where the mean is 0).
fn normalise(v: Vec<f64>) -> Vec<f64> {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    v.into_iter()
        .map(|x| if mean > 0.0 { x / mean } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start: f64, secs: f64) -> Sample {
        Sample {
            start,
            secs,
            volunteer: Some(0),
            ok: true,
        }
    }

    #[test]
    fn peak_concurrency_counts_overlaps_within_the_window() {
        let v = [s(0.0, 2.0), s(1.0, 2.0), s(1.5, 0.2), s(5.0, 1.0)];
        assert_eq!(peak_concurrency(v.iter(), 0.0, 10.0), 3);
        // Back to back is not overlapping.
        let v = [s(0.0, 1.0), s(1.0, 1.0)];
        assert_eq!(peak_concurrency(v.iter(), 0.0, 10.0), 1);
        // Outside the window does not count.
        let v = [s(0.0, 1.0), s(0.5, 1.0), s(5.0, 1.0)];
        assert_eq!(peak_concurrency(v.iter(), 3.0, 10.0), 1);
    }

    #[test]
    fn sync_period_paces_the_busy_half_at_the_asked_rate() {
        // 4 busy: of a new 4 MB file the origin sends one copy and the busy half the other
        // three, 3 MB a volunteer: at 500 kB/s, one every 6 s.
        assert_eq!(sync_period(4_000_000, 4, 500_000), Duration::from_secs(6));
        assert_eq!(sync_period(1_000_000, 2, 250_000), Duration::from_secs(2));
        // Never faster than twice a second, whatever is asked.
        assert_eq!(sync_period(1, 4, 1_000_000_000), Duration::from_millis(500));
    }

    #[test]
    fn percentiles_and_normalising() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(normalise(vec![1.0, 3.0]), [0.5, 1.5]);
        assert_eq!(normalise(vec![0.0, 0.0]), [0.0, 0.0]);
    }

    #[test]
    fn usage_floor_is_how_far_one_links_sync_alone_is_above_the_mean() {
        // The loopback study at 20 %: a busy link's sync (500) alone is 1.25 × the mean
        // usage (400), so no split of the customers gets within ±25 %.
        let usage = [600.0, 200.0, 600.0, 200.0];
        let sync = [500.0, 0.0, 500.0, 0.0];
        assert!((usage_floor(&usage, &sync) - 0.25).abs() < 1e-9);
        // Sync below the mean everywhere: an even split is possible.
        assert_eq!(usage_floor(&[100.0, 100.0], &[80.0, 0.0]), 0.0);
        assert_eq!(usage_floor(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
    }
}
