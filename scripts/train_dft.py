"""Fine-tune a LoRA adapter with the DFT loss on tagged notes (LAMAR Model 1; Model 3 with pseudo-labels).

    python scripts/train_dft.py --config recipes/model1_dft.yaml --train_csv data/tagged/train.csv
    python scripts/train_dft.py --backend hf --model_name_or_path tiny/model --train_csv train.csv \\
        --output_dir out/smoke --max_steps 2 --max_length 4096

Data: a split CSV from ``utils/gt_to_tag.py``. user = the published instruction with the note, assistant = the
tagged note; the loss covers the answer only. Defaults are the published settings (Qwen/Qwen3.5-4B, LoRA r 256 /
alpha 32 / rsLoRA / dropout 0 on attention + MLP, lr 2e-4 cosine, warmup 0.05, weight decay 0.001, 2 epochs,
batch 1 x accumulation 8, 8-bit AdamW, max length 24,576, seed 3407, gradient checkpointing, bf16).

Backends:
- ``unsloth`` (published, GPU): Unsloth model + our fused DFT Triton kernel patched into Unsloth's cross-entropy.
  The guard stops the run if the kernel's call counter did not move during the first optimisation step.
- ``hf`` (any machine): transformers + PEFT + TRL ``SFTTrainer(loss_type="dft")``. The guard recomputes the first
  batch's DFT and CE losses in PyTorch: the reported loss must equal DFT and differ from CE.
On CPU, 8-bit AdamW (bitsandbytes) is unavailable: ``adamw_torch`` is used instead, with a warning.
``--loss nll`` trains plain SFT (ablation); the guard then checks that plain cross-entropy is in effect.
Resumes from ``--resume_from_checkpoint PATH`` or, by default, from the newest checkpoint in ``output_dir``.
Writes the adapter, the tokenizer, ``run_config.yaml``/``.json`` and TensorBoard logs (``output_dir/runs``).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from trl import SFTConfig, SFTTrainer
from transformers import TrainerCallback

from utils.training.dft import DFTNotInEffectError, batch_losses, check_dft_in_effect, check_kernel_ran
from utils.fileio import InputError, report_input_error
from utils.paths import load_module_from_path
from utils.training.helpers import (
    LANGUAGE_MODEL_PROJECTIONS,
    cuda_available,
    lora_config,
    read_training_frame,
    resolve_bf16,
    resolve_optim,
    resolve_resume,
    save_run_config,
    sft_records,
    to_dataset,
)

logger = logging.getLogger("train_dft")

KERNEL_PATH = "unsloth/kernels/cross_entropy_loss.py"
KERNEL_MODULE = "lamar_dft_cross_entropy"
BACKENDS = ("unsloth", "hf")
LOSSES = ("dft", "nll")


@dataclass
class DFTScriptArguments:
    """What to train on, which backend and loss, and the LoRA adapter (published defaults)."""

    train_csv: str = field(default="data/tagged/train.csv",
                           metadata={"help": "Training CSV from utils/gt_to_tag.py (file_id, raw_text, gold_span, ...)"})
    model_name_or_path: str = field(default="Qwen/Qwen3.5-4B", metadata={"help": "Base model (Hub id or folder)"})
    backend: str = field(default="unsloth", metadata={"help": "unsloth (GPU, as published) or hf (any device)",
                                                      "choices": list(BACKENDS)})
    loss: str = field(default="dft", metadata={"help": "dft (published) or nll (plain SFT ablation)",
                                               "choices": list(LOSSES)})
    dtype: str = field(default="auto", metadata={"help": "Model weights dtype: auto (bfloat16 on GPU, float32 on "
                                                          "CPU), bfloat16, float16 or float32"})
    lora_r: int = field(default=256, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    use_rslora: bool = field(default=True, metadata={"help": "Rank-stabilised LoRA scaling alpha/sqrt(r)"})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt (default: attention and MLP projections of the language model, "
                          f"{' '.join(LANGUAGE_MODEL_PROJECTIONS)}, never the vision tower)"},
    )
    dft_guard: bool = field(default=True, metadata={"help": "Stop unless the chosen loss is verifiably in effect at "
                                                            "the first optimisation step"})
    guard_rel_tol: float = field(default=1e-2, metadata={"help": "Relative tolerance of the guard's comparisons"})
    auto_resume: bool = field(default=True, metadata={"help": "Resume from the newest checkpoint in output_dir"})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N notes (smoke runs)"})


@dataclass
class DFTTrainingConfig(SFTConfig):
    """TRL's SFTConfig with the published Model 1 settings as defaults (every TrainingArguments flag still works)."""

    output_dir: str = field(default="outputs/model1_dft", metadata={"help": "Where checkpoints and the adapter go"})
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up: a ratio of total steps when < 1"})
    weight_decay: float = 0.001
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    optim: str = field(default="adamw_8bit", metadata={"help": "Optimizer (adamw_8bit falls back to adamw_torch on "
                                                                "CPU)"})
    max_length: int | None = field(default=24576, metadata={"help": "Max tokens of prompt + answer (set explicitly: "
                                                                     "TRL's default would silently truncate notes)"})
    seed: int = 3407
    activation_checkpointing: bool | None = True  # a.k.a. gradient checkpointing
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on where the GPU "
                                                               "supports it)"})
    logging_steps: float = 1
    save_strategy: str = "steps"
    save_steps: float = 20
    save_total_limit: int | None = 3
    report_to: None | str | list[str] = "tensorboard"
    packing: bool = False  # packing fails on Qwen3.5 without causal_conv1d
    completion_only_loss: bool | None = True
    assistant_only_loss: bool = False
    loss_type: str = field(default="dft", metadata={"help": "Set by --loss; do not set directly"})

    def __post_init__(self) -> None:
        self.bf16 = resolve_bf16(self.bf16)
        self.optim = resolve_optim(self.optim)
        super().__post_init__()


# --- the runtime guard ----------------------------------------------------------------------------------------


class GuardedSFTTrainer(SFTTrainer):
    """SFTTrainer that checks its very first training loss against a PyTorch recomputation (hf backend)."""

    def __init__(self, *args: Any, expected_loss: str = "dft", guard: bool = True, guard_rel_tol: float = 1e-2,
                 **kwargs: Any) -> None:
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
        self.guard_result = {"reported": reported, "dft": expected.dft, "ce": expected.ce}
        if self.expected_loss == "dft":
            check_dft_in_effect(reported, expected, rel_tol=self.guard_rel_tol)
        else:
            swapped = type(expected)(ce=expected.dft, dft=expected.ce, n_items=expected.n_items)
            check_dft_in_effect(reported, swapped, rel_tol=self.guard_rel_tol, what="loss (expected plain CE)")
        logger.info("loss guard passed: first loss %.6g, DFT %.6g, CE %.6g", reported, expected.dft, expected.ce)


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


# --- model loading ----------------------------------------------------------------------------------------------


def torch_dtype(name: str):
    """The torch dtype for --dtype (auto: bfloat16 on GPU, float32 on CPU)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if cuda_available() else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    except KeyError:
        raise InputError("--dtype", "", f"expected auto, bfloat16, float16 or float32, got {name!r}") from None


def load_hf_model(script: DFTScriptArguments):
    """transformers model + tokenizer + PEFT LoRA config (TRL wraps the model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path, dtype=torch_dtype(script.dtype))
    peft = lora_config(script.lora_r, script.lora_alpha, script.lora_dropout, script.use_rslora,
                       script.lora_target_modules)
    return model, tokenizer, peft


def load_unsloth_model(script: DFTScriptArguments, config: DFTTrainingConfig):
    """Unsloth model with LoRA, our DFT kernel installed into Unsloth's cross-entropy (GPU only)."""
    import unsloth  # noqa: F401  (must be imported before building the model so its patches apply)
    from unsloth import FastModel

    kernel = load_module_from_path(KERNEL_PATH, KERNEL_MODULE)
    report = kernel.install_into_unsloth(dft=script.loss == "dft")
    model, tokenizer = FastModel.from_pretrained(
        model_name=script.model_name_or_path,
        max_seq_length=config.max_length,
        dtype=torch_dtype(script.dtype),
        load_in_4bit=False,
        load_in_8bit=False,
        full_finetuning=False,
    )
    model = FastModel.get_peft_model(
        model,
        r=script.lora_r,
        lora_alpha=script.lora_alpha,
        lora_dropout=script.lora_dropout,
        target_modules=script.lora_target_modules or list(LANGUAGE_MODEL_PROJECTIONS),
        use_rslora=script.use_rslora,
        bias="none",
        finetune_vision_layers=False,
        finetune_language_layers=True,
        finetune_attention_modules=True,
        finetune_mlp_modules=True,
        use_gradient_checkpointing="unsloth" if config.activation_checkpointing else False,
        random_state=config.seed,
    )
    # Modules Unsloth compiled while loading the model import the loss by name: patch them too.
    report = kernel.install_into_unsloth(dft=script.loss == "dft")
    logger.info("DFT kernel installed into %s", report.patched)
    return model, tokenizer, kernel


# --- the run ----------------------------------------------------------------------------------------------------


def build_trainer(script: DFTScriptArguments, config: DFTTrainingConfig):
    """The trainer for this run, with the loss guard attached (model, data and LoRA ready)."""
    frame = read_training_frame(script.train_csv)
    if script.max_train_samples is not None:
        frame = frame.head(script.max_train_samples)
    dataset = to_dataset(sft_records(frame))

    if script.backend == "hf":
        config.loss_type = script.loss
        model, tokenizer, peft = load_hf_model(script)
        return GuardedSFTTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft,
            expected_loss=script.loss, guard=script.dft_guard, guard_rel_tol=script.guard_rel_tol,
        )
    if script.backend == "unsloth":
        if not cuda_available():
            raise InputError("--backend", "unsloth", "needs a CUDA GPU and Unsloth (requirements-gpu.txt); use "
                                                     "--backend hf on this machine")
        config.loss_type = "nll"  # the DFT rescaling happens inside the patched kernel
        model, tokenizer, kernel = load_unsloth_model(script, config)
        callbacks = [KernelCallGuard(kernel.kernel_call_count)] if script.dft_guard else []
        return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=callbacks)
    raise InputError("--backend", "", f"expected one of {', '.join(BACKENDS)}, got {script.backend!r}")


def train(script: DFTScriptArguments, config: DFTTrainingConfig):
    """Train (resuming if a checkpoint exists), then save adapter, tokenizer and the resolved run config."""
    if script.loss not in LOSSES:
        raise InputError("--loss", "", f"expected one of {', '.join(LOSSES)}, got {script.loss!r}")
    trainer = build_trainer(script, config)
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, script.auto_resume)
    if resume:
        logger.info("resuming from %s", resume)
        if isinstance(trainer, GuardedSFTTrainer):
            trainer.guard_pending = False  # the guard ran in the first session; resuming skips step 1
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    trainer.processing_class.save_pretrained(config.output_dir)
    sections: dict[str, Any] = {"script": script, "training": config}
    if isinstance(trainer, GuardedSFTTrainer) and trainer.guard_result is not None:
        sections["loss_guard"] = trainer.guard_result
    save_run_config(config.output_dir, sections)
    return trainer


def parse_args(argv: Sequence[str] | None = None) -> tuple[DFTScriptArguments, DFTTrainingConfig]:
    """Flags and/or a YAML recipe (--config) into the two argument dataclasses."""
    from trl import TrlParser

    parser = TrlParser((DFTScriptArguments, DFTTrainingConfig))
    script, config = parser.parse_args_and_config(args=argv)
    return script, config


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    script, config = parse_args(argv)
    try:
        train(script, config)
    except (InputError, DFTNotInEffectError) as err:
        return report_input_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
