"""DFT (or plain NLL) LoRA fine-tuning of Model 1 / 3, with the run-time guard that proves which loss ran.

Backends, each training DFT through the code its pinned library really executes:
- ``unsloth`` (published, GPU): Unsloth 2026.10.9's own SFT trainer with ``loss_type="dft"``, which re-implements
  TRL's DFT on the fused LM head (``unsloth/models/rl_replacements.py``: ``-log p * sg(p)`` per label, no full
  logits). Unsloth is imported before trl / transformers / peft (``utils.training.backend``).
- ``hf`` (any machine): transformers + PEFT + TRL 1.15 ``SFTTrainer(loss_type="dft")`` on the same fused head.
- ``--dft_route kernel`` (unsloth only): our Triton DFT cross-entropy (``unsloth/kernels/cross_entropy_loss.py``, the
  published artefact) through Unsloth's full-logits path: ``UNSLOTH_RETURN_LOGITS=1`` and the kernel swapped into
  Unsloth before the model is built (transformers' ``LOSS_MAPPING`` rebuilt around it, see ``install_kernel_route``),
  trainer ``loss_type="nll"`` so the model's own loss function (our kernel) runs.
  Full logits cost 24,576 x 248,320 x 2 bytes = 12.2 GB in bf16 (24.4 GB in fp32) on top of the fused route; the
  kernel's call counter must move during the first step.

The guard (every route, ``--dft_guard``): during the first optimisation step each micro-batch's label log-probs are
recomputed with the fused head (``model(**batch, fused_lm_head=True)``, never full logits, under the same random
state), normalised as the trainer normalises (``trainer.model_accepts_loss_kwargs``: token mean over the step, else
mean of micro-batch means), and the step's reported loss must be DFT (NLL for ``--loss nll``) before the optimiser
steps. ``--loss nll`` trains plain SFT (ablation). Resumes from ``--resume_from_checkpoint PATH`` or, by default,
from the newest checkpoint in ``output_dir``. Writes the adapter, the tokenizer, ``run_config.yaml``/``.json`` and
TensorBoard logs (``output_dir/runs``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from utils.configs.device import cuda_available
from utils.configs.training import DFTConfig, DFTModelConfig, DFTScriptArguments
from utils.fileio import InputError
from utils.paths import load_module_from_path
from utils.training.backend import ensure_unsloth_first, unsloth_installed
from utils.training.data import read_training_frame, sft_records, sft_response_records, to_dataset
from utils.training.dft import (
    TokenSums, check_kernel_ran, check_loss_in_effect, expected_step_losses, token_sums,
)
from utils.training.finite import FiniteTrainingCallback
from utils.training.models import load_causal_lm, peft_config, resolve_dtype
from utils.training.runs import claim_output_dir, output_dir_lock, resolve_resume, run_fingerprint, save_run_config
from utils.training.trl_cpu import install_cpu_fused_head

logger = logging.getLogger(__name__)

KERNEL_PATH = "unsloth/kernels/cross_entropy_loss.py"
KERNEL_MODULE = "lamar_dft_cross_entropy"
# Bytes of the full logits the kernel route materialises: published length x Qwen3.5 vocabulary x bf16.
FULL_LOGITS_BYTES_BF16 = 24576 * 248320 * 2
# Trainer settings that shape the trained weights (a resumed run may change step limits, logging and saving).
TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "optim", "max_length", "seed", "loss_type", "bf16",
                 "completion_only_loss", "assistant_only_loss", "packing", "max_grad_norm")


# What UnslothSFTConfig.__init__ (Unsloth 2026.10.9, unsloth/models/rl.py) does beyond TRL's SFTConfig, and where the
# published run (trl.SFTConfig after `import unsloth`, i.e. UnslothSFTConfig) and ours stand. DFTConfig is a
# dataclass with its own __init__, so Unsloth's never runs: the defaults the published run kept are DFTConfig's
# defaults, the post-init step is `apply_unsloth_config_init` (unsloth backend).
UNSLOTH_CONFIG_INIT = {
    # default replacements: published value -> ours
    "logging_nan_inf_filter": "False (Unsloth's default; DFTConfig default)",
    "torch_empty_cache_steps": "250 (Unsloth's default; DFTConfig default)",
    "per_device_eval_batch_size": "4 (Unsloth's default; DFTConfig default; no evaluation in the run)",
    "eval_accumulation_steps": "2 (Unsloth's default; DFTConfig default; no evaluation in the run)",
    "padding_free": "None = Unsloth's trainer decides (Unsloth's default; DFTConfig default)",
    "per_device_train_batch_size": "passed by the published script (1)",
    "gradient_accumulation_steps": "passed (8)", "weight_decay": "passed (0.001)", "seed": "passed (3407)",
    "optim": "passed (adamw_8bit)", "learning_rate": "passed (2e-4)", "logging_steps": "passed (1)",
    "bf16": "passed (True; ours: resolve_bf16)", "report_to": "passed (tensorboard)",
    "warmup_steps": "published passed warmup_ratio 0.05; ours warmup_steps 0.05 (a ratio below 1)",
    "loss_type": "nll (Unsloth's SFT default); the published DFT came from its patched kernel, ours sets it per route",
    "fp16": "False, as TrainingArguments", "output_dir": "passed",
    "include_tokens_per_second": "False (TrainingArguments: None, the same: off)",
    "include_num_input_tokens_seen": "False (TrainingArguments 5.17: 'no', the same: off)",
    "auto_find_batch_size": "False, as TrainingArguments", "dataloader_pin_memory": "True, as TrainingArguments",
    "max_seq_length": "None (a field Unsloth adds; its trainer fills it from max_length when it needs it)",
    "num_generations": "GRPO only (absent from SFTConfig)", "vllm_mode": "GRPO only", "generation_kwargs": "GRPO only",
    # code in __init__
    "gradient_checkpointing_kwargs": "use_reentrant forced True whenever gradient_checkpointing (published passed "
                                     "False, overwritten): apply_unsloth_config_init",
    "dataset_num_proc": "None -> Unsloth's auto-size (get_dataset_num_proc); Unsloth's dataset prep also auto-sizes a "
                        "None, so ours ends the same",
}


def apply_unsloth_config_init(config: DFTConfig) -> DFTConfig:
    """The one setting UnslothSFTConfig.__init__ changes after TRL's __init__ that DFTConfig does not default:
    gradient checkpointing is made reentrant (Unsloth's compiled regions abort on non-reentrant recompute)."""
    if config.gradient_checkpointing:
        kwargs = dict(config.gradient_checkpointing_kwargs or {})
        if kwargs.get("context_fn") is None and not kwargs.get("debug", False):
            kwargs["use_reentrant"] = True
            config.gradient_checkpointing_kwargs = kwargs
    return config


class FirstStepGuard(TrainerCallback):
    """Checks the trainer's first optimisation step after its last micro-batch, before the optimiser steps."""

    def __init__(self, trainer: "LossGuardMixin") -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.guard_pending:
            self.trainer.verify_first_step()


class LossGuardMixin:
    """Put before a TRL/Unsloth ``SFTTrainer`` in the bases: proves the first step's loss is ``expected_loss``.

    ``compute_loss`` records each first-step micro-batch's DFT/NLL sums from the fused head (before the trainer's own
    forward, under a forked random state, so dropout draws the same masks); ``training_step`` adds up what the
    trainer reports; :class:`FirstStepGuard` compares them before the optimiser steps.
    """

    def __init__(self, *args: Any, expected_loss: str = "dft", guard: bool = True, guard_rel_tol: float = 1e-2,
                 **kwargs: Any) -> None:
        install_cpu_fused_head()  # TRL 1.15's fused LM head has no CPU path of its own
        super().__init__(*args, **kwargs)
        self.expected_loss = expected_loss
        self.guard_pending = guard
        self.guard_rel_tol = guard_rel_tol
        self.guard_result: dict[str, Any] | None = None
        self._guard_micro: list[TokenSums] = []
        self._guard_reported = 0.0
        self.add_callback(FirstStepGuard(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.guard_pending and model.training:
            self._guard_micro.append(fused_token_sums(model, inputs))
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def training_step(self, *args: Any, **kwargs: Any):
        loss = super().training_step(*args, **kwargs)
        if self.guard_pending:
            self._guard_reported += float(loss)
        return loss

    def verify_first_step(self) -> None:
        """Raise DFTNotInEffectError unless the first step's reported loss is the expected one."""
        self.guard_pending = False
        token_mean = bool(self.model_accepts_loss_kwargs)
        local_tokens = sum(m.tokens for m in self._guard_micro)
        total, scale = local_tokens, 1.0
        if token_mean and self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            counts = self.accelerator.gather(torch.tensor([local_tokens], device=self.accelerator.device))
            total, scale = int(counts.sum()), float(self.accelerator.num_processes)
        expected = expected_step_losses(self._guard_micro, token_mean, total_tokens=total, scale=scale,
                                        accumulation_steps=getattr(self, "current_gradient_accumulation_steps", None))
        self.guard_result = {"reported": self._guard_reported, "dft": expected.dft, "nll": expected.nll,
                             "normalisation": expected.normalisation, "micro_batches": len(self._guard_micro),
                             "answer_tokens": local_tokens}
        check_loss_in_effect(self._guard_reported, expected, self.expected_loss, rel_tol=self.guard_rel_tol)
        logger.info("loss guard passed: first step %.6g, DFT %.6g, NLL %.6g (%s)", self._guard_reported, expected.dft,
                    expected.nll, expected.normalisation)


@torch.no_grad()
def fused_token_sums(model, inputs) -> TokenSums:
    """DFT/NLL sums of one batch from the fused LM head TRL patched in (no full logits), the model unchanged."""
    device = next(model.parameters()).device
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        outputs = model(**{**inputs, "use_cache": False}, fused_lm_head=True)
    return token_sums(outputs.log_probs, outputs.label_mask)


class GuardedSFTTrainer(LossGuardMixin, SFTTrainer):
    """TRL's SFTTrainer with the first-step loss guard (hf backend)."""


def guarded_trainer_class(base: type) -> type:
    """The guard on top of another trainer class (Unsloth's, which it binds to ``trl.SFTTrainer`` at import)."""
    return base if issubclass(base, LossGuardMixin) else type(f"Guarded{base.__name__}", (LossGuardMixin, base), {})


class KernelCallGuard(TrainerCallback):
    """Kernel route: the patched kernel's call counter must move during the first optimisation step."""

    def __init__(self, call_count) -> None:
        self.call_count = call_count
        self.before: int | None = None
        self.checked = False

    def on_step_begin(self, args, state, control, **kwargs):
        if self.before is None:
            self.before = self.call_count()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.checked:
            self.checked = True
            check_kernel_ran(self.before or 0, self.call_count())


def install_kernel_route(dft: bool):
    """Our Triton kernel in place of Unsloth's ``fast_cross_entropy_loss`` and full logits switched on.

    Must run before ``FastModel.from_pretrained``, which freezes a ``LOSS_MAPPING`` entry onto the model instance:
    ``install_into_unsloth`` rebinds Unsloth's kernel names and rebuilds transformers' causal-LM ``LOSS_MAPPING``
    entries itself, through unsloth_zoo's ``patch_loss_functions`` given our function (uncompiled, as
    ``from_pretrained`` builds them), and checks that each entry's closure holds our kernel; it does not rely on
    ``from_pretrained``'s own ``patch_loss_functions`` call (a no-op on entries already patched) nor on the call-time
    lookup of ``Fast_CrossEntropyLoss`` inside Unsloth's own loss. The compiled Qwen3.5 forward calls that loss only
    with ``UNSLOTH_RETURN_LOGITS=1``; otherwise it uses Unsloth's fused CE. After loading, ``check_model_loss``
    verifies the loss frozen onto the model.
    """
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
    kernel = load_module_from_path(KERNEL_PATH, KERNEL_MODULE)
    report = kernel.install_into_unsloth(dft=dft)
    logger.warning("--dft_route kernel: full logits are materialised (%.1f GB in bf16 at 24,576 tokens); kernel "
                   "installed into %s", FULL_LOGITS_BYTES_BF16 / 1e9, report.patched)
    return kernel


def load_unsloth_model(script: DFTScriptArguments, model_args: DFTModelConfig, config: DFTConfig):
    """(model with LoRA, text tokenizer, kernel module or None) from Unsloth (GPU only)."""
    from unsloth import FastModel

    kernel = install_kernel_route(script.loss == "dft") if script.dft_route == "kernel" else None
    model, tokenizer = FastModel.from_pretrained(
        model_name=model_args.model_name_or_path,
        max_seq_length=config.max_length,
        dtype=resolve_dtype(model_args.dtype),
        load_in_4bit=False,
        load_in_8bit=False,
        full_finetuning=False,
    )
    model = FastModel.get_peft_model(
        model,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        use_rslora=model_args.use_rslora,
        bias="none",
        finetune_vision_layers=False,
        finetune_language_layers=True,
        finetune_attention_modules=True,
        finetune_mlp_modules=True,
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        random_state=config.seed,
    )
    if kernel is not None:  # modules Unsloth compiled while loading import the loss by name: patch them too
        kernel.install_into_unsloth(dft=script.loss == "dft")
        kernel.check_model_loss(model)  # the loss frozen onto the model at load holds our kernel
    return model, getattr(tokenizer, "tokenizer", tokenizer), kernel  # a VLM comes with a processor


def unsloth_trainer_class() -> type:
    """``trl.SFTTrainer`` as Unsloth rebinds it at import (its DFT re-implementation lives there)."""
    import trl

    base = trl.SFTTrainer
    if "Unsloth" not in base.__name__:
        raise RuntimeError(f"trl.SFTTrainer is {base.__module__}.{base.__name__}, not Unsloth's trainer: Unsloth's "
                           "patches did not apply (is unsloth imported?)")
    return guarded_trainer_class(base)


def check_unsloth_backend(script: DFTScriptArguments) -> None:
    """A GPU, Unsloth installed and importable, imported before trl / transformers / peft."""
    if not cuda_available() or not unsloth_installed():
        raise InputError.flag("--backend", "needs a CUDA GPU and Unsloth (requirements-gpu.txt); use --backend hf "
                              "on this machine", value="unsloth")
    state = ensure_unsloth_first()
    if not state.imported:
        raise InputError.flag("--backend", f"Unsloth cannot be imported ({state.error})", value="unsloth")


def build_trainer(script: DFTScriptArguments, model_args: DFTModelConfig, config: DFTConfig) -> SFTTrainer:
    """The trainer for this run, with the loss guard attached (model, data and LoRA ready)."""
    frame = read_training_frame(script.train_csv)
    if script.max_train_samples is not None:
        frame = frame.head(script.max_train_samples)
    guard = dict(expected_loss=script.loss, guard=script.dft_guard, guard_rel_tol=script.guard_rel_tol)
    if script.backend == "hf":
        config.loss_type = script.loss
        model, tokenizer = load_causal_lm(model_args)
        return GuardedSFTTrainer(model=model, args=config, train_dataset=training_dataset(frame, tokenizer, script),
                                 processing_class=tokenizer, peft_config=peft_config(model_args), **guard)
    check_unsloth_backend(script)
    # fused: Unsloth's own DFT branch (or its NLL); kernel: the model's loss function = our kernel, DFT inside it.
    config.loss_type = script.loss if script.dft_route == "fused" else "nll"
    apply_unsloth_config_init(config)
    model, tokenizer, kernel = load_unsloth_model(script, model_args, config)
    callbacks = [KernelCallGuard(kernel.kernel_call_count)] if kernel is not None and script.dft_guard else []
    return unsloth_trainer_class()(model=model, args=config, train_dataset=training_dataset(frame, tokenizer, script),
                                   processing_class=tokenizer, callbacks=callbacks, **guard)


def training_dataset(frame, tokenizer, script: DFTScriptArguments):
    """The rows as the trainer gets them: tokenized with the published response mask (``--loss_mask response``),
    or TRL prompt-completion conversations that TRL tokenizes and masks after the generation prompt (``answer``)."""
    if script.loss_mask == "response":
        return to_dataset(sft_response_records(frame, tokenizer))
    return to_dataset(sft_records(frame))


def train(script: DFTScriptArguments, model_args: DFTModelConfig, config: DFTConfig) -> SFTTrainer:
    """Train (resuming if a checkpoint exists), then save adapter, tokenizer and the resolved run config."""
    trainer = build_trainer(script, model_args, config)
    trainer.add_callback(FiniteTrainingCallback(config.output_dir))
    with output_dir_lock(config.output_dir, main_process=config.process_index == 0):
        return _train_claimed(trainer, script, model_args, config)


def _train_claimed(trainer: SFTTrainer, script: DFTScriptArguments, model_args: DFTModelConfig,
                   config: DFTConfig) -> SFTTrainer:
    """The run itself, with ``--output_dir`` locked: record its inputs, resume, train, save."""
    run_settings = {"script": {k: getattr(script, k) for k in ("backend", "loss", "dft_route", "max_train_samples",
                                                      "loss_mask")},
                    "model": model_args}
    with config.main_process_first(local=config.save_on_each_node, desc="claiming the output folder"):
        claim_output_dir(config.output_dir, run_fingerprint(script.train_csv, run_settings, TRAINING_KEYS, config))
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, script.auto_resume)
    if resume:
        logger.info("resuming from %s", resume)
        if isinstance(trainer, LossGuardMixin):
            trainer.guard_pending = False  # the guard ran in the first session; resuming skips step 1
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    if not trainer.args.should_save:  # another process of a multi-process run writes the files
        return trainer
    trainer.processing_class.save_pretrained(config.output_dir)
    sections: dict[str, Any] = {"script": script, "model": model_args, "training": config}
    if isinstance(trainer, LossGuardMixin) and trainer.guard_result is not None:
        sections["loss_guard"] = trainer.guard_result
    save_run_config(config.output_dir, sections)
    return trainer
