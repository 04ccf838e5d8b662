//! Processes the speed bench starts and measures: children that die with their handle,
//! free ports, waiting until a server answers, resident memory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A child process that is killed when its handle drops, so no run outlives the bench.
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    /// Start `cmd` with stdin closed and stdout/stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc {
            child,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fail with the log's tail if the process has already exited.
    pub fn check_alive(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = text
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("{} exited ({status}); its log says:\n{tail}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers, which a SIGKILL would leave
        // running, holding their port and taking CPU from the runs after.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Poll `url` until it answers at all (any status), for at most `limit`.
pub async fn wait_http(url: &str, limit: Duration, proc: &mut Proc, log: &Path) -> Result<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        proc.check_alive(log)?;
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not answer within {limit:?}")
}

/// Resident and peak resident memory of a process, in bytes (`VmRSS`, `VmHWM`).
pub fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

/// The path of an installed program, or a clear error naming the Debian package.
pub fn require(program: &str, package: &str) -> Result<std::path::PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("`{program}` not found: install it with `apt-get install -y {package}` (or run benches/speed.sh, which does)")
}

/// CPU time a process and all its descendants have used so far, user and kernel, in seconds
/// (`utime` and `stime` of `/proc/<pid>/stat`; nginx's workers are its master's children).
/// Processes that exit in between are not counted, nor are their ticks, so it is meant for
/// servers whose processes stay up while they are measured.
pub fn cpu_seconds(root: u32) -> Result<(f64, f64)> {
    // SAFETY: sysconf has no preconditions.
    let tick = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => bail!("sysconf(_SC_CLK_TCK) failed"),
    };
    let mut procs: Vec<(u32, u32, u64, u64)> = Vec::new();
    for dir in std::fs::read_dir("/proc")
        .context("listing /proc")?
        .flatten()
    {
        let Some(pid) = dir.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exited since the listing has no stat any more: not ours to count.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((ppid, user, system)) = parse_stat(&stat) {
            procs.push((pid, ppid, user, system));
        }
    }
    let mut members = vec![root];
    // Descendants in as many passes as the tree is deep (nginx: two levels).
    loop {
        let before = members.len();
        for &(pid, ppid, ..) in &procs {
            if members.contains(&ppid) && !members.contains(&pid) {
                members.push(pid);
            }
        }
        if members.len() == before {
            break;
        }
    }
    if !procs.iter().any(|p| p.0 == root) {
        bail!("process {root} is not running");
    }
    let (user, system) = procs
        .iter()
        .filter(|p| members.contains(&p.0))
        .fold((0, 0), |(u, s), p| (u + p.2, s + p.3));
    Ok((user as f64 / tick, system as f64 / tick))
}

/// `ppid`, `utime` and `stime` from a `/proc/<pid>/stat` line. The command name may hold
/// spaces and parentheses, so the fields are counted from its closing one.
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3 of proc(5)), ppid (4), …, utime (14), stime (15).
    let ppid = fields.get(1)?.parse().ok()?;
    let user = fields.get(11)?.parse().ok()?;
    let system = fields.get(12)?.parse().ok()?;
    Some((ppid, user, system))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_name() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 321 45 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some((17, 321, 45)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (user, system) = cpu_seconds(std::process::id()).unwrap();
        assert!(user + system > 0.0);
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
