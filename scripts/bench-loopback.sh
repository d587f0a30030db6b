#!/usr/bin/env bash
# kitt's streaming client ceiling next to oha's, on the same instant loopback SSE handler
# (../shared/bench/loopback: nginx, one worker). Needs nginx and oha (`cargo install oha`) and a
# release kitt (`cargo build --release`).
#
#   scripts/bench-loopback.sh            # prints oha's and kitt's req/s and kitt's TTFT/ITL at c=64
set -euo pipefail
cd "$(dirname "$0")/.."
shared="$(cd .. && pwd)/shared/bench/loopback"
kitt="$(readlink -f "${KITT:-target/release/kitt}")"
oha="$(command -v oha || echo ~/.cargo/bin/oha)"
mkdir -p /tmp/kitt-loopback
[ -f /tmp/kitt-loopback/nginx.pid ] && kill "$(cat /tmp/kitt-loopback/nginx.pid)" 2>/dev/null || true
sleep 0.3
nginx -c "$shared/nginx.conf"
trap 'kill "$(cat /tmp/kitt-loopback/nginx.pid)" 2>/dev/null || true' EXIT
sleep 0.5
j() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
echo "oha  c=64, 10 s: $("$oha" -z 10s -c 64 --no-tui -m POST -d '{"stream":true}' --output-format json \
  http://127.0.0.1:18080/v1/completions 2>/dev/null | j "round(d['summary']['requestsPerSec'])") req/s"
runs="$(mktemp -d)"
KITT_RUNS_DIR="$runs" KITT_HOST_LOCK="$runs/lock" "$kitt" --quiet apply scripts/loopback/suite.yaml >/dev/null
j "'kitt c=64, %d requests: %.0f req/s, TTFT mean %.3f ms p99 %.3f ms, ITL mean %.4f ms, %.0f events/s parsed' % (
  d['cells'][0]['metrics']['requests'], d['cells'][0]['metrics']['request_throughput'],
  d['cells'][0]['metrics']['ttft_ms']['mean'], d['cells'][0]['metrics']['ttft_ms']['p99'],
  d['cells'][0]['metrics']['itl_ms']['mean'],
  (d['cells'][0]['metrics']['output_tokens']['events_total'] + 2 * d['cells'][0]['metrics']['requests']) / d['cells'][0]['metrics']['duration_s'])" \
  < "$(ls -d "$runs"/*/)report/result.json"
rm -rf "$runs"
