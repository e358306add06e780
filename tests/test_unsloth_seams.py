"""The Unsloth backend's seams, on CPU, with stand-ins where the real Unsloth cannot be imported.

Unsloth 2026.10.9 does not import without a GPU, so these tests plant fakes at exactly the names our code uses:
the ``unsloth`` package (import order, recorded by a planted package in a child process), ``FastModel`` (what the
trainer builder passes and in which order it patches), ``trl.SFTTrainer`` as Unsloth rebinds it, and
``unsloth.kernels.cross_entropy_loss`` for the kernel route. The GPU suite (tests/gpu) runs the real thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from utils.paths import REPO_ROOT
from utils.training import backend

FAKE_UNSLOTH = """
import json, os, sys
with open(os.environ["LAMAR_FAKE_UNSLOTH_RECORD"], "w") as handle:
    json.dump(sorted(m for m in ("trl", "transformers", "peft") if m in sys.modules), handle)
"""


def plant_fake_unsloth(site: Path, body: str = FAKE_UNSLOTH) -> Path:
    """A regular ``unsloth`` package with distribution metadata (what ``unsloth_installed`` looks for)."""
    (site / "unsloth").mkdir(parents=True)
    (site / "unsloth" / "__init__.py").write_text(body)
    meta = site / "unsloth-2026.10.9.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: unsloth\nVersion: 2026.10.9\n")
    return site


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "unsloth"),
    (["--backend", "hf"], "hf"),
    (["--backend=hf"], "hf"),
    (["--backend", "hf", "--backend", "unsloth"], "unsloth"),  # the last flag wins, as in argparse
    (["--config", "recipes/model1_dft.yaml"], "unsloth"),
    (["--config", "RECIPE_HF"], "hf"),
    (["--config", "RECIPE_HF", "--backend", "unsloth"], "unsloth"),  # a flag wins over the recipe
    (["--config", "/no/such/recipe.yaml"], "unsloth"),  # unreadable: the default; the parser reports it later
])
def test_the_backend_is_read_without_importing_the_parser(argv, expected, tmp_path) -> None:
    recipe = tmp_path / "hf.yaml"
    recipe.write_text("backend: hf\nlearning_rate: 1.0e-4\n")
    argv = [str(recipe) if a == "RECIPE_HF" else a for a in argv]
    assert backend.requested_backend(argv) == expected


def test_the_backend_module_imports_no_training_library() -> None:
    code = ("import sys; import utils.training.backend, scripts.train_dft; "
            "print(sorted(m for m in ('trl', 'transformers', 'peft', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "imported"), [
    ([], True),  # the default backend: unsloth
    (["--config", "recipes/model1_dft.yaml"], True),  # the published recipe
    (["--backend", "hf", "--max_steps", "0"], False),
])
def test_train_dft_imports_unsloth_before_trl_transformers_and_peft(tmp_path, extra, imported) -> None:
    site = plant_fake_unsloth(tmp_path / "site")
    record = tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": str(site), "LAMAR_FAKE_UNSLOTH_RECORD": str(record)}
    argv = [sys.executable, "scripts/train_dft.py", *extra, "--model_name_or_path", str(tmp_path / "no_model"),
            "--train_csv", str(tmp_path / "no.csv"), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]  # stops later at its one-line input error
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    if imported:
        assert json.loads(record.read_text()) == []  # nothing of trl / transformers / peft was loaded before it
    else:
        assert not record.exists()


def test_a_late_unsloth_import_is_refused(tmp_path, monkeypatch) -> None:
    import peft  # noqa: F401  (imported before Unsloth: now it comes too late)
    import transformers  # noqa: F401
    import trl  # noqa: F401

    site = plant_fake_unsloth(tmp_path / "site", body="")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(backend, "_STATE", None)
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    try:
        with pytest.raises(backend.UnslothImportOrderError, match="unsloth was imported after trl, transformers, peft"):
            backend.ensure_unsloth_first()
    finally:
        sys.modules.pop("unsloth", None)


def test_an_unsloth_that_fails_to_import_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from scripts import train_dft
    from utils.training import sft

    site = plant_fake_unsloth(tmp_path / "site", body="raise NotImplementedError('Unsloth cannot find any torch "
                                                       "accelerator')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(backend, "_STATE", None)
    monkeypatch.setattr(backend, "CRITICAL_MODULES", ())  # judge the failure, not the order, here
    monkeypatch.setattr(sft, "cuda_available", lambda: True)
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    csv = tmp_path / "train.csv"
    from utils.testing.tiny_models import write_tiny_tagged_csv

    write_tiny_tagged_csv(csv, n_notes=1)
    assert train_dft.main(["--train_csv", str(csv), "--output_dir", str(tmp_path / "o"), "--model_name_or_path",
                           str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: <command line>: --backend: got 'unsloth': Unsloth cannot be imported (NotImplementedError: Unsloth "
        "cannot find any torch accelerator)")


# --- the trainer builder with a fake Unsloth -------------------------------------------------------------------


def _fake_patch_loss_functions(monkeypatch):
    """unsloth_zoo.loss_utils.patch_loss_functions as 2026.10.9 behaves: every entry of transformers' LOSS_MAPPING
    that still holds the stock causal-LM loss becomes a closure over the given loss (the real code is exercised in
    tests/test_unsloth_loss_route.py); the mapping's entries are restored after the test."""
    import transformers.loss.loss_utils as loss_utils

    def patch_loss_functions(loss_fn, torch_compile=True):
        def UnslothForCausalLMLoss(*args, **kwargs):
            return loss_fn(*args, **kwargs)

        for key, fn in list(loss_utils.LOSS_MAPPING.items()):
            if fn is loss_utils.ForCausalLMLoss:
                monkeypatch.setitem(loss_utils.LOSS_MAPPING, key, UnslothForCausalLMLoss)

    for key, fn in list(loss_utils.LOSS_MAPPING.items()):
        monkeypatch.setitem(loss_utils.LOSS_MAPPING, key, fn)  # restored after the test, whatever replaces it
    return patch_loss_functions


@pytest.fixture
def fake_unsloth(tmp_path, monkeypatch):
    """Fake ``unsloth`` (FastModel, kernels.cross_entropy_loss) and ``trl.SFTTrainer`` rebound as Unsloth does."""
    import trl
    from peft import LoraConfig, get_peft_model

    from utils.testing.tiny_models import build_tiny_qwen35_vl, build_tiny_tokenizer, write_tiny_tagged_csv
    from utils.training import sft
    from utils.training.layout import load_generative_model

    rows = write_tiny_tagged_csv(tmp_path / "train.csv", n_notes=2, mean_chars=150, mean_spans=2)
    tokenizer = build_tiny_tokenizer([r["raw_text"] for r in rows] * 3)
    model_dir = build_tiny_qwen35_vl(tmp_path / "vl", tokenizer, num_layers=1)
    calls: list[tuple[str, dict]] = []

    def original_loss(*args, **kwargs):
        raise AssertionError("Unsloth's own kernel must not run on the kernel route")

    ce = types.ModuleType("unsloth.kernels.cross_entropy_loss")
    ce.fast_cross_entropy_loss = original_loss
    ce.Fast_CrossEntropyLoss = type("Fast_CrossEntropyLoss", (), {"apply": staticmethod(original_loss)})

    class FastModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls.append(("from_pretrained", {**kwargs, "UNSLOTH_RETURN_LOGITS": os.environ.get("UNSLOTH_RETURN_LOGITS"),
                                              "kernel_installed": ce.fast_cross_entropy_loss is not original_loss}))
            from transformers import AutoTokenizer

            processor = types.SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(model_dir))
            return load_generative_model(kwargs["model_name"]), processor  # a VLM comes with a processor

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls.append(("get_peft_model", kwargs))
            config = LoraConfig(r=kwargs["r"], lora_alpha=kwargs["lora_alpha"], use_rslora=kwargs["use_rslora"],
                                target_modules=r".*language_model.*\.(q_proj|v_proj)$")
            return get_peft_model(model, config)

    package = types.ModuleType("unsloth")
    package.FastModel = FastModel
    kernels = types.ModuleType("unsloth.kernels")
    zoo, zoo_loss = types.ModuleType("unsloth_zoo"), types.ModuleType("unsloth_zoo.loss_utils")
    zoo_loss.patch_loss_functions = _fake_patch_loss_functions(monkeypatch)
    for module in (package, kernels, ce, zoo, zoo_loss):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    unsloth_trainer = type("UnslothSFTTrainer", (trl.SFTTrainer,), {})
    monkeypatch.setattr(trl, "SFTTrainer", unsloth_trainer)
    monkeypatch.setattr(sft, "cuda_available", lambda: True)
    monkeypatch.setattr(sft, "unsloth_installed", lambda: True)
    monkeypatch.setattr(backend, "_STATE", backend.UnslothImport(True, ()))
    monkeypatch.delenv("UNSLOTH_RETURN_LOGITS", raising=False)
    return {"model": model_dir, "csv": tmp_path / "train.csv", "calls": calls, "ce": ce, "root": tmp_path,
            "trainer": unsloth_trainer}


def _parse(fake, *extra):
    from utils.cli import parse_args
    from utils.configs.training import DFTConfig, DFTModelConfig, DFTScriptArguments

    return parse_args(DFTScriptArguments, DFTModelConfig, DFTConfig, argv=[
        "--model_name_or_path", str(fake["model"]), "--train_csv", str(fake["csv"]), "--output_dir",
        str(fake["root"] / "out"), "--report_to", "none", "--max_steps", "1", "--gradient_accumulation_steps", "2",
        "--gradient_checkpointing", "false", "--max_length", "2048", "--lora_r", "4", "--lora_alpha", "8", *extra])


def test_fused_route_trains_dft_on_unsloths_trainer_and_the_guard_passes(fake_unsloth) -> None:
    from utils.training import sft

    script, model_args, config = _parse(fake_unsloth)
    trainer = sft.build_trainer(script, model_args, config)
    assert isinstance(trainer, fake_unsloth["trainer"]) and isinstance(trainer, sft.LossGuardMixin)
    assert config.loss_type == "dft"  # Unsloth's own DFT branch on the fused head
    (name, loaded), (_, peft_kwargs) = fake_unsloth["calls"]
    assert name == "from_pretrained" and loaded["UNSLOTH_RETURN_LOGITS"] is None and not loaded["kernel_installed"]
    assert loaded["max_seq_length"] == 2048 and loaded["full_finetuning"] is False
    assert peft_kwargs["r"] == 4 and peft_kwargs["use_rslora"] is True and peft_kwargs["finetune_vision_layers"] is False
    assert not any(isinstance(c, sft.KernelCallGuard) for c in trainer.callback_handler.callbacks)
    trainer.train()
    assert trainer.guard_result["reported"] == pytest.approx(trainer.guard_result["dft"], rel=1e-4)
    assert trainer.guard_result["normalisation"] == "mean of micro-batch means"  # the multimodal class


def test_kernel_route_sets_full_logits_and_installs_the_kernel_before_the_model_is_built(fake_unsloth) -> None:
    from utils.training import sft

    script, model_args, config = _parse(fake_unsloth, "--dft_route", "kernel")
    trainer = sft.build_trainer(script, model_args, config)
    loaded = fake_unsloth["calls"][0][1]
    assert loaded["UNSLOTH_RETURN_LOGITS"] == "1" and loaded["kernel_installed"]  # both before from_pretrained
    assert config.loss_type == "nll"  # so the model's own loss function, i.e. our kernel, computes the loss
    kernel = sys.modules[sft.KERNEL_MODULE]
    assert fake_unsloth["ce"].fast_cross_entropy_loss.func is kernel.fast_cross_entropy_loss
    assert fake_unsloth["ce"].fast_cross_entropy_loss.keywords["dft"] is True
    import transformers.loss.loss_utils as loss_utils

    assert kernel.loss_reaches_kernel(loss_utils.LOSS_MAPPING["ForCausalLM"])  # rebuilt around our kernel
    guards = [c for c in trainer.callback_handler.callbacks if isinstance(c, sft.KernelCallGuard)]
    assert len(guards) == 1 and trainer.expected_loss == "dft"  # counter AND value are checked at step 1
    assert sft.FULL_LOGITS_BYTES_BF16 == 12_205_424_640


def test_kernel_route_needs_the_unsloth_backend(fake_unsloth, capsys) -> None:
    from scripts import train_dft

    assert train_dft.main(["--backend", "hf", "--dft_route", "kernel", "--train_csv", str(fake_unsloth["csv"]),
                           "--model_name_or_path", str(fake_unsloth["model"]), "--output_dir",
                           str(fake_unsloth["root"] / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: <command line>: --dft_route: got 'kernel': our Triton kernel is reached through Unsloth's loss: "
        "needs --backend unsloth")
    assert not (fake_unsloth["root"] / "o").exists()
