"""A CPU path for the fused LM head of TRL 1.15 (the pinned version), so training runs and is tested on CPU.

TRL 1.15 computes every SFT and GRPO loss from per-token log-probabilities of the labels, with a fused, tiled LM
head that never builds full-vocabulary logits (``trl.trainer.utils._ChunkedLogProbFunction``, a Triton kernel).
That kernel cannot run on CPU tensors ("0 active drivers"), and where Triton is not installed (macOS) the name is
None. TRL 1.16 added a PyTorch fallback for CPU tensors; 1.15 has none and no option to avoid the fused path.

:func:`install_cpu_fused_head` replaces that module global (TRL looks it up on every call) with a dispatcher:
tensors on an accelerator go to whatever kernel was installed before (TRL's, or Unsloth's replacement), CPU tensors
to :func:`torch_chunked_logprob`, the same quantities computed from full logits, which is fine for the small
vocabularies of CPU runs. ``tests/test_trl_cpu.py`` checks it against TRL's own kernel run under Triton's
interpreter. On a GPU nothing changes.
"""

from __future__ import annotations

from typing import Any

import torch

ACCELERATORS = ("cuda", "xpu")


def torch_chunked_logprob(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, temperature: float, chunk_size: int,
                          final_logit_softcapping: float | None = None, logit_scale: float = 1.0,
                          outputs: tuple[str, ...] = ("log_probs",)) -> tuple[Any, ...]:
    """What TRL 1.15's fused head returns, in its order: (log p of the targets, entropy, log sum of squared
    probabilities, mean logit, whether the target is the argmax); unrequested outputs are None.

    ``chunk_size`` (the kernel's vocabulary tile) does not change the result and is not needed here.
    """
    device = hidden.device
    compute = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
    with torch.autocast(device.type, enabled=False):
        logits = torch.nn.functional.linear(hidden.to(compute), weight.to(compute),
                                            None if bias is None else bias.to(compute)).float()
    logits = logits * logit_scale
    if final_logit_softcapping is not None:
        logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
    logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():
        log_sum_sq = torch.logsumexp(2 * logits, dim=-1) - 2 * log_norm if "log_sum_sq_probs" in outputs else None
        mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
        is_top1 = logits.argmax(-1) == targets if "is_top1" in outputs else None  # first maximum, as TRL's kernel
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class DeviceDispatchedLogProb:
    """``.apply(...)`` like TRL's autograd Function: accelerator tensors to the wrapped kernel, CPU to PyTorch."""

    def __init__(self, accelerated: Any) -> None:
        self.accelerated = accelerated

    def apply(self, hidden: torch.Tensor, *args: Any) -> tuple[Any, ...]:
        if hidden.device.type in ACCELERATORS and self.accelerated is not None:
            return self.accelerated.apply(hidden, *args)
        return torch_chunked_logprob(hidden, *args)


def trl_has_cpu_path() -> bool:
    """Whether the installed TRL dispatches CPU tensors itself (1.16 and later)."""
    try:
        from trl.kernels import chunked_logprob
    except ImportError:  # no Triton: TRL 1.15's kernels module does not even import
        return False
    return hasattr(chunked_logprob, "_use_triton")


def install_cpu_fused_head() -> bool:
    """Give TRL's fused LM head a CPU path where it lacks one; returns whether anything was installed.

    Idempotent, and called where each trainer is built (``utils.training.sft``, ``utils.training.grpo``).
    """
    import trl.trainer.utils as trl_utils

    current = trl_utils._ChunkedLogProbFunction
    if trl_has_cpu_path() or isinstance(current, DeviceDispatchedLogProb):
        return False
    trl_utils._ChunkedLogProbFunction = DeviceDispatchedLogProb(current)
    return True
