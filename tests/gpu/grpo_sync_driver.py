"""Two colocated GRPO steps (vLLM) on the tiny model, probing that step 2's rollouts use the step-1 weights.

    python tests/gpu/grpo_sync_driver.py RESULT.json <scripts/train_grpo.py flags>

Run by tests/gpu/test_grpo_gpu.py in its own process (vLLM's distributed state). Builds the trainer exactly as
scripts/train_grpo.py does (``utils.training.grpo.build_trainer``), with one extra, test-only reward whose values
differ between random completions (the published rewards give a random tiny model 0 everywhere, so no update). Just
before each optimiser step, after that step's rollouts, it reads one LoRA-adapted weight from the vLLM engine (the
tensor TRL's weight sync writes) and the policy's merged value of that weight.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

PROBE = "model.language_model.layers.3.self_attn.o_proj"  # a full-attention layer's o_proj: not packed in vLLM


def varied_reward(completions, **kwargs) -> list[float]:
    """Test-only: differs between random completions, so advantages are non-zero."""
    return [sum(map(ord, c[-1]["content"])) % 97 / 97 for c in completions]


class SyncProbe(TrainerCallback):
    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.rows: list[dict] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        from utils.testing.gpu_checks import merged_lora_weight, vllm_weight
        from utils.training.layout import IMAGE_TEXT_TO_TEXT, vllm_weight_name

        llm = self.trainer.vllm_generation.llm
        in_vllm = vllm_weight(llm, vllm_weight_name(PROBE + ".weight", IMAGE_TEXT_TO_TEXT)).float().cpu()
        module = self.trainer.model.get_submodule("base_model.model." + PROBE)
        merged = merged_lora_weight(self.trainer.model, "base_model.model." + PROBE).float().cpu()
        base = module.base_layer.weight.detach().float().cpu()
        self.rows.append({"global_step": state.global_step,
                          "vllm_vs_policy": float((in_vllm - merged).abs().max()),
                          "vllm_vs_base": float((in_vllm - base).abs().max()),
                          "policy_vs_base": float((merged - base).abs().max())})


def main() -> int:
    from utils.cli import parse_args
    from utils.configs.training import GRPOModelConfig, GRPOScriptArguments, LamarGRPOConfig
    from utils.rewards import reward_functions
    from utils.training import grpo

    result_path, argv = sys.argv[1], sys.argv[2:]
    script, model_args, config = parse_args(GRPOScriptArguments, GRPOModelConfig, LamarGRPOConfig, argv=argv)
    start = time.perf_counter()
    trainer = grpo.build_trainer(script, model_args, config,
                                 reward_funcs=[*reward_functions(script.rewards), varied_reward])
    setup = time.perf_counter() - start
    probe = SyncProbe(trainer)
    trainer.add_callback(probe)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [e for e in trainer.state.log_history if "loss" in e]
    generated = sum(e.get("completions/mean_length", 0) * config.per_device_train_batch_size for e in logs)
    pathlib.Path(result_path).write_text(json.dumps({
        "probe": probe.rows, "logs": logs, "use_vllm": config.use_vllm,
        "vllm_max_model_length": config.vllm_max_model_length, "setup_seconds": setup, "train_seconds": seconds,
        "generated_tokens": generated, "peak_bytes": torch.cuda.max_memory_allocated(),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
