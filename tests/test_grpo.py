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
    """The documented trap: a random tiny model never emits EOS, so with masking on nothing is learned: the gradient
    is zero, and only the published weight decay (0.01, decoupled) moves the weights, by exactly lr x decay."""
    for decay in ("0.0", "0.01"):
        script, model_args, config = parse(tiny_args(tiny, tmp_path / f"masked{decay}", "--max_steps", "1",
                                                     "--save_strategy", "no", "--weight_decay", decay))
        trainer = grpo.build_trainer(script, model_args, config, reward_funcs=[length_reward])
        before = lora_state(trainer)
        trainer.train()
        after = lora_state(trainer)
        assert trainer.state.log_history[0]["completions/clipped_ratio"] == 1.0
        shrink = 1.0 - config.learning_rate * config.weight_decay
        for name in before:
            torch.testing.assert_close(after[name], before[name] * shrink, rtol=1e-6, atol=0.0)
        assert (decay == "0.0") == all(torch.equal(before[n], after[n]) for n in before)


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


def test_published_grpo_data_and_prompt_by_default_and_the_corrected_ones_by_flag(tiny, tmp_path: Path) -> None:
    from utils.prompt import build_prompt

    from utils.training.data import read_training_frame

    rows = list(read_training_frame(tiny["csv"])["raw_text"])
    published = grpo.build_trainer(*parse(tiny_args(tiny, tmp_path / "pub", "--max_steps", "1")),
                                   reward_funcs=[length_reward])
    prompts = [r["prompt"][0]["content"] for r in published.train_dataset]
    assert prompts == ['"' + build_prompt(t) for t in rows]  # the stray quote, every note kept
    assert published.chat_template_kwargs == {}  # no thinking switch: the template's own default
    assert published.args.seed == 3407 and published.generation_config.min_p is None
    decays = {g["weight_decay"] for g in published.create_optimizer().param_groups}
    assert decays == {0.01, 0.0}  # Unsloth 2026.4.3's patched GRPOConfig default; biases and norms are not decayed
    assert published.args.vllm_importance_sampling_correction is False
    corrected = grpo.build_trainer(*parse(tiny_args(
        tiny, tmp_path / "ours", "--max_steps", "1", "--prompt_stray_quote", "false", "--enable_thinking", "false",
        "--seed", "42", "--weight_decay", "0.001", "--min_p", "0.1", "--vllm_importance_sampling_correction", "true",
        "--max_prompt_length", "100000")), reward_funcs=[length_reward])
    assert [r["prompt"][0]["content"] for r in corrected.train_dataset] == [build_prompt(t) for t in rows]
    assert corrected.chat_template_kwargs == {"enable_thinking": False}
    assert corrected.args.seed == 42 and corrected.generation_config.min_p == 0.1
    assert corrected.args.weight_decay == 0.001
    assert corrected.args.vllm_importance_sampling_correction is True


def test_the_prompt_limit_counts_tokens_as_training_renders_them(tiny, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from utils.training.data import count_prompt_tokens, grpo_records, read_training_frame

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    records = grpo_records(read_training_frame(tiny["csv"]), stray_quote=True)
    off = count_prompt_tokens(tokenizer, [r["prompt"] for r in records], {"enable_thinking": False})
    on = count_prompt_tokens(tokenizer, [r["prompt"] for r in records], {"enable_thinking": True})
    assert all(a > b for a, b in zip(off, on))  # "<think>\n\n</think>\n\n" vs "<think>\n"
    limit = max(on)  # every prompt fits with thinking on, not with it off
    assert len(grpo.drop_long_prompts(records, tokenizer, limit, {"enable_thinking": True})) == len(records)
    assert len(grpo.drop_long_prompts(records, tokenizer, limit, {"enable_thinking": False})) < len(records)


def test_without_a_thinking_switch_qwen35_4b_opens_a_think_block(tiny) -> None:
    """What --enable_thinking template means for the real model: Qwen3.5-4B ships TRL's qwen3_5_think template."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen3_5_think_chat_template

    from utils.prompt import build_messages

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    tokenizer.chat_template = qwen3_5_think_chat_template
    messages = build_messages("Start aspirin.", stray_quote=True)
    published = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert '<|im_start|>user\n"You are an expert' in published
    assert published.endswith("Start aspirin.<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert off.endswith("Start aspirin.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_the_seed_decides_which_notes_the_first_step_sees(tmp_path: Path) -> None:
    """Published seed 3407 (Unsloth's patched GRPOConfig) vs 42 (TRL's): TRL's sampler orders the 350 synthetic train notes differently."""
    from trl.trainer.grpo_trainer import RepeatSampler

    def first_step(seed: int) -> list[int]:
        sampler = RepeatSampler(list(range(350)), mini_repeat_count=8, batch_size=1, repeat_count=8, shuffle=True,
                                seed=seed)
        return list(dict.fromkeys(list(sampler)[:64]))  # one step: batch 2 x accumulation 4 x 8 generations = 1 note each

    assert first_step(42) == first_step(42) and first_step(42) != first_step(3407)


class RolloutRecorder:
    """Test-only reward that keeps every completion with its note (and gives the group spread)."""

    __name__ = "rollout_recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, completions, raw_text, **kwargs) -> list[float]:
        texts = [c[-1]["content"] for c in completions]
        self.seen += list(zip(texts, raw_text))
        return [len(t) / 100 for t in texts]


@pytest.mark.slow
def test_copy_constrained_rollouts_are_tagged_copies_of_their_notes(tiny, tmp_path: Path) -> None:
    """--rollout_copy_constraint: every sampled completion, tags stripped, is the start of its own note; the same
    untrained model sampling freely writes other text."""
    from utils.tagging.tags import strip_tags

    seen = {}
    for flag in ("true", "false"):
        script, model_args, config = parse(tiny_args(tiny, tmp_path / flag, "--max_steps", "2", "--save_strategy",
                                                     "no", "--mask_truncated_completions", "false",
                                                     "--max_completion_length", "24",
                                                     "--rollout_copy_constraint", flag))
        recorder = RolloutRecorder()
        trainer = grpo.build_trainer(script, model_args, config, reward_funcs=[recorder])
        before = lora_state(trainer)
        trainer.train()
        assert any(not torch.equal(before[n], v) for n, v in lora_state(trainer).items() if "lora_B" in n)
        assert len(recorder.seen) == 8  # 2 steps x 4 rollouts
        seen[flag] = [(strip_tags(text), note) for text, note in recorder.seen]
    assert all(text and note.startswith(text) for text, note in seen["true"]), seen["true"]
    assert not all(note.startswith(text) for text, note in seen["false"])


def test_copy_constrained_rollouts_refuse_vllm_generation(tiny, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(grpo, "vllm_available", lambda: True)
    script, model_args, config = parse(tiny_args(tiny, tmp_path / "v", "--use_vllm_mode", "true",
                                                 "--rollout_copy_constraint", "true"))
    with pytest.raises(grpo.InputError,
                       match="<command line>: --rollout_copy_constraint: samples with transformers generate only"):
        grpo.build_trainer(script, model_args, config)


def test_rollout_guards_are_those_of_the_demos_copy_decoded_inference() -> None:
    """Rollouts are drawn from the decoder the models are scored with: the guards the demo's inference flags give."""
    from utils.configs.pipeline import InferenceArguments
    from utils.demo import COPY_FLAGS
    from utils.generation.runner import copy_guards
    from utils.training.copy_rollouts import ROLLOUT_GUARDS

    (args,) = parse_args(InferenceArguments, argv=list(COPY_FLAGS))
    assert copy_guards(args) == ROLLOUT_GUARDS
