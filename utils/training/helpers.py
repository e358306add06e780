"""Helpers shared by the training scripts (train_dft, train_grpo): data, LoRA, devices, resume, run records.

The training data is a split CSV from ``utils/gt_to_tag.py`` (columns file_id, raw_text, gold_span,
gold_offsets). Each row becomes one conversation: the user turn is the published instruction with the note
(``utils.prompt``), the assistant turn is the tagged note; the chat template runs with thinking off.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from utils.fileio import InputError, atomic_open
from utils.prompt import build_messages

logger = logging.getLogger(__name__)

# The chat template is applied with thinking off, as the released checkpoints were trained and are served.
CHAT_TEMPLATE_KWARGS: dict[str, Any] = {"enable_thinking": False}

# Attention (full attention and Qwen3.5's gated-delta linear attention) and MLP projections. The regex is matched
# against full module names by PEFT; modules under a vision tower ("visual") and the LM head are never adapted.
LANGUAGE_MODEL_PROJECTIONS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj",  # full attention
    "in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj",  # gated-delta (linear) attention
    "gate_proj", "up_proj", "down_proj",  # MLP
)


def language_model_target_modules(projections: Sequence[str] = LANGUAGE_MODEL_PROJECTIONS) -> str:
    """PEFT ``target_modules`` regex: the given projections anywhere except inside a vision tower."""
    names = "|".join(re.escape(p) for p in projections)
    return rf"^(?!.*(?:visual|vision_tower)).*\.({names})$"


def read_training_frame(path: str | os.PathLike[str]):
    """A gt_to_tag split CSV with a gold answer in every row (one-line InputError otherwise)."""
    from utils.gt_to_tag import read_tagged_csv

    frame = read_tagged_csv(path)
    if frame.empty:
        raise InputError(path, "", "no rows: a training CSV needs at least one note")
    for index, (file_id, raw_text, gold) in enumerate(zip(frame["file_id"], frame["raw_text"], frame["gold_span"])):
        if not raw_text:
            raise InputError(path, f"row {index + 1} (file_id {file_id})", "empty raw_text")
        if not gold:
            raise InputError(path, f"row {index + 1} (file_id {file_id})",
                             "empty gold_span: training needs the tagged note (is this the test split?)")
    return frame


def sft_records(frame) -> list[dict[str, Any]]:
    """Prompt-completion conversations: TRL then trains on the completion (the tagged note) only."""
    records = []
    for file_id, raw_text, gold in zip(frame["file_id"], frame["raw_text"], frame["gold_span"]):
        prompt, completion = build_messages(raw_text, gold)
        records.append({
            "file_id": file_id,
            "prompt": [prompt],
            "completion": [completion],
            "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS),
        })
    return records


def grpo_records(frame) -> list[dict[str, Any]]:
    """Prompt-only conversations; the note and its gold answer travel as columns for the reward functions."""
    return [
        {"file_id": file_id, "prompt": build_messages(raw_text), "raw_text": raw_text, "gold_span": gold,
         "gold_offsets": offsets}
        for file_id, raw_text, gold, offsets in zip(frame["file_id"], frame["raw_text"], frame["gold_span"],
                                                    frame["gold_offsets"])
    ]


def to_dataset(records: Sequence[dict[str, Any]]):
    """A ``datasets.Dataset`` from row dicts."""
    from datasets import Dataset

    return Dataset.from_list(list(records))


def lora_config(
    r: int,
    alpha: int,
    dropout: float = 0.0,
    use_rslora: bool = True,
    target_modules: str | Sequence[str] | None = None,
    task_type: str = "CAUSAL_LM",
):
    """peft.LoraConfig for the language model's attention and MLP projections (published: r 256, alpha 32, rsLoRA)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_rslora=use_rslora,
        bias="none",
        target_modules=target_modules or language_model_target_modules(),
        task_type=task_type,
    )


def cuda_available() -> bool:
    """True on a machine with a usable CUDA device."""
    import torch

    return torch.cuda.is_available()


def resolve_optim(optim: str, on_gpu: bool | None = None) -> str:
    """The published 8-bit AdamW needs bitsandbytes and a GPU; on CPU fall back to plain AdamW (with a warning)."""
    on_gpu = cuda_available() if on_gpu is None else on_gpu
    if "8bit" in str(optim) and not on_gpu:
        logger.warning("optim %s needs a GPU (bitsandbytes): using adamw_torch on this CPU machine", optim)
        return "adamw_torch"
    return str(optim)


def resolve_bf16(bf16: bool | None, on_gpu: bool | None = None) -> bool:
    """bf16 by default where the GPU supports it; full precision on CPU (bf16 CPU training is slow)."""
    import torch

    if bf16 is not None:
        return bool(bf16)
    on_gpu = cuda_available() if on_gpu is None else on_gpu
    return bool(on_gpu and torch.cuda.is_bf16_supported())


def last_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` (None when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(str(output_dir))


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike[str],
                   auto_resume: bool = True) -> str | None:
    """Which checkpoint to resume: an explicit path, "true"/True = the newest, else the newest when auto-resuming."""
    value = resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        value = value.lower() == "true"
    if isinstance(value, str):
        if not os.path.isdir(value):
            raise InputError(value, "", "--resume_from_checkpoint: not a checkpoint folder")
        return value
    if value or auto_resume:
        found = last_checkpoint(output_dir)
        if value and found is None:
            raise InputError(output_dir, "", "--resume_from_checkpoint true: no checkpoint-* folder to resume from")
        return found
    return None


def _plain(value: Any) -> Any:
    """JSON/YAML-safe version of a config value (enums, paths, sets)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    return str(value)


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass (or TrainingArguments) as a plain dict, every field kept."""
    if hasattr(config, "to_dict"):
        return _plain(config.to_dict())
    return _plain(dataclasses.asdict(config))


def save_run_config(out_dir: str | os.PathLike[str], sections: dict[str, Any], name: str = "run_config") -> Path:
    """Write the fully resolved run configuration as YAML and JSON beside the adapter (reproducibility)."""
    import yaml

    data = {key: config_dict(value) if not isinstance(value, dict) else _plain(value) for key, value in sections.items()}
    out = Path(out_dir)
    with atomic_open(out / f"{name}.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True)
    with atomic_open(out / f"{name}.json", "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return out / f"{name}.yaml"


def trainable_parameter_names(model) -> list[str]:
    """Names of parameters that require a gradient (e.g. the LoRA matrices)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def count_prompt_tokens(tokenizer, prompts: Iterable[list[dict[str, Any]]]) -> list[int]:
    """Tokens of each chat prompt with the generation prompt, thinking off (the length GRPO limits)."""
    lengths = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            **CHAT_TEMPLATE_KWARGS)["input_ids"]
        lengths.append(len(ids))
    return lengths


def answer_token_stats(model, tokenizer, raw_text: str, answer: str) -> tuple[float, float]:
    """Mean NLL and top-1 accuracy of the answer tokens (and end of turn) given the prompt, as SFT sees them.

    What DFT training should improve; the DFT loss value itself (-p log p) can rise while the model learns.
    """
    import torch

    prompt_messages, answer_message = build_messages(raw_text, answer)
    prompt_ids = tokenizer.apply_chat_template([prompt_messages], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, **CHAT_TEMPLATE_KWARGS)["input_ids"]
    full_ids = tokenizer.apply_chat_template([prompt_messages, answer_message], tokenize=True, return_dict=True,
                                             **CHAT_TEMPLATE_KWARGS)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + answer")
    ids = torch.tensor([full_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1 : -1].float()
    targets = ids[0, len(prompt_ids) :]
    nll = torch.nn.functional.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return float(nll), float(accuracy)


MODEL_CLASSES = ("causal_lm", "image_text_to_text")


def _auto_model_class(model_class: str):
    """AutoModelForCausalLM (text only) or AutoModelForImageTextToText (keeps a VLM's vision tower)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if model_class not in MODEL_CLASSES:
        raise ValueError(f"model_class must be one of {', '.join(MODEL_CLASSES)}, got {model_class!r}")
    return AutoModelForCausalLM if model_class == "causal_lm" else AutoModelForImageTextToText


def merge_adapter(base: str, adapter: str, out_dir: str | os.PathLike[str], dtype=None, *,
                  model_class: str = "causal_lm", overwrite: bool = False) -> Path:
    """Merge a LoRA ``adapter`` into ``base``; save model + tokenizer to ``out_dir`` (kept if already there).

    The tokenizer comes from the adapter folder when it has one (training saves it there), else from the base.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    out = Path(out_dir)
    if (out / "config.json").is_file() and not overwrite:
        return out
    model = _auto_model_class(model_class).from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer_source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(str(out))
    return out
