"""push_to_hub: merge + save works, the allowlist refuses anything that may hold note text, no network used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scripts import push_to_hub
from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from utils.configs.training import GRPOModelConfig
    from utils.training.models import peft_config

    root = tmp_path_factory.mktemp("push")
    base = build_tiny_qwen35(root / "base", build_tiny_tokenizer(["a note"] * 3, vocab_size=400), num_layers=1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), peft_config(GRPOModelConfig()))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.02)
    model.save_pretrained(root / "adapter")
    return base, root / "adapter"


class FakeApi:
    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init", {"token": token}))

    def create_repo(self, **kwargs):
        FakeApi.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_merge_then_upload_only_the_allowlisted_files(base_and_adapter, tmp_path, fake_hub, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    base, adapter = base_and_adapter
    out = tmp_path / "merged"
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    code = push_to_hub.main(["--folder", str(out), "--repo_id", "me/lamar", "--base_model", str(base),
                             "--adapter", str(adapter), "--dtype", "float32"])
    assert code == 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    original = AutoModelForCausalLM.from_pretrained(base)
    ids = torch.tensor([[1, 2, 3]])
    assert not torch.allclose(merged(input_ids=ids).logits, original(input_ids=ids).logits)

    names = [name for name, _ in fake_hub.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert fake_hub.calls[0][1] == {"token": "hf_test_token"}
    assert fake_hub.calls[1][1] == {"repo_id": "me/lamar", "private": True, "exist_ok": True, "repo_type": "model"}
    uploaded = fake_hub.calls[2][1]["allow_patterns"]
    assert "model.safetensors" in uploaded and "config.json" in uploaded and "README.md" in uploaded
    assert "tokenizer.json" in uploaded
    assert "base_model: " + str(base) in (out / "README.md").read_text()
    assert "uploaded" in capsys.readouterr().out


def test_dry_run_refuses_a_planted_csv_and_names_it(base_and_adapter, tmp_path, fake_hub, capsys):
    base, _ = base_and_adapter
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(base, folder)
    (folder / "val_predictions.csv").write_text("file_id,raw_text\n1,patient text\n")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("x")
    code = push_to_hub.main(["--folder", str(folder), "--repo_id", "me/lamar", "--dry_run"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "refusing to upload what may hold MIMIC note text" in err
    assert "runs/ (a folder), val_predictions.csv (not a model file)" in err
    assert fake_hub.calls == []


def test_dry_run_lists_files_and_uploads_nothing(base_and_adapter, tmp_path, fake_hub, capsys):
    _, adapter = base_and_adapter
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    peft_card = (folder / "README.md").read_bytes()  # PEFT's template card: replaced by ours on a real upload
    assert push_to_hub.main(["--folder", str(folder), "--repo_id", "me/lora", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "would upload 3 file(s) to me/lora" in out
    assert "adapter_model.safetensors" in out and "adapter_config.json" in out and "README.md" in out
    assert fake_hub.calls == []
    assert (folder / "README.md").read_bytes() == peft_card  # a dry run writes nothing


def test_a_foreign_readme_is_refused(base_and_adapter, tmp_path, fake_hub, capsys):
    _, adapter = base_and_adapter
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    (folder / "README.md").write_text("notes from patient 123 ...")
    assert push_to_hub.main(["--folder", str(folder), "--repo_id", "me/lora", "--dry_run"]) == 2
    assert "README.md (not a model card written by push_to_hub.py or PEFT)" in capsys.readouterr().err
    assert (folder / "README.md").read_text() == "notes from patient 123 ..."


def test_adapter_without_base_and_missing_folder_are_clear_errors(tmp_path, capsys):
    assert push_to_hub.main(["--folder", str(tmp_path / "x"), "--repo_id", "a/b", "--adapter", str(tmp_path)]) == 2
    assert "merging needs --base_model" in capsys.readouterr().err
    assert push_to_hub.main(["--folder", str(tmp_path / "missing"), "--repo_id", "a/b", "--dry_run"]) == 2
    assert "missing: not a folder" in capsys.readouterr().err
    from utils.training.hub import allowed_check

    assert allowed_check("model-00001-of-00002.safetensors") is not None
    assert allowed_check("training_args.bin") is None


def test_links_and_disguised_files_are_refused_and_a_dry_run_writes_nothing(base_and_adapter, tmp_path, fake_hub,
                                                                            capsys):
    import shutil

    base, adapter = base_and_adapter
    folder = tmp_path / "model"
    shutil.copytree(base, folder)
    notes = tmp_path / "train.csv"
    notes.write_text("file_id,raw_text\n1_2_3,Patient admitted with chest pain.\n")
    (folder / "extra.safetensors").symlink_to(notes)
    (folder / "pytorch_model_notes.bin").write_bytes(notes.read_bytes())
    (folder / "generation_config.json").write_text('"Patient admitted with chest pain."')
    before = sorted((p.name, p.stat().st_size) for p in folder.iterdir())
    assert push_to_hub.main(["--folder", str(folder), "--repo_id", "me/lamar", "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "extra.safetensors (a symbolic link)" in err
    assert "pytorch_model_notes.bin (not what its name claims: not a PyTorch zip archive)" in err
    assert "generation_config.json (not what its name claims: not a JSON object)" in err
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir()) == before and fake_hub.calls == []

    merged = tmp_path / "would_merge"
    assert push_to_hub.main(["--folder", str(merged), "--repo_id", "me/lamar", "--base_model", str(base),
                             "--adapter", str(adapter), "--dry_run"]) == 0
    assert "nothing written now" in capsys.readouterr().out
    assert not merged.exists()  # a dry run never merges


def test_an_unreachable_hub_is_one_line_without_the_token(base_and_adapter, tmp_path, monkeypatch, capsys):
    import shutil

    import huggingface_hub

    class Unreachable:
        def __init__(self, token=None):
            pass

        def create_repo(self, **kwargs):
            raise ConnectionError("HTTPSConnectionPool(host='huggingface.co'): Max retries exceeded\nmore lines")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    _, adapter = base_and_adapter
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    assert push_to_hub.main(["--folder", str(folder), "--repo_id", "me/lora"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: <command line>: --repo_id: got 'me/lora': upload failed (ConnectionError: "
                   "HTTPSConnectionPool(host='huggingface.co'): Max retries exceeded)\n")
    assert "hf_secret_value" not in err
