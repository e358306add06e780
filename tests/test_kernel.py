"""Our fused DFT cross-entropy Triton kernel, run by Triton's CPU interpreter against the PyTorch reference.

Unsloth is never imported: the kernel file is loaded by path. Triton decides interpreter vs compiler when its
``@jit`` functions (its own ``tl.max``/``tl.sum`` included) are decorated, i.e. when Triton is first imported,
and other test modules import it earlier through torch/transformers. So the ``case_*`` functions below run in a
child pytest process started with TRITON_INTERPRET=1 from the beginning; the parent collects one driver test
that fails with the child's output when any case fails. Shapes stay tiny: the interpreter is ~1000x slower than torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from types import ModuleType

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (it has Linux wheels only): the DFT kernel cannot be "
                                     "compiled or interpreted here")

from utils.training.dft import dft_loss, per_token_cross_entropy
from utils.paths import REPO_ROOT, load_module_from_path

MODULE_NAME = "lamar_dft_cross_entropy_interpreted"


CHILD_FLAG = "LAMAR_KERNEL_TESTS_IN_CHILD"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"


@pytest.fixture(scope="module")
def kernel() -> ModuleType:
    assert os.environ.get("TRITON_INTERPRET") == "1", "kernel cases run only in the interpreter child process"
    return load_module_from_path("unsloth/kernels/cross_entropy_loss.py", MODULE_NAME)


def _case(vocab: int, seed: int = 0, rows: tuple[int, int] = (2, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*rows, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, rows, generator=generator)
    labels[0, 1] = -100
    labels[-1, -1] = -100
    return logits, labels


def _run_both(kernel, logits, labels, **options):
    ours = logits.clone().requires_grad_()
    ref = logits.clone().requires_grad_()
    chunk = options.pop("chunk_size", kernel.DEFAULT_CHUNK_SIZE)
    dft = options.pop("dft", True)
    loss_ours = kernel.fast_cross_entropy_loss(ours, labels, dft=dft, chunk_size=chunk, **options)
    loss_ours.backward()
    loss_ref = dft_loss(ref, labels, dft=dft, **options)
    loss_ref.backward()
    return loss_ours.detach(), loss_ref.detach(), ours.grad, ref.grad


@pytest.mark.parametrize(
    ("vocab", "chunk_size", "dft", "options"),
    [
        (37, 64, True, {}),  # one block covers the vocabulary
        (37, 8, True, {}),  # chunked logsumexp, ragged last chunk
        (64, 16, False, {}),  # plain cross-entropy, chunk boundary == vocab end
        (100, 16, True, {"logit_scaling": 0.5}),
        (100, 32, True, {"logit_softcapping": 3.0}),
        (50, 16, False, {"logit_scaling": 2.0, "logit_softcapping": 5.0}),
    ],
)
def case_loss_and_gradient_match_the_pytorch_reference(kernel, vocab, chunk_size, dft, options) -> None:
    logits, labels = _case(vocab)
    loss_ours, loss_ref, grad_ours, grad_ref = _run_both(kernel, logits, labels, chunk_size=chunk_size, dft=dft,
                                                         **options)
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-4, atol=1e-7)


def case_dft_is_ce_times_probability_and_its_gradient_is_p_times_the_ce_gradient(kernel) -> None:
    logits, labels = _case(40, seed=3, rows=(1, 3))
    labels[:] = torch.tensor([[5, 7, 9]])
    rows = logits.reshape(-1, 40)
    dft_rows = kernel.Fast_CrossEntropyLoss.apply(rows, labels.reshape(-1), 0, 0, True, 16)
    ce_rows = kernel.Fast_CrossEntropyLoss.apply(rows, labels.reshape(-1), 0, 0, False, 16)
    ce_ref = per_token_cross_entropy(logits, labels).reshape(-1)
    torch.testing.assert_close(ce_rows, ce_ref)
    torch.testing.assert_close(dft_rows, ce_ref * torch.exp(-ce_ref))
    assert (dft_rows < ce_rows).all()

    x_dft = rows.clone().requires_grad_()
    x_ce = rows.clone().requires_grad_()
    kernel.Fast_CrossEntropyLoss.apply(x_dft, labels.reshape(-1), 0, 0, True, 16).sum().backward()
    kernel.Fast_CrossEntropyLoss.apply(x_ce, labels.reshape(-1), 0, 0, False, 16).sum().backward()
    torch.testing.assert_close(x_dft.grad, x_ce.grad * torch.exp(-ce_ref)[:, None])


def case_ignored_rows_have_zero_loss_and_zero_gradient(kernel) -> None:
    logits, labels = _case(20, rows=(1, 3))
    labels[0] = torch.tensor([-100, 4, -100])
    x = logits.reshape(-1, 20).clone().requires_grad_()
    losses = kernel.Fast_CrossEntropyLoss.apply(x, labels.reshape(-1), 0, 0, True, 8)
    assert losses[0] == 0 and losses[2] == 0 and losses[1] > 0
    losses.sum().backward()
    assert torch.count_nonzero(x.grad[0]) == 0 and torch.count_nonzero(x.grad[2]) == 0
    assert torch.count_nonzero(x.grad[1]) == 20


def case_n_items_divides_the_sum_like_gradient_accumulation(kernel) -> None:
    logits, labels = _case(16, seed=5)
    total = kernel.fast_cross_entropy_loss(logits, labels, n_items=10, chunk_size=8)
    per_row = kernel.Fast_CrossEntropyLoss.apply(logits.reshape(-1, 16), labels.reshape(-1), 0, 0, True, 8)
    torch.testing.assert_close(total, per_row.sum() / 10)
    default = kernel.fast_cross_entropy_loss(logits, labels, chunk_size=8)
    torch.testing.assert_close(default, per_row.sum() / 6)  # 8 positions, 2 ignored


def case_bfloat16_logits_give_a_bfloat16_gradient_close_to_float32(kernel) -> None:
    logits, labels = _case(24, seed=7)
    x = logits.to(torch.bfloat16).requires_grad_()
    loss = kernel.fast_cross_entropy_loss(x, labels, chunk_size=8)
    loss.backward()
    ref = logits.to(torch.bfloat16).float().requires_grad_()
    dft_loss(ref, labels).backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, dft_loss(logits.to(torch.bfloat16), labels), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.float(), ref.grad, rtol=2e-2, atol=1e-4)


def case_inplace_backward_reuses_the_logits_storage(kernel) -> None:
    logits, labels = _case(12, rows=(1, 2))
    rows = logits.reshape(-1, 12).clone()
    captured = {}
    x = rows.clone().requires_grad_()
    y = x * 1.0  # non-leaf: the kernel may overwrite it
    y.register_hook(lambda grad: captured.setdefault("grad", grad))
    kernel.Fast_CrossEntropyLoss.apply(y, labels.reshape(-1), 0, 0, True, 8, True).sum().backward()
    assert captured["grad"].data_ptr() == y.data_ptr()
    ref = rows.clone().requires_grad_()
    dft_loss(ref, labels.reshape(-1), n_items=1).backward()
    torch.testing.assert_close(x.grad, ref.grad)


def case_bad_labels_and_chunk_sizes_are_rejected(kernel) -> None:
    logits, labels = _case(10, rows=(1, 2))
    labels[0, 0] = 10
    with pytest.raises(ValueError, match=r"labels must be -100 or in \[0, 10\), got \[10\]"):
        kernel.fast_cross_entropy_loss(logits, labels)
    with pytest.raises(ValueError, match="power of two"):
        kernel.fast_cross_entropy_loss(logits, labels.clamp(max=9), chunk_size=12)
    with pytest.raises(ValueError, match="do not match"):
        kernel.fast_cross_entropy_loss(logits, labels[:, :1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def case_the_gpu_suite_comparison_accepts_the_kernel(kernel, dtype) -> None:
    """tests/gpu/test_kernel_gpu.py's check, with its tolerances, on a small vocabulary split into 5 chunks."""
    from utils.testing.gpu_checks import KERNEL_TOLERANCES, compare_to_reference, kernel_case

    logits, labels = kernel_case(9, 300, dtype)
    comparison = compare_to_reference(lambda x, y: kernel.fast_cross_entropy_loss(x, y, chunk_size=64), logits, labels)
    assert comparison.within(*KERNEL_TOLERANCES[dtype]), comparison


def case_install_into_unsloth_rebinds_every_importer_and_counts_calls(kernel, monkeypatch) -> None:
    def original_fn(*args, **kwargs):
        raise AssertionError("the original Unsloth loss must not run after install")

    class OriginalFunction:
        apply = staticmethod(original_fn)

    target = types.ModuleType("fake_unsloth.kernels.cross_entropy_loss")
    target.fast_cross_entropy_loss = original_fn
    target.Fast_CrossEntropyLoss = OriginalFunction
    importer = types.ModuleType("fake_unsloth.models.llama")
    importer.fast_cross_entropy_loss = original_fn
    bystander = types.ModuleType("fake_unsloth.models.other")
    bystander.fast_cross_entropy_loss = len  # same name, different object: left alone
    for module in (target, importer, bystander):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    report = kernel.install_into_unsloth(dft=True, target=target)
    assert report.patched["fast_cross_entropy_loss"] == sorted([importer.__name__, target.__name__])
    assert report.patched["Fast_CrossEntropyLoss"] == [target.__name__]
    assert bystander.fast_cross_entropy_loss is len

    logits, labels = _case(12, rows=(1, 3))
    before = kernel.kernel_call_count()
    x = logits.clone().requires_grad_()
    loss = importer.fast_cross_entropy_loss(x, labels, 0, 0)
    assert kernel.kernel_call_count() > before
    torch.testing.assert_close(loss, dft_loss(logits, labels))
    rows = target.Fast_CrossEntropyLoss.apply(logits.reshape(-1, 12), labels.reshape(-1), 0, 0)
    torch.testing.assert_close(rows.sum() / (labels != -100).sum(), dft_loss(logits, labels))

    plain = kernel.install_into_unsloth(dft=False, target=target)
    assert plain.patched["fast_cross_entropy_loss"] == sorted([importer.__name__, target.__name__])
    torch.testing.assert_close(importer.fast_cross_entropy_loss(logits, labels), dft_loss(logits, labels, dft=False))


def case_loss_reaches_kernel_only_through_what_the_loss_holds(kernel) -> None:
    """Closures, partials, wrappers and bound methods count; a module-global lookup at call time does not."""
    import functools

    ours = functools.partial(kernel.fast_cross_entropy_loss, dft=True)

    def build(fn):
        def fixed(x, y):
            return fn(x, y)

        def causal(x, y):
            return fixed(x, y)

        return causal

    @functools.wraps(build(ours))
    def compiled(*args):  # torch.compile's wrapper keeps the original under __wrapped__
        raise AssertionError

    assert kernel.loss_reaches_kernel(build(ours)) and kernel.loss_reaches_kernel(compiled)
    assert kernel.loss_reaches_kernel(kernel.fast_cross_entropy_loss)

    def by_global_lookup(x, y):
        return kernel.fast_cross_entropy_loss(x, y)

    assert not kernel.loss_reaches_kernel(by_global_lookup)
    assert not kernel.loss_reaches_kernel(build(dft_loss))


def case_install_refuses_an_unsloth_without_the_kernel_entry_points(kernel) -> None:
    with pytest.raises(RuntimeError, match="has no fast_cross_entropy_loss"):
        kernel.install_into_unsloth(target=types.ModuleType("fake_unsloth_without_kernel"))


if IN_CHILD:  # the child collects every case as a test
    for _name, _case_fn in list(globals().items()):
        if _name.startswith("case_"):
            globals()["test_" + _name[len("case_"):]] = _case_fn
else:

    @pytest.mark.slow
    def test_kernel_cases_pass_under_the_triton_interpreter() -> None:
        env = {**os.environ, "TRITON_INTERPRET": "1", CHILD_FLAG: "1"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-rA"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
        )
        report = result.stdout[-8000:] + result.stderr[-2000:]
        assert result.returncode == 0, report
        n_cases = sum(1 for line in result.stdout.splitlines() if line.startswith("PASSED "))
        assert n_cases == 17 and "skipped" not in result.stdout, report
