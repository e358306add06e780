"""The CPU path of TRL 1.15's fused LM head (utils.training.trl_cpu) equals TRL's own Triton kernel.

TRL's kernel cannot run on CPU tensors, except under Triton's interpreter: a child process started with
TRITON_INTERPRET=1 runs the real kernel and our PyTorch path on the same inputs and compares every output and the
gradients. Skipped, with its reason, where Triton is not installed (macOS).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from utils.paths import REPO_ROOT
from utils.training.trl_cpu import DeviceDispatchedLogProb, install_cpu_fused_head, torch_chunked_logprob

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")

CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from trl.trainer.utils import _ChunkedLogProbFunction as kernel
from utils.training.trl_cpu import torch_chunked_logprob
torch.manual_seed(0)
report = {}
for temperature, softcap, scale in ((1.0, None, 1.0), (0.7, 30.0, 0.5)):
    hidden = torch.randn(13, 16, requires_grad=True)
    weight = torch.randn(301, 16, requires_grad=True)
    targets = torch.randint(0, 301, (13,))
    outputs = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    ours = torch_chunked_logprob(hidden, weight, None, targets, temperature, 64, softcap, scale, outputs)
    theirs = kernel.apply(hidden, weight, None, targets, temperature, 64, softcap, scale, outputs)
    diffs = {name: (float((a.float() - b.float()).abs().max()) if a.dtype != torch.bool else int((a != b).sum()))
             for name, a, b in zip(outputs, ours, theirs)}
    grads = []
    for out in (ours, theirs):
        (out[0].sum() + out[1].sum()).backward()
        grads.append((hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    diffs["grad_hidden"] = float((grads[0][0] - grads[1][0]).abs().max())
    diffs["grad_weight"] = float((grads[0][1] - grads[1][1]).abs().max())
    report[f"t{temperature}_cap{softcap}_s{scale}"] = diffs
print(json.dumps(report))
"""


def test_the_torch_path_computes_the_label_log_probabilities_from_full_logits() -> None:
    torch.manual_seed(1)
    hidden, weight, bias = torch.randn(5, 8), torch.randn(40, 8), torch.randn(40)
    targets = torch.randint(0, 40, (5,))
    log_probs, entropy, log_sum_sq, mean_logits, is_top1 = torch_chunked_logprob(
        hidden, weight, bias, targets, 2.0, 16, None, 1.0, OUTPUTS)
    logits = (hidden @ weight.T + bias) / 2.0
    full = logits.log_softmax(-1)
    torch.testing.assert_close(log_probs, full.gather(-1, targets[:, None]).squeeze(-1))
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1))
    torch.testing.assert_close(log_sum_sq, torch.log((full.exp() ** 2).sum(-1)))
    torch.testing.assert_close(mean_logits, logits.mean(-1))
    assert torch.equal(is_top1, logits.argmax(-1) == targets)
    assert torch_chunked_logprob(hidden, weight, bias, targets, 1.0, 16)[1:] == (None, None, None, None)


def test_accelerator_tensors_go_to_the_installed_kernel_and_cpu_ones_to_torch() -> None:
    calls = []
    kernel = SimpleNamespace(apply=lambda *args: calls.append(args) or "kernel")
    dispatcher = DeviceDispatchedLogProb(kernel)
    on_gpu = SimpleNamespace(device=torch.device("cuda", 0))
    assert dispatcher.apply(on_gpu, 1, 2) == "kernel" and calls == [(on_gpu, 1, 2)]
    cpu = dispatcher.apply(torch.randn(2, 4), torch.randn(6, 4), None, torch.tensor([1, 5]), 1.0, 8)
    assert cpu[0].shape == (2,) and len(calls) == 1


def test_installing_is_idempotent_and_reaches_trl() -> None:
    import trl.trainer.utils as trl_utils

    install_cpu_fused_head()
    assert isinstance(trl_utils._ChunkedLogProbFunction, DeviceDispatchedLogProb)
    assert install_cpu_fused_head() is False  # already in place


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (Linux only): "
                    "TRL's kernel cannot run here, so there is nothing to compare against")
def test_the_torch_path_equals_trls_kernel_under_the_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(REPO_ROOT)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for case, diffs in report.items():
        assert diffs.pop("is_top1") == 0, case
        assert max(diffs.values()) < 1e-4, (case, diffs)  # measured: up to ~5e-6
