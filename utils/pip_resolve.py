"""Resolving the pinned requirement files with pip's own resolver for a target machine (what
``scripts/check_gpu_resolve.py`` runs): pip's arguments, the marker environment swap, the verdict.

pip evaluates environment markers (``sys_platform == "linux"``, ``python_version > "3.11"``) against the
interpreter running pip, whatever ``--platform``/``--python-version`` say (pypa/pip#11664), so pip runs with the
marker environment of the target machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

KEY_PACKAGES = (
    "torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "huggingface-hub",
    "numpy", "vllm", "unsloth", "unsloth-zoo", "bitsandbytes", "flash-linear-attention", "xformers",
    "torchvision", "sentence-transformers",
)


@dataclass(frozen=True)
class Target:
    """A machine to resolve for: wheel platform tags plus the marker values pip would see there."""

    name: str
    requirement_files: tuple[str, ...]
    system: str  # platform_system marker value
    machine: str  # platform_machine marker value


TARGETS = {
    "linux-gpu": Target("linux-gpu", ("requirements.txt", "requirements-gpu.txt", "requirements-dev.txt"),
                        "Linux", "x86_64"),
    "linux-cpu": Target("linux-cpu", ("requirements-dev.txt",), "Linux", "x86_64"),
    "macos-cpu": Target("macos-cpu", ("requirements-dev.txt",), "Darwin", "arm64"),
}

# Runs inside the pip interpreter: swap the marker environment, then hand over to pip's normal entry point.
_BOOTSTRAP = """
import json, sys
from pip._vendor.packaging import markers
_target = json.loads(sys.argv[1])
_host = markers.default_environment
def _target_environment():
    env = _host()
    env.update(_target)
    return env
markers.default_environment = _target_environment
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def marker_environment(target: Target, python_version: str) -> dict[str, str]:
    """PEP 508 marker values of the target machine (the ones requirement files here actually use)."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux" if target.system == "Linux" else "darwin",
        "platform_system": target.system,
        "platform_machine": target.machine,
    }


def platform_tags(target: Target, glibc: str, macos: str) -> list[str]:
    """Wheel platform tags the target accepts (pip does not expand manylinux_X_Y to older glibc tags itself)."""
    if target.system == "Darwin":
        return [f"macosx_{macos.replace('.', '_')}_{target.machine}"]  # pip expands older macOS versions
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{target.machine}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{target.machine}" for m, name in legacy.items() if m <= minor]


def pip_arguments(target: Target, requirement_files: Sequence[Path], python_version: str, tags: Sequence[str],
                  report: Path, install_dir: Path) -> list[str]:
    """The dry-run install command: wheels only, default index, no cache (GPU wheels are GBs)."""
    args = ["--isolated", "install", "--dry-run", "--ignore-installed", "--no-cache-dir",
            "--only-binary=:all:", "--python-version", python_version, "--report", str(report),
            "--target", str(install_dir)]
    for tag in tags:
        args += ["--platform", tag]
    for path in requirement_files:
        args += ["-r", str(path)]
    return args


def clean_environment() -> dict[str, str]:
    """The caller's environment without any pip setting: only pip's defaults (the public index) apply."""
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then loads no configuration file at all
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolved_versions(report: dict) -> dict[str, str]:
    """Normalised name -> version of every distribution in a pip installation report."""
    versions = {}
    for item in report["install"]:
        name = item["metadata"]["name"].lower().replace("_", "-").replace(".", "-")
        versions[name] = item["metadata"]["version"]
    return versions


def verdict_lines(label: str, versions: dict[str, str]) -> list[str]:
    """One-line verdict, then the key packages (absent ones are named as such)."""
    keys = ", ".join(f"{name} {versions.get(name, '-')}" for name in KEY_PACKAGES if name in versions)
    missing = [name for name in KEY_PACKAGES if name not in versions]
    lines = [f"OK {label}: {len(versions)} distributions resolve from the public registry", f"  {keys}"]
    if missing:
        lines.append(f"  not in this set: {', '.join(missing)}")
    return lines


def error_lines(pip_output: str, limit: int = 12) -> list[str]:
    """pip's own explanation of a failed resolution (its ERROR lines and the conflict causes)."""
    lines = [line.rstrip() for line in pip_output.splitlines() if line.strip()]
    wanted = [line for line in lines if line.startswith("ERROR") or "requested" in line or "depends on" in line]
    return (wanted or lines)[-limit:]


def check(target: Target, requirement_files: Sequence[Path], python_version: str, glibc: str, macos: str,
          pip_python: str, save_report: Path | None = None) -> tuple[bool, list[str]]:
    """Run the dry run; return (resolved, lines to print)."""
    tags = platform_tags(target, glibc, macos)
    label = f"{target.name} cp{python_version.replace('.', '')} {tags[0]}"
    env_json = json.dumps(marker_environment(target, python_version))
    with tempfile.TemporaryDirectory(prefix="lamar-resolve-") as tmp:
        report_path = Path(tmp) / "report.json"
        args = pip_arguments(target, requirement_files, python_version, tags, report_path, Path(tmp) / "target")
        result = subprocess.run([pip_python, "-c", _BOOTSTRAP, env_json, *args], env=clean_environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if result.returncode != 0 or not report_path.exists():
            return False, [f"FAIL {label}: pip could not resolve the set", *error_lines(result.stdout)]
        report = json.loads(report_path.read_text())
        if save_report is not None:
            save_report.write_text(json.dumps(report, indent=1))
    seen = report.get("environment", {}).get("sys_platform")
    if seen != marker_environment(target, python_version)["sys_platform"]:
        return False, [f"FAIL {label}: pip ignored the target marker environment (saw sys_platform={seen!r})"]
    return True, verdict_lines(label, resolved_versions(report))
