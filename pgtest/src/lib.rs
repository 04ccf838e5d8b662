//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory, a server on
//! a free loopback port (and a Unix socket in that directory), stopped and removed on drop,
//! also when the test fails. Run as an unprivileged user: as root (CI) the cluster belongs to
//! `nobody`, since PostgreSQL refuses to run as root.
//!
//! Needs Debian's `postgresql` (its binaries under `/usr/lib/postgresql/<version>/bin`, or
//! on `PATH`); `.ci/run` installs it. Without it a test that asks for a cluster fails,
//! naming the package: a test that cannot reach its database must not pass.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The user that owns the cluster when the tests run as root.
const UNPRIVILEGED: (u32, u32) = (65534, 65534); // nobody, nogroup

/// The superuser the cluster is made with (local connections are trusted).
pub const USER: &str = "mirrorswarm";

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    stopped: bool,
}

impl Cluster {
    /// Make and start a cluster. Panics, saying why, if PostgreSQL is missing or fails.
    pub fn start() -> Cluster {
        let bin = find_bin().unwrap_or_else(|| {
            panic!("PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql/*/bin): apt-get install -y postgresql")
        });
        let dir = tempfile::Builder::new()
            .prefix("mirrorswarm-pg-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL");
        if as_root() {
            chown(dir.path(), UNPRIVILEGED);
        }
        let mut c = Cluster {
            dir,
            bin,
            port: free_port(),
            stopped: true,
        };
        let data = c.data_dir();
        c.run(
            "initdb",
            &[
                "--no-sync",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "-U",
                USER,
                "-D",
                &data,
            ],
        );
        // In the cluster's own configuration, so that a restart keeps them.
        let settings = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            c.port,
            c.dir.path().display()
        );
        let conf = c.dir.path().join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("initdb's postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("writing postgresql.conf");
        c.restart();
        c
    }

    /// A URL for a new, empty database `name` in this cluster.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// The URL of database `name` over loopback TCP.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Run SQL in database `db` with psql; panics with its output if it fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("running psql");
        check("psql", &out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stop the server (fast shutdown: sessions are ended), keeping the cluster.
    pub fn stop(&mut self) {
        if !self.stopped {
            let data = self.data_dir();
            self.run("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &data]);
            self.stopped = true;
        }
    }

    /// Start the server: at first, and again after [`Self::stop`] (same port, same data).
    pub fn restart(&mut self) {
        if self.stopped {
            let data = self.data_dir();
            let log = self.log_path().display().to_string();
            self.stopped = false;
            self.run(
                "pg_ctl",
                &["start", "-w", "-t", "60", "-D", &data, "-l", &log],
            );
        }
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// One of PostgreSQL's programs, to run as the cluster's owner in its directory.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin.join(program);
        let mut c = if as_root() {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", UNPRIVILEGED.0))
                .arg(format!("--regid={}", UNPRIVILEGED.1))
                .args(["--clear-groups", "--"])
                .arg(path);
            c
        } else {
            Command::new(path)
        };
        c.args(args).current_dir(self.dir.path());
        c
    }

    /// Run one of PostgreSQL's programs as the cluster's owner; panics with its output and
    /// the server's log if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        if !out.status.success() {
            panic!(
                "{program} failed: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let data = self.data_dir();
            // Not `run`: a panic while unwinding would abort, and the directory must go.
            let _ = self
                .command("pg_ctl", &["stop", "-w", "-m", "immediate", "-D", &data])
                .output();
            self.stopped = true;
        }
    }
}

fn check(what: &str, out: &Output) {
    if !out.status.success() {
        panic!(
            "{what} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// `initdb`'s directory: on `PATH`, else Debian's newest `/usr/lib/postgresql/<v>/bin`.
fn find_bin() -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            if p.join("initdb").is_file() && p.join("pg_ctl").is_file() {
                return Some(
                    std::fs::canonicalize(p.join("initdb"))
                        .ok()?
                        .parent()?
                        .into(),
                );
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Wait until `f` holds, polling, for at most `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
