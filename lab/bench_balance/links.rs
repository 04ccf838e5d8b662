//! Real links for the balancing study (`--links netns`): each volunteer in a network namespace
//! of its own, joined to a bridge by a veth pair, its uplink a `tc tbf` qdisc on its side of
//! the pair. Customer downloads and PRsync's BitTorrent and HTTP traffic then share one real
//! link per volunteer, as TCP flows do, which the in-process token bucket cannot arrange for
//! librqbit's uploads. The server and the customers stay in the bench's own namespace, on the
//! bridge's address. Needs root and iproute2; everything made is removed on drop, and a
//! namespace or interface left by a killed run is named after its process id, so it cannot
//! collide with a new one.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Links {
    tag: String,
    subnet: [u8; 3],
    count: usize,
}

/// Run one `ip`/`tc` command; a failure names the command and what it printed.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (iproute2 is needed for --links netns)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Links {
    /// Make `count` volunteer namespaces with uplinks of `upload_bps` bytes/s.
    pub fn create(count: usize, upload_bps: u64) -> Result<Links> {
        anyhow::ensure!(
            count <= 200,
            "--links netns supports at most 200 volunteers"
        );
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!("--links netns makes network namespaces and qdiscs: run it as root");
        }
        remove_stale();
        let pid = std::process::id();
        let links = Links {
            // Interface names have at most 15 bytes: "msb" + a pid of at most 7 digits
            // (Linux's limit is 4,194,304) + "h" + 3 digits.
            tag: format!("msb{pid}"),
            subnet: [10, 213, free_subnet(pid)?],
            count,
        };
        // Built step by step; on a failure, drop removes what was made.
        links.build(upload_bps)?;
        Ok(links)
    }

    fn build(&self, upload_bps: u64) -> Result<()> {
        let br = self.bridge();
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        run("ip", &["link", "set", &br, "up"])?;
        run(
            "ip",
            &["addr", "add", &format!("{}/24", self.host()), "dev", &br],
        )?;
        // tbf: the rate in bits; a burst of 16 KiB (some jitter, no long bursts at 1 MB/s,
        // and more than one GSO segment so it never stalls), a queue of at most 50 ms.
        let rate = format!("{}bit", upload_bps.saturating_mul(8));
        for i in 0..self.count {
            let ns = self.namespace(i);
            let (host_if, ns_if) = (self.host_if(i), self.ns_if(i));
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
                ],
            )?;
            run("ip", &["link", "set", &ns_if, "netns", &ns])?;
            run("ip", &["link", "set", &host_if, "master", &br, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", self.volunteer(i)),
                    "dev",
                    &ns_if,
                ],
            )?;
            run("ip", &["-n", &ns, "link", "set", &ns_if, "up"])?;
            run(
                "tc",
                &[
                    "-n", &ns, "qdisc", "add", "dev", &ns_if, "root", "tbf", "rate", &rate,
                    "burst", "16kb", "latency", "50ms",
                ],
            )
            .context("tc tbf (the kernel needs sch_tbf)")?;
        }
        Ok(())
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }
    fn namespace(&self, i: usize) -> String {
        format!("{}-v{i}", self.tag)
    }
    fn host_if(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }
    fn ns_if(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// The bench's own address on the bridge: the server's and the customers'.
    pub fn host(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Volunteer `i`'s address, inside its namespace.
    pub fn volunteer(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + i as u8)
    }

    /// A command that runs `exe` inside volunteer `i`'s namespace (`ip netns exec` execs it,
    /// so the child is the program itself and killing it kills the program).
    pub fn command(&self, i: usize, exe: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(i)]).arg(exe);
        c
    }

    /// The counter of what volunteer `i` has sent over its link, in bytes: what its side of
    /// the pair transmitted is what the bridge's end received.
    pub fn sent_bytes_file(&self, i: usize) -> std::path::PathBuf {
        format!("/sys/class/net/{}/statistics/rx_bytes", self.host_if(i)).into()
    }
}

/// The third octet of a 10.213.x.0/24 no route on this machine uses yet (so two studies at
/// once, or a network that happens to use the range, are not joined), tried from one the
/// process id picks.
fn free_subnet(pid: u32) -> Result<u8> {
    for k in 0..250u32 {
        let x = ((pid + k) % 250) as u8;
        let out = Command::new("ip")
            .args(["route", "show", &format!("10.213.{x}.0/24")])
            .output()
            .context("running ip (iproute2 is needed for --links netns)")?;
        if out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(x);
        }
    }
    bail!("every 10.213.x.0/24 is in use on this machine")
}

/// Remove what a study that was killed (not interrupted: that cleans up) left behind: the
/// namespaces and bridge of a process that no longer runs.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut dead = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some((tag, _)) = name.split_once("-v") else {
            continue;
        };
        let Some(pid) = tag.strip_prefix("msb") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {name}, left by a study that was killed");
            let _ = run("ip", &["netns", "del", name]);
            dead.insert(tag.to_string());
        }
    }
    for tag in dead {
        let _ = run("ip", &["link", "del", &format!("{tag}b")]);
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the pair and so the pair.
        for i in 0..self.count {
            let _ = run("ip", &["netns", "del", &self.namespace(i)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}
