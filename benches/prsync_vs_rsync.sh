#!/usr/bin/env bash
# Benchmark: PRsync against rsync on the same data, side by side in one run.
#
# Corpus: consecutive versions of real packages from PyPI (pip download) plus two 64 MiB
# "disk images" that get local edits. N volunteers hold version 1; the origin publishes
# version 2; all N sync at once. Reported per tool and N: bytes the origin sent, wall time,
# and for PRsync the peak RSS of one pull.
#
# Usage: bash benches/prsync_vs_rsync.sh [N ...]      (default: 1 8)
# Needs: rsync and GNU time (installed with apt-get when missing), network to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
COUNTS=("${@:-1 8}")
[ "$#" -eq 0 ] && COUNTS=(1 8)
WORK=${BENCH_DIR:-/tmp/mirrorswarm-bench}
BIN=$ROOT/target/release/mirrorswarm

for tool in rsync:rsync /usr/bin/time:time; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${tool##*:}"; }
done
cargo build --release --quiet

rm -rf "$WORK" && mkdir -p "$WORK"
cd "$WORK"

# --- corpus ---------------------------------------------------------------------------------
V1=(numpy==1.26.3 pandas==2.1.3 pip==23.3.1 setuptools==69.0.2 requests==2.31.0 urllib3==2.1.0 cryptography==41.0.5)
V2=(numpy==1.26.4 pandas==2.1.4 pip==23.3.2 setuptools==69.0.3 requests==2.32.0 urllib3==2.2.0 cryptography==41.0.7)
pipdl() { pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 -d "$1" "${@:2}"; }
pipdl v1/pypi "${V1[@]}"
pipdl v2/pypi "${V2[@]}"
mkdir -p v1/images v2/images
python3 - <<'PY'
import os, random
random.seed(7)
for name in ("disk1.img", "disk2.img"):
    data = bytearray(os.urandom(64 << 20))
    open(f"v1/images/{name}", "wb").write(data)
    # local edits: twenty 4 KiB regions rewritten, 64 KiB inserted in the middle, 1 MiB appended
    for _ in range(20):
        at = random.randrange(0, len(data) - 4096)
        data[at:at + 4096] = os.urandom(4096)
    mid = len(data) // 2
    data[mid:mid] = os.urandom(64 << 10)
    data += os.urandom(1 << 20)
    open(f"v2/images/{name}", "wb").write(data)
PY
corpus_v1=$(du -sb v1 | cut -f1); corpus_v2=$(du -sb v2 | cut -f1)
echo "corpus: v1 $corpus_v1 B, v2 $corpus_v2 B ($(ls v2/pypi | wc -l) wheels, 2 images)"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
results=()

for N in "${COUNTS[@]}"; do
  # --- rsync: a daemon serves version 2, N clients with version 1 pull at once ------------
  rm -rf rs && mkdir -p rs
  cp -a v2 rs/origin
  for i in $(seq 1 "$N"); do cp -a v1 "rs/dest$i"; done
  RP=$(port)
  cat > rs/rsyncd.conf <<CONF
use chroot = no
[repo]
path = $WORK/rs/origin
read only = yes
CONF
  rsync --daemon --no-detach --port "$RP" --address 127.0.0.1 --config rs/rsyncd.conf & RSD=$!
  sleep 1
  t0=$(now)
  for i in $(seq 1 "$N"); do
    rsync -a --delete --fuzzy --stats "rsync://127.0.0.1:$RP/repo/" "rs/dest$i/" > "rs/stats$i.txt" &
  done
  wait $(jobs -p | grep -v "^$RSD$") 2>/dev/null || true
  t1=$(now)
  kill $RSD; wait $RSD 2>/dev/null || true
  rs_bytes=0
  for i in $(seq 1 "$N"); do
    b=$(grep "Total bytes received" "rs/stats$i.txt" | tr -dc '0-9')
    rs_bytes=$((rs_bytes + b))
    diff -r rs/origin "rs/dest$i" >/dev/null || { echo "rsync dest$i differs"; exit 1; }
  done
  rs_wall=$(python3 -c "print(f'{$t1-$t0:.2f}')")

  # --- PRsync: the server publishes version 2, N volunteers' trees with version 1 pull at once
  rm -rf ms && mkdir -p ms
  cp -a v1 ms/repo
  SP=$(port)
  "$BIN" server --listen "127.0.0.1:$SP" --data-dir ms/data --repo bench=ms/repo 2> ms/server.log & SRV=$!
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$SP/health" >/dev/null && break; sleep 0.2; done
  for i in $(seq 1 "$N"); do cp -a v1 "ms/dest$i"; done
  # Adopt version 1 in every tree (all unchanged: nothing is transferred).
  for i in $(seq 1 "$N"); do "$BIN" prsync pull --server "http://127.0.0.1:$SP" --repo bench --dest "ms/dest$i" > /dev/null 2>&1; done
  rm -rf ms/repo && cp -a v2 ms/repo
  "$BIN" publish --data-dir ms/data > /dev/null
  before=$(curl -fs "http://127.0.0.1:$SP/api/stats")
  t0=$(now)
  for i in $(seq 1 "$N"); do
    /usr/bin/time -f "%M" -o "ms/rss$i.txt" "$BIN" prsync pull --json --server "http://127.0.0.1:$SP" --repo bench --dest "ms/dest$i" > "ms/sum$i.json" 2> "ms/pull$i.log" &
  done
  wait $(jobs -p | grep -v "^$SRV$") 2>/dev/null || true
  t1=$(now)
  after=$(curl -fs "http://127.0.0.1:$SP/api/stats")
  kill $SRV; wait $SRV 2>/dev/null || true
  for i in $(seq 1 "$N"); do
    diff -r -x .mirrorswarm v2 "ms/dest$i" >/dev/null || { echo "prsync dest$i differs"; tail ms/pull$i.log; exit 1; }
  done
  ms_bytes=$(python3 -c "
import json; a=json.loads('''$before'''); b=json.loads('''$after''')
print(sum(b[k]-a[k] for k in ('seed_uploaded_bytes','origin_http_bytes')))")
  ms_wall=$(python3 -c "print(f'{$t1-$t0:.2f}')")
  rss=$(sort -n ms/rss*.txt | tail -1)
  peers=$(python3 -c "
import json,glob; print(sum(json.load(open(f))['from_peers_bytes'] for f in glob.glob('ms/sum*.json')))")
  results+=("| $N | $rs_bytes | $rs_wall | $ms_bytes | $ms_wall | $(python3 -c "print(f'{$rs_bytes/max($ms_bytes,1):.1f}')") | $peers | $rss |")
  echo "N=$N: rsync origin sent $rs_bytes B in $rs_wall s; prsync origin sent $ms_bytes B in $ms_wall s (peers gave $peers B), peak RSS ${rss} KiB"
done

echo
echo "Corpus: version 1 = $corpus_v1 B, version 2 = $corpus_v2 B"
echo
echo "| volunteers | rsync: origin sent (B) | rsync: wall (s) | PRsync: origin sent (B) | PRsync: wall (s) | origin bytes rsync ÷ PRsync | PRsync: from peers (B) | PRsync: peak RSS of one pull (KiB) |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
