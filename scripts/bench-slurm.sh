#!/usr/bin/env bash
# The Slurm executor's numbers, on a private single-host cluster (scripts/slurm-cluster.sh):
#  1. submitting 100 units (`kitt apply --detach` of a 100-cell suite cut per cell): wall time, and
#     the sbatch calls it made;
#  2. squeue calls while a 12-unit run is driven, against the number of polls its length allows;
#  3. per-unit overhead of `slurm` against `local` (the quickstart cut per cell: three units, one
#     at a time on both: `isolation: host` is `--exclusive` on Slurm);
#  4. a node set down mid-unit: from `scontrol update state=down` until the requeued task's
#     `kitt work` claimed its attempt, split into Slurm's hold and kitt's part.
# Needs root (slurmd) and Debian's slurmd slurmctld slurm-client munge.
#
#   scripts/bench-slurm.sh KITT_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,11p "$0" >&2; exit 2; }
kitt="$(readlink -f "$1")"
work="$(mktemp -d)"
cluster="$work/cluster"
trap 'scancel --user root --full >/dev/null 2>&1 || true; scripts/slurm-cluster.sh stop "$cluster"; rm -rf "$work"' EXIT
eval "$(scripts/slurm-cluster.sh start "$cluster")"
export SLURM_CONF KITT_STORE=off KITT_HOST_LOCK="$work/host.lock" NO_COLOR=1 KITT_SLURM_POLL=500ms
shared="$work/shared"

# squeue and sbatch, counted: every call appends a line to $work/calls.
mkdir -p "$work/shim"
for tool in squeue sbatch; do
  real=$(command -v "$tool")
  printf '#!/bin/sh\necho %s >>%s\nexec %s "$@"\n' "$tool" "$work/calls" "$real" >"$work/shim/$tool"
  chmod +x "$work/shim/$tool"
done
export PATH="$work/shim:$PATH"
calls() { grep -c "^$1\$" "$work/calls" 2>/dev/null || true; }

suite() { # name cells requests itl_ms
  local cells
  cells=$(seq -s, 1 "$2")
  cat >"$work/$1.yaml" <<EOF
apiVersion: kitt/v1
kind: Suite
metadata: {name: $1}
spec:
  models: [{name: bench-$1}]
  engines: [{name: sim, template: sim, params: {tokens_per_chunk: 2, itl_ms: $4}}]
  benchmarks:
    - {name: tput, template: throughput, params: {concurrency: [$cells], requests: $3, input_tokens: 16, max_tokens: 6}}
  warmup: {requests: 0}
  execution:
    executor: slurm
    granularity: cell
    isolation: engine
    slurm: {partition: gpu, time: 10m, shared_dir: $shared}
EOF
  echo "$work/$1.yaml"
}
ms() { echo $(($(date +%s%N) / 1000000)); }

# 1. Submission of 100 units (the binary is copied to the shared directory once, before).
s=$(suite submit 100 1 1)
"$kitt" plan "$s" >/dev/null
mkdir -p "$shared/bin" && cp "$kitt" "$shared/bin/kitt-warm" # warm the page cache for the copy
: >"$work/calls"
t0=$(ms)
run=$("$kitt" -q apply "$s" --detach --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_dir"])')
t1=$(ms)
echo "submit 100 units (apply --detach, first copy of kitt): $((t1 - t0)) ms, $(calls sbatch) sbatch call(s)"
"$kitt" -q runs cancel "$run" --wait 60s >/dev/null 2>&1 || true
s2=$(suite submit2 100 1 1)
: >"$work/calls"
t0=$(ms)
run=$("$kitt" -q apply "$s2" --detach --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_dir"])')
t1=$(ms)
echo "submit 100 units (apply --detach, kitt already copied): $((t1 - t0)) ms, $(calls sbatch) sbatch call(s)"
"$kitt" -q runs cancel "$run" --wait 60s >/dev/null 2>&1 || true

# 2. One squeue per poll, whatever the number of units.
s=$(suite poll 12 4 5)
: >"$work/calls"
t0=$(ms)
"$kitt" -q apply "$s" >/dev/null 2>&1
t1=$(ms)
echo "drive 12 units for $((t1 - t0)) ms at a 500 ms poll: $(calls squeue) squeue call(s) (at most $(((t1 - t0) / 500 + 2)) polls)"

# 3. Per-unit overhead against local: the quickstart cut per cell.
cp examples/quickstart.yaml "$work/quick.yaml"
printf '  execution:\n    granularity: cell\n    isolation: host\n    slurm: {partition: gpu, time: 10m, shared_dir: %s}\n' "$shared" >>"$work/quick.yaml"
units=$("$kitt" plan "$work/quick.yaml" --units --output json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
export KITT_SLURM_POLL=200ms
for executor in local slurm local slurm local slurm; do
  t0=$(ms)
  KITT_RUNS_DIR="$work/local-runs" "$kitt" -q apply "$work/quick.yaml" --fresh --executor "$executor" >/dev/null 2>&1
  t1=$(ms)
  echo "$executor $((t1 - t0))"
done | python3 -c '
import sys, statistics
units = int(sys.argv[1])
t = {}
for line in sys.stdin:
    e, ms = line.split()
    t.setdefault(e, []).append(int(ms))
for e, v in sorted(t.items()):
    print(f"quickstart per cell, {e}: {v} ms (median {statistics.median(v):.0f})")
d = (statistics.median(t["slurm"]) - statistics.median(t["local"])) / units
print(f"per-unit overhead of slurm over local ({units} units, 200 ms poll): {d:.0f} ms")
' "$units"

# 4. A node set down mid-unit: requeued, held, run again; kitt's part from the task's start.
export KITT_SLURM_POLL=500ms
s=$(suite down 1 400 40)
"$kitt" -q apply "$s" --max-attempts 2 >/dev/null 2>&1 &
driver=$!
node=$(hostname -s)
until compgen -G "$shared/*/attempts/*/0" >/dev/null; do sleep 0.1; done
sleep 2
t0=$(date +%s%N)
scontrol update nodename="$node" state=down reason=bench
scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
until compgen -G "$shared/*/attempts/*/1" >/dev/null; do sleep 0.05; done
claim=$(python3 -c 'import glob,json; print(json.load(open(glob.glob("'"$shared"'/*/attempts/*/1")[0]))["started_unix_ns"])')
start=$(squeue -h -r -o %S | head -1)
start_ns=$(date -d "$start" +%s%N 2>/dev/null || echo 0)
echo "node down -> attempt 1 claimed: $(((claim - t0) / 1000000)) ms (job started again $(((start_ns - t0) / 1000000)) ms after the down, Slurm's hold; kitt work claimed $(((claim - start_ns) / 1000000)) ms after its start, at 1 s resolution of Slurm's start time)"
scancel --user root >/dev/null 2>&1 || true
wait "$driver" 2>/dev/null || true
