#!/usr/bin/env bash
# kitt's streaming client ceiling next to oha's, on the same instant loopback SSE handler
# (../shared/bench/loopback: nginx, one worker). Needs nginx and oha (`cargo install oha`) and a
# release kitt (`cargo build --release`).
#
#   scripts/bench-loopback.sh            # oha's and kitt's req/s, kitt's TTFT/ITL at c=64, and the
#                                        # CPU time each client and the handler spent per request
#   scripts/bench-loopback.sh clients    # oha's req/s, then one cell's req/s from 1 and from 2 kitt
#                                        # client processes (64 streams in all), and the shards'
#                                        # start errors
# Req/s drifts with whatever else the machine runs; CPU time per request is the steadier figure.
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
# CPU seconds (user + system) a process has used so far, from /proc.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
worker="$(pgrep -P "$(cat /tmp/kitt-loopback/nginx.pid)" | head -1)"
times="$(mktemp)"

n0="$(cpu_of "$worker")"
/usr/bin/time -f '%U %S' -o "$times" "$oha" -z 5s -c 64 --no-tui -m POST -d '{"stream":true}' \
  --output-format json http://127.0.0.1:18080/v1/completions 2>/dev/null >"$times.json"
n1="$(cpu_of "$worker")"
requests="$(j "d['summary']['successRate'] and round(d['summary']['requestsPerSec'] * d['summary']['total'])" <"$times.json")"
echo "oha  c=64, 5 s: $(j "round(d['summary']['requestsPerSec'])" <"$times.json") req/s;" \
  "CPU per request: oha $(awk -v r="$requests" '{printf "%.1f", ($1 + $2) * 1e6 / r}' "$times") µs," \
  "nginx $(awk -v a="$n0" -v b="$n1" -v r="$requests" 'BEGIN {printf "%.1f", (b - a) * 1e6 / r}') µs"

if [ "${1:-}" = clients ]; then
  runs="$(mktemp -d)"
  KITT_RUNS_DIR="$runs" KITT_HOST_LOCK="$runs/lock" KITT_STORE=off "$kitt" --quiet apply scripts/loopback/clients.yaml >/dev/null
  result="$(ls -d "$runs"/*/)report/result.json"
  j "'\n'.join('kitt c=64 from %s client(s), %d requests: %.0f req/s (%.2fx oha), TTFT p99 %.3f ms%s' % (
    c['cell']['swept']['clients'], c['metrics']['requests'], c['metrics']['request_throughput'],
    c['metrics']['request_throughput'] / $(j "d['summary']['requestsPerSec']" <"$times.json"), c['metrics']['ttft_ms']['p99'],
    ('; start errors %s ms, clock offsets %s ms' % (
      [round(s['start_error_ms'], 3) for s in c['metrics']['clients']['shards']],
      [round(s['clock_offset_ms'], 4) for s in c['metrics']['clients']['shards']])) if 'clients' in c['metrics'] else '')
    for c in d['cells'])" <"$result"
  rm -rf "$runs" "$times" "$times.json"
  exit 0
fi

runs="$(mktemp -d)"
n0="$(cpu_of "$worker")"
KITT_RUNS_DIR="$runs" KITT_HOST_LOCK="$runs/lock" KITT_STORE=off /usr/bin/time -f '%U %S' -o "$times" \
  "$kitt" --quiet apply scripts/loopback/suite.yaml >/dev/null
n1="$(cpu_of "$worker")"
result="$(ls -d "$runs"/*/)report/result.json"
requests="$(j "d['cells'][0]['metrics']['requests']" <"$result")"
j "'kitt c=64, %d requests: %.0f req/s, TTFT mean %.3f ms p99 %.3f ms, ITL mean %.4f ms, %.0f events/s parsed' % (
  d['cells'][0]['metrics']['requests'], d['cells'][0]['metrics']['request_throughput'],
  d['cells'][0]['metrics']['ttft_ms']['mean'], d['cells'][0]['metrics']['ttft_ms']['p99'],
  d['cells'][0]['metrics']['itl_ms']['mean'],
  (d['cells'][0]['metrics']['output_tokens']['events_total'] + 2 * d['cells'][0]['metrics']['requests']) / d['cells'][0]['metrics']['duration_s'])" \
  <"$result"
echo "kitt CPU per request (whole run: plan, prompts, window, records, report): kitt" \
  "$(awk -v r="$requests" '{printf "%.1f", ($1 + $2) * 1e6 / r}' "$times") µs," \
  "nginx $(awk -v a="$n0" -v b="$n1" -v r="$requests" 'BEGIN {printf "%.1f", (b - a) * 1e6 / r}') µs"
rm -rf "$runs" "$times" "$times.json"
