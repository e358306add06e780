"""GRPO on top of the DFT model (LAMAR Model 2): DAPO loss, GDPO reward aggregation, a new small LoRA.

Starts from the merged Model 1 (``--model_name_or_path``, default the released one) or from a base model plus a DFT
adapter (``--adapter``: merged once into ``output_dir/merged_start`` and loaded from there, so vLLM and resumed runs
see the same weights). Rewards (``utils/rewards.py``) are each normalised within their group of generations and then
summed (TRL ``multi_objective_aggregation="normalize_then_sum"``, the GDPO scheme).

As published, every note is used (the published script computed a prompt limit of 10,029 tokens but never passed
it); with ``--max_prompt_length`` notes whose prompt is longer are left out with a warning instead of being
truncated. Also as published: the prompt starts with a stray ``"`` (``--prompt_stray_quote``), the chat template
gets no thinking switch (``--enable_thinking template``; Qwen3.5-4B's template then opens a think block, which the
rewards skip), and seed 3407 and weight decay 0.01 (the defaults of the Unsloth ``GRPOConfig`` the published
script imported: Unsloth 2026.4.3; TRL's own are 42 and 0.0). Generation uses vLLM (colocated) when a GPU and vLLM are present
(``--use_vllm_mode auto``), transformers otherwise; the published run generated with the trained model itself
(no vLLM), hence no min-p and no vLLM importance-sampling correction by default.
Qwen3.5's cached ``rope_deltas`` are cleared before every training forward, so a stale value from generation can
never shift the positions of the loss pass.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from trl import GRPOTrainer

from utils.configs.device import cuda_available
from utils.configs.training import GRPOModelConfig, GRPOScriptArguments, LamarGRPOConfig
from utils.fileio import InputError
from utils.training.data import count_prompt_tokens, grpo_records, read_training_frame, to_dataset
from utils.training.finite import FiniteTrainingCallback
from utils.training.models import check_model_reference, loading_error, merge_adapter, peft_config, resolve_dtype
from utils.rewards import reward_functions
from utils.training.runs import claim_output_dir, output_dir_lock, resolve_resume, run_fingerprint, save_run_config
from utils.training.trl_cpu import install_cpu_fused_head

logger = logging.getLogger(__name__)

MERGED_DIR = "merged_start"
# Trainer settings that shape the trained weights (a resumed run may change step limits, logging and saving).
TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "optim", "seed", "bf16", "max_grad_norm", "loss_type", "epsilon",
                 "epsilon_high", "beta", "importance_sampling_level", "multi_objective_aggregation",
                 "mask_truncated_completions", "num_generations", "temperature", "min_p", "top_p",
                 "max_completion_length", "chat_template_kwargs", "vllm_importance_sampling_correction")


def vllm_available() -> bool:
    """vLLM is a GPU-only dependency (requirements-gpu.txt)."""
    return cuda_available() and importlib.util.find_spec("vllm") is not None


def resolve_use_vllm(mode: str) -> bool:
    if mode == "auto":
        return vllm_available()
    if mode == "true" and not vllm_available():
        raise InputError.flag("--use_vllm_mode", "vLLM needs a CUDA GPU and the vllm package", value="true")
    return mode == "true"


def reset_rope_deltas(modules: Sequence[Any]) -> None:
    """Forget Qwen3.5's cached multimodal RoPE offsets (set by generate, not valid for a fresh forward)."""
    for module in modules:
        module.rope_deltas = None


class LamarGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that clears cached ``rope_deltas`` before computing per-token log-probabilities and, with
    ``copy_rollouts``, samples its completions under the copy constraint (``utils.training.copy_rollouts``)."""

    def __init__(self, *args: Any, copy_rollouts: bool = False, **kwargs: Any) -> None:
        install_cpu_fused_head()  # TRL 1.15's fused LM head has no CPU path of its own
        super().__init__(*args, **kwargs)
        self._rope_modules = [m for m in self.model.modules() if hasattr(m, "rope_deltas")]
        self._copy_vocabulary = None
        self._rollout_notes: list[str] = []
        if copy_rollouts:
            if self.use_vllm:
                raise ValueError("copy-constrained rollouts sample with transformers generate, not vLLM")
            from utils.generation.copy_decoding import CopyVocabulary

            self._copy_vocabulary = CopyVocabulary.from_tokenizer(self.processing_class, self.eos_token_ids)

    def _generate_and_score_completions(self, inputs):
        if self._copy_vocabulary is not None:  # one row per completion: the note each one must copy
            self._rollout_notes = [row["raw_text"] for row in inputs]
        return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self._copy_vocabulary is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        from trl.models import unwrap_model_for_generation

        from utils.training.copy_rollouts import sample_copy_constrained

        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         generation_kwargs=self.generation_kwargs) as unwrapped_model:
            completion_ids = sample_copy_constrained(unwrapped_model, prompt_ids, self._rollout_notes,
                                                     self._copy_vocabulary, self.generation_config,
                                                     self._tokenizer.pad_token_id)
        return completion_ids, None

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        reset_rope_deltas(self._rope_modules)
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)


def apply_thinking_switch(config: LamarGRPOConfig, mode: str) -> None:
    """``template``: leave the chat template's own default (published); ``false``/``true``: pass enable_thinking."""
    if mode == "template":
        return
    config.chat_template_kwargs = {**(config.chat_template_kwargs or {}), "enable_thinking": mode == "true"}


def drop_long_prompts(records: list[dict[str, Any]], tokenizer, limit: int,
                      chat_template_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Leave out notes whose chat prompt (rendered as training renders it) exceeds ``limit`` tokens (TRL cannot
    truncate prompts)."""
    lengths = count_prompt_tokens(tokenizer, [r["prompt"] for r in records], chat_template_kwargs or {})
    kept = [r for r, n in zip(records, lengths) if n <= limit]
    if len(kept) < len(records):
        dropped = [r["file_id"] for r, n in zip(records, lengths) if n > limit]
        logger.warning("left out %d note(s) with prompts over %d tokens: %s", len(dropped), limit, ", ".join(dropped))
    if not kept:
        raise InputError.flag("--max_prompt_length", "every prompt is longer; nothing to train on", value=limit)
    return kept


def start_model(script: GRPOScriptArguments, model_args: GRPOModelConfig, config: LamarGRPOConfig) -> str:
    """The model GRPO starts from: the given one, or the base merged with ``--adapter`` (once, kept on disk)."""
    start = model_args.model_name_or_path
    check_model_reference("--model_name_or_path", start)
    check_model_reference("--adapter", script.adapter)
    if script.adapter:
        merged = Path(config.output_dir) / MERGED_DIR
        # One process merges; the others of a multi-process run wait for it, then find the folder complete.
        with config.main_process_first(local=config.save_on_each_node, desc="merging the start adapter"):
            start = str(merge_adapter(start, script.adapter, merged, resolve_dtype(model_args.dtype)))
    return start


def vllm_context_length(prompt_tokens: int, config: LamarGRPOConfig, source: str) -> int:
    """vLLM's ``max_model_len``: the longest prompt plus the completion budget (published 10,029 + 14,547 = 24,576),
    not the model's native 262,144-token context (whose KV budget vLLM would try to reserve). ``source`` says where
    ``prompt_tokens`` came from, for the error."""
    needed = prompt_tokens + config.max_completion_length
    if config.vllm_max_model_length is None:
        return needed
    if config.vllm_max_model_length < needed:
        raise InputError.flag("--vllm_max_model_length", f"below {source} = {needed}: vLLM would refuse the longest "
                              "prompts kept or cut their completions", value=config.vllm_max_model_length)
    return config.vllm_max_model_length


def longest_prompt(script: GRPOScriptArguments, records: list[dict[str, Any]], tokenizer,
                   config: LamarGRPOConfig) -> tuple[int, str]:
    """The prompt length vLLM must hold: ``--max_prompt_length`` when given, else the longest prompt of the data
    (every note is kept, as published), counted as training renders it."""
    if script.max_prompt_length is not None:
        return script.max_prompt_length, "--max_prompt_length + --max_completion_length"
    lengths = count_prompt_tokens(tokenizer, [r["prompt"] for r in records], config.chat_template_kwargs or {})
    return max(lengths), f"the longest prompt of {script.train_csv} ({max(lengths)} tokens) + --max_completion_length"


def check_vllm_weight_names(model, checkpoint: str) -> None:
    """TRL's colocated weight sync pushes the policy's parameter names into the vLLM class the checkpoint names;
    refuse before the engine starts (minutes) if vLLM would not find them (it raises at the first sync)."""
    from utils.training.layout import checkpoint_layout, unmappable_vllm_weights

    refused = unmappable_vllm_weights([name for name, _ in model.named_parameters()], checkpoint_layout(checkpoint))
    if refused:
        raise InputError(checkpoint, "", f"{len(refused)} policy weights have no counterpart in vLLM's class for this "
                                         f"checkpoint (e.g. {refused[0]}): load the policy in the class its config "
                                         "names")


def build_trainer(script: GRPOScriptArguments, model_args: GRPOModelConfig, config: LamarGRPOConfig,
                  reward_funcs: Sequence[Callable[..., list[float]]] | None = None) -> LamarGRPOTrainer:
    """The GRPO trainer (start model merged if needed, data filtered, rewards chosen, new LoRA attached)."""
    from transformers import AutoTokenizer

    from utils.training.layout import load_generative_model

    frame = read_training_frame(script.train_csv)
    if script.max_train_samples is not None:
        frame = frame.head(script.max_train_samples)
    config.use_vllm = resolve_use_vllm(script.use_vllm_mode)
    if script.rollout_copy_constraint and config.use_vllm:
        raise InputError.flag("--rollout_copy_constraint",
                              "samples with transformers generate only: add --use_vllm_mode false")
    if config.vllm_max_model_length is not None:  # refused before minutes of loading, with or without vLLM
        vllm_context_length(script.max_prompt_length or 0, config, "--max_prompt_length + --max_completion_length"
                            if script.max_prompt_length is not None else "--max_completion_length")
    apply_thinking_switch(config, script.enable_thinking)
    start = start_model(script, model_args, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(start)
        # The class the checkpoint names: vLLM (colocate) builds that class from the same folder, and TRL syncs the
        # policy's parameter names into it, which must therefore be that class's names (utils.training.layout).
        model = load_generative_model(start, dtype=resolve_dtype(model_args.dtype))
    except InputError:
        raise
    except (OSError, ValueError) as err:  # a missing or an incomplete model folder
        raise loading_error("--model_name_or_path", start, err) from None
    if config.use_vllm:
        check_vllm_weight_names(model, start)
    tokenizer.padding_side = "left"
    records = grpo_records(frame, stray_quote=script.prompt_stray_quote)
    if script.max_prompt_length is not None:
        records = drop_long_prompts(records, tokenizer, script.max_prompt_length, config.chat_template_kwargs)
    if config.use_vllm:
        prompt_tokens, source = longest_prompt(script, records, tokenizer, config)
        config.vllm_max_model_length = vllm_context_length(prompt_tokens, config, source)
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # stop at the end of the assistant turn
    funcs = list(reward_funcs) if reward_funcs is not None else reward_functions(script.rewards, script.scorer)
    return LamarGRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=to_dataset(records),
                            processing_class=tokenizer, peft_config=peft_config(model_args),
                            copy_rollouts=script.rollout_copy_constraint)


def train(script: GRPOScriptArguments, model_args: GRPOModelConfig, config: LamarGRPOConfig,
          reward_funcs: Sequence[Callable[..., list[float]]] | None = None) -> LamarGRPOTrainer:
    """Train (resuming when a checkpoint exists), then save the adapter, tokenizer and resolved run config."""
    trainer = build_trainer(script, model_args, config, reward_funcs)
    trainer.add_callback(FiniteTrainingCallback(config.output_dir))
    with output_dir_lock(config.output_dir, main_process=config.process_index == 0):
        return _train_claimed(trainer, script, model_args, config)


def _train_claimed(trainer: LamarGRPOTrainer, script: GRPOScriptArguments, model_args: GRPOModelConfig,
                   config: LamarGRPOConfig) -> LamarGRPOTrainer:
    """The run itself, with ``--output_dir`` locked: record its inputs, resume, train, save."""
    run_settings = {"script": {k: getattr(script, k) for k in ("adapter", "rewards", "max_prompt_length",
                                                               "max_train_samples", "prompt_stray_quote",
                                                               "enable_thinking", "rollout_copy_constraint")}, "model": model_args}
    with config.main_process_first(local=config.save_on_each_node, desc="claiming the output folder"):
        claim_output_dir(config.output_dir, run_fingerprint(script.train_csv, run_settings, TRAINING_KEYS, config))
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, script.auto_resume)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    if not trainer.args.should_save:  # another process of a multi-process run writes the files
        return trainer
    trainer.processing_class.save_pretrained(config.output_dir)
    # the log history (rewards per step) also when no checkpoint was saved: runs are compared and plotted from it
    trainer.state.save_to_json(str(Path(config.output_dir) / "trainer_state.json"))
    save_run_config(config.output_dir, {"script": script, "model": model_args, "training": config})
    return trainer
