#!/usr/bin/env python3
"""Release day: a popular new 50 MB package is published while customers keep arriving; how
many bytes the origin sends, and how long customers wait, with staged publish against
immediate publish, side by side in one run on real links.

Each mode gets a fresh server and --volunteers syncing volunteers, each in a network namespace
of its own behind a veth pair whose egress is shaped by `tc tbf` to --uplink-mbps (the server
too, --origin-mbps), as the balance study does. The repository is apt-like: an index file
(`dists/stable/index`, small: the origin sends it) names the newest version of a package
(`pool/main/m/ms-data/ms-data_<v>_all.deb`); generation 1 names 0.3, which every volunteer
fills before the run. At t = 0 version 0.4 (--size-mb) is added, the index rewritten, and the
generation published: `publish --now` (immediate) or staged (`--staging`, spread 0.5).
Customers arrive from t = 0 at the paper's decaying rate (a rate falling as e^(-t/tau), most of
them within the first tau seconds: the first hours after a release, compressed). Each has 0.3
and wants what is new: it reads the index, and while that names 0.3 (a staged generation is
not live yet) reads it again every --retry-secs (its next `apt-get update`); then it downloads
0.4 through the server, following redirects. Its time runs from its arrival to the last byte.
Reported per mode: the origin's bytes (HTTP and its BitTorrent seed) against the new file's
size, which version customers got, and their download times.

Usage (root: it makes network namespaces):
    sudo python3 benches/flash_crowd.py [--bin target/release/mirrorswarm]
Every namespace, link and process it makes is removed, also on failure.
"""

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import threading
import time
import urllib.request

from netns_links import Links, Procs, sh

PKG = "pool/main/m/ms-data/ms-data_{v}_all.deb"
INDEX = "dists/stable/index"


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_until(what, f, secs=180):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            if f():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out after {secs} s waiting for {what}")


def write_release(repo, version, size, seed):
    path = os.path.join(repo, PKG.format(v=version))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(size))
    index = os.path.join(repo, INDEX)
    os.makedirs(os.path.dirname(index), exist_ok=True)
    with open(index + ".tmp", "w") as f:
        f.write(PKG.format(v=version) + "\n")
    os.replace(index + ".tmp", index)


def arrivals(n, tau, seed):
    """n arrival times from a rate falling as e^(-t/tau), cut at 3 tau."""
    rng = random.Random(seed)
    cut = 1 - math.exp(-3)
    return sorted(-tau * math.log(1 - rng.random() * cut) for _ in range(n))


def customer(server, out, i, retry_secs, polls):
    """A customer who has 0.3 and wants what is new: it reads the index and, while that
    names no newer version, reads it again every `retry_secs` (its next `apt-get update`);
    then it downloads the new version. Its time runs from its arrival to the last byte."""
    t0 = time.perf_counter()
    for _ in range(polls):
        with urllib.request.urlopen(f"{server}/r/{INDEX}", timeout=600) as r:
            rel = r.read().decode().strip()
        if "0.3" not in rel:
            break
        time.sleep(retry_secs)
    else:
        return
    n = 0
    with urllib.request.urlopen(f"{server}/r/{rel}", timeout=600) as r:
        by = r.geturl()
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            n += len(b)
    out[i] = {"version": rel.split("_")[1], "bytes": n, "secs": time.perf_counter() - t0,
              "origin": by.startswith(server), "by": by}


def run_mode(a, mode, work, links, procs):
    root = os.path.join(work, mode)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    repo = os.path.join(root, "repo")
    write_release(repo, "0.3", a.size_mb * 1_000_000, 3)
    data = os.path.join(root, "server")
    srv_ns, srv_ip = links.add(0, f"{mode[:3]}-srv", a.origin_mbps)
    vol_nets = [links.add(i + 1, f"{mode[:3]}-v{i}", a.uplink_mbps) for i in range(a.volunteers)]
    server = f"http://{srv_ip}:8080"
    args = [a.bin, "server", "--listen", f"{srv_ip}:8080", "--public-url", server,
            "--data-dir", data, "--repo", f"r={repo}", "--announce-interval", "1",
            "--slow-start-secs", "0"]
    if mode == "staged":
        args += ["--staging", "--staging-spread", "0.5", "--staging-deadline-secs", "600"]
    procs.start(args, os.path.join(root, "server.log"), srv_ns)
    wait_until("the server", lambda: get_json(f"{server}/health"))
    for i, (ns, ip) in enumerate(vol_nets):
        out = sh(a.bin, "enroll", "--data-dir", data, "--name", f"v{i}")
        token = out.stdout.strip().splitlines()[-1]
        procs.start([a.bin, "volunteer", "--server", server, "--token", token,
                     "--listen", f"{ip}:8081", "--public-url", f"http://{ip}:8081",
                     "--data-dir", os.path.join(root, f"v{i}"),
                     "--mirror", f"r={os.path.join(root, f'v{i}-tree')}", "--rescan-secs", "1",
                     "--upload-bps", str(a.uplink_mbps * 125_000)],
                    os.path.join(root, f"v{i}.log"), ns)

    def all_hold(g):
        vs = get_json(f"{server}/api/volunteers")
        return sum(v["state"] == "healthy" and v["generations"].get("r") == g for v in vs) \
            == a.volunteers

    wait_until("the volunteers to fill generation 1", lambda: all_hold(1), secs=600)
    # Yesterday's demand for the package, which its new version inherits.
    for _ in range(20):
        urllib.request.urlopen(urllib.request.Request(
            f"{server}/r/{PKG.format(v='0.3')}", method="HEAD"), timeout=10).read()
    time.sleep(3)
    before = get_json(f"{server}/api/stats")
    write_release(repo, "0.4", a.size_mb * 1_000_000, 4)
    t0 = time.time()
    pub = [a.bin, "publish", "--data-dir", data] + (["--now"] if mode == "immediate" else [])
    print(sh(*pub).stdout.strip(), file=sys.stderr)
    results = [None] * a.customers
    live = {}

    def watch():
        while "at" not in live and not live.get("stop"):
            if get_json(f"{server}/health")["repos"]["r"] == 2:
                live["at"] = time.time() - t0
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = []
    for i, at in enumerate(arrivals(a.customers, a.tau, a.seed)):
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=customer,
                             args=(server, results, i, a.retry_secs, int(900 / a.retry_secs)))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    live["stop"] = True
    watcher.join()
    live_at = live.get("at")
    wait_until("the volunteers to hold generation 2", lambda: all_hold(2), secs=600)
    after = get_json(f"{server}/api/stats")
    procs.stop()
    done = [r for r in results if r]
    with open(os.path.join(root, "customers.json"), "w") as f:
        json.dump(results, f, indent=1)
    if len(done) != a.customers:
        raise SystemExit(f"{mode}: {a.customers - len(done)} customers failed")
    secs = sorted(r["secs"] for r in done)
    http_bytes = after["origin_http_bytes"] - before["origin_http_bytes"]
    seed_bytes = after["seed_uploaded_bytes"] - before["seed_uploaded_bytes"]
    return {
        "mode": mode,
        "live_after_secs": live_at,
        "origin_http_bytes": http_bytes,
        "origin_seed_bytes": seed_bytes,
        "origin_over_new": (http_bytes + seed_bytes) / (a.size_mb * 1_000_000),
        "customers_from_origin": sum(r["origin"] for r in done),
        "mean_secs": statistics.mean(secs),
        "p95_secs": secs[int(0.95 * (len(secs) - 1))],
        "max_secs": secs[-1],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="target/release/mirrorswarm")
    p.add_argument("--size-mb", type=int, default=50)
    p.add_argument("--volunteers", type=int, default=4)
    p.add_argument("--customers", type=int, default=24)
    p.add_argument("--tau", type=float, default=10.0)
    p.add_argument("--uplink-mbps", type=int, default=80)
    p.add_argument("--origin-mbps", type=int, default=80)
    p.add_argument("--retry-secs", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--work", default="/tmp/mirrorswarm-flash-crowd")
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the study makes network namespaces")
    a.bin = os.path.abspath(a.bin)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    rows = []
    for mode in ["immediate", "staged"]:
        links, procs = Links(), Procs()
        try:
            row = run_mode(a, mode, a.work, links, procs)
        finally:
            procs.stop()
            links.remove()
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"{a.volunteers} volunteers at {a.uplink_mbps} Mbit/s, origin at {a.origin_mbps} Mbit/s, "
          f"new file {a.size_mb} MB, {a.customers} customers arriving at a rate falling as "
          f"e^(-t/{a.tau:g} s)")
    print("| publish | live after | origin sent (HTTP + seed) | ÷ new bytes | customers served by "
          "the origin | time to the new version: mean / p95 / max |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        live = "—" if r["live_after_secs"] is None else f"{r['live_after_secs']:.0f} s"
        print(f"| {r['mode']} | {live} | {r['origin_http_bytes'] / 1e6:.0f} + "
              f"{r['origin_seed_bytes'] / 1e6:.0f} MB | {r['origin_over_new']:.2f}× | "
              f"{r['customers_from_origin']} of {a.customers} | "
              f"{r['mean_secs']:.1f} / {r['p95_secs']:.1f} / {r['max_secs']:.1f} s |")


if __name__ == "__main__":
    sys.exit(main())
