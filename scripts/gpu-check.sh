#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one short script (run on a GPU machine from the
# repository root; needs a built kitt, `cargo build --release`):
#   1. `kitt fingerprint -v --output json`: GPUs through NVML (name, memory, driver, CUDA,
#      compute capability) and the identity string;
#   2. a sampling loop: the quickstart suite on the simulator with `sample_interval: 100ms`, whose
#      result carries per-GPU memory, utilisation, power, temperature and SM clock (`resources`).
# Paste what it prints into docs/hardware.md.
set -euo pipefail
cd "$(dirname "$0")/.."
kitt="${KITT:-target/release/kitt}"
echo "== nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
echo "== kitt fingerprint"; "$kitt" fingerprint -v --output json
runs="$(mktemp -d)"
sed 's/^spec:$/spec:\n  execution: {sample_interval: 100ms}/' examples/quickstart.yaml > "$runs/suite.yaml"
KITT_RUNS_DIR="$runs/runs" KITT_STORE=off "$kitt" --quiet apply "$runs/suite.yaml" >/dev/null
echo "== resources of the first cell"
python3 -c "import json,glob; r=json.load(open(glob.glob('$runs/runs/*/report/result.json')[0])); print(json.dumps(r['cells'][0]['resources'], indent=1))"
echo "== samples.csv (first lines)"
head -5 "$(ls "$runs"/runs/*/steps/*/samples.csv | head -1)"
