//! The four parts of the speed bench. Each starts what it measures, runs the same load against
//! ours and the reference, and returns rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};

use super::procs::{cpu_seconds, memory, require};
use super::services::{start_nginx, start_opentracker, start_server, start_server_from, Cores};
use super::wrk::{self, Load};
use super::{population, trees, Goal, Row, SpeedArgs};

const WARMUP_SECS: u64 = 2;

/// One line on the machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 20);
    format!(
        "Machine: {cpu}, {cores} cores, {mem} GiB; wrk {}",
        tool_version("wrk", "-v")
    )
}

fn tool_version(program: &str, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// Warm up, then measure `side`, and the CPU time its processes used meanwhile; refuse a run
/// in which anything failed, since its rate would lie.
fn measure_with(
    a: &SpeedArgs,
    side: &Side<'_>,
    script: &str,
    conns: u32,
    cores: Cores,
) -> Result<Load> {
    let threads = match cores {
        Cores::One => 1,
        Cores::All => 2,
    };
    let work = &a.work;
    let Side {
        url,
        pid,
        what,
        resets_expected,
    } = *side;
    wrk::run(
        work,
        url,
        script,
        threads,
        conns,
        WARMUP_SECS,
        cores.client_cpu(),
    )?;
    let cpu_before = cpu_seconds(pid)?;
    let mut l = wrk::run(
        work,
        url,
        script,
        threads,
        conns,
        a.secs,
        cores.client_cpu(),
    )?;
    let cpu_after = cpu_seconds(pid)?;
    l.cpu_user_s = cpu_after.0 - cpu_before.0;
    l.cpu_kernel_s = cpu_after.1 - cpu_before.1;
    let socket_errors = if resets_expected { 0 } else { l.socket_errors };
    if l.bad_status > 0 || socket_errors > 0 {
        bail!(
            "{what}: {} bad statuses and {} socket errors in {} requests",
            l.bad_status,
            l.socket_errors,
            l.requests
        );
    }
    eprintln!(
        "   {what} ({}): {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        cores.label(),
        l.per_sec(),
        l.p50_ms,
        l.p99_ms
    );
    Ok(l)
}

/// One side of a comparison: where it listens, its process, and what to call it.
#[derive(Clone, Copy)]
struct Side<'a> {
    url: &'a str,
    pid: u32,
    what: &'a str,
    /// It resets each connection after its answer (opentracker does), which wrk counts as
    /// a read error although the answer arrived whole.
    resets_expected: bool,
}

/// Ours and the reference under the same load, taking turns `--rounds` times.
struct Compared {
    /// The median run of each (by rate).
    ours: Load,
    theirs: Load,
    /// Ours ÷ theirs in each round: the spread a ratio of medians hides.
    by_round: Vec<f64>,
}

impl Compared {
    /// Latencies, CPU per request, and the rounds' ratios.
    fn detail(&self, name: &str) -> String {
        let rounds: Vec<String> = self.by_round.iter().map(|r| format!("{r:.2}")).collect();
        format!(
            "{}; ratio by round {}",
            latency_detail(&self.ours, &self.theirs, name),
            rounds.join(", ")
        )
    }
}

fn side_by_side(
    a: &SpeedArgs,
    ours: Side<'_>,
    theirs: Side<'_>,
    script: &str,
    conns: u32,
    cores: Cores,
) -> Result<Compared> {
    let (mut mine, mut refs) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        for (side, runs) in [(&ours, &mut mine), (&theirs, &mut refs)] {
            runs.push(measure_with(a, side, script, conns, cores)?);
        }
    }
    let by_round = mine
        .iter()
        .zip(&refs)
        .map(|(m, r)| m.per_sec() / r.per_sec().max(1e-9))
        .collect();
    Ok(Compared {
        ours: median_load(mine),
        theirs: median_load(refs),
        by_round,
    })
}

fn median_load(mut runs: Vec<Load>) -> Load {
    runs.sort_by(|x, y| x.per_sec().total_cmp(&y.per_sec()));
    runs[runs.len() / 2]
}

fn ours<'a>(url: &'a str, pid: u32, what: &'a str) -> Side<'a> {
    Side {
        url,
        pid,
        what,
        resets_expected: false,
    }
}

/// Latencies, and the CPU time each server spent per request: where a rate's gap comes
/// from (its own work, or the kernel's on its behalf).
fn latency_detail(ours: &Load, reference: &Load, name: &str) -> String {
    let ((ou, ok), (ru, rk)) = (ours.cpu_per_request_us(), reference.cpu_per_request_us());
    let ((os, oc), (rs, rc)) = (ours.busy_cores(), reference.busy_cores());
    format!(
        "p99 {:.2} ms vs {name} {:.2} ms; p50 {:.2} vs {:.2} ms; \
         CPU per request {:.1} µs user + {:.1} µs kernel vs {:.1} + {:.1}; \
         cores busy, server and wrk: {os:.2} and {oc:.2} vs {rs:.2} and {rc:.2}",
        ours.p99_ms, reference.p99_ms, ours.p50_ms, reference.p50_ms, ou, ok, ru, rk
    )
}

fn fresh_dir(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).with_context(|| format!("clearing {}", p.display()))?;
    }
    std::fs::create_dir_all(p)?;
    Ok(())
}

/// A repository of one small file: the baseline server and the tracker's host.
fn tiny_repo(work: &Path) -> Result<PathBuf> {
    let dir = work.join("tiny-repo");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hello.txt"), b"hello\n")?;
    Ok(dir)
}

fn publish_secs(data_dir: &Path) -> Result<f64> {
    let exe = crate::product_binary()?;
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("publish")
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .context("running mirrorswarm publish")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "mirrorswarm publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The redirect parts' tree (built once, kept in the work directory) and their wrk script:
/// 100,000 of its paths in a fixed random order.
fn redirect_mix(a: &SpeedArgs) -> Result<(PathBuf, String)> {
    let pool = a.work.join("pool-tree");
    eprintln!("   building {} files in {} (once)", a.files, pool.display());
    let t = Instant::now();
    trees::many_files(&pool, a.files)?;
    eprintln!("   tree ready in {:.1} s", t.elapsed().as_secs_f64());
    let paths = a.work.join("pool-paths.txt");
    trees::sample_paths(&paths, "bench", a.files, 100_000)?;
    Ok((pool, wrk::random_paths_script(&paths)))
}

/// Redirects against nginx's `return 302`, the server's memory, and republishing.
pub async fn redirect(a: &SpeedArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let (pool, script) = redirect_mix(a)?;

    // The baseline: the same server with a one-file repository and no volunteers.
    let tiny = tiny_repo(&a.work)?;
    fresh_dir(&a.work.join("server-data-base"))?;
    let base = start_server(
        &a.work,
        "base",
        &[("bench", &tiny)],
        Cores::One,
        Duration::from_secs(60),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (base_rss, _) = memory(base.proc.pid())?;
    drop(base);

    fresh_dir(&a.work.join("server-data-pool"))?;
    let t = Instant::now();
    let srv = start_server(
        &a.work,
        "pool",
        &[("bench", &pool)],
        Cores::One,
        Duration::from_secs(1800),
    )
    .await?;
    let first_publish = t.elapsed().as_secs_f64();
    eprintln!(
        "   server up with the first publish of {} files in {first_publish:.1} s",
        a.files
    );
    let (_, after_publish_hwm) = memory(srv.proc.pid())?;
    let t = Instant::now();
    let members = population::enroll(&srv.url, &srv.data_dir, a.volunteers).await?;
    population::announce_all(&srv.url, "bench", 1, &members).await?;
    population::check_registered(&srv.url, a.volunteers).await?;
    eprintln!(
        "   {} volunteers enrolled and announced in {:.1} s",
        a.volunteers,
        t.elapsed().as_secs_f64()
    );
    let (rss_enrolled, hwm) = memory(srv.proc.pid())?;
    // What the server holds at rest: right after the burst of enrollments it held some 20 MB
    // more for a few seconds, then gave them back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss, _) = memory(srv.proc.pid())?;
    let per_entry = rss.saturating_sub(base_rss) as f64 / a.files as f64;
    rows.push(Row {
        part: "memory",
        case: format!("{} files, {} volunteers", a.files, a.volunteers),
        unit: "bytes of RSS per manifest entry",
        ours: per_entry,
        reference_name: "",
        reference: None,
        goal: Goal::AtMost(150.0),
        detail: format!(
            "RSS {} MiB over a {} MiB baseline, 10 s after enrolling ({} MiB right after); \
             peak {} MiB (after the first publish {} MiB)",
            rss >> 20,
            base_rss >> 20,
            rss_enrolled >> 20,
            hwm >> 20,
            after_publish_hwm >> 20
        ),
    });
    rows.push(Row {
        part: "publish",
        case: format!("first publish, {} files (server start)", a.files),
        unit: "s",
        ours: first_publish,
        reference_name: "",
        reference: None,
        goal: Goal::None,
        detail: "every file read and hashed; includes the server's start".into(),
    });

    let nginx_302 = "    location / { return 302 http://10.0.0.1:8080$request_uri; }";
    let ng = start_nginx(&a.work, "redirect-1", Cores::One, nginx_302).await?;
    let one = side_by_side(
        a,
        ours(&srv.url, srv.proc.pid(), "mirrorswarm redirects"),
        ours(&ng.url, ng.proc.pid(), "nginx return 302"),
        &script,
        a.connections,
        Cores::One,
    )?;
    drop(ng);
    let mut republish = Vec::new();
    for _ in 0..3 {
        republish.push(publish_secs(&srv.data_dir)?);
    }
    let (rss_after, _) = memory(srv.proc.pid())?;
    rows.push(Row {
        part: "publish",
        case: format!("republish, {} files unchanged (median of 3)", a.files),
        unit: "s",
        ours: median(republish.clone()),
        reference_name: "",
        reference: None,
        goal: Goal::AtMost(10.0),
        detail: format!(
            "runs {}; RSS after {} MiB",
            republish
                .iter()
                .map(|s| format!("{s:.2} s"))
                .collect::<Vec<_>>()
                .join(", "),
            rss_after >> 20
        ),
    });
    drop(srv);
    rows.push(Row {
        part: "redirect",
        case: format!("1 core, {} connections", a.connections),
        unit: "requests/s",
        ours: one.ours.per_sec(),
        reference_name: "nginx",
        reference: Some(one.theirs.per_sec()),
        goal: Goal::RatioAtLeast(1.0),
        detail: one.detail("nginx"),
    });

    let srv = start_server(
        &a.work,
        "pool",
        &[("bench", &pool)],
        Cores::All,
        Duration::from_secs(1800),
    )
    .await?;
    population::announce_all(&srv.url, "bench", 1, &members).await?;
    let ng = start_nginx(&a.work, "redirect-all", Cores::All, nginx_302).await?;
    let all = side_by_side(
        a,
        ours(&srv.url, srv.proc.pid(), "mirrorswarm redirects"),
        ours(&ng.url, ng.proc.pid(), "nginx return 302"),
        &script,
        a.connections,
        Cores::All,
    )?;
    drop(ng);
    drop(srv);
    rows.push(Row {
        part: "redirect",
        case: format!("all cores, {} connections", a.connections),
        unit: "requests/s",
        ours: all.ours.per_sec(),
        reference_name: "nginx",
        reference: Some(all.theirs.per_sec()),
        goal: Goal::RatioAtLeast(1.0),
        detail: all.detail("nginx"),
    });
    Ok(rows)
}

/// HTTPS redirects against nginx's `return 302` over TLS with the same certificate (ECDSA
/// P-256), in the redirect part's state with every volunteer also announcing an `https://`
/// URL: on keep-alive connections, and with a connection (a full handshake) per request; on
/// one core and on all.
pub async fn redirect_tls(a: &SpeedArgs) -> Result<Vec<Row>> {
    let (pool, keep_alive) = redirect_mix(a)?;
    let new_conns = wrk::random_paths_new_connections_script(&a.work.join("pool-paths.txt"));
    let cert = super::services::bench_cert(&a.work)?;
    let mut rows = Vec::new();
    let tag = "tls";
    fresh_dir(&a.work.join(format!("server-data-{tag}")))?;
    let mut members: Option<Vec<population::Member>> = None;
    for cores in [Cores::One, Cores::All] {
        let exe = crate::product_binary()?;
        let srv = super::services::launch(super::services::Launch {
            exe: &exe,
            work: &a.work,
            tag,
            repos: &[("bench", &pool)],
            cores,
            start_limit: Duration::from_secs(1800),
            database: None,
            interval_secs: 3600,
            tls: Some(&cert),
        })
        .await?;
        let tls_url = srv.tls_url.clone().context("the server serves no HTTPS")?;
        let m = match members.take() {
            Some(m) => m,
            None => {
                let mut m = population::enroll(&srv.url, &srv.data_dir, a.volunteers).await?;
                population::with_https(&mut m);
                m
            }
        };
        population::announce_all(&srv.url, "bench", 1, &m).await?;
        population::check_registered(&srv.url, a.volunteers).await?;
        members = Some(m);
        check_https_redirect(&tls_url, &a.work.join("pool-paths.txt"))?;
        let tls_port = super::procs::free_port()?;
        // The same protocol and suite as ours negotiates: TLS 1.3 with AES-128-GCM and
        // SHA-256 (Debian's nginx would otherwise speak TLS 1.2).
        let body = format!(
            "    listen 127.0.0.1:{tls_port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    \
             ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384;\n    \
             ssl_conf_command Options ServerPreference;\n    \
             location / {{ return 302 https://10.0.0.1:8443$request_uri; }}",
            cert.cert.display(),
            cert.key.display()
        );
        let ng_tag = match cores {
            Cores::One => "tls-1",
            Cores::All => "tls-all",
        };
        let ng = start_nginx(&a.work, ng_tag, cores, &body).await?;
        let ng_tls = format!("https://127.0.0.1:{tls_port}");
        for (script, case, goal) in [
            (&keep_alive, "keep-alive", 1.0),
            (&new_conns, "a new TLS connection per request", 0.9),
        ] {
            let c = side_by_side(
                a,
                ours(&tls_url, srv.proc.pid(), "mirrorswarm HTTPS redirects"),
                ours(&ng_tls, ng.proc.pid(), "nginx HTTPS return 302"),
                script,
                a.connections,
                cores,
            )?;
            rows.push(Row {
                part: "redirect-tls",
                case: format!("{}, {} connections, {case}", cores.label(), a.connections),
                unit: "requests/s",
                ours: c.ours.per_sec(),
                reference_name: "nginx",
                reference: Some(c.theirs.per_sec()),
                goal: Goal::RatioAtLeast(goal),
                detail: c.detail("nginx"),
            });
        }
        drop(ng);
        drop(srv);
    }
    Ok(rows)
}

/// Before measuring: an HTTPS request for a published path is a 302 to an `https://`
/// volunteer URL (wrk counts only statuses of 400 and up as errors, so the origin sending the
/// file itself, or an `http://` Location, would pass unseen).
fn check_https_redirect(tls_url: &str, paths: &Path) -> Result<()> {
    let text = std::fs::read_to_string(paths)?;
    let path = text.lines().next().context("no request paths")?;
    let curl = require("curl", "curl")?;
    let out = Command::new(curl)
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg(format!("{tls_url}{path}"))
        .output()
        .context("running curl")?;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    if !said.starts_with("302 https://") {
        bail!("an HTTPS request for {path} was answered `{said}`, not a redirect to an https:// volunteer");
    }
    Ok(())
}

/// The build `--ab-binary` names, checked to be a file.
fn other_build(a: &SpeedArgs) -> Result<&Path> {
    let other = a
        .ab_binary
        .as_deref()
        .context("an A/B part needs --ab-binary")?;
    if !other.is_file() {
        bail!("--ab-binary {}: no such file", other.display());
    }
    Ok(other)
}

/// An A/B part's row: this build against the other, which is the reference.
fn ab_row(
    part: &'static str,
    unit: &'static str,
    a: &SpeedArgs,
    cores: Cores,
    c: &Compared,
) -> Row {
    Row {
        part,
        case: format!("{}, {} connections", cores.label(), a.connections),
        unit,
        ours: c.ours.per_sec(),
        reference_name: "other build",
        reference: Some(c.theirs.per_sec()),
        goal: Goal::None,
        detail: c.detail("other build"),
    }
}

/// Two servers in the redirect part's state, each `(tag, binary, database)`, on `cores`:
/// started, their volunteers enrolled at the first start (kept in `members` for the next,
/// as each keeps its data directory) and announced.
async fn start_redirect_pair(
    a: &SpeedArgs,
    pool: &Path,
    cores: Cores,
    sides: [(&str, &Path, Option<&str>); 2],
    members: &mut [Option<Vec<population::Member>>; 2],
) -> Result<Vec<super::services::OurServer>> {
    let mut servers = Vec::new();
    for (k, (tag, exe, database)) in sides.into_iter().enumerate() {
        let srv = start_server_from(
            exe,
            &a.work,
            tag,
            &[("bench", pool)],
            cores,
            Duration::from_secs(1800),
            database,
        )
        .await?;
        let m = match members[k].take() {
            Some(m) => m,
            None => population::enroll(&srv.url, &srv.data_dir, a.volunteers).await?,
        };
        population::announce_all(&srv.url, "bench", 1, &m).await?;
        population::check_registered(&srv.url, a.volunteers).await?;
        members[k] = Some(m);
        servers.push(srv);
    }
    Ok(servers)
}

/// This build's redirects against another build's (`--ab-binary`), in the redirect part's
/// state (the same tree, volunteers and request mix), on one core and on all, the two
/// servers taking turns. The other build is the reference: a ratio above 1 means this one
/// is faster.
pub async fn redirect_ab(a: &SpeedArgs) -> Result<Vec<Row>> {
    let other = other_build(a)?;
    let this = crate::product_binary()?;
    let (pool, script) = redirect_mix(a)?;
    let mut rows = Vec::new();
    // Each build keeps its data directory across the two core settings; the volunteers
    // enrolled in each at the first start announce again after the second.
    let mut members: [Option<Vec<population::Member>>; 2] = [None, None];
    for tag in ["ab-this", "ab-other"] {
        fresh_dir(&a.work.join(format!("server-data-{tag}")))?;
    }
    for cores in [Cores::One, Cores::All] {
        let sides = [("ab-this", this.as_path(), None), ("ab-other", other, None)];
        let servers = start_redirect_pair(a, &pool, cores, sides, &mut members).await?;
        eprintln!("   both builds up ({})", cores.label());
        let c = side_by_side(
            a,
            ours(
                &servers[0].url,
                servers[0].proc.pid(),
                "this build's redirects",
            ),
            ours(
                &servers[1].url,
                servers[1].proc.pid(),
                "the other build's redirects",
            ),
            &script,
            a.connections,
            cores,
        )?;
        drop(servers);
        rows.push(ab_row("redirect-ab", "requests/s", a, cores, &c));
    }
    Ok(rows)
}

/// Redirects of a server keeping its state in PostgreSQL against the same build on SQLite,
/// in the redirect part's state, on one core and on all, the two taking turns: the redirect
/// path must not touch the database, so the ratio should be 1. The PostgreSQL cluster is a
/// throwaway one of the lab's (removed at the end). SQLite is the reference.
pub async fn redirect_db(a: &SpeedArgs) -> Result<Vec<Row>> {
    let exe = crate::product_binary()?;
    let (pool, script) = redirect_mix(a)?;
    let cluster = tokio::task::spawn_blocking(pgtest::Cluster::start).await?;
    let url = cluster.create_database("bench");
    eprintln!("   PostgreSQL up on port {}", cluster.port());
    let mut rows = Vec::new();
    let mut members: [Option<Vec<population::Member>>; 2] = [None, None];
    for tag in ["db-postgres", "db-sqlite"] {
        fresh_dir(&a.work.join(format!("server-data-{tag}")))?;
    }
    for cores in [Cores::One, Cores::All] {
        let sides = [
            ("db-postgres", exe.as_path(), Some(url.as_str())),
            ("db-sqlite", exe.as_path(), None),
        ];
        let servers = start_redirect_pair(a, &pool, cores, sides, &mut members).await?;
        eprintln!("   both servers up ({})", cores.label());
        let c = side_by_side(
            a,
            ours(
                &servers[0].url,
                servers[0].proc.pid(),
                "redirects on PostgreSQL",
            ),
            ours(
                &servers[1].url,
                servers[1].proc.pid(),
                "redirects on SQLite",
            ),
            &script,
            a.connections,
            cores,
        )?;
        drop(servers);
        rows.push(Row {
            part: "redirect-db",
            case: format!("{}, {} connections", cores.label(), a.connections),
            unit: "requests/s",
            ours: c.ours.per_sec(),
            reference_name: "SQLite",
            reference: Some(c.theirs.per_sec()),
            goal: Goal::RatioAtLeast(0.95),
            detail: c.detail("SQLite"),
        });
    }
    drop(cluster);
    Ok(rows)
}

/// One announce to `url`, checked to be a compact peer list (not a failure).
///
/// Asked again for up to 10 s: opentracker answers before it has read its whitelist (a
/// thread of its own reads it after the listener is up), refusing every torrent meanwhile.
async fn check_announce(url: &str, hash_hex: &str) -> Result<()> {
    let mut q = String::new();
    for i in 0..20 {
        q.push('%');
        q.push_str(&hash_hex[2 * i..2 * i + 2]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = reqwest::get(format!(
            "{url}/announce?info_hash={q}&peer_id=-MS0001-check0000000&port=6881&uploaded=0&downloaded=0&left=0&compact=1"
        ))
        .await?
        .bytes()
        .await?;
        let answered =
            body.windows(7).any(|w| w == b"5:peers") && !body.windows(7).any(|w| w == b"failure");
        if answered {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{url} did not answer an announce with peers: {}",
                String::from_utf8_lossy(&body)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Torrents and peers of the announce mix.
const TORRENTS: usize = 1000;
const PEERS: u32 = 100_000;

/// The announce mix: the info hashes (hex, also written to a file for opentracker's
/// whitelist), that file, and wrk's script.
fn announce_mix(a: &SpeedArgs) -> Result<(Vec<String>, PathBuf, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let hashes: Vec<String> = (0..TORRENTS)
        .map(|_| {
            let mut h = [0u8; 20];
            rng.fill_bytes(&mut h);
            hex_lower(&h)
        })
        .collect();
    let list = a.work.join("info-hashes.txt");
    std::fs::write(&list, hashes.join("\n") + "\n")?;
    let script = wrk::announce_script(&list, PEERS);
    Ok((hashes, list, script))
}

/// Announces against opentracker.
pub async fn announce(a: &SpeedArgs) -> Result<Vec<Row>> {
    let (hashes, list, script) = announce_mix(a)?;
    let tiny = tiny_repo(&a.work)?;
    let mut rows = Vec::new();
    for cores in [Cores::One, Cores::All] {
        fresh_dir(&a.work.join("server-data-tracker"))?;
        let srv = start_server(
            &a.work,
            "tracker",
            &[("bench", &tiny)],
            cores,
            Duration::from_secs(60),
        )
        .await?;
        check_announce(&srv.url, &hashes[0]).await?;
        let ot = start_opentracker(&a.work, cores, &list).await?;
        check_announce(&ot.url, &hashes[0]).await?;
        let (ours_url, ot_url) = (
            format!("{}/announce", srv.url),
            format!("{}/announce", ot.url),
        );
        let c = side_by_side(
            a,
            ours(&ours_url, srv.proc.pid(), "mirrorswarm announces"),
            Side {
                url: &ot_url,
                pid: ot.proc.pid(),
                what: "opentracker announces",
                resets_expected: true,
            },
            &script,
            a.connections,
            cores,
        )?;
        drop(ot);
        drop(srv);
        rows.push(Row {
            part: "announce",
            case: format!(
                "{}, {} connections, {TORRENTS} torrents, {PEERS} peers",
                cores.label(),
                a.connections
            ),
            unit: "announces/s",
            ours: c.ours.per_sec(),
            reference_name: "opentracker",
            reference: Some(c.theirs.per_sec()),
            goal: Goal::RatioAtLeast(1.0),
            detail: c.detail("opentracker"),
        });
    }
    Ok(rows)
}

/// This build's announces against another build's (`--ab-binary`), with the announce part's
/// mix, on one core and on all, the two taking turns. As in `redirect-ab`, a ratio above 1
/// means this build is faster.
pub async fn announce_ab(a: &SpeedArgs) -> Result<Vec<Row>> {
    let other = other_build(a)?;
    let this = crate::product_binary()?;
    let (hashes, _, script) = announce_mix(a)?;
    let tiny = tiny_repo(&a.work)?;
    let mut rows = Vec::new();
    for cores in [Cores::One, Cores::All] {
        let mut servers = Vec::new();
        for (tag, exe) in [("tracker-this", this.as_path()), ("tracker-other", other)] {
            fresh_dir(&a.work.join(format!("server-data-{tag}")))?;
            let srv = start_server_from(
                exe,
                &a.work,
                tag,
                &[("bench", &tiny)],
                cores,
                Duration::from_secs(60),
                None,
            )
            .await?;
            check_announce(&srv.url, &hashes[0]).await?;
            servers.push(srv);
        }
        let urls: Vec<String> = servers
            .iter()
            .map(|s| format!("{}/announce", s.url))
            .collect();
        let c = side_by_side(
            a,
            ours(&urls[0], servers[0].proc.pid(), "this build's announces"),
            ours(
                &urls[1],
                servers[1].proc.pid(),
                "the other build's announces",
            ),
            &script,
            a.connections,
            cores,
        )?;
        drop(servers);
        rows.push(ab_row("announce-ab", "announces/s", a, cores, &c));
    }
    Ok(rows)
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Start a volunteer serving `tree` as repository `serve`, and wait until it serves `probe`.
async fn start_volunteer(
    a: &SpeedArgs,
    server_url: &str,
    token: Option<&str>,
    tree: &Path,
    cores: Cores,
    probe: &str,
) -> Result<(super::procs::Proc, String)> {
    let port = super::procs::free_port()?;
    let exe = crate::product_binary()?;
    let mut cmd = match cores {
        Cores::One => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("0").arg(&exe);
            c
        }
        Cores::All => Command::new(&exe),
    };
    cmd.arg("--worker-threads")
        .arg(if cores == Cores::One { "1" } else { "0" })
        .arg("volunteer")
        .arg("--server")
        .arg(server_url)
        .arg("--mirror")
        .arg(format!("serve={}", tree.display()))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(a.work.join("volunteer-data"))
        .arg("--max-connections")
        .arg("100000")
        .arg("--no-sync")
        .env("RUST_LOG", "warn");
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    let log = a.work.join("volunteer.log");
    let mut p = super::procs::Proc::spawn("mirrorswarm volunteer", &mut cmd, &log)?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        p.check_alive(&log)?;
        if let Ok(r) = reqwest::get(format!("{url}{probe}")).await {
            if r.status().is_success() {
                return Ok((p, url));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the volunteer did not serve {probe} within 120 s (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A volunteer serving files against nginx with sendfile.
pub async fn serve(a: &SpeedArgs) -> Result<Vec<Row>> {
    let tree = a.work.join("serve-tree");
    let small = trees::random_files(&tree, "s", 1000, 16 * 1024, 1)?;
    let large = trees::random_files(&tree, "l", 16, 4 << 20, 2)?;
    let files: Vec<PathBuf> = small.iter().chain(&large).map(|n| tree.join(n)).collect();
    trees::warm(&files)?;
    let list = |names: &[String], file: &str| -> Result<PathBuf> {
        let p = a.work.join(file);
        let body: String = names.iter().map(|n| format!("/serve/{n}\n")).collect();
        std::fs::write(&p, body)?;
        Ok(p)
    };
    let small_script = wrk::random_paths_script(&list(&small, "serve-small.txt")?);
    let large_script = wrk::random_paths_script(&list(&large, "serve-large.txt")?);
    let root = a.work.join("nginx-root");
    std::fs::create_dir_all(&root)?;
    let link = root.join("serve");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&tree, &link)?;
    }

    fresh_dir(&a.work.join("server-data-serve"))?;
    fresh_dir(&a.work.join("volunteer-data"))?;
    let srv = start_server(
        &a.work,
        "serve",
        &[("serve", &tree)],
        Cores::All,
        Duration::from_secs(120),
    )
    .await?;
    let token = server::create_enrollment_token(&srv.data_dir, "bench-serve", 3600).await?;
    let probe = format!("/serve/{}", small[0]);
    let mut token = Some(token);
    let mut rows = Vec::new();
    for cores in [Cores::One, Cores::All] {
        let (vol, vurl) =
            start_volunteer(a, &srv.url, token.as_deref(), &tree, cores, &probe).await?;
        token = None;
        let body = format!("    root {};\n    location / {{ }}", root.display());
        let ng = start_nginx(&a.work, "serve", cores, &body).await?;
        let small = side_by_side(
            a,
            ours(&vurl, vol.pid(), "volunteer 16 KiB"),
            ours(&ng.url, ng.proc.pid(), "nginx 16 KiB"),
            &small_script,
            a.connections,
            cores,
        )?;
        let large = side_by_side(
            a,
            ours(&vurl, vol.pid(), "volunteer 4 MiB"),
            ours(&ng.url, ng.proc.pid(), "nginx 4 MiB"),
            &large_script,
            16,
            cores,
        )?;
        drop(ng);
        drop(vol);
        for (label, c, conns, size) in [
            ("16 KiB", small, a.connections, 16.0 * 1024.0),
            ("4 MiB", large, 16, 4.0 * 1048576.0),
        ] {
            let (ours, theirs) = (c.ours, c.theirs);
            rows.push(Row {
                part: "serve",
                case: format!("{label} files, {}, {conns} connections", cores.label()),
                unit: "requests/s",
                ours: ours.per_sec(),
                reference_name: "nginx",
                reference: Some(theirs.per_sec()),
                goal: Goal::RatioAtLeast(0.9),
                detail: format!(
                    "{:.0} vs {:.0} MB/s; {}",
                    ours.per_sec() * size / 1e6,
                    theirs.per_sec() * size / 1e6,
                    c.detail("nginx")
                ),
            });
        }
    }
    drop(srv);
    Ok(rows)
}

/// `mirrorswarm publish` hashing against `sha256sum` over the same files in the page cache.
pub async fn publish(a: &SpeedArgs) -> Result<Vec<Row>> {
    require("sha256sum", "coreutils")?;
    let count = (a.hash_mib / 64).max(1);
    let source = a.work.join("hash-source");
    let names = trees::random_files(&source, "h", count, 64 << 20, 9)?;
    let repo = a.work.join("hash-repo");
    fresh_dir(&repo)?;
    fresh_dir(&a.work.join("server-data-hash"))?;
    let srv = start_server(
        &a.work,
        "hash",
        &[("hash", &repo)],
        Cores::All,
        Duration::from_secs(60),
    )
    .await?;
    let mut files = Vec::new();
    for n in &names {
        let to = repo.join(n);
        std::fs::hard_link(source.join(n), &to)?;
        files.push(to);
    }
    trees::warm(&files)?;
    let mb = (count * 64) as f64 * 1048576.0 / 1e6;

    let first = publish_secs(&srv.data_dir)?;
    // New mtimes: the next publish must read and hash every byte again, but the content-keyed
    // torrents and block signatures already exist. That isolates hashing.
    let now = std::time::SystemTime::now() + Duration::from_secs(1);
    for f in &files {
        std::fs::File::options()
            .write(true)
            .open(f)?
            .set_modified(now)?;
    }
    let rehash = publish_secs(&srv.data_dir)?;
    drop(srv);

    let t = Instant::now();
    let out = Command::new("sha256sum")
        .args(&files)
        .output()
        .context("running sha256sum")?;
    let sums = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("sha256sum failed");
    }
    let mut rows = vec![Row {
        part: "publish",
        case: format!("hashing {count} × 64 MiB (page cache)"),
        unit: "MB/s",
        ours: mb / rehash,
        reference_name: "sha256sum",
        reference: Some(mb / sums),
        goal: Goal::RatioAtLeast(0.9),
        detail: format!("{rehash:.2} s vs {sums:.2} s, mirrorswarm publish command to reply"),
    }];
    rows.push(Row {
        part: "publish",
        case: format!("first publish of {count} × 64 MiB, with torrents and block signatures"),
        unit: "MB/s",
        ours: mb / first,
        reference_name: "sha256sum",
        reference: Some(mb / sums),
        goal: Goal::None,
        detail: format!("{first:.2} s: SHA-256, then SHA-1 pieces and the rsync signature"),
    });
    Ok(rows)
}
