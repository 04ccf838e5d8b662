//! Driving `wrk` with a Lua request mix and reading back what it measured.
//!
//! Every script ends with the same `done` hook, which prints one machine-readable line, so
//! nothing depends on wrk's human output format.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// What one wrk run saw.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: u64,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Responses with a status other than 2xx/3xx.
    pub bad_status: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
    /// CPU seconds the server used while wrk ran, user and kernel (filled in by the
    /// caller, which knows the server's process).
    pub cpu_user_s: f64,
    pub cpu_kernel_s: f64,
    /// CPU seconds wrk itself used (its start included): beside the server's, it says which
    /// of the two a run's rate was bound by.
    pub client_cpu_s: f64,
}

impl Load {
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.secs.max(1e-9)
    }

    /// The server's CPU time per request, user and kernel, in microseconds.
    pub fn cpu_per_request_us(&self) -> (f64, f64) {
        let n = self.requests.max(1) as f64;
        (self.cpu_user_s * 1e6 / n, self.cpu_kernel_s * 1e6 / n)
    }

    /// How busy the server and wrk were, in cores (1.0: one core all the time).
    pub fn busy_cores(&self) -> (f64, f64) {
        let secs = self.secs.max(1e-9);
        (
            (self.cpu_user_s + self.cpu_kernel_s) / secs,
            self.client_cpu_s / secs,
        )
    }
}

/// User and kernel seconds of the children this process has waited for (RUSAGE_CHILDREN):
/// the difference across one wrk run is that run's, as nothing else is reaped meanwhile.
fn reaped_children_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

const DONE_HOOK: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MSBENCH %d %d %f %f %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"#;

/// A script that requests `GET <path>` for paths from `paths_file` (one per line), in an order
/// shuffled once (fixed seed), so every run hits the same spread. Requests are formatted once
/// at start: formatting each in Lua capped wrk below nginx's rate.
pub fn random_paths_script(paths_file: &Path) -> String {
    paths_script(paths_file, false)
}

/// [`random_paths_script`] with `Connection: close` on every request: a connection (and, over
/// TLS, a full handshake) per request.
pub fn random_paths_new_connections_script(paths_file: &Path) -> String {
    paths_script(paths_file, true)
}

fn paths_script(paths_file: &Path, close: bool) -> String {
    let headers = if close {
        r#", {["Connection"] = "close"}"#
    } else {
        ""
    };
    format!(
        r#"
local reqs = {{}}
local n = 0
init = function(args)
  for line in io.lines("{}") do reqs[#reqs + 1] = wrk.format("GET", line{headers}) end
  math.randomseed(7)
  for i = #reqs, 2, -1 do
    local j = math.random(i)
    reqs[i], reqs[j] = reqs[j], reqs[i]
  end
end
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
{DONE_HOOK}"#,
        paths_file.display()
    )
}

/// A BitTorrent announce mix: random torrents from `hashes_file` (40 hex digits per line),
/// peers from a pool of `peers` ids, a quarter of them seeders, compact responses, one
/// connection per announce. 50,000 announces are formatted at start and cycled.
pub fn announce_script(hashes_file: &Path, peers: u32) -> String {
    format!(
        r#"
local reqs = {{}}
local n = 0
local function pct(hex)
  return (hex:gsub("..", function(b) return "%" .. b end))
end
init = function(args)
  local hashes = {{}}
  for line in io.lines("{}") do hashes[#hashes + 1] = pct(line) end
  math.randomseed(11)
  for i = 1, 50000 do
    local p = math.random({peers})
    local left = 0
    if p % 4 ~= 0 then left = 1048576 end
    local path = "/announce?info_hash=" .. hashes[math.random(#hashes)] ..
      "&peer_id=-MS0001-" .. string.format("%012d", p) ..
      "&port=" .. (10000 + p % 50000) ..
      "&uploaded=0&downloaded=0&left=" .. left .. "&compact=1&numwant=50"
    -- A client announces every half hour or so, on a connection of its own (opentracker
    -- closes every connection after its answer anyway).
    reqs[i] = wrk.format("GET", path, {{["Connection"] = "close"}})
  end
end
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
{DONE_HOOK}"#,
        hashes_file.display()
    )
}

/// Run wrk against `url` with `script`. `cpu`: pin wrk to this CPU (taskset).
pub fn run(
    work: &Path,
    url: &str,
    script: &str,
    threads: u32,
    connections: u32,
    secs: u64,
    cpu: Option<usize>,
) -> Result<Load> {
    let script_path = work.join("wrk-script.lua");
    std::fs::write(&script_path, script)?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c.to_string()).arg("wrk");
            t
        }
        None => Command::new("wrk"),
    };
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script_path)
        .arg(url);
    let cpu_before = reaped_children_cpu_seconds();
    let out = cmd.output().context("running wrk")?;
    let client_cpu_s = reaped_children_cpu_seconds() - cpu_before;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut load = parse(&stdout).with_context(|| format!("reading wrk's output:\n{stdout}"))?;
    load.client_cpu_s = client_cpu_s;
    Ok(load)
}

fn parse(stdout: &str) -> Result<Load> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MSBENCH "))
        .context("no MSBENCH line")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 6 {
        bail!("MSBENCH line has {} fields, want 6", f.len());
    }
    Ok(Load {
        requests: f[0].parse()?,
        secs: f[1].parse::<f64>()? / 1e6,
        p50_ms: f[2].parse::<f64>()? / 1e3,
        p99_ms: f[3].parse::<f64>()? / 1e3,
        bad_status: f[4].parse()?,
        socket_errors: f[5].parse()?,
        cpu_user_s: 0.0,
        cpu_kernel_s: 0.0,
        client_cpu_s: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_done_line() {
        let l = parse("Running 1s test\nMSBENCH 2000 1000000 150.5 900.0 3 1\n").unwrap();
        assert_eq!(l.requests, 2000);
        assert!((l.per_sec() - 2000.0).abs() < 1e-6);
        assert!((l.p99_ms - 0.9).abs() < 1e-9);
        assert_eq!((l.bad_status, l.socket_errors), (3, 1));
        assert!(parse("Requests/sec: 5").is_err());
        assert!(parse("MSBENCH 1 2").is_err());
    }
}
