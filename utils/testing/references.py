"""Reference computations the tests check production code against (used by tests and the GPU checks only).

- the DFT and cross-entropy losses on full logits in plain PyTorch (Wu et al., arXiv 2508.05629: per answer token
  ``-sg(p) * log p``): what our Triton kernel (``unsloth/kernels/cross_entropy_loss.py``) must equal;
- :func:`answer_token_stats`: NLL and top-1 accuracy of a model on an answer, what DFT training should improve;
- :func:`same_category_crossings`: the same-category span pairs a tagged-text round trip re-pairs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import torch

from utils.meddec.predictions import Span
from utils.prompt import CHAT_TEMPLATE_KWARGS, build_messages

IGNORE_INDEX = -100


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


def answer_token_stats(model, tokenizer, raw_text: str, answer: str) -> tuple[float, float]:
    """Mean NLL and top-1 accuracy of the answer tokens (and end of turn) given the prompt, as SFT sees them.

    What DFT training should improve; the DFT loss value itself (-p log p) can rise while the model learns.
    """
    import torch

    prompt_messages, answer_message = build_messages(raw_text, answer)
    prompt_ids = tokenizer.apply_chat_template([prompt_messages], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, **CHAT_TEMPLATE_KWARGS)["input_ids"]
    full_ids = tokenizer.apply_chat_template([prompt_messages, answer_message], tokenize=True, return_dict=True,
                                             **CHAT_TEMPLATE_KWARGS)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + answer")
    ids = torch.tensor([full_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1 : -1].float()
    targets = ids[0, len(prompt_ids) :]
    nll = torch.nn.functional.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return float(nll), float(accuracy)


def same_category_crossings(spans: Iterable[Sequence[int]]) -> list[tuple[Span, Span]]:
    """Pairs of same-category spans that cross (s1 < s2 < e1 < e2): the ones a round trip re-pairs."""
    by_category: dict[int, list[Span]] = defaultdict(list)
    for span in set(Span(*s) for s in spans):
        by_category[span.category].append(span)
    pairs: list[tuple[Span, Span]] = []
    for group in by_category.values():
        group.sort()
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                if second.start >= first.end:
                    break
                if first.start < second.start and first.end < second.end:
                    pairs.append((first, second))
    return pairs
