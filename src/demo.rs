//! `mirrorswarm demo`: the whole system on loopback with nothing to configure.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use config::{ServerConfig, VolunteerConfig};

use crate::wait::wait_until;

#[derive(Args)]
pub struct DemoArgs {
    /// Where to put the sample repository and data [default: a new folder under the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Server port [default: 8080, or any free port if taken].
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// How many volunteers to start.
    #[arg(long, default_value_t = 3)]
    volunteers: usize,
}

/// A free loopback port: the one asked for if it is free, else any.
fn free_port(preferred: u16) -> Result<u16> {
    if preferred != 0 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", preferred)) {
            return Ok(l.local_addr()?.port());
        }
    }
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir_like(from)? {
        let rel = entry.strip_prefix(from)?;
        let dest = to.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::copy(&entry, &dest).with_context(|| format!("copying {}", entry.display()))?;
        }
    }
    Ok(())
}

fn walkdir_like(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

pub async fn run(a: DemoArgs) -> Result<()> {
    match a.dir.clone() {
        Some(d) => run_in(a, d).await,
        None => {
            // A folder of its own, removed when the demo ends (Ctrl-C included) or fails.
            let base =
                std::env::temp_dir().join(format!("mirrorswarm-demo-{}", std::process::id()));
            let result = run_in(a, base.clone()).await;
            if let Err(e) = std::fs::remove_dir_all(&base) {
                eprintln!("note: could not remove {}: {e}", base.display());
            }
            result
        }
    }
}

async fn run_in(a: DemoArgs, base: PathBuf) -> Result<()> {
    let repo = base.join("repo");
    std::fs::create_dir_all(&repo).with_context(|| format!("creating {}", repo.display()))?;
    let layout = server::sample_repo::write_apt_repo(
        &repo,
        "stable",
        "main",
        &server::sample_repo::default_packages(),
    )
    .context("writing the sample repository")?;

    let port = free_port(a.port)?;
    let server_url = format!("http://127.0.0.1:{port}");
    let data = base.join("server");
    let mut scfg = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        data_dir: data.clone(),
        ..Default::default()
    };
    scfg.repos.insert("debian".into(), repo.clone());
    scfg.tracker.interval_secs = 2;
    // Redirect everything above 16 KiB so the demo shows volunteers at work.
    scfg.redirect.direct_max_bytes = 16 * 1024;

    let mut vcfgs = Vec::new();
    for i in 1..=a.volunteers {
        let name = format!("volunteer{i}");
        let vdir = base.join(&name);
        let mirror = vdir.join("debian");
        // The volunteer's admin fills the mirror (as with rsync today).
        copy_tree(&repo, &mirror)?;
        let vport = free_port(0)?;
        let token = server::create_enrollment_token(&data, &name, 3600)
            .await
            .or_else(|e| {
                if e.to_string().contains("already enrolled") {
                    Ok(String::new())
                } else {
                    Err(e)
                }
            })?;
        let mut v = VolunteerConfig {
            server: Some(server_url.clone()),
            token: (!token.is_empty()).then_some(token),
            listen: SocketAddr::from(([127, 0, 0, 1], vport)),
            data_dir: vdir.join("data"),
            max_connections: 16,
            rescan_secs: 2,
            ..Default::default()
        };
        v.mirrors.insert("debian".into(), mirror);
        vcfgs.push(v);
    }

    let server_task = tokio::spawn(server::run(scfg, crate::shutdown_signal()));
    wait_until(
        &format!("{server_url}/health"),
        |v| v["status"] == "ok",
        "the server",
    )
    .await?;
    let mut tasks = vec![server_task];
    for v in vcfgs.iter().cloned() {
        tasks.push(tokio::spawn(volunteer::run(v, crate::shutdown_signal())));
    }
    let n = a.volunteers;
    wait_until(
        &format!("{server_url}/api/volunteers"),
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().filter(|x| x["state"] == "healthy").count() >= n)
        },
        "the volunteers",
    )
    .await?;

    let big = layout
        .deb_paths
        .iter()
        .find(|p| p.contains("ms-data"))
        .cloned()
        .unwrap_or_default();
    println!();
    println!(
        "mirrorswarm demo is running (files under {}).",
        base.display()
    );
    println!("  server:      {server_url}/   (repository `debian`)");
    for v in &vcfgs {
        println!("  volunteer:   {}", v.public_url());
    }
    println!();
    println!("Download through a redirect to a volunteer:");
    println!("  curl -L -O {server_url}/debian/{big}");
    println!("See where it would send you (the digest comes to clients that ask for one):");
    println!("  curl -sI -H 'Want-Digest: sha-256' {server_url}/debian/{big}");
    println!("Use it from apt (sources.list line):");
    println!("  deb [trusted=yes] {server_url}/debian stable main");
    // The binary as it was started: after `cargo run`, `mirrorswarm` is not on PATH.
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "mirrorswarm".into());
    println!("Volunteers and their load:");
    println!("  {me} volunteers --server {server_url}");
    println!();
    println!(
        "Press Ctrl-C to stop{}.",
        if a.dir.is_none() {
            " (its folder is removed)"
        } else {
            ""
        }
    );
    println!("demo ready: {server_url}");

    let mut first_exit = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_exit = first_exit.or(Some(e)),
            Err(e) => first_exit = first_exit.or(Some(anyhow::anyhow!("task failed: {e}"))),
        }
    }
    match first_exit {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
