#!/usr/bin/env python3
"""Two sites (issue 35): whether customers are sent to volunteers near them first, and past
them only when the near ones are busier than the round trips are worth; response times and
who served whom with load-aware proximity, against load alone and against proximity alone,
side by side in one run on real links.

Two sites, `a` (10.78.1.0/24) and `b` (10.78.2.0/24), each with --volunteers syncing
volunteers and one customer namespace; the origin server in a namespace of its own
(10.78.9.2). Every host is a network namespace behind a veth pair to the root namespace,
which routes between them. A volunteer's (and the origin's) egress is shaped by `tc tbf` to
--uplink-mbps (--origin-mbps), as in the other studies; customers are uncapped. Round trips
are --site-rtt-ms (5) between hosts of one site and --world-rtt-ms (80) between the sites and
to the origin: this machine's kernel has neither `sch_netem` nor `sch_prio`, so the delay is a
delay line in user space instead. Traffic the root namespace forwards from a host is routed
(`ip rule iif ...`) into a TUN device whose reader (this script, `--worker delay`) holds each
packet for half the round trip of its source's and destination's sites and writes it back,
whence it is routed on to the destination. The TUN carries TCP segmentation offload (virtio
header), so it sees TSO batches rather than every 1448-byte segment. Packets the root
namespace sends itself (this script's checks of the server) are not delayed.

Site b has one more volunteer, private: it declares the netblock of half of site b's customer
addresses (`--netblock 10.78.2.128/26 --private`); the study counts requests it served to a
customer outside that netblock (which must be none). Site b's customers take that address
with probability --in-house-share, else 10.78.2.194 (site b, outside the netblock). A declared
netblock is a placement the server uses whenever it is declared, so in load-only cells (today's
choosing, which knows no private volunteers) it is drained for the cell and resumed after:
load-only is load alone over the public volunteers. --no-private leaves it out altogether.

The repository holds --small-files files of --small-kib KiB and --large-files of --large-mib
MiB. Customers arrive per site as Poisson processes, each request small with probability
--small-share, the file uniform within its class, at a rate making the site's load (offered
bytes/s over the site's public volunteers' total uplink) the scenario's: `both50` (50 % at
both sites) and `skewed` (site a at 150 %, site b at 20 %). Each customer GETs through the
server on a fresh connection, follows the redirect (and a volunteer's bounce to the origin),
reads to the last byte; its time runs from its first request to its last byte. Arrivals stop
after --secs or --max-requests per site; a customer not done --drain-secs later is counted
unfinished, at the time it had waited (a lower bound).

Three modes, each cell (scenario, mode) on a freshly started server (the same data directory,
so the volunteers synced once keep the generation; config written anew):
  load-only        no [location] sites, policy feedback
  proximity-only   sites a and b, policy request-counting, spill never
  proximity+load   sites a and b, policy feedback, spill by-wait, round_trip_ms site=5 world=80
Before each cell `?mirrorlist` (JSON) is asked from each customer address, and where the
server placed the customer and each volunteer's tier is recorded.

The skewed proximity-only times grow with --secs (site a's queue grows all the while), so the
skewed max ratio does too; compare runs of one --secs.

Reported per scenario and mode: mean / p95 / max response time of small, large and all
requests; the shares served by the customer's own site, the other site and the origin; the
ratios both50 mean (proximity+load ÷ load-only, goal ≤ 0.8) and skewed max (proximity+load ÷
proximity-only, goal ≤ 0.5); origin answers in skewed proximity+load; and the private
volunteer's answers to customers outside its netblock. A markdown table to stdout and --out,
every raw number to --json.

Usage (root: it makes network namespaces):
    sudo python3 benches/two_sites.py [--bin target/release/mirrorswarm] [--secs 60]
Every namespace, link, rule and process it makes is removed, also on failure.
"""

import argparse
import collections
import fcntl
import http.client
import json
import os
import random
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns_links import Procs, sh  # noqa: E402

PREFIX = "mst"
TUN = f"{PREFIX}d0"
TABLE = 178
RULE_PREF = 1780
SITE_OCTET = {"a": 1, "b": 2}
ORIGIN_OCTET = 9
PRIVATE_NET = "10.78.2.128/26"   # site b's in-house customers (the private volunteer's)
IN_HOUSE, OUTSIDE = 130, 194      # a customer namespace's two addresses' last octets
MODES = ["load-only", "proximity-only", "proximity+load"]
SCENARIOS = {"both50": {"a": 50, "b": 50}, "skewed": {"a": 150, "b": 20}}
REPO = "r"


# ------------------------------------------------------------------------------------------
# The delay line: a TUN device whose reader holds each packet for its one-way delay.

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET_HDR = 10


def delay_worker(cfg):
    """Create the TUN device and forward what the kernel routes into it back out, each
    packet after the one-way delay between its source's and its destination's sites (by the
    addresses' third octet). Runs until SIGTERM; the device goes with the process."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", cfg["name"].encode(),
                                           IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    os.set_blocking(fd, False)
    site_of = {int(k): v for k, v in cfg["sites"].items()}  # third octet -> site name
    near, far, origin = (cfg["site_rtt_ms"] / 2000, cfg["world_rtt_ms"] / 2000,
                         cfg["origin_rtt_ms"] / 2000)
    # The one-way delay's queue by (source's, destination's third octet): packets of one
    # delay leave in the order they came, so one FIFO a delay.
    queues = {x: collections.deque() for x in (near, far, origin)}
    by_pair = [None] * 65536
    for s, ss in site_of.items():
        for d, ds in site_of.items():
            x = near if ss == ds else origin if "origin" in (ss, ds) else far
            by_pair[s << 8 | d] = (queues[x], x) if x > 0 else None
    stats = [0, 0, 0]  # packets, bytes, wake-ups

    def bye(*_):
        sys.stderr.write(f"delay line: {stats[0]} packets, {stats[1]} bytes, "
                         f"{stats[2]} wake-ups\n")
        os._exit(0)

    signal.signal(signal.SIGTERM, bye)
    mono, write, read, sel = time.monotonic, os.write, os.read, select.select
    rl = [fd]
    qs = list(queues.values())
    net = b"\x0a\x4e"  # 10.78
    slack = 0.0002  # a packet due this soon leaves now: fewer wake-ups
    while True:
        now = mono() + slack
        next_due = None
        for q in qs:
            while q and q[0][0] <= now:
                write(fd, q.popleft()[1])
            if q and (next_due is None or q[0][0] < next_due):
                next_due = q[0][0]
        stats[2] += 1
        if not sel(rl, (), (), None if next_due is None else max(0.0, next_due - now))[0]:
            continue
        now = mono()
        while True:
            try:
                b = read(fd, 70000)
            except BlockingIOError:
                break
            stats[0] += 1
            stats[1] += len(b)
            # The IPv4 addresses after the virtio header (10 bytes): at 12 and 16.
            qx = by_pair[b[24] << 8 | b[28]] \
                if len(b) >= 30 and b[22:24] == net and b[26:28] == net else None
            if qx is None:
                write(fd, b)
            else:
                qx[0].append((now + qx[1], b))


# ------------------------------------------------------------------------------------------
# The hosts: namespaces, veth pairs, tbf, and the rules into the delay line.

class Net:
    """Host k of site s (octet 1, 2; the origin 9) lives in namespace `mst-<name>` at
    10.78.<s>.<4k+2>/30, its link's far end .<4k+1>; a customer namespace at .130/26 and
    .194/26 (far ends .129, .193)."""

    def __init__(self):
        self.namespaces = []   # (ns, root-side device)
        self.rules = []
        self.idx = 0
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.forwarding = f.read().strip()

    def _link(self, name):
        ns = f"{PREFIX}-{name}"
        host, inner = f"{PREFIX}r{self.idx}", f"{PREFIX}i{self.idx}"
        self.idx += 1
        sh("ip", "netns", "add", ns)
        self.namespaces.append((ns, host))
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", host, "up")
        sh("ip", "-n", ns, "link", "set", inner, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Forwarded from this host: into the delay line.
        pref = RULE_PREF + len(self.rules)
        sh("ip", "rule", "add", "pref", str(pref), "iif", host, "lookup", str(TABLE))
        self.rules.append(pref)
        return ns, host, inner

    def add_host(self, name, octet, k, mbps):
        """A host behind a link of `mbps` Mbit/s out (None: uncapped); (namespace, address)."""
        ns, host, inner = self._link(name)
        base = 4 * k
        sh("ip", "addr", "add", f"10.78.{octet}.{base + 1}/30", "dev", host)
        sh("ip", "-n", ns, "addr", "add", f"10.78.{octet}.{base + 2}/30", "dev", inner)
        sh("ip", "-n", ns, "route", "add", "default", "via", f"10.78.{octet}.{base + 1}")
        if mbps:
            # As netns_links: a burst of a few milliseconds at the rate, a queue of ~50 ms.
            burst = max(32 * 1024, int(mbps * 1e6 / 8 * 0.004))
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", inner, "root", "tbf",
               "rate", f"{mbps}mbit", "burst", str(burst), "latency", "50ms")
        self._forward()
        return ns, f"10.78.{octet}.{base + 2}"

    def add_customers(self, name, octet):
        """A customer namespace, uncapped, at two addresses; (namespace, [addresses])."""
        ns, host, inner = self._link(name)
        addrs = []
        for last in (IN_HOUSE, OUTSIDE):
            sh("ip", "addr", "add", f"10.78.{octet}.{last - 1}/26", "dev", host)
            sh("ip", "-n", ns, "addr", "add", f"10.78.{octet}.{last}/26", "dev", inner)
            addrs.append(f"10.78.{octet}.{last}")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"10.78.{octet}.{IN_HOUSE - 1}")
        self._forward()
        return ns, addrs

    def delay_line_up(self):
        """Once the delay worker made the TUN: up, and the rules' table routes into it."""
        sh("ip", "link", "set", TUN, "txqueuelen", "10000", "up")
        with open(f"/proc/sys/net/ipv4/conf/{TUN}/rp_filter", "w") as f:
            f.write("0")
        sh("ip", "route", "replace", "default", "dev", TUN, "table", str(TABLE))

    def _forward(self):
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")

    def remove(self):
        for pref in self.rules:
            sh("ip", "rule", "del", "pref", str(pref), check=False)
        self.rules = []
        sh("ip", "route", "flush", "table", str(TABLE), check=False)
        for ns, host in self.namespaces:
            sh("ip", "link", "del", host, check=False)
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces = []
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(self.forwarding)


# ------------------------------------------------------------------------------------------
# Customers: one worker process per site, inside the site's customer namespace.

def get_once(host, port, path, src, timeout):
    """One GET on a fresh connection from `src`; (status, Location, bytes read)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout, source_address=(src, 0))
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        n = 0
        while True:
            b = r.read(1 << 16)
            if not b:
                break
            n += len(b)
        return r.status, r.getheader("Location"), n
    finally:
        c.close()


def customer_worker(cfg):
    """Open-loop Poisson arrivals for one site; writes every request's record to cfg["out"]."""
    threading.stack_size(256 * 1024)
    rng = random.Random(cfg["seed"])
    server = urllib.parse.urlsplit(cfg["server"])
    timeout = cfg["secs"] + cfg["drain_secs"] + 30
    recs = []
    lock = threading.Lock()
    inflight = [0]

    def one(rec):
        t0 = time.perf_counter()
        rec["start"] = t0
        host, port, path = server.hostname, server.port, f"/{REPO}/{rec['path']}"
        try:
            for hop in range(4):
                status, location, n = get_once(host, port, path, rec["src"], timeout)
                if status in (301, 302, 303, 307, 308) and location:
                    loc = urllib.parse.urlsplit(location)
                    host, port = loc.hostname, loc.port or 80
                    path = loc.path + ("?" + loc.query if loc.query else "")
                    rec["hops"] = hop + 1
                    continue
                rec["status"], rec["bytes"], rec["by"] = status, n, host
                break
        except Exception as e:  # noqa: BLE001 -- recorded, counted as failed
            rec["error"] = f"{type(e).__name__}: {e}"[:200]
        rec["secs"] = time.perf_counter() - t0
        with lock:
            inflight[0] -= 1

    start = time.perf_counter()
    t = 0.0
    while len(recs) < cfg["max_requests"]:
        t += rng.expovariate(cfg["rate"])
        if t >= cfg["secs"]:
            break
        delay = start + t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        small = rng.random() < cfg["small_share"]
        files = cfg["small"] if small else cfg["large"]
        src = cfg["addrs"][0] if rng.random() < cfg["in_house_share"] else cfg["addrs"][1]
        rec = {"at": t, "cls": "small" if small else "large", "path": rng.choice(files),
               "src": src, "hops": 0}
        recs.append(rec)
        with lock:
            if inflight[0] >= cfg["max_inflight"]:
                rec["error"] = "shed: too many customers in flight"
                rec["secs"] = 0.0
                continue
            inflight[0] += 1
        threading.Thread(target=one, args=(rec,), daemon=True).start()
    arrivals_end = time.perf_counter()
    deadline = arrivals_end + cfg["drain_secs"]
    while time.perf_counter() < deadline:
        with lock:
            if inflight[0] == 0:
                break
        time.sleep(0.2)
    now = time.perf_counter()
    for rec in recs:
        if "secs" not in rec:
            rec["unfinished"] = True
            rec["secs"] = now - rec.get("start", now)
        rec.pop("start", None)
    with open(cfg["out"] + ".tmp", "w") as f:
        json.dump({"records": recs, "arrivals_secs": arrivals_end - start}, f)
    os.replace(cfg["out"] + ".tmp", cfg["out"])
    os._exit(0)


def mirrorlist_worker(cfg):
    """`?mirrorlist` as JSON for each (address, path): what the server makes of this
    customer. Prints a JSON list."""
    server = urllib.parse.urlsplit(cfg["server"])
    out = []
    for src in cfg["addrs"]:
        for path in cfg["paths"]:
            c = http.client.HTTPConnection(server.hostname, server.port, timeout=20,
                                           source_address=(src, 0))
            try:
                c.request("GET", f"/{REPO}/{path}?mirrorlist",
                          headers={"Accept": "application/json"})
                r = c.getresponse()
                body = r.read()
                doc = json.loads(body) if r.status == 200 else {"status": r.status,
                                                                 "body": body[:300].decode()}
            except Exception as e:  # noqa: BLE001
                doc = {"error": str(e)}
            finally:
                c.close()
            out.append({"src": src, "path": path, "doc": doc})
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------
# The study.

def admin_post(server, path, token, timeout=10):
    """POST an admin action (bearer token); whether it answered 200."""
    u = urllib.parse.urlsplit(server)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request("POST", path, headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        r.read()
        return r.status == 200
    finally:
        c.close()


def get_json(url, timeout=10):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request("GET", u.path + ("?" + u.query if u.query else ""))
        r = c.getresponse()
        body = r.read()
        return json.loads(body) if r.status == 200 else None
    finally:
        c.close()


def wait_until(what, f, secs=180):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            if f():
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out after {secs} s waiting for {what}")


def make_repo(d, a):
    rng = random.Random(a.seed)
    small, large = [], []
    for i in range(a.small_files):
        small.append(f"small/s{i:04}.bin")
    for i in range(a.large_files):
        large.append(f"large/l{i:03}.bin")
    for rel, size in [(p, a.small_kib * 1024) for p in small] + \
                     [(p, a.large_mib * 1024 * 1024) for p in large]:
        path = os.path.join(d, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
    return small, large


def server_toml(a, mode):
    lines = ["[redirect]",
             f'policy = "{"request-counting" if mode == "proximity-only" else "feedback"}"']
    if mode != "load-only":
        spill = "never" if mode == "proximity-only" else "by-wait"
        lines += ["", "[location]", "trusted_proxies = []", f'spill = "{spill}"',
                  f"round_trip_ms = {{ site = {a.site_rtt_ms:g}, world = {a.world_rtt_ms:g} }}"]
        for s, octet in SITE_OCTET.items():
            lines += ["", "[[location.sites]]", f'name = "{s}"',
                      f'netblocks = ["10.78.{octet}.0/24"]']
    return "\n".join(lines) + "\n"


class Study:
    def __init__(self, a, work, net, procs):
        self.a, self.work, self.net, self.procs = a, work, net, procs
        self.server_procs = Procs()
        self.hosts = {}  # address -> (label, site)

    def worker(self, role, cfg, ns=None):
        args = [sys.executable, os.path.abspath(__file__), "--worker", role, json.dumps(cfg)]
        return (["ip", "netns", "exec", ns] if ns else []) + args

    def setup(self):
        a, net = self.a, self.net
        self.procs.start(self.worker("delay", {
            "name": TUN, "site_rtt_ms": a.site_rtt_ms, "world_rtt_ms": a.world_rtt_ms,
            "origin_rtt_ms": a.origin_rtt_ms,
            "sites": {str(o): s for s, o in SITE_OCTET.items()} | {str(ORIGIN_OCTET): "origin"}}),
            os.path.join(self.work, "delay.log"))
        wait_until("the delay line's TUN", lambda: os.path.exists(f"/sys/class/net/{TUN}"), 20)
        net.delay_line_up()
        self.srv_ns, self.srv_ip = net.add_host("origin", ORIGIN_OCTET, 0, a.origin_mbps)
        self.server = f"http://{self.srv_ip}:8080"
        self.hosts[self.srv_ip] = ("origin", "origin")
        self.vols = []  # (label, site, ns, ip, extra args)
        for s, octet in SITE_OCTET.items():
            for k in range(a.volunteers):
                ns, ip = net.add_host(f"{s}{k}", octet, k, a.uplink_mbps)
                self.vols.append((f"{s}{k}", s, ns, ip, []))
        if a.private:
            ns, ip = net.add_host("bp", SITE_OCTET["b"], a.volunteers, a.uplink_mbps)
            self.vols.append(("bp", "b", ns, ip, ["--netblock", PRIVATE_NET, "--private"]))
        for label, s, _, ip, _ in self.vols:
            self.hosts[ip] = (label, s)
        self.customers = {s: net.add_customers(f"c{s}", octet) for s, octet in SITE_OCTET.items()}
        self.repo = os.path.join(self.work, "repo")
        self.small, self.large = make_repo(self.repo, a)
        self.data = os.path.join(self.work, "server")

    def start_server(self, mode, tag):
        cfg = os.path.join(self.work, f"server-{tag}.toml")
        with open(cfg, "w") as f:
            f.write(server_toml(self.a, mode))
        self.server_procs.start(
            [self.a.bin, "server", "--config", cfg, "--listen", f"{self.srv_ip}:8080",
             "--public-url", self.server, "--data-dir", self.data, "--repo", f"{REPO}={self.repo}",
             "--announce-interval", "1", "--slow-start-secs", "0",
             "--direct-max-bytes", str(self.a.direct_max_bytes)],
            os.path.join(self.work, f"server-{tag}.log"), self.srv_ns)
        p = self.server_procs.procs[-1]

        def up():
            if p.poll() is not None:
                with open(os.path.join(self.work, f"server-{tag}.log")) as f:
                    raise SystemExit(f"the server ({mode}) exited:\n{f.read()[-3000:]}")
            return get_json(f"{self.server}/health")

        wait_until(f"the server ({mode})", up, 60)

    def start_volunteers(self):
        for label, _, ns, ip, extra in self.vols:
            out = sh(self.a.bin, "enroll", "--data-dir", self.data, "--name", label)
            token = out.stdout.strip().splitlines()[-1]
            args = [self.a.bin, "volunteer", "--server", self.server, "--token", token,
                    "--listen", f"{ip}:8081", "--public-url", f"http://{ip}:8081",
                    "--data-dir", os.path.join(self.work, f"v-{label}"),
                    "--mirror", f"{REPO}={os.path.join(self.work, f'v-{label}-tree')}",
                    "--rescan-secs", "1", "--upload-bps", str(self.a.uplink_mbps * 125_000),
                    "--max-connections", str(self.a.max_connections)] + extra
            if self.a.no_sync:
                args.append("--no-sync")
            self.procs.start(args, os.path.join(self.work, f"v-{label}.log"), ns)

    def all_hold(self):
        g = get_json(f"{self.server}/health")["repos"][REPO]
        vs = get_json(f"{self.server}/api/volunteers")
        ok = sum(v["state"] == "healthy" and v["generations"].get(REPO) == g for v in vs)
        return ok == len(self.vols)

    def volunteers_state(self):
        try:
            return get_json(f"{self.server}/api/volunteers")
        except (OSError, ValueError, http.client.HTTPException) as e:
            return str(e)

    def placements(self):
        out = []
        for s, (ns, addrs) in self.customers.items():
            r = sh(*self.worker("mirrorlist", {"server": self.server, "addrs": addrs,
                                               "paths": [self.large[0], self.small[0]]}, ns),
                   check=False)
            try:
                for x in json.loads(r.stdout):
                    x["site"] = s
                    out.append(x)
            except ValueError:
                out.append({"site": s, "error": (r.stdout + r.stderr)[-500:]})
        return out

    def check_placements(self, mode, placed):
        """What ?mirrorlist said against the layout: each customer at its own site (where
        sites are configured), and the private volunteer excluded for customers outside its
        netblock and ranked in the netblock tier for those inside."""
        bp_url = next((f"http://{ip}:8081" for label, _, _, ip, _ in self.vols if label == "bp"),
                      None)
        out = {"site_ok": 0, "site_checked": 0, "private_ok": 0, "private_checked": 0,
               "bad": []}
        for p in placed:
            d = p.get("doc") or {}
            if "customer" not in d:
                out["bad"].append(f"{p.get('src')}: no answer: {str(d or p.get('error'))[:200]}")
                continue
            if mode != "load-only":
                out["site_checked"] += 1
                if d["customer"].get("site") == p["site"]:
                    out["site_ok"] += 1
                else:
                    out["bad"].append(f"{p['src']} placed at {d['customer'].get('site')}")
            if bp_url and mode != "load-only":
                bp = [v for v in d.get("volunteers", []) if v.get("url", "").startswith(bp_url)]
                inside = p["src"] == f"10.78.{SITE_OCTET['b']}.{IN_HOUSE}"
                out["private_checked"] += 1
                ok = bool(bp) and ((bp[0].get("verdict") != "excluded"
                                    and bp[0].get("tier") == "netblock") if inside
                                   else bp[0].get("verdict") == "excluded")
                out["private_ok"] += ok
                if not ok:
                    out["bad"].append(f"{p['src']}: private volunteer {bp[:1]}")
        return out

    def run_cell(self, scenario, mode):
        a = self.a
        tag = f"{scenario}-{mode.replace('+', '-')}"
        self.start_server(mode, tag)
        t = time.time()
        try:
            wait_until("the volunteers to announce the generation", self.all_hold, 120)
        except SystemExit:
            print(json.dumps(self.volunteers_state())[:3000], file=sys.stderr)
            raise
        # Load alone knows no private volunteers: the private one sits the cell out.
        drained = mode == "load-only" and any(v[0] == "bp" for v in self.vols)
        if drained:
            with open(os.path.join(self.data, "admin.token")) as f:
                token = f.read().strip()
            if not admin_post(self.server, "/admin/volunteers/bp/drain", token):
                raise SystemExit("could not drain the private volunteer for load-only")
        placed = self.placements()
        print(f"[{scenario} {mode}] volunteers back after {time.time() - t:.1f} s; placed: "
              + "; ".join(describe(p) for p in placed), file=sys.stderr, flush=True)
        mean_size = a.small_share * a.small_kib * 1024 + \
            (1 - a.small_share) * a.large_mib * 1024 * 1024
        cap = a.volunteers * a.uplink_mbps * 125_000
        workers, outs, rates = [], {}, {}
        for s, (ns, addrs) in self.customers.items():
            rates[s] = SCENARIOS[scenario][s] / 100 * cap / mean_size
            outs[s] = os.path.join(self.work, f"customers-{tag}-{s}.json")
            cfg = {"server": self.server, "rate": rates[s], "secs": a.secs,
                   "max_requests": a.max_requests, "drain_secs": a.drain_secs,
                   "small_share": a.small_share, "small": self.small, "large": self.large,
                   "addrs": addrs, "in_house_share": a.in_house_share if s == "b" else 0.5,
                   "seed": a.seed * 1000 + SITE_OCTET[s] * 10 + list(SCENARIOS).index(scenario),
                   "max_inflight": a.max_inflight, "out": outs[s]}
            workers.append(subprocess.Popen(self.worker("customers", cfg, ns),
                                            stdout=open(outs[s] + ".log", "wb"),
                                            stderr=subprocess.STDOUT))
        for w in workers:
            try:
                w.wait(a.secs + a.drain_secs + 60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        stats = get_json(f"{self.server}/api/stats")
        if drained and not admin_post(self.server, "/admin/volunteers/bp/resume", token):
            raise SystemExit("could not resume the private volunteer after load-only")
        self.server_procs.stop()
        recs = {}
        for s, path in outs.items():
            if not os.path.exists(path):
                with open(path + ".log") as f:
                    raise SystemExit(f"{tag}: site {s}'s customers wrote nothing:\n"
                                     f"{f.read()[-2000:]}")
            with open(path) as f:
                recs[s] = json.load(f)["records"]
        row = summarize(self, scenario, mode, recs)
        row["rates_per_sec"] = rates
        row["placements"] = placed
        row["placement_check"] = self.check_placements(mode, placed)
        row["server_stats"] = stats
        return row


def describe(p):
    """One line of what ?mirrorlist said: the customer's site, the answer, tiers."""
    d = p.get("doc") or {}
    if "customer" not in d:
        return f"{p.get('src', p['site'])}: {str(d or p.get('error'))[:200]}"
    tiers = collections.Counter(
        f"{v.get('tier')}:{v.get('verdict', '').split(' ')[0]}" for v in d.get("volunteers", []))
    return (f"{p['src']} (site {p['site']}) placed at site {d['customer'].get('site')}, "
            f"{d.get('answer')}, tiers {dict(tiers)}")


def pct(xs, q):
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))] if xs else None


def times(recs):
    xs = sorted(r["secs"] for r in recs)
    if not xs:
        return {"n": 0, "mean": None, "p95": None, "max": None, "censored": 0}
    return {"n": len(xs), "mean": statistics.mean(xs), "p95": pct(xs, 0.95), "max": xs[-1],
            "censored": sum(1 for r in recs if r.get("unfinished"))}


def summarize(study, scenario, mode, recs_by_site):
    hosts = study.hosts
    all_recs = []
    for s, recs in recs_by_site.items():
        for r in recs:
            r["site"] = s
            if "by" in r:
                label, where = hosts.get(r["by"], (r["by"], "?"))
                r["by_label"] = label
                r["where"] = ("origin" if where == "origin" else
                              "own" if where == s else "other")
            all_recs.append(r)
    counted = [r for r in all_recs if "error" not in r]  # done, or unfinished (censored)
    done = [r for r in counted if "where" in r]
    bad_status = [r for r in done if r.get("status") != 200]
    row = {"scenario": scenario, "mode": mode, "requests": len(all_recs),
           "errors": len(all_recs) - len(counted), "unfinished": len(counted) - len(done),
           "non_200": len(bad_status),
           "error_samples": [r["error"] for r in all_recs if "error" in r][:5]}
    for cls in ("small", "large", "all"):
        rs = [r for r in counted if cls == "all" or r["cls"] == cls]
        row[cls] = times(rs)
        for s in recs_by_site:
            row[f"{cls}_site_{s}"] = times([r for r in rs if r["site"] == s])
    n = max(1, len(done))
    for w in ("own", "other", "origin"):
        row[f"share_{w}"] = sum(r["where"] == w for r in done) / n
        row[f"count_{w}"] = sum(r["where"] == w for r in done)
    for s in recs_by_site:
        ds = [r for r in done if r["site"] == s]
        row[f"site_{s}_where"] = {w: sum(r["where"] == w for r in ds)
                                  for w in ("own", "other", "origin")}
    row["bounced_to_origin"] = sum(r["where"] == "origin" and r["hops"] >= 2 for r in done)
    row["by_host"] = dict(collections.Counter(r["by_label"] for r in done))
    private_net = PRIVATE_NET.rsplit(".", 1)[0] + "."
    lo = int(PRIVATE_NET.split("/")[0].rsplit(".", 1)[1])
    size = 2 ** (32 - int(PRIVATE_NET.split("/")[1]))

    def inside(ip):
        return ip.startswith(private_net) and lo <= int(ip.rsplit(".", 1)[1]) < lo + size

    bp = [r for r in done if r["by_label"] == "bp"]
    row["private_served"] = len(bp)
    row["private_served_outside"] = sum(not inside(r["src"]) for r in bp)
    row["records"] = all_recs
    return row


def ms(x):
    return "—" if x is None else f"{1000 * x:.0f}"


def tmm(t):
    ge = "≥" if t["censored"] else ""
    return f"{ms(t['mean'])} / {ms(t['p95'])} / {ge}{ms(t['max'])}"


def ratio(x, y):
    return None if not x or not y else x / y


def table(a, rows):
    out = []
    out.append(f"Two sites, {a.volunteers} volunteers each at {a.uplink_mbps} Mbit/s"
               f"{' (+1 private in site b)' if a.private else ''}, origin at {a.origin_mbps} "
               f"Mbit/s; round trips {a.site_rtt_ms:g} ms in a site, {a.world_rtt_ms:g} ms "
               f"between sites, {a.origin_rtt_ms:g} ms to the origin; {a.small_files} × "
               f"{a.small_kib} KiB and {a.large_files} × {a.large_mib} MiB files, "
               f"{100 * a.small_share:g} % small by count; Poisson arrivals for {a.secs:g} s "
               f"(≤ {a.max_requests} a site), drain ≤ {a.drain_secs:g} s")
    out.append("")
    out.append("| scenario | mode | small: mean / p95 / max ms | large: mean / p95 / max ms | "
               "all: mean / p95 / max ms | site a / b mean ms | own site / other site / origin "
               "| requests (unfinished, failed) |")
    out.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r['mode']} | {tmm(r['small'])} | {tmm(r['large'])} | "
            f"{tmm(r['all'])} | {ms(r['all_site_a']['mean'])} / {ms(r['all_site_b']['mean'])} | "
            f"{100 * r['share_own']:.0f} % / {100 * r['share_other']:.0f} % / "
            f"{100 * r['share_origin']:.0f} % | {r['requests']} ({r['unfinished']}, "
            f"{r['errors'] + r['non_200']}) |")
    out.append("")
    by = {(r["scenario"], r["mode"]): r for r in rows}
    summary = {}
    pl, lo_ = by.get(("both50", "proximity+load")), by.get(("both50", "load-only"))
    if pl and lo_:
        x = ratio(pl["all"]["mean"], lo_["all"]["mean"])
        summary["both50_mean_ratio"] = x
        out.append(f"- both50, mean time proximity+load ÷ load-only: "
                   f"{'—' if x is None else f'{x:.2f}'} (goal ≤ 0.8); small files "
                   f"{fmt_ratio(ratio(pl['small']['mean'], lo_['small']['mean']))}, large "
                   f"{fmt_ratio(ratio(pl['large']['mean'], lo_['large']['mean']))}")
    pl, po = by.get(("skewed", "proximity+load")), by.get(("skewed", "proximity-only"))
    if pl and po:
        x = ratio(pl["all"]["max"], po["all"]["max"])
        summary["skewed_max_ratio"] = x
        cens = " (proximity-only's max is a lower bound: unfinished customers)" \
            if po["all"]["censored"] else ""
        out.append(f"- skewed, max time proximity+load ÷ proximity-only: "
                   f"{'—' if x is None else f'{x:.2f}'} (goal ≤ 0.5){cens}")
    if pl:
        summary["skewed_pl_origin_answers"] = pl["count_origin"]
        out.append(f"- skewed, proximity+load: {pl['count_origin']} answers from the origin "
                   f"({pl['bounced_to_origin']} of them bounced there by a full volunteer); "
                   f"site a's customers: {pl['site_a_where']}")
    site_ok = sum(r["placement_check"]["site_ok"] for r in rows)
    site_n = sum(r["placement_check"]["site_checked"] for r in rows)
    priv_ok = sum(r["placement_check"]["private_ok"] for r in rows)
    priv_n = sum(r["placement_check"]["private_checked"] for r in rows)
    bad = [b for r in rows for b in r["placement_check"]["bad"]]
    summary["mirrorlist_site_ok"], summary["mirrorlist_private_ok"] = \
        f"{site_ok}/{site_n}", f"{priv_ok}/{priv_n}"
    out.append(f"- ?mirrorlist before each cell: customer placed at its own site {site_ok} of "
               f"{site_n} times (modes with sites); private volunteer excluded for outsiders and "
               f"in the netblock tier for its own {priv_ok} of {priv_n}"
               + (f"; wrong: {'; '.join(bad[:6])}" if bad else ""))
    if a.private:
        served = sum(r["private_served"] for r in rows)
        outside = sum(r["private_served_outside"] for r in rows)
        summary["private_served"], summary["private_served_outside"] = served, outside
        out.append(f"- private volunteer (site b, {PRIVATE_NET}): served {served} requests in "
                   f"all cells, {outside} of them to customers outside its netblock (must be 0)")
    return "\n".join(out), summary


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}"


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        role, cfg = sys.argv[2], json.loads(sys.argv[3])
        return {"delay": delay_worker, "customers": customer_worker,
                "mirrorlist": mirrorlist_worker}[role](cfg)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Setup: see the module docstring (`head -60 benches/two_sites.py`). Modes: "
               "load-only, proximity-only, proximity+load; scenarios: both50 (both sites at "
               "50 %% load), skewed (a at 150 %%, b at 20 %%).")
    p.add_argument("--bin", default="target/release/mirrorswarm")
    p.add_argument("--volunteers", type=int, default=3, help="public volunteers per site")
    p.add_argument("--no-private", dest="private", action="store_false",
                   help="leave out site b's private volunteer")
    p.add_argument("--uplink-mbps", type=int, default=20, help="each volunteer's uplink")
    p.add_argument("--origin-mbps", type=int, default=20, help="the origin's uplink")
    p.add_argument("--site-rtt-ms", type=float, default=5.0, help="round trip within a site")
    p.add_argument("--world-rtt-ms", type=float, default=80.0, help="round trip between sites")
    p.add_argument("--origin-rtt-ms", type=float, default=80.0,
                   help="round trip between either site and the origin")
    p.add_argument("--small-files", type=int, default=200)
    p.add_argument("--small-kib", type=int, default=16)
    p.add_argument("--large-files", type=int, default=20)
    p.add_argument("--large-mib", type=int, default=2)
    p.add_argument("--small-share", type=float, default=0.9,
                   help="share of requests for small files, by count")
    p.add_argument("--in-house-share", type=float, default=0.5,
                   help="share of site b's customers inside the private volunteer's netblock")
    p.add_argument("--secs", type=float, default=60.0, help="arrivals per cell, seconds")
    p.add_argument("--drain-secs", type=float, default=60.0,
                   help="after arrivals stop, how long customers still in flight may take")
    p.add_argument("--max-requests", type=int, default=6000, help="arrivals per site per cell")
    p.add_argument("--max-inflight", type=int, default=1500,
                   help="customers in flight per site; arrivals beyond it are counted failed")
    p.add_argument("--max-connections", type=int, default=64,
                   help="each volunteer's --max-connections (more are bounced to the origin)")
    p.add_argument("--direct-max-bytes", type=int, default=0,
                   help="the server's --direct-max-bytes (0: small files are redirected too)")
    p.add_argument("--no-sync", action="store_true",
                   help="pass --no-sync to volunteers (then they never fill: for debugging)")
    p.add_argument("--scenarios", default="both50,skewed")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--gap-secs", type=float, default=3.0, help="quiet pause between cells")
    p.add_argument("--seed", type=int, default=35)
    p.add_argument("--work", default="/tmp/mirrorswarm-two-sites")
    p.add_argument("--out", default="/tmp/two_sites.md", help="the markdown table")
    p.add_argument("--json", default="/tmp/two_sites.json", help="every raw number")
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the study makes network namespaces")
    scenarios = [s for s in a.scenarios.split(",") if s]
    modes = [m for m in a.modes.split(",") if m]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s}: {', '.join(SCENARIOS)}")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m}: {', '.join(MODES)}")
    a.bin = os.path.abspath(a.bin)
    if not os.access(a.bin, os.X_OK):
        raise SystemExit(f"{a.bin}: no such binary")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    net, procs = Net(), Procs()
    study = Study(a, a.work, net, procs)
    rows = []
    t_start = time.time()
    try:
        study.setup()
        # The first server: the volunteers enroll and sync the generation it publishes.
        study.start_server(modes[0], "sync")
        study.start_volunteers()
        t = time.time()
        try:
            wait_until("the volunteers to fill the generation", study.all_hold, 900)
        except SystemExit:
            print(json.dumps(study.volunteers_state())[:3000], file=sys.stderr)
            raise
        sync_secs = time.time() - t
        print(f"volunteers synced in {sync_secs:.0f} s", file=sys.stderr, flush=True)
        study.server_procs.stop()
        for scenario in scenarios:
            for mode in modes:
                time.sleep(a.gap_secs)
                row = study.run_cell(scenario, mode)
                rows.append(row)
                brief = {k: v for k, v in row.items()
                         if k not in ("records", "placements", "server_stats", "by_host")
                         and "_site_" not in k}
                print(json.dumps(brief), file=sys.stderr, flush=True)
    finally:
        study.server_procs.stop()
        procs.stop()
        net.remove()
    text, summary = table(a, rows)
    print()
    print(text)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    with open(a.json, "w") as f:
        json.dump({"args": vars(a), "sync_secs": sync_secs, "wall_secs": time.time() - t_start,
                   "summary": summary, "cells": rows}, f, indent=1)
    print(f"\nwritten: {a.out}, {a.json} (wall {time.time() - t_start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
