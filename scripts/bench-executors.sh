#!/usr/bin/env bash
# The cost of placing units on child processes: the quickstart (examples/quickstart.yaml, the
# simulator, one unit) run N times with `--executor local` and N times with `--executor
# processes --workers 1`, alternating, each a fresh run in a scratch runs directory. Prints each
# run's wall time, both medians and their difference divided by the number of units (the
# per-unit overhead of `processes`). With `cell` as third argument the suite is cut per cell
# (three units) instead.
#
#   scripts/bench-executors.sh KITT_BINARY [N=5] [group|cell]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,9p "$0" >&2; exit 2; }
kitt="$(readlink -f "$1")"
n="${2:-5}"
granularity="${3:-group}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp examples/quickstart.yaml "$work/suite.yaml"
echo "  execution: {granularity: $granularity}" >>"$work/suite.yaml"
export KITT_RUNS_DIR="$work/runs" KITT_STORE=off KITT_HOST_LOCK="$work/host.lock" NO_COLOR=1
units="$("$kitt" plan "$work/suite.yaml" --units --output json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"

# Wall milliseconds of one fresh run with executor `$1`.
once() {
  local start end
  start=$(date +%s%N)
  "$kitt" -q apply "$work/suite.yaml" --fresh --executor "$1" --workers 1 >/dev/null 2>&1 || { echo "kitt apply --executor $1 failed" >&2; exit 1; }
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}

local_ms=()
processes_ms=()
for i in $(seq "$n"); do
  local_ms+=("$(once local)")
  processes_ms+=("$(once processes)")
  echo "pair $i: local ${local_ms[-1]} ms, processes ${processes_ms[-1]} ms"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ml="$(median "${local_ms[@]}")"
mp="$(median "${processes_ms[@]}")"
echo "units: $units; median local $ml ms, processes $mp ms; overhead per unit $(( (${mp%.*} - ${ml%.*}) / units )) ms"
