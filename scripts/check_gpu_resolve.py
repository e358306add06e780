"""Prove that the pinned requirement files resolve, with pip's own resolver, from the public registry alone.

Runs ``pip install --dry-run --report`` for a target machine (Linux x86_64 GPU, Linux CPU, macOS arm64 CPU)
with every local pip setting switched off (no config files, no PIP_* variables, no find-links: pip's default
index only), prints a one-line verdict and the resolved versions of the key packages. Nothing is installed;
pip still downloads the wheels it needs to read their metadata (the GPU set is several GB: it is not cached).

pip evaluates environment markers (``sys_platform == "linux"``, ``python_version > "3.11"``) against the
interpreter running pip, whatever ``--platform``/``--python-version`` say (pypa/pip#11664), so this script runs
pip with the marker environment of the target machine.

    python scripts/check_gpu_resolve.py                          # Linux x86_64 + CUDA, Python 3.12
    python scripts/check_gpu_resolve.py --python-version 3.11
    python scripts/check_gpu_resolve.py --target macos-cpu       # requirements-dev.txt on macOS arm64
    python scripts/check_gpu_resolve.py --pip-python /path/to/venv/bin/python   # a newer pip

Exit status: 0 resolved, 1 not resolvable, 2 bad arguments or pip unusable.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from utils.paths import REPO_ROOT
from utils.pip_resolve import TARGETS, check


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--target", choices=sorted(TARGETS), default="linux-gpu",
                        help="machine to resolve for (default linux-gpu: requirements.txt + requirements-gpu.txt "
                             "+ requirements-dev.txt; the cpu targets: requirements-dev.txt)")
    parser.add_argument("--python-version", default="3.12", help="target Python X.Y (default 3.12)")
    parser.add_argument("-r", "--requirement", action="append", type=Path, default=None,
                        help="requirement file(s) instead of the target's defaults (repeatable)")
    parser.add_argument("--glibc", default="2.35", help="newest manylinux glibc the Linux target has (default 2.35)")
    parser.add_argument("--macos", default="14.0", help="macOS version of the macOS target (default 14.0)")
    parser.add_argument("--save-report", type=Path, default=None, help="also write pip's JSON report there")
    parser.add_argument("--pip-python", default=sys.executable,
                        help="interpreter whose pip resolves (pip >= 22.2; default: this interpreter)")
    args = parser.parse_args(argv)
    for option in ("python_version", "glibc", "macos"):
        value = getattr(args, option)
        if len(value.split(".")) != 2 or not value.replace(".", "").isdigit():
            parser.error(f"--{option.replace('_', '-')}: expected X.Y, got {value!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    target = TARGETS[args.target]
    files = args.requirement or [REPO_ROOT / name for name in target.requirement_files]
    missing = [str(path) for path in files if not Path(path).is_file()]
    if missing:
        print(f"error: requirement file not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    probe = subprocess.run([args.pip_python, "-c", "import pip._internal.cli.main"], capture_output=True, check=False)
    if probe.returncode != 0:
        print(f"error: --pip-python {args.pip_python}: pip is not importable there", file=sys.stderr)
        return 2
    ok, lines = check(target, files, args.python_version, args.glibc, args.macos, args.pip_python,
                      args.save_report)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
