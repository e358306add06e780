#!/usr/bin/env bash
# Offline bundle for a GPU machine without network (README "GPU acceptance run"):
#   bash scripts/gpu_bundle.sh OUT_DIR [--wheelhouse DIR] [--offline]
# OUT_DIR gets wheels/ (what the machine lacks, at our pins, under 60 MiB), run.sh, check_installed.py, bundle.json.
# On the GPU machine, from the repository root:  bash OUT_DIR/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" -m utils.testing.gpu_bundle "$@"
