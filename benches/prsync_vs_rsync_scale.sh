#!/usr/bin/env bash
# Benchmark: no-op and 1 % pulls of a tree of millions of files, PRsync against rsync, side by
# side in one run.
#
# Tree: FILES files of 1–8 bytes in FILES/1000 directories (default 2,200,000, the paper's
# repository). The server and an rsync daemon both serve it. PRsync's copy is a `cp -a` that
# a first pull adopts (every file listed: nothing fetched); rsync's is another `cp -a`.
#  1. no-op: both trees already hold the generation (twice, each tool first once);
#  2. 1 %: every hundredth file rewritten, a new generation published, both pull it.
# Reported: wall time and peak RSS of each pull (GNU time), and the ratios. PRsync's no-op and
# 1 % pulls take the manifest delta since the generation the tree holds.
#
# On disk, not tmpfs (three copies of millions of 4 KiB blocks). Nothing is deleted between
# runs (see prsync_vs_rsync_small.sh on this ext4); the work directory stays for the next run
# (`rm -rf` it, then wait a minute before benchmarking again).
#
# Usage: bash benches/prsync_vs_rsync_scale.sh        (FILES=100000 for a short run)
# Needs: rsync, GNU time, curl, python3 (rsync and time installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FILES=${FILES:-2200000}
WORK=${BENCH_DIR:-/var/tmp/mirrorswarm-bench-scale-$FILES}
BIN=$ROOT/target/release/mirrorswarm

for tool in rsync:rsync /usr/bin/time:time; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${tool##*:}"; }
done
cargo build --release --quiet --bin mirrorswarm

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
python3 - "$FILES" <<'PY'
import os, random, sys
n = int(sys.argv[1]); random.seed(5)
dirs = max(1, n // 1000)
for d in range(dirs):
    os.makedirs(f"tree/pool/d{d:05d}", exist_ok=True)
for i in range(n):
    with open(f"tree/pool/d{i % dirs:05d}/f{i:08d}", "wb") as f:
        f.write(random.randbytes(random.randint(1, 8)))
PY
echo "tree: $FILES files"
cp -a tree prsync-dest
cp -a tree rsync-dest

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SP=$(port); RP=$(port)
"$BIN" server --listen "127.0.0.1:$SP" --data-dir data --repo scale="$WORK/tree" 2> server.log & PIDS+=($!)
cat > rsyncd.conf <<CONF
use chroot = no
[repo]
path = $WORK/tree
read only = yes
CONF
rsync --daemon --no-detach --port "$RP" --address 127.0.0.1 --config rsyncd.conf & PIDS+=($!)
# The first publish hashes every file: minutes for millions.
for _ in $(seq 1 3600); do curl -fs "http://127.0.0.1:$SP/health" >/dev/null && break; sleep 1; done
curl -fs "http://127.0.0.1:$SP/health" >/dev/null || { echo "server did not start"; tail server.log; exit 1; }

PRSYNC=("$BIN" prsync pull --server "http://127.0.0.1:$SP" --repo scale --dest prsync-dest --linger-secs 0 --json)
RSYNC=(rsync -a --delete --stats "rsync://127.0.0.1:$RP/repo/" rsync-dest/)
# Adopt the copy (untimed): every file is hashed once and recorded.
"${PRSYNC[@]}" > adopt.json 2> adopt.log
"${RSYNC[@]}" > /dev/null

rows=()
timed() { # NAME CMD...: "<wall s> <peak RSS KiB>"
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %M" -o "$name.time" "$@" > "$name.out" 2> "$name.err" || { echo "$name failed" >&2; tail "$name.err" >&2; exit 1; }
  cat "$name.time" | tail -1
}
pair() { # CASE FIRST(prsync|rsync)
  local pr rs
  local tag=${1// /-}
  if [ "$2" = prsync ]; then pr=$(timed "$tag-prsync" "${PRSYNC[@]}"); rs=$(timed "$tag-rsync" "${RSYNC[@]}")
  else rs=$(timed "$tag-rsync" "${RSYNC[@]}"); pr=$(timed "$tag-prsync" "${PRSYNC[@]}"); fi
  read -r rs_wall rs_rss <<< "$rs"; read -r pr_wall pr_rss <<< "$pr"
  rows+=("| $1, $2 first | $rs_wall | $pr_wall | $(python3 -c "print(f'{$pr_wall/$rs_wall:.2f}')") | $rs_rss | $pr_rss |")
  echo "${rows[-1]}"
}
pair no-op prsync
pair no-op rsync

python3 - <<'PY'
import os
n = 0
for root, _, files in os.walk("tree"):
    for name in files:
        if int(name[1:]) % 100 == 0:
            with open(os.path.join(root, name), "wb") as f:
                f.write(os.urandom(12))
            n += 1
print(f"1 %: {n} files rewritten")
PY
"$BIN" publish --data-dir data > /dev/null
pair "1 % changed" prsync
diff -rq -x .mirrorswarm tree prsync-dest > /dev/null || { echo "prsync-dest differs from the tree"; exit 1; }
diff -rq tree rsync-dest > /dev/null || { echo "rsync-dest differs from the tree"; exit 1; }

echo
echo "| case | rsync: wall (s) | PRsync: wall (s) | PRsync ÷ rsync | rsync peak RSS (KiB) | PRsync peak RSS (KiB) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
