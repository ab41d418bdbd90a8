#!/usr/bin/env bash
# Builds, here (no GPU needed), everything .ci/gpu-check.sh runs on a GPU machine that has no
# Rust toolchain and no network, and stages it into one folder under 64 MiB:
#   cuda_kernels        the kernel harness (tests/cuda_kernels.rs), release build
#   <other tests>       any test binaries named in LABELWISE_GPU_TESTS (space separated)
#   labelwise           the command-line tool (for `labelwise bench --device cuda`)
#   gpu-check.sh, torch_bench.py, MANIFEST (commit, nvcc, sizes)
#
# Usage: .ci/gpu-prepare.sh [STAGE_DIR]     (default target/gpu-stage)
# Then copy STAGE_DIR to the GPU machine and run STAGE_DIR/gpu-check.sh there.
# Fails if the kernels were not compiled (no nvcc): a GPU run would only print SKIPPED.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage=${1:-$root/target/gpu-stage}
tests=${LABELWISE_GPU_TESTS:-cuda_kernels cuda_training}
cd "$root"

rm -rf "$stage"
mkdir -p "$stage"

# Test binaries: cargo prints their paths in its JSON messages.
for t in $tests; do
  exe=$(cargo test --release --test "$t" --no-run --message-format=json \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -n 1)
  [ -n "$exe" ] || { echo "gpu-prepare: could not build test $t" >&2; exit 1; }
  cp "$exe" "$stage/$t"
done
cargo build --release --bin labelwise
cp target/release/labelwise "$stage/labelwise"
cp .ci/gpu-check.sh .ci/torch_bench.py "$stage/"

# The kernels must be embedded, or the GPU run tests nothing.
if "$stage/cuda_kernels" every_listed_kernel_is_an_entry_of_the_embedded_ptx --nocapture 2>&1 \
     | grep -q SKIPPED; then
  echo "gpu-prepare: built without CUDA kernels (no nvcc); run .ci/install-cuda.sh" >&2
  exit 1
fi

# Debug info is most of the size; symbols stay for backtraces.
for f in "$stage"/*; do
  if file "$f" | grep -q ELF; then strip --strip-debug "$f"; fi
done

manifest=$(
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet || echo ' (dirty)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  echo "tests: $tests"
  du -b "$stage"/* | awk '{printf "%s %d\n", $2, $1}'
)
echo "$manifest" >"$stage/MANIFEST"
total=$(du -sb "$stage" | cut -f1)
echo "gpu-prepare: staged $(ls "$stage" | wc -l) files, $total bytes, in $stage"
if [ "$total" -ge $((64 * 1024 * 1024)) ]; then
  echo "gpu-prepare: stage is over 64 MiB" >&2
  exit 1
fi
