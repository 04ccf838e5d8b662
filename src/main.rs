//! `mirrorswarm`: one binary for every role. This file only parses arguments and calls into
//! the role crates.

mod admin;
mod demo;
mod docs_gen;
mod progress_bar;
mod role_args;
mod shutdown;
mod wait;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use role_args::{server_config, volunteer_config, ServerArgs, VolunteerArgs};
use shutdown::shutdown_signal;

#[derive(Parser)]
#[command(
    name = "mirrorswarm",
    version,
    about = "A software mirror built from one central server plus volunteer machines.",
    long_about = "A software mirror built from one central server plus volunteer machines.\n\nCustomers point apt, dnf, wget or curl at the server; it redirects each request to the volunteer best able to serve it now, or serves the file itself. Start with `mirrorswarm demo`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` (readable) or `json` (one object per line, for log
    /// collectors). The level is set with RUST_LOG (default: info).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Threads that run requests: 0 one per core; 1 a single-threaded runtime (one core,
    /// as a one-worker nginx).
    #[arg(
        long,
        global = true,
        env = "MIRRORSWARM_WORKER_THREADS",
        default_value_t = 0
    )]
    worker_threads: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Run the central server: publisher, redirector, origin and tracker.
    Server(ServerArgs),
    /// Publish a new generation of the running server's repositories.
    Publish(PublishArgs),
    /// Create a one-time enrollment token for a volunteer (printed as the last line).
    Enroll(EnrollArgs),
    /// Run a volunteer: serve a mirror, verify it, announce it.
    Volunteer(VolunteerArgs),
    /// List volunteers (name, URL, state, generations, load), or revoke, drain, resume or
    /// release one.
    Volunteers(VolunteersArgs),
    /// The server at a glance: repositories, volunteers by state, offload, spot checks.
    Status(StatusArgs),
    /// The volunteer admin's controls: status, pause, resume, limits (on a running volunteer).
    VolunteerCtl(admin::VolunteerCtlArgs),
    /// Run the customer-side verifying proxy: apt, dnf, wget and curl use it as their HTTP
    /// proxy, and get only bytes that match the server's published SHA-256.
    Proxy(ProxyArgs),
    /// Start a server and three volunteers on loopback with a sample apt repository.
    Demo(demo::DemoArgs),
    /// Move a stopped server's store from SQLite (its data directory) into an empty
    /// PostgreSQL database, to run it there (and replicas beside it) with --database.
    MigrateStore(MigrateStoreArgs),
    /// Sync a tree from the swarm (for cron jobs and first fills).
    #[command(subcommand)]
    Prsync(PrsyncCommand),
    /// Write the man pages (one per command) into a directory.
    Man(ManArgs),
    /// Print the shell completion script for bash, zsh or fish.
    Completions(CompletionsArgs),
}

#[derive(Args)]
struct ManArgs {
    /// Where to write mirrorswarm.1 and mirrorswarm-<command>.1 (created if missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct CompletionsArgs {
    /// The shell: bash (install as /usr/share/bash-completion/completions/mirrorswarm), zsh
    /// (/usr/share/zsh/vendor-completions/_mirrorswarm) or fish
    /// (/usr/share/fish/vendor_completions.d/mirrorswarm.fish).
    #[arg(value_parser = ["bash", "zsh", "fish"])]
    shell: String,
}

#[derive(Subcommand)]
enum PrsyncCommand {
    /// Bring DEST to the server's newest generation of REPO.
    ///
    /// Reuses unchanged and identical local files, builds large files from similar local ones
    /// with block signatures, fetches missing pieces over BitTorrent from peers and the origin,
    /// small files over HTTP from a peer volunteer, verifies every file's SHA-256 against the
    /// signed manifest, then installs atomically and removes what the generation dropped.
    /// Resumable: after a kill, run it again.
    ///
    /// A pull deletes only what a sync put there. DEST becomes mirrorswarm's when a pull fills
    /// it from empty, or adopts it (recorded in DEST/.mirrorswarm/owner.json). A directory
    /// whose every file the manifest lists (a copy made with rsync) is adopted as it is; one
    /// holding other files is refused (exit 6) unless --adopt is given.
    ///
    /// Exit codes: 0 done; 1 error (a full disk among them); 3 another pull is running on
    /// DEST; 4 a file could not be obtained with the right SHA-256; 5 the server is
    /// unreachable or its manifest does not verify; 6 DEST holds files mirrorswarm did not
    /// put there, or is a mirror of another repository.
    Pull(PullArgs),
}

#[derive(Args)]
struct PullArgs {
    /// The central server's URL.
    #[arg(long)]
    server: String,
    /// Repository name.
    #[arg(long)]
    repo: String,
    /// The tree to bring up to date (created if missing).
    #[arg(long)]
    dest: PathBuf,
    /// The server's public key (hex). Default: pinned in DEST on first use.
    #[arg(long)]
    key: Option<String>,
    /// Seconds without BitTorrent progress before a file is fetched from the origin.
    #[arg(long, default_value_t = 20)]
    stall_secs: u64,
    /// After installing, keep seeding to other volunteers still downloading, for at most
    /// this many seconds (0: leave at once).
    #[arg(long, default_value_t = 60)]
    linger_secs: u64,
    /// Print the summary (or the dry run's plan) as JSON.
    #[arg(long)]
    json: bool,
    /// Take over a DEST that holds files the manifest does not list: listed files are
    /// verified and kept or replaced, the others are left alone.
    #[arg(long)]
    adopt: bool,
    /// Also delete files the manifest does not list, whoever put them there (as
    /// `rsync --delete`).
    #[arg(long)]
    delete_extraneous: bool,
    /// Hold only the files matching this pattern (repeatable): whole paths, `*` and `?`
    /// within a segment, `**` any number of segments (`pool/main/**`). Repository metadata
    /// (`dists/**`, `**/repodata/**`) is always held. Files a sync put there that no longer
    /// match are deleted; others are left alone.
    #[arg(long, value_name = "PATTERN")]
    include: Vec<String>,
    /// Do not hold files matching this pattern (repeatable; `**/*_arm64.deb`).
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Print what the pull would install, reuse and delete, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the pull's BitTorrent session listens (other volunteers fetch from it while it
    /// lingers) [default: 0.0.0.0:0, any port on every address].
    #[arg(long)]
    bt_listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    target: admin::ServerTarget,
    /// Only this repository [default: all].
    #[arg(long)]
    repo: Option<String>,
    /// Send customers to the new generation at once, even where the server stages new
    /// generations (`[staging] enabled`); a generation staged before goes live too.
    #[arg(long)]
    now: bool,
}

#[derive(Args)]
struct MigrateStoreArgs {
    /// The stopped server's data directory (its SQLite database and key).
    #[arg(long)]
    data_dir: PathBuf,
    /// The empty database to move into: postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE
    /// (MIRRORSWARM_DATABASE also sets it).
    #[arg(long, env = "MIRRORSWARM_DATABASE")]
    to: String,
}

#[derive(Args)]
struct EnrollArgs {
    #[command(flatten)]
    target: admin::ServerTarget,
    /// The volunteer's name.
    #[arg(long)]
    name: String,
    /// Hours until the token expires [default: 168].
    #[arg(long, default_value_t = 168)]
    ttl_hours: u64,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    target: admin::ServerTarget,
}

#[derive(Args)]
struct ProxyArgs {
    /// TOML config file (/etc/mirrorswarm/proxy.toml); flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to listen for customers' requests [default: 127.0.0.1:3142].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tls: role_args::TlsArgs,
    /// The mirrorswarm server's URL (the only host this proxy fetches for).
    #[arg(long)]
    server: Option<String>,
    /// Where verified files are kept [default: $XDG_CACHE_HOME/mirrorswarm-proxy, else
    /// ~/.cache/mirrorswarm-proxy].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Bound on the cache's size, bytes [default: 1 GiB].
    #[arg(long)]
    cache_bytes: Option<u64>,
    /// Give up on a source that sends nothing for this many seconds, and try the next
    /// [default: 30].
    #[arg(long)]
    stall_secs: Option<u64>,
}

#[derive(Args)]
struct VolunteersArgs {
    #[command(subcommand)]
    action: Option<admin::VolunteerAction>,
    #[command(flatten)]
    target: admin::ServerTarget,
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    if let Command::Prsync(PrsyncCommand::Pull(a)) = &cli.command {
        return prsync_pull(a);
    }
    // Generated from the definition above; no runtime needed.
    match &cli.command {
        Command::Man(a) => {
            return match docs_gen::man_pages::<Cli>(&a.out) {
                Ok(pages) => {
                    println!("wrote {} pages into {}", pages.len(), a.out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Completions(a) => {
            let shell = match a.shell.as_str() {
                "zsh" => clap_complete::Shell::Zsh,
                "fish" => clap_complete::Shell::Fish,
                _ => clap_complete::Shell::Bash,
            };
            docs_gen::completions::<Cli>(shell);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    fileserve::listen::set_serving_workers(cli.worker_threads);
    let rt = match runtime(cli.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime: multi-threaded with `threads` workers (0: one per core), or a
/// current-thread runtime for 1, which skips work stealing and cross-thread wakeups.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if threads > 1 {
        b.worker_threads(threads);
    }
    b.enable_all().build()
}

async fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Server(a) => server::run(server_config(a)?, shutdown_signal()).await,
        Command::Volunteer(a) => volunteer::run(volunteer_config(a)?, shutdown_signal()).await,
        Command::Publish(a) => admin::publish(&a.target, a.repo.as_deref(), a.now).await,
        Command::Enroll(a) => {
            let token = admin::enroll(&a.target, &a.name, a.ttl_hours).await?;
            eprintln!(
                "Enrollment token for `{}` (valid {} h, works once). On the volunteer run:",
                a.name, a.ttl_hours
            );
            eprintln!("  mirrorswarm volunteer --server <SERVER-URL> --token <TOKEN> --mirror NAME=DIR ...");
            println!("{token}");
            Ok(())
        }
        Command::Volunteers(a) => volunteers(a).await,
        Command::Proxy(a) => proxy_cmd(a).await,
        Command::Status(a) => admin::server_status(&a.target.url()?).await,
        Command::VolunteerCtl(a) => admin::volunteer_ctl(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::MigrateStore(a) => {
            println!("{}", server::migrate_store(&a.data_dir, &a.to).await?);
            Ok(())
        }
        Command::Prsync(_) | Command::Man(_) | Command::Completions(_) => {
            unreachable!("handled in main")
        }
    }
}

async fn volunteers(a: VolunteersArgs) -> Result<()> {
    if let Some(action) = a.action {
        return admin::volunteer_action(&a.target, action).await;
    }
    let url = match (&a.target.server, &a.target.data_dir) {
        (Some(_), _) => Some(a.target.url()?),
        (None, Some(d)) => server::running_server_url(d).ok(),
        (None, None) => bail!("pass --server URL or --data-dir DIR"),
    };
    let live = match &url {
        Some(u) => match reqwest::get(format!("{u}/api/volunteers")).await {
            Ok(r) if r.status().is_success() => {
                Some(r.json::<Vec<server::api::VolunteerView>>().await?)
            }
            Ok(r) => bail!("{u}/api/volunteers: {}", r.status()),
            Err(e) if a.target.data_dir.is_some() => {
                eprintln!("note: server not reachable ({e}); showing the database only");
                None
            }
            Err(e) => bail!("cannot reach {u}: {e}"),
        },
        None => None,
    };
    let rows: Vec<server::api::VolunteerView> = match live {
        Some(v) => v,
        None => {
            let Some(dir) = &a.target.data_dir else {
                bail!("no server to ask")
            };
            server::stored_volunteers(dir)
                .await?
                .into_iter()
                .map(|r| server::api::VolunteerView {
                    name: r.name,
                    id: r.id,
                    url: r.url,
                    state: if r.revoked {
                        "revoked".into()
                    } else if r.quarantine.is_some() {
                        "quarantined".into()
                    } else if r.draining {
                        "draining".into()
                    } else {
                        "unknown (server not running)".into()
                    },
                    quarantine: r.quarantine,
                    generations: Default::default(),
                    parts: Default::default(),
                    shares: Default::default(),
                    customer_conns: 0,
                    sync_conns: 0,
                    sync_bps: 0,
                    upload_bps: 0,
                    capacity: 0,
                    last_announce_ms_ago: None,
                    redirects: 0,
                    observed_bps: None,
                    observed_speed: 1.0,
                    reports: 0,
                    redirected_bytes: 0,
                    uplink_usage: 0.0,
                })
                .collect()
        }
    };
    println!(
        "{:<16} {:<28} {:<16} {:<20} LOAD",
        "NAME", "URL", "STATE", "GENERATIONS"
    );
    for v in rows {
        let gens = if v.generations.is_empty() {
            "-".to_string()
        } else {
            v.generations
                .iter()
                .map(|(r, g)| format!("{r}={g}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{:<16} {:<28} {:<16} {:<20} {}/{} customers, {} sync, {} B/s{}",
            v.name,
            v.url,
            v.state,
            gens,
            v.customer_conns,
            v.capacity,
            v.sync_conns,
            v.upload_bps,
            v.quarantine
                .map(|q| format!("  (quarantined: {q})"))
                .unwrap_or_default()
        );
        for (repo, part) in &v.parts {
            let patterns: Vec<&str> = part.lines().collect();
            println!("{:<16} holds part of {repo}: {}", "", patterns.join(", "));
        }
    }
    Ok(())
}

async fn proxy_cmd(a: ProxyArgs) -> Result<()> {
    let mut file: config::ProxyConfig = match &a.config {
        Some(p) => config::load_file(p)?,
        None => config::ProxyConfig::default(),
    };
    file.server = a.server.or(file.server);
    file.listen = a.listen.unwrap_or(file.listen);
    file.cache_dir = a.cache_dir.or(file.cache_dir);
    file.cache_bytes = a.cache_bytes.unwrap_or(file.cache_bytes);
    file.stall_secs = a.stall_secs.unwrap_or(file.stall_secs);
    a.tls.apply(&mut file.tls);
    let server = file.validate()?.to_string();
    let cache_dir = match file.cache_dir {
        Some(d) => d,
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .context("no --cache-dir and neither XDG_CACHE_HOME nor HOME is set")?
            .join("mirrorswarm-proxy"),
    };
    let mut cfg = proxy::ProxyConfig::new(file.listen, &server, cache_dir);
    cfg.cache_bytes = file.cache_bytes;
    cfg.stall = std::time::Duration::from_secs(file.stall_secs);
    cfg.tls = file.tls.listen.zip(file.tls.files());
    proxy::run(cfg, shutdown_signal()).await
}

/// `prsync pull` has its own exit codes, so it runs outside `dispatch`.
fn prsync_pull(a: &PullArgs) -> ExitCode {
    let mut opts = prsync::pull::PullOptions::new(&a.server, &a.repo, &a.dest);
    opts.stall = std::time::Duration::from_secs(a.stall_secs);
    opts.linger = std::time::Duration::from_secs(a.linger_secs);
    opts.adopt = a.adopt;
    opts.delete_extraneous = a.delete_extraneous;
    if let Some(l) = a.bt_listen {
        opts.bt_listen = l;
    }
    if std::io::stdout().is_terminal() {
        opts.progress = Some(std::sync::Arc::new(progress_bar::Bar::default()));
    }
    if let Some(k) = &a.key {
        match manifest::signing::parse_public_key(k) {
            Ok(k) => opts.key = Some(k),
            Err(e) => {
                eprintln!("error: --key: {e}");
                return ExitCode::from(prsync::pull::exit::ERROR);
            }
        }
    }
    if let Err(e) = config::validate_repo_name(&a.repo) {
        eprintln!("error: --repo: {e}");
        return ExitCode::from(prsync::pull::exit::ERROR);
    }
    match manifest::select::Selection::new(&a.include, &a.exclude) {
        Ok(s) => opts.select = s,
        Err(e) => {
            eprintln!("error: --include/--exclude: {e}");
            return ExitCode::from(prsync::pull::exit::ERROR);
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.dry_run {
        return match rt.block_on(prsync::pull::dry_run(&opts)) {
            Ok(plan) => {
                if a.json {
                    println!("{}", serde_json::to_string(&plan).unwrap_or_default());
                } else {
                    for line in plan.lines() {
                        println!("{line}");
                    }
                }
                ExitCode::from(prsync::pull::exit::OK)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    match rt.block_on(prsync::pull::pull(&opts, None)) {
        Ok(s) => {
            if a.json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                println!("{}", s.line());
            }
            ExitCode::from(prsync::pull::exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
