"""vLLM greedy generation with each adapter, and the same tokens teacher-forced through transformers.

    python tests/gpu/vllm_entropy_driver.py RESULT.json MODEL_DIR TRAIN_CSV NAME=ADAPTER_DIR ...

Run by tests/gpu/test_vllm_gpu.py in its own process (a vLLM engine in the pytest process would share its CUDA
state). One engine with LoRA enabled (the project's ``vllm_engine_kwargs``, max_lora_rank from r = 256); each adapter
goes through ``adapter_for_vllm`` (renamed when vLLM's class would not map its names); the reference is the
checkpoint in bf16 weights computed in float32 with the adapter loaded by ``load_adapter`` (strict), unmerged.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import json  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402

MAX_TOKENS = 48


def main() -> int:
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from utils.generation.backends import vllm_engine_kwargs, vllm_sampling_kwargs
    from utils.meddec.tables import read_tagged_table
    from utils.prompt import render_chat_prompt
    from utils.testing.gpu_checks import check_entropies
    from utils.training.layout import adapter_for_vllm, load_adapter, load_generative_model

    result_path, model_dir, csv = sys.argv[1:4]
    adapters = dict(arg.split("=", 1) for arg in sys.argv[4:])
    work = pathlib.Path(result_path).parent
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [render_chat_prompt(tokenizer, note) for note in read_tagged_table(csv)["raw_text"]]
    engine = vllm_engine_kwargs(model_dir, adapter_r=256, max_model_len=4096, max_num_seqs=8,
                                gpu_memory_utilization=0.25, dtype="bfloat16", seed=0, extra={"enforce_eager": True})
    # The reference first: starting the engine registers vLLM's own Qwen3_5Config with AutoConfig (exist_ok=True),
    # after which transformers' class cannot load the multimodal checkpoint (its vision config lacks
    # num_attention_heads).
    reference_model = load_generative_model(model_dir, dtype=torch.bfloat16).float().cuda().eval()
    start = time.perf_counter()
    llm = LLM(**engine)
    startup = time.perf_counter() - start
    params = SamplingParams(**{**vllm_sampling_kwargs(MAX_TOKENS, 0.0, True, 0), "ignore_eos": True})

    results = {}
    for lora_id, (name, path) in enumerate([("base", None), *adapters.items()]):
        request = None
        if path is not None:
            request = LoRARequest(name, lora_id, adapter_for_vllm(path, model_dir, work / f"vllm_{name}"))
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        seconds = time.perf_counter() - start
        triples = []
        for out in outputs:
            completion = out.outputs[0]
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
            triples.append((list(out.prompt_token_ids), list(completion.token_ids), logprobs))
        reference = reference_model if path is None else load_adapter(reference_model, path, adapter_name=name)
        checks = check_entropies(reference, triples)
        if path is not None:
            reference_model = reference.unload()  # LoRA layers removed, base weights never merged
        results[name] = {"seconds": seconds, "checks": [asdict(c) for c in checks],
                         "agrees": [c.agrees for c in checks]}
    pathlib.Path(result_path).write_text(json.dumps({"startup_seconds": startup, "prompts": len(prompts),
                                                     "max_tokens": MAX_TOKENS, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
