#!/usr/bin/env bash
# labelwise's CPU backend against PyTorch on the same cores: installs PyTorch into a throwaway
# virtual environment (.ci/torch-venv.sh), builds labelwise in release mode, and runs both on
# identical shapes, interleaved, printing images/s, the ratio and peak memory.
# Usage: .ci/cpu-vs-torch.sh [args for .ci/cpu_vs_torch.py, e.g. --sizes 32 64 --rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash .ci/torch-venv.sh | tail -n 1)
cargo build --release --quiet
exec "$python" .ci/cpu_vs_torch.py --labelwise target/release/labelwise "$@"
