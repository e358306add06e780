"""One colocated GRPO step whose rollouts see the updated weights (TRL 1.15 + vLLM 0.31, tiny multimodal Qwen3.5)."""

from __future__ import annotations

import json

import pytest

from utils.testing.gpu_checks import missing_distribution, record, report, run_script

pytestmark = pytest.mark.gpu


def test_step_two_rollouts_come_from_the_step_one_weights(tiny) -> None:
    if reason := missing_distribution("vllm"):
        pytest.skip(reason)
    out = tiny["root"] / "grpo"
    result_path = tiny["root"] / "grpo_result.json"
    args = ["tests/gpu/grpo_sync_driver.py", str(result_path), "--model_name_or_path", str(tiny["model"]),
            "--train_csv", str(tiny["csv"]), "--output_dir", str(out), "--use_vllm_mode", "true", "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--num_generations", "2",
            "--max_completion_length", "32", "--max_prompt_length", "4096", "--learning_rate", "5e-2",
            "--mask_truncated_completions", "false", "--vllm_gpu_memory_utilization", "0.2", "--report_to", "none",
            "--save_strategy", "no", "--logging_steps", "1", "--rewards", "fidelity"]
    run, seconds = run_script(args, tiny["root"] / "grpo.log", timeout=480)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["use_vllm"] and result["vllm_max_model_length"] == 4096 + 32
    first, second = result["probe"]
    assert first["global_step"] == 0 and second["global_step"] == 1
    assert first["policy_vs_base"] == 0.0 and first["vllm_vs_policy"] <= 1e-6  # a new LoRA starts at B = 0
    assert second["policy_vs_base"] > 1e-3  # step 1 moved the weight ...
    assert second["vllm_vs_policy"] <= 0.1 * second["policy_vs_base"]  # ... and vLLM generated step 2 with it
    record(report("GRPO, 2 colocated steps (vLLM), tiny model", [
        ("process wall time", f"{seconds:.1f} s (setup {result['setup_seconds']:.1f} s, train "
                              f"{result['train_seconds']:.1f} s)"),
        ("generated tokens/s", f"{result['generated_tokens'] / result['train_seconds']:.1f} (incl. training)"),
        ("peak memory (training side)", f"{result['peak_bytes'] / 2**30:.2f} GiB"),
        ("probe o_proj, step 2", f"|vLLM - policy| {second['vllm_vs_policy']:.2e}, |policy - base| "
                                 f"{second['policy_vs_base']:.2e}"),
        ("sampling logp difference", str([e.get("sampling/sampling_logp_difference/mean") for e in result["logs"]])),
    ]))
