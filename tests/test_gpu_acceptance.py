"""How the GPU acceptance suite runs (utils/testing/gpu_acceptance.py, tests/gpu/conftest.py), checked on CPU:
strict mode fails naming what is missing and writes the report; families run in order with memory released between
them; peak memory is sampled; the report summarises what ran."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch

from utils.paths import REPO_ROOT
from utils.testing import gpu_acceptance as A


def test_every_gpu_test_file_belongs_to_a_family_and_families_sort_in_order() -> None:
    files = sorted(p.name for p in (REPO_ROOT / "tests" / "gpu").glob("test_*.py"))
    assert files == sorted(A.FAMILY_OF_FILE)
    assert set(A.FAMILY_OF_FILE.values()) == set(A.FAMILY_ORDER) == set(A.FAMILY_PACKAGES)
    ordered = A.order_by_family(files, lambda name: name)  # alphabetical order would run embedding before kernel
    assert [A.family_of(name) for name in ordered] == ["kernel", "dft", "vllm", "vllm", "grpo", "embedding"]
    assert ordered.index("test_copy_decoding_gpu.py") < ordered.index("test_vllm_gpu.py")  # stable within a family
    with pytest.raises(KeyError, match="test_new_gpu.py: no GPU acceptance family assigned"):
        A.family_of("tests/gpu/test_new_gpu.py")


def test_strict_mode_and_report_path_come_from_the_environment(tmp_path) -> None:
    assert A.strict_mode({"LAMAR_GPU_STRICT": "1"}) and A.strict_mode({"LAMAR_GPU_STRICT": "true"})
    assert not A.strict_mode({}) and not A.strict_mode({"LAMAR_GPU_STRICT": "0"})
    assert A.report_path(tmp_path, {}) is None
    assert A.report_path(tmp_path, {"LAMAR_GPU_STRICT": "1"}) == tmp_path / "gpu_acceptance_report.json"
    assert A.report_path(tmp_path, {"LAMAR_GPU_REPORT": "/x/r.json"}) == Path("/x/r.json")


def test_missing_requirements_name_cuda_first_then_each_package() -> None:
    versions = {"trl": "1.15.0"}
    missing = A.missing_requirements(("trl", "unsloth"), False, versions.get)
    assert missing == [f"CUDA (torch {torch.__version__}: torch.cuda.is_available() is False)", "unsloth (not installed)"]
    assert A.missing_requirements(("trl",), True, versions.get) == []
    assert A.missing_line("dft", ["unsloth (not installed)"]) == (
        "strict GPU acceptance: the dft family needs unsloth (not installed); install requirements-gpu.txt (or the "
        "offline bundle, scripts/gpu_bundle.sh) and run on a CUDA GPU")


def _fail_holding(tensor_ref: list) -> None:
    big = torch.ones(1000)
    tensor_ref.append(weakref.ref(big))
    raise RuntimeError("a failing test")


def test_release_memory_frees_what_a_failed_tests_traceback_held() -> None:
    """pytest keeps the last failure in sys.last_traceback; its frames hold the test's tensors (on a GPU: GiBs)."""
    refs: list = []
    try:
        _fail_holding(refs)
    except RuntimeError:
        sys.last_type, sys.last_value, sys.last_traceback = sys.exc_info()
    gc.collect()
    assert refs[0]() is not None  # still alive through the traceback
    emptied = []
    A.release_memory(lambda: emptied.append(refs[0]() is None))
    assert refs[0]() is None and sys.last_traceback is None
    assert emptied == [True]  # the allocator is emptied after the tensor is gone, so its block goes back


def test_the_sampler_keeps_the_peak_seen_while_running() -> None:
    readings = [1, 5, 9, 3]  # bytes in use at successive samples, then 3 for good
    calls: list[int] = []

    def read() -> int:
        calls.append(1)
        return readings[min(len(calls), len(readings)) - 1]

    with A.DeviceMemorySampler(read, interval=0.001) as sampler:
        while len(calls) < 6:  # the background thread samples while the "test" runs
            time.sleep(0.001)
    assert sampler.peak == 9 and len(calls) >= 7  # one more sample on exit


def test_the_report_summarises_families_in_order_and_is_written_atomically(tmp_path) -> None:
    report = A.AcceptanceReport(strict=True)
    first = report.record("tests/gpu/test_dft_gpu.py::a", "dft")
    first.outcome, first.seconds, first.peak_device_bytes = "passed", 2.0, 10
    second = report.record("tests/gpu/test_dft_gpu.py::b", "dft")
    second.outcome, second.seconds, second.peak_device_bytes = "failed", 1.5, 30
    kernel = report.record("tests/gpu/test_kernel_gpu.py::c", "kernel")
    kernel.outcome, kernel.message = "skipped", "no triton"
    data = json.loads(json.dumps(report.to_json()))
    assert list(data["families"]) == ["kernel", "dft"]
    assert data["families"]["dft"] == {"outcomes": {"passed": 1, "failed": 1}, "seconds": 3.5, "peak_device_bytes": 30}
    assert data["families_not_collected"] == ["vllm", "grpo", "embedding"]
    path = tmp_path / "sub" / "report.json"
    report.write(path)
    assert json.loads(path.read_text())["tests"][2]["message"] == "no triton"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_pinned_versions_read_both_requirement_files() -> None:
    pins = A.pinned_versions(REPO_ROOT)
    assert pins["torch"] == "2.13.0" and pins["trl"] == "1.15.0" and pins["unsloth"] == "2026.10.9"
    assert pins["flash-linear-attention"] == "0.5.1" and "triton" in pins


@pytest.mark.slow
def test_a_strict_run_without_cuda_fails_naming_what_is_missing_and_writes_the_report(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the strict suite runs for real instead")
    report_file = tmp_path / "report.json"
    env = {**os.environ, "LAMAR_GPU_STRICT": "1", "LAMAR_GPU_REPORT": str(report_file)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "passed" not in result.stdout and "skipped" not in result.stdout
    data = json.loads(report_file.read_text())
    tests = data["tests"]
    assert len(tests) >= 13 and all(t["outcome"] == "error" for t in tests)
    cuda = f"CUDA (torch {torch.__version__}: torch.cuda.is_available() is False)"
    for test in tests:  # one line each, naming CUDA and every package of its family this machine lacks
        assert test["message"].startswith(f"strict GPU acceptance: the {test['family']} family needs {cuda}")
        assert "\n" not in test["message"] and test["message"] in result.stdout
        for name in A.FAMILY_PACKAGES[test["family"]]:
            from utils.paths import installed_distribution_version

            assert (f"{name} (not installed)" in test["message"]) == (installed_distribution_version(name) is None)
    # family by family, each family's memory released once before it starts
    ranks = [A.FAMILY_ORDER.index(t["family"]) for t in tests]
    assert ranks == sorted(ranks) and data["families_not_collected"] == []
    assert [b["family"] for b in data["family_boundaries"]] == list(A.FAMILY_ORDER)
    assert data["strict"] is True and data["environment"]["gpu"]["cuda_available"] is False
    torch_version = data["environment"]["versions"]["torch"]
    assert torch_version["installed"] == torch.__version__ and torch_version["pinned"] == "2.13.0"
    assert data["environment"]["versions"]["vllm"]["installed"] is None
