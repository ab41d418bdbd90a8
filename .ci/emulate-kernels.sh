#!/usr/bin/env bash
# Executes every kernel of kernels/*.cu on the CPU (no GPU, no nvcc: g++ with a CUDA shim,
# .ci/emulate/cuda_shim.h) and checks it against a naive double-precision reference using the
# backend's launch plans. A logic check until the PTX interpreter runs the real PTX; it cannot
# see races, memory-model or compiler issues. About 2 minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
g++ -std=c++20 -O1 -pthread -w -I"$root/kernels" -I"$root/.ci/emulate" \
  "$root/.ci/emulate/emulate_kernels.cpp" -o "$work/emulate_kernels"
"$work/emulate_kernels"
