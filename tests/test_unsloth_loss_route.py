"""The --dft_route kernel mechanism against the real Unsloth 2026.10.9 / unsloth_zoo 2026.10.9 code, on CPU.

Unsloth is not a CPU dependency of this repository, so its pinned wheels (the ones the offline GPU bundle ships,
utils/testing/gpu_bundle.py) are unpacked onto the import path of a child process, which imports Unsloth as far as
it imports without a GPU (its CPU fallback) and runs our kernel under Triton's interpreter
(tests/unsloth_route_child.py). The route must hold even when Unsloth built its LOSS_MAPPING before our install and
Unsloth's own ``Fast_CrossEntropyLoss`` is put back afterwards: the loss a loaded model calls must be ours by what
its closure holds, not by a module-global lookup at call time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from utils.paths import REPO_ROOT
from utils.testing import gpu_bundle

pytest.importorskip("triton", reason="Triton is not installed (Linux wheels only): the DFT kernel cannot run here")


@pytest.fixture(scope="module")
def unsloth_path(tmp_path_factory):
    """The pinned Unsloth and unsloth_zoo, unpacked (Unsloth Studio left out); downloaded once into the wheel cache."""
    dest = tmp_path_factory.mktemp("unsloth_pinned")
    try:
        wheels = [gpu_bundle.pinned_wheel(name) for name in ("unsloth", "unsloth_zoo")]
    except RuntimeError as error:  # no network and no cached wheel
        pytest.skip(f"the pinned Unsloth wheels are not cached in {gpu_bundle.default_wheelhouse()} and cannot be "
                    f"downloaded ({error}); run `bash scripts/gpu_bundle.sh OUT_DIR` once with network")
    for wheel in wheels:
        gpu_bundle.extract(wheel, dest, skip=("studio/",))
    return dest


@pytest.mark.slow
def test_the_models_loss_is_our_kernel_without_the_module_global_lookup(unsloth_path, tmp_path) -> None:
    out = tmp_path / "route.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{unsloth_path}{os.pathsep}{REPO_ROOT}",
           "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1"}
    # cwd: Unsloth writes its compiled trainers into ./unsloth_compiled_cache, which must not land in the repository.
    child = REPO_ROOT / "tests" / "unsloth_route_child.py"
    result = subprocess.run([sys.executable, str(child), str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    seen = json.loads(out.read_text())
    assert seen["unsloth_file"].startswith(str(unsloth_path))  # the pinned Unsloth, not our unsloth/ folder
    # Unsloth's own mapping (built before our install) holds Unsloth's function: the lookup accident's precondition.
    assert seen["before_install_reaches_kernel"] is False
    assert seen["patched"]["LOSS_MAPPING"] == ["CsmForConditionalGeneration", "ForCausalLM",
                                               "ForConditionalGeneration"]
    assert seen["patched"]["Fast_CrossEntropyLoss"] == ["unsloth.kernels.cross_entropy_loss"]
    assert all(seen["mapping_reaches_kernel"].values()) and "ForCausalLM" in seen["mapping_reaches_kernel"]
    assert seen["kernel_calls"] >= 1  # the tiny Qwen3.5's forward ran our kernel ...
    assert seen["loss"] == pytest.approx(seen["dft_reference"], rel=1e-5)  # ... and it computed DFT
    assert abs(seen["loss"] - seen["ce_reference"]) > 1.0
    assert seen["stock_loss_caught"] == ("--dft_route kernel: the loss of Qwen3_5ForCausalLM ('ForCausalLMLoss') "
                                         "does not reach our DFT kernel")
