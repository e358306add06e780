"""GRPO on top of the DFT model (LAMAR Model 2): DAPO loss, GDPO reward aggregation, a new small LoRA.

    python scripts/train_grpo.py --config recipes/model2_grpo.yaml --train_csv data/tagged/train.csv
    python scripts/train_grpo.py --model_name_or_path Qwen/Qwen3.5-4B --adapter outputs/model1_dft ...

Starts from the merged Model 1 (default ``Keetawan/Qwen3.5-4B_LoRA_Exact_BF16_Rank256_Alpha32_DFT``) or from a
base model plus a DFT adapter (``--adapter``: merged once into ``output_dir/merged_start`` and loaded from there, so
vLLM and resumed runs see the same weights). Rewards (``utils/rewards.py``): fidelity, token F1, exact F1, each
normalised within its group of 8 generations and then summed (TRL ``multi_objective_aggregation=
"normalize_then_sum"``, the GDPO scheme). Published settings are the defaults: loss "dapo", epsilon 0.2 / 0.28,
beta 0, token-level importance sampling, truncated completions masked, max grad norm 0.2, lr 5e-5 constant,
1 epoch, batch 2 x accumulation 4, 8 generations, temperature 1.0, min_p 0.1, top_p 1.0, completion <= 14,547
tokens, checkpoint every 10 steps, new LoRA r 2 / alpha 2.

TRL 1.16 has no ``max_prompt_length``: notes whose prompt exceeds ``--max_prompt_length`` (10,029 tokens) are left
out with a warning instead of being truncated. Generation uses vLLM (colocated) when a GPU and vLLM are present
(``--use_vllm auto``), transformers otherwise. Qwen3.5's cached ``rope_deltas`` are cleared before every training
forward, so a stale value from generation can never shift the positions of the loss pass.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trl import GRPOConfig, GRPOTrainer

from utils.fileio import InputError, report_input_error
from utils.rewards import REWARDS_BY_NAME, reward_functions
from utils.training.helpers import (
    CHAT_TEMPLATE_KWARGS,
    count_prompt_tokens,
    cuda_available,
    grpo_records,
    lora_config,
    merge_adapter,
    read_training_frame,
    resolve_bf16,
    resolve_optim,
    resolve_resume,
    save_run_config,
    to_dataset,
)

logger = logging.getLogger("train_grpo")

MODEL1 = "Keetawan/Qwen3.5-4B_LoRA_Exact_BF16_Rank256_Alpha32_DFT"
MERGED_DIR = "merged_start"


@dataclass
class GRPOScriptArguments:
    """Start model, data, rewards and the new LoRA adapter (published defaults)."""

    train_csv: str = field(default="data/tagged/train.csv", metadata={"help": "Training CSV from utils/gt_to_tag.py"})
    model_name_or_path: str = field(default=MODEL1, metadata={"help": "Merged Model 1, or the base with --adapter"})
    adapter: str | None = field(default=None, metadata={"help": "DFT LoRA adapter to merge into the model first"})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on GPU, float32 on CPU), bfloat16, float32"})
    rewards: list[str] = field(default_factory=lambda: ["fidelity", "token_f1", "exact_f1"],
                               metadata={"help": f"Reward functions, from {', '.join(REWARDS_BY_NAME)}"})
    max_prompt_length: int = field(default=10029, metadata={"help": "Leave out notes with longer prompts (tokens)"})
    lora_r: int = field(default=2, metadata={"help": "Rank of the new LoRA"})
    lora_alpha: int = field(default=2, metadata={"help": "Alpha of the new LoRA"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling"})
    use_vllm_mode: str = field(default="auto", metadata={"help": "auto: vLLM when a GPU and vLLM are present; "
                                                                  "true / false to force", "choices": ["auto", "true",
                                                                                                       "false"]})
    auto_resume: bool = field(default=True, metadata={"help": "Resume from the newest checkpoint in output_dir"})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N notes (smoke runs)"})


@dataclass
class LamarGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig with the published Model 2 settings as defaults."""

    output_dir: str = field(default="outputs/model2_grpo", metadata={"help": "Checkpoints and the adapter"})
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = 0.28
    beta: float = 0.0
    importance_sampling_level: str = "token"
    multi_objective_aggregation: str = "normalize_then_sum"  # GDPO
    mask_truncated_completions: bool = True
    max_grad_norm: float = 0.2
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "constant"
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 4
    num_generations: int | None = 8
    temperature: float = 1.0
    min_p: float | None = 0.1
    top_p: float = 1.0
    max_completion_length: int | None = 14547
    optim: str = "adamw_8bit"
    seed: int = 3407
    save_strategy: str = "steps"
    save_steps: float = 10
    logging_steps: float = 1
    report_to: None | str | list[str] = "tensorboard"
    bf16: bool | None = None
    chat_template_kwargs: dict | None = field(default_factory=lambda: dict(CHAT_TEMPLATE_KWARGS))
    vllm_mode: str = "colocate"
    activation_checkpointing: bool | None = True  # a.k.a. gradient checkpointing

    def __post_init__(self) -> None:
        self.bf16 = resolve_bf16(self.bf16)
        self.optim = resolve_optim(self.optim)
        super().__post_init__()


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
        super().__init__(*args, **kwargs)
        self._rope_modules = [m for m in self.model.modules() if hasattr(m, "rope_deltas")]

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        reset_rope_deltas(self._rope_modules)
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if cuda_available() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def drop_long_prompts(records: list[dict[str, Any]], tokenizer, limit: int) -> list[dict[str, Any]]:
    """Leave out notes whose chat prompt exceeds ``limit`` tokens (TRL 1.16 cannot truncate prompts)."""
    lengths = count_prompt_tokens(tokenizer, [r["prompt"] for r in records])
    kept = [r for r, n in zip(records, lengths) if n <= limit]
    if len(kept) < len(records):
        dropped = [r["file_id"] for r, n in zip(records, lengths) if n > limit]
        logger.warning("left out %d note(s) with prompts over %d tokens: %s", len(dropped), limit, ", ".join(dropped))
    if not kept:
        raise InputError("--max_prompt_length", str(limit), "every prompt is longer; nothing to train on")
    return kept


def build_trainer(script: GRPOScriptArguments, config: LamarGRPOConfig,
                  reward_funcs: Sequence[Callable[..., list[float]]] | None = None) -> LamarGRPOTrainer:
    """The GRPO trainer (start model merged if needed, data filtered, rewards chosen, new LoRA attached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    frame = read_training_frame(script.train_csv)
    if script.max_train_samples is not None:
        frame = frame.head(script.max_train_samples)
    dtype = torch_dtype(script.dtype)
    start = script.model_name_or_path
    if script.adapter:
        start = str(merge_adapter(start, script.adapter, Path(config.output_dir) / MERGED_DIR, dtype))
    tokenizer = AutoTokenizer.from_pretrained(start)
    tokenizer.padding_side = "left"
    records = drop_long_prompts(grpo_records(frame), tokenizer, script.max_prompt_length)
    config.use_vllm = resolve_use_vllm(script.use_vllm_mode)
    model = AutoModelForCausalLM.from_pretrained(start, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # stop at the end of the assistant turn
    funcs = list(reward_funcs) if reward_funcs is not None else reward_functions(script.rewards)
    return LamarGRPOTrainer(
        model=model, reward_funcs=funcs, args=config, train_dataset=to_dataset(records), processing_class=tokenizer,
        peft_config=lora_config(script.lora_r, script.lora_alpha, script.lora_dropout, script.use_rslora),
    )


def train(script: GRPOScriptArguments, config: LamarGRPOConfig,
          reward_funcs: Sequence[Callable[..., list[float]]] | None = None) -> LamarGRPOTrainer:
    """Train (resuming when a checkpoint exists), then save the adapter, tokenizer and resolved run config."""
    trainer = build_trainer(script, config, reward_funcs)
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, script.auto_resume)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    trainer.processing_class.save_pretrained(config.output_dir)
    save_run_config(config.output_dir, {"script": script, "training": config})
    return trainer


def parse_args(argv: Sequence[str] | None = None) -> tuple[GRPOScriptArguments, LamarGRPOConfig]:
    from trl import TrlParser

    parser = TrlParser((GRPOScriptArguments, LamarGRPOConfig))
    script, config = parser.parse_args_and_config(args=argv)
    return script, config


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    script, config = parse_args(argv)
    try:
        train(script, config)
    except (InputError, ValueError) as err:
        return report_input_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
