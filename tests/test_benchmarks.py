"""Every benchmark runs (``--smoke``: tiny sizes, seconds) as a user runs it, so none can rot unnoticed.

The numbers of a smoke run mean nothing; what is checked is that the benchmark completes, exits 0 and prints its
report (the full runs behind the README's figures take minutes to hours)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from utils.paths import REPO_ROOT

BENCHMARKS = sorted(p.name for p in (REPO_ROOT / "benchmarks").glob("bench_*.py"))
# What each benchmark's report must contain (its last section), so a run that prints nothing fails too.
REPORT_MARKERS = {
    "bench_bootstrap.py": "vectorised vs aggregate() on the 5 naive resamples",
    "bench_copy_decoding.py": "core alone on the gold tagged notes' tokens",
    "bench_demo_isa.py": "pinned settings identical: True",
    "bench_ensemble.py": "2-fold CV (2 trials each)",
    "bench_extract_memory.py": "chunksize 1000: wall",
    "bench_pred_to_offset.py": '"crashes": 0',
    "bench_published_differences.py": '"baseline"',
    "bench_scaling.py": "embed",
    "bench_scorer.py": "re-scoring one prediction set against fixed gold, 1 repeats",
}


def test_every_benchmark_has_a_smoke_check():
    assert sorted(REPORT_MARKERS) == BENCHMARKS


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke_run_completes(name, offline_punkt_model):
    env = {**os.environ, "NLTK_DATA": str(offline_punkt_model), "PYTHONHASHSEED": "0"}
    result = subprocess.run([sys.executable, f"benchmarks/{name}", "--smoke"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert REPORT_MARKERS[name] in result.stdout, result.stdout[-3000:]
