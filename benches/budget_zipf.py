#!/usr/bin/env python3
"""Partial volunteers under Zipf popularity: what share of the requests volunteers with a disk
budget serve, against the same number of volunteers holding the whole repository.

For each budget (a share of the repository's bytes) a fresh server publishes a repository of
--files files (sizes 1-32 KiB, random), customers warm its popularity with --warm requests
drawn Zipf(--zipf) over the files in a random order, then --volunteers volunteers start, each
with that budget (`--budget`), sync with PRsync, and announce. A customer then makes
--requests GETs drawn from the same distribution, following the redirect itself, and the
script counts who served each (a volunteer or the origin), the bytes, and the time to the
last byte. 100 means whole-repository volunteers (no budget).

With --links netns (root) the server and each volunteer sit behind a link shaped by `tc tbf`
(--origin-mbps, --uplink-mbps), and --customers customers make the requests at once: the
response times then show what the origin's share costs on a real uplink.

Usage: python3 benches/budget_zipf.py [--bin target/release/mirrorswarm] [--budgets 5,10,25,50,100]
       sudo python3 benches/budget_zipf.py --links netns --customers 16
Real processes; every process and link started is ended, also on failure.
"""

import argparse
import bisect
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

from netns_links import Links, Procs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port, path, host="127.0.0.1"):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return json.loads(body) if r.status == 200 else None


def wait_until(what, f, secs=120):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            if f():
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out after {secs} s waiting for {what}")


class Zipf:
    """Ranks 0..n-1 drawn with probability proportional to 1/(rank+1)^s."""

    def __init__(self, n, s, rng):
        w = [1.0 / (k + 1) ** s for k in range(n)]
        total = sum(w)
        acc, self.cdf = 0.0, []
        for x in w:
            acc += x / total
            self.cdf.append(acc)
        self.rng = rng

    def draw(self):
        return min(bisect.bisect_left(self.cdf, self.rng.random()), len(self.cdf) - 1)


def make_repo(d, files, rng):
    os.makedirs(os.path.join(d, "pool"))
    sizes = {}
    for i in range(files):
        rel = f"pool/f{i:05}.bin"
        size = rng.randint(1024, 32 * 1024)
        with open(os.path.join(d, rel), "wb") as f:
            f.write(rng.randbytes(size))
        sizes[rel] = size
    return sizes


def get(conns, host, port, path):
    """GET on the kept connection to host:port: (status, Location, body). A kept connection
    the other end closed meanwhile (an idle keep-alive timing out) is opened again and the
    request sent once more, as HTTP clients do for an idempotent request."""
    for attempt in range(2):
        c = conns.get((host, port))
        if c is None:
            c = conns[(host, port)] = http.client.HTTPConnection(host, port, timeout=30)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.getheader("Location"), r.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            c.close()
            del conns[(host, port)]
            if attempt == 1:
                raise


def fetch(conns, host, port, rel):
    """GET through the server, following one redirect; (served by volunteer?, bytes, secs)."""
    t0 = time.perf_counter()
    status, location, body = get(conns, host, port, f"/zipf/{rel}")
    if status == 302:
        loc = urllib.parse.urlsplit(location)
        path = loc.path + ("?" + loc.query if loc.query else "")
        vstatus, vlocation, body = get(conns, loc.hostname, loc.port, path)
        # A volunteer that cannot serve it bounces the customer to the origin.
        if vstatus == 302:
            loc = urllib.parse.urlsplit(vlocation)
            _, _, body = get(conns, host, port, loc.path + ("?" + loc.query if loc.query else ""))
            return False, len(body), time.perf_counter() - t0
        return True, len(body), time.perf_counter() - t0
    if status != 200:
        raise SystemExit(f"GET {rel}: {status}")
    return False, len(body), time.perf_counter() - t0


def run_level(a, pct, sizes, order, work, procs, links):
    root = os.path.join(work, f"budget-{pct}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    repo = os.path.join(work, "repo")
    # On real links each host is a namespace of its own (the port is then the same for all).
    srv_ns, host = (links.add(0, f"z{pct}-srv", a.origin_mbps) if links else (None, "127.0.0.1"))
    port = 8080 if links else free_port()
    data = os.path.join(root, "server")
    procs.start([a.bin, "server", "--listen", f"{host}:{port}", "--data-dir", data,
                 "--public-url", f"http://{host}:{port}",
                 "--repo", f"zipf={repo}", "--announce-interval", "1", "--slow-start-secs", "0",
                 "--direct-max-bytes", "0"], os.path.join(root, "server.log"), srv_ns)
    wait_until("the server", lambda: get_json(port, "/health", host) is not None)
    rng = random.Random(a.seed + 1)
    z = Zipf(len(order), a.zipf, rng)
    conns = {}
    for _ in range(a.warm):
        c = conns.setdefault((host, port), http.client.HTTPConnection(host, port, timeout=30))
        c.request("HEAD", f"/zipf/{order[z.draw()]}")
        c.getresponse().read()
    for c in conns.values():
        c.close()
    time.sleep(3)  # the server folds its counts every 2 s
    total = sum(sizes.values())
    budget = total * pct // 100
    vols = []
    for i in range(a.volunteers):
        name = f"v{i}"
        out = subprocess.run([a.bin, "enroll", "--data-dir", data, "--name", name],
                             capture_output=True, text=True, check=True)
        token = out.stdout.strip().splitlines()[-1]
        v_ns, v_host = (links.add(i + 1, f"z{pct}-v{i}", a.uplink_mbps) if links
                        else (None, "127.0.0.1"))
        vport = 8081 if links else free_port()
        args = [a.bin, "volunteer", "--server", f"http://{host}:{port}", "--token", token,
                "--listen", f"{v_host}:{vport}", "--public-url", f"http://{v_host}:{vport}",
                "--data-dir", os.path.join(root, name),
                "--mirror", f"zipf={os.path.join(root, name + '-tree')}", "--rescan-secs", "1",
                "--max-connections", "64", "--upload-bps", str(a.upload_bps)]
        if pct < 100:
            args += ["--budget", f"zipf={budget}"]
        procs.start(args, os.path.join(root, name + ".log"), v_ns)
        vols.append(name)

    def ready():
        vs = get_json(port, "/api/volunteers", host) or []
        ok = [v for v in vs if v["state"] == "healthy" and v["generations"].get("zipf") == 1
              and (pct == 100 or "@ 1" in v.get("parts", {}).get("zipf", ""))]
        return len(ok) == a.volunteers

    t_sync = time.time()
    wait_until("the volunteers to sync and announce", ready, secs=600)
    sync_secs = time.time() - t_sync
    def worked_out():
        # The server works a budget out within a second or so of the announce naming it.
        vs = get_json(port, "/api/volunteers", host) or []
        return all(v.get("shares", {}).get("zipf", {}).get("files", 0) > 0 for v in vs)

    try:
        wait_until("the server to work the budgets out", worked_out, secs=30)
    except SystemExit:
        print(json.dumps(get_json(port, "/api/volunteers", host))[:3000], file=sys.stderr)
        raise
    shares = [v["shares"]["zipf"] for v in get_json(port, "/api/volunteers", host)]
    # --customers at once, each its share of the requests, each its own draws.
    tallies = [None] * a.customers

    def customer(k):
        z = Zipf(len(order), a.zipf, random.Random(a.seed + 2 + 1000 * k))
        conns = {}
        t = [0, 0, 0, []]
        for _ in range(a.requests // a.customers):
            by_vol, n, secs = fetch(conns, host, port, order[z.draw()])
            t[0] += by_vol
            t[1] += n if by_vol else 0
            t[2] += n
            t[3].append(secs)
        for c in conns.values():
            c.close()
        tallies[k] = t

    threads = [threading.Thread(target=customer, args=(k,)) for k in range(a.customers)]
    t_run = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run_secs = time.perf_counter() - t_run
    procs.stop()
    if any(t is None for t in tallies):
        raise SystemExit("a customer failed")
    served_by_vol = sum(t[0] for t in tallies)
    vol_bytes = sum(t[1] for t in tallies)
    all_bytes = sum(t[2] for t in tallies)
    times = [x for t in tallies for x in t[3]]
    done = len(times)
    times.sort()
    return {
        "budget_pct": pct,
        "budget_bytes": budget if pct < 100 else total,
        "held_bytes_share": statistics.mean(s["bytes"] for s in shares),
        "held_files_share": statistics.mean(s["files"] for s in shares),
        "volunteer_request_share": served_by_vol / done,
        "origin_request_share": 1 - served_by_vol / done,
        "requests_per_sec": done / run_secs,
        "origin_bytes_share": 1 - vol_bytes / all_bytes,
        "mean_ms": 1000 * statistics.mean(times),
        "p95_ms": 1000 * times[int(0.95 * len(times))],
        "sync_secs": sync_secs,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="target/release/mirrorswarm")
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--volunteers", type=int, default=4)
    p.add_argument("--budgets", default="5,10,25,50,100")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--warm", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--customers", type=int, default=1,
                   help="customers at once, each making its share of --requests")
    p.add_argument("--links", choices=["loopback", "netns"], default="loopback",
                   help="netns: the server and each volunteer behind a shaped link (root only)")
    p.add_argument("--uplink-mbps", type=int, default=80, help="each volunteer's, with netns")
    p.add_argument("--origin-mbps", type=int, default=80, help="the server's, with netns")
    # Declared, so that the server models each volunteer's downloads draining at its link's
    # rate: with no uplink declared it counts every redirect of the last few seconds as a
    # customer still there, and one fast client soon looks like a full house.
    p.add_argument("--upload-bps", type=int, default=100_000_000)
    p.add_argument("--work", default="/tmp/mirrorswarm-budget-zipf")
    a = p.parse_args()
    a.bin = os.path.abspath(a.bin)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    rng = random.Random(a.seed)
    sizes = make_repo(os.path.join(a.work, "repo"), a.files, rng)
    order = sorted(sizes)
    rng.shuffle(order)  # popularity rank, unrelated to size
    procs = Procs()
    rows = []
    try:
        for pct in [int(x) for x in a.budgets.split(",")]:
            links = Links() if a.links == "netns" else None
            try:
                row = run_level(a, pct, sizes, order, a.work, procs, links)
            finally:
                procs.stop()
                if links:
                    links.remove()
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        procs.stop()
    print()
    links = (f"each behind {a.uplink_mbps} Mbit/s, the origin {a.origin_mbps} Mbit/s"
             if a.links == "netns" else "loopback")
    print(f"{a.volunteers} volunteers ({links}), {a.files} files "
          f"({sum(sizes.values()) / 1e6:.0f} MB), Zipf({a.zipf}), {a.warm} warm-up and "
          f"{a.requests} measured requests by {a.customers} customers at once")
    print("| budget (share of bytes) | held: bytes / files | requests served by volunteers | "
          "origin bytes | mean / p95 time | requests/s | sync |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = "whole repository" if r["budget_pct"] == 100 else f"{r['budget_pct']} %"
        print(f"| {label} | {100 * r['held_bytes_share']:.1f} % / {100 * r['held_files_share']:.1f} % "
              f"| {100 * r['volunteer_request_share']:.1f} % | {100 * r['origin_bytes_share']:.1f} % "
              f"| {r['mean_ms']:.2f} / {r['p95_ms']:.2f} ms | {r['requests_per_sec']:.0f} "
              f"| {r['sync_secs']:.0f} s |")


if __name__ == "__main__":
    sys.exit(main())
