"""Defaults that depend on the machine: the published bf16 and 8-bit AdamW where a GPU has them, their CPU fallbacks.

The training configs resolve them in ``__post_init__``; the loaders and trainers ask :func:`cuda_available`.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def cuda_available() -> bool:
    """True on a machine with a usable CUDA device."""
    import torch

    return torch.cuda.is_available()


def resolve_optim(optim: str, on_gpu: bool | None = None) -> str:
    """The published 8-bit AdamW needs bitsandbytes and a GPU; on CPU fall back to plain AdamW (with a warning)."""
    on_gpu = cuda_available() if on_gpu is None else on_gpu
    if "8bit" in str(optim) and not on_gpu:
        logger.warning("optim %s needs a GPU (bitsandbytes): using adamw_torch on this CPU machine", optim)
        return "adamw_torch"
    return str(optim)


def resolve_bf16(bf16: bool | None, on_gpu: bool | None = None) -> bool:
    """bf16 by default where the GPU supports it; full precision on CPU (bf16 CPU training is slow)."""
    import torch

    if bf16 is not None:
        return bool(bf16)
    on_gpu = cuda_available() if on_gpu is None else on_gpu
    return bool(on_gpu and torch.cuda.is_bf16_supported())
