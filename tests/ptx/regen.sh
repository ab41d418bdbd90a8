#!/usr/bin/env bash
# Regenerates the committed .ptx files next to their .cu sources, so tests need no nvcc.
# Usage: tests/ptx/regen.sh   (NVCC=/path/to/nvcc to choose the compiler)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
nvcc="${NVCC:-nvcc}"
for cu in "$here"/*.cu; do
    "$nvcc" -ptx -arch=compute_80 -O3 "$cu" -o "${cu%.cu}.ptx"
    echo "wrote ${cu%.cu}.ptx"
done
