#!/usr/bin/env bash
# kitt serve's pages over a store of N generated results: the server's time for `/`, `/results`
# and a filtered `/results` (curl, REQUESTS sequential requests each, p50/p95/max of the whole
# answer on loopback), the load event of each page in headless Chromium (tests/web.rs's
# DevTools client, `bench_load_event_times`), and the bytes of the assets a page loads.
#   scripts/bench-web.sh [KITT] [N] [REQUESTS]     (default: target/release/kitt, 10000, 200)
set -euo pipefail
KITT=$(realpath "${1:-target/release/kitt}")
N=${2:-10000}
REQUESTS=${3:-200}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# One run of N cells over 4 models, 2 engines and 2 benchmarks (every 50th failed), indexed
# into a fresh store.
python3 - "$work/run" "$N" <<'PY'
import json, os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{d}/report")
def cell(c):
    failed = c % 50 == 49
    return {"schema": "kitt.result/v1",
            "cell": {"model": f"model-{c % 4}", "engine": "sim" if c % 2 else "other", "engine_template": "sim",
                     "benchmark": "tput" if c % 3 else "latency", "template": "throughput",
                     "params": {"concurrency": c, "requests": 8}, "swept": {"concurrency": c}, "run_index": 0,
                     "sampling": {"temperature": 0.0}},
            "status": "failed" if failed else "ok", **({"error": "every request failed"} if failed else {}),
            "metrics": {"requests": 8, "errors": 8 if failed else 0, "request_throughput": 10.0 + c,
                        "output_token_throughput": 100.0 + c,
                        "ttft_ms": {"min": 10.0, "p50": 20.0, "p90": 25.0, "p95": 27.0, "p99": 30.0, "max": 31.0},
                        "e2e_ms": {"min": 40.0, "p50": 50.0, "p90": 55.0, "p95": 57.0, "p99": 60.0, "max": 61.0}},
            "provenance": {"run_id": "bench", "key": f"bench-key-{c}", "attempt": 0, "reused": False,
                           "started_unix_ns": 1_790_000_000_000_000_000 + c, "finished_unix_ns": 1_790_000_000_500_000_000 + c,
                           "facts": {"engine.version": "kitt-sim 0.1.0", "machine": "bench", "machine.hash": "0123456789abcdef"},
                           "prompts_exact": True}}
json.dump({"schema": "kitt.report/v1", "run_id": "bench", "suite": "bench", "suite_file": "suite.yaml",
           "kitt_version": "0.1.0", "facts": {}, "cells": [cell(c) for c in range(n)], "failed_cells": 0},
          open(f"{d}/report/result.json", "w"))
PY
"$KITT" results import --store "$work/store.db" "$work/run" >/dev/null 2>&1

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KITT_TOKENS="$work/cfg/tokens.json" "$KITT" serve --bind "127.0.0.1:$port" --store "$work/store.db" \
  --runs-dir "$work/runs" 2>"$work/serve.log" &
pid=$!
until curl -sf "http://127.0.0.1:$port/api/v1/health" >/dev/null; do sleep 0.01; done
T=$(cat "$work/cfg/web-token")
pages=("/" "/results" "/results?engine=sim&benchmark=tput&model=model-1")
for p in "${pages[@]}"; do
  url="http://127.0.0.1:$port$p"
  code=$(curl -s -o "$work/page" -w '%{http_code}' -H "Cookie: kitt_token=$T" "$url")
  [ "$code" = 200 ] || { echo "$p answered $code"; cat "$work/page"; exit 1; }
  bytes=$(wc -c <"$work/page")
  for _ in $(seq 5); do curl -s -o /dev/null -H "Cookie: kitt_token=$T" "$url"; done
  for _ in $(seq "$REQUESTS"); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "Cookie: kitt_token=$T" "$url"
  done | sort -n | awk -v p="$p" -v b="$bytes" '{ t[NR] = $1 * 1000 } END {
    i95 = int(NR * 0.95 + 0.999); printf "server %s: p50 %.1f ms, p95 %.1f ms, max %.1f ms (%d requests; page %d bytes)\n", p, t[int((NR + 1) / 2)], t[i95], t[NR], NR, b }'
done
assets=0
for a in /assets/app.css /assets/app.js /assets/icon.svg; do
  assets=$(( assets + $(curl -s "http://127.0.0.1:$port$a" | wc -c) ))
done
echo "assets: $assets bytes (app.css, app.js, icon.svg)"
KITT_BENCH_URL="http://127.0.0.1:$port" KITT_BENCH_TOKEN="$T" KITT_BENCH_PATHS="${pages[*]}" \
  cargo test -q --test web bench_load_event_times -- --ignored --exact --nocapture 2>/dev/null | grep '^load event'
