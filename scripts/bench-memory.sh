#!/usr/bin/env bash
# Peak memory of kitt for a cell of 10,000 and of 1,000,000 requests against the instant loopback
# SSE handler of ../shared/bench/loopback (nginx, one worker): records go to disk as they finish
# and metrics are tallied one request at a time, so the two should be within 50 MB. Needs nginx and
# a release kitt (`cargo build --release`).
#
#   scripts/bench-memory.sh              # prints peak RSS for both cells and the difference
set -euo pipefail
cd "$(dirname "$0")/.."
shared="$(cd .. && pwd)/shared/bench/loopback"
kitt="$(readlink -f "${KITT:-target/release/kitt}")"
mkdir -p /tmp/kitt-loopback
[ -f /tmp/kitt-loopback/nginx.pid ] && kill "$(cat /tmp/kitt-loopback/nginx.pid)" 2>/dev/null || true
sleep 0.3
nginx -c "$shared/nginx.conf"
work="$(mktemp -d)"
trap 'kill "$(cat /tmp/kitt-loopback/nginx.pid)" 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 0.5
peak() {
  sed "s/requests: [0-9]*,/requests: $1,/" scripts/loopback/suite.yaml > "$work/suite.yaml"
  cp scripts/loopback/loopback-engine.yaml "$work/"
  rm -rf "$work/runs"
  KITT_RUNS_DIR="$work/runs" KITT_HOST_LOCK="$work/lock" KITT_STORE=off \
    /usr/bin/time -f %M -o "$work/rss" "$kitt" --quiet apply "$work/suite.yaml" >/dev/null
  lines=$(cat "$work"/runs/*/steps/*/requests.jsonl | wc -l)
  [ "$lines" -eq "$1" ] || { echo "expected $1 records, found $lines" >&2; exit 1; }
  echo $(( $(cat "$work/rss") / 1024 ))
}
small=$(peak 10000)
large=$(peak 1000000)
echo "peak RSS: 10,000 requests ${small} MB, 1,000,000 requests ${large} MB, difference $((large - small)) MB"
