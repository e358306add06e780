"""Dynamic Fine-Tuning (DFT) loss in plain PyTorch, and the run-time guard that proves it is in effect.

DFT (Wu et al., arXiv 2508.05629): per answer token ``loss = -sg(p) * log p``, p the model's probability of
the gold token, sg = stop-gradient; its gradient is p times the cross-entropy gradient. The logits-based reference
our Triton kernel (``unsloth/kernels/cross_entropy_loss.py``) is tested against: ``utils.testing.references``.

The training guard never builds full-vocabulary logits (24,576 tokens x 248,320 entries would be 12 GB in bf16): it
takes the per-token label log-probabilities of TRL's fused LM head (:func:`token_sums`), normalises them as the
trainer normalises its loss (:func:`expected_step_losses`) and compares the first step's reported loss with DFT and
with plain cross-entropy (:func:`check_loss_in_effect`). DFT is typically 10-20x smaller than the cross-entropy of
the same batch, so a reported loss equal to cross-entropy means DFT silently never ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

class DFTNotInEffectError(RuntimeError):
    """The training loss is not the DFT loss (a patched kernel never ran, or the wrong loss type is set)."""


@dataclass(frozen=True)
class TokenSums:
    """One micro-batch, from the fused LM head's label log-probabilities: sums of the per-token DFT and NLL losses
    over the answer tokens, and their number."""

    dft: float
    nll: float
    tokens: int


def token_sums(log_probs: torch.Tensor, label_mask: torch.Tensor) -> TokenSums:
    """Sums of ``-p log p`` (DFT) and ``-log p`` (NLL) over positions where ``label_mask`` is set.

    ``log_probs`` and ``label_mask`` are what TRL's fused head returns (``model(**batch, fused_lm_head=True)``): the
    log-probability of each label, zero on ignored positions. No vocabulary-sized tensor is involved.
    """
    mask = label_mask.bool()
    lp = log_probs.detach().float()[mask]
    return TokenSums(dft=float(-(lp.exp() * lp).sum()), nll=float(-lp.sum()), tokens=int(mask.sum()))


@dataclass(frozen=True)
class StepLosses:
    """The DFT and NLL values a trainer would report for one optimisation step, under its normalisation."""

    dft: float
    nll: float
    normalisation: str


TOKEN_MEAN = "token mean over the accumulated step"
MEAN_OF_MEANS = "mean of micro-batch means"


def expected_step_losses(micro: Sequence[TokenSums], token_mean: bool, *, total_tokens: int | None = None,
                         scale: float = 1.0, accumulation_steps: int | None = None) -> StepLosses:
    """DFT and NLL of one optimisation step, normalised as ``transformers.Trainer`` + TRL normalise it.

    ``token_mean`` (the model accepts loss kwargs, e.g. ``Qwen3_5ForCausalLM``): every micro-batch is divided by the
    answer tokens of the whole step (``total_tokens``, over all ranks; default: these micro-batches) and multiplied by
    ``scale`` (the number of processes when tokens are averaged across devices), the sum is the step's loss.
    Otherwise (``Qwen3_5ForConditionalGeneration``, what Unsloth loads): each micro-batch is divided by its own token
    count and the Trainer divides by the accumulation steps: the mean of the micro-batch means.
    """
    if not micro:
        raise ValueError("no micro-batch was recorded")
    if token_mean:
        divisor = max(total_tokens if total_tokens is not None else sum(m.tokens for m in micro), 1)
        return StepLosses(dft=scale * sum(m.dft for m in micro) / divisor,
                          nll=scale * sum(m.nll for m in micro) / divisor, normalisation=TOKEN_MEAN)
    steps = accumulation_steps or len(micro)
    return StepLosses(dft=sum(m.dft / max(m.tokens, 1) for m in micro) / steps,
                      nll=sum(m.nll / max(m.tokens, 1) for m in micro) / steps, normalisation=MEAN_OF_MEANS)


def check_loss_in_effect(reported: float, expected: StepLosses, loss: str = "dft", rel_tol: float = 1e-2) -> None:
    """Stop unless ``reported`` is the ``loss`` ("dft" or "nll") of the step and distinguishable from the other.

    Raises DFTNotInEffectError with the numbers, so the user sees which loss actually ran.
    """
    def close(a: float, b: float) -> bool:
        return abs(a - b) <= rel_tol * max(abs(a), abs(b), 1e-8)

    if loss not in ("dft", "nll"):
        raise ValueError(f"loss must be dft or nll, got {loss!r}")
    numbers = (f"(reported {reported:.6g}; DFT {expected.dft:.6g}, NLL {expected.nll:.6g} from the fused head's "
               f"log-probs, {expected.normalisation})")
    if close(expected.dft, expected.nll):
        raise DFTNotInEffectError(
            f"cannot tell DFT from plain cross-entropy on the first step {numbers}; the guard needs a batch where the "
            "model is not yet certain of the answer (or use --dft_guard false)")
    want, other = (expected.dft, expected.nll) if loss == "dft" else (expected.nll, expected.dft)
    if close(reported, want):
        return
    if close(reported, other):
        if loss == "dft":
            raise DFTNotInEffectError(f"the first step's loss is plain cross-entropy, not DFT {numbers}: DFT is NOT "
                                      "in effect (check --loss, --dft_route and the backend's loss routing)")
        raise DFTNotInEffectError(f"the first step's loss is DFT, not the plain cross-entropy of --loss nll "
                                  f"{numbers}: expected plain CE")
    raise DFTNotInEffectError(f"the first step's loss is neither DFT nor plain cross-entropy {numbers}: the "
                              f"{loss.upper()} loss is not verifiably in effect")


def check_kernel_ran(calls_before: int, calls_after: int) -> None:
    """Stop unless our Triton kernel's call counter moved during the first optimisation step (``--dft_route kernel``)."""
    if calls_after <= calls_before:
        raise DFTNotInEffectError(
            "the patched DFT cross-entropy kernel was never called during the first optimisation step: Unsloth "
            "routed the loss elsewhere (e.g. its fused linear cross-entropy), so the kernel route is not in effect; "
            "use --dft_route fused (DFT on the fused LM head)")
