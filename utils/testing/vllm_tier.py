"""Models and adapters for the real-engine vLLM tier (``pytest -m vllm``, tests/vllm_tier), CPU-sized.

vLLM's CPU build runs Qwen3.5 in bf16 only (fp32 hits ``causal_conv1d_fwd_kernel_impl not implemented for 'Float'``)
and with head dims that are multiples of 32, so the tier uses the GPU suite's kernel-friendly tiny Qwen3.5
(``gpu_checks.build_tiny_gpu_qwen35``: head dims 64), warm-started on the tagging task so that its greedy choices are
confident: a random model's near-ties would let bf16 rounding pick different tokens on the two backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "in_proj_qkv",
                "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")  # every projection vLLM packs or serves


def warm_start(base_dir: str | Path, rows: Sequence[dict[str, str]], out_dir: str | Path, *, steps: int = 30,
               learning_rate: float = 3e-3, seed: int = 0) -> Path:
    """Full fine-tuning (plain cross-entropy on the tagged answer after the published prompt, one note per step,
    AdamW), saved in bf16 with the base folder's tokenizer and processor files; the class of the checkpoint kept."""
    import shutil

    from transformers import AutoTokenizer

    from utils.prompt import render_chat_prompt
    from utils.training.layout import load_generative_model

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = load_generative_model(str(base_dir), dtype=torch.float32)
    examples = []
    for row in rows:
        prompt = tokenizer(render_chat_prompt(tokenizer, row["raw_text"]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["gold_span"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        examples.append((torch.tensor([prompt + answer]), torch.tensor([[-100] * len(prompt) + answer])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = Path(out_dir)
    model.eval().to(torch.bfloat16).save_pretrained(str(out))
    for path in Path(base_dir).iterdir():  # tokenizer, chat template, processor files, generation config
        if path.is_file() and not path.name.startswith(("model", "config.json")):
            shutil.copyfile(path, out / path.name)
    return out


def make_lora_adapter(model_dir: str | Path, out_dir: str | Path, *, r: int = 8, alpha: int = 8, seed: int = 0,
                      std: float = 0.02) -> Path:
    """A PEFT LoRA adapter on every projection of the checkpoint's class (its layout's names), with seeded weights
    (``gpu_checks.set_lora_weights``) so that its effect on the outputs is visible."""
    from peft import LoraConfig, get_peft_model

    from utils.testing.gpu_checks import set_lora_weights
    from utils.training.layout import load_generative_model

    model = load_generative_model(str(model_dir), dtype=torch.bfloat16)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(LORA_TARGETS), lora_dropout=0.0,
                        exclude_modules=r".*visual.*")
    get_peft_model(model, config).save_pretrained(str(out_dir))
    set_lora_weights(out_dir, seed=seed, std=std)
    return Path(out_dir)


def lora_changed_modules(keys: Sequence[str]) -> set[str]:
    from utils.testing.gpu_checks import adapter_modules

    return adapter_modules(list(keys))


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """Index of the first differing item (None when equal), for readable assertion messages."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
