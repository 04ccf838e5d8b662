//! The servers under test, started as real processes: ours (`mirrorswarm server` and
//! `volunteer`), nginx and opentracker, each with a configuration written for the run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::procs::{free_port, require, wait_http, Proc};

/// How many cores a server under test may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    /// One worker pinned to CPU 0 (the load generator gets CPU 1).
    One,
    /// Every core, nothing pinned.
    All,
}

impl Cores {
    pub fn label(self) -> &'static str {
        match self {
            Cores::One => "1 core",
            Cores::All => "all cores",
        }
    }
    /// The CPU the load generator is pinned to, if any.
    pub fn client_cpu(self) -> Option<usize> {
        match self {
            Cores::One => Some(1),
            Cores::All => None,
        }
    }
    fn wrap(self, program: &Path) -> Command {
        match self {
            Cores::One => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg("0").arg(program);
                c
            }
            Cores::All => Command::new(program),
        }
    }
}

/// A running `mirrorswarm server`.
pub struct OurServer {
    pub proc: Proc,
    pub url: String,
    /// Its HTTPS URL, if it serves HTTPS.
    pub tls_url: Option<String>,
    pub data_dir: PathBuf,
}

/// Start `mirrorswarm server` publishing `repos` with the bench's settings: no spot checks, no
/// BitTorrent seed, every file redirected, a one-hour announce interval (the volunteers the
/// bench enrolls announce once).
pub async fn start_server(
    work: &Path,
    tag: &str,
    repos: &[(&str, &Path)],
    cores: Cores,
    start_limit: Duration,
) -> Result<OurServer> {
    let exe = crate::product_binary()?;
    start_server_from(&exe, work, tag, repos, cores, start_limit, None).await
}

/// [`start_server`] from the binary `exe`, keeping its state in the database `database`
/// names (None: SQLite in its data directory).
pub async fn start_server_from(
    exe: &Path,
    work: &Path,
    tag: &str,
    repos: &[(&str, &Path)],
    cores: Cores,
    start_limit: Duration,
    database: Option<&str>,
) -> Result<OurServer> {
    launch(Launch {
        exe,
        work,
        tag,
        repos,
        cores,
        start_limit,
        database,
        interval_secs: 3600,
        tls: None,
    })
    .await
}

/// A certificate and key for the HTTPS parts, ECDSA P-256 for 127.0.0.1 (the same files for
/// our server and nginx), made by the openssl command once per work directory.
pub struct BenchCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn bench_cert(work: &Path) -> Result<BenchCert> {
    let dir = work.join("tls");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.is_file() || !key.is_file() {
        let openssl = require("openssl", "openssl")?;
        let out = Command::new(openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(BenchCert { cert, key })
}

/// How [`launch`] starts a server.
pub struct Launch<'a> {
    pub exe: &'a Path,
    pub work: &'a Path,
    /// Names its data directory (`server-data-<tag>`), config and log.
    pub tag: &'a str,
    pub repos: &'a [(&'a str, &'a Path)],
    pub cores: Cores,
    /// How long it may take to answer `/health` (its first publish).
    pub start_limit: Duration,
    pub database: Option<&'a str>,
    /// The announce interval it asks of volunteers (`tracker.interval_secs`).
    pub interval_secs: u64,
    /// HTTPS beside HTTP, with this certificate (its URL in [`OurServer::tls_url`]).
    pub tls: Option<&'a BenchCert>,
}

/// Start a server as [`Launch`] says, with the bench's settings otherwise.
pub async fn launch(l: Launch<'_>) -> Result<OurServer> {
    let Launch {
        exe,
        work,
        tag,
        repos,
        cores,
        start_limit,
        database,
        interval_secs,
        tls,
    } = l;
    let port = free_port()?;
    let data_dir = work.join(format!("server-data-{tag}"));
    std::fs::create_dir_all(&data_dir)?;
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n",
        data_dir.display()
    );
    if let Some(url) = database {
        toml.push_str(&format!("database = \"{url}\"\n"));
    }
    let tls_port = match tls {
        Some(c) => {
            let p = free_port()?;
            toml.push_str(&format!(
                "\n[tls]\nlisten = \"127.0.0.1:{p}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                c.cert.display(),
                c.key.display()
            ));
            Some(p)
        }
        None => None,
    };
    toml.push_str("\n[repos]\n");
    for (name, dir) in repos {
        toml.push_str(&format!("{name} = \"{}\"\n", dir.display()));
    }
    toml.push_str(&format!("\n[tracker]\ninterval_secs = {interval_secs}\n"));
    if knows_tracker_bounds(exe) {
        toml.push_str(BENCH_TRACKER_BOUNDS);
    }
    toml.push_str(
        "\n[redirect]\ndirect_max_bytes = 0\nslow_start_secs = 0\n\n\
         [prsync]\nseed = false\n\n[trust]\nspot_check_secs = 0\n\n\
         [limits]\nmax_connections = 100000\nmax_connections_per_ip = 100000\n",
    );
    let cfg = work.join(format!("server-{tag}.toml"));
    std::fs::write(&cfg, toml)?;
    let mut cmd = cores.wrap(exe);
    cmd.arg("--worker-threads")
        .arg(if cores == Cores::One { "1" } else { "0" })
        .arg("server")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn");
    let log = work.join(format!("server-{tag}.log"));
    let mut proc = Proc::spawn("mirrorswarm server", &mut cmd, &log)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/health"), start_limit, &mut proc, &log).await?;
    Ok(OurServer {
        proc,
        url,
        tls_url: tls_port.map(|p| format!("https://127.0.0.1:{p}")),
        data_dir,
    })
}

/// The tracker's bounds for the announce mix: its 1,000 torrents are none the bench
/// published (opentracker gets them as its whitelist), and wrk sends all 100,000 peers from
/// 127.0.0.1, so the tracker runs open with every per-source bound and the rate set out of
/// reach. The bookkeeping still runs on every announce (the rate slot, the per-source
/// counts, the creators' counts), and that is what the bench measures.
const BENCH_TRACKER_BOUNDS: &str = "torrents = \"open\"\n\
     max_peers_per_address = 2000\nmax_peers_per_prefix = 2000\n\
     max_swarms_per_address = 100000\nmax_swarms_per_prefix = 100000\n\
     announce_rate = 1000000\nannounce_burst = 10000000\n";

/// Whether `exe` is a build with the tracker's bounds (`[tracker] torrents` and the rest):
/// an older one (`--ab-binary`) refuses the keys, and has none of the bounds to lift.
fn knows_tracker_bounds(exe: &Path) -> bool {
    Command::new(exe)
        .args(["server", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--tracker-torrents"))
}

/// A running nginx.
pub struct Nginx {
    pub proc: Proc,
    pub url: String,
}

/// Start nginx with `server_body` inside its `server {}` block: one worker pinned to CPU 0, or
/// one worker per core. Logging off, sendfile on, as a tuned static server runs.
pub async fn start_nginx(work: &Path, tag: &str, cores: Cores, server_body: &str) -> Result<Nginx> {
    let nginx = require("nginx", "nginx")?;
    let port = free_port()?;
    let dir = work.join(format!("nginx-{tag}"));
    std::fs::create_dir_all(dir.join("tmp"))?;
    let workers = match cores {
        Cores::One => "1",
        Cores::All => "auto",
    };
    let conf = format!(
        "worker_processes {workers};\nuser root;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n  fastcgi_temp_path {dir}/tmp;\n\
           uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n\
           server {{\n    listen 127.0.0.1:{port};\n{server_body}\n  }}\n}}\n",
        dir = dir.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = cores.wrap(&nginx);
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-g")
        .arg("daemon off;");
    let log = dir.join("stdout.log");
    let mut proc = Proc::spawn("nginx", &mut cmd, &log)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/"), Duration::from_secs(10), &mut proc, &log).await?;
    Ok(Nginx { proc, url })
}

/// A running opentracker.
pub struct OpenTracker {
    pub proc: Proc,
    pub url: String,
}

/// Start Debian's opentracker (built with a whitelist) accepting the info-hashes in
/// `whitelist` (40 hex digits per line), on one core or unpinned.
pub async fn start_opentracker(work: &Path, cores: Cores, whitelist: &Path) -> Result<OpenTracker> {
    let ot = require("opentracker", "opentracker")?;
    let port = free_port()?;
    let dir = work.join("opentracker");
    std::fs::create_dir_all(&dir)?;
    // opentracker drops root for `tracker.user` and chroots to `tracker.rootdir` before it
    // reads the whitelist, so the list lives in that directory under a relative name.
    std::fs::copy(whitelist, dir.join("whitelist.txt"))?;
    let conf = format!(
        "listen.tcp 127.0.0.1:{port}\nlisten.udp 127.0.0.1:{port}\naccess.whitelist whitelist.txt\ntracker.rootdir {}\ntracker.user _opentracker\n",
        dir.display()
    );
    let conf_path = dir.join("opentracker.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = cores.wrap(&ot);
    cmd.arg("-f").arg(&conf_path).current_dir(&dir);
    let log = dir.join("stdout.log");
    let mut proc = Proc::spawn("opentracker", &mut cmd, &log)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(
        &format!("{url}/stats"),
        Duration::from_secs(10),
        &mut proc,
        &log,
    )
    .await?;
    Ok(OpenTracker { proc, url })
}
