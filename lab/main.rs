//! `mirrorswarm-lab`: the benchmarks and the balancing study, outside the product binary
//! (which so links no plotting library, opens no experiment port and has no experiment
//! key). They run the product binary, `mirrorswarm`, found beside this one (cargo builds
//! both into one directory), and compare it with nginx, opentracker, sha256sum or another
//! build. The balancing study runs the server and volunteers as this binary's own roles
//! (`roles`): the product's code with the experiment policies, the oracle's feed and
//! synthetic sync beside it.

mod bench_balance;
mod bench_speed;
#[path = "../src/role_args.rs"]
mod role_args;
mod roles;
#[path = "../src/shutdown.rs"]
mod shutdown;
#[path = "../src/wait.rs"]
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// mirrorswarm's benchmarks and experiments, with real processes on loopback.
///
/// They run the `mirrorswarm` binary beside this one (or the one MIRRORSWARM_BIN names) as
/// server, volunteers and publisher.
#[derive(Parser)]
#[command(name = "mirrorswarm-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks with real processes on loopback.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The product's server, with the lab's policies too (`--policy oracle` with
    /// `--oracle-listen`, `--policy least-loaded`).
    Server(roles::LabServerArgs),
    /// The product's volunteer, with synthetic sync (`--background-sync-conns`,
    /// `--background-sync-bps`) and the oracle's feed (`--oracle-feed`) beside it.
    Volunteer(roles::LabVolunteerArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The paper's balancing experiment: policies side by side under background sync traffic.
    Balance(bench_balance::BalanceArgs),
    /// Redirector, tracker, volunteer serving and publishing against nginx, opentracker and
    /// sha256sum, side by side (needs wrk, nginx, opentracker; benches/speed.sh installs them).
    Speed(bench_speed::SpeedArgs),
}

/// The product binary the lab runs: `MIRRORSWARM_BIN`, else `mirrorswarm` beside this one.
pub fn product_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MIRRORSWARM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("finding this binary")?;
    let beside = me.with_file_name("mirrorswarm");
    if !beside.is_file() {
        bail!(
            "no mirrorswarm binary beside {} (build it: cargo build --bins; or name one with MIRRORSWARM_BIN)",
            me.display()
        );
    }
    Ok(beside)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        match cli.command {
            Command::Bench(BenchCommand::Balance(a)) => bench_balance::run(a).await,
            Command::Bench(BenchCommand::Speed(a)) => bench_speed::run(a).await,
            Command::Server(a) => roles::server(a).await,
            Command::Volunteer(a) => roles::volunteer(a).await,
        }
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
