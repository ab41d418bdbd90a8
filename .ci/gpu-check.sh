#!/usr/bin/env bash
# Runs on a GPU machine (one H200, PyTorch + torchvision, no Rust, no network) within 8 minutes,
# from a folder staged by .ci/gpu-prepare.sh:
#   1. the kernel harness: every CUDA kernel against the CPU reference (fails on any SKIPPED:
#      on a GPU machine a skip means the backend could not open);
#   1b. the ignored throughput test: ms and TFLOP/s of each ResNet18 convolution;
#   2. `labelwise bench --device cuda`, when the binary has that subcommand;
#   3. .ci/torch_bench.py: PyTorch's ResNet18 training throughput for comparison.
# Usage: ./gpu-check.sh [STAGE_DIR]   (default: this script's folder). Logs go to STAGE_DIR/logs.
# Exit status: 0 when the harness passed, 1 otherwise (benchmarks only report).
set -uo pipefail
stage=$(cd "${1:-$(dirname "$0")}" && pwd)
logs=$stage/logs
mkdir -p "$logs"
status=0
summary=()

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
cat "$stage/MANIFEST" 2>/dev/null || true

echo "== 1. kernel harness"
for t in "$stage"/cuda_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  LABELWISE_TEST_DEVICE=gpu timeout 180 "$t" --test-threads=1 --nocapture >"$logs/$name.log" 2>&1
  rc=$?
  tail -n 40 "$logs/$name.log"
  if [ "$rc" -ne 0 ]; then
    summary+=("$name: FAILED (exit $rc, see logs/$name.log)"); status=1
  elif grep -q SKIPPED "$logs/$name.log"; then
    summary+=("$name: SKIPPED tests on a GPU machine (see logs/$name.log)"); status=1
  else
    summary+=("$name: passed")
  fi
done

echo "== 1b. convolution throughput per ResNet18 layer"
if [ -x "$stage/cuda_kernels" ]; then
  timeout 90 "$stage/cuda_kernels" conv_throughput --ignored --nocapture 2>&1 \
    | grep -E '^conv|^peak|panicked' | tee "$logs/conv_throughput.log"
  summary+=("conv throughput: exit ${PIPESTATUS[0]} (logs/conv_throughput.log)")
fi

echo "== 2. labelwise bench --device cuda"
if "$stage/labelwise" --help 2>&1 | grep -qw bench; then
  for size in 64 224; do
    timeout 150 "$stage/labelwise" bench --device cuda --image-size "$size" --batch-size 128 \
      --json "$logs/labelwise-bench-$size.json" 2>&1 | tee "$logs/labelwise-bench-$size.log"
    summary+=("labelwise bench ${size}px: exit ${PIPESTATUS[0]}")
  done
else
  summary+=("labelwise bench: not in this build yet")
fi

echo "== 3. PyTorch side by side"
if python3 -c 'import torch, torchvision' 2>/dev/null; then
  timeout 200 python3 "$stage/torch_bench.py" --json "$logs/torch_bench.json" 2>&1 \
    | tee "$logs/torch_bench.log"
  summary+=("torch_bench: exit ${PIPESTATUS[0]}")
else
  summary+=("torch_bench: PyTorch/torchvision missing")
fi

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
