#!/usr/bin/env bash
# Benchmark: a first fill of many small files, PRsync against rsync, side by side in one run.
#
# Tree: FILES files of 200–3,000 random bytes in 500 directories (default 100,000).
#  1. one puller: `rsync -a` from an rsync daemon against `mirrorswarm prsync pull` from the
#     server, each into an empty directory;
#  2. four at once: four rsyncs from the daemon against four volunteer daemons that join with
#     empty mirror directories and fill them (timed until the server sees all four hold the
#     generation; their batches go to each other first, the origin for the rest).
# Reported: wall time, bytes the origin sent (rsync: what its clients received; mirrorswarm:
# the server's /api/stats, HTTP and BitTorrent), the ratios, and the peak RSS of a pull.
#
# Every run starts with `sync`, so none pays for writing back another's files (a pull's one
# `syncfs` before installing would). Nothing is deleted between runs: on this machine's ext4 (no journal) new files are
# allocated slowly for a minute after many were deleted (`recently_deleted`), which would
# favour whichever tool ran first. Everything goes at the end (and a run finding an old work
# directory removes it, syncs and waits 65 s first).
#
# Usage: bash benches/prsync_vs_rsync_small.sh          (FILES=20000 for a short run)
# Needs: rsync, GNU time, curl, python3 (rsync and time installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FILES=${FILES:-100000}
WORK=${BENCH_DIR:-/tmp/mirrorswarm-bench-small}
BIN=$ROOT/target/release/mirrorswarm

for tool in rsync:rsync /usr/bin/time:time; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${tool##*:}"; }
done
cargo build --release --quiet --bin mirrorswarm

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${TMPFS:-0}" = 1 ]; then cd / && umount "$WORK" 2>/dev/null || true; fi
}
trap cleanup EXIT

mkdir -p "$WORK"
TMPFS=0
if [ "${BENCH_TMPFS:-1}" != 0 ] && [ "$(id -u)" = 0 ]; then
  mount -t tmpfs -o size=12g mirrorswarm-bench "$WORK" && TMPFS=1
fi
cd "$WORK"
python3 - "$FILES" <<'PY'
import os, random, sys
n = int(sys.argv[1]); random.seed(11)
for d in range(500):
    os.makedirs(f"tree/d{d:03d}", exist_ok=True)
for i in range(n):
    with open(f"tree/d{i % 500:03d}/f{i:07d}.dat", "wb") as f:
        f.write(random.randbytes(random.randint(200, 3000)))
PY
tree_bytes=$(find tree -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "tree: $FILES files, $tree_bytes B"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{$(now)-$1:.2f}')"; }
ratio() { python3 -c "print(f'{$1/max($2,1e-9):.2f}')"; }

# --- rsync ------------------------------------------------------------------------------------
RP=$(port)
cat > rsyncd.conf <<CONF
use chroot = no
[repo]
path = $WORK/tree
read only = yes
CONF
rsync --daemon --no-detach --port "$RP" --address 127.0.0.1 --config rsyncd.conf & PIDS+=($!)
sleep 1
sync; t0=$(now)
/usr/bin/time -f "%M" -o rs1.rss rsync -a --stats "rsync://127.0.0.1:$RP/repo/" rs1/ > rs1.stats
rs1_wall=$(since "$t0")
rs1_bytes=$(grep "Total bytes received" rs1.stats | tr -dc '0-9')
sync; t0=$(now)
for i in 1 2 3 4; do rsync -a --stats "rsync://127.0.0.1:$RP/repo/" "rs4_$i/" > "rs4_$i.stats" & done
wait $(jobs -p | grep -v "^${PIDS[0]}$") 2>/dev/null || true
rs4_wall=$(since "$t0")
rs4_bytes=0
for i in 1 2 3 4; do rs4_bytes=$((rs4_bytes + $(grep "Total bytes received" "rs4_$i.stats" | tr -dc '0-9'))); done
echo "rsync: one ${rs1_wall} s ($rs1_bytes B); four at once ${rs4_wall} s ($rs4_bytes B)"

# --- mirrorswarm ------------------------------------------------------------------------------
SP=$(port)
SERVER="http://127.0.0.1:$SP"
"$BIN" server --listen "127.0.0.1:$SP" --data-dir data --repo small=tree 2> server.log & PIDS+=($!)
for _ in $(seq 1 600); do curl -fs "$SERVER/health" >/dev/null && break; sleep 0.2; done
origin_bytes() {
  curl -fs "$SERVER/api/stats" | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['origin_http_bytes']+d['seed_uploaded_bytes'])"
}

sync; b0=$(origin_bytes); t0=$(now)
/usr/bin/time -f "%M" -o ms1.rss "$BIN" prsync pull --server "$SERVER" --repo small --dest ms1 --linger-secs 0 > ms1.out 2> ms1.log
ms1_wall=$(since "$t0"); ms1_bytes=$(( $(origin_bytes) - b0 ))
diff -r -x .mirrorswarm tree ms1 > /dev/null || { echo "prsync: ms1 differs"; exit 1; }
echo "prsync: one ${ms1_wall} s ($ms1_bytes B), peak RSS $(cat ms1.rss) KiB"

tokens=()
ports=()
for i in 1 2 3 4; do tokens+=("$("$BIN" enroll --data-dir data --name "v$i" | tail -1)"); ports+=("$(port)"); done
sync; b0=$(origin_bytes); t0=$(now)
for i in 1 2 3 4; do
  mkdir -p "ms4_$i"
  "$BIN" volunteer --server "$SERVER" --token "${tokens[$((i-1))]}" \
    --listen "127.0.0.1:${ports[$((i-1))]}" --data-dir "vdata$i" --mirror "small=$WORK/ms4_$i" 2> "ms4_$i.log" &
  PIDS+=($!)
done
# One poller, asking every 0.1 s (a process started per poll would take CPU from the pulls).
python3 - "$SERVER" <<'PY'
import json, sys, time, urllib.request
for _ in range(3000):
    try:
        v = json.load(urllib.request.urlopen(sys.argv[1] + "/api/volunteers", timeout=5))
        if sum(1 for x in v if x.get("generations", {}).get("small", 0) >= 1) == 4:
            break
    except OSError:
        pass
    time.sleep(0.1)
PY
held_all() {
  curl -fs "$SERVER/api/volunteers" | python3 -c "
import json,sys; v=json.load(sys.stdin)
print(sum(1 for x in v if x.get('generations',{}).get('small',0) >= 1))"
}
ms4_wall=$(since "$t0"); ms4_bytes=$(( $(origin_bytes) - b0 ))
[ "$(held_all)" = 4 ] || { echo "not every volunteer filled its tree"; tail -5 ms4_*.log; exit 1; }
for i in 1 2 3 4; do diff -r -x .mirrorswarm tree "ms4_$i" > /dev/null || { echo "ms4_$i differs"; exit 1; }; done
peers=$(grep -ho 'from peers [0-9]* B' ms4_*.log | awk '{s+=$3} END {print s+0}')
echo "prsync: four volunteers ${ms4_wall} s (origin $ms4_bytes B, from peers $peers B)"
rss4=$(for p in "${PIDS[@]:2}"; do awk '/VmHWM/ {print $2}' "/proc/$p/status"; done | sort -n | tail -1)

echo
echo "| case | rsync: wall (s) | PRsync: wall (s) | wall PRsync ÷ rsync | rsync: origin sent (B) | PRsync: origin sent (B) | origin bytes PRsync ÷ tree | PRsync peak RSS (KiB) |"
echo "|---|---|---|---|---|---|---|---|"
echo "| 1 puller, $FILES files | $rs1_wall | $ms1_wall | $(ratio "$ms1_wall" "$rs1_wall") | $rs1_bytes | $ms1_bytes | $(ratio "$ms1_bytes" "$tree_bytes") | $(cat ms1.rss) |"
echo "| 4 at once | $rs4_wall | $ms4_wall | $(ratio "$ms4_wall" "$rs4_wall") | $rs4_bytes | $ms4_bytes | $(ratio "$ms4_bytes" "$tree_bytes") | ${rss4:-?} (a volunteer daemon) |"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
trap - EXIT
LOGS=/tmp/mirrorswarm-bench-small-logs
mkdir -p "$LOGS" && cp "$WORK"/*.log "$LOGS/"
cd /
if [ "$TMPFS" = 1 ]; then umount "$WORK"; fi
rm -rf "$WORK"
echo "(logs in $LOGS)"
