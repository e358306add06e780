#!/usr/bin/env bash
# One command for a fresh machine (Python 3.11, no GPU, no MedDec access): install the pinned CPU
# requirements, then run the whole LAMAR pipeline on a synthetic corpus with tiny models.
# Extra arguments go to scripts/demo.py (e.g. --work_dir work/demo --profile full).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec python3 scripts/demo.py "$@"
