"""The offline bundle for a GPU machine without network (``scripts/gpu_bundle.sh OUT_DIR``).

The machine this project is lent (see ``scripts/gpu_machine_packages.txt``) has CUDA torch 2.11.0, triton 3.6.0,
transformers 5.17.0, peft and accelerate, but no trl, Unsloth, bitsandbytes or fla, and a command carries at most
64 MiB. The bundle is a wheelhouse of what it lacks, at our pins (requirements*.txt), with the pure-Python
dependencies picked by reading each wheel's ``Requires-Dist`` (markers evaluated for the machine: CPython 3.12,
Linux x86_64), plus ``run.sh``, which installs it with ``pip --no-index --no-deps`` and runs the strict acceptance
suite for the families the machine can run. Left out, each for a stated reason (``EXCLUDED``); two wheels are
trimmed of files the run never loads (``TRIM``) to stay under 60 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import base64
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from utils.paths import REPO_ROOT

MACHINE_PACKAGES = REPO_ROOT / "scripts" / "gpu_machine_packages.txt"
WHEELHOUSE_ENV = "LAMAR_GPU_WHEELHOUSE"
DEFAULT_WHEELHOUSE = Path.home() / ".cache" / "lamar" / "gpu-wheelhouse"
LIMIT_BYTES = 60 * 2**20
# What the lent machine can and cannot run (README "GPU acceptance run").
RUNNABLE_FAMILIES = ("kernel", "dft")
RUN_FILES = ("tests/gpu/test_kernel_gpu.py", "tests/gpu/test_dft_gpu.py")
# The wheels the bundle starts from: the GPU families kernel and DFT (TRL, Unsloth, 8-bit AdamW, fla) and the
# packages of ours they import that the machine lacks: datasets (trl, utils.training.data) and nltk (tests/conftest.py
# points NLTK at the test Punkt model for every test).
ROOTS = ("trl", "datasets", "unsloth", "unsloth_zoo", "bitsandbytes", "flash-linear-attention", "fla-core", "nltk")
# Requirements deliberately not shipped: name -> why.
EXCLUDED = {
    "vllm": "not shippable (hundreds of MB, pins torch 2.13.0): the vLLM and GRPO families cannot run there",
    "xformers": "a binary built for one torch (0.0.35: torch 2.13.0); Unsloth runs without it (xformers = None)",
    "torchao": "a binary built for one torch; Unsloth imports it only for QAT and quantised saving",
    "diffusers": "Unsloth's diffusion models only; not imported when training a language model",
    "torch": "on the machine (2.11.0, not our pin 2.13.0)",
    "triton": "on the machine (3.6.0, not our pin 3.7.1)",
    "torchvision": "on the machine",
    "triton-windows": "Windows only",
    "hf-transfer": "a Rust binary for Hub downloads; the acceptance run is offline",
}
# Packages whose version on the machine is unknown but which are not shipped even when a requirement bounds them
# (run.sh's check_installed.py verifies them there before the tests): name -> why.
TRUST_MACHINE = {"pyarrow": "a 40 MB binary; datasets needs >= 21.0.0 (2025), the image is of 2026-11"}
# Files dropped from a wheel (top-level path prefixes), with the reason; the RECORD is rewritten to match.
TRIM = {
    "unsloth": (("studio/",), "Unsloth Studio, a web UI (26 MB), never imported by training"),
    "bitsandbytes": (("bitsandbytes/libbitsandbytes_cuda1", "bitsandbytes/libbitsandbytes_rocm",
                      "bitsandbytes/libbitsandbytes_xpu"),
                     "native libraries for other CUDA versions, ROCm and XPU; the machine's torch is CUDA 13.0"),
}
TRIM_KEEP = {"bitsandbytes": ("bitsandbytes/libbitsandbytes_cuda130.so",)}
# Excluded requirements run.sh's check does not ask for (the others, torch included, must be installed there).
NOT_CHECKED = ("vllm", "xformers", "torchao", "diffusers", "triton-windows", "hf-transfer")
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "linux_x86_64")


def read_machine_packages(path: Path = MACHINE_PACKAGES) -> dict[str, str | None]:
    """``name`` or ``name==version`` per line (``#`` comments): canonical name -> version where known."""
    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[canonicalize_name(name)] = version or None
    return packages


def pins(repo_root: Path = REPO_ROOT) -> dict[str, str]:
    from utils.testing.gpu_acceptance import pinned_versions

    return pinned_versions(repo_root)


def wheel_requirements(wheel: Path, environment: dict[str, str] | None = None) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` that apply on the target machine (markers evaluated, no extras)."""
    environment = TARGET_ENV if environment is None else environment
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        metadata = archive.read(name).decode()
    requirements = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(environment):
                requirements.append(req)
    return requirements


def wheel_name_version(wheel: Path) -> tuple[str, Version]:
    name, version, _, _ = parse_wheel_filename(wheel.name)
    return canonicalize_name(name), version


def find_wheel(wheelhouse: Path, name: str, specifier: SpecifierSet | str = "") -> Path | None:
    """The newest wheel of ``name`` in ``wheelhouse`` that satisfies ``specifier``, or None."""
    specifier = SpecifierSet(str(specifier))
    found = []
    for wheel in Path(wheelhouse).glob("*.whl"):
        wheel_name, version = wheel_name_version(wheel)
        if wheel_name == canonicalize_name(name) and specifier.contains(version, prereleases=True):
            found.append((version, wheel))
    return max(found)[1] if found else None


def download(requirement: str, wheelhouse: Path) -> Path:
    """One wheel (no dependencies) for the target machine into ``wheelhouse`` (network); returns its path."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    before = set(wheelhouse.glob("*.whl"))
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           TARGET_ENV["python_version"], "--implementation", "cp", *platforms, "-d", str(wheelhouse), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {requirement} failed: {result.stderr.strip().splitlines()[-1:]}")
    req = Requirement(requirement)
    wheel = find_wheel(wheelhouse, req.name, req.specifier)
    if wheel is None:
        new = sorted(set(wheelhouse.glob("*.whl")) - before)
        raise RuntimeError(f"pip download {requirement} gave no matching wheel ({[w.name for w in new]})")
    return wheel


@dataclass
class Closure:
    """The wheels to ship and why each requirement was or was not shipped."""

    wheels: dict[str, Path] = field(default_factory=dict)  # canonical name -> wheel
    on_machine: dict[str, list[str]] = field(default_factory=dict)  # name -> the specifiers asked of it
    excluded: dict[str, str] = field(default_factory=dict)  # name -> why
    conflicts: list[str] = field(default_factory=list)


def resolve(roots: tuple[str, ...], wheelhouse: Path, machine: dict[str, str | None], pinned: dict[str, str],
            offline: bool) -> Closure:
    """Walk ``Requires-Dist`` from the roots. A requirement is: excluded (``EXCLUDED``); left to the machine when it
    has the package at a version that satisfies it (or at an unknown version, when the requirement names no version
    or the package is in ``TRUST_MACHINE``); else shipped, at our
    pin if we pin it, else the newest version that satisfies it (taken from the wheelhouse, downloaded unless
    ``offline``). Every shipped wheel must satisfy every requirement on it."""
    closure = Closure()
    asked: dict[str, list[SpecifierSet]] = {}
    queue = [Requirement(f"{canonicalize_name(r)}=={pinned[canonicalize_name(r)]}") for r in roots]
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        asked.setdefault(name, []).append(req.specifier)
        if name in closure.wheels:
            continue
        if name in EXCLUDED:
            closure.excluded[name] = EXCLUDED[name]
            continue
        if name in machine and name not in (canonicalize_name(r) for r in roots):
            version = machine[name]
            if version is None and (not str(req.specifier) or name in TRUST_MACHINE):
                closure.on_machine.setdefault(name, []).append(str(req.specifier) or "any")
                continue
            if version is not None and req.specifier.contains(Version(version), prereleases=True):
                closure.on_machine.setdefault(name, []).append(str(req.specifier) or "any")
                continue
        wanted = f"{name}=={pinned[name]}" if name in pinned else f"{name}{req.specifier}"
        want = Requirement(wanted)
        wheel = find_wheel(wheelhouse, name, want.specifier)
        if wheel is None:
            if offline:
                raise FileNotFoundError(f"{wanted}: no wheel in {wheelhouse} (build once with network)")
            wheel = download(wanted, wheelhouse)
        closure.wheels[name] = wheel
        queue += wheel_requirements(wheel)
    for name in closure.wheels:
        closure.on_machine.pop(name, None)
    for name, wheel in closure.wheels.items():
        version = wheel_name_version(wheel)[1]
        for spec in asked.get(name, []):
            if not spec.contains(version, prereleases=True):
                closure.conflicts.append(f"{wheel.name} does not satisfy {name}{spec}")
    for name, version in machine.items():
        for spec in asked.get(name, []) if name not in closure.wheels else []:
            if version is not None and not spec.contains(Version(version), prereleases=True):
                closure.conflicts.append(f"machine {name} {version} does not satisfy {name}{spec}")
    return closure


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def trim_wheel(wheel: Path, out_dir: Path, drop: tuple[str, ...], keep: tuple[str, ...] = ()) -> Path:
    """A copy of ``wheel`` without the files under ``drop`` (except ``keep``), its RECORD rewritten (same name and
    version: pip installs it as the pinned release, less those files)."""
    out = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        record_name = next(n for n in source.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in source.infolist():
            if info.filename == record_name:
                continue
            if info.filename.startswith(drop) and info.filename not in keep:
                continue
            data = source.read(info)
            target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            lines.append(_record_line(info.filename, data))
        lines.append(f"{record_name},,")
        target.writestr(record_name, "\n".join(lines) + "\n")
    return out


RUN_SH = r"""#!/usr/bin/env bash
# Offline install of the bundled wheels into this machine's python, then the strict GPU acceptance run for the
# families this machine can run ({families}). Run from the repository root:  bash {bundle}/run.sh
# Writes the JSON report to {bundle}/gpu_acceptance_report.json (or $LAMAR_GPU_REPORT).
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
PY="${{PYTHON:-python3}}"
"$PY" -m pip install --no-index --no-deps --find-links "$HERE/wheels" "$HERE"/wheels/*.whl
"$PY" "$HERE/check_installed.py"
export LAMAR_GPU_STRICT=1 LAMAR_GPU_REPORT="${{LAMAR_GPU_REPORT:-$HERE/gpu_acceptance_report.json}}"
timeout "${{LAMAR_GPU_TIMEOUT:-540}}" "$PY" -m pytest -m gpu {files} -s -p no:cacheprovider
"""

CHECK_INSTALLED = r'''"""Every requirement of the bundled wheels is met by what is now installed (bundle.json lists them)."""
import json, sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.specifiers import SpecifierSet

manifest = json.loads((Path(__file__).parent / "bundle.json").read_text())
problems = []
for name, specs in manifest["requirements"].items():
    try:
        installed = version(name)
    except PackageNotFoundError:
        problems.append(f"{name} is not installed")
        continue
    for spec in specs:
        if not SpecifierSet(spec).contains(installed, prereleases=True):
            problems.append(f"{name} {installed} does not satisfy {spec}")
if problems:
    sys.exit("offline bundle: " + "; ".join(problems))
print(f"offline bundle: {len(manifest['requirements'])} requirements met")
'''


def check_replaceable(out_dir: Path) -> None:
    """``build`` recreates its folder: only an earlier bundle (its ``bundle.json``) or an empty folder may go, never a
    user's folder given by mistake."""
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "bundle.json").is_file()):
        raise RuntimeError(f"{out_dir}: exists and is not a bundle this command built (no bundle.json); "
                           "give a new or empty folder")


def build(out_dir: Path, wheelhouse: Path, offline: bool, repo_root: Path = REPO_ROOT) -> dict:
    """Write ``out_dir/wheels``, ``run.sh``, ``check_installed.py`` and ``bundle.json``; returns the manifest."""
    if out_dir.exists():
        check_replaceable(out_dir)  # before any download
    machine = read_machine_packages()
    closure = resolve(ROOTS, wheelhouse, machine, pins(repo_root), offline)
    if closure.conflicts:
        raise RuntimeError("; ".join(closure.conflicts))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    wheels_dir = out_dir / "wheels"
    wheels_dir.mkdir(parents=True)
    trimmed = {}
    for name, wheel in sorted(closure.wheels.items()):
        if name in TRIM:
            drop, why = TRIM[name]
            trim_wheel(wheel, wheels_dir, drop, TRIM_KEEP.get(name, ()))
            trimmed[name] = why
        else:
            shutil.copy2(wheel, wheels_dir / wheel.name)
    requirements: dict[str, list[str]] = {}
    for wheel in sorted(wheels_dir.glob("*.whl")):
        for req in wheel_requirements(wheel):
            name = canonicalize_name(req.name)
            if name not in NOT_CHECKED and str(req.specifier) not in requirements.setdefault(name, []):
                requirements[name].append(str(req.specifier))
    manifest = {
        "target": TARGET_ENV, "families": list(RUNNABLE_FAMILIES), "tests": list(RUN_FILES),
        "wheels": sorted(w.name for w in wheels_dir.glob("*.whl")),
        "bytes": sum(w.stat().st_size for w in wheels_dir.glob("*.whl")),
        "trimmed": trimmed, "excluded": closure.excluded, "left_to_the_machine": closure.on_machine,
        "requirements": requirements,
    }
    (out_dir / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out_dir / "check_installed.py").write_text(CHECK_INSTALLED)
    run_sh = out_dir / "run.sh"
    run_sh.write_text(RUN_SH.format(families=", ".join(RUNNABLE_FAMILIES), bundle=out_dir.name,
                                    files=" ".join(RUN_FILES)))
    run_sh.chmod(0o755)
    if manifest["bytes"] > LIMIT_BYTES:
        raise RuntimeError(f"the bundle's wheels take {manifest['bytes'] / 2**20:.1f} MiB, over "
                           f"{LIMIT_BYTES / 2**20:.0f} MiB")
    return manifest


def default_wheelhouse() -> Path:
    import os

    return Path(os.environ.get(WHEELHOUSE_ENV, DEFAULT_WHEELHOUSE))


def pinned_wheel(name: str, wheelhouse: Path | None = None, offline: bool = False) -> Path:
    """The wheel of ``name`` at our pin for the target machine: from the wheelhouse, else downloaded into it."""
    wheelhouse = wheelhouse or default_wheelhouse()
    wanted = f"{canonicalize_name(name)}=={pins()[canonicalize_name(name)]}"
    wheel = find_wheel(wheelhouse, name, Requirement(wanted).specifier)
    if wheel is not None:
        return wheel
    if offline:
        raise FileNotFoundError(f"{wanted}: no wheel in {wheelhouse}")
    return download(wanted, wheelhouse)


def extract(wheel: Path, dest: Path, skip: tuple[str, ...] = ()) -> None:
    """Unpack a pure-Python wheel onto an import path (``skip``: path prefixes left out)."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if not member.startswith(skip):
                archive.extract(member, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the offline GPU bundle (wheelhouse + run.sh).")
    parser.add_argument("out_dir", type=Path, help="Folder to (re)create with wheels/, run.sh, bundle.json.")
    parser.add_argument("--wheelhouse", type=Path, default=None,
                        help=f"Wheel cache to reuse and fill (default ${WHEELHOUSE_ENV} or {DEFAULT_WHEELHOUSE}).")
    parser.add_argument("--offline", action="store_true",
                        help="Use only wheels already in the wheelhouse (no network); fail naming a missing one.")
    args = parser.parse_args(argv)
    wheelhouse = args.wheelhouse or default_wheelhouse()
    try:
        manifest = build(args.out_dir, wheelhouse, args.offline)
    except (RuntimeError, FileNotFoundError) as error:
        print(f"gpu_bundle: {error}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: {len(manifest['wheels'])} wheels, {manifest['bytes'] / 2**20:.1f} MiB; "
          f"run there: bash {args.out_dir}/run.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
