#!/usr/bin/env python3
"""The tracker under the floods of issue 30 (item 4), for any build, to compare two:

    python3 benches/tracker_flood.py BIN WORKDIR [HASHES]

starts `BIN server` on 127.0.0.1 (a 3 MB file published with its torrent, the origin seeding
it), then from other loopback addresses: 2,100 fake peers into that torrent's swarm from
127.0.2.2, HASHES (default 100,000) random info-hashes from 127.0.5.5, a scrape naming no
torrent; prints what each got and the server's RSS (VmRSS) before and after; then aria2c
(apt-get install aria2) fetches the torrent from 127.0.3.3. Every loop is bounded; the
server and aria2c are ended by the script. tests/tracker_flood.rs is the test of the same.
BENCHMARKS.md has the figures of the build before the bounds and the one after."""
import hashlib, os, shutil, socket, subprocess, sys, time, json, urllib.request, random

BIN, WORK = sys.argv[1], sys.argv[2]
NHASH = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK + "/repo")
rnd = random.Random(30)
big = bytes(rnd.getrandbits(8) for _ in range(3_000_000))
open(WORK + "/repo/big.bin", "wb").write(big)
open(WORK + "/repo/small.txt", "wb").write(b"small")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
log = open(WORK + "/server.log", "w")
srv = subprocess.Popen([BIN, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", WORK + "/data",
                        "--repo", f"debian={WORK}/repo", "--torrent-min-bytes", "65536",
                        "--announce-interval", "30"], stdout=subprocess.DEVNULL, stderr=log,
                       env=dict(os.environ, RUST_LOG="warn"))
def rss():
    for l in open(f"/proc/{srv.pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
def bdecode_info_span(b):
    # returns the raw bytes of the top-level "info" value
    def parse(i):
        c = b[i:i+1]
        if c == b"i": return b.index(b"e", i) + 1
        if c in (b"l", b"d"):
            i += 1
            while b[i:i+1] != b"e": i = parse(i)
            return i + 1
        n = b.index(b":", i); return n + 1 + int(b[i:n])
    i = 1
    while b[i:i+1] != b"e":
        kend = parse(i); key = b[b.index(b":", i)+1:kend]; vend = parse(kend)
        if key == b"info": return b[kend:vend]
        i = vend
try:
    deadline = time.time() + 60
    while time.time() < deadline:
        try: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2); break
        except Exception: time.sleep(0.2)
    torrent = f"{WORK}/data/artifacts/{hashlib.sha256(big).hexdigest()}.torrent"
    btih = hashlib.sha1(bdecode_info_span(open(torrent, "rb").read())).digest()
    pct = lambda b: "".join("%%%02X" % x for x in b)
    time.sleep(3)  # the origin's seed announces
    def conn(src):
        c = socket.socket(); c.bind((src, 0)); c.connect(("127.0.0.1", port)); c.settimeout(10); return c
    def get(c, target, buf):
        c.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        while b"\r\n\r\n" not in buf[0]:
            d = c.recv(65536); assert d; buf[0] += d
        end = buf[0].index(b"\r\n\r\n"); head = buf[0][:end].decode()
        n = int([l.split(":")[1] for l in head.split("\r\n") if l.lower().startswith("content-length")][0])
        while len(buf[0]) < end + 4 + n:
            d = c.recv(65536); assert d; buf[0] += d
        body = buf[0][end+4:end+4+n]; buf[0] = buf[0][end+4+n:]
        return int(head[9:12]), body
    def tally(t, body):
        k = "ok"
        if b"failure reason" in body: k = body.split(b"failure reason", 1)[1].split(b":", 1)[1][:40].decode("latin1")
        t[k] = t.get(k, 0) + 1
    r0 = rss()
    t0 = time.time(); c = conn("127.0.2.2"); buf = [b""]; peers = {}
    for i in range(2100):
        _, body = get(c, f"/announce?info_hash={pct(btih)}&peer_id=-FL0001-{i:012d}&port=10000&uploaded=0&downloaded=0&left=1000&compact=1", buf)
        tally(peers, body)
    c.close(); t1 = time.time()
    r1 = rss()
    c = conn("127.0.5.5"); buf = [b""]; hashes = {}
    for i in range(NHASH):
        h = i.to_bytes(4, "big") + bytes([0x5a]) * 16
        _, body = get(c, f"/announce?info_hash={pct(h)}&peer_id=-FL0001-{i:012d}&port=10000&uploaded=0&downloaded=0&left=1000&compact=1", buf)
        tally(hashes, body)
    t2 = time.time()
    status, everything = get(c, "/scrape", buf)
    c.close()
    r2 = rss()
    print(json.dumps({"peer_flood": peers, "peer_flood_secs": round(t1 - t0, 2),
                      "hash_flood": hashes, "hash_flood_secs": round(t2 - t1, 2),
                      "empty_scrape": [status, len(everything)],
                      "rss_kib": {"before": r0, "after_peers": r1, "after_hashes": r2}}, indent=1))
    dl = WORK + "/dl"; os.makedirs(dl)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); lp = s.getsockname()[1]; s.close()
    t = time.time()
    a = subprocess.run(["timeout", "90", "aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                        "--enable-peer-exchange=false", "--disable-ipv6=true", "--summary-interval=0",
                        "--bt-stop-timeout=20", "--seed-time=0", "--interface=127.0.3.3", "--listen-port", str(lp),
                        "-d", dl, torrent], capture_output=True, text=True)
    print("aria2c exit", a.returncode, "in", round(time.time() - t, 1), "s;",
          [l for l in a.stdout.splitlines() if "ERROR" in l or "failure" in l.lower() or "Download complete" in l][:3])
finally:
    srv.kill(); srv.wait()
