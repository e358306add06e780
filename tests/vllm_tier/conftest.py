"""The real-engine vLLM tier: ``VENV_DIR/bin/python -m pytest -m vllm`` (README "vLLM on CPU").

Every test here runs against vLLM 0.31 itself: its CPU build in the environment of ``scripts/setup_vllm_cpu.sh``, or
vLLM on a GPU machine. Where vLLM does not import (the default suite's Python) every test here is skipped with one
reason; with ``LAMAR_REQUIRE_VLLM=1`` (CI) that is an error instead, so the tier cannot pass without running.

Shared, built once per session: a tiny kernel-friendly Qwen3.5 in the published image-text-to-text layout (bf16,
head dims 64), warm-started on three synthetic notes; two LoRA adapters (its own layout and the text-only layout);
the transformers backend's outputs for each (computed BEFORE any engine starts in this process: starting one
registers vLLM's own Qwen3_5Config with transformers' AutoConfig); one engine for everything in-process (LoRA
enabled, the copy-constraint processor registered: requests without a note are untouched by it).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

TIER_DIR = Path(__file__).resolve().parent
SKIP_REASON = ("vLLM tier: vLLM does not import here; build its CPU environment with `bash scripts/setup_vllm_cpu.sh "
               "VENV_DIR` and run `VENV_DIR/bin/python -m pytest -m vllm`")
# One OpenMP thread, unbound, per engine, in-process: on a busy 2-core machine vLLM's defaults took 74 s for 4 prompts x
# 64 tokens of the tiny model, these settings 1.4 s for 2 x 64 (measured). A small KV cache, no network.
TIER_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def vllm_imports() -> bool:
    """vLLM is installed (by its metadata: a folder named vllm on sys.path is not vLLM) and importable."""
    from utils.testing.gpu_checks import missing_distribution

    return missing_distribution("vllm") is None and importlib.util.find_spec("vllm") is not None


@pytest.hookimpl(tryfirst=True)  # before `-m vllm` selects by marker
def pytest_collection_modifyitems(config, items) -> None:
    ours = [item for item in items if TIER_DIR in Path(str(item.fspath)).resolve().parents]
    for item in ours:
        item.add_marker(pytest.mark.vllm)
    if ours and not vllm_imports():
        if os.environ.get("LAMAR_REQUIRE_VLLM") == "1":
            raise pytest.UsageError(f"LAMAR_REQUIRE_VLLM=1 but {SKIP_REASON}")
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def tier_env():
    """The tier's environment for the engines started here and in the commands run as subprocesses."""
    saved = {key: os.environ.get(key) for key in TIER_ENV}
    for key, value in TIER_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield dict(os.environ)
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
