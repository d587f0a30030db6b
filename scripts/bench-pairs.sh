#!/usr/bin/env bash
# Two kitt builds side by side on the instant loopback SSE handler (../shared/bench/loopback:
# nginx, one worker), in alternating pairs, so drift of the shared machine hits both alike:
# each pair runs the baseline, then the candidate, on the same client-ceiling cell
# (scripts/loopback/suite.yaml: concurrency 64, every event parsed). Prints each run's req/s and
# kitt's CPU time per request (user + system, whole run), each pair's ratio, the median ratio and
# the median CPU difference per request. Needs nginx and two release builds.
#
#   scripts/bench-pairs.sh BASELINE_KITT CANDIDATE_KITT [PAIRS=5] [REQUESTS=100000]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,8p "$0" >&2; exit 2; }
baseline="$(readlink -f "$1")"
candidate="$(readlink -f "$2")"
pairs="${3:-5}"
requests="${4:-100000}"
shared="$(cd .. && pwd)/shared/bench/loopback"
work="$(mktemp -d)"
mkdir -p /tmp/kitt-loopback
[ -f /tmp/kitt-loopback/nginx.pid ] && kill "$(cat /tmp/kitt-loopback/nginx.pid)" 2>/dev/null || true
sleep 0.3
nginx -c "$shared/nginx.conf"
trap 'kill "$(cat /tmp/kitt-loopback/nginx.pid)" 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 0.5
cp scripts/loopback/loopback-engine.yaml "$work/"
sed "s/requests: 400000/requests: $requests/" scripts/loopback/suite.yaml >"$work/suite.yaml"

# "REQ_PER_S CPU_NS_PER_REQUEST" of one run of `$1`.
rate() {
  local runs="$work/runs-$RANDOM"
  KITT_RUNS_DIR="$runs" KITT_HOST_LOCK="$runs/lock" KITT_STORE=off /usr/bin/time -f '%U %S' -o "$work/time" \
    "$1" --quiet apply "$work/suite.yaml" >/dev/null
  python3 -c "
import json, sys
m = json.load(open(sys.argv[1]))['cells'][0]['metrics']
user, system = map(float, open(sys.argv[2]).read().split()[-2:])
print(round(m['request_throughput']), round((user + system) * 1e9 / m['requests']))" \
    "$(ls -d "$runs"/*/)report/result.json" "$work/time"
  rm -rf "$runs"
}

ratios=()
cpu=()
for i in $(seq 1 "$pairs"); do
  read -r a ca <<<"$(rate "$baseline")"
  read -r b cb <<<"$(rate "$candidate")"
  r="$(python3 -c "print(f'{$b / $a:.3f}')")"
  ratios+=("$r")
  cpu+=("$((cb - ca))")
  echo "pair $i: baseline $a req/s ($ca ns CPU/request), candidate $b req/s ($cb ns CPU/request), ratio $r"
done
python3 -c "import statistics,sys; print('median ratio (candidate / baseline):', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"
python3 -c "import statistics,sys; print('median CPU difference per request (candidate − baseline):', statistics.median(map(int, sys.argv[1:])), 'ns')" "${cpu[@]}"
