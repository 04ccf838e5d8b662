#!/usr/bin/env python3
"""Instructions an announce costs, counted rather than timed (a shared machine's load moves
wrk's figures by more than a change does):

    python3 benches/announce_instructions.py BIN WORKDIR N BOUNDS

runs `BIN server` under valgrind's callgrind (one worker thread), sends N announces of the
speed bench's mix (1,000 torrents, 100,000 peers, a connection each, as wrk does), stops it,
and prints the instructions counted. BOUNDS=1 writes the tracker's bounds the way the speed
bench does for a build that has them (open, per-source bounds out of reach); 0 for an older
build. Per announce: the difference of two runs (N=50000 and 70000: the second 20,000 are
peers announcing again) over their difference in N; `callgrind_annotate --inclusive=yes
WORKDIR/cg.out` splits it by function. Every wait has a deadline; the server is ended by the
script."""
import os, random, shutil, signal, socket, subprocess, sys, time, urllib.request, re
BIN, WORK, N, NEW = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
shutil.rmtree(WORK, ignore_errors=True); os.makedirs(WORK + "/repo")
open(WORK + "/repo/x", "w").write("x")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
cfg = f'listen = "127.0.0.1:{port}"\ndata_dir = "{WORK}/data"\n[repos]\nbench = "{WORK}/repo"\n[tracker]\ninterval_secs = 3600\n'
if NEW:
    cfg += 'torrents = "open"\nmax_peers_per_address = 2000\nmax_peers_per_prefix = 2000\nmax_swarms_per_address = 100000\nmax_swarms_per_prefix = 100000\nannounce_rate = 1000000\nannounce_burst = 10000000\n'
cfg += '[prsync]\nseed = false\n[trust]\nspot_check_secs = 0\n[limits]\nmax_connections = 100000\nmax_connections_per_ip = 100000\n'
open(WORK + "/server.toml", "w").write(cfg)
out = WORK + "/cg.out"
p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", BIN, "--worker-threads", "1",
                      "server", "--config", WORK + "/server.toml"], stdout=subprocess.DEVNULL,
                     stderr=open(WORK + "/log", "w"), env=dict(os.environ, RUST_LOG="warn"))
try:
    deadline = time.time() + 120
    while time.time() < deadline:
        try: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5); break
        except Exception: time.sleep(0.5)
    rnd = random.Random(11)
    hashes = [bytes(rnd.getrandbits(8) for _ in range(20)) for _ in range(1000)]
    pct = lambda b: "".join("%%%02X" % x for x in b)
    reqs = []
    for _ in range(50000):
        peer = rnd.randrange(100000) + 1
        left = 0 if peer % 4 == 0 else 1048576
        reqs.append(f"GET /announce?info_hash={pct(hashes[rnd.randrange(1000)])}&peer_id=-MS0001-{peer:012d}&port={10000 + peer % 50000}&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    ok = 0
    for i in range(N):
        c = socket.create_connection(("127.0.0.1", port), timeout=30)
        c.sendall(reqs[i % len(reqs)])
        data = b""
        while True:
            d = c.recv(65536)
            if not d: break
            data += d
        c.close()
        if b"5:peers" in data and b"failure" not in data: ok += 1
finally:
    p.send_signal(signal.SIGTERM)
    try: p.wait(timeout=120)
    except subprocess.TimeoutExpired: p.kill(); p.wait()
total = 0
for f in [x for x in os.listdir(WORK) if x.startswith("cg.out")]:
    for l in open(os.path.join(WORK, f)):
        if l.startswith("summary:") or l.startswith("totals:"):
            total += int(l.split()[1]); break
print(f"{'new' if NEW else 'old'} N={N} ok={ok} instructions={total}")
