"""Run bookkeeping of the training scripts: which checkpoint to resume, and the resolved configuration on disk."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator

from utils.fileio import InputError, atomic_open, file_sha256, read_json, write_json_atomic

RUN_INPUTS = "run_inputs.json"


def last_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` (None when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(str(output_dir))


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike[str],
                   auto_resume: bool = True) -> str | None:
    """Which checkpoint to resume: an explicit path, "true"/True = the newest, else the newest when auto-resuming."""
    value = resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        value = value.lower() == "true"
    if isinstance(value, str):
        if not os.path.isdir(value):
            raise InputError(value, "--resume_from_checkpoint", "not a checkpoint folder")
        return value
    if value or auto_resume:
        found = last_checkpoint(output_dir)
        if value and found is None:
            raise InputError(output_dir, "--resume_from_checkpoint true", "no checkpoint-* folder to resume from")
        return found
    return None


def _plain(value: Any) -> Any:
    """JSON/YAML-safe version of a config value (enums, paths, sets)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    return str(value)


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass (or TrainingArguments, or a dict) as a plain dict, every field kept."""
    if isinstance(config, dict):
        return _plain(config)
    if hasattr(config, "to_dict"):
        return _plain(config.to_dict())
    return _plain(dataclasses.asdict(config))


def save_run_config(out_dir: str | os.PathLike[str], sections: dict[str, Any], name: str = "run_config") -> Path:
    """Write the fully resolved run configuration as YAML and JSON beside the adapter (reproducibility)."""
    import yaml

    data = {key: config_dict(value) for key, value in sections.items()}
    out = Path(out_dir)
    with atomic_open(out / f"{name}.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True)
    with atomic_open(out / f"{name}.json", "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return out / f"{name}.yaml"


def run_fingerprint(train_csv: str | os.PathLike[str], sections: dict[str, Any], training_keys: tuple[str, ...],
                    training: Any) -> dict[str, Any]:
    """What determines a run's weights: the training data's content, the script and model settings, and the trainer
    settings named in ``training_keys`` (step limits and logging may change between a run and its resumption)."""
    values = config_dict(training)
    return {"train_csv_sha256": file_sha256(train_csv), **{k: config_dict(v) for k, v in sections.items()},
            "training": {key: values.get(key) for key in training_keys}}


def claim_output_dir(output_dir: str | os.PathLike[str], fingerprint: dict[str, Any]) -> None:
    """Record what this run trains on in ``output_dir``, or refuse when the folder holds a run with other settings.

    A rerun into a folder resumes its newest checkpoint; with other data or settings that would silently train
    nothing (the run is finished) or mix two runs, and record settings that were never used.
    """
    path = Path(output_dir) / RUN_INPUTS
    if path.is_file():
        recorded = read_json(path)
        changed = sorted(key for key in set(recorded) | set(fingerprint) if recorded.get(key) != fingerprint.get(key))
        if changed and not holds_weights(output_dir):  # a run that stopped before saving anything: start afresh
            write_json_atomic(path, fingerprint)
            return
        if changed:
            detail = ", ".join(_changed_fields(recorded, fingerprint, changed))
            raise InputError(output_dir, "", f"holds a run made with other data or settings ({detail} differ); "
                                             "use another --output_dir")
        return
    write_json_atomic(path, fingerprint)


def holds_weights(output_dir: str | os.PathLike[str]) -> bool:
    """Whether a run in ``output_dir`` saved anything worth protecting: a checkpoint or final weights."""
    folder = Path(output_dir)
    if last_checkpoint(folder) is not None:
        return True
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


@contextlib.contextmanager
def output_dir_lock(output_dir: str | os.PathLike[str], main_process: bool = True) -> Iterator[None]:
    """One training run at a time per ``--output_dir`` (two would interleave checkpoints and overwrite each other's
    adapter): a lock file held for the whole run; a second run is refused with one line. Only the main process of a
    multi-process run takes it."""
    if not main_process:
        yield
        return
    from filelock import FileLock, Timeout

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(output_dir) / ".lamar_training.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(output_dir, "", "another training run is writing this --output_dir right now; wait for it "
                                         "or choose another --output_dir") from None
    try:
        yield
    finally:
        lock.release()


def _changed_fields(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> list[str]:
    """Flag-like names of what differs, one level into each section."""
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        else:
            out.append("train_csv" if key == "train_csv_sha256" else key)
    return out
