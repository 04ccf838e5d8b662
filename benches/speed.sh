#!/usr/bin/env bash
# Benchmark: the serving paths against the best servers of their kind, side by side in one run:
# redirects against nginx `return 302`, announces against opentracker, volunteer file serving
# against nginx with sendfile, publish hashing against sha256sum, server memory per manifest
# entry and an unchanged republish of a 1,000,000-file tree.
#
# Usage: bash benches/speed.sh [mirrorswarm-lab bench speed options]
#   e.g. bash benches/speed.sh --parts redirect --files 200000
# Needs: nginx, opentracker, wrk (installed with apt-get when missing); run as root (opentracker
# starts as root and drops to its own user). Writes speed-results.md/.csv to the work directory
# (--work, default /tmp/mirrorswarm-speed). Nothing else should run on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in nginx:nginx opentracker:opentracker wrk:wrk taskset:util-linux sha256sum:coreutils; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
cargo build --release --quiet
# The lab runs the product binary beside it: run copies of both, so a rebuild meanwhile
# cannot swap them underneath.
DIR=$(mktemp -d)
cp target/release/mirrorswarm target/release/mirrorswarm-lab "$DIR"/
exec "$DIR"/mirrorswarm-lab bench speed "$@"
