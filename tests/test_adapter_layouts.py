"""Adapters never get lost between the two Qwen3.5 layouts: merged weights move by exactly B @ A * scaling.

A tiny ``Qwen3_5ForConditionalGeneration`` (the published checkpoint's layout, one-block vision tower) is built
locally; an adapter is made in each layout (the checkpoint loaded as ``Qwen3_5ForCausalLM``, keys
``model.layers.*``, and as the image-text-to-text class, keys ``model.language_model.layers.*``) with seeded random
A and B, and each is merged into each layout. PEFT alone (seen on CPU with transformers 5.17 + peft 0.21.2) would
load the crossed cases with a warning and merge nothing.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from utils.configs.training import DFTModelConfig
from utils.fileio import InputError
from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_qwen35_vl, build_tiny_tokenizer
from utils.training import layout as L
from utils.training.models import merge_adapter, peft_config

R, ALPHA = 4, 8
SCALING = ALPHA / math.sqrt(R)  # rsLoRA, as published


def make_adapter(checkpoint: Path, layout: str, out: Path, seed: int) -> Path:
    """A LoRA adapter (the published targets, rsLoRA) on ``checkpoint`` loaded in ``layout``, A and B seeded."""
    from peft import get_peft_model

    model = L.load_generative_model(str(checkpoint), layout=layout, dtype=torch.float32)
    peft_model = get_peft_model(model, peft_config(DFTModelConfig(lora_r=R, lora_alpha=ALPHA)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(out))
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    tokenizer = build_tiny_tokenizer(["a short note about a patient"] * 3, vocab_size=400)
    checkpoint = build_tiny_qwen35_vl(root / "vl", tokenizer, num_layers=2)
    return {
        "root": root,
        "vl": checkpoint,
        "text": build_tiny_qwen35(root / "text", tokenizer, num_layers=2),
        L.CAUSAL_LM: make_adapter(checkpoint, L.CAUSAL_LM, root / "adapter_causal", seed=1),
        L.IMAGE_TEXT_TO_TEXT: make_adapter(checkpoint, L.IMAGE_TEXT_TO_TEXT, root / "adapter_vl", seed=2),
    }


def test_layouts_are_read_from_checkpoints_models_and_adapter_keys(models) -> None:
    assert L.checkpoint_layout(str(models["vl"])) == L.IMAGE_TEXT_TO_TEXT
    assert L.checkpoint_layout(str(models["text"])) == L.CAUSAL_LM
    for layout in L.LAYOUTS:
        keys = tensors(models[layout] / L.ADAPTER_WEIGHTS)
        assert L.adapter_layout(keys) == layout
        prefix = "base_model.model." + L.LAYER_PREFIX[layout]
        assert all(key.startswith(prefix) for key in keys), sorted(keys)[:2]
    assert L.adapter_layout(["base_model.model.lm_head.lora_A.weight"]) is None
    # The hf backend now loads what the checkpoint names, as Unsloth and vLLM do.
    from utils.training.models import load_causal_lm

    model, _ = load_causal_lm(DFTModelConfig(model_name_or_path=str(models["vl"])))
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration" and L.model_layout(model) == L.IMAGE_TEXT_TO_TEXT


def test_key_mapping_renames_layer_names_only() -> None:
    to_text = L.key_mapping(L.IMAGE_TEXT_TO_TEXT, L.CAUSAL_LM)
    to_vl = L.key_mapping(L.CAUSAL_LM, L.IMAGE_TEXT_TO_TEXT)
    key = "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight"
    assert L.map_key(key, to_vl) == "base_model.model.model.language_model.layers.3.mlp.up_proj.lora_B.weight"
    assert L.map_key(L.map_key(key, to_vl), to_text) == key
    assert L.map_key("base_model.model.lm_head.lora_A.weight", to_vl) == "base_model.model.lm_head.lora_A.weight"
    assert L.key_mapping(L.CAUSAL_LM, L.CAUSAL_LM) is None and L.key_mapping(None, L.CAUSAL_LM) is None
    assert L.model_state_key("x.q_proj.lora_A.weight", "default") == "x.q_proj.lora_A.default.weight"
    assert L.model_state_key("x.embed.lora_embedding_B", "a") == "x.embed.lora_embedding_B.a"


def _module_deltas(adapter: Path, layout: str) -> dict[str, torch.Tensor]:
    """Expected weight change per base weight name of ``layout``: B @ A * scaling."""
    weights = tensors(adapter / L.ADAPTER_WEIGHTS)
    mapping = L.key_mapping(L.adapter_layout(weights), layout)
    deltas = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        module = L.map_key(key, mapping).removeprefix(L.PEFT_PREFIX).replace(".lora_A.weight", ".weight")
        deltas[module] = b @ a * SCALING
    return deltas


@pytest.mark.parametrize("adapter_layout", L.LAYOUTS)
@pytest.mark.parametrize("target", L.LAYOUTS)
def test_merge_changes_each_target_module_by_exactly_the_adapter_delta(models, tmp_path, adapter_layout,
                                                                        target) -> None:
    out = merge_adapter(str(models["vl"]), str(models[adapter_layout]), tmp_path / "merged", torch.float32,
                        model_class=target)
    merged = dict(L.load_generative_model(str(out), layout=target, dtype=torch.float32).named_parameters())
    base = dict(L.load_generative_model(str(models["vl"]), layout=target, dtype=torch.float32).named_parameters())
    deltas = _module_deltas(models[adapter_layout], target)
    assert len(deltas) == 15  # linear-attention layer: 5 + 3 MLP projections; full-attention layer: 4 + 3
    assert set(merged) == set(base) and set(deltas) <= set(base)
    for name, weight in base.items():
        if name in deltas:
            torch.testing.assert_close(merged[name] - weight, deltas[name], rtol=1e-4, atol=1e-5)
            assert deltas[name].abs().max() > 0.1  # a real change, not a no-op merge
        else:
            assert torch.equal(merged[name], weight), name
    assert not list(tmp_path.glob(".merged.*"))  # the temporary folder was renamed into place


def test_a_missing_or_unmatched_adapter_key_is_one_line_naming_the_adapter(models, tmp_path) -> None:
    import shutil

    source = models[L.CAUSAL_LM]
    weights = tensors(source / L.ADAPTER_WEIGHTS)
    dropped = sorted(k for k in weights if ".lora_B." in k)[0]
    for name, edit, message in (
        ("missing", lambda w: w.pop(dropped), r"1 LoRA weights of Qwen3_5ForCausalLM have no tensor in the adapter "
                                              r"\(e\.g\. base_model\.model\.model\.layers\.\d\..*lora_B\.default\.weight\)"),
        ("unmatched", lambda w: w.update({"base_model.model.model.layers.9.mlp.up_proj.lora_A.weight":
                                          torch.zeros(R, 64)}),
         r"1 of 31 adapter tensors match no module of Qwen3_5ForCausalLM \(e\.g\. base_model\.model\.model\.layers\.9"),
    ):
        folder = tmp_path / name
        shutil.copytree(source, folder)
        changed = dict(weights)
        edit(changed)
        save_file(changed, str(folder / L.ADAPTER_WEIGHTS))
        model = L.load_generative_model(str(models["text"]), dtype=torch.float32)
        with pytest.raises(InputError, match=message) as caught:
            L.load_adapter(model, str(folder))
        assert str(caught.value).startswith(f"{folder}: ") and "\n" not in str(caught.value)
        out = tmp_path / f"merged_{name}"
        with pytest.raises(InputError):
            merge_adapter(str(models["text"]), str(folder), out, torch.float32)
        assert not out.exists() and not list(tmp_path.glob(f".merged_{name}.*"))  # all or nothing


def test_merge_replaces_only_a_model_folder_and_keeps_a_finished_one(models, tmp_path) -> None:
    out = merge_adapter(str(models["text"]), str(models[L.CAUSAL_LM]), tmp_path / "m", torch.float32)
    stamp = (out / "config.json").stat().st_mtime_ns
    assert merge_adapter(str(models["text"]), "unused", out, torch.float32) == out  # kept, not redone
    assert (out / "config.json").stat().st_mtime_ns == stamp
    (out / "stale-shard.safetensors").write_bytes(b"x")
    merge_adapter(str(models["text"]), str(models[L.CAUSAL_LM]), out, torch.float32, overwrite=True)
    assert not (out / "stale-shard.safetensors").exists()  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    other = tmp_path / "notes"
    (other / "sub").mkdir(parents=True)
    (other / "val.csv").write_text("file_id\n1\n")
    with pytest.raises(InputError, match="exists and is not a saved model folder; refusing to replace it"):
        merge_adapter(str(models["text"]), str(models[L.CAUSAL_LM]), other, torch.float32, overwrite=True)
    assert (other / "val.csv").is_file()


def test_vllm_gets_an_adapter_in_the_layout_its_class_maps(models, tmp_path) -> None:
    vl, text = str(models["vl"]), str(models["text"])
    causal, image = str(models[L.CAUSAL_LM]), str(models[L.IMAGE_TEXT_TO_TEXT])
    assert L.adapter_for_vllm(image, vl) == image
    assert L.adapter_for_vllm(causal, text) == causal and L.adapter_for_vllm(image, text) == image
    converted = Path(L.adapter_for_vllm(causal, vl, tmp_path / "for_vllm"))
    assert converted == tmp_path / "for_vllm"
    original, renamed = tensors(models[L.CAUSAL_LM] / L.ADAPTER_WEIGHTS), tensors(converted / L.ADAPTER_WEIGHTS)
    assert L.adapter_layout(renamed) == L.IMAGE_TEXT_TO_TEXT and len(renamed) == len(original)
    for key, value in original.items():
        assert torch.equal(renamed[re.sub(r"^base_model\.model\.model\.", "base_model.model.model.language_model.",
                                          key)], value)
    assert (converted / L.ADAPTER_CONFIG).read_bytes() == (models[L.CAUSAL_LM] / L.ADAPTER_CONFIG).read_bytes()


def test_the_transformers_generator_applies_an_adapter_of_the_other_layout(models, tmp_path) -> None:
    from utils.generation.backends import TransformersGenerator

    gen = TransformersGenerator(str(models["vl"]), adapter=str(models[L.CAUSAL_LM]), dtype="float32")
    assert type(gen.model).__name__ == "Qwen3_5ForConditionalGeneration"
    base = dict(L.load_generative_model(str(models["vl"]), dtype=torch.float32).named_parameters())
    params = dict(gen.model.named_parameters())
    for name, delta in _module_deltas(models[L.CAUSAL_LM], L.IMAGE_TEXT_TO_TEXT).items():
        torch.testing.assert_close(params[name] - base[name], delta, rtol=1e-4, atol=1e-5)
