"""vLLM serves the r=256 adapter of each DFT backend, and its entropies equal a teacher-forced transformers pass.

Both adapters come from two real DFT steps on the tiny multimodal-layout Qwen3.5 (tests/gpu/conftest.py); their
LoRA weights are then set to seeded values so their effect is large (names and shapes are the trained ones). They
cover the projections vLLM packs (q/k/v, gate/up, the linear-attention in_proj_*). A third adapter, the hf one
renamed to the text-only layout, goes through ``adapter_for_vllm`` (renamed back for vLLM's multimodal class).
Tolerance on each output's entropy (mean -log p): 0.02 + 2% (vLLM bf16 vs the same bf16 weights in float32).
The engine runs in its own process (tests/gpu/vllm_entropy_driver.py).
"""

from __future__ import annotations

import json
import shutil

import pytest

from utils.testing.gpu_acceptance import DFT_PACKAGES, require_in_strict_mode
from utils.testing.gpu_checks import (
    ENTROPY_ABS_TOL, PACKED_PARTS, adapter_modules, missing_distribution, record, report, run_script,
    set_lora_weights, tokens_per_second,
)
from utils.training import layout as L

pytestmark = pytest.mark.gpu


def test_vllm_applies_each_backends_adapter_and_matches_teacher_forcing(tiny, dft_run, tmp_path) -> None:
    if reason := missing_distribution("vllm"):
        pytest.skip(reason)
    require_in_strict_mode("vllm (every DFT backend's adapter)", DFT_PACKAGES)
    from safetensors import safe_open

    adapters = {}
    for i, name in enumerate(("hf", "unsloth")):
        run = dft_run.maybe(name)
        if run is None or run["returncode"] != 0:
            continue
        copy = tmp_path / f"adapter_{name}"
        shutil.copytree(run["out"], copy)
        assert set_lora_weights(copy, seed=10 + i) > 0
        with safe_open(str(copy / L.ADAPTER_WEIGHTS), "pt") as handle:
            keys = list(handle.keys())
        assert L.adapter_layout(keys) == L.IMAGE_TEXT_TO_TEXT, name  # both backends: the checkpoint's class
        assert set(PACKED_PARTS) <= adapter_modules(keys), sorted(adapter_modules(keys))
        adapters[name] = copy
    if not adapters:
        pytest.skip("no DFT adapter was trained (see test_dft_gpu.py)")
    source = adapters.get("hf", next(iter(adapters.values())))
    adapters["text_layout"] = L.convert_adapter(str(source), L.CAUSAL_LM, tmp_path / "adapter_text_layout")

    result_path = tmp_path / "vllm_result.json"
    run, seconds = run_script(["tests/gpu/vllm_entropy_driver.py", str(result_path), str(tiny["model"]),
                               str(tiny["csv"]), *(f"{k}={v}" for k, v in adapters.items())],
                              tiny["root"] / "vllm.log", timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(result_path.read_text())
    results = data["results"]
    rows = []
    for name, result in results.items():
        checks = result["checks"]
        generated = sum(c["tokens"] for c in checks)
        rows.append((name, f"{tokens_per_second(generated, result['seconds']):.0f} tokens/s; entropy vLLM "
                           f"{[round(c['engine'], 3) for c in checks]} vs transformers "
                           f"{[round(c['reference'], 3) for c in checks]}; max token |d log p| "
                           f"{max(c['max_token_diff'] for c in checks):.3f}"))
    record(report(f"vLLM, r=256 adapters (process {seconds:.0f} s, engine start {data['startup_seconds']:.0f} s, "
                  f"{data['prompts']} prompts x {data['max_tokens']} tokens, greedy)", rows))
    for name, result in results.items():
        assert all(result["agrees"]), (name, result["checks"])
    for name in adapters:  # applied: vLLM skips LoRA modules it cannot map without an error
        moved = max(abs(a["engine"] - b["engine"]) for a, b in zip(results[name]["checks"],
                                                                   results["base"]["checks"]))
        assert moved > 5 * ENTROPY_ABS_TOL, (name, moved)
    source_name = "hf" if "hf" in adapters else next(iter(adapters))
    for a, b in zip(results[source_name]["checks"], results["text_layout"]["checks"]):
        assert abs(a["engine"] - b["engine"]) <= ENTROPY_ABS_TOL  # the renamed adapter is the same adapter
