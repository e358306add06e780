"""Stop a training run the moment its loss or its trainable weights stop being finite numbers.

A learning rate that is too large (or a reward scale that explodes) turns the LoRA weights into NaN within a step;
the trainer then happily finishes and saves an adapter of NaNs with exit code 0. This callback checks every
optimisation step (not only the first, as the loss guard does) and stops the run with a one-line error before
anything is saved: the checkpoints written so far stay, and are finite.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from utils.fileio import InputError


class NonFiniteTrainingError(InputError):
    """The run diverged: a non-finite loss or weight at some step (one line, exit code 2)."""


def _trainable_finite(model: Any) -> bool:
    """Whether every trainable weight is finite, on every process: sharded weights (FSDP's DTensors) are checked
    shard by shard and the answer is agreed across processes, so all of them stop at the same step (one process
    stopping alone would leave the others waiting in a collective)."""
    import torch

    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if p.requires_grad]
    flags = [torch.isfinite(t).all() for t in local if t.numel()]
    device = local[0].device if local else torch.device("cpu")
    finite = torch.stack(flags).all().to(torch.int32) if flags else torch.ones((), dtype=torch.int32, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite)


class FiniteTrainingCallback(TrainerCallback):
    """After every optimisation step: the trainable weights are finite; at every log: the loss is finite."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def _stop(self, step: int, what: str) -> None:
        raise NonFiniteTrainingError(self.output_dir, f"step {step}", f"{what}: training diverged and was stopped, "
                                     "nothing saved; lower --learning_rate (or check the data) and rerun")

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and not _trainable_finite(model):
            self._stop(state.global_step, "a trainable weight is not a finite number")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self._stop(state.global_step, f"the {key.replace('_', ' ')} is {value}")
