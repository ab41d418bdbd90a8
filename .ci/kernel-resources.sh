#!/usr/bin/env bash
# Prints the resources ptxas assigns to every kernel for sm_90 (registers, shared memory, spill
# stores and loads, stack frame) and fails if any kernel spills or uses a stack frame (local
# memory), unless the kernel's lead comment (the 8 lines above its `LW_KERNEL` line) carries
# `// local-memory-ok: <reason>`.
#
# Usage: .ci/kernel-resources.sh        (nvcc found as build.rs finds it)
# Needs no GPU. Exit status: 0 clean, 1 a kernel spills or uses local memory, 2 setup error.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

nvcc=${LABELWISE_NVCC:-}
if [ -z "$nvcc" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  nvcc=$CUDA_HOME/bin/nvcc
fi
if [ -z "$nvcc" ]; then nvcc=$(command -v nvcc || true); fi
if [ -z "$nvcc" ]; then
  nvcc=$(find -L "$root/.cuda" -path '*nvidia/cu13/bin/nvcc' -type f 2>/dev/null \
         | head -n 1 || true)
fi
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
  echo "kernel-resources: no nvcc (see .ci/install-cuda.sh)" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Compile every file (two at a time: CI has 2 cores), keeping ptxas's verbose report.
ls "$root"/kernels/*.cu | xargs -P 2 -I{} sh -c \
  'f={}; b=$(basename "$f" .cu); "$1" -cubin -arch=sm_90 -std=c++17 -Xptxas -v "$f" \
     -o "$2/$b.cubin" >"$2/$b.log" 2>&1 || { cat "$2/$b.log" >&2; exit 255; }' _ "$nvcc" "$work" \
  || { echo "kernel-resources: nvcc failed" >&2; exit 2; }

# One line per entry: file kernel registers smem stack spill_stores spill_loads.
for log in "$work"/*.log; do
  file=$(basename "$log" .log)
  awk -v file="$file" '
    /Compiling entry function/ {
      match($0, /\x27[^\x27]+\x27/); name = substr($0, RSTART + 1, RLENGTH - 2)
    }
    /bytes stack frame/ { stack = $1; stores = $5; loads = $9 }
    /Used [0-9]+ registers/ {
      regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
      smem = 0
      if (match($0, /[0-9]+ bytes smem/)) {
        smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem)
      }
      print file, name, regs, smem, stack, stores, loads
    }' "$log"
done | sort -k1,1 -k2,2 >"$work/table"

printf '%-12s %-28s %5s %6s %6s %7s %6s  %s\n' file kernel regs smem stack spill_st spill_ld status
status=0
while read -r file name regs smem stack stores loads; do
  verdict=ok
  if [ "$stack" != 0 ] || [ "$stores" != 0 ] || [ "$loads" != 0 ]; then
    src="$root/kernels/$file.cu"
    line=$(grep -n "LW_KERNEL.*[^a-z_0-9]$name(" "$src" | head -n 1 | cut -d: -f1)
    from=$(( ${line:-1} > 8 ? ${line:-1} - 8 : 1 ))
    if sed -n "${from},${line:-1}p" "$src" | grep -q '// local-memory-ok: .'; then
      verdict=allowed
    else
      verdict=LOCAL-MEMORY
      status=1
    fi
  fi
  printf '%-12s %-28s %5s %6s %6s %7s %6s  %s\n' "$file" "$name" "$regs" "$smem" "$stack" \
    "$stores" "$loads" "$verdict"
done <"$work/table"

count=$(wc -l <"$work/table")
if [ "$count" -eq 0 ]; then
  echo "kernel-resources: no kernels found in ptxas output" >&2
  exit 2
fi
if [ "$status" -ne 0 ]; then
  echo "kernel-resources: kernels above use local memory; fix them or add a" \
       "'// local-memory-ok: <reason>' lead comment" >&2
else
  echo "kernel-resources: $count kernels, no spills, no stack frames"
fi
exit "$status"
