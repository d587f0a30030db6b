#!/usr/bin/env bash
# Property-based checks of kitt serve's API against its own OpenAPI document (schemathesis, from
# PyPI: `pip install schemathesis`): a live server over a store and runs filled by a real sim run;
# the routes that start or stop runs and the endless event stream are left out, examples capped.
# Passes when no answer is a 5xx, every answer matches the document, and the server takes what
# the document allows and refuses what it does not. (schemathesis 4.32's `coverage` phase stops
# with an internal error of its own on this document, so it is left out.)
#   scripts/schemathesis.sh [KITT] [MAX_EXAMPLES]     (default: target/debug/kitt, 30)
set -euo pipefail
KITT=$(realpath "${1:-target/debug/kitt}")
ST=$(command -v "${ST:-st}")
MAX=${2:-30}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export KITT_RUNS_DIR="$work/runs" KITT_STORE="$work/store.db" KITT_TOKENS="$work/cfg/tokens.json" \
  KITT_HOST_LOCK="$work/host.lock"
cat >"$work/suite.yaml" <<'YAML'
apiVersion: kitt/v1
kind: Suite
metadata: {name: st}
spec:
  models: [{name: tiny}]
  engines: [{name: sim, template: sim, params: {tokens_per_chunk: 2, itl_ms: 1}}]
  benchmarks: [{name: tput, template: throughput, params: {concurrency: [1, 2], requests: 4, max_tokens: 6, input_tokens: 16}}]
  warmup: {requests: 0}
YAML
"$KITT" apply "$work/suite.yaml" -q >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$KITT" serve --bind "127.0.0.1:$port" 2>"$work/serve.log" &
pid=$!
until curl -sf "http://127.0.0.1:$port/api/v1/health" >/dev/null; do sleep 0.05; done
T=$(cat "$work/cfg/web-token")
cd "$work"   # schemathesis keeps a cache in the current directory
"$ST" run "http://127.0.0.1:$port/api/v1/openapi.json" -H "Authorization: Bearer $T" \
  --max-examples "$MAX" --checks all --workers 2 \
  --exclude-path-regex '^/api/v1/(runs$|runs/\{id\}/(cancel|resume)|bundles|events)' \
  --exclude-checks ignored_auth --phases examples,fuzzing,stateful
