#!/usr/bin/env bash
# One command for a fresh machine (Python 3.11, no GPU, no MedDec access): install the pinned CPU
# requirements, then run the whole LAMAR pipeline on a synthetic corpus with tiny models.
# Extra arguments go to scripts/demo.py (e.g. --work_dir work/demo --profile full).
set -euo pipefail
cd "$(dirname "$0")/.."
# PYTHON picks the interpreter (default: python3 on PATH); the requirements go into that same interpreter.
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec "$PYTHON" scripts/demo.py "$@"
