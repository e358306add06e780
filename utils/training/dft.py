"""Dynamic Fine-Tuning (DFT) loss in plain PyTorch, and the run-time guard that proves it is in effect.

DFT (Wu et al., arXiv 2508.05629): per answer token ``loss = -sg(p) * log p``, p the model's probability of
the gold token, sg = stop-gradient; its gradient is p times the cross-entropy gradient. This module is the
reference our Triton kernel (``unsloth/kernels/cross_entropy_loss.py``) and TRL's ``loss_type="dft"`` are tested
against, and the yardstick of the training guard: a DFT loss is typically 10-20x smaller than the
cross-entropy of the same batch, so a reported loss that equals CE means DFT silently never ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

IGNORE_INDEX = -100


class DFTNotInEffectError(RuntimeError):
    """The training loss is not the DFT loss (a patched kernel never ran, or the wrong loss type is set)."""


def transform_logits(logits: torch.Tensor, logit_softcapping: float = 0, logit_scaling: float = 0) -> torch.Tensor:
    """Float32 logits after optional scaling (``s * x``) and then soft-capping (``t * tanh(x / t)``)."""
    x = logits.float()
    if logit_scaling:
        x = x * logit_scaling
    if logit_softcapping:
        x = logit_softcapping * torch.tanh(x / logit_softcapping)
    return x


def per_token_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    logit_softcapping: float = 0,
    logit_scaling: float = 0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy of each position (labels already aligned with logits), 0 where the label is ignored."""
    x = transform_logits(logits, logit_softcapping, logit_scaling).reshape(-1, logits.shape[-1])
    flat = labels.reshape(-1)
    ce = torch.nn.functional.cross_entropy(x, flat, ignore_index=ignore_index, reduction="none")
    return ce.reshape(labels.shape)


def per_token_dft_loss(logits: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``CE * sg(exp(-CE))`` per position: the value is p * (-log p), the gradient p * grad CE."""
    ce = per_token_cross_entropy(logits, labels, **kwargs)
    return ce * torch.exp(-ce).detach()


def dft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_items: int | torch.Tensor | None = None,
    dft: bool = True,
    ignore_index: int = IGNORE_INDEX,
    **kwargs: Any,
) -> torch.Tensor:
    """Sum of per-token (DFT or plain CE) losses over ``n_items`` (default: positions not ignored).

    Same reduction as Unsloth's fast_cross_entropy_loss and TRL's SFTTrainer (sum / token count).
    """
    per_token = (per_token_dft_loss if dft else per_token_cross_entropy)(
        logits, labels, ignore_index=ignore_index, **kwargs
    )
    if n_items is None:
        n_items = torch.count_nonzero(labels != ignore_index).clamp(min=1)
    return per_token.sum() / n_items


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Causal-LM alignment: position i predicts token i+1; the last position gets ``ignore_index``."""
    shifted = torch.full_like(labels, ignore_index)
    shifted[..., :-1] = labels[..., 1:]
    return shifted


@dataclass(frozen=True)
class BatchLosses:
    """Plain cross-entropy and DFT loss of one batch under the same token count."""

    ce: float
    dft: float
    n_items: int


@torch.no_grad()
def batch_losses(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], n_items: int | torch.Tensor | None = None
) -> BatchLosses:
    """CE and DFT of a causal-LM batch (``labels`` unshifted, -100 on prompt/padding), model unchanged.

    ``n_items`` is the divisor the trainer uses (TRL passes the answer-token count of the whole accumulated
    batch); default: this batch's answer tokens.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs, use_cache=False).logits
    shifted = shift_labels(labels)
    if n_items is None:
        n_items = torch.count_nonzero(shifted != IGNORE_INDEX).clamp(min=1)
    n_items = torch.as_tensor(n_items, device=logits.device).clamp(min=1)
    return BatchLosses(
        ce=float(dft_loss(logits, shifted, n_items=n_items, dft=False)),
        dft=float(dft_loss(logits, shifted, n_items=n_items, dft=True)),
        n_items=int(n_items),
    )


def check_dft_in_effect(reported: float, expected: BatchLosses, rel_tol: float = 1e-3, what: str = "loss") -> None:
    """Stop unless ``reported`` equals the DFT value of the batch and is distinguishable from plain CE.

    Raises DFTNotInEffectError with both numbers, so the user sees which loss actually ran.
    """
    def close(a: float, b: float) -> bool:
        return abs(a - b) <= rel_tol * max(abs(a), abs(b), 1e-8)

    if close(expected.dft, expected.ce):
        raise DFTNotInEffectError(
            f"cannot tell DFT from cross-entropy on this batch (DFT {expected.dft:.6g} vs CE {expected.ce:.6g}); "
            "the guard needs a batch where the model is not yet certain of the answer"
        )
    if close(reported, expected.ce):
        raise DFTNotInEffectError(
            f"the training {what} {reported:.6g} equals plain cross-entropy {expected.ce:.6g}, not the DFT loss "
            f"{expected.dft:.6g}: DFT is NOT in effect (check --loss and the backend's loss routing)"
        )
    if not close(reported, expected.dft):
        raise DFTNotInEffectError(
            f"the training {what} {reported:.6g} is neither the DFT loss {expected.dft:.6g} nor cross-entropy "
            f"{expected.ce:.6g} of the first batch: DFT is not verifiably in effect"
        )


def check_kernel_ran(calls_before: int, calls_after: int) -> None:
    """Stop unless the patched Unsloth kernel's call counter moved during the first optimisation step."""
    if calls_after <= calls_before:
        raise DFTNotInEffectError(
            "the patched DFT cross-entropy kernel was never called during the first optimisation step: Unsloth "
            "routed the loss elsewhere (e.g. a fused linear cross-entropy), so training would be plain SFT. "
            "Use --backend hf, or disable Unsloth's fused loss for this model"
        )
