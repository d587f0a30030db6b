#!/usr/bin/env bash
# Engine container lifecycle, kitt vs plain docker, side by side on the local llama.cpp image:
#
#   plain:  docker run -d … ; poll /health every 10 ms until 200 ; docker stop ; docker rm
#   kitt:   the `start` step (docker run, health, ownership check, version probe) and the `stop`
#           step (docker stop, logs saved, docker rm) of a suite with one request, read from the
#           run's journal; health is polled at the same 10 ms.
#
#   scripts/bench-container.sh [ROUNDS]      (needs: scripts/llama-cpp.sh --link .kitt/llama.cpp
#                                             --image kitt-local/llama.cpp:server-cpu; a built kitt)
#   KITT=target/release/kitt scripts/bench-container.sh 5
#
# Prints medians in ms: start-to-healthy and teardown for each, and kitt's overhead.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
kitt="$(readlink -f "${KITT:-target/debug/kitt}")"
image=kitt-local/llama.cpp:server-cpu
model="$(readlink -f .kitt/llama.cpp/models/tiny.gguf)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/models"
ln -s "$model" "$work/models/tiny.gguf"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s%N; }

plain_up=(); plain_down=()
for i in $(seq "$rounds"); do
  p="$(port)"; name="kitt-bench-plain-$$-$i"
  t0="$(now)"
  docker run -d --name "$name" --network host --mount "type=bind,source=$(dirname "$model"),target=/models,readonly" \
    -- "$image" -m /models/tiny.gguf --host 127.0.0.1 --port "$p" -c 4096 -np 4 >/dev/null
  until curl -sf "http://127.0.0.1:$p/health" >/dev/null; do sleep 0.01; done
  t1="$(now)"
  docker stop --time 5 "$name" >/dev/null
  docker rm "$name" >/dev/null
  t2="$(now)"
  plain_up+=($(( (t1 - t0) / 1000000 ))); plain_down+=($(( (t2 - t1) / 1000000 )))
done

cat >"$work/fast.yaml" <<'EOF'
apiVersion: kitt/v1
kind: Engine
metadata: {name: llama_fast_health}
spec:
  base: llama_cpp
  health: {path: /health, timeout: 60s, initial_interval: 10ms, max_interval: 10ms}
EOF
cat >"$work/suite.yaml" <<EOF
apiVersion: kitt/v1
kind: Suite
metadata: {name: bench-container}
spec:
  templates: [fast.yaml]
  models: [{name: tiny, path: models/tiny.gguf}]
  engines:
    - {name: llama, template: llama_fast_health, image: $image, pull: never, params: {ctx_size: 4096, parallel: 4}, container: {gpus: none}}
  benchmarks:
    - {name: one, template: latency, params: {requests: 1, input_tokens: 8, max_tokens: 4}}
  warmup: {requests: 0}
EOF
kitt_up=(); kitt_down=()
for i in $(seq "$rounds"); do
  KITT_RUNS_DIR="$work/runs" KITT_HOST_LOCK="$work/host.lock" "$kitt" --quiet apply "$work/suite.yaml" --fresh >/dev/null 2>&1
  run="$(ls -d "$work"/runs/*/ | tail -1)"
  read -r up down < <(python3 - "$run/journal.jsonl" <<'PY'
import json, sys
start = {}; dur = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["event"] == "step_started": start[r["kind"]] = r["unix_ns"]
    if r["event"] == "step_finished": dur[r["kind"]] = (r["unix_ns"] - start[r["kind"]]) // 1_000_000
print(dur["start"], dur["stop"])
PY
)
  kitt_up+=("$up"); kitt_down+=("$down")
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pu="$(median "${plain_up[@]}")"; pd="$(median "${plain_down[@]}")"
ku="$(median "${kitt_up[@]}")"; kd="$(median "${kitt_down[@]}")"
echo "rounds: $rounds (medians, ms)"
echo "plain docker: start to healthy $pu, stop + rm $pd"
echo "kitt:         start to healthy $ku, stop + rm $kd"
echo "kitt overhead per engine start + stop: $(( ku + kd - pu - pd )) ms (target < 300)"
