"""Checks every command runs on its parsed options before any work: values that are never sensible, input files
that cannot be read as files, and outputs that would land on an input or on another output.

They are generic on purpose: they look at option *names* (``--seed``, ``--output``, ``--train_csv`` ...), so every
entry point parsed by ``utils.cli`` gets them, and a new command gets them by naming its options as the others do.
Each problem is one :class:`~utils.fileio.InputError` naming the flag.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping

from utils.fileio import InputError

# ------------------------------------------------------------------------------------------------ values

#: Integer options with a sane range (inclusive). Larger values only make a run that never ends or never fits.
INT_RANGES: dict[str, tuple[int, int]] = {
    "seed": (0, 2**32 - 1),  # numpy's and torch's seeding range
    "bootstrap": (0, 1_000_000),
    "n_trials": (1, 10_000_000),
    "cv_trials": (1, 10_000_000),
    "n_train": (0, 1_000_000),
    "n_val": (0, 1_000_000),
    "n_test": (0, 1_000_000),
    "n_unlabeled": (0, 1_000_000),
    "mean_chars": (1, 1_000_000),
    "mean_spans": (1, 100_000),
    "max_new_tokens": (1, 1 << 20),
    "max_model_len": (1, 1 << 22),
    "max_seq_length": (1, 1 << 22),
    "max_length": (1, 1 << 22),
    "max_prompt_length": (1, 1 << 22),
    "max_completion_length": (1, 1 << 20),
    "vllm_max_model_length": (1, 1 << 22),
    "top_k": (1, 1_000_000),
    "per_note": (1, 1_000_000),
    "bins": (1, 1_000_000),
}

#: Float options that are probabilities or fractions: [low, high) or [low, high] as marked.
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {  # name: (low, high, high included)
    "lora_dropout": (0.0, 1.0, False),
    "hidden_dropout_prob": (0.0, 1.0, False),
    "attention_dropout": (0.0, 1.0, False),
}


def check_values(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Refuse non-finite floats (``inf``, ``nan``: a NaN learning rate trains a NaN adapter with exit 0) and values
    outside the ranges above. A field's own default is always accepted (a few library defaults are infinite)."""
    for name, value in values.items():
        if name in defaults and _same(value, defaults[name]):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            _check_one(name, item)


def is_unit_interval(value: Any) -> bool:
    """A threshold's range: a number (not a bool) in [0, 1], where the consensus thresholds are defined and tuned."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 1.0


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - an odd value compares as different
        return False


def _check_one(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError.flag(f"--{name}", f"expected a finite number, got {value!r}")
    if name in INT_RANGES and isinstance(value, int) and not isinstance(value, bool):
        low, high = INT_RANGES[name]
        if not low <= value <= high:
            raise InputError.flag(f"--{name}", f"expected an integer from {low} to {high}, got {value}")
    if name in FLOAT_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high, closed = FLOAT_RANGES[name]
        if not (low <= value <= high if closed else low <= value < high):
            raise InputError.flag(f"--{name}", f"expected a number in [{low}, {high}{']' if closed else ')'}, "
                                  f"got {value}")


# ------------------------------------------------------------------------------------------------- paths

#: Options naming files or folders a command reads.
INPUT_OPTIONS = (
    "input", "val_csv", "test_csv", "train_csv", "predict_csv", "eval_csv", "gold_dir", "gold_file", "raw_text_dir",
    "raw_text_csv", "split_file", "stats_csv", "predictions", "noteevents", "splits", "pool_csv", "meddec_raw_text",
    "meddec_splits", "pool_embeddings", "meddec_embeddings", "query_splits", "val_predictions", "pool_predictions",
    "thresholds_json", "apply", "model_name_or_path", "model", "adapter", "tokenizer", "base_model", "train_split",
    "val_split", "test_split",
)
#: Options naming files or folders a command writes.
OUTPUT_OPTIONS = (
    "output", "output_dir", "out_dir", "report", "explain", "plot", "pool_out", "meddec_out", "apply_output",
    "history_plot", "importance_plot", "storage", "folder",
)


def _paths(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, str) and v.strip() and v.lower() != "none"]


def storage_file(url: str) -> str | None:
    """The file of an SQLite storage URL (``sqlite:///study.db``), else None."""
    prefix = "sqlite:///"
    return url[len(prefix):] or None if url.lower().startswith(prefix) else None


def named_paths(values: Mapping[str, Any], names: Iterable[str]) -> list[tuple[str, str]]:
    """(flag, path) for every path given to the named options."""
    out = []
    for name in names:
        if name not in values:
            continue
        for path in _paths(values[name]):
            if name == "storage":
                path = storage_file(path)
                if path is None:
                    continue
            out.append((f"--{name}", path))
    return out


def _identity(path: str) -> tuple[Any, ...]:
    """What makes two paths one file: the resolved path (symlinks followed), and device + inode when it exists
    (hard links, bind mounts)."""
    resolved = Path(path).expanduser().resolve()
    try:
        info = os.stat(resolved)
        return ("inode", info.st_dev, info.st_ino)
    except OSError:
        return ("path", str(resolved))


def check_paths_apart(inputs: Iterable[tuple[str, str]], outputs: Iterable[tuple[str, str]]) -> None:
    """Refuse an output that is one of the inputs or another output (same file after resolving links): the
    command would overwrite what it reads, or lose one of its own outputs."""
    inputs, outputs = list(inputs), list(outputs)
    seen_inputs = {}
    for flag, path in inputs:
        seen_inputs.setdefault(_identity(path), (flag, path))
    seen_outputs: dict[tuple[Any, ...], tuple[str, str]] = {}
    for flag, path in outputs:
        key = _identity(path)
        if key in seen_inputs:
            other_flag, other = seen_inputs[key]
            raise InputError.flag(flag, f"is also the input {other_flag} {other}; writing it would destroy the input: "
                                  "choose another path", value=path)
        if key in seen_outputs:
            other_flag, other = seen_outputs[key]
            raise InputError.flag(flag, f"is also the output {other_flag} {other}; one would overwrite the other: "
                                  "choose another path", value=path)
        seen_outputs[key] = (flag, path)


def check_input_files(inputs: Iterable[tuple[str, str]]) -> None:
    """Refuse an existing input that is not a regular file or folder (a FIFO or a device would block forever or
    never end) or that cannot be read."""
    for flag, path in inputs:
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            continue  # missing: the reader names it in its own words
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InputError(path, flag, "expected a regular file or folder (a pipe, socket or device is not read)")
        if not _readable(path, mode):
            raise InputError(path, flag, "cannot be read (no permission)")


def _readable(path: str, mode: int) -> bool:
    """Readable by this process; root passes ``os.access`` for everything, so its answer is checked with the
    permission bits too (a file nobody may read is a mistake even for root)."""
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        return False
    return not (os.geteuid() == 0 and stat.S_IMODE(mode) & 0o444 == 0) if hasattr(os, "geteuid") else True


def check_options(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Everything this module checks, on one command's parsed options (``utils.cli`` calls it before any work)."""
    check_values(values, defaults)
    inputs = named_paths(values, INPUT_OPTIONS)
    outputs = named_paths(values, OUTPUT_OPTIONS)
    if "folder" in values and not _paths(values.get("adapter")):
        # push_to_hub uploads --folder as it is (read, not written) unless it merges --adapter into it
        inputs += [item for item in outputs if item[0] == "--folder"]
        outputs = [item for item in outputs if item[0] != "--folder"]
    check_input_files(inputs)
    check_paths_apart(inputs, outputs)


#: Longest text one table cell or note file may hold: 30x the longest MIMIC-III discharge summary (< 60k characters).
#: Span location time grows faster than linearly with the note (a 20 MB repetitive note would take hours); this keeps
#: the worst case at seconds per note.
MAX_TEXT_CHARS = 2_000_000


def check_text_sizes(path: str | os.PathLike[str], frame: Any) -> None:
    """Refuse a table with a cell longer than MAX_TEXT_CHARS, naming its row and column."""
    for column in frame.columns:
        lengths = frame[column].str.len()
        if len(lengths) and lengths.max() > MAX_TEXT_CHARS:
            row = int(lengths.to_numpy().argmax())
            raise InputError(path, f"row {row + 1} column {column!r}", f"{int(lengths.max()):,} characters; expected "
                                                                      f"at most {MAX_TEXT_CHARS:,} (a note, not a corpus)")


def check_text_size(path: str | os.PathLike[str], text: str) -> str:
    """A note file's text, refused when longer than MAX_TEXT_CHARS."""
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(path, "", f"{len(text):,} characters; expected at most {MAX_TEXT_CHARS:,} for one note")
    return text


def note_text_path(raw_text_dir: str | os.PathLike[str], note_id: str) -> Path:
    """``<raw_text_dir>/<note_id>.txt``, refusing ids that would leave the folder or name another file (path
    separators, ``..``, control characters): a note id comes from a data file and is never a path."""
    if (not note_id or any(c in note_id for c in "/\\\0") or note_id in (".", "..") or note_id.startswith("..")
            or any(ord(c) < 32 for c in note_id)):
        raise InputError(raw_text_dir, f"note id {note_id!r}", "not a note id (path separators, '..' or control "
                                                               "characters); expected e.g. 123_456_789")
    return Path(raw_text_dir) / f"{note_id}.txt"
