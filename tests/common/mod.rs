//! Harness for end-to-end tests: real `mirrorswarm` processes on loopback, real clients.
//! Every wait is bounded; every child process is killed when its handle drops.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mirrorswarm");
/// The lab binary (benchmarks and the balancing study), which runs [`BIN`] beside it.
pub const LAB: &str = env!("CARGO_BIN_EXE_mirrorswarm-lab");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (xorshift), so files differ but tests are repeatable.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Copy a tree as `rsync -a` would: symlinks stay symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        let meta = std::fs::symlink_metadata(&e).unwrap();
        if meta.file_type().is_symlink() {
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(std::fs::read_link(&e).unwrap(), &dest).unwrap();
        } else if meta.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&e, &dest).unwrap();
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: &Path) -> Proc {
        Proc::spawn_of(BIN, args, log)
    }

    /// [`Self::spawn`] for another binary (the lab's roles: [`LAB`]).
    pub fn spawn_of(bin: &str, args: &[&str], log: &Path) -> Proc {
        let err = std::fs::File::create(log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                "info,mirrorswarm_server::redirect=debug,sqlx=warn",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Ask it to stop (SIGTERM) and wait, bounded.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `GET url` as JSON (a test's look at a status or statistics endpoint).
pub async fn get_json(url: &str) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// Poll `f` every 100 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub struct Server {
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub repo_dir: PathBuf,
    pub proc: Proc,
    pub args: Vec<String>,
}

pub struct Volunteer {
    pub name: String,
    pub url: String,
    pub port: u16,
    pub mirror: PathBuf,
    pub data_dir: PathBuf,
    pub proc: Proc,
}

/// A server publishing `repo` (name `debian`) with a 1 s announce interval.
pub async fn start_server(root: &Path, repo_dir: &Path, extra: &[&str]) -> Server {
    let port = free_port();
    let data_dir = root.join("server-data");
    let mut args: Vec<String> = vec![
        "server".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--repo".into(),
        format!("debian={}", repo_dir.display()),
    ];
    if !extra.contains(&"--announce-interval") {
        args.extend(["--announce-interval".to_string(), "1".to_string()]);
    }
    // A loaded test machine can delay an announce past the default 1.5 intervals; tests that
    // are about detecting a dead volunteer fast pass their own value.
    // Tests probe redirects in bursts right after volunteers join; slow start would rightly
    // send such bursts to the origin. It has its own unit test and bench scenario.
    if !extra.contains(&"--slow-start-secs") {
        args.extend(["--slow-start-secs".to_string(), "0".to_string()]);
    }
    if !extra.contains(&"--timeout-intervals") {
        args.extend(["--timeout-intervals".to_string(), "3".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = Proc::spawn(&argv, &root.join("server.log"));
    let url = format!("http://127.0.0.1:{port}");
    let s = Server {
        url: url.clone(),
        port,
        data_dir,
        repo_dir: repo_dir.to_path_buf(),
        proc,
        args,
    };
    s.wait_healthy().await;
    s
}

impl Server {
    /// Wait (at most 30 s) until `/health` answers 200.
    pub async fn wait_healthy(&self) {
        let c = http();
        let u = format!("{}/health", self.url);
        wait_until(Duration::from_secs(30), "server health", || {
            let (c, u) = (c.clone(), u.clone());
            async move { c.get(u).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    /// `POST /api/enroll` with `token`, as a volunteer at an unreachable URL would.
    pub async fn redeem(&self, token: &str) -> reqwest::StatusCode {
        http()
            .post(format!("{}/api/enroll", self.url))
            .json(&serde_json::json!({"token": token, "url": "http://127.0.0.1:9"}))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub fn restart(&mut self) {
        self.proc.terminate();
        let argv: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let log = self.proc.log.with_extension("restarted.log");
        self.proc = Proc::spawn(&argv, &log);
    }

    pub fn enroll(&self, name: &str) -> String {
        let out = Command::new(BIN)
            .args([
                "enroll",
                "--data-dir",
                self.data_dir.to_str().unwrap(),
                "--name",
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.lines().last().unwrap().trim().to_string()
    }

    pub fn publish(&self) -> String {
        let out = Command::new(BIN)
            .args(["publish", "--data-dir", self.data_dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn volunteers(&self) -> Vec<serde_json::Value> {
        match http()
            .get(format!("{}/api/volunteers", self.url))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// The server's view of the volunteer called `name` (null if unknown).
    pub async fn volunteer(&self, name: &str) -> serde_json::Value {
        self.volunteers()
            .await
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_default()
    }

    /// The generation a volunteer is known to hold, if it is healthy.
    pub async fn held(&self, name: &str) -> Option<u64> {
        self.volunteers()
            .await
            .into_iter()
            .find(|v| v["name"] == name && v["state"] == "healthy")
            .and_then(|v| v["generations"]["debian"].as_u64())
    }

    pub async fn wait_held(&self, name: &str, generation: u64) {
        wait_until(
            Duration::from_secs(30),
            &format!("{name} to hold generation {generation}"),
            || async { self.held(name).await == Some(generation) },
        )
        .await;
    }

    /// Where the server sends a customer for `path` (None: it serves the file itself).
    pub async fn location(&self, path: &str) -> Option<String> {
        let r = http()
            .head(format!("{}/debian/{path}", self.url))
            .send()
            .await
            .unwrap();
        if r.status() == reqwest::StatusCode::FOUND {
            Some(r.headers()["location"].to_str().unwrap().to_string())
        } else {
            assert_eq!(
                r.status(),
                reqwest::StatusCode::OK,
                "unexpected status for {path}"
            );
            None
        }
    }
}

/// Start a volunteer whose admin copied `source` into its mirror directory.
pub async fn start_volunteer(root: &Path, server: &Server, name: &str, source: &Path) -> Volunteer {
    let mirror = root.join(name).join("debian");
    copy_tree(source, &mirror);
    let token = server.enroll(name);
    let port = free_port();
    let data_dir = root.join(name).join("data");
    let v = Volunteer {
        name: name.to_string(),
        url: format!("http://127.0.0.1:{port}"),
        port,
        mirror: mirror.clone(),
        data_dir: data_dir.clone(),
        proc: Proc::spawn(
            &volunteer_args(server, &token, port, &data_dir, &mirror)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &root.join(format!("{name}.log")),
        ),
    };
    v
}

/// A volunteer holding a copy of `source`, listening at `listen` (`HOST:PORT`), with `more`
/// flags; `PORT` in either is its port. Its `url` is on `HOST` (127.0.0.1 for `[::]`).
pub fn volunteer_listening(
    root: &Path,
    server: &Server,
    name: &str,
    source: &Path,
    listen: &str,
    more: &[&str],
) -> Volunteer {
    let mirror = root.join(name).join("debian");
    copy_tree(source, &mirror);
    let token = server.enroll(name);
    let port = free_port();
    let data_dir = root.join(name).join("data");
    let with_port = |s: &str| s.replace("PORT", &port.to_string());
    let mut args = volunteer_args(server, &token, port, &data_dir, &mirror);
    let at = args.iter().position(|a| a == "--listen").unwrap();
    args[at + 1] = with_port(listen);
    args.extend(more.iter().map(|m| with_port(m)));
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = if host == "[::]" { "127.0.0.1" } else { host };
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Volunteer {
        name: name.into(),
        url: format!("http://{host}:{port}"),
        port,
        mirror,
        data_dir,
        proc: Proc::spawn(&argv, &root.join(format!("{name}.log"))),
    }
}

/// A syncing volunteer (PRsync fills its empty mirror directory) with `more` arguments; also
/// its command line, to start it again.
pub fn start_syncing(
    root: &Path,
    server: &Server,
    name: &str,
    more: &[String],
) -> (Volunteer, Vec<String>) {
    let token = server.enroll(name);
    let port = free_port();
    let mirror = root.join(name).join("debian");
    let data_dir = root.join(name).join("data");
    std::fs::create_dir_all(root.join(name)).unwrap();
    let mut args = volunteer_args(server, &token, port, &data_dir, &mirror);
    args.retain(|a| a != "--no-sync");
    args.extend(more.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = Volunteer {
        name: name.to_string(),
        url: format!("http://127.0.0.1:{port}"),
        port,
        mirror,
        data_dir,
        proc: Proc::spawn(&argv, &root.join(format!("{name}.log"))),
    };
    (v, args)
}

pub fn volunteer_args(
    server: &Server,
    token: &str,
    port: u16,
    data_dir: &Path,
    mirror: &Path,
) -> Vec<String> {
    vec![
        "volunteer".into(),
        "--server".into(),
        server.url.clone(),
        "--token".into(),
        token.into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--mirror".into(),
        format!("debian={}", mirror.display()),
        "--rescan-secs".into(),
        "1".into(),
        "--no-sync".into(),
    ]
}

/// The sample apt repository plus two large plain files, in `dir`.
pub fn sample_repo(dir: &Path) -> server::sample_repo::AptRepoLayout {
    std::fs::create_dir_all(dir).unwrap();
    let layout = server::sample_repo::write_apt_repo(
        dir,
        "stable",
        "main",
        &server::sample_repo::default_packages(),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("big")).unwrap();
    std::fs::write(dir.join("big/a.bin"), noise(1, 300_000)).unwrap();
    std::fs::write(dir.join("big/b.bin"), noise(2, 300_000)).unwrap();
    layout
}

pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().expect("run command")
}

pub fn dump_logs(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("--- {}\n{}", p.log.display(), tail(&p.log_text(), 60)))
        .collect()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A scratch directory that is removed after a passing test and kept (its path printed) after
/// a failing one, so the processes' logs can be read.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: Some(tempfile::tempdir().unwrap()),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let kept = d.keep();
                eprintln!("test failed: logs kept in {}", kept.display());
            }
        }
    }
}

/// apt-get with a state, cache and sources list of its own under `dir`, for one
/// `deb [trusted=yes] <base>/debian stable main` source.
pub struct Apt {
    pub dir: PathBuf,
}

impl Apt {
    pub fn new(dir: &Path, base: &str) -> Apt {
        for d in ["state/lists/partial", "cache/archives/partial", "work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("status"), b"").unwrap();
        std::fs::write(
            dir.join("sources.list"),
            format!("deb [trusted=yes] {base}/debian stable main\n"),
        )
        .unwrap();
        Apt {
            dir: dir.to_path_buf(),
        }
    }

    /// Run `apt-get ARGS` in `<dir>/work`; panics with its output if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let d = &self.dir;
        let out = Command::new("apt-get")
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                d.join("sources.list").display()
            ))
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent"])
            .arg("-o")
            .arg(format!("Dir::State={}", d.join("state").display()))
            .arg("-o")
            .arg(format!("Dir::State::status={}", d.join("status").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", d.join("cache").display()))
            .args([
                "-o",
                "Debug::NoLocking=1",
                "-o",
                "APT::Sandbox::User=root",
                "-o",
                "Acquire::Languages=none",
            ])
            .args(args)
            .current_dir(d.join("work"))
            .output()
            .expect("apt-get");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "apt-get {args:?}: {text}");
        text
    }
}

/// Every file under `dir` but mirrorswarm's own state, by relative path.
pub fn files_under(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if rel.starts_with(".mirrorswarm") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

/// Overwrite `path` with `bytes` of the same length and put its mtime back, so the volunteer's
/// own size-and-mtime check does not notice: only the content differs.
pub fn replace_keeping_stat(path: &std::path::Path, bytes: &[u8]) {
    let m = std::fs::metadata(path).unwrap();
    assert_eq!(m.len(), bytes.len() as u64);
    let mtime = m.modified().unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Headless Chromium as the probe of this machine kind starts it.
pub fn chromium(profile: &std::path::Path) -> Command {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is required for the dashboard test (apt-get install chromium)");
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}
