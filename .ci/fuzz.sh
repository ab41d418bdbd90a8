#!/usr/bin/env bash
# Fuzzes the loaders of untrusted files (labels.csv, IDX, PNG/JPEG, safetensors models) with
# cargo-fuzz and libFuzzer, SECONDS per target (default 60). Not part of .ci/run: too slow.
#
#   .ci/fuzz.sh [SECONDS] [TARGET...]      targets: labels_csv idx image model (default: all)
#
# Needs only a stable toolchain: cargo-fuzz passes -Z flags (sanitizer, coverage), which
# RUSTC_BOOTSTRAP=1 lets stable rustc and cargo accept. Builds are optimised with debug
# assertions and overflow checks on, under AddressSanitizer. The corpus grows in
# fuzz/corpus/TARGET (seeded from the committed fuzz/seeds/TARGET), crashes land in
# fuzz/artifacts/TARGET, the fuzzer's output in fuzz/logs/TARGET.log. Exits 1 if any target
# found a crash, a timeout or an out-of-memory input; turn each into a test in
# tests/fuzz_regressions.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(labels_csv idx image model)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# The targets never launch a CUDA kernel: do not spend a minute compiling them.
export LABELWISE_NVCC="${LABELWISE_NVCC:-/nonexistent}"
export CARGO_TERM_COLOR=never

cd fuzz
echo "== building ${targets[*]}"
build_start=$SECONDS
for target in "${targets[@]}"; do
  cargo fuzz build "$target"
done
echo "built in $((SECONDS - build_start)) s"

mkdir -p logs
failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "== fuzzing $target for $seconds s"
  # -timeout: one input taking 10 s is a hang worth a test. -rss_limit_mb: libFuzzer's
  # default, stated; an input that needs more is a decompression bomb we failed to refuse.
  if cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"logs/$target.log" 2>&1; then
    status=ok
  else
    status="FAILED (see fuzz/logs/$target.log and fuzz/artifacts/$target)"
    failed+=("$target")
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$' || true)
  last=$(grep -E '^#[0-9]+' "logs/$target.log" | tail -1 || true)
  echo "$target: $status; ${execs:-?} executions; last status line: ${last:-none}"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "== crashes, timeouts or OOMs in: ${failed[*]}"
  exit 1
fi
echo "== no crash in ${targets[*]} ($seconds s each)"
