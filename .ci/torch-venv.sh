#!/usr/bin/env bash
# Installs PyTorch, torchvision and safetensors into a throwaway virtual environment, for the
# side-by-side CPU benchmark (.ci/cpu-vs-torch.sh), the golden-file generator
# (scripts/torch_golden.py) and the weight export (scripts/export_torchvision.py). Not used by
# `cargo test` or CI: the golden file is committed. About 5 GB with PyTorch's CUDA libraries (PyPI's default wheel); it runs on the CPU.
#
# Usage: .ci/torch-venv.sh [DIR]   (default: $LABELWISE_TORCH_VENV or .torch-venv in the repository)
# Prints the venv's python on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-${LABELWISE_TORCH_VENV:-$root/.torch-venv}}
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import torch, torchvision, safetensors' 2>/dev/null; then
  echo "torch-venv: already installed in $dir" >&2
  echo "$dir/bin/python"
  exit 0
fi
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --disable-pip-version-check torch torchvision safetensors numpy psutil
"$dir/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "threads", torch.get_num_threads())' >&2
echo "$dir/bin/python"
