"""Argument dataclasses of the training scripts, on TRL's ``SFTConfig``, ``GRPOConfig`` and ``ModelConfig``.

Each script parses (script arguments, model config, trainer config), as TRL's own ``trl/scripts/sft.py`` does; the
LoRA adapter is built from the model config by ``utils.training.models.peft_config`` (TRL's ``get_peft_config``).
Defaults are the published settings (SPEC section 4): Model 1 and 3 share the DFT classes (Model 3 differs only in
its training CSV and output folder), Model 2 uses the GRPO classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig, ModelConfig, SFTConfig

from utils.configs import (
    BASE_MODEL,
    DEFAULT_DFT_BACKEND,
    DEFAULT_DFT_ROUTE,
    DFT_BACKENDS,
    DFT_ROUTES,
    LANGUAGE_MODEL_PROJECTIONS,
    LOSS_MASKS,
    RELEASED_MODEL_1,
    TAGGED_DIR,
)
from utils.configs.device import resolve_bf16, resolve_optim
from utils.fileio import InputError
from utils.metric.rules import DEFAULT_SCORER, SCORER_HELP, SCORERS

DFT_LOSSES = ("dft", "nll")
USE_VLLM_MODES = ("auto", "true", "false")
THINKING_MODES = ("template", "false", "true")
REWARD_NAMES = ("fidelity", "token_f1", "exact_f1", "official")
def require_positive(config: Any, names: tuple[str, ...], allow_zero: tuple[str, ...] = ()) -> None:
    """Refuse settings that would silently train nothing or diverge (a negative learning rate, zero epochs)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (value < 0 or (value == 0 and name not in allow_zero)):
            raise InputError.flag(f"--{name}", f"expected a positive number, got {value}")


_TARGETS_HELP = ("Module names to adapt (default: attention and MLP projections of the language model, "
                 f"{' '.join(LANGUAGE_MODEL_PROJECTIONS)}; never the vision tower)")


@dataclass
class LamarModelConfig(ModelConfig):
    """What both model configs share: bf16 where the GPU has it, a LoRA adapter on the language model's
    attention and MLP projections, dropout 0 (the subclasses set the base model and the adapter's size)."""

    dtype: str | None = field(default="auto", metadata={
        "help": "Weights dtype: auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16 or float32."})
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (published)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default_factory=lambda: list(LANGUAGE_MODEL_PROJECTIONS),
                                                  metadata={"help": _TARGETS_HELP})

    def __post_init__(self) -> None:
        require_positive(self, ("lora_r", "lora_alpha"))
        require_positive(self, ("lora_dropout",), allow_zero=("lora_dropout",))
        super().__post_init__()


@dataclass
class DFTModelConfig(LamarModelConfig):
    """Model 1 / 3: Qwen3.5-4B with a new LoRA adapter (r 256, alpha 32, rsLoRA)."""

    model_name_or_path: str | None = field(default=BASE_MODEL, metadata={"help": "Base model (Hub id or folder)."})
    lora_r: int = field(default=256, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    use_rslora: bool = field(default=True, metadata={"help": "Rank-stabilised LoRA scaling alpha/sqrt(r)."})


@dataclass
class GRPOModelConfig(LamarModelConfig):
    """Model 2: the merged Model 1 with a new small LoRA adapter (r 2, alpha 2)."""

    model_name_or_path: str | None = field(default=RELEASED_MODEL_1, metadata={
        "help": "Merged Model 1, or the base model with --adapter."})
    lora_r: int = field(default=2, metadata={"help": "Rank of the new LoRA."})
    lora_alpha: int = field(default=2, metadata={"help": "Alpha of the new LoRA."})


@dataclass
class DFTScriptArguments:
    """What to train on, which backend and loss, and the run-time loss guard."""

    train_csv: str = field(default=str(TAGGED_DIR / "train.csv"), metadata={
        "help": "Training CSV from utils/gt_to_tag.py (file_id, raw_text, gold_span, gold_offsets)."})
    backend: str = field(default=DEFAULT_DFT_BACKEND, metadata={
        "help": "unsloth (GPU, as published; imported before trl/transformers/peft) or hf (any device).",
        "choices": list(DFT_BACKENDS)})
    loss: str = field(default="dft", metadata={"help": "dft (published) or nll (plain SFT ablation).",
                                               "choices": list(DFT_LOSSES)})
    dft_route: str = field(default=DEFAULT_DFT_ROUTE, metadata={
        "help": "fused: the loss the pinned TRL/Unsloth compute on the fused LM head (no full logits); kernel "
                "(--backend unsloth): our Triton DFT kernel through Unsloth's full-logits loss (UNSLOTH_RETURN_LOGITS=1; "
                "+12.2 GB of bf16 logits at 24,576 tokens), its call counter checked at step 1.",
        "choices": list(DFT_ROUTES)})
    dft_guard: bool = field(default=True, metadata={
        "help": "Stop unless the chosen loss is verifiably in effect at the first optimisation step."})
    guard_rel_tol: float = field(default=1e-2, metadata={"help": "Relative tolerance of the guard's comparisons."})
    auto_resume: bool = field(default=True, metadata={"help": "Resume from the newest checkpoint in output_dir."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N notes (smoke runs)."})
    loss_mask: str = field(default="response", metadata={
        "help": "Tokens the loss is computed on: response (published, Unsloth's train_on_responses_only after "
                "'<|im_start|>assistant\\n': the empty think block, the tagged note and the end of turn) or answer "
                "(TRL's completion after the generation prompt: the think block is prompt).",
        "choices": list(LOSS_MASKS)})

    def __post_init__(self) -> None:
        if self.dft_route == "kernel" and self.backend != "unsloth":
            raise InputError.flag("--dft_route", "our Triton kernel is reached through Unsloth's loss: needs --backend "
                                  "unsloth (the hf backend trains DFT on TRL's fused head)", value="kernel")


@dataclass
class DFTConfig(SFTConfig):
    """TRL's SFTConfig with the published Model 1 settings as defaults (every TrainingArguments flag still works)."""

    output_dir: str = field(default="outputs/model1_dft", metadata={"help": "Where checkpoints and the adapter go."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after the warm-up."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up: a ratio of total steps when < 1."})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the training notes."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Notes per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=8, metadata={
        "help": "Micro-batches per optimiser step (effective batch: this x batch size x devices)."})
    optim: str = field(default="adamw_8bit", metadata={"help": "Optimizer (adamw_8bit falls back to adamw_torch on CPU)."})
    max_length: int | None = field(default=24576, metadata={
        "help": "Max tokens of prompt + answer (set explicitly: TRL's default would silently truncate notes)."})
    seed: int = field(default=3407, metadata={"help": "Random seed (data order, LoRA initialisation)."})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "Recompute activations in the backward pass (saves memory on 24k-token sequences)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on where the GPU supports it)."})
    logging_steps: float = field(default=1, metadata={"help": "Log the loss every N optimiser steps."})
    save_strategy: str = field(default="epoch", metadata={
        "help": "When to checkpoint (published: epoch, every checkpoint kept; --save_strategy steps --save_steps 20 "
                "--save_total_limit 3 bounds what a killed 24k-token run loses)."})
    save_steps: float = field(default=20, metadata={"help": "Checkpoint every N optimiser steps (read only with "
                                                            "--save_strategy steps)."})
    save_total_limit: int | None = field(default=None, metadata={
        "help": "Keep only the newest N checkpoints (published: none, every checkpoint kept)."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={
        "help": "Where logs go (tensorboard, wandb, none, ...)."})
    packing: bool = field(default=False, metadata={
        "help": "Pack several notes into one sequence (off: fails on Qwen3.5 without causal_conv1d)."})
    completion_only_loss: bool | None = field(default=True, metadata={
        "help": "Train on the answer tokens only (the prompt and note are context)."})
    assistant_only_loss: bool = field(default=False, metadata={
        "help": "Train on assistant turns only (needs a chat template with generation marks; the completion mask "
                "already does this)."})
    loss_type: str = field(default="dft", metadata={
        "flag": False, "help": "TRL's loss switch, set from --loss when the trainer is built (not a flag of its own)."})
    # The defaults Unsloth's UnslothSFTConfig.__init__ gives (unsloth/models/rl.py `replacements`, 2026.10.9) that the
    # published run kept (it passed neither): this dataclass has its own __init__, so that one never runs.
    # utils.training.sft.UNSLOTH_CONFIG_INIT lists them all; tests/test_unsloth_config_defaults.py checks them against the wheel.
    logging_nan_inf_filter: bool = field(default=False, metadata={
        "help": "Log nan/inf losses as they are (published: Unsloth's default False)."})
    torch_empty_cache_steps: int | None = field(default=250, metadata={
        "help": "Empty the CUDA cache every N steps (published: Unsloth's default 250)."})
    per_device_eval_batch_size: int = field(default=4, metadata={
        "help": "Evaluation batch size (published: Unsloth's default 4; the run does not evaluate)."})
    eval_accumulation_steps: int | None = field(default=2, metadata={
        "help": "Evaluation accumulation steps (published: Unsloth's default 2; the run does not evaluate)."})
    padding_free: bool | None = field(default=None, metadata={
        "help": "None (published, Unsloth's default): Unsloth's trainer chooses; the hf backend reads None as False."})

    def __post_init__(self) -> None:
        require_positive(self, ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                                "max_length"))
        require_positive(self, ("num_train_epochs", "weight_decay", "warmup_steps"),
                         allow_zero=("weight_decay", "warmup_steps", "num_train_epochs" if self.max_steps > 0 else ""))
        self.bf16 = resolve_bf16(self.bf16)
        self.optim = resolve_optim(self.optim)
        super().__post_init__()


@dataclass
class GRPOScriptArguments:
    """Data, start adapter and rewards of Model 2."""

    train_csv: str = field(default=str(TAGGED_DIR / "train.csv"), metadata={"help": "Training CSV from utils/gt_to_tag.py."})
    adapter: str | None = field(default=None, metadata={
        "help": "DFT LoRA adapter to merge into --model_name_or_path first (e.g. your own Model 1)."})
    rewards: list[str] = field(default_factory=lambda: ["fidelity", "token_f1", "exact_f1"], metadata={
        "help": f"Reward functions, from {', '.join(REWARD_NAMES)}.", "choices": list(REWARD_NAMES)})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Leave out notes whose prompt has more tokens (e.g. 10029, the limit the published script computed "
                "but never passed). Default: every note is used, as published."})
    prompt_stray_quote: bool = field(default=True, metadata={
        "help": "Start the prompt with the stray '\"' of the published train_grpo.py (its instruction was written "
                "between four quotes); --prompt_stray_quote false uses the prompt Model 1 was trained with."})
    enable_thinking: str = field(default="template", metadata={
        "help": "Thinking switch passed to the chat template: template passes none, as published (Qwen3.5-4B's "
                "template then opens a think block); false or true pass enable_thinking. Overrides an "
                "enable_thinking in --chat_template_kwargs.", "choices": list(THINKING_MODES)})
    use_vllm_mode: str = field(default="auto", metadata={
        "help": "auto: vLLM when a GPU and vLLM are present; true / false to force.", "choices": list(USE_VLLM_MODES)})
    rollout_copy_constraint: bool = field(default=False, metadata={
        "help": "Sample the rollouts under the copy constraint copy-decoded inference uses, so they differ only in "
                "where tags go (not published: off; transformers generation only, --use_vllm_mode false)."})
    auto_resume: bool = field(default=True, metadata={"help": "Resume from the newest checkpoint in output_dir."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N notes (smoke runs)."})
    scorer: str = field(default=DEFAULT_SCORER, metadata={
        "help": "Scorer of the 'official' reward (not published; only used when --rewards names it). "
                + SCORER_HELP, "choices": list(SCORERS)})


@dataclass
class LamarGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig with the published Model 2 settings as defaults (DAPO loss, GDPO aggregation)."""

    output_dir: str = field(default="outputs/model2_grpo", metadata={"help": "Checkpoints and the adapter."})
    loss_type: str = field(default="dapo", metadata={
        "help": "Policy loss: dapo normalises token losses by the active tokens of the accumulated batch (TRL's "
                "choices: grpo, dr_grpo, dapo, bnpo, cispo, sapo, luspo, vespo)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping range of the importance ratio."})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Upper clipping range (DAPO's clip-higher)."})
    beta: float = field(default=0.0, metadata={"help": "KL penalty coefficient (0: no reference model)."})
    importance_sampling_level: str = field(default="token", metadata={
        "help": "Importance ratios per token or per sequence."})
    multi_objective_aggregation: str = field(default="normalize_then_sum", metadata={
        "help": "How the rewards combine: normalize_then_sum (GDPO: each reward normalised in its group, then "
                "summed) or sum_then_normalize."})
    mask_truncated_completions: bool = field(default=True, metadata={
        "help": "Leave completions that hit --max_completion_length out of the loss."})
    max_grad_norm: float = field(default=0.2, metadata={"help": "Gradient clipping norm."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of AdamW."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training notes."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Completions per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimiser step."})
    num_generations: int | None = field(default=8, metadata={"help": "Completions per prompt (one GRPO group)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the completions."})
    min_p: float | None = field(default=None, metadata={
        "help": "Min-p sampling. Default none: the published 0.1 sat only in vLLM sampling params of a run that "
                "generated without vLLM (Unsloth fast_inference=False), so it never applied; 0.1 applies it."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of the completions (1.0: off)."})
    max_completion_length: int | None = field(default=14547, metadata={"help": "Token budget of a completion."})
    optim: str = field(default="adamw_8bit", metadata={
        "help": "Optimizer (adamw_8bit falls back to adamw_torch on CPU)."})
    # The published script set no seed or weight decay: the GRPOConfig it imported after `from unsloth import ...` is
    # Unsloth's compiled UnslothGRPOConfig, whose signature defaults are seed 3407 and weight_decay 0.01 in unsloth
    # 2026.4.3 (the published era; unsloth/models/rl.py `replacements`) and 3407 / 0.001 in the pinned 2026.10.9.
    seed: int = field(default=3407, metadata={
        "help": "Random seed (published: 3407, the default of Unsloth's patched GRPOConfig; the published script set "
                "none; TRL's own default is 42)."})
    weight_decay: float = field(default=0.01, metadata={
        "help": "AdamW weight decay (published: 0.01, the default of the published-era Unsloth 2026.4.3's patched "
                "GRPOConfig; the pinned Unsloth 2026.10.9 defaults to 0.001, TRL to 0.0)."})
    save_strategy: str = field(default="steps", metadata={"help": "When to save checkpoints (every --save_steps)."})
    save_steps: float = field(default=10, metadata={"help": "Save a checkpoint every N optimiser steps."})
    logging_steps: float = field(default=1, metadata={"help": "Log losses and rewards every N optimiser steps."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={
        "help": "Where logs go (tensorboard, wandb, none, ...)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on where the GPU supports it)."})
    chat_template_kwargs: dict | None = field(default=None, metadata={
        "help": "Extra chat template arguments (YAML recipes; for the thinking switch use --enable_thinking)."})
    vllm_mode: str = field(default="colocate", metadata={
        "help": "colocate: vLLM shares the training GPU(s); server: a separate trl vllm-serve process."})
    # Colocated vLLM's share of the GPU (TRL's default, stated): on the published single 80 GB GPU it holds the bf16
    # weights (~9 GB), KV cache for every rollout of a generation batch at full context (8 x 24,576 tokens x 32 KiB
    # for Qwen3.5-4B's 8 full-attention layers = 6 GiB) and the linear-attention states, leaving ~56 GB to training.
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={
        "help": "Share of GPU memory colocated vLLM takes (weights, KV cache of a generation batch)."})
    vllm_importance_sampling_correction: bool = field(default=False, metadata={
        "help": "Reweight the loss by the ratio of trainer to vLLM token probabilities (TRL's default). Off as "
                "published: its completions came from the trained model itself (no vLLM), so there was none."})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "Recompute activations in the backward pass (saves memory on 24k-token sequences)."})

    def __post_init__(self) -> None:
        require_positive(self, ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                                "max_completion_length", "temperature"))
        require_positive(self, ("num_train_epochs",), allow_zero=("num_train_epochs" if self.max_steps > 0 else "",))
        if self.num_generations is not None and self.num_generations < 2:
            raise InputError.flag("--num_generations", f"GRPO compares generations within a group, so at least 2 "
                                  f"are needed, got {self.num_generations}")
        self.bf16 = resolve_bf16(self.bf16)
        self.optim = resolve_optim(self.optim)
        super().__post_init__()
