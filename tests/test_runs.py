"""utils/training/runs.py: which checkpoint a training run resumes, its run record on disk, and the output-folder
fingerprint that refuses to mix two runs."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from utils.fileio import InputError
from utils.training.runs import (
    RUN_INPUTS, claim_output_dir, config_dict, resolve_resume, run_fingerprint, save_run_config,
)


class Colour(enum.Enum):
    RED = "red"


@dataclass
class Settings:
    rate: float = 2e-4
    colour: Colour = Colour.RED
    path: Path = Path("data/x.csv")
    tags: frozenset = field(default_factory=lambda: frozenset({"a"}))
    nested: dict = field(default_factory=lambda: {1: (2, 3)})


@pytest.fixture
def output_dir(tmp_path) -> Path:
    out = tmp_path / "run"
    for step in (2, 10, 9):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    return out


def test_resume_picks_the_newest_checkpoint_by_step_not_by_name(output_dir):
    assert resolve_resume(None, output_dir) == str(output_dir / "checkpoint-10")
    assert resolve_resume("true", output_dir, auto_resume=False) == str(output_dir / "checkpoint-10")


def test_resume_takes_an_explicit_folder_and_nothing_when_auto_resume_is_off(output_dir):
    assert resolve_resume(str(output_dir / "checkpoint-2"), output_dir) == str(output_dir / "checkpoint-2")
    assert resolve_resume("false", output_dir, auto_resume=False) is None
    assert resolve_resume(None, output_dir.parent / "fresh") is None  # a new folder: start from scratch


def test_resume_errors_name_the_folder_and_the_flag(output_dir, tmp_path):
    with pytest.raises(InputError) as err:
        resolve_resume(str(tmp_path / "nope"), output_dir)
    assert str(err.value) == f"{tmp_path / 'nope'}: --resume_from_checkpoint: not a checkpoint folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as err:
        resolve_resume(True, empty)
    assert str(err.value) == f"{empty}: --resume_from_checkpoint true: no checkpoint-* folder to resume from"


def test_config_dict_makes_every_field_yaml_and_json_safe():
    assert config_dict(Settings()) == {"rate": 2e-4, "colour": "red", "path": "data/x.csv", "tags": ["a"],
                                       "nested": {"1": [2, 3]}}


def test_run_config_is_written_as_equal_yaml_and_json(tmp_path):
    path = save_run_config(tmp_path, {"script": Settings(), "extra": {"seed": 3}})
    as_yaml = yaml.safe_load(path.read_text(encoding="utf-8"))
    as_json = json.loads((tmp_path / "run_config.json").read_text(encoding="utf-8"))
    assert as_yaml == as_json == {"script": config_dict(Settings()), "extra": {"seed": 3}}


def test_fingerprint_holds_the_data_digest_and_only_the_named_training_keys(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("file_id,raw_text\n", encoding="utf-8")
    fingerprint = run_fingerprint(train, {"script": {"loss": "dft"}}, ("rate",), Settings())
    # sha256 of the file bytes, from `printf 'file_id,raw_text\n' | sha256sum`
    assert fingerprint == {"train_csv_sha256": "9afbad0e7a4d0b6d9cccf4956a18198895ecc90d8ed2382aee981276cc30e789",
                           "script": {"loss": "dft"}, "training": {"rate": 2e-4}}


def test_claimed_folder_accepts_the_same_run_and_refuses_another(tmp_path):
    out = tmp_path / "run"
    first = {"train_csv_sha256": "a", "script": {"loss": "dft", "backend": "hf"}}
    claim_output_dir(out, first)
    assert json.loads((out / RUN_INPUTS).read_text(encoding="utf-8")) == first
    claim_output_dir(out, first)  # a rerun of the same run resumes
    other = {"train_csv_sha256": "b", "script": {"loss": "nll", "backend": "hf"}}
    (out / "checkpoint-5").mkdir()  # the first run saved weights: they are protected
    with pytest.raises(InputError) as err:
        claim_output_dir(out, other)
    assert str(err.value) == (f"{out}: holds a run made with other data or settings (loss, train_csv differ); "
                              "use another --output_dir")


def test_a_run_that_saved_nothing_gives_its_folder_to_a_corrected_rerun(tmp_path):
    out = tmp_path / "run"
    claim_output_dir(out, {"train_csv_sha256": "a"})
    claim_output_dir(out, {"train_csv_sha256": "b"})  # no checkpoint and no weights: nothing to protect
    assert json.loads((out / RUN_INPUTS).read_text(encoding="utf-8")) == {"train_csv_sha256": "b"}
