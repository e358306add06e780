"""GRPO with colocated vLLM, up to the engine: what our options become in TRL 1.15's GRPOConfig, in the ``vllm.LLM``
keyword arguments TRL builds (``trl/generation/vllm_generation.py``, ``VLLMGeneration._init_vllm``), and the weight
names TRL's sync pushes into that engine. vLLM is CUDA-only: a fake ``LLM`` stands at the name TRL calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.cli import parse_args
from utils.configs.training import GRPOModelConfig, GRPOScriptArguments, LamarGRPOConfig
from utils.fileio import InputError
from utils.testing.tiny_models import build_tiny_qwen35_vl, build_tiny_tokenizer, write_tiny_tagged_csv
from utils.training import grpo
from utils.training import layout as L


class FakeLLM:
    """Records the engine arguments and every weight TRL's colocated sync loads."""

    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.loaded: list[str] = []
        runner_model = type("RunnerModel", (), {"load_weights": lambda _, weights: self.loaded.extend(
            name for name, _ in weights)})()
        runner = type("Runner", (), {"model": runner_model})()
        worker = type("Worker", (), {"model_runner": runner})()
        executor = type("Executor", (), {"driver_worker": worker})()
        self.llm_engine = type("Engine", (), {"model_executor": executor})()
        FakeLLM.instances.append(self)

    def reset_prefix_cache(self) -> None:
        pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grpo_vllm")
    rows = write_tiny_tagged_csv(root / "train.csv", n_notes=2, seed=1, mean_chars=150, mean_spans=2)
    tokenizer = build_tiny_tokenizer([r["raw_text"] for r in rows] * 3)
    return {"csv": root / "train.csv", "vl": build_tiny_qwen35_vl(root / "vl", tokenizer, num_layers=2)}


@pytest.fixture
def fake_vllm(monkeypatch):
    import trl.generation.vllm_generation as vllm_generation

    FakeLLM.instances = []
    monkeypatch.setattr(grpo, "vllm_available", lambda: True)
    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda: True)
    monkeypatch.setattr(vllm_generation, "LLM", FakeLLM, raising=False)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # TRL sets them for vLLM
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    return FakeLLM


def parse(tiny, tmp_path, *extra):
    return parse_args(GRPOScriptArguments, GRPOModelConfig, LamarGRPOConfig, argv=[
        "--model_name_or_path", str(tiny["vl"]), "--train_csv", str(tiny["csv"]), "--output_dir", str(tmp_path / "o"),
        "--use_vllm_mode", "true", "--report_to", "none", "--gradient_checkpointing", "false",
        "--dataloader_pin_memory", "false", *extra])


def test_published_context_and_memory_share_reach_grpo_config_and_the_vllm_engine(tiny, tmp_path, fake_vllm) -> None:
    script, model_args, config = parse(tiny, tmp_path, "--max_prompt_length", "10029")
    assert config.max_completion_length == 14547
    assert config.vllm_gpu_memory_utilization == 0.3 and config.vllm_max_model_length is None
    trainer = grpo.build_trainer(script, model_args, config, reward_funcs=[lambda completions, **_: [0.0] * len(
        completions)])
    assert config.use_vllm and config.vllm_mode == "colocate"
    assert trainer.args.vllm_max_model_length == 24576  # prompt 10,029 + completion 14,547
    (engine,) = fake_vllm.instances
    kwargs = engine.kwargs
    assert kwargs["max_model_len"] == 24576 and kwargs["gpu_memory_utilization"] == 0.3
    assert kwargs["distributed_executor_backend"] == "external_launcher"
    assert kwargs["max_num_seqs"] == 2 * 1 * 4  # per-device batch x TP x steps per generation (= accumulation 4)
    assert kwargs["logprobs_mode"] == "processed_logprobs"
    # vLLM builds the class the checkpoint names from the folder the policy came from: the same layout.
    assert kwargs["model"] == str(tiny["vl"])
    assert L.checkpoint_layout(kwargs["model"]) == L.model_layout(trainer.model) == L.IMAGE_TEXT_TO_TEXT

    trainer.vllm_generation.sync_weights()  # TRL's own colocated sync, into the fake engine
    base = trainer.model.get_base_model()
    expected = sorted(n.replace(".base_layer", "") for n, _ in base.named_parameters() if "lora_" not in n)
    assert sorted(engine.loaded) == expected  # every base weight, merged, under the checkpoint's own names
    assert engine.loaded and not any("lora_" in name for name in engine.loaded)
    assert L.unmappable_vllm_weights(engine.loaded, L.IMAGE_TEXT_TO_TEXT) == []
    assert any(name.startswith("model.language_model.layers.") for name in engine.loaded)


def test_without_a_prompt_limit_the_context_holds_the_longest_prompt_of_the_data(tiny, tmp_path, fake_vllm) -> None:
    """Published: every note is kept (no --max_prompt_length), so vLLM must hold the longest one, as training
    renders it (chat template, thinking switch)."""
    from transformers import AutoTokenizer

    from utils.training.data import count_prompt_tokens, grpo_records, read_training_frame

    script, model_args, config = parse(tiny, tmp_path)
    assert script.max_prompt_length is None
    trainer = grpo.build_trainer(script, model_args, config, reward_funcs=[lambda completions, **_: [0.0] * len(
        completions)])
    records = grpo_records(read_training_frame(str(tiny["csv"])), stray_quote=True)
    lengths = count_prompt_tokens(AutoTokenizer.from_pretrained(str(tiny["vl"])), [r["prompt"] for r in records], {})
    assert len(lengths) == 2 and max(lengths) > 100
    assert trainer.args.vllm_max_model_length == max(lengths) + 14547
    assert fake_vllm.instances[-1].kwargs["max_model_len"] == max(lengths) + 14547


def test_explicit_options_win_and_a_context_too_short_is_refused(tiny, tmp_path, fake_vllm) -> None:
    script, model_args, config = parse(tiny, tmp_path, "--vllm_max_model_length", "30000",
                                       "--vllm_gpu_memory_utilization", "0.45")
    grpo.build_trainer(script, model_args, config, reward_funcs=[lambda completions, **_: [0.0] * len(completions)])
    assert fake_vllm.instances[-1].kwargs["max_model_len"] == 30000
    assert fake_vllm.instances[-1].kwargs["gpu_memory_utilization"] == 0.45
    script, model_args, config = parse(tiny, tmp_path, "--vllm_max_model_length", "20000", "--max_prompt_length",
                                       "10029")
    with pytest.raises(InputError, match=r"<command line>: --vllm_max_model_length: got 20000: below "
                                         r"--max_prompt_length \+ --max_completion_length = 24576"):
        grpo.build_trainer(script, model_args, config)
    script, model_args, config = parse(tiny, tmp_path, "--vllm_max_model_length", "14600")
    with pytest.raises(InputError, match=r"<command line>: --vllm_max_model_length: got 14600: below the longest "
                                         r"prompt of .*train.csv \(\d+ tokens\) \+ --max_completion_length = \d+"):
        grpo.build_trainer(script, model_args, config)


def test_vllm_refuses_the_names_of_a_text_only_policy_from_a_multimodal_checkpoint(tiny) -> None:
    """What the project did before: AutoModelForCausalLM on the multimodal checkpoint, whose names
    (``model.layers.*``) vLLM's image-text-to-text class cannot find; the check stops it before the engine starts."""
    text_policy = L.load_generative_model(str(tiny["vl"]), layout=L.CAUSAL_LM)
    names = [name for name, _ in text_policy.named_parameters()]
    refused = L.unmappable_vllm_weights(names, L.IMAGE_TEXT_TO_TEXT)
    assert refused[0] == "model.embed_tokens.weight" and len(refused) == len(names) - 1  # all but lm_head
    assert L.unmappable_vllm_weights(names, L.CAUSAL_LM) == []  # vLLM's text class takes both prefixes
    with pytest.raises(InputError, match=r"policy weights have no counterpart in vLLM's class for this checkpoint "
                                         r"\(e\.g\. model\.embed_tokens\.weight\)"):
        grpo.check_vllm_weight_names(text_policy, str(tiny["vl"]))
    assert L.unmappable_vllm_weights(["mtp.fc.weight", "model.visual.blocks.0.mlp.weight"], L.IMAGE_TEXT_TO_TEXT) == []
