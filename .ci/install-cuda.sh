#!/usr/bin/env bash
# Installs CUDA 13.0's compiler (nvcc, nvvm, crt headers, runtime headers) from the Python
# package index into a virtual environment, without a GPU and without root.
#
# All four packages are pinned to 13.0.x: nvidia-nvvm 13.5 writes PTX ISA 9.5, which ptxas 13.0
# and the 580-series driver on our GPU machines reject ("Unsupported .version 9.5").
#
# Usage: .ci/install-cuda.sh [DIR]   (default: $LABELWISE_CUDA_DIR or .cuda in the repository)
# Prints the nvcc path on its last line. build.rs looks in the default folder on its own.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-${LABELWISE_CUDA_DIR:-$root/.cuda}}
nvcc_of() { find "$1" -path '*nvidia/cu13/bin/nvcc' -type f 2>/dev/null | head -n 1; }

if [ -n "$(nvcc_of "$dir")" ] && "$(nvcc_of "$dir")" --version >/dev/null 2>&1; then
  echo "install-cuda: already installed in $dir" >&2
  nvcc_of "$dir"
  exit 0
fi
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96
nvcc=$(nvcc_of "$dir")
[ -n "$nvcc" ] || { echo "install-cuda: nvcc not found under $dir after install" >&2; exit 1; }
"$nvcc" --version >&2
echo "$nvcc"
