#!/usr/bin/env bash
# kitt serve over a store of N results: start to first 200, /api/v1/results pages under wrk
# (unfiltered, filtered, and a deep keyset page), each for DURATION with 16 connections, and
# /api/v1/compare of two real sim runs of one 10,000-request cell each.
#   scripts/bench-serve.sh [KITT] [N] [DURATION]     (default: target/release/kitt, 10000, 10s)
set -euo pipefail
KITT=$(realpath "${1:-target/release/kitt}")
N=${2:-10000}
DURATION=${3:-10s}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# One run of N cells (the shape of scripts/bench-store.sh's), indexed into a fresh store.
python3 - "$work/run" "$N" <<'PY'
import json, os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{d}/report")
cells = [{"schema": "kitt.result/v1",
          "cell": {"model": "tiny", "engine": "sim" if c % 2 else "other", "engine_template": "sim", "benchmark": "tput",
                   "template": "throughput", "params": {"concurrency": c, "requests": 8},
                   "swept": {"concurrency": c}, "run_index": 0, "sampling": {"temperature": 0.0}},
          "status": "ok",
          "metrics": {"requests": 8, "errors": 0, "request_throughput": 10.0 + c, "ttft_ms": {"p50": 20.0, "p99": 30.0}},
          "provenance": {"run_id": "bench", "key": f"bench-key-{c}", "attempt": 0, "reused": False,
                         "started_unix_ns": 1_790_000_000_000_000_000 + c, "finished_unix_ns": 1_790_000_000_500_000_000 + c,
                         "facts": {"engine.version": "kitt-sim 0.1.0", "machine": "bench", "machine.hash": "0123456789abcdef"},
                         "prompts_exact": True}} for c in range(n)]
json.dump({"schema": "kitt.report/v1", "run_id": "bench", "suite": "bench", "suite_file": "suite.yaml",
           "kitt_version": "0.1.0", "facts": {}, "cells": cells, "failed_cells": 0}, open(f"{d}/report/result.json", "w"))
PY
"$KITT" results import --store "$work/store.db" "$work/run" >/dev/null 2>&1

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$(date +%s%N)
KITT_TOKENS="$work/cfg/tokens.json" "$KITT" serve --bind "127.0.0.1:$port" --store "$work/store.db" \
  --runs-dir "$work/runs" 2>"$work/serve.log" &
pid=$!
until curl -sf "http://127.0.0.1:$port/api/v1/health" >/dev/null; do sleep 0.005; done
end=$(date +%s%N)
echo "start to first 200 (curl polling every 5 ms): $(( (end - start) / 1000000 )) ms"
T=$(cat "$work/cfg/web-token")
for q in "limit=100" "limit=100&engine=sim&suite=bench" "limit=100&after=$((N / 2))"; do
  echo "== /api/v1/results?$q"
  wrk -t2 -c16 -d"$DURATION" --latency -H "Authorization: Bearer $T" "http://127.0.0.1:$port/api/v1/results?$q" |
    grep -E "Requests/sec|Latency  |  (50|90|99)%"
done

# Two real runs of one 10,000-request cell on the simulator, indexed into the served store.
cat >"$work/compare.yaml" <<'YAML'
apiVersion: kitt/v1
kind: Suite
metadata: {name: compare-bench}
spec:
  models: [{name: tiny}]
  engines: [{name: sim, template: sim, params: {ttft_ms: 1, itl_ms: 0, tokens_per_chunk: 4}}]
  benchmarks: [{name: tput, template: throughput, params: {concurrency: 64, requests: 10000, max_tokens: 4, input_tokens: 16}}]
  warmup: {requests: 0}
YAML
runs=()
for _ in 1 2; do
  runs+=("$(KITT_STORE="$work/store.db" KITT_RUNS_DIR="$work/runs" KITT_HOST_LOCK="$work/host.lock" \
    "$KITT" apply "$work/compare.yaml" --fresh -q --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')")
done
echo "== /api/v1/compare?a=${runs[0]}&b=${runs[1]} (two runs of one 10,000-request cell), 10 requests"
for _ in $(seq 10); do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "Authorization: Bearer $T" \
    "http://127.0.0.1:$port/api/v1/compare?a=${runs[0]}&b=${runs[1]}"
done | sort -k2 -n | awk '{ t[NR] = $2 * 1000; code = $1 } END { printf "status %s, min %.1f ms, median %.1f ms, max %.1f ms\n", code, t[1], t[int((NR + 1) / 2)], t[NR] }'
