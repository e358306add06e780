"""Fused cross-entropy Triton kernel with Dynamic Fine-Tuning (DFT) rescaling, pluggable into Unsloth.

DFT (Wu et al., arXiv 2508.05629) weights each answer token's cross-entropy by the model's own probability
of the gold token, with the weight excluded from the gradient:

    loss_i = sg(p_i) * CE_i,   p_i = exp(-CE_i),   d loss_i / d logits = p_i * d CE_i / d logits.

The published LAMAR run put this rescaling into Unsloth's fused cross-entropy kernel. This file is our own
kernel with the same call interface as Unsloth's ``unsloth/kernels/cross_entropy_loss.py``
(``fast_cross_entropy_loss(logits, labels, logit_softcapping=0, logit_scaling=0, n_items=None)`` and the
autograd Function ``Fast_CrossEntropyLoss``), plus a ``dft`` switch (False = plain cross-entropy).

Design: one program per row walks the vocabulary in chunks of ``chunk_size`` columns with an online
logsumexp, so any vocabulary size works (Qwen3.5 has 248,320 entries); the backward pass launches one program
per (row, chunk). Logit scaling (``s * x``) and soft-capping (``t * tanh(x / t)``, applied after scaling) are
fused in both passes. Labels equal to -100 are ignored (zero loss, zero gradient).

This folder has no ``__init__.py`` on purpose (the real Unsloth must win ``import unsloth``): load this file with
``utils.paths.load_module_from_path("unsloth/kernels/cross_entropy_loss.py", "lamar_dft_cross_entropy")``.
``install_into_unsloth()`` then swaps our functions into the installed Unsloth at run time and counts the
calls, so a training script can prove the kernel really ran (Unsloth may route a model through another loss).

How a model's loss reaches this kernel (Unsloth 2026.10.9 / unsloth_zoo 2026.10.9): with ``UNSLOTH_RETURN_LOGITS=1``
Unsloth's compiled forward calls ``self.loss_function(logits, labels, ...)``. That is the entry of transformers'
``LOSS_MAPPING`` frozen onto the model at load (``post_patch_loss_function``), and the entry is the closure that
unsloth_zoo's ``loss_utils.patch_loss_functions(_fast_cross_entropy_loss)`` builds around the function it is
*given* (``UnslothForCausalLMLoss`` -> ``unsloth_fixed_cross_entropy`` -> ``_fast_cross_entropy_loss``). Unsloth
calls it from ``FastModel.from_pretrained`` (``torch_compile=False``) with its module global
``fast_cross_entropy_loss``, but its loop only replaces entries still named ``ForCausalLMLoss``: if the mapping was
patched earlier in the process, the old closure stays, holding Unsloth's own ``fast_cross_entropy_loss``, which would
reach our kernel only through its call-time lookup of the module global ``Fast_CrossEntropyLoss``. So
``install_into_unsloth`` does not rely on either: it rebuilds every causal-LM entry of ``LOSS_MAPPING`` through
``patch_loss_functions`` with our function, uncompiled as ``from_pretrained`` does, and checks that each entry's
closure holds our function (``loss_reaches_kernel``); ``check_model_loss`` checks the loss frozen onto a loaded model.
``tests/test_unsloth_loss_route.py`` runs this against the real Unsloth code on CPU.
On CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1`` set before this file is loaded).
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import triton
import triton.language as tl

IGNORE_INDEX = -100
# Unsloth fuses up to 65,536 vocabulary columns in one block; larger vocabularies are processed in chunks.
MAX_FUSED_SIZE = 65536
DEFAULT_CHUNK_SIZE = MAX_FUSED_SIZE

# How often each entry point ran in this process; the training guard reads it (see kernel_call_count).
CALL_COUNTS: Counter[str] = Counter()


@triton.jit
def _tanh(x):
    """tanh through exp: portable across GPU backends and Triton's CPU interpreter (saturates to +-1)."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _dft_ce_forward_kernel(
    logits_ptr,
    logits_row_stride,
    labels_ptr,
    loss_ptr,
    lse_ptr,
    weight_ptr,
    vocab_size,
    logit_scale,
    softcap,
    IGNORE: tl.constexpr,
    BLOCK: tl.constexpr,
    DO_SCALE: tl.constexpr,
    DO_SOFTCAP: tl.constexpr,
    DFT: tl.constexpr,
):
    """Per row: logsumexp over the vocabulary chunk by chunk, the CE of the gold token, and its DFT weight."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_row_stride
    offsets = tl.arange(0, BLOCK)

    running_max = tl.full([], -float("inf"), tl.float32)
    running_sum = tl.full([], 0.0, tl.float32)
    for start in range(0, vocab_size, BLOCK):
        cols = start + offsets
        inside = cols < vocab_size
        x = tl.load(row_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        if DO_SCALE:
            x = x * logit_scale
        if DO_SOFTCAP:
            x = softcap * _tanh(x / softcap)
        x = tl.where(inside, x, -float("inf"))
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)

    label = tl.load(labels_ptr + row).to(tl.int64)
    ignored = label == IGNORE
    gold = tl.load(row_ptr + tl.where(ignored, 0, label)).to(tl.float32)
    if DO_SCALE:
        gold = gold * logit_scale
    if DO_SOFTCAP:
        gold = softcap * _tanh(gold / softcap)
    ce = lse - gold
    if DFT:
        weight = tl.exp(-ce)
    else:
        weight = tl.full([], 1.0, tl.float32)
    weight = tl.where(ignored, 0.0, weight)
    tl.store(loss_ptr + row, ce * weight)
    tl.store(lse_ptr + row, lse)
    tl.store(weight_ptr + row, weight)


@triton.jit
def _dft_ce_backward_kernel(
    logits_ptr,
    logits_row_stride,
    grad_ptr,
    grad_row_stride,
    dloss_ptr,
    dloss_stride,
    labels_ptr,
    lse_ptr,
    weight_ptr,
    vocab_size,
    logit_scale,
    softcap,
    BLOCK: tl.constexpr,
    DO_SCALE: tl.constexpr,
    DO_SOFTCAP: tl.constexpr,
):
    """Per (row, chunk): d loss / d logits = dloss * weight * (softmax - onehot), through softcap and scale."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = cols < vocab_size

    x = tl.load(logits_ptr + row * logits_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    if DO_SCALE:
        x = x * logit_scale
    if DO_SOFTCAP:
        capped = _tanh(x / softcap)
        x = softcap * capped
    label = tl.load(labels_ptr + row).to(tl.int64)
    lse = tl.load(lse_ptr + row)
    scale_row = tl.load(weight_ptr + row) * tl.load(dloss_ptr + row * dloss_stride).to(tl.float32)

    grad = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
    grad = grad * scale_row
    if DO_SOFTCAP:
        grad = grad * (1.0 - capped * capped)
    if DO_SCALE:
        grad = grad * logit_scale
    tl.store(grad_ptr + row * grad_row_stride + cols, grad.to(grad_ptr.dtype.element_ty), mask=inside)


def _block_size(vocab_size: int, chunk_size: int) -> int:
    """Columns per program: the whole vocabulary when it fits in one chunk, else ``chunk_size``."""
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size}")
    return min(triton.next_power_of_2(vocab_size), chunk_size)


def _num_warps(block: int) -> int:
    """More warps for wider blocks, as fused softmax kernels usually do."""
    if block >= 32768:
        return 32
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


def _check_labels(labels: torch.Tensor, vocab_size: int) -> None:
    """A label outside [0, vocab) other than -100 would read out of bounds inside the kernel."""
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"labels must be -100 or in [0, {vocab_size}), got {labels[bad][:5].tolist()}")


class Fast_CrossEntropyLoss(torch.autograd.Function):  # noqa: N801 (Unsloth's public name)
    """Per-row (DFT-weighted) cross-entropy of 2-D logits; same positional interface as Unsloth's Function.

    ``apply(logits, labels, logit_softcapping=0, logit_scaling=0, dft=True, chunk_size=65536,
    inplace_backward=False)`` returns float32 losses of shape (rows,), zero on ignored rows. With
    ``inplace_backward`` the gradient overwrites ``logits`` (Unsloth's memory saving; the logits of a 4B model
    at 24k tokens are ~12 GB): only for logits nothing else reads afterwards.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        labels: torch.Tensor,
        logit_softcapping: float = 0,
        logit_scaling: float = 0,
        dft: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        inplace_backward: bool = False,
    ) -> torch.Tensor:
        CALL_COUNTS["Fast_CrossEntropyLoss"] += 1
        if logits.dim() != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"expected logits (rows, vocab) and labels (rows,), got {tuple(logits.shape)} and "
                             f"{tuple(labels.shape)}")
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        labels = labels.contiguous()
        rows, vocab_size = logits.shape
        _check_labels(labels, vocab_size)
        block = _block_size(vocab_size, chunk_size)
        losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(losses)
        weights = torch.empty_like(losses)
        if rows:
            _dft_ce_forward_kernel[(rows,)](
                logits, logits.stride(0), labels, losses, lse, weights, vocab_size,
                float(logit_scaling or 1.0), float(logit_softcapping or 1.0),
                IGNORE=IGNORE_INDEX, BLOCK=block, DO_SCALE=bool(logit_scaling), DO_SOFTCAP=bool(logit_softcapping),
                DFT=bool(dft), num_warps=_num_warps(block),
            )
        ctx.save_for_backward(logits, labels, lse, weights)
        ctx.settings = (float(logit_softcapping or 0), float(logit_scaling or 0), chunk_size, inplace_backward)
        return losses

    @staticmethod
    def backward(ctx: Any, dlosses: torch.Tensor):
        logits, labels, lse, weights = ctx.saved_tensors
        softcap, scale, chunk_size, inplace = ctx.settings
        rows, vocab_size = logits.shape
        block = _block_size(vocab_size, chunk_size)
        grad = logits if inplace else torch.empty_like(logits)
        if rows:
            _dft_ce_backward_kernel[(rows, triton.cdiv(vocab_size, block))](
                logits, logits.stride(0), grad, grad.stride(0), dlosses, dlosses.stride(0), labels, lse, weights,
                vocab_size, float(scale or 1.0), float(softcap or 1.0),
                BLOCK=block, DO_SCALE=bool(scale), DO_SOFTCAP=bool(softcap), num_warps=_num_warps(block),
            )
        return grad, None, None, None, None, None, None


def fast_cross_entropy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    logit_softcapping: float = 0,
    logit_scaling: float = 0,
    n_items: int | torch.Tensor | None = None,
    dft: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Mean (DFT) cross-entropy over non-ignored tokens: ``sum(losses) / n_items``.

    ``logits`` is (..., vocab) and ``labels`` the matching (...) tensor, already shifted (label i is the
    token that logits i must predict). ``n_items`` defaults to the number of labels that are not -100
    (pass the count over all gradient-accumulation micro-batches to weight them like one big batch).
    """
    CALL_COUNTS["fast_cross_entropy_loss"] += 1
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    vocab_size = logits.shape[-1]
    losses = Fast_CrossEntropyLoss.apply(
        logits.reshape(-1, vocab_size), labels.reshape(-1), logit_softcapping, logit_scaling, dft, chunk_size,
        inplace_backward,
    )
    if n_items is None:
        n_items = torch.count_nonzero(labels != IGNORE_INDEX)
    return losses.sum() / n_items


def kernel_call_count() -> int:
    """How many times either entry point ran since this module was loaded (the DFT guard watches it move)."""
    return CALL_COUNTS["fast_cross_entropy_loss"] + CALL_COUNTS["Fast_CrossEntropyLoss"]


# --- run-time patching of the installed Unsloth ----------------------------------------------------------------


@dataclass
class InstallReport:
    """What ``install_into_unsloth`` replaced: module names per patched attribute."""

    target: str
    dft: bool
    patched: dict[str, list[str]] = field(default_factory=dict)


def _patched_function_class(dft: bool) -> type:
    """A stand-in for Unsloth's ``Fast_CrossEntropyLoss`` whose ``apply`` has the DFT switch fixed at install time."""

    def apply(logits, labels, logit_softcapping=0, logit_scaling=0, *unused):
        return Fast_CrossEntropyLoss.apply(
            logits, labels, logit_softcapping, logit_scaling, dft, DEFAULT_CHUNK_SIZE, True
        )

    return type("Fast_CrossEntropyLoss", (), {"apply": staticmethod(apply), "dft": dft, "__doc__": apply.__doc__})


# (target module, attribute) -> every object that was bound there, Unsloth's original first.
_REPLACED: dict[tuple[str, str], list[Any]] = {}


def _replace_everywhere(original: Any, replacement: Any, name: str) -> list[str]:
    """Rebind ``name`` in every loaded module that imported ``original`` by name (``from x import name``)."""
    patched = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name == __name__:
            continue
        try:
            current = module.__dict__.get(name)
        except AttributeError:
            continue
        if current is original and current is not replacement:
            setattr(module, name, replacement)
            patched.append(module_name)
    return sorted(patched)


def loss_reaches_kernel(fn: Any) -> bool:
    """Whether calling ``fn`` reaches our ``fast_cross_entropy_loss`` through what ``fn`` itself holds: its closure
    cells, ``functools.partial``, ``__wrapped__`` (torch.compile and functools wrappers), bound methods. A module-global
    lookup at call time does not count: that is exactly the dependency the kernel route must not have."""
    stack, seen = [fn], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        if obj is fast_cross_entropy_loss:
            return True
        if isinstance(obj, functools.partial):
            stack.append(obj.func)
            continue
        stack += [getattr(obj, name, None) for name in ("__wrapped__", "_torchdynamo_orig_callable", "__func__")]
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                stack.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
    return False


def _is_causal_lm_loss(fn: Any) -> bool:
    """transformers' stock causal-LM loss or Unsloth's replacement of it (by name, as Unsloth itself matches)."""
    return getattr(fn, "__name__", "") in ("ForCausalLMLoss", "UnslothForCausalLMLoss")


def route_loss_mapping(loss_fn: Any) -> list[str]:
    """Every causal-LM entry of transformers' ``LOSS_MAPPING`` becomes Unsloth's loss closure over ``loss_fn``.

    Entries Unsloth already patched are reset to the stock loss first, since unsloth_zoo's ``patch_loss_functions``
    replaces only stock entries. Uncompiled, as ``FastModel.from_pretrained`` builds it. Returns the keys."""
    import transformers.loss.loss_utils as loss_utils
    from unsloth_zoo.loss_utils import patch_loss_functions

    mapping = loss_utils.LOSS_MAPPING
    keys = sorted(key for key, fn in mapping.items() if _is_causal_lm_loss(fn))
    for key in keys:
        mapping[key] = loss_utils.ForCausalLMLoss
    patch_loss_functions(loss_fn, torch_compile=False)
    missed = [key for key in keys if not loss_reaches_kernel(mapping[key])]
    if missed:
        raise RuntimeError(f"LOSS_MAPPING entries {missed} do not reach our DFT kernel after patch_loss_functions: "
                           "this unsloth_zoo version builds its loss differently (pinned: 2026.10.9)")
    return keys


def effective_loss_function(module: Any) -> Any:
    """The loss a model's forward calls as ``self.loss_function``: the one frozen onto the instance at load
    (Unsloth's ``post_patch_loss_function``), else the class's lookup (a property, or a method after Unsloth)."""
    frozen = module.__dict__.get("loss_function")
    if frozen is not None:
        return frozen
    fn = module.loss_function
    if getattr(fn, "__self__", None) is module and getattr(fn, "__name__", "") == "loss_function":
        fn = fn()  # Unsloth replaced the property by its undecorated getter
    return fn


def check_model_loss(model: Any) -> None:
    """Stop unless the loss a loaded model's forward calls reaches our kernel (walks every submodule that defines a
    loss function: the PEFT wrapper, the task model, the inner model)."""
    checked = []
    for name, module in model.named_modules():
        if "loss_function" not in module.__dict__ and not hasattr(type(module), "loss_function"):
            continue
        try:
            fn = effective_loss_function(module)
        except Exception:  # e.g. a submodule whose class maps to no loss type: its forward computes no loss
            continue
        if not _is_causal_lm_loss(fn) and not loss_reaches_kernel(fn):
            continue  # not a causal-LM loss (e.g. a vision tower's)
        checked.append(name or type(module).__name__)
        if not loss_reaches_kernel(fn):
            raise RuntimeError(f"--dft_route kernel: the loss of {name or type(module).__name__} "
                               f"({getattr(fn, '__qualname__', fn)!r}) does not reach our DFT kernel")
    if not checked:
        raise RuntimeError("--dft_route kernel: the model defines no causal-LM loss function to route")


def install_into_unsloth(dft: bool = True, target: ModuleType | None = None,
                         loss_mapping: bool | None = None) -> InstallReport:
    """Swap our kernel into the installed Unsloth (``unsloth.kernels.cross_entropy_loss``) and every importer, and
    rebuild transformers' causal-LM ``LOSS_MAPPING`` entries around it (``loss_mapping``, default: when ``target`` is
    the installed Unsloth; see the module docstring for why both).

    Call after ``import unsloth`` and before building the model. The replacements compute the gradient in
    place like Unsloth's kernel. Returns which modules were patched; ``kernel_call_count()`` then shows whether
    training really reaches the kernel.
    """
    if loss_mapping is None:
        loss_mapping = target is None
    if target is None:
        import importlib

        target = importlib.import_module("unsloth.kernels.cross_entropy_loss")
    report = InstallReport(target=target.__name__, dft=dft)

    patched_fn = functools.partial(fast_cross_entropy_loss, dft=dft, inplace_backward=True)
    functools.update_wrapper(patched_fn, fast_cross_entropy_loss)
    patched_cls = _patched_function_class(dft)

    for name, replacement in (("fast_cross_entropy_loss", patched_fn), ("Fast_CrossEntropyLoss", patched_cls)):
        current = getattr(target, name, None)
        if current is None:
            raise RuntimeError(f"{target.__name__} has no {name}: this Unsloth version is not supported")
        # Every object ever bound under this name (Unsloth's original, earlier installs): a module imported between
        # two installs may still hold any of them.
        seen = _REPLACED.setdefault((target.__name__, name), [])
        if all(current is not obj for obj in seen):
            seen.append(current)
        modules: set[str] = set()
        for old in seen:
            modules.update(_replace_everywhere(old, replacement, name))
        seen.append(replacement)
        report.patched[name] = sorted(modules)
    if loss_mapping:
        report.patched["LOSS_MAPPING"] = route_loss_mapping(patched_fn)
    return report
