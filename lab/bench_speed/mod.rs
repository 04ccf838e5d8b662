//! `mirrorswarm bench speed`: the serving paths against the best servers of their kind, side
//! by side in one run on this machine.
//!
//! - `redirect`: our server holding a large manifest and many enrolled volunteers, against
//!   nginx answering `return 302`; one worker on one core, then all cores. The same run gives
//!   the server's memory per manifest entry and the time to republish the unchanged tree.
//! - `announce`: our tracker against opentracker, the same BitTorrent announce mix.
//! - `serve`: a volunteer serving 16 KiB and 4 MiB files against nginx with sendfile.
//! - `publish`: `mirrorswarm publish` hashing a large tree against `sha256sum`.
//!
//! Load comes from wrk with a Lua request mix. On one core the server under test is pinned to
//! CPU 0 and wrk to CPU 1; on all cores nothing is pinned and wrk shares the machine.

mod parts;
mod population;
mod procs;
mod scale;
mod services;
mod trees;
mod wrk;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Clone)]
pub struct SpeedArgs {
    /// Which parts to run: redirect, announce, serve, publish; redirect-tls (HTTPS redirects
    /// against nginx over TLS, keep-alive and a handshake per request); redirect-db (a server on
    /// PostgreSQL against one on SQLite); scale (several servers on PostgreSQL at the
    /// paper's organisation's size: see `--scale-*`); redirect-ab, announce-ab (with
    /// --ab-binary).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "redirect,announce,serve,publish"
    )]
    parts: Vec<String>,
    /// Scratch directory: generated trees are kept here and reused by later runs.
    #[arg(long, default_value = "/tmp/mirrorswarm-speed")]
    work: PathBuf,
    /// Where to write speed-results.md and speed-results.csv [default: the work directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Files in the published manifest of the redirect part.
    #[arg(long, default_value_t = 1_000_000)]
    files: usize,
    /// Enrolled, announcing volunteers in the redirect part.
    #[arg(long, default_value_t = 1000)]
    volunteers: usize,
    /// Seconds of each measured wrk run (each follows a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Concurrent connections for request-sized work (redirects, announces, 16 KiB files).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// MiB of random data for the hashing part.
    #[arg(long, default_value_t = 1024)]
    hash_mib: usize,
    /// Runs of each side in a comparison, ours and the reference taking turns (both servers
    /// up throughout); the median run of each is reported. On a shared machine whose speed
    /// drifts from minute to minute, alternating keeps the ratio fair; with three rounds the
    /// median was still one round's luck often enough to flip a verdict at 1×.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// For `--parts redirect-ab` and `announce-ab`: another mirrorswarm binary (say, a build
    /// of the previous commit) whose redirects or announces this one's are measured against,
    /// taking turns as against nginx. The machine's drift moves a run against nginx by more than most changes do;
    /// two builds side by side show what a change did.
    #[arg(long, value_name = "PATH")]
    ab_binary: Option<PathBuf>,
    /// For `--parts scale`: files in the tree the servers publish (the paper's organisation
    /// mirrored about 2.2 million).
    #[arg(long, default_value_t = 2_200_000)]
    scale_files: usize,
    /// For `--parts scale`: synthetic volunteers, each announcing to every server.
    #[arg(long, default_value_t = 10_000)]
    scale_volunteers: usize,
    /// For `--parts scale`: the volunteers' announce interval, seconds.
    #[arg(long, default_value_t = 5)]
    scale_interval: u64,
    /// For `--parts scale`: servers sharing the database.
    #[arg(long, default_value_t = 3)]
    scale_servers: usize,
}

/// What a row's figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// ours ÷ reference at least this.
    RatioAtLeast(f64),
    /// ours at most this (absolute, in the row's unit).
    AtMost(f64),
    /// Reported for context.
    None,
}

/// One measured comparison.
#[derive(Debug, Clone)]
pub struct Row {
    pub part: &'static str,
    pub case: String,
    pub unit: &'static str,
    pub ours: f64,
    pub reference_name: &'static str,
    pub reference: Option<f64>,
    pub goal: Goal,
    /// Latencies and anything else worth a glance.
    pub detail: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.reference.map(|r| self.ours / r.max(1e-12))
    }
    fn verdict(&self) -> &'static str {
        match (self.goal, self.ratio()) {
            (Goal::RatioAtLeast(g), Some(r)) if r >= g => "met",
            (Goal::RatioAtLeast(_), _) => "not met",
            (Goal::AtMost(g), _) if self.ours <= g => "met",
            (Goal::AtMost(_), _) => "not met",
            (Goal::None, _) => "",
        }
    }
    fn goal_text(&self) -> String {
        match self.goal {
            Goal::RatioAtLeast(g) => format!("≥ {g}×"),
            Goal::AtMost(g) => format!("≤ {g}"),
            Goal::None => String::new(),
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| part | case | unit | mirrorswarm | reference | ratio | goal | verdict | detail |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let reference = match r.reference {
            Some(v) => format!("{} {}", r.reference_name, fmt_num(v)),
            None => String::new(),
        };
        let ratio = r.ratio().map(|x| format!("{x:.2}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.part,
            r.case,
            r.unit,
            fmt_num(r.ours),
            reference,
            ratio,
            r.goal_text(),
            r.verdict(),
            r.detail
        );
    }
    s
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from("part,case,unit,ours,reference_name,reference,ratio,goal,verdict\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{},{},{},{},{}",
            r.part,
            r.case.replace(',', ";"),
            r.unit.replace(',', ";"),
            r.ours,
            r.reference_name,
            r.reference.map(|v| format!("{v:.3}")).unwrap_or_default(),
            r.ratio().map(|v| format!("{v:.3}")).unwrap_or_default(),
            r.goal_text(),
            r.verdict()
        );
    }
    s
}

pub async fn run(a: SpeedArgs) -> Result<()> {
    for p in &a.parts {
        if ![
            "redirect",
            "announce",
            "serve",
            "publish",
            "redirect-ab",
            "announce-ab",
            "redirect-db",
            "redirect-tls",
            "scale",
        ]
        .contains(&p.as_str())
        {
            bail!(
                "unknown part `{p}`: choose from redirect, announce, serve, publish, \
                 redirect-tls, redirect-db, scale (and redirect-ab, announce-ab, with --ab-binary)"
            );
        }
        if p.ends_with("-ab") && a.ab_binary.is_none() {
            bail!("--parts {p} measures against another build: give it with --ab-binary");
        }
    }
    if a.scale_files == 0
        || a.scale_volunteers == 0
        || a.scale_interval == 0
        || a.scale_servers == 0
    {
        bail!("--scale-files, --scale-volunteers, --scale-interval and --scale-servers must be at least 1");
    }
    if a.secs == 0 || a.connections == 0 || a.files == 0 || a.rounds == 0 {
        bail!("--secs, --connections, --files and --rounds must be at least 1");
    }
    procs::require("wrk", "wrk")?;
    procs::require("taskset", "util-linux")?;
    std::fs::create_dir_all(&a.work).with_context(|| format!("creating {}", a.work.display()))?;
    let mut rows = Vec::new();
    let machine = parts::machine();
    eprintln!("{machine}");
    for p in &a.parts {
        eprintln!("== {p}");
        let got = match p.as_str() {
            "redirect" => parts::redirect(&a).await,
            "announce" => parts::announce(&a).await,
            "serve" => parts::serve(&a).await,
            "redirect-ab" => parts::redirect_ab(&a).await,
            "redirect-tls" => parts::redirect_tls(&a).await,
            "announce-ab" => parts::announce_ab(&a).await,
            "redirect-db" => parts::redirect_db(&a).await,
            "scale" => scale::scale(&a).await,
            _ => parts::publish(&a).await,
        }
        .with_context(|| format!("part `{p}`"))?;
        for r in &got {
            eprintln!(
                "   {}",
                markdown(std::slice::from_ref(r))
                    .lines()
                    .nth(2)
                    .unwrap_or("")
            );
        }
        rows.extend(got);
    }
    let out = a.out.clone().unwrap_or_else(|| a.work.clone());
    std::fs::create_dir_all(&out)?;
    let md = format!("{machine}\n\n{}", markdown(&rows));
    std::fs::write(out.join("speed-results.md"), &md)?;
    std::fs::write(out.join("speed-results.csv"), csv(&rows))?;
    println!("{md}");
    eprintln!("written to {}", out.join("speed-results.md").display());
    Ok(())
}
