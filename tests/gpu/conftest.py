"""GPU acceptance suite: one command, one GPU, tiny local Qwen3.5 models, no Hub (README "GPU acceptance run").

    python -m pytest -m gpu tests/gpu -s

Without CUDA every test here is skipped with one reason (``GPU_SKIP_REASON``). A missing Unsloth or vLLM skips only
the tests that need it, naming the package. Strict mode (``LAMAR_GPU_STRICT=1``) fails instead, one line naming what
is missing, and writes a JSON report (``LAMAR_GPU_REPORT``, default ``gpu_acceptance_report.json``): versions, each
test's outcome and time, peak GPU memory. Tests run family by family (kernel, DFT, vLLM, GRPO, embedding), with the
CUDA cache emptied between families (``utils/testing/gpu_acceptance.py``). Shared artefacts (tiny models, training CSV, the DFT runs whose
adapters vLLM serves) are built once per session under one temporary folder; the measured numbers are printed at the
end of the run (and as each test finishes, with ``-s``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from utils.paths import REPO_ROOT, installed_distribution_version
from utils.testing import gpu_acceptance as A
from utils.testing.gpu_checks import GPU_SKIP_REASON, OFFLINE_ENV, REPORT, build_tiny_gpu_qwen35, missing_distribution, run_script

GPU_DIR = Path(__file__).resolve().parent
STATE: dict = {"family": None, "report": None}


def is_ours(item) -> bool:
    return GPU_DIR in Path(str(item.fspath)).resolve().parents


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` selects by marker
def pytest_collection_modifyitems(config, items) -> None:
    slots = [i for i, item in enumerate(items) if is_ours(item)]
    ours = A.order_by_family([items[i] for i in slots], lambda item: item.fspath)
    for i, item in zip(slots, ours):  # family by family, other tests keep their places
        items[i] = item
    for item in ours:
        item.add_marker(pytest.mark.gpu)
    if not torch.cuda.is_available() and not A.strict_mode():
        skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
        for item in ours:
            item.add_marker(skip)


def pytest_configure(config) -> None:
    if torch.cuda.is_available():  # the suite is offline: tiny local models only
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
    STATE["family"] = None
    STATE["report"] = A.AcceptanceReport(strict=A.strict_mode())


def pytest_collection_finish(session) -> None:
    for item in session.items:  # every selected test is in the report, "not run" until it runs
        if is_ours(item):
            STATE["report"].record(item.nodeid, A.family_of(item.fspath))


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures are built
def pytest_runtest_setup(item) -> None:
    if not is_ours(item):
        return
    family = A.family_of(item.fspath)
    if family != STATE["family"]:  # a new family: nothing of the last one may hold GPU memory
        cuda = torch.cuda.is_available()
        A.release_memory(torch.cuda.empty_cache if cuda else None)
        STATE["report"].boundaries.append(A.FamilyBoundary(
            family, torch.cuda.memory_reserved() if cuda else None, device_used_bytes() if cuda else None))
        STATE["family"] = family
    if A.strict_mode():
        missing = A.missing_requirements(A.FAMILY_PACKAGES[family], torch.cuda.is_available(),
                                         installed_distribution_version)
        if missing:
            pytest.fail(A.missing_line(family, missing), pytrace=False)


def device_used_bytes() -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not is_ours(item):
        yield
        return
    record = STATE["report"].record(item.nodeid, A.family_of(item.fspath))
    if not torch.cuda.is_available():
        yield
        return
    torch.cuda.reset_peak_memory_stats()
    with A.DeviceMemorySampler(device_used_bytes) as sampler:
        yield
    record.peak_device_bytes = sampler.peak
    record.peak_allocated_bytes = torch.cuda.max_memory_allocated()


def pytest_runtest_logreport(report) -> None:
    tests = STATE["report"].tests if STATE["report"] else {}
    if report.nodeid not in tests:
        return
    record = tests[report.nodeid]
    record.seconds = round(record.seconds + report.duration, 3)
    if report.when == "call" or report.outcome != "passed":
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        if record.outcome in ("not run", "passed"):
            record.outcome = outcome
            record.message = one_line(report) if outcome != "passed" else ""
    if report.when == "teardown":
        write_report()  # after every test: a run stopped by a time limit still leaves its report


def write_report() -> Path | None:
    report, path = STATE["report"], A.report_path(REPO_ROOT)
    if report is None or not report.tests or path is None:
        return None
    if not report.environment:
        report.environment = A.environment(REPO_ROOT, installed_distribution_version)
    report.measurements = list(REPORT)
    report.write(path)
    return path


def one_line(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = getattr(report, "longreprtext", "") or str(report.longrepr or "")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip().removeprefix("E").strip() if lines else ""


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if REPORT:
        terminalreporter.write_sep("=", "GPU acceptance: speed and memory")
        for block in REPORT:
            terminalreporter.write_line(block)
    path = write_report()
    if path is not None:
        terminalreporter.write_line(f"GPU acceptance report: {path}")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu_acceptance")


@pytest.fixture(scope="session")
def tiny(workdir) -> dict[str, Path]:
    """A training CSV of short synthetic notes, its tokenizer, and a tiny Qwen3_5ForConditionalGeneration (the
    published checkpoint's layout) with GPU-friendly sizes."""
    from utils.testing.tiny_models import build_tiny_tokenizer, write_tiny_tagged_csv

    rows = write_tiny_tagged_csv(workdir / "train.csv", n_notes=4, seed=0, mean_chars=400, mean_spans=3)
    tokenizer = build_tiny_tokenizer([r["raw_text"] for r in rows] * 3, vocab_size=2048)
    model = build_tiny_gpu_qwen35(workdir / "tiny_vl", tokenizer)
    return {"csv": workdir / "train.csv", "model": model, "root": workdir}


DFT_RUNS = {  # name -> extra flags; every run trains an r=256 adapter for two optimisation steps
    "hf": ["--backend", "hf"],
    "unsloth": ["--backend", "unsloth"],
    "unsloth_kernel": ["--backend", "unsloth", "--dft_route", "kernel"],
}


class DFTRuns:
    """Two DFT steps per backend/route through scripts/train_dft.py (bf16 on GPU, r 256, alpha 32, rsLoRA,
    accumulation 2), each in its own process, run once on first use; the adapters feed the vLLM test."""

    def __init__(self, tiny: dict[str, Path]) -> None:
        self.tiny = tiny
        self.results: dict[str, dict] = {}

    def __call__(self, name: str) -> dict:
        if name not in self.results:
            self.results[name] = self._run(name)
        result = self.results[name]
        if "skipped" in result:
            pytest.skip(result["skipped"])
        return result

    def maybe(self, name: str) -> dict | None:
        """The run, or None where it was skipped (e.g. Unsloth not installed)."""
        if name not in self.results:
            self.results[name] = self._run(name)
        return None if "skipped" in self.results[name] else self.results[name]

    def _run(self, name: str) -> dict:
        flags = DFT_RUNS[name]
        if "unsloth" in flags and (reason := missing_distribution("unsloth")):
            return {"skipped": reason}
        out = self.tiny["root"] / f"dft_{name}"
        args = ["scripts/train_dft.py", *flags, "--model_name_or_path", str(self.tiny["model"]), "--train_csv",
                str(self.tiny["csv"]), "--output_dir", str(out), "--max_steps", "2", "--gradient_accumulation_steps",
                "2", "--lora_r", "256", "--lora_alpha", "32", "--max_length", "4096", "--report_to", "none",
                "--save_strategy", "no", "--logging_steps", "1", "--learning_rate", "2e-4", "--warmup_steps", "0"]
        result, seconds = run_script(args, self.tiny["root"] / f"dft_{name}.log")
        record_path = out / "run_config.json"
        return {"returncode": result.returncode, "seconds": seconds, "out": out, "log": self.tiny["root"] /
                f"dft_{name}.log", "stderr": result.stderr[-3000:],
                "record": json.loads(record_path.read_text()) if record_path.is_file() else None}


@pytest.fixture(scope="session")
def dft_run(tiny) -> DFTRuns:
    return DFTRuns(tiny)
