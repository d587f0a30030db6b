#!/usr/bin/env bash
# The results store on both backends: `kitt results import` of one CELLS-cell run into SQLite and
# into PostgreSQL (a private cluster on a Unix socket, started here and stopped on exit), importing
# it again, and `kitt results export --to` SQLite → PostgreSQL, first copy and again.
#   scripts/bench-store.sh [KITT] [CELLS]     (default: target/release/kitt, 2000)
set -euo pipefail
KITT=$(realpath "${1:-target/release/kitt}")
CELLS=${2:-2000}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d)
pg_pid=
cleanup() { [ -n "$pg_pid" ] && kill -QUIT "$pg_pid" 2>/dev/null && wait "$pg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
as_pg=()
if [ "$(id -u)" = 0 ]; then chown nobody "$work"; as_pg=(setpriv --reuid=nobody --regid=nogroup --clear-groups); fi
mkdir -p "$work/sock" && chown --reference="$work" "$work/sock"
"${as_pg[@]}" "$BIN/initdb" -D "$work/data" -A trust -U kitt --no-sync --no-instructions >/dev/null
"${as_pg[@]}" "$BIN/postgres" -D "$work/data" -k "$work/sock" -p 5432 -h '' -c shared_buffers=64MB >"$work/pg.log" 2>&1 &
pg_pid=$!
dsn() { echo "postgresql://kitt@$(echo "$work/sock" | sed 's|/|%2F|g'):5432/$1"; }
for _ in $(seq 100); do [ -S "$work/sock/.s.PGSQL.5432" ] && break; sleep 0.1; done
sleep 0.3

# One run of CELLS cells (the shape of tests/store.rs's reports).
python3 - "$work/run" "$CELLS" <<'PY'
import json, os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{d}/report")
cells = [{"schema": "kitt.result/v1",
          "cell": {"model": "tiny", "engine": "sim", "engine_template": "sim", "benchmark": "tput",
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

"${as_pg[@]}" "$BIN/psql" -h "$work/sock" -U kitt -d postgres -qc 'CREATE DATABASE a' -c 'CREATE DATABASE b'
t() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo "$(( (e - s) / 1000000 )) ms"; }
echo "import $CELLS cells into SQLite:            $(t "$KITT" results import --store "$work/a.db" "$work/run")"
echo "import again into SQLite:               $(t "$KITT" results import --store "$work/a.db" "$work/run")"
echo "import $CELLS cells into PostgreSQL:        $(t "$KITT" results import --store "$(dsn a)" "$work/run")"
echo "import again into PostgreSQL:           $(t "$KITT" results import --store "$(dsn a)" "$work/run")"
echo "export --to PostgreSQL ($CELLS rows, new):  $(t "$KITT" results export --store "$work/a.db" --to "$(dsn b)")"
echo "export --to PostgreSQL again:           $(t "$KITT" results export --store "$work/a.db" --to "$(dsn b)")"
