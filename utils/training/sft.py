"""DFT (or plain NLL) LoRA fine-tuning of Model 1 / 3, with the run-time guard that proves which loss ran.

Backends:
- ``unsloth`` (published, GPU): Unsloth model + our fused DFT Triton kernel (``unsloth/kernels/cross_entropy_loss.py``)
  patched into Unsloth's cross-entropy. The guard stops the run if the kernel's call counter did not move during the
  first optimisation step.
- ``hf`` (any machine): transformers + PEFT + TRL ``SFTTrainer(loss_type="dft")``. The guard recomputes the first
  batch's DFT and CE losses in PyTorch: the reported loss must equal DFT and differ from CE.
``--loss nll`` trains plain SFT (ablation); the guard then checks that plain cross-entropy is in effect. Resumes from
``--resume_from_checkpoint PATH`` or, by default, from the newest checkpoint in ``output_dir``. Writes the adapter,
the tokenizer, ``run_config.yaml``/``.json`` and TensorBoard logs (``output_dir/runs``).
"""

from __future__ import annotations

import logging
from typing import Any

from trl import SFTTrainer
from transformers import TrainerCallback

from utils.configs.training import DFTConfig, DFTModelConfig, DFTScriptArguments
from utils.fileio import InputError
from utils.paths import load_module_from_path
from utils.training.data import read_training_frame, sft_records, to_dataset
from utils.training.dft import batch_losses, check_dft_in_effect, check_kernel_ran
from utils.training.models import cuda_available, load_causal_lm, peft_config, resolve_dtype
from utils.training.runs import claim_output_dir, resolve_resume, run_fingerprint, save_run_config
from utils.training.trl_cpu import install_cpu_fused_head

logger = logging.getLogger(__name__)

KERNEL_PATH = "unsloth/kernels/cross_entropy_loss.py"
KERNEL_MODULE = "lamar_dft_cross_entropy"
# Trainer settings that shape the trained weights (a resumed run may change step limits, logging and saving).
TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "optim", "max_length", "seed", "loss_type", "bf16",
                 "completion_only_loss", "assistant_only_loss", "packing", "max_grad_norm")


class GuardedSFTTrainer(SFTTrainer):
    """SFTTrainer that checks its very first training loss against a PyTorch recomputation (hf backend)."""

    def __init__(self, *args: Any, expected_loss: str = "dft", guard: bool = True, guard_rel_tol: float = 1e-2,
                 **kwargs: Any) -> None:
        install_cpu_fused_head()  # TRL 1.15's fused LM head has no CPU path of its own
        super().__init__(*args, **kwargs)
        self.expected_loss = expected_loss
        self.guard_pending = guard
        self.guard_rel_tol = guard_rel_tol
        self.guard_result: dict[str, float] | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self.guard_pending and model.training:
            self.guard_pending = False
            loss = result[0] if return_outputs else result
            self.verify_first_loss(model, inputs, float(loss.detach()), num_items_in_batch)
        return result

    def verify_first_loss(self, model, inputs, reported: float, num_items_in_batch) -> None:
        """Raise DFTNotInEffectError unless ``reported`` is the expected loss of this batch."""
        expected = batch_losses(model, inputs, n_items=num_items_in_batch)
        reported = reported / self.rank_loss_scale(num_items_in_batch)
        self.guard_result = {"reported": reported, "dft": expected.dft, "ce": expected.ce}
        if self.expected_loss == "dft":
            check_dft_in_effect(reported, expected, rel_tol=self.guard_rel_tol)
        else:
            swapped = type(expected)(ce=expected.dft, dft=expected.ce, n_items=expected.n_items)
            check_dft_in_effect(reported, swapped, rel_tol=self.guard_rel_tol, what="loss (expected plain CE)")
        logger.info("loss guard passed: first loss %.6g, DFT %.6g, CE %.6g", reported, expected.dft, expected.ce)


    def rank_loss_scale(self, num_items_in_batch) -> int:
        """What TRL multiplies one process's loss by: the number of data-parallel processes when the token count
        is global (``average_tokens_across_devices``; DDP then averages the gradients), else 1."""
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            return max(self.accelerator.num_processes // self.get_tp_size(), 1)
        return 1


class KernelCallGuard(TrainerCallback):
    """Unsloth backend: the patched kernel's call counter must move during the first optimisation step."""

    def __init__(self, call_count) -> None:
        self.call_count = call_count
        self.before: int | None = None
        self.checked = False

    def on_step_begin(self, args, state, control, **kwargs):
        if self.before is None:
            self.before = self.call_count()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.checked:
            self.checked = True
            check_kernel_ran(self.before or 0, self.call_count())


def load_unsloth_model(script: DFTScriptArguments, model_args: DFTModelConfig, config: DFTConfig):
    """Unsloth model with LoRA, our DFT kernel installed into Unsloth's cross-entropy (GPU only)."""
    import unsloth  # noqa: F401  (must be imported before building the model so its patches apply)
    from unsloth import FastModel

    kernel = load_module_from_path(KERNEL_PATH, KERNEL_MODULE)
    kernel.install_into_unsloth(dft=script.loss == "dft")
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
    # Modules Unsloth compiled while loading the model import the loss by name: patch them too.
    report = kernel.install_into_unsloth(dft=script.loss == "dft")
    logger.info("DFT kernel installed into %s", report.patched)
    return model, tokenizer, kernel


def build_trainer(script: DFTScriptArguments, model_args: DFTModelConfig, config: DFTConfig) -> SFTTrainer:
    """The trainer for this run, with the loss guard attached (model, data and LoRA ready)."""
    frame = read_training_frame(script.train_csv)
    if script.max_train_samples is not None:
        frame = frame.head(script.max_train_samples)
    dataset = to_dataset(sft_records(frame))
    if script.backend == "hf":
        config.loss_type = script.loss
        model, tokenizer = load_causal_lm(model_args)
        return GuardedSFTTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
            peft_config=peft_config(model_args), expected_loss=script.loss, guard=script.dft_guard,
            guard_rel_tol=script.guard_rel_tol,
        )
    if not cuda_available():
        raise InputError("--backend", "unsloth", "needs a CUDA GPU and Unsloth (requirements-gpu.txt); use "
                                                 "--backend hf on this machine")
    config.loss_type = "nll"  # the DFT rescaling happens inside the patched kernel
    model, tokenizer, kernel = load_unsloth_model(script, model_args, config)
    callbacks = [KernelCallGuard(kernel.kernel_call_count)] if script.dft_guard else []
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)


def train(script: DFTScriptArguments, model_args: DFTModelConfig, config: DFTConfig) -> SFTTrainer:
    """Train (resuming if a checkpoint exists), then save adapter, tokenizer and the resolved run config."""
    trainer = build_trainer(script, model_args, config)
    run_settings = {"script": {k: getattr(script, k) for k in ("backend", "loss", "max_train_samples")}, "model": model_args}
    with config.main_process_first(local=config.save_on_each_node, desc="claiming the output folder"):
        claim_output_dir(config.output_dir, run_fingerprint(script.train_csv, run_settings, TRAINING_KEYS, config))
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, script.auto_resume)
    if resume:
        logger.info("resuming from %s", resume)
        if isinstance(trainer, GuardedSFTTrainer):
            trainer.guard_pending = False  # the guard ran in the first session; resuming skips step 1
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    if not trainer.args.should_save:  # another process of a multi-process run writes the files
        return trainer
    trainer.processing_class.save_pretrained(config.output_dir)
    sections: dict[str, Any] = {"script": script, "model": model_args, "training": config}
    if isinstance(trainer, GuardedSFTTrainer) and trainer.guard_result is not None:
        sections["loss_guard"] = trainer.guard_result
    save_run_config(config.output_dir, sections)
    return trainer
