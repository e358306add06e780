"""Two DFT steps on each backend and route, through the command users run, with the loss guard passing."""

from __future__ import annotations

import pytest

from utils.testing.gpu_checks import record, report

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["hf", "unsloth", "unsloth_kernel"])
def test_two_dft_steps_pass_the_guard(dft_run, name) -> None:
    run = dft_run(name)
    assert run["returncode"] == 0, f"see {run['log']}:\n{run['stderr']}"
    record_ = run["record"]
    guard = record_["loss_guard"]
    assert guard["reported"] == pytest.approx(guard["dft"], rel=1e-2)
    assert guard["nll"] > 1.5 * guard["dft"]
    assert (run["out"] / "adapter_model.safetensors").is_file()
    assert record_["script"]["dft_route"] == ("kernel" if name == "unsloth_kernel" else "fused")
    record(report(f"DFT, 2 steps, backend {name}", [
        ("wall time (process)", f"{run['seconds']:.1f} s"),
        ("first step", f"reported {guard['reported']:.6g}, DFT {guard['dft']:.6g}, NLL {guard['nll']:.6g}"),
        ("normalisation", guard["normalisation"]),
    ]))
