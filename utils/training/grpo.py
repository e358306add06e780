"""GRPO on top of the DFT model (LAMAR Model 2): DAPO loss, GDPO reward aggregation, a new small LoRA.

Starts from the merged Model 1 (``--model_name_or_path``, default the released one) or from a base model plus a DFT
adapter (``--adapter``: merged once into ``output_dir/merged_start`` and loaded from there, so vLLM and resumed runs
see the same weights). Rewards (``utils/rewards.py``) are each normalised within their group of generations and then
summed (TRL ``multi_objective_aggregation="normalize_then_sum"``, the GDPO scheme).

Notes whose prompt exceeds ``--max_prompt_length`` tokens are left out with a warning instead of being truncated.
Generation uses vLLM (colocated) when a GPU and vLLM are present (``--use_vllm_mode auto``), transformers otherwise.
Qwen3.5's cached ``rope_deltas`` are cleared before every training forward, so a stale value from generation can
never shift the positions of the loss pass.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from trl import GRPOTrainer

from utils.configs.training import GRPOModelConfig, GRPOScriptArguments, LamarGRPOConfig
from utils.fileio import InputError
from utils.rewards import reward_functions
from utils.training.data import count_prompt_tokens, grpo_records, read_training_frame, to_dataset
from utils.training.models import (
    check_model_reference, cuda_available, loading_error, merge_adapter, peft_config, resolve_dtype,
)
from utils.training.runs import claim_output_dir, resolve_resume, run_fingerprint, save_run_config
from utils.training.trl_cpu import install_cpu_fused_head

logger = logging.getLogger(__name__)

MERGED_DIR = "merged_start"
# Trainer settings that shape the trained weights (a resumed run may change step limits, logging and saving).
TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "optim", "seed", "bf16", "max_grad_norm", "loss_type", "epsilon",
                 "epsilon_high", "beta", "importance_sampling_level", "multi_objective_aggregation",
                 "mask_truncated_completions", "num_generations", "temperature", "min_p", "top_p",
                 "max_completion_length")


def vllm_available() -> bool:
    """vLLM is a GPU-only dependency (requirements-gpu.txt)."""
    return cuda_available() and importlib.util.find_spec("vllm") is not None


def resolve_use_vllm(mode: str) -> bool:
    if mode == "auto":
        return vllm_available()
    if mode == "true" and not vllm_available():
        raise InputError("--use_vllm_mode", "true", "vLLM needs a CUDA GPU and the vllm package")
    return mode == "true"


def reset_rope_deltas(modules: Sequence[Any]) -> None:
    """Forget Qwen3.5's cached multimodal RoPE offsets (set by generate, not valid for a fresh forward)."""
    for module in modules:
        module.rope_deltas = None


class LamarGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that clears cached ``rope_deltas`` before computing per-token log-probabilities."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        install_cpu_fused_head()  # TRL 1.15's fused LM head has no CPU path of its own
        super().__init__(*args, **kwargs)
        self._rope_modules = [m for m in self.model.modules() if hasattr(m, "rope_deltas")]

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        reset_rope_deltas(self._rope_modules)
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)


def drop_long_prompts(records: list[dict[str, Any]], tokenizer, limit: int) -> list[dict[str, Any]]:
    """Leave out notes whose chat prompt exceeds ``limit`` tokens (TRL cannot truncate prompts)."""
    lengths = count_prompt_tokens(tokenizer, [r["prompt"] for r in records])
    kept = [r for r, n in zip(records, lengths) if n <= limit]
    if len(kept) < len(records):
        dropped = [r["file_id"] for r, n in zip(records, lengths) if n > limit]
        logger.warning("left out %d note(s) with prompts over %d tokens: %s", len(dropped), limit, ", ".join(dropped))
    if not kept:
        raise InputError("--max_prompt_length", str(limit), "every prompt is longer; nothing to train on")
    return kept


def start_model(script: GRPOScriptArguments, model_args: GRPOModelConfig, config: LamarGRPOConfig) -> str:
    """The model GRPO starts from: the given one, or the base merged with ``--adapter`` (once, kept on disk)."""
    start = model_args.model_name_or_path
    check_model_reference("--model_name_or_path", start)
    check_model_reference("--adapter", script.adapter)
    if script.adapter:
        merged = Path(config.output_dir) / MERGED_DIR
        start = str(merge_adapter(start, script.adapter, merged, resolve_dtype(model_args.dtype)))
    return start


def build_trainer(script: GRPOScriptArguments, model_args: GRPOModelConfig, config: LamarGRPOConfig,
                  reward_funcs: Sequence[Callable[..., list[float]]] | None = None) -> LamarGRPOTrainer:
    """The GRPO trainer (start model merged if needed, data filtered, rewards chosen, new LoRA attached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    frame = read_training_frame(script.train_csv)
    if script.max_train_samples is not None:
        frame = frame.head(script.max_train_samples)
    config.use_vllm = resolve_use_vllm(script.use_vllm_mode)
    start = start_model(script, model_args, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(start)
        model = AutoModelForCausalLM.from_pretrained(start, dtype=resolve_dtype(model_args.dtype))
    except (OSError, ValueError) as err:  # a missing or an incomplete model folder
        raise loading_error("--model_name_or_path", start, err) from None
    tokenizer.padding_side = "left"
    records = drop_long_prompts(grpo_records(frame), tokenizer, script.max_prompt_length)
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # stop at the end of the assistant turn
    funcs = list(reward_funcs) if reward_funcs is not None else reward_functions(script.rewards)
    return LamarGRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=to_dataset(records),
                            processing_class=tokenizer, peft_config=peft_config(model_args))


def train(script: GRPOScriptArguments, model_args: GRPOModelConfig, config: LamarGRPOConfig,
          reward_funcs: Sequence[Callable[..., list[float]]] | None = None) -> LamarGRPOTrainer:
    """Train (resuming when a checkpoint exists), then save the adapter, tokenizer and resolved run config."""
    trainer = build_trainer(script, model_args, config, reward_funcs)
    run_settings = {"script": {k: getattr(script, k) for k in ("adapter", "rewards", "max_prompt_length",
                                                               "max_train_samples")}, "model": model_args}
    claim_output_dir(config.output_dir, run_fingerprint(script.train_csv, run_settings, TRAINING_KEYS, config))
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, script.auto_resume)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    trainer.processing_class.save_pretrained(config.output_dir)
    # the log history (rewards per step) also when no checkpoint was saved: runs are compared and plotted from it
    trainer.state.save_to_json(str(Path(config.output_dir) / "trainer_state.json"))
    save_run_config(config.output_dir, {"script": script, "model": model_args, "training": config})
    return trainer
