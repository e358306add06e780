"""vLLM serves the r=256 adapter of each DFT backend, and its entropies equal a teacher-forced transformers pass.

Both adapters come from two real DFT steps on the tiny multimodal-layout Qwen3.5 (tests/gpu/conftest.py); their
LoRA weights are then set to seeded values so their effect is large (names and shapes are the trained ones). They
cover the projections vLLM packs (q/k/v, gate/up, the linear-attention in_proj_*). A third adapter, the hf one
renamed to the text-only layout, goes through ``adapter_for_vllm`` (renamed back for vLLM's multimodal class).
Tolerance on each output's entropy (mean -log p): 0.02 + 2% (vLLM bf16 vs the same bf16 weights in float32).
"""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from utils.testing.gpu_checks import (
    ENTROPY_ABS_TOL, PACKED_PARTS, adapter_modules, check_entropies, missing_distribution, record, report,
    set_lora_weights, tokens_per_second,
)
from utils.training import layout as L

pytestmark = pytest.mark.gpu
MAX_TOKENS = 48


def test_vllm_applies_each_backends_adapter_and_matches_teacher_forcing(tiny, dft_run, tmp_path) -> None:
    if reason := missing_distribution("vllm"):
        pytest.skip(reason)
    from safetensors import safe_open
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from utils.generation.backends import vllm_engine_kwargs, vllm_sampling_kwargs
    from utils.meddec.tables import read_tagged_table
    from utils.prompt import render_chat_prompt

    model_dir = str(tiny["model"])
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
        adapters[name] = str(copy)
    if not adapters:
        pytest.skip("no DFT adapter was trained (see test_dft_gpu.py)")
    adapters["hf_as_text_layout"] = str(L.convert_adapter(adapters.get("hf", next(iter(adapters.values()))),
                                                          L.CAUSAL_LM, tmp_path / "adapter_text_layout"))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    notes = read_tagged_table(tiny["csv"])["raw_text"].tolist()
    prompts = [render_chat_prompt(tokenizer, note) for note in notes]
    engine = vllm_engine_kwargs(model_dir, adapter_r=256, max_model_len=4096, max_num_seqs=8,
                                gpu_memory_utilization=0.25, dtype="bfloat16", seed=0,
                                extra={"max_loras": 1, "enforce_eager": True})
    start = time.perf_counter()
    llm = LLM(**engine)
    startup = time.perf_counter() - start
    params = SamplingParams(**{**vllm_sampling_kwargs(MAX_TOKENS, 0.0, True, 0), "ignore_eos": True})

    from utils.training.layout import load_adapter, load_generative_model

    base = load_generative_model(model_dir, dtype=torch.bfloat16).float().cuda().eval()
    results, rows = {}, []
    for lora_id, (name, path) in enumerate([("base", None), *adapters.items()], start=0):
        request = None
        if path is not None:
            request = LoRARequest(name, lora_id, L.adapter_for_vllm(path, model_dir, tmp_path / f"vllm_{name}"))
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        seconds = time.perf_counter() - start
        triples = []
        for out in outputs:
            completion = out.outputs[0]
            lps = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
            triples.append((list(out.prompt_token_ids), list(completion.token_ids), lps))
        reference = base if path is None else load_adapter(base, path, adapter_name=f"a{lora_id}")
        checks = check_entropies(reference, triples)
        if path is not None:
            reference.unload()  # base weights untouched (never merged)
        results[name] = checks
        generated = sum(c.tokens for c in checks)
        rows.append((name, f"{tokens_per_second(generated, seconds):.0f} tokens/s; entropies vLLM "
                           f"{[round(c.engine, 3) for c in checks]} vs transformers "
                           f"{[round(c.reference, 3) for c in checks]}, max token |dlogp| "
                           f"{max(c.max_token_diff for c in checks):.3f}"))
    record(report(f"vLLM with r=256 adapters (engine start {startup:.0f} s, {len(prompts)} prompts x {MAX_TOKENS} "
                  "tokens, greedy)", rows))
    for name, checks in results.items():
        assert all(c.agrees for c in checks), (name, checks)
    for name in adapters:  # the adapter is applied (vLLM skips unmapped LoRA modules silently)
        moved = max(abs(a.engine - b.engine) for a, b in zip(results[name], results["base"]))
        assert moved > 5 * ENTROPY_ABS_TOL, (name, moved)
    if "hf" in results:  # the renamed adapter is the same adapter
        for a, b in zip(results["hf"], results["hf_as_text_layout"]):
            assert abs(a.engine - b.engine) <= ENTROPY_ABS_TOL
