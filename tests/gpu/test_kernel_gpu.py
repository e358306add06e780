"""Our Triton DFT cross-entropy kernel compiled on the GPU vs the PyTorch reference, at Qwen3.5's vocabulary."""

from __future__ import annotations

import pytest
import torch

from utils.paths import load_module_from_path
from utils.testing.gpu_checks import (
    KERNEL_TOLERANCES, PUBLISHED_TOKENS, QWEN35_VOCAB, compare_to_reference, full_logits_bytes, kernel_case, measure, record, report,
)
from utils.testing.references import dft_loss

pytestmark = pytest.mark.gpu
ROWS = 4096  # the reference builds float32 copies of the logits: 4 GiB per copy at this size


@pytest.fixture(scope="module")
def kernel():
    return load_module_from_path("unsloth/kernels/cross_entropy_loss.py", "lamar_dft_cross_entropy_gpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dft", [True, False], ids=["dft", "ce"])
def test_kernel_matches_the_reference_forward_and_backward(kernel, dtype, dft) -> None:
    logits, labels = kernel_case(ROWS, QWEN35_VOCAB, dtype, "cuda")
    fn = lambda x, y: kernel.fast_cross_entropy_loss(x, y, dft=dft)  # noqa: E731
    comparison = compare_to_reference(fn, logits, labels, dft=dft)
    loss_tol, grad_tol = KERNEL_TOLERANCES[dtype]
    assert comparison.within(loss_tol, grad_tol), comparison
    if not dft:
        return
    ours = logits.clone().requires_grad_()
    _, m_kernel = measure(lambda: kernel.fast_cross_entropy_loss(ours, labels).backward())
    ref = logits.clone().requires_grad_()
    _, m_ref = measure(lambda: dft_loss(ref, labels).backward())
    record(report(f"DFT kernel vs PyTorch reference, {ROWS} tokens x {QWEN35_VOCAB} vocab, {str(dtype)[6:]}", [
        ("loss rel. error", f"{comparison.loss_rel_err:.2e}"),
        ("gradient rel. error", f"{comparison.grad_rel_err:.2e}"),
        ("kernel fwd+bwd", m_kernel.describe()),
        ("reference fwd+bwd", m_ref.describe()),
    ]))


def test_kernel_at_the_published_length_needs_no_memory_beyond_the_logits(kernel) -> None:
    """24,576 tokens in bf16 as Unsloth calls it (gradient written in place): the full logits themselves cost
    12.2 GB; the kernel adds only per-row statistics."""
    logits, labels = kernel_case(PUBLISHED_TOKENS, QWEN35_VOCAB, torch.bfloat16, "cuda")
    logits.requires_grad_()
    x = logits * 1.0  # a non-leaf, as the LM head's output is: the kernel may overwrite it with its gradient

    def step():
        loss = kernel.fast_cross_entropy_loss(x, labels, inplace_backward=True)
        loss.backward()
        return loss

    loss, m = measure(step)
    assert torch.isfinite(loss)
    logits_bytes = full_logits_bytes(PUBLISHED_TOKENS, QWEN35_VOCAB, 2)
    assert m.peak_bytes < 1.1 * logits_bytes  # the leaf's gradient (same size) is autograd's, not the kernel's
    record(report("DFT kernel at the published size (24,576 x 248,320, bf16, in-place backward)", [
        ("full logits", f"{logits_bytes / 1e9:.1f} GB bf16, {2 * logits_bytes / 1e9:.1f} GB fp32"),
        ("kernel fwd+bwd", m.describe()),
    ]))
