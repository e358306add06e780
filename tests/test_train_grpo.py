"""GRPO (Model 2) on the tiny model: published config, two real steps that move the new LoRA, resume, merge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from scripts import train_grpo
from utils.cli import parse_args
from utils.configs.training import GRPOModelConfig, GRPOScriptArguments, LamarGRPOConfig
from utils.rewards import reward_functions
from utils.training import grpo
from utils.training.models import merge_adapter, peft_config
from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer, write_tiny_tagged_csv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_grpo")
    rows = write_tiny_tagged_csv(root / "train.csv", n_notes=2, seed=1, mean_chars=150, mean_spans=2)
    tokenizer = build_tiny_tokenizer([r["raw_text"] for r in rows] * 3)
    return {"csv": root / "train.csv", "model": build_tiny_qwen35(root / "model", tokenizer, num_layers=1)}


def length_reward(completions, **kwargs) -> list[float]:
    """Test-only reward with spread: random tiny-model text gets 0 from all three published rewards."""
    return [len(c[-1]["content"]) / 100 for c in completions]


def tiny_args(tiny, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(tiny["model"]), "--train_csv", str(tiny["csv"]), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--num_generations", "4",
            "--max_completion_length", "8", "--report_to", "none", "--learning_rate", "1e-2",
            "--dataloader_pin_memory", "false", "--gradient_checkpointing", "false", *extra]


def lora_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def parse(argv):
    return parse_args(GRPOScriptArguments, GRPOModelConfig, LamarGRPOConfig, argv=argv)


def test_the_recipe_is_an_overlay_of_the_published_defaults() -> None:
    defaults = parse([])
    script, model_args, config = parse(["--config", "recipes/model2_grpo.yaml"])
    assert (script, model_args) == defaults[:2]
    assert config.to_dict() == defaults[2].to_dict()  # the recipe only names the defaults' data and output paths


@pytest.mark.slow
def test_two_grpo_steps_change_the_new_lora_and_clear_rope_deltas(tiny, tmp_path: Path) -> None:
    script, model_args, config = parse(tiny_args(tiny, tmp_path / "run", "--max_steps", "2",
                                                 "--mask_truncated_completions", "false", "--save_steps", "1"))
    trainer = grpo.build_trainer(script, model_args, config,
                                 reward_funcs=[*reward_functions(script.rewards), length_reward])
    assert config.use_vllm is False  # no GPU here
    planted = trainer.model.base_model.model.model
    planted.rope_deltas = torch.tensor([[5]])  # as if left over from an earlier generate()
    trainer._rope_modules.append(planted)
    before = lora_state(trainer)
    assert before and all("lora_" in name for name in before)
    start = time.perf_counter()
    trainer.train()
    print(f"2 tiny GRPO steps: {time.perf_counter() - start:.2f} s")
    after = lora_state(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert planted.rope_deltas is None
    history = [e for e in trainer.state.log_history if "rewards/fidelity_reward/mean" in e]
    assert len(history) == 2 and history[0]["frac_reward_zero_std"] == 0.0
    assert (tmp_path / "run" / "checkpoint-2").is_dir()


@pytest.mark.slow
def test_masked_truncated_completions_give_no_update_without_eos(tiny, tmp_path: Path) -> None:
    """The documented trap: a random tiny model never emits EOS, so with masking on nothing is learned."""
    script, model_args, config = parse(tiny_args(tiny, tmp_path / "masked", "--max_steps", "1",
                                                 "--save_strategy", "no"))
    trainer = grpo.build_trainer(script, model_args, config, reward_funcs=[length_reward])
    before = lora_state(trainer)
    trainer.train()
    after = lora_state(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert trainer.state.log_history[0]["completions/clipped_ratio"] == 1.0


@pytest.mark.slow
def test_cli_saves_adapter_and_config_and_resumes(tiny, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    base = tiny_args(tiny, out, "--mask_truncated_completions", "false", "--save_steps", "1",
                     "--rewards", "fidelity", "token_f1")
    assert train_grpo.main([*base, "--max_steps", "1"]) == 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "run_config.yaml").is_file()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["lora_alpha"] == 2
    assert train_grpo.main([*base, "--max_steps", "2"]) == 0
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    final = json.loads((out / "trainer_state.json").read_text())  # beside the adapter: rewards per step for plots
    assert [e["step"] for e in final["log_history"] if "rewards/fidelity_reward/mean" in e] == [1, 2]


def test_adapter_is_merged_once_into_the_start_model(tiny, tmp_path: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["model"]),
                           peft_config(GRPOModelConfig(lora_r=4, lora_alpha=8)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    model.save_pretrained(tmp_path / "adapter")
    merged = merge_adapter(str(tiny["model"]), str(tmp_path / "adapter"), tmp_path / "merged",
                                      torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(merged)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    stamp = (merged / "config.json").stat().st_mtime_ns
    assert merge_adapter(str(tiny["model"]), "unused", tmp_path / "merged", torch.float32) == merged
    assert (merged / "config.json").stat().st_mtime_ns == stamp


def test_long_prompts_are_left_out_and_all_too_long_is_an_error(tiny, tmp_path: Path, capsys) -> None:
    code = train_grpo.main(tiny_args(tiny, tmp_path / "long", "--max_prompt_length", "10", "--max_steps", "1"))
    assert code == 2
    assert "every prompt is longer; nothing to train on" in capsys.readouterr().err
