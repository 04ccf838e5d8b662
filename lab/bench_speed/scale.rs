//! `--parts scale`: the mirror at the size of the paper's organisation. Three servers (by
//! default) sharing a PostgreSQL database (a throwaway cluster of the bench's own) and one
//! tree of `--scale-files` files (2.2 million: shared storage, so each server's copy is the
//! same directory), and `--scale-volunteers` synthetic volunteers (10,000), enrolled through
//! the real enrollment, each announcing every `--scale-interval` seconds (5) to every server
//! with a signed report. What it measures, each on its own row:
//!
//! - the first publish (every file read and hashed) and a server joining (loading that
//!   generation from the database and indexing the tree against it);
//! - enrolling the volunteers through the servers;
//! - per server: announces taken per second under the full load and the CPU they cost, and
//!   its memory;
//! - redirects per second of one server under that announce load;
//! - a publish that changes 1,000 files, how long until every server serves that generation,
//!   and an unchanged republish.
//!
//! The load generator, the servers and PostgreSQL share the machine: read the CPU figures
//! as each server's own (its process's CPU time), not as what the machine has to spare.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::future::join_all;
use volunteer::client::ServerClient;

use super::population::{self, Member};
use super::procs::{cpu_seconds, memory};
use super::services::{launch, Cores, Launch, OurServer};
use super::{trees, wrk, Goal, Row, SpeedArgs};

const REPO: &str = "scale";

/// Announce tasks of the load generator: each announces for every `TASKS`-th volunteer.
const TASKS: usize = 64;

pub async fn scale(a: &SpeedArgs) -> Result<Vec<Row>> {
    let exe = crate::product_binary()?;
    let (n, v, servers) = (a.scale_files, a.scale_volunteers, a.scale_servers);
    let interval = Duration::from_secs(a.scale_interval);
    let tree = a.work.join(format!("scale-tree-{n}"));
    eprintln!("   building {n} files in {} (once)", tree.display());
    {
        let tree = tree.clone();
        tokio::task::spawn_blocking(move || trees::many_files(&tree, n)).await??;
    }
    let cluster = tokio::task::spawn_blocking(pgtest::Cluster::start).await?;
    let database = cluster.create_database("scale");
    eprintln!("   PostgreSQL up on port {}", cluster.port());
    let mut rows = Vec::new();
    let case = |what: &str| format!("{n} files, {v} volunteers, {servers} servers: {what}");
    let row = |case: String, unit: &'static str, ours: f64, detail: String| Row {
        part: "scale",
        case,
        unit,
        ours,
        reference_name: "",
        reference: None,
        goal: Goal::None,
        detail,
    };

    // The first server publishes the tree (every file hashed); the others load that
    // generation from the database.
    let mut up: Vec<OurServer> = Vec::new();
    for k in 0..servers {
        let tag = format!("scale-{k}");
        let data = a.work.join(format!("server-data-{tag}"));
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        std::fs::create_dir_all(&data)?;
        if let Some(first) = up.first() {
            std::fs::copy(first.data_dir.join("server.key"), data.join("server.key"))?;
        }
        let t = Instant::now();
        let s = launch(Launch {
            exe: &exe,
            work: &a.work,
            tag: &tag,
            repos: &[(REPO, &tree)],
            cores: Cores::All,
            start_limit: Duration::from_secs(3600),
            database: Some(&database),
            interval_secs: a.scale_interval,
            tls: None,
        })
        .await?;
        let secs = t.elapsed().as_secs_f64();
        let (rss, _) = memory(s.proc.pid())?;
        eprintln!("   server {k} up in {secs:.1} s, {} MiB", rss >> 20);
        rows.push(row(
            case(match k {
                0 => "start with the first publish (every file hashed)",
                _ => "a server starting, loading the generation from the database",
            }),
            "s",
            secs,
            format!("RSS then {} MiB", rss >> 20),
        ));
        up.push(s);
    }

    let t = Instant::now();
    let members = population::enroll(&up[0].url, &up[0].data_dir, v).await?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!("   {v} volunteers enrolled in {secs:.1} s");
    rows.push(row(
        case("enrolling every volunteer, one after another"),
        "enrollments/s",
        v as f64 / secs,
        format!("{secs:.1} s in all"),
    ));

    // Every volunteer announces every interval to every server, from here to the end.
    let urls: Vec<String> = up.iter().map(|s| s.url.clone()).collect();
    let load = AnnounceLoad::start(&urls, members, interval)?;
    // One interval to reach everyone, then one more so that every server has heard all.
    tokio::time::sleep(2 * interval).await;
    for s in &up {
        population::check_registered(&s.url, v)
            .await
            .with_context(|| format!("volunteers at {}", s.url))?;
    }
    let window = Duration::from_secs(a.secs.max(6 * a.scale_interval));
    let before: Vec<(u64, f64)> = cpu_and_count(&up, &load)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let after = cpu_and_count(&up, &load)?;
    let secs = t.elapsed().as_secs_f64();
    let wanted = (servers * v) as f64 / interval.as_secs_f64() / servers as f64;
    for (k, s) in up.iter().enumerate() {
        let taken = (after[k].0 - before[k].0) as f64 / secs;
        let cpu = (after[k].1 - before[k].1) / secs;
        let (rss, hwm) = memory(s.proc.pid())?;
        rows.push(row(
            case(&format!("server {k}: announces taken under the full load")),
            "announces/s",
            taken,
            format!(
                "{wanted:.0}/s sent its way; its CPU {:.1} % of a core ({:.1} µs an announce); RSS {} MiB, peak {} MiB; failures {}",
                cpu * 100.0,
                cpu / taken.max(1e-9) * 1e6,
                rss >> 20,
                hwm >> 20,
                load.failures[k].load(Ordering::Relaxed),
            ),
        ));
    }

    // Redirects of one server while the announces go on.
    let paths = a.work.join(format!("scale-paths-{n}.txt"));
    trees::sample_paths(&paths, REPO, n, 100_000)?;
    let script = wrk::random_paths_script(&paths);
    let (c0, _) = cpu_and_count(&up, &load)?[0];
    let l = wrk::run(&a.work, &up[0].url, &script, 1, a.connections, a.secs, None)?;
    let (c1, _) = cpu_and_count(&up, &load)?[0];
    rows.push(row(
        case("redirects of one server under the announce load"),
        "requests/s",
        l.per_sec(),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, {} non-3xx, {} socket errors; {:.0} announces/s taken meanwhile",
            l.p50_ms,
            l.p99_ms,
            l.bad_status,
            l.socket_errors,
            (c1 - c0) as f64 / l.secs.max(1e-9),
        ),
    ));

    // A release: 1,000 files get new bytes (a new length: the tree's files are holes),
    // published on the first server; then the same again, unchanged.
    for i in (0..n).step_by((n / 1000).max(1)).take(1000) {
        let f = std::fs::File::options()
            .write(true)
            .open(tree.join(trees::pool_path(i)))?;
        f.set_len(9 + (i % 8) as u64)?;
    }
    let t = Instant::now();
    let out = publish(&up[0]).await?;
    let published = t.elapsed().as_secs_f64();
    let generation = out["generation"]
        .as_u64()
        .context("publish named no generation")?;
    let mut reached = Vec::new();
    for s in &up {
        reached.push(until_generation(&s.url, generation, t).await?);
    }
    let last = reached.iter().cloned().fold(0.0, f64::max);
    rows.push(row(
        case("publish of 1,000 changed files"),
        "s",
        published,
        format!("generation {generation}"),
    ));
    rows.push(row(
        case("a new generation served by every server, from the publish's start"),
        "s",
        last,
        format!(
            "each: {}",
            reached
                .iter()
                .map(|r| format!("{r:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let t = Instant::now();
    let out = publish(&up[0]).await?;
    anyhow::ensure!(
        out["new_generation"] == false,
        "an unchanged republish made a generation"
    );
    rows.push(row(
        case("unchanged republish"),
        "s",
        t.elapsed().as_secs_f64(),
        String::new(),
    ));
    drop(load);
    drop(up);
    drop(cluster);
    Ok(rows)
}

/// `POST /admin/publish` to the server `s`, as `mirrorswarm publish` sends it; its report
/// of the repository.
async fn publish(s: &OurServer) -> Result<serde_json::Value> {
    let token = std::fs::read_to_string(s.data_dir.join("admin.token"))?;
    let r = reqwest::Client::new()
        .post(format!("{}/admin/publish", s.url))
        .bearer_auth(token.trim())
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await?;
    if !status.is_success() {
        bail!("publish failed ({status}): {body}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("publish answered {body}"))?;
    Ok(match v {
        serde_json::Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
        v => v,
    })
}

/// Seconds from `since` until the server at `url` serves `generation` (polled every 50 ms,
/// for at most ten minutes).
async fn until_generation(url: &str, generation: u64, since: Instant) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{url}/api/info")).await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["repos"][REPO].as_u64() >= Some(generation) {
                    return Ok(since.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not serve generation {generation} within ten minutes")
}

/// Each server's announces taken so far, and its CPU seconds.
fn cpu_and_count(up: &[OurServer], load: &AnnounceLoad) -> Result<Vec<(u64, f64)>> {
    up.iter()
        .enumerate()
        .map(|(k, s)| {
            let (user, system) = cpu_seconds(s.proc.pid())?;
            Ok((load.taken[k].load(Ordering::Relaxed), user + system))
        })
        .collect()
}

/// The synthetic volunteers announcing: every one every interval to every server, spread
/// evenly over the interval. Stops when dropped.
struct AnnounceLoad {
    /// Announces each server answered without a failure, and those it failed.
    taken: Arc<Vec<AtomicU64>>,
    failures: Arc<Vec<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AnnounceLoad {
    fn start(urls: &[String], members: Vec<Member>, interval: Duration) -> Result<AnnounceLoad> {
        let clients = Arc::new(
            urls.iter()
                .map(|u| ServerClient::new(u))
                .collect::<Result<Vec<_>>>()?,
        );
        let taken = Arc::new(
            (0..urls.len())
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>(),
        );
        let failures = Arc::new(
            (0..urls.len())
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>(),
        );
        let members = Arc::new(members);
        let n = members.len().max(1);
        let start = tokio::time::Instant::now();
        // Sequence numbers grow across runs: the clock's milliseconds, then one per round.
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        // No more tasks than volunteers: a task with none would loop without waiting.
        let tasks = (0..TASKS.min(members.len()))
            .map(|t| {
                let (clients, taken, failures, members) = (
                    clients.clone(),
                    taken.clone(),
                    failures.clone(),
                    members.clone(),
                );
                tokio::spawn(async move {
                    for round in 0u64.. {
                        for i in (t..members.len()).step_by(TASKS) {
                            let slot = interval.mul_f64(round as f64 + i as f64 / n as f64);
                            tokio::time::sleep_until(start + slot).await;
                            let q = members[i].signed_announce(REPO, i, 1, base + round);
                            let sends = clients.iter().map(|c| c.announce(&q));
                            for (k, r) in join_all(sends).await.into_iter().enumerate() {
                                let counter = if r.is_ok() { &taken[k] } else { &failures[k] };
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(AnnounceLoad {
            taken,
            failures,
            tasks,
        })
    }
}

impl Drop for AnnounceLoad {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
