"""The models' prediction files and thresholds of a merge (what ``ensemble/mbr.py`` runs; the merge itself:
``ensemble.consensus``).

Inputs are prediction JSON files, one per model (``scripts/inference.py`` writes ``<output>.json`` beside each
output CSV). Thresholds: the published defaults, overridden by a thresholds JSON (the tuner's ``best.json``),
overridden by the flags given.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

from ensemble.consensus import THRESHOLD_NAMES, Thresholds, invalid_reason, merge_predictions
from utils.categories import CATEGORY_IDS
from utils.configs.pipeline import MergeArguments, ThresholdArguments
from utils.fileio import InputError, atomic_open, check_output_path, read_json, warn
from utils.guards import is_unit_interval
from utils.meddec.corpus import read_raw_text
from utils.meddec.predictions import read_predictions, write_predictions


def unit_interval(value: Any, path: str, where: str) -> float:
    """A threshold: a number in [0, 1], the range the thresholds are defined and tuned on."""
    if not is_unit_interval(value):
        raise InputError(path, where, f"expected a number in [0, 1], got {value!r}")
    return float(value)


def thresholds_from_json(path: str | os.PathLike[str]) -> Thresholds:
    """Thresholds from a JSON object with the four names (and optionally ``t_support_by_category``, an object
    "1".."9" -> value) at top level or under "thresholds" (the tuner's best.json); every name is required."""
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("thresholds"), dict):
        data = data["thresholds"]
    if not isinstance(data, dict):
        raise InputError(path, "top level", "expected an object with t_cluster, t_pair, t_support, t_dedup")
    missing = [name for name in THRESHOLD_NAMES if name not in data]
    if missing:
        raise InputError(path, f"field '{missing[0]}'", "missing; expected all of " + ", ".join(THRESHOLD_NAMES))
    values: dict[str, Any] = {name: unit_interval(data[name], str(path), f"field '{name}'") for name in THRESHOLD_NAMES}
    by_category = data.get("t_support_by_category")
    if by_category is not None:
        if not isinstance(by_category, dict) or sorted(by_category) != sorted(str(c) for c in CATEGORY_IDS):
            raise InputError(path, "field 't_support_by_category'", "expected an object with keys \"1\" .. \"9\"")
        values["t_support_by_category"] = tuple(
            unit_interval(by_category[str(c)], str(path), f"field 't_support_by_category.{c}'") for c in CATEGORY_IDS)
    return Thresholds(**values)


def resolve_thresholds(flags: ThresholdArguments, thresholds_json: str | None = None) -> Thresholds:
    """Flags given on the command line win over a thresholds JSON, which wins over the published defaults.

    A per-category support list from the JSON is dropped when ``--t_support`` is given (the flag sets one value for
    every category).
    """
    base = thresholds_from_json(thresholds_json) if thresholds_json else Thresholds()
    chosen = {name: float(getattr(flags, name)) for name in THRESHOLD_NAMES if getattr(flags, name) is not None}
    by_category = None if "t_support" in chosen else base.t_support_by_category
    return Thresholds(**{**{n: getattr(base, n) for n in THRESHOLD_NAMES}, **chosen}, t_support_by_category=by_category)


def read_model_predictions(path: str) -> dict:
    """One model's prediction JSON; a CSV (an inference output) is refused with where its JSON is."""
    if str(path).lower().endswith(".csv"):
        raise InputError(path, "", "expected prediction JSON, not a CSV (scripts/inference.py writes the spans of its "
                                   "outputs to <output>.json beside each output CSV)")
    return read_predictions(path)


def drop_spans_the_ensemble_ignores(models: Sequence[dict], paths: Sequence[str],
                                    raw_text_dir: str | None) -> list[dict]:
    """The models' spans without those the ensemble would drop or that end past their note, with one warning line
    per model saying how many went and why (the merge itself drops invalid spans silently, as published)."""
    from collections import Counter

    lengths: dict[str, int] = {}
    cleaned = []
    for path, predictions in zip(paths, models):
        reasons: Counter[str] = Counter()
        kept_model = {}
        for note_id, spans in predictions.items():
            if raw_text_dir is not None and note_id not in lengths:
                lengths[note_id] = len(read_raw_text(raw_text_dir, note_id))
            kept = []
            for span in spans:
                reason = invalid_reason(span)
                if reason is None and raw_text_dir is not None and span[1] > lengths[note_id]:
                    reason = "ends past the note"
                if reason is None:
                    kept.append(span)
                else:
                    reasons[reason] += 1
            kept_model[note_id] = kept
        if reasons:
            detail = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common())
            warn(f"{path}: {sum(reasons.values())} span(s) not used ({detail})")
        cleaned.append(kept_model)
    if raw_text_dir is None:
        warn("no --raw_text_dir: spans ending past their note's end cannot be detected and are merged as given")
    return cleaned


def write_explain(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def merge_prediction_files(args: MergeArguments, flags: ThresholdArguments) -> tuple[dict, Thresholds, int]:
    """What ``ensemble/mbr.py`` runs: read, clean and merge the models' files, write the merged JSON (and the
    explain lines); returns (merged predictions, the thresholds used, number of models)."""
    for path in (args.output, args.explain):
        if path:
            check_output_path(path)
    thresholds = resolve_thresholds(flags, args.thresholds_json)
    models = drop_spans_the_ensemble_ignores([read_model_predictions(path) for path in args.predictions],
                                             args.predictions, args.raw_text_dir)
    explain: list | None = [] if args.explain else None
    merged = merge_predictions(models, thresholds, explain, progress=True)
    write_predictions(args.output, merged)
    if explain is not None:
        write_explain(args.explain, explain)
    return merged, thresholds, len(models)
